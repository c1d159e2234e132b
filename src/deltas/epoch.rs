//! An epoch's emitted rows laid out for Parquet: grouped by UTC day, sorted by
//! (device_id, time) within each day, column by column.
//!
//! Rows are emitted device by device in time order into one buffer (sequential writes on the
//! hot path). A device's rows come in time order, so ordering the epoch only needs a stable
//! sort on (day, device rank), not a comparison of rows.

use std::sync::Arc;

use arrow::array::{
    Array, AsArray, DictionaryArray, Float32Array, Float32Builder, Int32Array, StringArray,
};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::Int32Type;
use rustc_hash::FxHashMap;

use super::names::{NameId, Names};
use crate::timestamp::MICROS_PER_DAY;

/// One output row, for tests and for reading [`DayRows`] row by row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub device_id: i32,
    pub device_name: String,
    /// Event time, UTC microseconds.
    pub time: i64,
    /// Minutes since the device's previous reading; `None` for its first.
    pub duration: Option<f32>,
    /// Energy since the previous reading; `None` for the first and after a counter reset.
    pub delta_energy: Option<f32>,
}

/// An epoch's rows of one UTC day, sorted by (device_id, time), as columns.
#[derive(Debug, Clone, PartialEq)]
pub struct DayRows {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub device_id: Vec<i32>,
    pub time: Vec<i64>,
    /// Arrow arrays already: a null bitmap built while gathering costs less than a pass over
    /// a column of options afterwards.
    pub duration: Float32Array,
    pub delta_energy: Float32Array,
    /// Keys into the day's distinct names: four bytes a row instead of a copy of the name.
    pub device_name: DictionaryArray<Int32Type>,
}

impl DayRows {
    pub fn len(&self) -> usize {
        self.device_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.device_id.is_empty()
    }

    pub fn name(&self, row: usize) -> &str {
        let key = self.device_name.keys().value(row);
        self.device_name
            .values()
            .as_string::<i32>()
            .value(key as usize)
    }

    /// The rows one by one.
    pub fn rows(&self) -> impl Iterator<Item = Row> + '_ {
        (0..self.len()).map(|i| Row {
            device_id: self.device_id[i],
            device_name: self.name(i).to_owned(),
            time: self.time[i],
            duration: self.duration.is_valid(i).then(|| self.duration.value(i)),
            delta_energy: self
                .delta_energy
                .is_valid(i)
                .then(|| self.delta_energy.value(i)),
        })
    }
}

/// An epoch's rows in emission order plus a snapshot of what laying them out needs.
#[derive(Debug)]
pub struct EpochRows {
    pub(super) emitted: Vec<Emitted>,
    /// Device id of each slot.
    pub(super) device_ids: Vec<i32>,
    /// Position of each slot in device-id order.
    pub(super) rank: Vec<u32>,
    pub(super) names: Names,
}

impl EpochRows {
    /// The rows grouped by UTC day (ascending), sorted by (device_id, time) within each day.
    ///
    /// Usually a stable counting sort on each row's (day, device rank): only each row's index
    /// is scattered (one small write stream per device, where scattering whole rows into five
    /// columns missed the cache on nearly every write); the columns are then gathered in
    /// output order, whose independent reads overlap. Stability keeps each device's rows in
    /// emission (= time) order. The counting sort needs a counter per day and device; when
    /// that would outweigh the rows (a few rows spread over many days on a large state), the
    /// rows' keys are sorted instead, so memory stays proportional to the rows.
    pub fn into_days(self) -> Vec<DayRows> {
        let EpochRows {
            emitted,
            device_ids,
            rank,
            names,
        } = self;
        let days = DayIndex::of(&emitted);
        let order = if counting_fits(days.len(), device_ids.len(), emitted.len()) {
            counting_order(&emitted, &rank, &days)
        } else {
            sorted_order(&emitted, &rank, &days)
        };
        let mut start = 0;
        days.days
            .iter()
            .map(|&(day, rows)| {
                let day_order = &order[start..start + rows];
                start += rows;
                DayRows::gather(day, day_order, &emitted, &device_ids, &names)
            })
            .collect()
    }
}

