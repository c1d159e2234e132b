//! The checkpoint of a 10 M-device fleet: its size, the time to encode and store it and to
//! restore it, and the process's peak memory while it does (not timed by a test harness).
//!
//! Builds the per-device state `run` holds between epochs (each device with an emitted
//! baseline and a realistic name), then does what an epoch's commit does with it: encode the
//! state, encode the checkpoint object (postcard + zstd), and put it to an object store (a
//! local directory: the disk, not a network, so add the bytes over the S3 link's bandwidth).
//! While committing, `run` also holds the epoch's messages (at most `--epoch-max-bytes`, 256
//! MiB by default): so does the benchmark. Then what a restart does: read, decode and rebuild
//! the state. Peak RSS is read from
//! `/proc/self/status` (VmHWM), reset before each phase, with the binary's allocator.
//! Run with `cargo bench --bench checkpoint_scale` (`MF_BENCH_DEVICES` to change the fleet;
//! as a test, without `--bench`, it runs on 100,000 devices).

use std::time::Instant;

use meterflow::deltas::{Deltas, Offer, StateSettings};
use meterflow::run::checkpoint::{decode_checkpoint, encode_checkpoint, Checkpoint};
use meterflow::summary::Summary;
use meterflow::timestamp::MICROS_PER_MINUTE;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The deployment's memory limit (terraform/meterflow.tf) and the share the peak may use.
const MEMORY_LIMIT_BYTES: f64 = 4.0 * 1024.0 * 1024.0 * 1024.0;
const PEAK_SHARE: f64 = 0.75;
/// Encode and upload of one checkpoint.
const COMMIT_SECONDS: f64 = 30.0;

const DISTRICTS: [&str; 18] = [
    "Central and Western",
    "Wan Chai",
    "Eastern",
    "Southern",
    "Yau Tsim Mong",
    "Sham Shui Po",
    "Kowloon City",
    "Wong Tai Sin",
    "Kwun Tong",
    "Kwai Tsing",
    "Tsuen Wan",
    "Tuen Mun",
    "Yuen Long",
    "North",
    "Tai Po",
    "Sha Tin",
    "Sai Kung",
    "Islands",
];

/// What `run` holds besides the state while it commits: the epoch's messages, at most
/// `--epoch-max-bytes` (default 256 MiB).
const EPOCH_BYTES: usize = 256 * 1024 * 1024;

/// Devices fed per round; each round is flushed so its rows do not pile up.
const ROUND: i32 = 250_000;

fn status_kib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Resident and peak resident set, MiB.
fn rss_mib() -> (f64, f64) {
    (status_kib("VmRSS:") / 1024.0, status_kib("VmHWM:") / 1024.0)
}

/// Starts a new peak (Linux: writing 5 to clear_refs resets VmHWM to the current RSS).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn main() {
    // `cargo test --all-targets` runs this without `--bench`: a small fleet checks it works.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let devices: i32 = std::env::var("MF_BENCH_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if measuring { 10_000_000 } else { 100_000 });
    let settings = StateSettings::with_lateness(10 * MICROS_PER_MINUTE);
    let started = Instant::now();
    let mut deltas = Deltas::with_settings(settings);
    let mut name = String::new();
    for first in (0..devices).step_by(ROUND as usize) {
        for i in first..(first + ROUND).min(devices) {
            use std::fmt::Write;
            name.clear();
            // Spread like a real fleet's: ids with gaps, names of 18 districts, readings at
            // different times of a day, energies with two decimals.
            let district = DISTRICTS[(i % 18) as usize];
            let _ = write!(name, "{district} meter {:06}", i / 18);
            let mixed = (i as u64).wrapping_mul(2_654_435_761) % 1_000_000;
            let offer = Offer {
                device_id: 1_000_000 + i * 3 + (mixed % 3) as i32,
                time: (mixed % 288) as i64 * 5 * MICROS_PER_MINUTE,
                cumulative_energy: (10_000 + mixed) as f64 / 100.0,
                device_name: &name,
                index: 0,
            };
            deltas.apply_message(0, [offer], |_, _| {});
        }
        deltas.flush();
        drop(deltas.take_rows());
    }
    assert_eq!(deltas.device_count(), devices as usize);
    let (state_rss, _) = rss_mib();
    println!(
        "checkpoint_scale: {devices} devices in state ({:.1} s to build); RSS {state_rss:.0} MiB",
        started.elapsed().as_secs_f64()
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let path = Path::from("_checkpoint/checkpoint-00000000000000000001.bin");

    let epoch_messages = std::hint::black_box(vec![1u8; EPOCH_BYTES]);
    reset_peak();
    let clock = Instant::now();
    let state = deltas.encode_state().unwrap();
    let encode_state = clock.elapsed().as_secs_f64();
    let clock = Instant::now();
    let checkpoint = Checkpoint {
        epoch: 1,
        partitions: vec![("meter-readings".into(), 0)],
        next_offsets: vec![devices.into()],
        files: Vec::new(),
        totals: Summary::default(),
        state,
        offset_gaps: Vec::new(),
    };
    let object = encode_checkpoint(&checkpoint).unwrap();
    let encode_object = clock.elapsed().as_secs_f64();
    drop(checkpoint);
    let clock = Instant::now();
    let size = object.len();
    runtime
        .block_on(store.put(&path, PutPayload::from(object)))
        .unwrap();
    let upload = clock.elapsed().as_secs_f64();
    let (_, commit_peak) = rss_mib();
    drop(epoch_messages);

    drop(deltas);
    reset_peak();
    let clock = Instant::now();
    let bytes = runtime
        .block_on(async { store.get(&path).await?.bytes().await })
        .unwrap();
    let read = decode_checkpoint("checkpoint", &bytes).unwrap();
    drop(bytes);
    let restored = Deltas::decode_state(&read.state, &settings).unwrap();
    drop(read);
    let restore = clock.elapsed().as_secs_f64();
    let (_, restore_peak) = rss_mib();
    assert_eq!(restored.device_count(), devices as usize);

    let commit = encode_state + encode_object + upload;
    let peak = commit_peak.max(restore_peak);
    let limit_mib = MEMORY_LIMIT_BYTES / 1024.0 / 1024.0;
    println!(
        "checkpoint_scale: checkpoint {:.1} MB ({:.1} bytes per device); encode state {encode_state:.2} s, \
         encode object (postcard + zstd 3) {encode_object:.2} s, put to local disk {upload:.2} s; \
         restore (get + decode) {restore:.2} s",
        size as f64 / 1e6,
        size as f64 / f64::from(devices),
    );
    println!(
        "checkpoint_scale: peak RSS {commit_peak:.0} MiB while committing, {restore_peak:.0} MiB \
         while restoring; limit {limit_mib:.0} MiB × {PEAK_SHARE} → ratio {:.2} (≤ 1 passes)",
        peak / (limit_mib * PEAK_SHARE)
    );
    println!(
        "checkpoint_scale: encode + upload {commit:.2} s of {COMMIT_SECONDS} s → ratio {:.2}; at \
         100 MB/s to S3 the upload adds {:.1} s",
        commit / COMMIT_SECONDS,
        size as f64 / 100e6
    );
}
