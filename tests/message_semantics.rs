//! Properties of the per-message rules (contract §3) over adversarial streams: backlogs that
//! arrive after the watermark passed them, readings far behind or ahead of the fleet, two
//! partitions, epochs cut anywhere.
//!
//! The reference is the contract's own wording, written as plainly as possible: emission is
//! checked after every whole message (eagerly, for every device), with the same watermark.
//! The state machine emits lazily; these tests say it cannot be told apart.

use std::collections::BTreeMap;

use meterflow::deltas::watermark::Watermark;
use meterflow::deltas::{DayRows, Deltas, Offer, Outcome, Row, StateSettings};
use meterflow::timestamp::MICROS_PER_MINUTE;
use proptest::prelude::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MINUTE: i64 = MICROS_PER_MINUTE;
const LATENESS: i64 = 10 * MINUTE;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    device_id: i32,
    time: i64,
    energy: f64,
}

#[derive(Debug, Clone)]
struct Message {
    partition: usize,
    readings: Vec<Reading>,
}

fn name(device_id: i32) -> String {
    format!("meter {device_id}")
}

/// A rejection, comparable as a multiset: (outcome, the reading).
type Rejection = (String, i32, i64, u64);

fn rejection(outcome: Outcome, r: &Reading) -> Rejection {
    (
        format!("{outcome:?}"),
        r.device_id,
        r.time,
        r.energy.to_bits(),
    )
}

/// Streams whose readings jump backwards and forwards by hours: backlogs below the
/// watermark, stale resends, conflicting energies, readings of one message in any order.
/// No two readings of one message share (device, time).
fn streams() -> impl Strategy<Value = Vec<Message>> {
    let reading = (1i32..7, -240i64..120, 0u8..8);
    let message = (0usize..2, prop::collection::vec(reading, 0..9));
    prop::collection::vec((message, -30i64..40), 1..40).prop_map(|messages| {
        let mut clock = 0i64;
        messages
            .into_iter()
            .map(|((partition, readings), advance)| {
                clock += advance;
                let mut seen = std::collections::HashSet::new();
                let readings = readings
                    .into_iter()
                    .filter(|&(device, offset, _)| seen.insert((device, clock + offset)))
                    .map(|(device_id, offset, energy)| {
                        let minute = clock + offset;
                        Reading {
                            device_id,
                            time: minute * MINUTE,
                            // Mostly increasing with time, sometimes a reset or a conflict.
                            energy: (minute + 1_000) as f64 + f64::from(energy % 4) / 4.0,
                        }
                    })
                    .collect();
                Message {
                    partition,
                    readings,
                }
            })
            .collect()
    })
}

/// Long messages of few devices, readings in any order and repeated (exact resends and
/// conflicts inside one message): what a meter's backlog looks like, and long enough that
/// insertions far from the end of a waiting list are deferred to the end of the message.
fn long_messages() -> impl Strategy<Value = Vec<Message>> {
    let reading = (1i32..4, -300i64..300, 0u8..3);
    let message = prop::collection::vec(reading, 0..160);
    prop::collection::vec((message, 0i64..200), 1..8).prop_map(|messages| {
        let mut clock = 0i64;
        messages
            .into_iter()
            .map(|(readings, advance)| {
                clock += advance;
                let readings = readings
                    .into_iter()
                    .map(|(device_id, offset, energy)| Reading {
                        device_id,
                        time: (clock + offset) * MINUTE,
                        energy: (clock + offset + 1_000) as f64 + f64::from(energy) / 2.0,
                    })
                    .collect();
                Message {
                    partition: 0,
                    readings,
                }
            })
            .collect()
    })
}

/// The state machine, with epochs cut after the messages `cut` says.
fn run(
    settings: StateSettings,
    messages: &[Message],
    cut: impl FnMut() -> bool,
) -> (Vec<Row>, Vec<Rejection>) {
    let (rows, rejected, _) = run_counting_evictions(settings, messages, cut);
    (rows, rejected)
}

/// [`run`], with the devices the state TTL evicted.
fn run_counting_evictions(
    settings: StateSettings,
    messages: &[Message],
    mut cut: impl FnMut() -> bool,
) -> (Vec<Row>, Vec<Rejection>, u64) {
    let mut deltas = Deltas::with_settings(settings);
    let names: BTreeMap<i32, String> = messages
        .iter()
        .flat_map(|m| &m.readings)
        .map(|r| (r.device_id, name(r.device_id)))
        .collect();
    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    for message in messages {
        let offers = message.readings.iter().map(|r| Offer {
            device_id: r.device_id,
            time: r.time,
            cumulative_energy: r.energy,
            device_name: &names[&r.device_id],
            index: 0,
        });
        deltas.apply_message(message.partition, offers, |offer, outcome| {
            let r = Reading {
                device_id: offer.device_id,
                time: offer.time,
                energy: offer.cumulative_energy,
            };
            rejected.push(rejection(outcome, &r));
        });
        if cut() {
            deltas.emit_ready();
            rows.extend(deltas.take_rows().iter().flat_map(DayRows::rows));
        }
    }
    deltas.flush();
    rows.extend(deltas.take_rows().iter().flat_map(DayRows::rows));
    let (rows, rejected) = finish(rows, rejected);
    (rows, rejected, deltas.counters().devices_evicted)
}