/// Whether a counter per (day, device) costs no more than twice the rows and devices.
fn counting_fits(days: usize, devices: usize, rows: usize) -> bool {
    let stride = devices as u128 + 1;
    days as u128 * stride <= 2 * (rows as u128 + stride)
}

/// Output position → row index by a counting sort on (day, rank).
fn counting_order(emitted: &[Emitted], rank: &[u32], days: &DayIndex) -> Vec<u32> {
    // After the running sum over days in order and devices by rank,
    // `next[day * stride + rank]` is the output position of the device's next row of that day.
    let stride = rank.len() + 1;
    let mut next = vec![0u32; days.len() * stride];
    // Each row's slot in `next`, found once for the counting and the scattering.
    let mut keys = Vec::with_capacity(emitted.len());
    let mut lookup = days.lookup();
    for row in emitted {
        let key = lookup.index(row.time) * stride + rank[row.slot as usize] as usize;
        next[key + 1] += 1;
        keys.push(key);
    }
    let mut total = 0;
    for counts in next.chunks_exact_mut(stride) {
        counts[0] = total;
        for i in 1..stride {
            counts[i] += counts[i - 1];
        }
        total = counts[stride - 1];
    }
    let mut order = vec![0u32; emitted.len()];
    for (index, &key) in keys.iter().enumerate() {
        let at = &mut next[key];
        order[*at as usize] = index as u32;
        *at += 1;
    }
    order
}

/// Output position → row index by sorting (day, rank, row index): memory by the rows alone.
fn sorted_order(emitted: &[Emitted], rank: &[u32], days: &DayIndex) -> Vec<u32> {
    let mut lookup = days.lookup();
    let mut keys: Vec<(u64, u32)> = emitted
        .iter()
        .enumerate()
        .map(|(index, row)| {
            let day = lookup.index(row.time) as u64;
            (
                (day << 32) | u64::from(rank[row.slot as usize]),
                index as u32,
            )
        })
        .collect();
    // The row index breaks ties, so this is the stable order.
    keys.sort_unstable();
    keys.into_iter().map(|(_, index)| index).collect()
}

/// Rows copied per step of [`DayRows::gather`]: 64 KiB, well inside the L2 cache.
pub(super) const GATHER_CHUNK: usize = 2048;

impl DayRows {
    /// The day's columns, row `i` taken from `emitted[order[i]]`.
    fn gather(
        day: i64,
        order: &[u32],
        emitted: &[Emitted],
        device_ids: &[i32],
        names: &Names,
    ) -> DayRows {
        let rows = order.len();
        let mut device_id = Vec::with_capacity(rows);
        let mut time = Vec::with_capacity(rows);
        let mut duration = Float32Builder::with_capacity(rows);
        let mut delta_energy = Float32Builder::with_capacity(rows);
        let mut device_name = NameKeys::with_capacity(rows);
        // Each read of `emitted` is a cache miss (a device's rows lie a fleet apart). A
        // loop that only copies rows keeps many of those misses in flight at once; the
        // copies land in a small buffer that stays in cache while it is split into columns.
        let mut chunk = Vec::with_capacity(GATHER_CHUNK);
        for part in order.chunks(GATHER_CHUNK) {
            chunk.clear();
            chunk.extend(part.iter().map(|&index| emitted[index as usize]));
            for row in &chunk {
                device_id.push(device_ids[row.slot as usize]);
                time.push(row.time);
                duration.append_option(row.duration.get());
                delta_energy.append_option(row.delta_energy.get());
                device_name.push(row.name, names);
            }
        }
        DayRows {
            day,
            device_id,
            time,
            duration: duration.finish(),
            delta_energy: delta_energy.finish(),
            device_name: device_name.finish(),
        }
    }
}

