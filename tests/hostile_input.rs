//! Hostile input, end to end through `meterflow transform`: over 100,000 generated hostile
//! messages (random bytes, truncations, deep nesting, huge arrays, wrong types, duplicate keys,
//! invalid UTF-8, byte-order marks, blank runs, 200 kB names, readings far in the past and the
//! future, valid and invalid readings mixed) interleaved with a normal fleet.
//!
//! Asserted: exit 0; every reading accounted for by the summary (accepted + duplicates + dead
//! letters with an index = readings; dead letters without an index = messages refused whole;
//! rows = accepted); and the fleet's rows, read back from Parquet, exactly those of a run
//! without the hostile messages. Hostile readings use device ids of their own, and the valid
//! ones are no newer than the fleet's first reading, so they cannot move the watermark.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::Row;

const HOSTILE_MESSAGES: usize = 100_000;
const FLEET_START: &str = "2022-07-11T00:00:00Z";
const PROCESSING_TIME: &str = "2022-07-11T12:00:00Z";
/// Hostile device ids: far from the fleet's (from 1,000,000 up).
const HOSTILE_IDS: std::ops::Range<i32> = 2_000_000_000..2_000_100_000;

fn element(rng: &mut ChaCha8Rng, valid: bool) -> String {
    let id = rng.random_range(HOSTILE_IDS);
    if valid {
        let time = match rng.random_range(0..3) {
            0 => FLEET_START.to_string(),
            1 => "0001-01-01T00:00:00Z".to_string(),
            _ => format!("1970-01-{:02}T00:00:00Z", rng.random_range(1..29)),
        };
        format!(
            r#"{{"device_id":{id},"device_name":"h{id}","time":"{time}","cumulative_energy":{}}}"#,
            rng.random_range(0..1000)
        )
    } else {
        match rng.random_range(0..9) {
            0 => r#"{"device_id":"1","device_name":"x","time":"2022-07-11T00:00:00Z","cumulative_energy":1}"#.into(),
            1 => format!(r#"{{"device_id":{id},"device_name":null,"time":"2022-07-11T00:00:00Z","cumulative_energy":1}}"#),
            2 => format!(r#"{{"device_id":{id},"device_name":"x","time":"yesterday","cumulative_energy":1}}"#),
            3 => format!(r#"{{"device_id":{id},"device_name":"x","time":"2022-07-11T00:00:00Z","cumulative_energy":-1}}"#),
            4 => format!(r#"{{"device_id":{id},"device_name":"x","time":"9999-12-31T23:59:59Z","cumulative_energy":1}}"#),
            5 => format!(r#"{{"device_id":{id},"device_id":{id},"device_name":"x","time":"2022-07-11T00:00:00Z","cumulative_energy":1}}"#),
            6 => "[1,2,3]".into(),
            7 => format!(r#"{{"device_id":{id}.5,"device_name":"x","time":"2022-07-11T00:00:00Z","cumulative_energy":1e400}}"#),
            _ => "null".into(),
        }
    }
}

/// One hostile line (never containing a line break) and how many elements its
/// `measurements` has: `None` when the message is refused whole.
fn hostile(rng: &mut ChaCha8Rng) -> (Vec<u8>, Option<u64>) {
    let valid_message = |rng: &mut ChaCha8Rng, n: usize| {
        let elements: Vec<String> = (0..n)
            .map(|_| {
                let valid = rng.random_bool(0.5);
                element(rng, valid)
            })
            .collect();
        format!(r#"{{"measurements":[{}]}}"#, elements.join(","))
    };
    match rng.random_range(0..100) {
        0..=14 => {
            let n = rng.random_range(1..200);
            let bytes: Vec<u8> = (0..n)
                .map(|_| rng.random::<u8>())
                .filter(|b| *b != b'\n' && *b != b'\r')
                .collect();
            // Random bytes are practically never a message; a plain JSON reader decides.
            let count = measurement_count(&bytes);
            (bytes, count)
        }
        15..=29 => {
            let n = rng.random_range(1..6);
            let text = valid_message(rng, n);
            let cut = rng.random_range(0..text.len());
            (text.as_bytes()[..cut].to_vec(), None)
        }
        30..=31 => {
            // Deeper than serde_json's default recursion limit: still an array of one element.
            let depth = rng.random_range(100..2_000);
            let text = format!(
                r#"{{"measurements":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            (text.into_bytes(), Some(1))
        }
        35 if rng.random_bool(0.02) => {
            // A huge array: rare, each is 5,000 elements.
            let items: Vec<&str> = (0..5_000)
                .map(|i| if i % 2 == 0 { "1" } else { "{}" })
                .collect();
            (
                format!(r#"{{"measurements":[{}]}}"#, items.join(",")).into_bytes(),
                Some(5_000),
            )
        }
        36..=44 => {
            let wrong = [
                "1",
                "\"text\"",
                "[]",
                "{}",
                "null",
                r#"{"measurements":7}"#,
                r#"{"measurements":{"a":1}}"#,
            ];
            (
                wrong[rng.random_range(0..wrong.len())].as_bytes().to_vec(),
                None,
            )
        }
        45..=49 => {
            // `measurements` twice: the last one counts.
            let first = valid_message(rng, 2);
            let second = valid_message(rng, 1);
            let text = format!(
                r#"{{"measurements":{},"measurements":{}}}"#,
                &first[16..first.len() - 1],
                &second[16..second.len() - 1]
            );
            (text.into_bytes(), Some(1))
        }
        50..=54 => {
            let mut bytes = valid_message(rng, 3).into_bytes();
            let at = rng.random_range(0..bytes.len());
            bytes[at] = 0xff;
            (bytes, None)
        }
        55..=59 => {
            let mut bytes = "\u{FEFF}".as_bytes().to_vec();
            bytes.extend(valid_message(rng, 2).into_bytes());
            (bytes, None)
        }
        60 if rng.random_bool(0.1) => {
            // A 200 kB name, valid.
            let id = rng.random_range(HOSTILE_IDS);
            let name = "n".repeat(200_000);
            let text = format!(
                r#"{{"measurements":[{{"device_id":{id},"device_name":"{name}","time":"{FLEET_START}","cumulative_energy":1}}]}}"#
            );
            (text.into_bytes(), Some(1))
        }
        _ => {
            let n = rng.random_range(0..12);
            (valid_message(rng, n).into_bytes(), Some(n as u64))
        }
    }
}

/// What `measurements` holds, as a plain JSON reader sees the message: `None` when the
/// message is refused whole.
fn measurement_count(line: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    Some(value.get("measurements")?.as_array()?.len() as u64)
}

fn transform(input: &Path, output: &Path) -> BTreeMap<String, u64> {
    let out = support::meterflow()
        .args(["transform", "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .args([
            "--processing-time",
            PROCESSING_TIME,
            "--epoch-readings",
            "50000",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "transform failed: {stderr}");
    // The summary's lines (stdout): a name, then its count ("rows  N   in F Parquet files, …").
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let at = words.iter().position(|w| w.parse::<u64>().is_ok())?;
            Some((words[..at].join(" "), words[at].parse().ok()?))
        })
        .collect()
}

/// Every row of the Parquet files under `dir`, sorted.
fn rows(dir: &Path) -> Vec<Row> {
    let mut batches = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let file = std::fs::File::open(&path).unwrap();
                let reader = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
                batches.extend(reader.build().unwrap().map(Result::unwrap));
            }
        }
    }
    support::rows(&batches)
}

#[test]
fn hostile_messages_cost_nothing_but_their_own_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let fleet = dir.path().join("fleet.jsonl");
    let status = support::meterflow()
        .args([
            "generate",
            "--devices",
            "60",
            "--hours",
            "10",
            "--seed",
            "11",
            "--disorder",
            "3m",
        ])
        .args(["--fault-rate", "0", "--duplicate-rate", "0.01", "--output"])
        .arg(&fleet)
        .output()
        .unwrap();
    assert!(status.status.success());
    let fleet_text = std::fs::read(&fleet).unwrap();
    let fleet_lines: Vec<&[u8]> = fleet_text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();

    let mut rng = ChaCha8Rng::seed_from_u64(20_260_101);
    let mixed = dir.path().join("mixed.jsonl");
    let mut writer = std::io::BufWriter::new(std::fs::File::create(&mixed).unwrap());
    let (mut messages, mut readings, mut refused_whole) = (0u64, 0u64, 0u64);
    let mut hostile_left = HOSTILE_MESSAGES;
    let mut fleet_left = fleet_lines.iter();
    let mut next_fleet = fleet_left.next();
    while hostile_left > 0 || next_fleet.is_some() {
        let take_hostile = hostile_left > 0 && (next_fleet.is_none() || rng.random_bool(0.9));
        if take_hostile {
            hostile_left -= 1;
            if rng.random_bool(0.02) {
                // A run of blank lines, which are not messages at all.
                writer.write_all(b"\n  \n\t\n").unwrap();
            }
            let (line, count) = hostile(&mut rng);
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            match count {
                Some(count) => readings += count,
                None => refused_whole += 1,
            }
            messages += 1;
            writer.write_all(&line).unwrap();
        } else if let Some(line) = next_fleet {
            readings += measurement_count(line).expect("the fleet is valid");
            messages += 1;
            writer.write_all(line).unwrap();
            next_fleet = fleet_left.next();
        }
        writer.write_all(b"\n").unwrap();
    }
    drop(writer);

    let out = dir.path().join("out");
    let summary = transform(&mixed, &out);
    assert_eq!(summary["messages"], messages, "{summary:?}");
    assert_eq!(summary["readings"], readings, "{summary:?}");
    let letters = support::local_dead_letters(&out);
    let with_index = letters.iter().filter(|l| !l["index"].is_null()).count() as u64;
    let without_index = letters.len() as u64 - with_index;
    assert_eq!(without_index, refused_whole);
    assert_eq!(summary["dead letters"], letters.len() as u64);
    assert_eq!(
        summary["accepted"] + summary["duplicates"] + with_index,
        readings,
        "{summary:?}"
    );
    assert_eq!(summary["rows"], summary["accepted"]);
    let all_rows = rows(&out);
    assert_eq!(all_rows.len() as u64, summary["rows"]);
    assert!(
        with_index > 100_000 && without_index > 30_000,
        "{with_index} {without_index}"
    );

    let alone = dir.path().join("alone");
    transform(&fleet, &alone);
    let fleet_rows: Vec<Row> = all_rows
        .into_iter()
        .filter(|r| !HOSTILE_IDS.contains(&r.0))
        .collect();
    let expected = rows(&alone);
    assert!(expected.len() > 7_000);
    assert_eq!(fleet_rows, expected);
}
