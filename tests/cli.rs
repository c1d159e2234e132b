//! The `meterflow` binary end to end: transform with bad lines, generate, inspect, exit codes.

mod support;

use predicates::prelude::*;
use support::{meterflow_assert as meterflow, SEED_MESSAGE};

/// The seed message, then one line of each kind of refusal.
fn input_text() -> String {
    format!("{SEED_MESSAGE}\n{REST}")
}

const REST: &str = r#"this line is not json

{"readings": []}
{"measurements": [{"device_id": "7", "device_name": "x", "time": "2022-07-11T02:15:00Z", "cumulative_energy": 1}, {"device_id": 7, "device_name": "Seven", "time": "2022-07-11T10:15:00+08:00", "cumulative_energy": 1}]}
{"measurements": [{"device_id": 7, "device_name": "Seven", "time": "2022-07-12T00:00:00Z", "cumulative_energy": 0.5}, {"device_id": 7, "device_name": "Seven", "time": "2022-07-12T00:00:00Z", "cumulative_energy": 0.5}]}
"#;

#[test]
fn transform_writes_rows_and_dead_letters_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, input_text()).unwrap();
    let output = dir.path().join("out");

    meterflow()
        .args(["transform", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(["--processing-time", "2022-07-13T00:00:00Z"])
        .assert()
        .success()
        .stdout(predicate::str::contains("rows").and(predicate::str::contains("invalid_json")));

    // Two dates, one file each.
    assert!(output
        .join("date=2022-07-11/part-00000000-0000.parquet")
        .is_file());
    assert!(output
        .join("date=2022-07-12/part-00000000-0000.parquet")
        .is_file());

    let letters = support::local_dead_letters(&output);
    let mut got: Vec<(String, u64, serde_json::Value)> = letters
        .iter()
        .map(|l| {
            (
                l["reason"].as_str().unwrap().to_owned(),
                l["source"]["line"].as_u64().unwrap(),
                l["index"].clone(),
            )
        })
        .collect();
    got.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    assert_eq!(
        got,
        vec![
            ("invalid_json".into(), 2, serde_json::Value::Null),
            ("missing_measurements".into(), 4, serde_json::Value::Null),
            ("invalid_device_id".into(), 5, serde_json::json!(0)),
        ]
    );
    let bad_id = letters
        .iter()
        .find(|l| l["reason"] == "invalid_device_id")
        .unwrap();
    assert_eq!(bad_id["source"]["file"], input.display().to_string());
    assert!(bad_id["record"]
        .as_str()
        .unwrap()
        .contains(r#""device_id": "7""#));

    let shown = meterflow().arg("inspect").arg(&output).assert().success();
    let stdout = String::from_utf8(shown.get_output().stdout.clone()).unwrap();
    assert!(stdout.contains("Total rows: 4"), "{stdout}");
    assert!(stdout.contains("Dead letters: 3"), "{stdout}");
    assert!(
        stdout.contains(
            "| 123456    | Test Device | 2022-07-11T02:20:00Z | 5.0      | 2.33         |"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("REQUIRED INT64 time (TIMESTAMP(MICROS,true))"),
        "{stdout}"
    );
}

#[test]
fn existing_output_needs_overwrite_and_unreadable_input_fails() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, input_text()).unwrap();
    let output = dir.path().join("out");
    let run = |extra: &[&str]| {
        let mut command = meterflow();
        command
            .args(["transform", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .args(extra);
        command.assert()
    };
    run(&[]).success();
    run(&[])
        .failure()
        .stderr(predicate::str::contains("--overwrite"));
    run(&["--overwrite"]).success();

    meterflow()
        .args(["transform", "--input", "/nonexistent/x.jsonl", "--output"])
        .arg(dir.path().join("other"))
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "cannot open input /nonexistent/x.jsonl",
        ));
}

#[test]
fn stdin_input_and_gzip_generate_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let generated = dir.path().join("fleet.jsonl.gz");
    meterflow()
        .args([
            "generate",
            "--devices",
            "5",
            "--hours",
            "1",
            "--seed",
            "3",
            "--fault-rate",
            "0",
            "--duplicate-rate",
            "0",
            "--output",
        ])
        .arg(&generated)
        .assert()
        .success()
        .stdout(predicate::str::contains("60 readings"));
    let output = dir.path().join("out");
    meterflow()
        .args(["transform", "--input"])
        .arg(&generated)
        .arg("--output")
        .arg(&output)
        .assert()
        .success()
        .stdout(predicate::str::contains("rows                          60"));

    let piped = dir.path().join("piped");
    meterflow()
        .args(["transform", "--input", "-", "--output"])
        .arg(&piped)
        .write_stdin(input_text())
        .assert()
        .success()
        .stdout(predicate::str::contains("rows                           4"));
}

#[test]
fn invalid_times_in_flags_are_named() {
    meterflow()
        .args(["generate", "--start", "yesterday", "--output", "-"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("invalid --start \"yesterday\""));
    meterflow()
        .args([
            "transform",
            "--input",
            "-",
            "--output",
            "/tmp/never-written",
            "--processing-time",
            "noon",
        ])
        .write_stdin("")
        .assert()
        .failure()
        .stderr(predicate::str::contains(
            "invalid --processing-time \"noon\"",
        ));
}

#[test]
fn an_invalid_log_filter_is_an_error_not_a_silent_default() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out");
    meterflow()
        .args([
            "--log",
            "meterflow=loud",
            "transform",
            "--input",
            "-",
            "--output",
        ])
        .arg(&output)
        .write_stdin(input_text())
        .assert()
        .failure()
        .stderr(predicate::str::contains("--log").and(predicate::str::contains("meterflow=loud")));
    assert!(!output.exists(), "nothing ran");
    meterflow()
        .args([
            "generate",
            "--devices",
            "1",
            "--hours",
            "1",
            "--output",
            "-",
        ])
        .env("MF_LOG", "info,[unclosed")
        .assert()
        .failure();
}

#[test]
fn json_logs_are_one_object_per_line_for_log_collectors() {
    let dir = tempfile::tempdir().unwrap();
    let output = meterflow()
        .args(["--log", "info", "--log-format", "json", "transform"])
        .args(["--input", "-", "--output"])
        .arg(dir.path().join("out"))
        .write_stdin(input_text())
        .output()
        .unwrap();
    assert!(output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).expect("each log line is JSON"))
        .collect();
    let written = events
        .iter()
        .find(|e| e["fields"]["message"] == "epoch written")
        .unwrap_or_else(|| panic!("an `epoch written` event in\n{stderr}"));
    assert_eq!(written["level"], "INFO");
    assert_eq!(written["fields"]["rows"], 4);
}

#[test]
fn the_demos_closing_query_hint_runs_as_printed() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    // From the repository root, as after `scripts/demo`: the hint names the binary's path.
    let repo = env!("CARGO_MANIFEST_DIR");
    let output = meterflow()
        .current_dir(repo)
        .args(["demo", "--devices", "5", "--hours", "2", "--dir"])
        .arg(&demo_dir)
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let stdout = String::from_utf8(output).unwrap();
    let hint = stdout
        .lines()
        .find_map(|line| line.strip_prefix("Query it with SQL: "))
        .unwrap_or_else(|| panic!("no query hint in\n{stdout}"));
    let answer = std::process::Command::new("sh")
        .args(["-c", hint])
        .current_dir(repo)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&answer.stdout);
    assert!(
        answer.status.success(),
        "{hint}\n{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    assert!(
        text.contains("kwh") && text.contains("2022-07-11"),
        "{text}"
    );
}