/// Builds a day's name column as keys into its distinct names, in first-seen order. Rows come
/// device by device, so nearly every row repeats the previous row's name and costs one
/// comparison of ids; the name text is copied once per distinct name.
struct NameKeys {
    keys: Vec<i32>,
    key_of: FxHashMap<NameId, i32>,
    values: Vec<u8>,
    offsets: Vec<i32>,
    previous: Option<(NameId, i32)>,
}

impl NameKeys {
    fn with_capacity(rows: usize) -> Self {
        NameKeys {
            keys: Vec::with_capacity(rows),
            key_of: FxHashMap::default(),
            values: Vec::new(),
            offsets: vec![0],
            previous: None,
        }
    }

    fn push(&mut self, name: NameId, names: &Names) {
        let key = match self.previous {
            Some((previous, key)) if previous == name => key,
            _ => {
                let next = self.key_of.len() as i32;
                let key = *self.key_of.entry(name).or_insert_with(|| {
                    self.values.extend_from_slice(names.bytes(name));
                    self.offsets.push(self.values.len() as i32);
                    next
                });
                self.previous = Some((name, key));
                key
            }
        };
        self.keys.push(key);
    }

    fn finish(self) -> DictionaryArray<Int32Type> {
        // Every name was stored from a `str`, so this check always passes.
        let text = String::from_utf8(self.values)
            .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned());
        let values = StringArray::new(
            OffsetBuffer::new(ScalarBuffer::from(self.offsets)),
            Buffer::from(text.into_bytes()),
            None,
        );
        // Keys index `values` by construction.
        DictionaryArray::new(Int32Array::from(self.keys), Arc::new(values))
    }
}

/// A row of the current epoch, before it is ordered and laid out in columns: 24 bytes, as an
/// epoch's rows are the bulk of a run's memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct Emitted {
    pub(super) time: i64,
    pub(super) duration: MaybeF32,
    pub(super) delta_energy: MaybeF32,
    pub(super) name: NameId,
    /// The device's slot.
    pub(super) slot: u32,
}

const _: () = assert!(std::mem::size_of::<Emitted>() == 24);

/// An optional `f32` in four bytes, NaN standing for null: no duration or delta is NaN, as
/// times and energies are finite.
#[derive(Debug, Clone, Copy)]
pub(super) struct MaybeF32(f32);

impl MaybeF32 {
    const NULL: MaybeF32 = MaybeF32(f32::NAN);

    fn get(self) -> Option<f32> {
        (!self.0.is_nan()).then_some(self.0)
    }
}

impl From<Option<f32>> for MaybeF32 {
    fn from(value: Option<f32>) -> Self {
        debug_assert!(value.is_none_or(|v| !v.is_nan()));
        value.map_or(MaybeF32::NULL, MaybeF32)
    }
}

/// The UTC days of an epoch's rows, ascending, with a row count each; built in one pass with
/// a hash map, so an epoch of many days costs no more per row than one of a single day.
#[derive(Debug, Default)]
struct DayIndex {
    days: Vec<(i64, usize)>,
    /// Day → its index in `days`.
    index: FxHashMap<i64, usize>,
}

impl DayIndex {
    fn of(emitted: &[Emitted]) -> DayIndex {
        let mut counts: FxHashMap<i64, usize> = FxHashMap::default();
        let mut current = DayRange::EMPTY;
        let mut count = 0usize;
        for row in emitted {
            if !current.contains(row.time) {
                if count > 0 {
                    *counts.entry(current.day).or_default() += count;
                }
                current = DayRange::of(row.time);
                count = 0;
            }
            count += 1;
        }
        if count > 0 {
            *counts.entry(current.day).or_default() += count;
        }
        let mut days: Vec<(i64, usize)> = counts.into_iter().collect();
        days.sort_unstable();
        let index = days
            .iter()
            .enumerate()
            .map(|(i, &(day, _))| (day, i))
            .collect();
        DayIndex { days, index }
    }

