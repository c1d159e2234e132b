//! Slow and stuck dependencies. A replay behind a throttled broker that takes more than a
//! minute completes (it fails only when nothing arrives for `--replay-stall-timeout`); a replay
//! whose broker stops delivering fails after that timeout, naming the partition; a store call
//! that hangs turns `/readyz` false and, once the loop has not gone round for
//! `--stall-timeout`, `/healthz` 503, and both recover when the store answers.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use meterflow::run::checkpoint::CheckpointStore;
use meterflow::run::telemetry::{self, Liveness, Readiness, Telemetry};
use meterflow::run::RunError;
use meterflow::sink::SinkOptions;
use support::faulty_store::{Fault, FaultyStore};
use support::service::*;

/// A run crashed before the checkpoint of epoch 1 of a one-partition log; the messages that
/// epoch's intent recorded.
fn crashed_run(
    seed: u64,
) -> (
    Vec<String>,
    meterflow::source::memory::MemoryLog,
    meterflow::sink::store::Location,
    u64,
) {
    let lines = fleet(24, seed);
    let log = log_of(&lines, 1);
    let location = memory_location();
    let options = by_size(12 << 10, true);
    crash_before_checkpoint(&log, &location, 1, &options, SinkOptions::default());
    let intent = runtime()
        .block_on(CheckpointStore::new(location.clone()).intent(1))
        .unwrap()
        .expect("the crash left epoch 1's intent");
    let messages = intent.ranges.iter().map(|r| r.messages).sum();
    assert!(messages >= 10, "{messages} messages in epoch 1");
    (lines, log, location, messages)
}

/// The restart after the crash, reading `source`.
fn restart_on(
    source: &mut dyn meterflow::source::Source,
    location: &meterflow::sink::store::Location,
    options: &meterflow::run::RunOptions,
) -> Result<meterflow::run::RunReport, RunError> {
    serve_on(source, location, options, &Telemetry::default(), never())
}

#[test]
fn a_throttled_replay_longer_than_a_minute_completes() {
    let (lines, log, location, messages) = crashed_run(51);
    // The replay's messages come so slowly that it takes over a minute.
    let every = Duration::from_secs(66) / messages as u32;
    let mut options = by_size(12 << 10, true);
    options.replay_stall_timeout = every * 3;
    let mut source = Throttled::new(log.source(), every, messages, false);
    let started = Instant::now();
    let report = restart_on(&mut source, &location, &options).expect("the slow replay completes");
    assert!(
        started.elapsed() > Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(report.epochs >= 2, "the replay, then the rest");
    assert_same_rows(&output_rows(&location), &transform(&lines).0);
}

#[test]
fn a_replay_whose_broker_stops_delivering_fails_after_the_stall_timeout() {
    let (_, log, location, messages) = crashed_run(53);
    let mut options = by_size(12 << 10, true);
    options.replay_stall_timeout = Duration::from_secs(1);
    let mut source = Throttled::new(log.source(), Duration::ZERO, messages / 2, true);
    let started = Instant::now();
    let error = restart_on(&mut source, &location, &options).expect_err("stalled");
    assert!(
        matches!(
            error,
            RunError::ReplayIncomplete {
                epoch: 1,
                partition: 0,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("--replay-stall-timeout"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_hanging_store_fails_health_and_readiness_until_it_answers() {
    let lines = fleet(24, 55);
    let log = log_of(&lines, 2);
    let location = memory_location();
    let held = FaultyStore::with_fault(location.store.clone(), Fault::Pause, |w| {
        w.path.contains(&format!("/part-{:08}-", 2))
    });
    let telemetry = Telemetry {
        readiness: Arc::new(Readiness::new(Duration::from_millis(200))),
        liveness: Arc::new(Liveness::new(Duration::from_millis(800))),
        ..Telemetry::default()
    };
    let http = runtime();
    let bound = http
        .block_on(telemetry::serve(
            "127.0.0.1:0".parse().unwrap(),
            telemetry.clone(),
        ))
        .unwrap();
    let status = |path: &str| {
        http.block_on(async {
            let response = reqwest::get(format!("http://{bound}{path}")).await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    let until = |path: &str, code: u16| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (got, body) = status(path);
            if got == code {
                return body;
            }
            assert!(Instant::now() < deadline, "{path} stayed {got}: {body}");
            thread::sleep(Duration::from_millis(20));
        }
    };

    let stop = never();
    let running = {
        let (log, location, held) = (log.clone(), location.clone(), held.clone());
        let (telemetry, stop) = (telemetry.clone(), stop.clone());
        let options = by_size(4 << 10, false);
        thread::spawn(move || {
            let mut source = log.source();
            serve_on(
                &mut source,
                &through(&location, &held),
                &options,
                &telemetry,
                stop,
            )
        })
    };
    assert!(held.wait_paused(Duration::from_secs(20)), "the store hangs");
    assert_eq!(until("/readyz", 503), "object store not answering\n");
    let body = until("/healthz", 503);
    assert!(body.contains("has not gone round"), "{body}");

    held.release();
    until("/healthz", 200);
    until("/readyz", 200);
    stop.store(true, Ordering::Relaxed);
    running
        .join()
        .unwrap()
        .expect("the run goes on once the store answers");
    assert!(latest_checkpoint_epoch(&location).is_some_and(|e| e >= 2));
}

/// A broker whose partition `blocked` delivers nothing (its leader is down).
struct OnePartitionDown {
    inner: meterflow::source::memory::MemorySource,
    blocked: usize,
}

impl meterflow::source::Source for OnePartitionDown {
    fn partitions(
        &self,
        topics: &[String],
    ) -> Result<Vec<(String, i32)>, meterflow::source::SourceFailure> {
        self.inner.partitions(topics)
    }

    fn assign(
        &mut self,
        partitions: &[meterflow::source::Assignment],
    ) -> Result<(), meterflow::source::SourceFailure> {
        self.inner.assign(partitions)
    }

    fn poll(&mut self, timeout: Duration) -> meterflow::source::Polled {
        match self.inner.poll(timeout) {
            meterflow::source::Polled::Record(r) if r.partition == self.blocked => {
                meterflow::source::Polled::Nothing
            }
            other => other,
        }
    }

    fn watermarks(&self, partition: usize) -> Result<(i64, i64), meterflow::source::SourceFailure> {
        self.inner.watermarks(partition)
    }

    fn committed(&self, next_offsets: &[(usize, i64)], commit: bool) {
        self.inner.committed(next_offsets, commit)
    }
}

#[test]
fn a_replay_stalls_on_its_own_partition_whatever_the_others_deliver() {
    let lines = fleet(24, 57);
    let log = log_of(&lines, 2);
    let location = memory_location();
    let options = by_size(12 << 10, true);
    crash_before_checkpoint(&log, &location, 1, &options, SinkOptions::default());
    // Partition 0 is down; partition 1 keeps receiving messages for 6 s.
    let producing = {
        let (log, lines) = (log.clone(), lines.clone());
        thread::spawn(move || {
            for line in lines.iter().cycle().take(60) {
                log.append(TOPIC, 1, line.as_bytes());
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let mut options = options;
    options.replay_stall_timeout = Duration::from_secs(1);
    let mut source = OnePartitionDown {
        inner: log.source(),
        blocked: 0,
    };
    let started = Instant::now();
    let error = restart_on(&mut source, &location, &options).expect_err("stalled");
    let took = started.elapsed();
    producing.join().unwrap();
    assert!(
        matches!(error, RunError::ReplayIncomplete { partition: 0, .. }),
        "{error:?}"
    );
    assert!(took < Duration::from_secs(4), "failed after {took:?}");
}
