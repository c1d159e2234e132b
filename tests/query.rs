//! `meterflow query` end to end: the output as table `readings` with its `date` partition
//! column, the three formats, pruning by date, and a missing location.

mod support;

use std::path::Path;

use predicates::prelude::*;
use support::{meterflow_assert as meterflow, SEED_MESSAGE};

/// The seed message and one reading of a second day.
fn input_text() -> String {
    format!("{SEED_MESSAGE}\n{REST}")
}

const REST: &str = r#"{"measurements": [{"device_id": 7, "device_name": "Seven", "time": "2022-07-12T00:00:00Z", "cumulative_energy": 0.5}]}
"#;

/// A transform output of [`input_text`] in a fresh directory.
fn output() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, input_text()).unwrap();
    meterflow()
        .args(["transform", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("out"))
        .args(["--processing-time", "2022-07-13T00:00:00Z"])
        .assert()
        .success();
    dir
}

fn query(data: &Path, format: &str, sql: &str) -> String {
    let done = meterflow()
        .args(["query", "--format", format, "--data"])
        .arg(data)
        .arg(sql)
        .assert()
        .success();
    String::from_utf8(done.get_output().stdout.clone()).unwrap()
}

#[test]
fn the_seed_row_comes_back_in_every_format() {
    let dir = output();
    let data = dir.path().join("out");
    let sql = "SELECT device_id, device_name, time, duration, delta_energy, date \
               FROM readings WHERE duration IS NOT NULL";

    let csv = query(&data, "csv", sql);
    assert_eq!(
        csv,
        "device_id,device_name,time,duration,delta_energy,date\n\
         123456,Test Device,2022-07-11T02:20:00Z,5.0,2.33,2022-07-11\n"
    );
    let json: serde_json::Value = serde_json::from_str(query(&data, "json", sql).trim()).unwrap();
    assert_eq!(json["device_id"], 123456);
    assert_eq!(json["time"], "2022-07-11T02:20:00Z");
    assert_eq!(json["delta_energy"], 2.33);
    assert_eq!(json["date"], "2022-07-11");
    let table = query(&data, "table", sql);
    assert!(table.contains("| device_id |"), "{table}");
    assert!(table.contains("| 123456    | Test Device |"), "{table}");
}

#[test]
fn filters_on_date_skip_the_other_days_files() {
    let dir = output();
    let data = dir.path().join("out");
    // A file no reader could parse in another day's partition: a query that opened it fails.
    std::fs::write(
        data.join("date=2022-07-12/part-99999999-0000.parquet"),
        b"not parquet",
    )
    .unwrap();

    let pruned = query(
        &data,
        "csv",
        "SELECT count(*) AS n FROM readings WHERE date = DATE '2022-07-11'",
    );
    assert_eq!(pruned, "n\n2\n");
    meterflow()
        .args(["query", "--data"])
        .arg(&data)
        .arg("SELECT count(*) FROM readings WHERE device_id = 7")
        .assert()
        .failure()
        .stderr(predicate::str::contains("query failed"));
}

#[test]
fn dead_letters_and_the_checkpoint_are_not_rows_and_a_missing_output_is_named() {
    let dir = output();
    let data = dir.path().join("out");
    std::fs::create_dir_all(data.join("_dead_letter")).unwrap();
    std::fs::write(data.join("_dead_letter/part-00000000-0000.jsonl"), "{}\n").unwrap();
    assert_eq!(
        query(&data, "csv", "SELECT count(*) AS n FROM readings"),
        "n\n3\n"
    );

    meterflow()
        .args(["query", "--data"])
        .arg(dir.path().join("nowhere"))
        .arg("SELECT 1")
        .assert()
        .failure()
        .stderr(predicate::str::contains("no output at"));
}
