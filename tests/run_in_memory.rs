//! The service's protocol in process, on an in-memory log and an in-memory object store: a
//! drain equals `transform`, a replay rewrites identical bytes, a second instance fences the
//! first, an idle partition releases waiting readings, a stop commits what was read, and
//! redelivered or skipped offsets change nothing. The container tests (`kafka_run.rs`) run
//! the same service against a real broker and store.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::num::NonZeroU32;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use meterflow::deltas::StateSettings;
use meterflow::generate::{generate, GenerateOptions};
use meterflow::inspect::read_all;
use meterflow::kafka::{KafkaSettings, SaslMechanism, SecurityProtocol};
use meterflow::pipeline::{self, PipelineOptions};
use meterflow::reading::Limits;
use meterflow::run::checkpoint::{CheckpointError, CheckpointStore};
use meterflow::run::dead_letters::EpochFile;
use meterflow::run::epoch_policy::EpochPolicy;
use meterflow::run::telemetry::Telemetry;
use meterflow::run::{run_on, RunError, RunOptions, RunReport};
use meterflow::sink::store::Location;
use meterflow::sink::{ParquetSink, SinkOptions};
use meterflow::source::files::Input;
use meterflow::source::memory::MemoryLog;
use meterflow::timestamp::{parse_micros, MICROS_PER_MINUTE};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use support::{rows, Row};

const TOPIC: &str = "readings";
/// One day, as `--max-future`'s default.
const MAX_FUTURE: i64 = 86_400_000_000;

fn now_micros() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    since_epoch.as_micros() as i64
}

/// A generated fleet's lines (disorder within the lateness, duplicates, faults).
fn fleet(devices: u32, seed: u64) -> Vec<String> {
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
fn partition_of(line: &str, partitions: i32) -> i32 {
    let first = serde_json::from_str::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v["measurements"][0]["device_id"].as_i64());
    first.map_or(0, |id| (id / 4 % i64::from(partitions)) as i32)
}

/// A log with `lines` spread over `partitions` partitions.
fn log_of(lines: &[String], partitions: i32) -> MemoryLog {
    let log = MemoryLog::default();
    log.create_topic(TOPIC, partitions as usize);
    for line in lines {
        log.append(TOPIC, partition_of(line, partitions), line.as_bytes());
    }
    log
}

fn memory_location() -> Location {
    Location {
        store: Arc::new(InMemory::new()),
        prefix: Path::from("out"),
        display: "memory://out".into(),
    }
}

fn options(policy: EpochPolicy, idle_timeout: Duration, stop_when_drained: bool) -> RunOptions {
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
    }
}

