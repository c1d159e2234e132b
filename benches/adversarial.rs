//! Costs of adversarial messages on a large state (not timed tests: figures and ratios).
//!
//! 1. A 100,000-reading message whose readings are all refused in the state stage (late) must
//!    be processed at least at half the rate of a clean message of the same size, on top of a
//!    1,000,000-device state: a dead letter's cost may not grow with its message. Two rates are
//!    reported: the processing stage alone (decode and state machine, the pipeline's serial
//!    part) and that stage plus encoding what the message produced (its rows as Parquet, its
//!    dead letters as JSON lines), which is where a dead letter's words are written.
//! 2. One message of 5,000 readings a day apart on that state must lay out its epoch in
//!    memory proportional to its rows: peak RSS below 600 MB.
//!
//! Run with `cargo bench --bench adversarial`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::memory::InMemory;

use meterflow::deltas::StateSettings;
use meterflow::pipeline::EpochContent;
use meterflow::pipeline::{PipelineOptions, Processor};
use meterflow::reading::{DecodedBlock, Limits};
use meterflow::sink::dead_letter::Origin;
use meterflow::sink::store::Location;
use meterflow::sink::{ParquetSink, SinkOptions};
use meterflow::timestamp::{format_micros, parse_micros, MICROS_PER_DAY, MICROS_PER_MINUTE};

/// The binary's allocator, so the figures are the binary's (a dead letter allocates).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STATE_DEVICES: i32 = 1_000_000;
const MESSAGE_READINGS: i64 = 100_000;
const MESSAGE_DEVICES: i64 = 1_000;
const TARGET_RATE_RATIO: f64 = 0.5;
const TARGET_PEAK_RSS_MB: f64 = 600.0;

fn options() -> PipelineOptions {
    PipelineOptions {
        state: StateSettings::with_lateness(10 * MICROS_PER_MINUTE),
        limits: Limits {
            latest_time: i64::MAX,
        },
        epoch_readings: u64::MAX,
    }
}

fn element(device: i64, time: i64, energy: f64) -> String {
    format!(
        r#"{{"device_id":{device},"device_name":"meter {device}","time":"{}","cumulative_energy":{energy}}}"#,
        format_micros(time)
    )
}