fn finish(mut rows: Vec<Row>, mut rejected: Vec<Rejection>) -> (Vec<Row>, Vec<Rejection>) {
    rows.sort_by_key(|r| (r.device_id, r.time));
    rejected.sort();
    (rows, rejected)
}

/// The contract read literally: after every whole message, every device emits what the
/// watermark passed (and, with a state TTL, devices silent past it are forgotten); each
/// reading is judged against what its device emitted before the message and what waits.
fn reference(settings: StateSettings, messages: &[Message]) -> (Vec<Row>, Vec<Rejection>) {
    let (rows, rejected, _) = reference_counting_evictions(settings, messages);
    (rows, rejected)
}

fn reference_counting_evictions(
    settings: StateSettings,
    messages: &[Message],
) -> (Vec<Row>, Vec<Rejection>, u64) {
    #[derive(Default)]
    struct Device {
        last: Option<(i64, f64)>,
        pending: BTreeMap<i64, f64>,
    }
    fn emit(device_id: i32, device: &mut Device, until: i64, rows: &mut Vec<Row>) {
        let ready: Vec<(i64, f64)> = device
            .pending
            .range(..=until)
            .map(|(&t, &e)| (t, e))
            .collect();
        for (time, energy) in ready {
            device.pending.remove(&time);
            let (duration, delta_energy) = match device.last {
                None => (None, None),
                Some((t, e)) => (
                    Some(((time - t) as f64 / MINUTE as f64) as f32),
                    (energy >= e).then_some((energy - e) as f32),
                ),
            };
            rows.push(Row {
                device_id,
                device_name: name(device_id),
                time,
                duration,
                delta_energy,
            });
            device.last = Some((time, energy));
        }
    }
    let mut watermark = Watermark::new(settings.allowed_lateness, settings.watermark_quorum);
    let mut devices: BTreeMap<i32, Device> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    let mut evicted = 0;
    let horizon = |w: &Watermark| match settings.state_ttl {
        Some(ttl) => w.current().saturating_sub(ttl),
        None => i64::MIN,
    };
    // Forgets every device with nothing waiting whose newest reading is before the horizon.
    let forget = |devices: &mut BTreeMap<i32, Device>, horizon: i64, evicted: &mut u64| {
        for device in devices.values_mut() {
            if device.pending.is_empty() && device.last.is_some_and(|(t, _)| t < horizon) {
                device.last = None;
                *evicted += 1;
            }
        }
    };
    for message in messages {
        let horizon_before = horizon(&watermark);
        for r in &message.readings {
            let device = devices.entry(r.device_id).or_default();
            let outcome = match device.last {
                None if r.time < horizon_before => Some(Outcome::BeyondTtl {
                    horizon: horizon_before,
                }),
                Some((t, e)) if r.time == t => Some(same_time(e, r.energy)),
                Some((t, _)) if r.time < t => Some(Outcome::Late { last_emitted: t }),
                _ => device.pending.get(&r.time).map(|&e| same_time(e, r.energy)),
            };
            match outcome {
                Some(outcome) => rejected.push(rejection(outcome, r)),
                None => {
                    device.pending.insert(r.time, r.energy);
                    watermark.note(message.partition, r.device_id, r.time);
                }
            }
        }
        watermark.end_message(message.partition);
        for (&id, device) in devices.iter_mut() {
            emit(id, device, watermark.current(), &mut rows);
        }
        forget(&mut devices, horizon(&watermark), &mut evicted);
    }
    for (&id, device) in devices.iter_mut() {
        emit(id, device, i64::MAX, &mut rows);
    }
    forget(&mut devices, horizon(&watermark), &mut evicted);
    let (rows, rejected) = finish(rows, rejected);
    (rows, rejected, evicted)
}

fn same_time(accepted: f64, offered: f64) -> Outcome {
    if accepted == offered {
        Outcome::Duplicate
    } else {
        Outcome::ConflictingDuplicate {
            accepted_energy: accepted,
        }
    }
}

