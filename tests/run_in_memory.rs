//! The service's protocol in process, on an in-memory log and an in-memory object store: a
//! drain equals `transform`, a replay rewrites identical bytes, a second instance fences the
//! first, an idle partition releases waiting readings, a stop commits what was read, and
//! redelivered or skipped offsets change nothing. The container tests (`kafka_run.rs`) run
//! the same service against a real broker and store.

mod support;

use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

use meterflow::run::checkpoint::{CheckpointError, CheckpointStore};
use meterflow::run::epoch_policy::EpochPolicy;
use meterflow::run::RunError;
use meterflow::source::memory::MemoryLog;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use support::service::*;

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
        matches!(&error, RunError::Checkpoint(fence @ CheckpointError::Fenced { epoch: 0, .. }
            | fence @ CheckpointError::Behind { epoch: 0, .. }) if fence.is_fenced()),
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
