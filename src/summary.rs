//! Run counters and the human-readable summary printed at the end of a run.
//!
//! A checkpoint keeps the counters that only the run can know (messages, rows, bytes, …)
//! so summaries and metrics survive restarts; the ones derived from the per-device state
//! (resets, devices, evictions) and the wall time are not serialized. The serialized field
//! order is part of the checkpoint format (`tests/checkpoint_format.rs`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::reading::reason::Reason;
use crate::sink::EpochFiles;

/// What a run did; every number the summary and the metrics report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Input messages (non-blank lines or Kafka records).
    pub messages: u64,
    /// Elements of `measurements` seen, valid or not.
    pub readings: u64,
    /// Readings taken into the per-device state (valid, not late, not duplicates).
    pub accepted: u64,
    /// Rows written to Parquet.
    pub rows: u64,
    /// Dead letters, indexed by [`Reason::index`].
    #[serde(with = "per_reason")]
    pub dead_letters: [u64; Reason::ALL.len()],
    /// Exact duplicates dropped.
    pub duplicates: u64,
    /// Rows whose energy went down (null `delta_energy`).
    #[serde(skip)]
    pub counter_resets: u64,
    /// Parquet files written.
    pub files: u64,
    /// Bytes uploaded (Parquet and dead letters).
    pub bytes: u64,
    /// Devices in state at the end.
    #[serde(skip)]
    pub devices: u64,
    /// Devices the state TTL dropped (`--state-ttl`).
    #[serde(skip)]
    pub devices_evicted: u64,
    #[serde(skip)]
    pub elapsed: Duration,
}

/// Dead-letter counts as a sequence, so a checkpoint written before a reason was added
/// (a shorter sequence) still reads, the missing counts being zero.
mod per_reason {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::reading::reason::Reason;

    pub fn serialize<S: Serializer>(
        counts: &[u64; Reason::ALL.len()],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(counts)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<[u64; Reason::ALL.len()], D::Error> {
        let saved = Vec::<u64>::deserialize(deserializer)?;
        let mut counts = [0; Reason::ALL.len()];
        for (count, saved) in counts.iter_mut().zip(saved) {
            *count = saved;
        }
        Ok(counts)
    }
}

impl Summary {
    /// Counts what was uploaded: the one place rows, files and bytes are added up.
    pub fn add_written(&mut self, written: &EpochFiles) {
        self.rows += written.rows as u64;
        self.files += written.data_files.len() as u64;
        self.bytes += written.bytes as u64;
    }

    pub fn dead_letter_total(&self) -> u64 {
        self.dead_letters.iter().sum()
    }

    pub fn dead_letters_for(&self, reason: Reason) -> u64 {
        self.dead_letters[reason.index()]
    }

    /// Input readings per second of wall time.
    pub fn readings_per_second(&self) -> f64 {
        self.readings as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = self.readings_per_second();
        writeln!(f, "  {:<20}{:>12}", "messages", self.messages)?;
        writeln!(f, "  {:<20}{:>12}", "readings", self.readings)?;
        writeln!(f, "  {:<20}{:>12}", "accepted", self.accepted)?;
        writeln!(
            f,
            "  {:<20}{:>12}   in {} Parquet {}, {:.1} MB",
            "rows",
            self.rows,
            self.files,
            if self.files == 1 { "file" } else { "files" },
            self.bytes as f64 / 1e6
        )?;
        writeln!(f, "  {:<20}{:>12}", "devices", self.devices)?;
        if self.devices_evicted > 0 {
            writeln!(f, "  {:<20}{:>12}", "devices evicted", self.devices_evicted)?;
        }
        writeln!(f, "  {:<20}{:>12}", "duplicates", self.duplicates)?;
        writeln!(f, "  {:<20}{:>12}", "counter resets", self.counter_resets)?;
        writeln!(
            f,
            "  {:<20}{:>12}",
            "dead letters",
            self.dead_letter_total()
        )?;
        for reason in Reason::ALL {
            let count = self.dead_letters_for(reason);
            if count > 0 {
                writeln!(f, "    {:<22}{:>8}", reason.code(), count)?;
            }
        }
        writeln!(f, "  {:<20}{:>12.3}", "seconds", self.elapsed.as_secs_f64())?;
        write!(f, "  {:<20}{:>12.0}", "readings/s", rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_only_reasons_that_occurred() {
        let mut summary = Summary {
            readings: 10,
            elapsed: Duration::from_secs(2),
            ..Summary::default()
        };
        summary.dead_letters[Reason::Late.index()] = 3;
        let text = summary.to_string();
        assert!(text.contains("late") && text.contains("dead letters                   3"));
        assert!(!text.contains("invalid_json"));
        assert_eq!(summary.readings_per_second(), 5.0);
    }
}