fn settings(quorum: usize) -> StateSettings {
    StateSettings {
        watermark_quorum: quorum,
        ..StateSettings::with_lateness(LATENESS)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Lazy emission, epochs cut anywhere, equals emission checked after every message.
    #[test]
    fn state_machine_equals_emission_after_every_message(
        messages in streams(), quorum in 1usize..5, seed in any::<u64>()
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let got = run(settings(quorum), &messages, || rng.random_bool(0.3));
        prop_assert_eq!(got, reference(settings(quorum), &messages));
    }

    /// The same for long messages with repeats inside them.
    #[test]
    fn long_messages_with_repeats_equal_emission_after_every_message(
        messages in long_messages(), quorum in 1usize..4, seed in any::<u64>()
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let got = run(settings(quorum), &messages, || rng.random_bool(0.3));
        prop_assert_eq!(got, reference(settings(quorum), &messages));
    }

    /// With a state TTL too: evictions judged by event time give the rows and dead letters
    /// of forgetting silent devices after every message, wherever epochs end.
    #[test]
    fn a_state_ttl_gives_the_same_result_wherever_epochs_end(
        messages in streams(), ttl_minutes in 5i64..200, seed in any::<u64>()
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let settings = StateSettings {
            state_ttl: Some(ttl_minutes * MINUTE),
            ..settings(1 + (seed % 3) as usize)
        };
        let got = run_counting_evictions(settings, &messages, || rng.random_bool(0.3));
        prop_assert_eq!(got, reference_counting_evictions(settings, &messages));
    }

    /// The order of a message's readings never matters.
    #[test]
    fn every_permutation_of_a_message_gives_the_same_result(
        messages in streams(), quorum in 1usize..5, seed in any::<u64>()
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut permuted = messages.clone();
        for message in &mut permuted {
            message.readings.shuffle(&mut rng);
        }
        let expected = run(settings(quorum), &messages, || false);
        let got = run(settings(quorum), &permuted, || rng.random_bool(0.3));
        prop_assert_eq!(got, expected);
    }

    /// A device back online sends its backlog in one message, in any order, long after the
    /// watermark passed it: what is newer than its emitted history is taken in full, in time
    /// order; only what is older than that history is late.
    #[test]
    fn a_backlog_newer_than_the_devices_history_is_taken_in_full(
        history in 1i64..6,
        backlog in prop::collection::btree_set(-100i64..200, 1..30),
        fleet_ahead in 300i64..2_000,
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let backlog_device = 9;
        // The device's history: readings at minutes 0, 10, ..; emitted once the fleet moves on.
        let mut messages: Vec<Message> = (0..history)
            .map(|i| Message { partition: 0, readings: vec![reading(backlog_device, i * 10)] })
            .collect();
        let last_emitted = (history - 1) * 10;
        // Five other devices run far ahead, so the watermark passes the whole backlog.
        for step in 0..=fleet_ahead / 5 {
            let readings = (1..=5).map(|d| reading(d, step * 5)).collect();
            messages.push(Message { partition: 0, readings });
        }
        let mut backlog_readings: Vec<Reading> =
            backlog.iter().map(|&m| reading(backlog_device, m)).collect();
        backlog_readings.shuffle(&mut rng);
        messages.push(Message { partition: 0, readings: backlog_readings });

        let (rows, rejected) = run(StateSettings::with_lateness(LATENESS), &messages, || rng.random_bool(0.2));
        let of_kind = |kind: &str| -> Vec<i64> {
            rejected.iter().filter(|r| r.0.starts_with(kind)).map(|r| r.2 / MINUTE).collect()
        };
        let expected_late: Vec<i64> = backlog.iter().copied().filter(|&m| m < last_emitted).collect();
        prop_assert_eq!(of_kind("Late"), expected_late);
        // A resend of the last emitted reading is an exact duplicate, not late.
        let resent: Vec<i64> = backlog.iter().copied().filter(|&m| m == last_emitted).collect();
        prop_assert_eq!(of_kind("Duplicate"), resent.clone());
        prop_assert_eq!(rejected.len(), of_kind("Late").len() + resent.len());
        let device_rows: Vec<&Row> = rows.iter().filter(|r| r.device_id == backlog_device).collect();
        let mut expected_times: Vec<i64> = (0..history).map(|i| i * 10).collect();
        expected_times.extend(backlog.iter().copied().filter(|&m| m > last_emitted));
        let times: Vec<i64> = device_rows.iter().map(|r| r.time / MINUTE).collect();
        prop_assert_eq!(&times, &expected_times);
        for pair in device_rows.windows(2) {
            let minutes = (pair[1].time - pair[0].time) / MINUTE;
            prop_assert_eq!(pair[1].duration, Some(minutes as f32));
        }
    }

    /// One meter whose clock runs hours ahead (within the future-time guard) changes
    /// nothing for the other meters: their rows and dead letters are those of the same
    /// stream without it.
    #[test]
    fn a_fast_clock_does_not_change_other_devices_results(
        devices in 4i32..12,
        rounds in 10i64..60,
        at in 0usize..20,
        ahead_hours in 1i64..20,
        seed in any::<u64>(),
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        // Rounds every 5 minutes, each reading delayed by less than the lateness, cut into
        // messages of up to four readings.
        let mut delivery: Vec<(i64, Reading)> = (0..rounds)
            .flat_map(|round| (1..=devices).map(move |d| reading(d, round * 5)))
            .map(|r| (r.time + rng.random_range(0..LATENESS), r))
            .collect();
        delivery.sort_by_key(|(arrival, r)| (*arrival, r.device_id));
        let mut messages = Vec::new();
        let mut rest = &delivery[..];
        while !rest.is_empty() {
            let (message, tail) = rest.split_at(rng.random_range(1..=rest.len().min(4)));
            rest = tail;
            messages.push(Message { partition: 0, readings: message.iter().map(|(_, r)| *r).collect() });
        }
        let fast = 1_000;
        let start = ahead_hours * 60;
        let fast_message = Message {
            partition: 0,
            readings: (0..3).map(|i| reading(fast, start + i * 5)).collect(),
        };
        // Early in the stream, once the partition has seen a quorum of devices (before that,
        // the newest reading is all there is to go by).
        let mut seen = std::collections::HashSet::new();
        let quorum_at = messages
            .iter()
            .position(|m| {
                seen.extend(m.readings.iter().map(|r| r.device_id));
                seen.len() >= 3
            })
            .unwrap_or(0)
            + 1;
        let mut with_fast = messages.clone();
        with_fast.insert((quorum_at + at).min(messages.len()), fast_message);

        let without = run(StateSettings::with_lateness(LATENESS), &messages, || false);
        let (rows, rejected) = run(StateSettings::with_lateness(LATENESS), &with_fast, || rng.random_bool(0.2));
        let others: Vec<Row> = rows.into_iter().filter(|r| r.device_id != fast).collect();
        let other_rejections: Vec<Rejection> = rejected.into_iter().filter(|r| r.1 != fast).collect();
        prop_assert_eq!((others, other_rejections), without);
    }
}

fn reading(device_id: i32, minute: i64) -> Reading {
    Reading {
        device_id,
        time: minute * MINUTE,
        energy: 100.0 + minute as f64 / 4.0,
    }
}

/// The reproduction, literally: a backlog in one message after the watermark passed.
#[test]
fn a_newest_first_backlog_in_one_message_is_not_late() {
    let at = |hour: i64| hour * 60;
    let messages = vec![
        Message {
            partition: 0,
            readings: vec![reading(1, at(0)), reading(2, at(0))],
        },
        Message {
            partition: 0,
            readings: vec![reading(2, at(10))],
        },
        Message {
            partition: 0,
            readings: vec![reading(1, at(3)), reading(1, at(2)), reading(1, at(1))],
        },
    ];
    // Quorum 1: the watermark follows the newest reading, so it has passed device 1's
    // backlog when the backlog arrives (with two devices the default quorum waits anyway).
    let (rows, rejected) = run(settings(1), &messages, || false);
    assert!(rejected.is_empty(), "{rejected:?}");
    let device1: Vec<(i64, Option<f32>)> = rows
        .iter()
        .filter(|r| r.device_id == 1)
        .map(|r| (r.time / MINUTE / 60, r.duration))
        .collect();
    assert_eq!(
        device1,
        vec![(0, None), (1, Some(60.0)), (2, Some(60.0)), (3, Some(60.0))]
    );
}

/// A backlog of 20,000 readings, newest first, in one message: every reading taken, in time
/// order, and resends inside it judged against the first copy.
#[test]
fn a_long_backlog_newest_first_is_taken_whole_with_its_resends_judged() {
    let mut readings: Vec<Reading> = (0..20_000).rev().map(|m| reading(1, m)).collect();
    readings.insert(5_000, reading(1, 100));
    readings.insert(
        9_000,
        Reading {
            energy: 1.0,
            ..reading(1, 200)
        },
    );
    let messages = vec![Message {
        partition: 0,
        readings,
    }];
    let (rows, rejected) = run(StateSettings::with_lateness(LATENESS), &messages, || false);
    assert_eq!(
        (rows.clone(), rejected.clone()),
        reference(StateSettings::with_lateness(LATENESS), &messages)
    );
    assert_eq!(rows.len(), 20_000);
    assert!(rows.windows(2).all(|w| w[1].duration == Some(1.0)));
    let kinds: Vec<&str> = rejected
        .iter()
        .map(|r| r.0.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(kinds, vec!["ConflictingDuplicate", "Duplicate"]);
}
