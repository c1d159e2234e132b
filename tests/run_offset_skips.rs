//! `--on-offset-gap skip-and-record` (contract §4): the operator's choice to go on when input
//! went missing. What was read before the gap is committed, reading goes on at the log's
//! start, and the gap (expected offset, the log's offsets, where reading resumed) is recorded
//! in the intent and every checkpoint after it. The bucket then equals `transform` of exactly
//! the messages that were read, wherever the gap was found (at start, while running, by
//! retention or by a recreated topic) and whatever crash hit the epoch after it.

mod support;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use meterflow::run::checkpoint::{CheckpointStore, SkippedGap};
use meterflow::run::telemetry::Telemetry;
use meterflow::run::{OffsetGapPolicy, RunOptions};
use meterflow::sink::store::Location;
use meterflow::sink::SinkOptions;
use meterflow::source::memory::MemoryLog;
use support::service::*;

fn skipping(options: RunOptions) -> RunOptions {
    RunOptions {
        on_offset_gap: OffsetGapPolicy::SkipAndRecord,
        ..options
    }
}

fn recorded_gaps(location: &Location) -> Vec<SkippedGap> {
    runtime()
        .block_on(CheckpointStore::new(location.clone()).latest())
        .unwrap()
        .expect("a checkpoint")
        .offset_gaps
}

/// A one-partition log holding `lines`.
fn log_with(lines: &[String]) -> MemoryLog {
    let log = MemoryLog::default();
    log.create_topic(TOPIC, 1);
    for line in lines {
        log.append(TOPIC, 0, line.as_bytes());
    }
    log
}

