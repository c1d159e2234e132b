//! Input that goes missing stops the service (contract §4): a topic deleted and recreated, or
//! retention that deleted offsets before they were read — found at start or while running —
//! fails closed with an error naming the topic, the partition, the offset expected and the
//! offsets the partition holds, counts `meterflow_offset_gaps_total`, and writes nothing more.

mod support;

use std::thread;
use std::time::Duration;

use meterflow::run::telemetry::Telemetry;
use meterflow::run::RunError;
use meterflow::source::memory::MemoryLog;
use support::service::*;

/// Runs on `source` until it fails with an offset gap; returns the error and the metrics.
fn gap(
    source: &mut dyn meterflow::source::Source,
    location: &meterflow::sink::store::Location,
    options: &meterflow::run::RunOptions,
) -> (RunError, String) {
    let telemetry = Telemetry::default();
    let error =
        serve_on(source, location, options, &telemetry, never()).expect_err("the run fails closed");
    (error, telemetry.metrics.render())
}

fn assert_gap(error: &RunError, metrics: &str, partition: i32, expected: i64, low: i64, high: i64) {
    match error {
        RunError::OffsetGap {
            topic,
            partition: p,
            expected: e,
            low: l,
            high: h,
            ..
        } => assert_eq!(
            (topic.as_str(), *p, *e, *l, *h),
            (TOPIC, partition, expected, low, high),
            "{error}"
        ),
        other => panic!("not an offset gap: {other:?}"),
    }
    let text = error.to_string();
    assert!(
        text.contains(&format!("{TOPIC}[{partition}]")) && text.contains(&expected.to_string()),
        "{text}"
    );
    let line =
        format!("meterflow_offset_gaps_total{{topic=\"{TOPIC}\",partition=\"{partition}\"}} 1");
    assert!(metrics.lines().any(|l| l == line), "{line} in\n{metrics}");
}

#[test]
fn a_recreated_topic_stops_the_restart() {
    let lines = fleet(16, 71);
    let log = log_of(&lines, 2);
    let location = memory_location();
    serve(&log, &location, &draining(), never()).unwrap();
    let (_, high) = log.watermarks(TOPIC, 0).unwrap();
    let committed = objects(&location);

    // Deleted and created again, with a few new messages: shorter than what was read.
    log.create_topic(TOPIC, 2);
    for line in &lines[..3] {
        log.append(TOPIC, 0, line.as_bytes());
    }
    let (error, metrics) = gap(&mut log.source(), &location, &draining());
    assert_gap(&error, &metrics, 0, high, 0, 3);
    assert!(error.to_string().contains("recreated"), "{error}");
    assert_eq!(objects(&location), committed, "nothing written");
}

#[test]
fn offsets_deleted_before_they_were_read_stop_the_restart() {
    let lines = fleet(16, 73);
    let (first, second) = lines.split_at(lines.len() / 2);
    let log = MemoryLog::default();
    log.create_topic(TOPIC, 1);
    for line in first {
        log.append(TOPIC, 0, line.as_bytes());
    }
    let location = memory_location();
    serve(&log, &location, &draining(), never()).unwrap();
    let next = log.watermarks(TOPIC, 0).unwrap().1;
    for line in second {
        log.append(TOPIC, 0, line.as_bytes());
    }
    // Retention deletes unread messages while the service is down.
    log.truncate_before(TOPIC, 0, next + 5);
    let committed = objects(&location);
    let (error, metrics) = gap(&mut log.source(), &location, &draining());
    assert_gap(&error, &metrics, 0, next, next + 5, lines.len() as i64);
    assert!(error.to_string().contains("retention"), "{error}");
    assert_eq!(objects(&location), committed, "nothing written");
}

#[test]
fn offsets_that_go_missing_while_running_stop_the_service() {
    for recreate in [false, true] {
        let lines = fleet(16, 75);
        let log = MemoryLog::default();
        log.create_topic(TOPIC, 1);
        for line in &lines {
            log.append(TOPIC, 0, line.as_bytes());
        }
        let location = memory_location();
        // A slow reader: retention (or a recreation) overtakes it.
        let source = Throttled::new(log.source(), Duration::from_millis(20), u64::MAX, false);
        let running = {
            let location = location.clone();
            thread::spawn(move || {
                let mut source = source;
                gap(&mut source, &location, &every(Duration::from_millis(50)))
            })
        };
        wait_for("a few messages read", || log.delivered() >= 5);
        if recreate {
            log.create_topic(TOPIC, 1);
        } else {
            log.truncate_before(TOPIC, 0, 40);
        }
        let (error, metrics) = running.join().unwrap();
        let RunError::OffsetGap { expected, .. } = error else {
            panic!("{recreate}: {error:?}");
        };
        if recreate {
            assert_gap(&error, &metrics, 0, expected, 0, 0);
        } else {
            assert!(expected < 40, "{expected}");
            assert_gap(&error, &metrics, 0, expected, 40, lines.len() as i64);
        }
        // What was committed before holds only messages that were read.
        let rows = output_rows(&location);
        let (all, _) = transform(&lines);
        assert!(rows.iter().all(|row| all.binary_search(row).is_ok()));
    }
}

#[test]
fn a_refused_position_inside_the_log_is_read_on_from() {
    // Partition 1 is empty when assigned (from its beginning); before the service reads it,
    // messages arrive and retention moves its start: the broker refuses the position it took,
    // although nothing the service read is missing.
    let lines = fleet(8, 77);
    let log = MemoryLog::default();
    log.create_topic(TOPIC, 2);
    for line in &lines {
        log.append(TOPIC, 0, line.as_bytes());
    }
    let location = memory_location();
    let source = Throttled::new(log.source(), Duration::from_millis(300), 2, false);
    let running = {
        let location = location.clone();
        thread::spawn(move || {
            let mut source = source;
            serve_on(
                &mut source,
                &location,
                &draining(),
                &Telemetry::default(),
                never(),
            )
        })
    };
    wait_for("the first message read", || log.delivered() >= 1);
    for line in &lines[..10] {
        log.append(TOPIC, 1, line.as_bytes());
    }
    log.truncate_before(TOPIC, 1, 5);
    wait_for("the run to end", || running.is_finished());
    let report = running.join().unwrap().expect("the run goes on");
    assert_eq!(report.summary.messages, lines.len() as u64 + 5);
}