/// Epochs every 50 ms or 64 KiB, drained runs stop.
fn draining() -> RunOptions {
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
fn every(interval: Duration) -> RunOptions {
    options(
        EpochPolicy {
            interval,
            max_bytes: usize::MAX,
        },
        Duration::from_secs(30),
        false,
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Runs the service on `log` into `location` until it returns.
fn serve(
    log: &MemoryLog,
    location: &Location,
    options: &RunOptions,
    stop: Arc<AtomicBool>,
) -> Result<RunReport, RunError> {
    let runtime = runtime();
    let sink = ParquetSink::new(location.clone(), SinkOptions::default()).unwrap();
    let mut source = log.source();
    run_on(
        &mut source,
        Box::new(EpochFile),
        options,
        &sink,
        runtime.handle(),
        &Telemetry::default(),
        stop,
    )
}

fn never() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// The service on its own thread, with the flag that stops it.
fn spawn_serve(
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
fn objects(location: &Location) -> BTreeMap<String, Vec<u8>> {
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
fn output_rows(location: &Location) -> Vec<Row> {
    rows(&runtime().block_on(read_all(location)).unwrap())
}

/// The dead letters of an output as (reason, record), sorted.
fn output_letters(location: &Location) -> Vec<(String, String)> {
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
fn transform(lines: &[String]) -> (Vec<Row>, Vec<(String, String)>) {
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
fn assert_same_rows(got: &[Row], expected: &[Row]) {
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
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

fn latest_checkpoint_epoch(location: &Location) -> Option<u64> {
    runtime()
        .block_on(CheckpointStore::new(location.clone()).latest())
        .unwrap()
        .map(|c| c.epoch)
}

#[test]
fn a_drain_equals_transform_and_a_replay_rewrites_identical_bytes() {
    let lines = fleet(40, 3);
    let log = log_of(&lines, 3);
    let location = memory_location();
    let report = serve(&log, &location, &draining(), never()).unwrap();
    assert!(report.epochs >= 2, "several epochs: {}", report.epochs);
    let (rows, letters) = transform(&lines);
    assert!(rows.len() > 1000);
    assert_same_rows(&output_rows(&location), &rows);
    assert_eq!(output_letters(&location), letters);

    // A crash after the last epoch's files but before its checkpoint: the intent stays.
    let committed = objects(&location);
    let last = latest_checkpoint_epoch(&location).unwrap();
    let checkpoint = format!("out/_checkpoint/checkpoint-{last:020}.bin");
    assert!(committed.contains_key(&checkpoint), "{committed:?}");
    runtime()
        .block_on(location.store.delete(&Path::from(checkpoint.as_str())))
        .unwrap();
    let replayed = serve(&log, &location, &draining(), never()).unwrap();
    assert_eq!(
        replayed.epochs, 1,
        "the recorded epoch, replayed, and nothing else"
    );
    let after = objects(&location);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        committed.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &committed {
        assert!(
            after[path] == *bytes,
            "{path} is byte-identical after the replay"
        );
    }
}

#[test]
fn a_second_instance_that_claims_an_epoch_first_fences_the_first() {
    let lines = fleet(12, 5);
    let log = log_of(&lines, 2);
    let location = memory_location();
    // The first instance closes its first epoch only after a second.
    let slow = every(Duration::from_millis(1500));
    let (first, _) = spawn_serve(&log, &location, slow);
    wait_for("the first instance to read everything", || {
        log.delivered() >= lines.len() as u64
    });
    // Meanwhile a second instance on the same prefix drains the topic, epoch 0 first.
    serve(&log, &location, &draining(), never()).unwrap();
    let by_second = objects(&location);
    let error = first
        .join()
        .unwrap()
        .expect_err("the first instance is fenced");
    assert!(
        matches!(
            error,
            RunError::Checkpoint(CheckpointError::Fenced { epoch: 0, .. })
        ),
        "{error:?}"
    );
    assert_eq!(
        objects(&location),
        by_second,
        "the fenced instance wrote nothing"
    );
    assert_same_rows(&output_rows(&location), &transform(&lines).0);
}

#[test]
fn an_idle_partition_releases_the_readings_it_held_back() {
    let lines = fleet(16, 7);
    let policy = EpochPolicy {
        interval: Duration::from_millis(50),
        max_bytes: usize::MAX,
    };
    let rows_after = |idle_timeout: Duration| {
        // Every message in partition 0, fed while the service runs so partition 0 stays
        // active; partition 1 never delivers and holds the watermark back until it is idle.
        let log = MemoryLog::default();
        log.create_topic(TOPIC, 2);
        let location = memory_location();
        let (running, stop) = spawn_serve(&log, &location, options(policy, idle_timeout, false));
        for line in &lines {
            log.append(TOPIC, 0, line.as_bytes());
            thread::sleep(Duration::from_millis(2));
        }
        wait_for("every message read", || {
            log.delivered() >= lines.len() as u64
        });
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        running.join().unwrap().unwrap();
        output_rows(&location)
    };
    let held = rows_after(Duration::from_secs(3600));
    assert!(
        held.is_empty(),
        "a silent partition holds every reading back"
    );
    let released = rows_after(Duration::from_millis(100));
    let (all, _) = transform(&lines);
    assert!(
        released.len() > all.len() / 2,
        "{} of {} rows released",
        released.len(),
        all.len()
    );
    assert!(released.iter().all(|row| all.binary_search(row).is_ok()));
}

#[test]
fn a_stop_commits_every_message_read_and_a_restart_loses_nothing() {
    let lines = fleet(20, 9);
    let log = log_of(&lines, 3);
    let location = memory_location();
    let (running, stop) = spawn_serve(&log, &location, every(Duration::from_secs(3600)));
    wait_for("every message read", || {
        log.delivered() >= lines.len() as u64
    });
    stop.store(true, Ordering::Relaxed);
    let report = running.join().unwrap().unwrap();
    assert_eq!(report.epochs, 1, "the stop closed the one open epoch");
    let checkpoint = runtime()
        .block_on(CheckpointStore::new(location.clone()).latest())
        .unwrap()
        .unwrap();
    for (index, next) in checkpoint.next_offsets.iter().enumerate() {
        let (_, high) = log.watermarks(TOPIC, index as i32).unwrap();
        assert_eq!(
            *next, high,
            "partition {index}: the checkpoint covers every message"
        );
        assert_eq!(log.committed()[&(TOPIC.to_string(), index as i32)], high);
    }
    // Readings still waiting for the watermark come out after the restart.
    serve(&log, &location, &draining(), never()).unwrap();
    let (rows, letters) = transform(&lines);
    assert_same_rows(&output_rows(&location), &rows);
    assert_eq!(output_letters(&location), letters);
}

#[test]
fn redelivered_and_skipped_offsets_change_nothing() {
    let lines = fleet(20, 11);
    let log = MemoryLog::default();
    log.create_topic(TOPIC, 2);
    // Partition 1 has gaps, as compaction or transaction markers leave.
    let mut next = [0i64; 2];
    for (i, line) in lines.iter().enumerate() {
        let partition = partition_of(line, 2);
        let offset = next[partition as usize] + i64::from(partition == 1 && i % 7 == 0) * 3;
        log.append_at(TOPIC, partition, offset, line.as_bytes());
        next[partition as usize] = offset + 1;
    }
    let location = memory_location();
    let (running, stop) = spawn_serve(&log, &location, every(Duration::from_millis(200)));
    let total = lines.len() as u64;
    wait_for("every message read", || log.delivered() >= total);
    // A broker resends records already read (some committed by now, some only buffered).
    for offset in [0, 1, 2, next[0] - 2, next[0] - 1] {
        log.redeliver(TOPIC, 0, offset);
    }
    wait_for("the redeliveries", || log.delivered() >= total + 5);
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    running.join().unwrap().unwrap();
    serve(&log, &location, &draining(), never()).unwrap();
    let (rows, letters) = transform(&lines);
    assert_same_rows(&output_rows(&location), &rows);
    assert_eq!(output_letters(&location), letters);
}
