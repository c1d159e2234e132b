//! What an operator may change between a crash and its restart: partitions added to a topic,
//! the file settings, the lateness and the other flags an epoch's bytes depend on. Whatever
//! changed, the crashed epoch's replay writes byte for byte what the crashed attempt wrote
//! (it runs with the settings and partitions its intent recorded), the change applies from the
//! next epoch, and the bucket ends equal to `transform`. A change a replay cannot follow (the
//! dead-letter topic) is refused with a message naming the flag.

mod support;

use std::num::NonZeroUsize;

use meterflow::run::dead_letters::EpochFile;
use meterflow::run::{RunError, RunOptions};
use meterflow::sink::SinkOptions;
use meterflow::source::memory::MemoryLog;
use meterflow::timestamp::MICROS_PER_MINUTE;

use support::faulty_store::{Fault, FaultyStore};
use support::service::*;

/// A change made while the service was down.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// A partition added to the topic (it stays empty, so it holds the watermark back).
    AddPartition,
    RowsPerFile,
    ZstdLevel,
    /// Shorter, still longer than the fleet's disorder.
    Lateness,
    /// Longer than the fleet's span, so no device is evicted.
    StateTtl,
    MaxFuture,
}

const CHANGES: [Change; 6] = [
    Change::AddPartition,
    Change::RowsPerFile,
    Change::ZstdLevel,
    Change::Lateness,
    Change::StateTtl,
    Change::MaxFuture,
];

impl Change {
    fn apply(self, log: &MemoryLog, options: &mut RunOptions, sink: &mut SinkOptions) {
        match self {
            Change::AddPartition => log.add_partitions(TOPIC, 1),
            Change::RowsPerFile => sink.rows_per_file = NonZeroUsize::new(5000).unwrap(),
            Change::ZstdLevel => sink.zstd_level = 9,
            Change::Lateness => options.state.allowed_lateness = 5 * MICROS_PER_MINUTE,
            Change::StateTtl => options.state.state_ttl = Some(30 * 24 * 60 * MICROS_PER_MINUTE),
            Change::MaxFuture => options.max_future = 2 * MAX_FUTURE,
        }
    }
}

/// The settings before the change: small epochs, small files.
fn settings() -> (RunOptions, SinkOptions) {
    (
        by_size(12 << 10, true),
        SinkOptions {
            rows_per_file: NonZeroUsize::new(40).unwrap(),
            zstd_level: 1,
        },
    )
}

/// A restart with these settings, dead letters to files.
fn restart(
    log: &MemoryLog,
    location: &meterflow::sink::store::Location,
    options: &RunOptions,
    sink: SinkOptions,
) -> Result<meterflow::run::RunReport, RunError> {
    serve_with(log, location, options, sink, Box::new(EpochFile), never())
}

#[test]
fn a_replay_follows_its_intent_whatever_changed_before_the_restart() {
    let lines = fleet(24, 41);
    let (rows, letters) = transform(&lines);
    let mut crashed_files = 0;
    for change in CHANGES {
        for crash in 0..4 {
            let case = format!("{change:?}, crash in epoch {crash}");
            let log = log_of(&lines, 2);
            let location = memory_location();
            let (mut options, mut sink) = settings();
            let crashed = crash_before_checkpoint(&log, &location, crash, &options, sink);
            crashed_files += crashed.len();

            change.apply(&log, &mut options, &mut sink);
            let report = restart(&log, &location, &options, sink)
                .unwrap_or_else(|e| panic!("{case}: {e:?}"));
            assert!(report.epochs >= 2, "{case}: the replay, then the rest");
            assert!(
                epoch_files(&location, crash) == crashed,
                "{case}: the replay rewrote the crashed attempt's files byte for byte"
            );
            assert_same_rows(&output_rows(&location), &rows);
            assert_eq!(output_letters(&location), letters, "{case}");
        }
    }
    assert!(crashed_files > 20, "the crashed attempts wrote files");
}

#[test]
fn new_file_settings_apply_from_the_epoch_after_the_replay() {
    let lines = fleet(24, 43);
    let log = log_of(&lines, 2);
    let location = memory_location();
    let (options, mut sink) = settings();
    crash_before_checkpoint(&log, &location, 1, &options, sink);
    sink.rows_per_file = NonZeroUsize::new(5000).unwrap();
    restart(&log, &location, &options, sink).unwrap();
    let largest = |epochs: std::ops::RangeInclusive<u64>| {
        epochs
            .flat_map(|epoch| epoch_files(&location, epoch).into_values())
            .map(|bytes| parquet_rows(&bytes))
            .max()
            .unwrap_or(0)
    };
    assert!(
        largest(0..=1) <= 40,
        "the crashed epoch kept 40 rows a file"
    );
    assert!(largest(2..=99) > 40, "later epochs use the new setting");
}

/// Rows in a Parquet file (dead-letter files count 0).
fn parquet_rows(bytes: &[u8]) -> i64 {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    SerializedFileReader::new(bytes::Bytes::copy_from_slice(bytes))
        .map_or(0, |reader| reader.metadata().file_metadata().num_rows())
}

#[test]
fn a_replay_sends_dead_letters_where_its_intent_says_or_refuses_to_run() {
    let lines = fleet(24, 45);
    let (_, letters) = transform(&lines);
    assert!(letters.len() > 5, "the fleet has faults");
    let log = log_of(&lines, 2);
    let location = memory_location();
    let (options, sink) = settings();
    let topic = CollectedTopic::new("meter-dead-letters");
    let store = FaultyStore::with_fault(location.store.clone(), Fault::FailBefore, |w| {
        w.path.ends_with(&format!("checkpoint-{:020}.bin", 2))
    });
    serve_with(
        &log,
        &through(&location, &store),
        &options,
        sink,
        Box::new(topic.clone()),
        never(),
    )
    .expect_err("crashed");

    // Restarted without the topic: the replay cannot send the letters where the crashed
    // attempt did, and says so before it writes anything.
    let before = objects(&location);
    let error = serve(&log, &location, &options, never()).expect_err("refused");
    assert!(
        matches!(&error, RunError::DeadLetterTopicChanged { epoch: 2, recorded, .. } if recorded == "meter-dead-letters"),
        "{error:?}"
    );
    assert!(
        error
            .to_string()
            .contains("--dead-letter-topic meter-dead-letters"),
        "{error}"
    );
    assert_eq!(objects(&location), before, "nothing written");

    // With the topic again: every letter reaches it, the replayed epoch's at least once.
    serve_with(
        &log,
        &location,
        &options,
        sink,
        Box::new(topic.clone()),
        never(),
    )
    .unwrap();
    let mut sent = topic.sent();
    assert!(sent.len() >= letters.len());
    sent.sort();
    sent.dedup();
    let mut expected = letters.clone();
    expected.dedup();
    assert_eq!(sent, expected);
    assert!(output_letters(&location).is_empty(), "no dead-letter files");
}