    fn len(&self) -> usize {
        self.days.len()
    }

    fn lookup(&self) -> DayLookup<'_> {
        DayLookup {
            index: &self.index,
            current: DayRange::EMPTY,
            at: 0,
        }
    }
}

/// Finds rows' day indexes; rows mostly come day by day, so the last day's bounds answer
/// almost every lookup without a division or a hash.
struct DayLookup<'a> {
    index: &'a FxHashMap<i64, usize>,
    current: DayRange,
    at: usize,
}

impl DayLookup<'_> {
    fn index(&mut self, time: i64) -> usize {
        if !self.current.contains(time) {
            self.current = DayRange::of(time);
            // Every row's day was counted into the index.
            self.at = self
                .index
                .get(&self.current.day)
                .copied()
                .unwrap_or_default();
        }
        self.at
    }
}

/// One UTC day: its number and `[start, end)` in µs.
#[derive(Debug, Clone, Copy)]
struct DayRange {
    day: i64,
    start: i64,
    end: i64,
}

impl DayRange {
    /// Contains no time, so the first lookup always computes a day.
    const EMPTY: DayRange = DayRange {
        day: 0,
        start: 0,
        end: 0,
    };

    fn of(time: i64) -> DayRange {
        let day = time.div_euclid(MICROS_PER_DAY);
        let start = day.saturating_mul(MICROS_PER_DAY);
        DayRange {
            day,
            start,
            end: start.saturating_add(MICROS_PER_DAY),
        }
    }

    fn contains(&self, time: i64) -> bool {
        time >= self.start && time < self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of `devices` devices over `days` days, in a scrambled emission order that keeps
    /// each device's rows in time order.
    fn rows(devices: u32, days: i64, count: usize, seed: u64) -> Vec<Emitted> {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut clock = vec![0i64; devices as usize];
        (0..count)
            .map(|_| {
                let slot = (next() % u64::from(devices)) as u32;
                let clock = &mut clock[slot as usize];
                *clock +=
                    (next() % (days as u64 * MICROS_PER_DAY as u64 / count as u64 + 1)) as i64;
                Emitted {
                    time: *clock - 3 * MICROS_PER_DAY,
                    duration: MaybeF32::NULL,
                    delta_energy: MaybeF32::NULL,
                    name: 0,
                    slot,
                }
            })
            .collect()
    }

    #[test]
    fn sorting_keys_gives_the_counting_sorts_order() {
        for (devices, days, count) in [(1, 1, 10), (50, 3, 2_000), (7, 400, 300), (1_000, 30, 5)] {
            let emitted = rows(devices, days, count, u64::from(devices) * 31 + count as u64);
            // Ranks unlike slots, as after devices were added out of id order.
            let rank: Vec<u32> = (0..devices).rev().collect();
            let index = DayIndex::of(&emitted);
            let counted = counting_order(&emitted, &rank, &index);
            assert_eq!(counted, sorted_order(&emitted, &rank, &index));
            let keys: Vec<(i64, u32, i64)> = counted
                .iter()
                .map(|&i| {
                    let row = emitted[i as usize];
                    (
                        row.time.div_euclid(MICROS_PER_DAY),
                        rank[row.slot as usize],
                        row.time,
                    )
                })
                .collect();
            assert!(
                keys.windows(2).all(|w| w[0] <= w[1]),
                "sorted by (day, rank, time)"
            );
        }
    }

    #[test]
    fn a_few_rows_over_many_days_on_a_large_state_do_not_count_per_day_and_device() {
        assert!(!counting_fits(5_000, 1_000_000, 5_000));
        assert!(counting_fits(1, 1_000_000, 1));
        assert!(counting_fits(2, 1_000_000, 10));
        assert!(counting_fits(30, 1_000, 20_000));
    }
}
