//! The service in process, on an in-memory log and object store: fleets to feed it, runs,
//! and the `transform` of the same input to compare its output with.

use std::collections::BTreeMap;
use std::io::Write;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use meterflow::deltas::StateSettings;
use meterflow::generate::{generate, GenerateOptions};
use meterflow::inspect::read_all;
use meterflow::kafka::{KafkaSettings, SaslMechanism, SecurityProtocol};
use meterflow::pipeline::{self, PipelineOptions};
use meterflow::reading::Limits;
use meterflow::run::checkpoint::CheckpointStore;
use meterflow::run::dead_letters::{DeadLetterDestination, EpochFile};
use meterflow::run::epoch_policy::EpochPolicy;
use meterflow::run::telemetry::Telemetry;
use meterflow::run::{run_on, RunError, RunOptions, RunReport};
use meterflow::sink::dead_letter::DeadLetter;
use meterflow::sink::store::Location;
use meterflow::sink::{ParquetSink, SinkOptions};
use meterflow::source::files::Input;
use meterflow::source::memory::{MemoryLog, MemorySource};
use meterflow::source::{Assignment, Polled, Source, SourceFailure};
use meterflow::timestamp::{parse_micros, MICROS_PER_MINUTE};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use super::faulty_store::{Fault, FaultyStore};
use super::{rows, Row};

pub const TOPIC: &str = "readings";
/// One day, as `--max-future`'s default.
pub const MAX_FUTURE: i64 = 86_400_000_000;

pub fn now_micros() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    since_epoch.as_micros() as i64
}

/// A generated fleet's lines (disorder within the lateness, duplicates, faults).
pub fn fleet(devices: u32, seed: u64) -> Vec<String> {
    let options = GenerateOptions {
        devices,
        hours: 4.0,
        interval: 5 * MICROS_PER_MINUTE,
        seed,
        disorder: 2 * MICROS_PER_MINUTE,
        fault_rate: 0.01,
        duplicate_rate: 0.01,
        start: parse_micros("2022-07-11T00:00:00Z").unwrap(),
        devices_per_message: NonZeroU32::new(4).unwrap(),
    };
    let mut bytes = Vec::new();
    generate(&options, &mut bytes).unwrap();
    String::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The partition a line goes to: by its first device's gateway, so a device stays in one
/// partition (as `generate --kafka-brokers` keys them); unreadable lines go to partition 0.
pub fn partition_of(line: &str, partitions: i32) -> i32 {
    let first = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["measurements"][0]["device_id"].as_i64());
    first.map_or(0, |id| (id / 4 % i64::from(partitions)) as i32)
}

/// A log with `lines` spread over `partitions` partitions.
pub fn log_of(lines: &[String], partitions: i32) -> MemoryLog {
    let log = MemoryLog::default();
    log.create_topic(TOPIC, partitions as usize);
    for line in lines {
        log.append(TOPIC, partition_of(line, partitions), line.as_bytes());
    }
    log
}

pub fn memory_location() -> Location {
    Location {
        store: Arc::new(InMemory::new()),
        prefix: Path::from("out"),
        display: "memory://out".into(),
    }
}

pub fn options(policy: EpochPolicy, idle_timeout: Duration, stop_when_drained: bool) -> RunOptions {
    RunOptions {
        kafka: KafkaSettings {
            brokers: "unused".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: SaslMechanism::ScramSha512,
            ca_file: None,
            options: Vec::new(),
        },
        topics: vec![TOPIC.into()],
        group: "test".into(),
        state: StateSettings::with_lateness(10 * MICROS_PER_MINUTE),
        max_future: MAX_FUTURE,
        epoch: policy,
        idle_timeout,
        stop_when_drained,
        request_timeout: Duration::from_secs(5),
        dead_letter_topic: None,
        replay_stall_timeout: Duration::from_secs(5),
        on_offset_gap: meterflow::run::OffsetGapPolicy::Fail,
    }
}

/// Epochs every 50 ms or 64 KiB, drained runs stop.
pub fn draining() -> RunOptions {
    options(
        EpochPolicy {
            interval: Duration::from_millis(50),
            max_bytes: 64 << 10,
        },
        Duration::from_secs(30),
        true,
    )
}

/// Epochs every `interval`, no byte bound, until stopped.
pub fn every(interval: Duration) -> RunOptions {
    options(
        EpochPolicy {
            interval,
            max_bytes: usize::MAX,
        },
        Duration::from_secs(30),
        false,
    )
}

/// Epochs of `max_bytes` message bytes (no timer, so a run's epochs and writes repeat).
pub fn by_size(max_bytes: usize, stop_when_drained: bool) -> RunOptions {
    options(
        EpochPolicy {
            interval: Duration::from_secs(3600),
            max_bytes,
        },
        Duration::from_secs(3600),
        stop_when_drained,
    )
}

