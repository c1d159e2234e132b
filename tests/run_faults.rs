//! The exactly-once protocol under store faults, in process: a failure injected at every write
//! of a run (before the write, after it, a lost reply the client retries, a slow reply), a
//! restart after each, and the bucket must end equal to `transform`; an instance paused at
//! each step of an epoch while another commits past it must wake up fenced, writing nothing
//! that differs; a store that ignores conditional creates is refused at start.

mod support;

use std::collections::BTreeMap;
use std::thread;
use std::time::Duration;

use meterflow::run::checkpoint::CheckpointError;
use meterflow::run::{RunError, RunOptions};
use support::faulty_store::{Fault, FaultyStore, Write, WriteKind};
use support::service::*;
use support::Row;

#[test]
fn a_fault_at_any_write_ends_in_the_bucket_transform_writes() {
    let lines = fleet(16, 21);
    let (rows, letters) = transform(&lines);
    let options = by_size(12 << 10, true);

    // A clean run: the protocol's writes, in order.
    let clean = memory_location();
    let recorder = FaultyStore::new(clean.store.clone());
    let report = serve_through(&log_of(&lines, 2), &clean, &recorder, &options).unwrap();
    assert!(report.epochs >= 4, "{} epochs", report.epochs);
    let writes = recorder.writes();
    let kinds = |kind| writes.iter().filter(|w| w.kind == kind).count();
    assert!(
        kinds(WriteKind::Create) > 2 * report.epochs as usize,
        "{writes:#?}"
    );
    assert!(
        kinds(WriteKind::Delete) > 2,
        "pruning happened: {writes:#?}"
    );

    let mut cases = Vec::new();
    for write in &writes {
        for fault in [
            Fault::FailBefore,
            Fault::FailAfter,
            Fault::RetryAfterSuccess,
            Fault::Slow(Duration::from_millis(150)),
        ] {
            cases.push((write.index, fault));
        }
    }
    let failures: Vec<String> = cases
        .chunks(cases.len().div_ceil(4))
        .map(|chunk| {
            let chunk = chunk.to_vec();
            let (lines, rows, letters, options) = (
                lines.clone(),
                rows.clone(),
                letters.clone(),
                options.clone(),
            );
            thread::spawn(move || {
                let mut failures = Vec::new();
                for (index, fault) in chunk {
                    let outcome = std::panic::catch_unwind(|| {
                        one_fault(&lines, &options, index, fault, &rows, &letters)
                    });
                    if let Err(panic) = outcome {
                        let why = panic
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        failures.push(format!("write {index}, {fault:?}: {why}"));
                    }
                }
                failures
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .flat_map(|worker| worker.join().unwrap())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// One case of the sweep: `fault` at write `index`, a restart if the run failed, then the
/// output equals `transform`'s.
fn one_fault(
    lines: &[String],
    options: &RunOptions,
    index: usize,
    fault: Fault,
    rows: &[Row],
    letters: &[(String, String)],
) {
    let log = log_of(lines, 2);
    let location = memory_location();
    let store = FaultyStore::with_fault(location.store.clone(), fault, move |w| w.index == index);
    let first = serve_through(&log, &location, &store, options);
    let faulted: Option<Write> = store.writes().into_iter().find(|w| w.fault.is_some());
    let faulted = faulted.expect("the run reached the write");
    // A create that succeeded is recognised as this instance's own whatever the reply, a
    // lost reply to a put is retried, pruning is best effort and a slow reply is only slow:
    // these runs go on without a restart.
    let survives = match fault {
        Fault::Slow(_) | Fault::RetryAfterSuccess => true,
        Fault::FailAfter => faulted.kind != WriteKind::Put,
        Fault::FailBefore => faulted.kind == WriteKind::Delete,
        Fault::Pause => unreachable!("not swept"),
    };
    match first {
        Ok(_) => {}
        Err(error) => {
            assert!(!survives, "{} failed: {error:?}", faulted.path);
            assert!(!is_fenced(&error), "{error:?}");
            serve(&log, &location, options, never()).expect("the restart completes");
        }
    }
    assert_same_rows(&output_rows(&location), rows);
    assert_eq!(output_letters(&location), letters);
}

/// Where the first instance is held, in its epoch 3.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Creating the intent.
    Intent,
    /// Its first data file.
    Data,
    /// Creating the checkpoint.
    Checkpoint,
    /// Pruning epoch 0, after the checkpoint.
    Prune,
}

impl Step {
    fn matches(self, write: &Write) -> bool {
        let path = &write.path;
        match self {
            Step::Intent => path.ends_with(&format!("intent-{:020}.json", 3)),
            Step::Data => path.contains(&format!("part-{:08}-", 3)),
            Step::Checkpoint => path.ends_with(&format!("checkpoint-{:020}.bin", 3)),
            Step::Prune => {
                write.kind == WriteKind::Delete && path.ends_with(&format!("intent-{:020}.json", 0))
            }
        }
    }
}

#[test]
fn an_instance_paused_while_another_commits_past_it_wakes_up_fenced() {
    for step in [Step::Intent, Step::Data, Step::Checkpoint, Step::Prune] {
        paused_instance(step);
    }
}

fn paused_instance(step: Step) {
    let lines = fleet(16, 23);
    let (rows, _) = transform(&lines);
    let (early, late) = lines.split_at(lines.len() / 3);
    let log = log_of(early, 2);
    let location = memory_location();

    // The first instance is held inside its epoch 3 (a stopped VM, a cut-off node).
    let held = FaultyStore::with_fault(location.store.clone(), Fault::Pause, move |w| {
        step.matches(w)
    });
    let first = {
        let (log, location, held) = (log.clone(), location.clone(), held.clone());
        thread::spawn(move || serve_through(&log, &location, &held, &by_size(4 << 10, false)))
    };
    assert!(
        held.wait_paused(Duration::from_secs(20)),
        "{step:?}: the first instance reached epoch 3"
    );

    // Another instance takes over and commits well past the pruning horizon.
    for line in late {
        log.append(TOPIC, partition_of(line, 2), line.as_bytes());
    }
    let second = serve(&log, &location, &by_size(4 << 10, true), never()).unwrap();
    assert!(second.epochs >= 6, "{step:?}: {} epochs", second.epochs);
    let committed = objects(&location);
    let paused_at = held.writes().len() - 1;

    held.release();
    wait_for("the first instance to stop", || first.is_finished());
    let error = first
        .join()
        .unwrap()
        .expect_err("the first instance is fenced");
    assert!(is_fenced(&error), "{step:?}: {error:?}");

    // It created nothing after it woke (the held create aside, which it withdrew) and
    // changed no object's bytes.
    let created: Vec<Write> = held.writes()[paused_at + 1..]
        .iter()
        .filter(|w| w.kind == WriteKind::Create && w.ok)
        .cloned()
        .collect();
    assert!(created.is_empty(), "{step:?}: created {created:#?}");
    let after = objects(&location);
    for (path, bytes) in &after {
        assert!(
            committed.get(path) == Some(bytes),
            "{step:?}: {path} was written by the woken instance"
        );
    }
    let removed: BTreeMap<_, _> = committed
        .iter()
        .filter(|(path, _)| !after.contains_key(*path))
        .collect();
    assert!(
        removed.keys().all(|path| path.contains("/_checkpoint/")
            && (path.ends_with(&format!("-{:020}.json", 0))
                || path.ends_with(&format!("-{:020}.bin", 0)))),
        "{step:?}: only its own pruning of epoch 0 removed anything: {removed:?}"
    );
    assert_same_rows(&output_rows(&location), &rows);
}

#[test]
fn a_claim_stays_when_the_listing_after_it_fails() {
    // The listing that checks a fresh intent fails: the intent may already be replayed by
    // another instance, so it must stay, and a restart replays it.
    let lines = fleet(16, 27);
    let log = log_of(&lines, 2);
    let location = memory_location();
    let intent = format!("intent-{:020}.json", 2);
    let store = FaultyStore::new(location.store.clone()).failing_list({
        let intent = intent.clone();
        move |writes| {
            writes
                .last()
                .is_some_and(|w| w.ok && w.path.ends_with(&intent))
        }
    });
    let options = by_size(12 << 10, true);
    let error = serve_through(&log, &location, &store, &options).expect_err("the listing failed");
    assert!(!is_fenced(&error), "{error:?}");
    assert!(
        objects(&location)
            .keys()
            .any(|path| path.ends_with(&intent)),
        "the claimed intent stays"
    );
    let restarted = serve(&log, &location, &options, never()).unwrap();
    assert!(restarted.epochs >= 2, "the intent replayed, then the rest");
    assert_same_rows(&output_rows(&location), &transform(&lines).0);
}

#[test]
fn a_store_that_ignores_conditional_creates_is_refused_at_start() {
    let lines = fleet(4, 25);
    let location = memory_location();
    let lax = FaultyStore::ignoring_creates(location.store.clone());
    let error = serve_through(&log_of(&lines, 1), &location, &lax, &by_size(4 << 10, true))
        .expect_err("refused");
    assert!(
        matches!(
            error,
            RunError::Checkpoint(CheckpointError::ConditionalPutIgnored { .. })
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("memory://out"), "{error}");
    assert!(objects(&location).is_empty(), "nothing written");
}
