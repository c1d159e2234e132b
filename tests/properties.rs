//! Property tests of the delta semantics (contract §3): for input whose disorder stays within the
//! allowed lateness, rows do not depend on batching, order or epoch cuts, and equal "sort each
//! device's readings by time and take consecutive differences".

use meterflow::deltas::{DayRows, Deltas, Offer, Outcome, Row};
use meterflow::timestamp::MICROS_PER_MINUTE;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const LATENESS: i64 = 10 * MICROS_PER_MINUTE;

/// One reading of the generated history.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    device_id: i32,
    time: i64,
    energy: f64,
}

/// Per device: strictly increasing times; energies from `steps` (negative steps are resets).
fn histories(dyadic: bool) -> impl Strategy<Value = Vec<Reading>> {
    let device = (
        1i32..50,
        prop::collection::vec((1i64..30, -200i64..2_000), 1..25),
    );
    prop::collection::vec(device, 1..6).prop_map(move |devices| {
        let mut readings = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (device_id, steps) in devices {
            if !seen.insert(device_id) {
                continue;
            }
            let (mut time, mut counter) = (0i64, 10_000i64);
            for (gap, step) in steps {
                time += gap * MICROS_PER_MINUTE;
                counter = if step < 0 { -step } else { counter + step };
                // Quarter units are exact in f32 and f64, hundredths are the realistic case.
                let energy = if dyadic {
                    counter as f64 / 4.0
                } else {
                    counter as f64 / 100.0
                };
                readings.push(Reading {
                    device_id,
                    time,
                    energy,
                });
            }
        }
        readings
    })
}

/// The contract's reference: sort per device, take consecutive differences.
fn expected_rows(readings: &[Reading]) -> Vec<Row> {
    let mut by_device: std::collections::HashMap<i32, Reading> = Default::default();
    let mut rows = Vec::new();
    let mut per_device = readings.to_vec();
    per_device.sort_by_key(|r| (r.device_id, r.time));
    for r in &per_device {
        let row = match by_device.get(&r.device_id) {
            None => Row {
                device_id: r.device_id,
                device_name: name(r.device_id),
                time: r.time,
                duration: None,
                delta_energy: None,
            },
            Some(prev) => Row {
                device_id: r.device_id,
                device_name: name(r.device_id),
                time: r.time,
                duration: Some(((r.time - prev.time) as f64 / 60e6) as f32),
                delta_energy: (r.energy >= prev.energy).then_some((r.energy - prev.energy) as f32),
            },
        };
        by_device.insert(r.device_id, *r);
        rows.push(row);
    }
    sort_like_output(&mut rows);
    rows
}

/// The order rows have in the output: by UTC day, then (device_id, time).
fn sort_like_output(rows: &mut [Row]) {
    rows.sort_by_key(|r| (r.time.div_euclid(86_400_000_000), r.device_id, r.time));
}

fn name(device_id: i32) -> String {
    format!("meter {device_id}")
}

/// Delivers readings out of order by less than the lateness, cut into random messages, with
/// epochs closed at random message boundaries; returns all rows and any rejection.
fn run(readings: &[Reading], seed: u64) -> (Vec<Row>, Vec<Outcome>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut delivery: Vec<(i64, usize)> = readings
        .iter()
        .enumerate()
        .map(|(i, r)| (r.time + rng.random_range(0..LATENESS), i))
        .collect();
    delivery.sort();
    let names: Vec<String> = readings.iter().map(|r| name(r.device_id)).collect();
    let mut deltas = Deltas::new(LATENESS);
    let mut rows = Vec::new();
    let mut rejected = Vec::new();
    let mut rest = &delivery[..];
    while !rest.is_empty() {
        let size = rng.random_range(1..=rest.len().min(7));
        let (message, tail) = rest.split_at(size);
        rest = tail;
        let offers = message.iter().map(|&(_, i)| Offer {
            device_id: readings[i].device_id,
            time: readings[i].time,
            cumulative_energy: readings[i].energy,
            device_name: &names[i],
            index: 0,
        });
        deltas.apply_message(0, offers, |_, outcome| rejected.push(outcome));
        if rng.random_bool(0.2) {
            deltas.emit_ready();
            rows.extend(deltas.take_rows().iter().flat_map(DayRows::rows));
        }
    }
    deltas.flush();
    rows.extend(deltas.take_rows().iter().flat_map(DayRows::rows));
    sort_like_output(&mut rows);
    (rows, rejected)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn rows_equal_sort_and_differences_under_any_batching(readings in histories(false), seed in any::<u64>()) {
        let (rows, rejected) = run(&readings, seed);
        prop_assert!(rejected.is_empty(), "nothing is late within the lateness: {rejected:?}");
        prop_assert_eq!(&rows, &expected_rows(&readings));
    }

    #[test]
    fn rows_do_not_depend_on_order_or_epochs(readings in histories(false), a in any::<u64>(), b in any::<u64>()) {
        prop_assert_eq!(run(&readings, a), run(&readings, b));
    }

    #[test]
    fn deltas_sum_to_last_minus_first_without_resets(readings in histories(true), seed in any::<u64>()) {
        let (rows, _) = run(&readings, seed);
        let mut devices: Vec<i32> = readings.iter().map(|r| r.device_id).collect();
        devices.sort();
        devices.dedup();
        for device in devices {
            let mut series: Vec<&Reading> = readings.iter().filter(|r| r.device_id == device).collect();
            series.sort_by_key(|r| r.time);
            let has_reset = series.windows(2).any(|w| w[1].energy < w[0].energy);
            if has_reset {
                continue;
            }
            let sum: f64 = rows.iter().filter(|r| r.device_id == device).filter_map(|r| r.delta_energy).map(f64::from).sum();
            prop_assert_eq!(sum, series[series.len() - 1].energy - series[0].energy);
        }
    }

    #[test]
    fn exact_resends_are_duplicates_and_change_nothing(readings in histories(false), seed in any::<u64>()) {
        let doubled: Vec<Reading> = readings.iter().flat_map(|r| [*r, *r]).collect();
        let (rows, rejected) = run_adjacent_copies(&doubled, seed);
        prop_assert_eq!(rows, expected_rows(&readings));
        prop_assert!(rejected.iter().all(|o| *o == Outcome::Duplicate));
        prop_assert_eq!(rejected.len(), readings.len());
    }
}

/// Like [`run`] but keeps each reading's copy in the same message as the original.
fn run_adjacent_copies(doubled: &[Reading], seed: u64) -> (Vec<Row>, Vec<Outcome>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pairs: Vec<(i64, usize)> = (0..doubled.len() / 2)
        .map(|i| (doubled[2 * i].time + rng.random_range(0..LATENESS), i))
        .collect();
    pairs.sort();
    let mut deltas = Deltas::new(LATENESS);
    let mut rejected = Vec::new();
    for &(_, i) in &pairs {
        let r = doubled[2 * i];
        let device_name = name(r.device_id);
        let offer = Offer {
            device_id: r.device_id,
            time: r.time,
            cumulative_energy: r.energy,
            device_name: &device_name,
            index: 0,
        };
        deltas.apply_message(0, [offer, offer], |_, outcome| rejected.push(outcome));
    }
    deltas.flush();
    let mut rows: Vec<Row> = deltas.take_rows().iter().flat_map(DayRows::rows).collect();
    sort_like_output(&mut rows);
    (rows, rejected)
}