/// The location seen through `store` (which wraps `base`'s store).
pub fn through(base: &Location, store: &FaultyStore) -> Location {
    Location {
        store: Arc::new(store.clone()),
        ..base.clone()
    }
}

pub fn serve_through(
    log: &MemoryLog,
    base: &Location,
    store: &FaultyStore,
    options: &RunOptions,
) -> Result<RunReport, RunError> {
    serve(log, &through(base, store), options, never())
}

pub fn is_fenced(error: &RunError) -> bool {
    matches!(error, RunError::Checkpoint(e) if e.is_fenced())
}

/// A dead-letter topic in memory: what it was sent, as (reason, record), in order.
#[derive(Clone, Debug)]
pub struct CollectedTopic {
    pub name: String,
    pub sent: Arc<Mutex<Vec<(String, String)>>>,
}

impl CollectedTopic {
    pub fn new(name: &str) -> Self {
        CollectedTopic {
            name: name.into(),
            sent: Arc::default(),
        }
    }

    pub fn sent(&self) -> Vec<(String, String)> {
        self.sent.lock().unwrap().clone()
    }
}

impl DeadLetterDestination for CollectedTopic {
    fn take(&self, letters: &mut Vec<DeadLetter>) -> Vec<DeadLetter> {
        std::mem::take(letters)
    }

    fn deliver(&self, letters: &[DeadLetter]) -> Result<(), RunError> {
        self.sent.lock().unwrap().extend(
            letters
                .iter()
                .map(|l| (l.reason.code().to_string(), l.record.as_str().to_string())),
        );
        Ok(())
    }

