//! Where messages come from.
//!
//! - [`files`]: JSON-lines files or stdin for `transform`, read as blocks of whole lines (the
//!   fastest way to feed the decoder; a line's number is its position).
//! - [`Source`]: a partitioned log for `run`, record by record with offsets — Kafka
//!   ([`crate::kafka::source::KafkaSource`]) or [`memory::MemoryLog`], an in-process log with
//!   the same behaviour (assignment at an offset, redelivery, offset gaps, low and high
//!   watermarks) on which the service's protocol is tested in milliseconds.

pub mod files;
pub mod memory;

use std::sync::Arc;
use std::time::Duration;

/// A failure of a source, boxed so the service does not depend on one client's error type.
pub type SourceFailure = Box<dyn std::error::Error + Send + Sync>;

/// One partition the service reads: its topic, number and where to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub topic: Arc<str>,
    pub partition: i32,
    /// The first offset to read; `None` is the partition's beginning (its low watermark).
    pub offset: Option<i64>,
}

/// A record read from partition `partition` (an index into the assignment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRecord {
    pub partition: usize,
    pub offset: i64,
    pub payload: Vec<u8>,
}

/// What one poll gave.
#[derive(Debug)]
pub enum Polled {
    Record(SourceRecord),
    /// Nothing arrived within the timeout.
    Nothing,
    /// A transient error (the client retries by itself): reported, and polling goes on.
    Transient(String),
    /// The log refused a partition's read position: the offsets there are gone (retention
    /// ran ahead) or the log restarted (topic recreated or truncated). The service compares
    /// its positions with the partitions' watermarks to find which.
    OutOfRange,
}

/// A partitioned log as `meterflow run` needs it.
pub trait Source {
    /// Every partition of `topics`, sorted; an error names a topic that does not exist.
    fn partitions(&self, topics: &[String]) -> Result<Vec<(String, i32)>, SourceFailure>;

    /// Reads exactly these partitions from now on; records name them by position.
    fn assign(&mut self, partitions: &[Assignment]) -> Result<(), SourceFailure>;

    /// The next record, waiting at most `timeout`.
    fn poll(&mut self, timeout: Duration) -> Polled;

    /// The (low, high) offsets of assigned partition `partition`: the first offset still
    /// held and the offset after the last record.
    fn watermarks(&self, partition: usize) -> Result<(i64, i64), SourceFailure>;

    /// Notes the next offsets a checkpoint committed, by assigned partition (for lag), and
    /// with `commit` also commits them to the consumer group (monitoring only: the
    /// checkpoint is the truth).
    fn committed(&self, next_offsets: &[(usize, i64)], commit: bool);
}
