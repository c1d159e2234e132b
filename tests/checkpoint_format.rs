//! The checkpoint format is a promise to the next release: a checkpoint written by this one
//! (kept as a fixture) must be read back and continued exactly, and this release must still
//! write those very bytes. A change to what the state holds therefore has to bump
//! `CHECKPOINT_FORMAT` and replace the fixture (`MF_UPDATE_FIXTURES=1 cargo test --test
//! checkpoint_format`), which makes the change visible in review.

use meterflow::deltas::{DayRows, Row, StateSettings};
use meterflow::pipeline::{PipelineOptions, Processor};
use meterflow::reading::{DecodedBlock, Limits};
use meterflow::run::checkpoint::{
    decode_checkpoint, encode_checkpoint, Checkpoint, SkippedGap, CHECKPOINT_FORMAT,
};
use meterflow::sink::dead_letter::Origin;
use meterflow::timestamp::MICROS_PER_MINUTE;

const FIXTURE: &str = "tests/fixtures/checkpoint-format-2.bin";

/// Written by the release before format 2 (no offset gaps): still read, and continued alike.
const FORMAT_1: &str = "tests/fixtures/checkpoint-format-1.bin";

fn options() -> PipelineOptions {
    PipelineOptions {
        state: StateSettings {
            state_ttl: Some(3 * 60 * MICROS_PER_MINUTE),
            ..StateSettings::with_lateness(10 * MICROS_PER_MINUTE)
        },
        limits: Limits {
            latest_time: i64::MAX,
        },
        epoch_readings: u64::MAX,
    }
}

/// Messages with out-of-order readings, a reset, a rename, a duplicate, a late reading and
/// a device that goes silent long enough to be evicted.
fn messages() -> Vec<String> {
    let mut lines = Vec::new();
    for step in 0..60i64 {
        let minute = step * 5;
        let mut readings = Vec::new();
        for device in 1..=4 {
            if device == 4 && step > 3 {
                continue;
            }
            let name = if device == 2 && step >= 30 {
                "renamed"
            } else {
                "meter"
            };
            let energy = if device == 3 && step == 20 {
                1.0
            } else {
                100.0 + step as f64
            };
            readings.push(format!(
                r#"{{"device_id":{device},"device_name":"{name}","time":"2022-07-11T{:02}:{:02}:00Z","cumulative_energy":{energy}}}"#,
                minute / 60,
                minute % 60
            ));
        }
        if step % 7 == 3 {
            readings.reverse();
            readings.push(readings[0].clone());
        }
        if step == 40 {
            readings.push(
                r#"{"device_id":1,"device_name":"meter","time":"2022-07-11T00:00:00Z","cumulative_energy":1}"#
                    .into(),
            );
        }
        lines.push(format!(r#"{{"measurements":[{}]}}"#, readings.join(",")));
    }
    lines
}

fn apply(processor: &mut Processor, lines: &[String]) {
    for (line, text) in lines.iter().enumerate() {
        let mut block = DecodedBlock::new(text.clone().into_bytes());
        block.decode(0..text.len(), line as u64, &options().limits);
        processor.apply(&block, &block.messages[0], 0, |line| Origin::File {
            file: "fixture".into(),
            line,
        });
    }
}

fn rows(processor: &mut Processor, end_of_input: bool) -> Vec<Row> {
    let epoch = processor.take_epoch(end_of_input);
    epoch
        .rows
        .into_days()
        .iter()
        .flat_map(DayRows::rows)
        .collect()
}

/// A checkpoint object's header (magic, format) and its uncompressed encoding: what the
/// format fixes (the compressed bytes may differ with how the compressor is fed).
fn contents(object: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (header, compressed) = object.split_at(8);
    (header.to_vec(), zstd::decode_all(compressed).unwrap())
}

/// The checkpoint after the first 40 messages, as `run` would commit it.
fn checkpoint(processor: &Processor) -> Checkpoint {
    Checkpoint {
        epoch: 3,
        partitions: vec![("meter-readings".into(), 0)],
        next_offsets: vec![40],
        files: vec!["date=2022-07-11/part-00000003-0000.parquet".into()],
        totals: processor.summary.clone(),
        state: processor.encode_state().unwrap(),
        offset_gaps: vec![SkippedGap {
            topic: "meter-readings".into(),
            partition: 0,
            expected: 12,
            low: 15,
            high: 40,
            resumed_at: 15,
            epoch: 2,
        }],
    }
}

#[test]
fn a_checkpoint_of_this_format_is_read_back_and_continued_exactly() {
    let lines = messages();
    let mut first = Processor::new(&options());
    apply(&mut first, &lines[..40]);
    let got = rows(&mut first, false);
    let written = encode_checkpoint(&checkpoint(&first)).unwrap();
    if std::env::var_os("MF_UPDATE_FIXTURES").is_some() {
        std::fs::write(FIXTURE, &written).unwrap();
    }
    let fixture = std::fs::read(FIXTURE).expect("the fixture of this format exists");
    assert_eq!(
        contents(&fixture),
        contents(&written),
        "this release must write format {CHECKPOINT_FORMAT} exactly as the fixture holds it"
    );

    let restored = decode_checkpoint(FIXTURE, &fixture).unwrap();
    assert_eq!(
        contents(&encode_checkpoint(&restored).unwrap()),
        contents(&fixture),
        "decoding the fixture loses nothing"
    );
    continues_exactly(&restored, &first, got);
}

#[test]
fn a_checkpoint_of_format_1_is_still_read_and_continued_exactly() {
    let lines = messages();
    let mut first = Processor::new(&options());
    apply(&mut first, &lines[..40]);
    let got = rows(&mut first, false);
    let fixture = std::fs::read(FORMAT_1).expect("the format-1 fixture exists");
    assert_eq!(&fixture[4..8], &1u32.to_le_bytes(), "a format-1 object");
    let restored = decode_checkpoint(FORMAT_1, &fixture).unwrap();
    let expected = checkpoint(&first);
    assert_eq!(
        (
            &restored.partitions,
            &restored.next_offsets,
            &restored.files
        ),
        (
            &expected.partitions,
            &expected.next_offsets,
            &expected.files
        )
    );
    assert_eq!(restored.state, expected.state, "the same per-device state");
    assert!(restored.offset_gaps.is_empty(), "format 1 had no gaps");
    continues_exactly(&restored, &first, got);
}

/// `restored` (after the first 40 messages, whose rows were `got`) continued with the rest
/// gives the rows and counts of one uninterrupted run.
fn continues_exactly(restored: &Checkpoint, first: &Processor, mut got: Vec<Row>) {
    let lines = messages();
    assert_eq!(restored.totals.messages, first.summary.messages);
    assert_eq!(restored.totals.dead_letters, first.summary.dead_letters);
    let mut second =
        Processor::restore(&options(), &restored.state, restored.totals.clone()).unwrap();
    apply(&mut second, &lines[40..]);
    got.extend(rows(&mut second, true));

    let mut whole = Processor::new(&options());
    apply(&mut whole, &lines[..40]);
    let mut expected = rows(&mut whole, false);
    apply(&mut whole, &lines[40..]);
    expected.extend(rows(&mut whole, true));
    let key = |r: &Row| (r.device_id, r.time);
    got.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(got, expected);
    assert_eq!(second.summary.devices_evicted, 1, "device 4 went silent");
    assert_eq!(
        second.summary.dead_letter_total(),
        whole.summary.dead_letter_total()
    );
    assert!(second.summary.dead_letter_total() > 0);
}
