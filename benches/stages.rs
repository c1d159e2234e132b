//! Criterion benchmarks of the CPU stages: decoding messages, applying deltas, and encoding an
//! epoch's rows as Parquet.
//!
//! Run with `cargo bench --bench stages`; throughput is reported per reading.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meterflow::deltas::Deltas;
use meterflow::generate::{generate, GenerateOptions};
use meterflow::pipeline::offers;
use meterflow::reading::{DecodedBlock, Limits};
use meterflow::sink::store::{self, StoreOptions};
use meterflow::sink::{ParquetSink, SinkOptions};
use meterflow::timestamp::{parse_micros, MICROS_PER_MINUTE};

/// A deterministic fleet: 2,000 devices for 4 hours at 5-minute intervals (96,000 readings).
fn fleet() -> (Vec<u8>, u64) {
    let options = GenerateOptions {
        devices: 2_000,
        hours: 4.0,
        interval: 5 * MICROS_PER_MINUTE,
        seed: 42,
        disorder: 2 * MICROS_PER_MINUTE,
        fault_rate: 0.0,
        duplicate_rate: 0.0,
        start: parse_micros("2022-07-11T00:00:00Z").expect("valid start"),
        devices_per_message: std::num::NonZeroU32::new(8).expect("non-zero"),
    };
    let mut bytes = Vec::new();
    let stats = generate(&options, &mut bytes).expect("generate into memory");
    (bytes, stats.readings)
}

fn decode_all(bytes: &[u8]) -> DecodedBlock {
    let limits = Limits {
        latest_time: i64::MAX,
    };
    let mut block = DecodedBlock::new(bytes.to_vec());
    let mut start = 0;
    for (line, end) in memchr::memchr_iter(b'\n', bytes).enumerate() {
        block.decode(start..end, line as u64 + 1, &limits);
        start = end + 1;
    }
    block
}

fn stages(c: &mut Criterion) {
    let (bytes, readings) = fleet();
    let mut group = c.benchmark_group("stages");
    group.throughput(Throughput::Elements(readings));
    group.bench_function("decode", |b| b.iter(|| decode_all(&bytes)));

    let block = decode_all(&bytes);
    group.bench_function("deltas", |b| {
        b.iter(|| {
            let mut deltas = Deltas::new(10 * MICROS_PER_MINUTE);
            for message in &block.messages {
                deltas.apply_message(0, offers(&block, message), |_, _| {});
            }
            deltas.flush();
            deltas.take_rows()
        })
    });

    let mut deltas = Deltas::new(10 * MICROS_PER_MINUTE);
    for message in &block.messages {
        deltas.apply_message(0, offers(&block, message), |_, _| {});
    }
    deltas.flush();
    let days = deltas.take_rows();
    let directory = std::env::temp_dir().join("meterflow-bench-encode");
    let location = store::open(
        directory.to_str().expect("UTF-8 temp dir"),
        &StoreOptions::default(),
    )
    .expect("local location");
    let sink = ParquetSink::new(location, SinkOptions::default()).expect("sink");
    group.bench_function("encode", |b| {
        b.iter(|| sink.encode_epoch(0, days.clone()).expect("encode"))
    });
    group.finish();
}

criterion_group!(benches, stages);
criterion_main!(benches);