    fn topic(&self) -> Option<&str> {
        Some(&self.name)
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Runs the service on `log` into `location` until it returns.
pub fn serve(
    log: &MemoryLog,
    location: &Location,
    options: &RunOptions,
    stop: Arc<AtomicBool>,
) -> Result<RunReport, RunError> {
    serve_with(
        log,
        location,
        options,
        SinkOptions::default(),
        Box::new(EpochFile),
        stop,
    )
}

/// [`serve`] with these file settings and dead-letter destination.
pub fn serve_with(
    log: &MemoryLog,
    location: &Location,
    options: &RunOptions,
    sink_options: SinkOptions,
    dead_letters: Box<dyn DeadLetterDestination>,
    stop: Arc<AtomicBool>,
) -> Result<RunReport, RunError> {
    let runtime = runtime();
    let sink = ParquetSink::new(location.clone(), sink_options).unwrap();
    let mut source = log.source();
    run_on(
        &mut source,
        dead_letters,
        options,
        &sink,
        runtime.handle(),
        &Telemetry::default(),
        stop,
    )
}

/// [`serve`] on any source, reporting to `telemetry`.
pub fn serve_on(
    source: &mut dyn Source,
    location: &Location,
    options: &RunOptions,
    telemetry: &Telemetry,
    stop: Arc<AtomicBool>,
) -> Result<RunReport, RunError> {
    let runtime = runtime();
    let sink = ParquetSink::new(location.clone(), SinkOptions::default()).unwrap();
    run_on(
        source,
        Box::new(EpochFile),
        options,
        &sink,
        runtime.handle(),
        telemetry,
        stop,
    )
}

/// The data and dead-letter files of `epoch`, path → bytes.
pub fn epoch_files(location: &Location, epoch: u64) -> BTreeMap<String, Vec<u8>> {
    let name = format!("/part-{epoch:08}-");
    objects(location)
        .into_iter()
        .filter(|(path, _)| path.contains(&name))
        .collect()
}

/// Runs until the checkpoint of `crash` fails to be written (a crash after the epoch's files),
/// returns the crashed attempt's files of that epoch.
pub fn crash_before_checkpoint(
    log: &MemoryLog,
    location: &Location,
    crash: u64,
    options: &RunOptions,
    sink: SinkOptions,
) -> BTreeMap<String, Vec<u8>> {
    let checkpoint = format!("checkpoint-{crash:020}.bin");
    let store = FaultyStore::with_fault(location.store.clone(), Fault::FailBefore, move |w| {
        w.path.ends_with(&checkpoint)
    });
    let failed = serve_with(
        log,
        &through(location, &store),
        options,
        sink,
        Box::new(EpochFile),
        never(),
    );
    assert!(failed.is_err(), "epoch {crash}: the run crashed");
    epoch_files(location, crash)
}

/// A throttled broker: at most one record per `every` for the first `slow_records` records,
/// then full speed, or nothing at all with `stall_after`.
pub struct Throttled {
    pub inner: MemorySource,
    pub every: Duration,
    pub slow_records: u64,
    pub stall_after: bool,
    delivered: u64,
    next_at: Instant,
}

impl Throttled {
    pub fn new(inner: MemorySource, every: Duration, slow_records: u64, stall_after: bool) -> Self {
        Throttled {
            inner,
            every,
            slow_records,
            stall_after,
            delivered: 0,
            next_at: Instant::now(),
        }
    }
}

impl Source for Throttled {
    fn partitions(&self, topics: &[String]) -> Result<Vec<(String, i32)>, SourceFailure> {
        self.inner.partitions(topics)
    }

    fn assign(&mut self, partitions: &[Assignment]) -> Result<(), SourceFailure> {
        self.inner.assign(partitions)
    }

    fn poll(&mut self, timeout: Duration) -> Polled {
        let wait = self.next_at.saturating_duration_since(Instant::now());
        let slow = self.delivered < self.slow_records;
        if (slow && !wait.is_zero()) || (!slow && self.stall_after) {
            thread::sleep(wait.max(Duration::from_millis(2)).min(timeout));
            return Polled::Nothing;
        }
        let polled = self.inner.poll(timeout);
        if matches!(polled, Polled::Record(_)) {
            self.delivered += 1;
            if slow {
                self.next_at = Instant::now() + self.every;
            }
        }
        polled
    }

    fn watermarks(&self, partition: usize) -> Result<(i64, i64), SourceFailure> {
        self.inner.watermarks(partition)
    }

    fn committed(&self, next_offsets: &[(usize, i64)], commit: bool) {
        self.inner.committed(next_offsets, commit)
    }
}

pub fn never() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// The service on its own thread, with the flag that stops it.
pub fn spawn_serve(
    log: &MemoryLog,
    location: &Location,
    options: RunOptions,
) -> (
    thread::JoinHandle<Result<RunReport, RunError>>,
    Arc<AtomicBool>,
) {
    let stop = never();
    let (log, location, flag) = (log.clone(), location.clone(), stop.clone());
    let running = thread::spawn(move || serve(&log, &location, &options, flag));
    (running, stop)
}

/// Every object under the location, path → bytes.
pub fn objects(location: &Location) -> BTreeMap<String, Vec<u8>> {
    runtime().block_on(async {
        let metas: Vec<_> = location
            .store
            .list(Some(&location.prefix))
            .try_collect()
            .await
            .unwrap();
        let mut objects = BTreeMap::new();
        for meta in metas {
            let bytes = location.store.get(&meta.location).await.unwrap();
            let bytes = bytes.bytes().await.unwrap();
            objects.insert(meta.location.to_string(), bytes.to_vec());
        }
        objects
    })
}

/// The rows of an output, sorted.
pub fn output_rows(location: &Location) -> Vec<Row> {
    rows(&runtime().block_on(read_all(location)).unwrap())
}

/// The dead letters of an output as (reason, record), sorted.
pub fn output_letters(location: &Location) -> Vec<(String, String)> {
    let mut letters: Vec<(String, String)> = objects(location)
        .iter()
        .filter(|(path, _)| path.contains("_dead_letter/"))
        .flat_map(|(_, bytes)| {
            String::from_utf8(bytes.clone())
                .unwrap()
                .lines()
                .map(|line| {
                    let v: serde_json::Value = serde_json::from_str(line).unwrap();
                    (
                        v["reason"].as_str().unwrap().to_owned(),
                        v["record"].as_str().unwrap().to_owned(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    letters.sort();
    letters
}

/// `meterflow transform` of the same lines, in process: rows and dead letters.
pub fn transform(lines: &[String]) -> (Vec<Row>, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let mut file = std::fs::File::create(&input).unwrap();
    for line in lines {
        writeln!(file, "{line}").unwrap();
    }
    let location = memory_location();
    let sink = ParquetSink::new(location.clone(), SinkOptions::default()).unwrap();
    let runtime = runtime();
    let options = PipelineOptions {
        state: StateSettings::with_lateness(10 * MICROS_PER_MINUTE),
        // The service's future-time guard: its processing time plus `max_future`.
        limits: Limits {
            latest_time: now_micros() + MAX_FUTURE,
        },
        epoch_readings: 1_000_000,
    };
    pipeline::transform(
        vec![Input::Path(input)],
        &sink,
        runtime.handle(),
        &options,
        |_| {},
    )
    .unwrap();
    (output_rows(&location), output_letters(&location))
}

/// Asserts two sorted row lists are equal, showing only the rows that differ.
pub fn assert_same_rows(got: &[Row], expected: &[Row]) {
    let missing: Vec<&Row> = expected
        .iter()
        .filter(|r| got.binary_search(r).is_err())
        .collect();
    let extra: Vec<&Row> = got
        .iter()
        .filter(|r| expected.binary_search(r).is_err())
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty() && got.len() == expected.len(),
        "{} rows, {} expected; missing {missing:?}; extra {extra:?}",
        got.len(),
        expected.len()
    );
}

/// Waits until `done` holds, for at most 20 s.
pub fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

pub fn latest_checkpoint_epoch(location: &Location) -> Option<u64> {
    runtime()
        .block_on(CheckpointStore::new(location.clone()).latest())
        .unwrap()
        .map(|c| c.epoch)
}