/// One message holding `elements`.
fn message(elements: impl Iterator<Item = String>) -> Vec<u8> {
    let elements: Vec<String> = elements.collect();
    format!(r#"{{"measurements":[{}]}}"#, elements.join(",")).into_bytes()
}

/// Decodes and applies one message; returns the time it took.
fn apply(processor: &mut Processor, bytes: Vec<u8>, line: u64) -> Duration {
    let file: Arc<str> = "bench".into();
    let started = Instant::now();
    let mut block = DecodedBlock::new(bytes);
    let end = block.bytes().len();
    block.decode(0..end, line, &options().limits);
    processor.apply(&block, &block.messages[0], 0, |line| Origin::File {
        file: file.clone(),
        line,
    });
    started.elapsed()
}

/// Encodes an epoch's rows and dead letters as the writer does; returns the time it took.
fn encode(sink: &ParquetSink, epoch: EpochContent) -> Duration {
    let started = Instant::now();
    let files = sink
        .encode_epoch(0, epoch.rows.into_days())
        .expect("rows encode");
    let letters = ParquetSink::encode_dead_letters(0, &epoch.dead_letters);
    drop((files, letters, epoch.dead_letters));
    started.elapsed()
}

/// A processor whose state holds `STATE_DEVICES` devices, each with an emitted reading.
fn large_state(start: i64) -> Processor {
    let mut processor = Processor::new(&options());
    for chunk in 0..STATE_DEVICES / 10_000 {
        let devices = i64::from(chunk) * 10_000..i64::from(chunk + 1) * 10_000;
        let bytes = message(devices.map(|d| element(d, start, 1.0)));
        apply(&mut processor, bytes, 1);
    }
    // A later reading of every device of the message range moves the watermark past `start`.
    let bytes =
        message((0..MESSAGE_DEVICES).map(|d| element(d, start + 60 * MICROS_PER_MINUTE, 2.0)));
    apply(&mut processor, bytes, 2);
    processor.take_epoch(false);
    processor
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let start = parse_micros("2022-07-11T00:00:00Z").expect("valid time");
    let per_device = MESSAGE_READINGS / MESSAGE_DEVICES;

    // 2. first, so the peak is the state plus this epoch's layout.
    let mut processor = large_state(start);
    let state_rss = peak_rss_mb();
    let device = i64::from(STATE_DEVICES) + 7;
    let bytes = message((0..5_000).map(|day| element(device, start - day * MICROS_PER_DAY, 1.0)));
    apply(&mut processor, bytes, 3);
    let epoch = processor.take_epoch(true);
    let days = epoch.rows.into_days();
    let rows: usize = days.iter().map(|d| d.len()).sum();
    assert_eq!(days.len(), 5_000);
    assert!(rows >= 5_000);
    let encoded = ParquetSink::encode_dead_letters(0, &epoch.dead_letters);
    drop(encoded);
    let peak = peak_rss_mb();
    println!(
        "adversarial: 5,000 readings a day apart on a {STATE_DEVICES}-device state: peak RSS {peak:.0} MB \
         (state alone {state_rss:.0} MB; target < {TARGET_PEAK_RSS_MB}); ratio to target {:.2}",
        peak / TARGET_PEAK_RSS_MB
    );

    // 1. clean and refused messages of the same size, alternately.
    let location = Location {
        store: Arc::new(InMemory::new()),
        prefix: "bench".into(),
        display: "memory://bench".into(),
    };
    let sink = ParquetSink::new(location, SinkOptions::default()).expect("sink");
    let mut processor = large_state(start);
    let (mut clean, mut refused) = (Vec::new(), Vec::new());
    for round in 0..5i64 {
        let base = start + (2 + round) * 60 * MICROS_PER_MINUTE;
        let bytes = message((0..MESSAGE_READINGS).map(|i| {
            let (d, k) = (i % MESSAGE_DEVICES, i / MESSAGE_DEVICES);
            element(d, base + k * 30_000_000, 3.0 + k as f64)
        }));
        let stage = apply(&mut processor, bytes, 4);
        let epoch = processor.take_epoch(false);
        clean.push((stage, stage + encode(&sink, epoch)));
        // Older than every device's emitted history: each reading is a `late` dead letter.
        let bytes = message((0..MESSAGE_READINGS).map(|i| {
            let (d, k) = (i % MESSAGE_DEVICES, i / MESSAGE_DEVICES);
            element(d, start - (k + 1) * MICROS_PER_MINUTE, 1.0)
        }));
        let before = processor.summary.dead_letter_total();
        let stage = apply(&mut processor, bytes, 5);
        assert_eq!(
            processor.summary.dead_letter_total() - before,
            MESSAGE_READINGS as u64,
            "every reading refused"
        );
        let epoch = processor.take_epoch(false);
        assert_eq!(epoch.dead_letters.len(), MESSAGE_READINGS as usize);
        assert!(epoch.dead_letters.iter().all(|l| !l.record.is_empty()));
        refused.push((stage, stage + encode(&sink, epoch)));
    }
    let best = |times: &[Duration]| times.iter().min().copied().unwrap_or_default();
    let rate = |d: Duration| MESSAGE_READINGS as f64 / d.as_secs_f64();
    for (what, pick) in [
        (
            "processing stage",
            (|t: &(Duration, Duration)| t.0) as fn(&_) -> Duration,
        ),
        ("stage + encoding", |t: &(Duration, Duration)| t.1),
    ] {
        let clean_rate = rate(best(&clean.iter().map(pick).collect::<Vec<_>>()));
        let refused_rate = rate(best(&refused.iter().map(pick).collect::<Vec<_>>()));
        println!(
            "adversarial: {MESSAGE_READINGS}-reading message ({per_device} per device) on a \
             {STATE_DEVICES}-device state, {what}: clean {:.2} M readings/s, all refused as late \
             {:.2} M readings/s; ratio {:.2} (target >= {TARGET_RATE_RATIO})",
            clean_rate / 1e6,
            refused_rate / 1e6,
            refused_rate / clean_rate
        );
    }
}
