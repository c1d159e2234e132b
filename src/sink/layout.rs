//! Object names in the output location (contract §5): pure functions, so names are deterministic
//! and a replay of an epoch writes the same objects.
//!
//! ```text
//! PREFIX/date=YYYY-MM-DD/part-<epoch:8>-<writer:4>.parquet
//! PREFIX/_dead_letter/part-<epoch:8>-0000.jsonl
//! PREFIX/_checkpoint/{intent,checkpoint}-<epoch:20>.{json,bin}   (meterflow run only)
//! ```

use crate::timestamp;

/// Folder of dead-letter files; the leading underscore makes Hive-style readers skip it.
pub const DEAD_LETTER_DIR: &str = "_dead_letter";

/// Folder of `meterflow run`'s intents and checkpoints (contract §4), skipped by readers too.
pub const CHECKPOINT_DIR: &str = "_checkpoint";

/// Relative path of the `writer`-th data file of `epoch` for a UTC day (days since
/// 1970-01-01).
pub fn data_file(day: i64, epoch: u64, writer: usize) -> String {
    format!(
        "date={}/part-{epoch:08}-{writer:04}.parquet",
        timestamp::date_of_day(day)
    )
}

/// Relative path of the dead-letter file of `epoch`.
pub fn dead_letter_file(epoch: u64) -> String {
    format!("{DEAD_LETTER_DIR}/part-{epoch:08}-0000.jsonl")
}

/// Whether a relative path is one meterflow writes as output (and `--overwrite` may replace).
pub fn is_output(relative: &str) -> bool {
    let Some((dir, file)) = relative.split_once('/') else {
        return false;
    };
    let data = dir.starts_with("date=") && file.starts_with("part-") && file.ends_with(".parquet");
    let dead = dir == DEAD_LETTER_DIR && file.starts_with("part-") && file.ends_with(".jsonl");
    (data || dead) && !file.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_hive_partitioned_and_recognised() {
        let t = timestamp::parse_micros("2022-07-11T23:59:59Z").unwrap();
        let name = data_file(t.div_euclid(timestamp::MICROS_PER_DAY), 3, 1);
        assert_eq!(name, "date=2022-07-11/part-00000003-0001.parquet");
        assert!(is_output(&name));
        assert!(is_output(&dead_letter_file(3)));
        assert!(!is_output("_input/readings.jsonl"));
        assert!(!is_output("date=2022-07-11/notes.txt"));
        assert!(!is_output("part-1.parquet"));
    }
}
