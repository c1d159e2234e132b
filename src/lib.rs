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
//! - [`source`]: JSON-lines files (plain, gzip, zstd) or stdin, cut into blocks of whole lines;
//!   and the [`source::Source`] trait of partitioned logs the service reads (Kafka, or the
//!   in-memory [`source::memory`] log of the tests).
//! - [`reading`]: one message → validated [`reading::Reading`]s and rejections (contract §2):
//!   the fast scanner, the serde paths, validation and the [`reading::reason`] codes, with
//!   [`timestamp`] parsing event times.
//! - [`deltas`]: the pure per-device state machine (contract §3) with its
//!   [`deltas::watermark`], device names and the layout of an epoch's rows.
//! - [`pipeline`]: applies messages in order and cuts epochs (file mode's threads too).
//! - [`sink`]: the exact [`sink::schema`], Parquet encoding and upload into a [`sink::store`]
//!   location, object names ([`sink::layout`]) and [`sink::dead_letter`] records.
//! - [`run`]: the service loop, its [`run::checkpoint`] protocol (contract §5), when epochs
//!   close ([`run::epoch_policy`]), where dead letters go ([`run::dead_letters`]) and
//!   [`run::telemetry`]; [`kafka`] holds client settings, the Kafka source and publishing.
//! - [`summary`]: the counters of a run.
//!
//! Around them: [`generate`] makes synthetic fleets, [`inspect`] reads output back,
//! [`query`] runs SQL over it, [`cli`] defines the flags and [`commands`] runs them.

// Library code returns errors instead of panicking; its unit tests may unwrap (clippy.toml).
#![warn(clippy::unwrap_used)]

pub mod cli;
pub mod commands;
pub mod deltas;
pub mod generate;
pub mod inspect;
pub mod kafka;
pub mod pipeline;
pub mod query;
pub mod reading;
pub mod run;
pub mod sink;
pub mod source;
pub mod summary;
pub mod timestamp;
