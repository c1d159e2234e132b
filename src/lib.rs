//! meterflow turns batches of energy-meter readings into analysis-ready Parquet.
//!
//! Each input message (a Kafka record or a JSON line) holds `measurements`; every reading
//! becomes one row with the energy used (`delta_energy`) and minutes elapsed (`duration`) since
//! the device's previous reading, written with an exact schema to a local directory or to
//! S3-compatible storage. The behaviour contract is `docs/contract.md`; `docs/architecture.md` walks the
//! data flow.
//!
//! # Layout
//!
//! Data flows top to bottom:
//!
//! - [`source`]: JSON-lines files (plain, gzip, zstd) or stdin, cut into blocks of whole lines.
//! - [`reading`]: one message → validated [`reading::Reading`]s and rejections (contract §2),
//!   with [`timestamp`] parsing event times and [`reason`] naming the rejections.
//! - [`deltas`]: the pure per-device state machine (contract §3), driven by a [`watermark`].
//! - [`pipeline`]: the loop that applies messages in order and cuts epochs.
//! - [`batch`]: the exact Arrow schema and rows → record batches.
//! - [`sink`]: Parquet encoding and upload, named by [`layout`], into a [`store`] location;
//!   refused records go out as [`dead_letter`]s.
//! - [`summary`]: the counters of a run.
//!
//! Around them: [`generate`] makes synthetic fleets, [`inspect`] reads output back,
//! [`query`] runs SQL over it, and [`cli`] wires the commands together.

pub mod batch;
pub mod checkpoint;
pub mod cli;
pub mod dead_letter;
pub mod deltas;
mod device_hash;
pub mod generate;
pub mod inspect;
pub mod kafka;
pub mod layout;
pub mod pipeline;
pub mod publish;
pub mod query;
pub mod reading;
pub mod reason;
mod scan;
pub mod service;
pub mod sink;
pub mod source;
pub mod store;
pub mod summary;
pub mod telemetry;
pub mod timestamp;
pub mod watermark;