/// Runs until every message of the log is committed, then stops it (not drained: waiting
/// readings stay in the checkpoint); the next epoch.
fn commit_all_then_stop(log: &MemoryLog, location: &Location, count: usize) -> u64 {
    let (running, stop) = spawn_serve(log, location, every(Duration::from_millis(20)));
    wait_for("every message committed", || {
        log.committed().get(&(TOPIC.to_string(), 0)) == Some(&(count as i64))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    running.join().unwrap().unwrap().next_epoch
}

fn assert_equals_transform_of(location: &Location, read: &[String]) {
    let (rows, letters) = transform(read);
    assert_same_rows(&output_rows(location), &rows);
    assert_eq!(output_letters(location), letters);
}

#[test]
fn a_restart_after_deleted_offsets_goes_on_at_the_log_start_and_records_the_gap() {
    let lines = fleet(16, 81);
    let (first, second) = lines.split_at(lines.len() / 2);
    let log = log_with(first);
    let location = memory_location();
    let next_epoch = commit_all_then_stop(&log, &location, first.len());
    for line in second {
        log.append(TOPIC, 0, line.as_bytes());
    }
    let next = first.len() as i64;
    log.truncate_before(TOPIC, 0, next + 5);

    serve(&log, &location, &skipping(draining()), never()).expect("the gap is skipped");
    let read: Vec<String> = [first, &second[5..]].concat();
    assert_equals_transform_of(&location, &read);
    let gap = SkippedGap {
        topic: TOPIC.into(),
        partition: 0,
        expected: next,
        low: next + 5,
        high: lines.len() as i64,
        resumed_at: next + 5,
        epoch: next_epoch,
    };
    assert_eq!(recorded_gaps(&location), vec![gap.clone()]);

    // The record stays in later checkpoints; a restart with nothing missing adds none.
    let more = fleet(4, 82);
    for line in &more {
        log.append(TOPIC, 0, line.as_bytes());
    }
    serve(&log, &location, &skipping(draining()), never()).unwrap();
    assert_eq!(recorded_gaps(&location), vec![gap]);
}

#[test]
fn a_gap_found_while_running_commits_what_was_read_and_goes_on_after_it() {
    for recreate in [false, true] {
        let lines = fleet(16, 83);
        let log = log_with(&lines);
        let location = memory_location();
        // A slow reader: retention (or a recreation) overtakes it.
        let source = Throttled::new(log.source(), Duration::from_millis(20), u64::MAX, false);
        let running = {
            let location = location.clone();
            thread::spawn(move || {
                let mut source = source;
                let options = skipping(RunOptions {
                    stop_when_drained: true,
                    ..every(Duration::from_millis(50))
                });
                serve_on(
                    &mut source,
                    &location,
                    &options,
                    &Telemetry::default(),
                    never(),
                )
            })
        };
        wait_for("a few messages read", || log.delivered() >= 20);
        // The log after the gap: the next day's readings (a recreated topic restarts at 0).
        let after: Vec<String> = fleet(8, 84)
            .iter()
            .map(|l| l.replace("2022-07-11", "2022-07-12"))
            .take(10)
            .collect();
        let low = if recreate {
            log.create_topic(TOPIC, 1);
            0
        } else {
            log.truncate_before(TOPIC, 0, 60);
            60
        };
        for line in &after {
            log.append(TOPIC, 0, line.as_bytes());
        }
        running.join().unwrap().expect("the gap is skipped");

        let gaps = recorded_gaps(&location);
        assert_eq!(gaps.len(), 1, "{recreate}: {gaps:?}");
        let gap = &gaps[0];
        let read_before = gap.expected as usize;
        assert!((20..60).contains(&read_before), "{recreate}: {gap:?}");
        assert_eq!((gap.low, gap.resumed_at), (low, low), "{recreate}: {gap:?}");
        let resumed = if recreate {
            after.clone()
        } else {
            [&lines[60..], &after[..]].concat()
        };
        assert_equals_transform_of(&location, &[&lines[..read_before], &resumed[..]].concat());
    }
}

#[test]
fn a_crash_around_a_skip_is_replayed_from_its_recorded_gap() {
    // The skip commits an epoch of its own (no messages, no files) before the messages read
    // after the gap get theirs: a crash in either replays into the same bytes.
    for after_skip in [0, 1] {
        let lines = fleet(16, 85);
        let (first, second) = lines.split_at(lines.len() / 2);
        let log = log_with(first);
        let location = memory_location();
        let gap_epoch = commit_all_then_stop(&log, &location, first.len());
        for line in second {
            log.append(TOPIC, 0, line.as_bytes());
        }
        let next = first.len() as i64;
        log.truncate_before(TOPIC, 0, next + 7);

        let options = skipping(by_size(4096, true));
        let crash = gap_epoch + after_skip;
        let crashed =
            crash_before_checkpoint(&log, &location, crash, &options, SinkOptions::default());
        assert_eq!(
            crashed.is_empty(),
            after_skip == 0,
            "epoch {crash}: {crashed:?}"
        );
        let intent = runtime()
            .block_on(CheckpointStore::new(location.clone()).intent(crash))
            .unwrap()
            .expect("the crashed epoch's intent");
        assert_eq!(
            intent.offset_gaps.len(),
            1 - after_skip as usize,
            "{intent:?}"
        );
        assert_eq!(intent.ranges[0].start, next + 7, "{intent:?}");

        serve(&log, &location, &options, never()).expect("the replay goes on after the gap");
        assert_eq!(
            epoch_files(&location, crash),
            crashed,
            "epoch {crash}: the replay rewrote the crashed epoch byte for byte"
        );
        assert_equals_transform_of(&location, &[first, &second[7..]].concat());
        let gaps = recorded_gaps(&location);
        assert_eq!(gaps.len(), 1, "{gaps:?}");
        assert_eq!(gaps[0].epoch, gap_epoch, "{gaps:?}");
    }
}

#[test]
fn a_skip_is_committed_before_anything_after_it_is_read() {
    // Stopped right after the skip, before a message of the new log was read: were the skip
    // only in memory, the restart would find the old position inside the refilled log, see no
    // gap, and never read the new log's first offsets.
    let first = fleet(16, 88);
    let log = log_with(&first);
    let location = memory_location();
    let gap_epoch = commit_all_then_stop(&log, &location, first.len());
    log.create_topic(TOPIC, 1);
    let refill: Vec<String> = fleet(24, 89)
        .iter()
        .map(|l| l.replace("2022-07-11", "2022-07-12"))
        .collect();
    let (before_stop, after_stop) = refill.split_at(5);
    for line in before_stop {
        log.append(TOPIC, 0, line.as_bytes());
    }
    let stopped = Arc::new(AtomicBool::new(true));
    serve(&log, &location, &skipping(draining()), stopped).expect("stops at once");
    let gaps = recorded_gaps(&location);
    assert_eq!(gaps.len(), 1, "the skip is in the checkpoint: {gaps:?}");
    assert_eq!((gaps[0].resumed_at, gaps[0].epoch), (0, gap_epoch));

    // The new log grows past the old position before the restart.
    assert!(
        refill.len() > first.len(),
        "the refill passes the old position"
    );
    for line in after_stop {
        log.append(TOPIC, 0, line.as_bytes());
    }
    serve(&log, &location, &skipping(draining()), never()).unwrap();
    assert_equals_transform_of(&location, &[&first[..], &refill[..]].concat());
}

#[test]
fn without_the_choice_the_same_gap_still_stops_the_service() {
    let lines = fleet(8, 87);
    let (first, second) = lines.split_at(lines.len() / 2);
    let log = log_with(first);
    let location = memory_location();
    commit_all_then_stop(&log, &location, first.len());
    for line in second {
        log.append(TOPIC, 0, line.as_bytes());
    }
    log.truncate_before(TOPIC, 0, first.len() as i64 + 1);
    let error = serve(&log, &location, &draining(), never()).expect_err("fails closed");
    assert!(
        error
            .to_string()
            .contains("--on-offset-gap skip-and-record"),
        "the error names the choice: {error}"
    );
}
