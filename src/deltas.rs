//! The per-device delta state machine (DESIGN §3): pure, no I/O and no clock.
//!
//! Accepted readings wait in a small per-device buffer until the watermark passes them, then
//! are emitted in time order against the device's last emitted reading. Emission is lazy: a
//! device catches up when it is next touched, and [`Deltas::emit_ready`] catches every device up
//! at an epoch boundary. Because the watermark only moves forward, this gives exactly the rows
//! of checking emission after every message, whatever the batching.
//!
//! Emitted rows go to one epoch buffer (sequential writes on the hot path);
//! [`Deltas::take_rows`] orders them by device with a stable counting sort on the device's rank.
//! A device's rows are emitted in time order, so the epoch comes out sorted by
//! (device_id, time) without comparing rows, and column by column, ready for Arrow.

use std::sync::Arc;

use arrow::array::{
    Array, AsArray, DictionaryArray, Float32Array, Float32Builder, Int32Array, StringArray,
};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::Int32Type;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::device_hash::DeviceMap;
use crate::timestamp::{MICROS_PER_DAY, MICROS_PER_MINUTE};
use crate::watermark::Watermark;

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
    emitted: Vec<Emitted>,
    /// Device id of each slot.
    device_ids: Vec<i32>,
    /// Position of each slot in device-id order.
    rank: Vec<u32>,
    names: Names,
}

impl EpochRows {
    /// The rows grouped by UTC day (ascending), sorted by (device_id, time) within each day.
    ///
    /// A stable counting sort on each row's (day, device rank). Only each row's index is
    /// scattered (one small write stream per device, where scattering whole rows into five
    /// columns missed the cache on nearly every write); the columns are then gathered in
    /// output order, whose independent reads overlap. Stability keeps each device's rows in
    /// emission (= time) order.
    pub fn into_days(self) -> Vec<DayRows> {
        let EpochRows {
            emitted,
            device_ids,
            rank,
            names,
        } = self;
        let mut day_index = DayIndex::default();
        for row in &emitted {
            let day = day_index.locate(row.time);
            day_index.days[day].1 += 1;
        }
        // Every day is known now, so indexes no longer shift. After the running sum over
        // days in order and devices by rank, `next[day * stride + rank]` is the output
        // position of the device's next row of that day.
        let stride = device_ids.len() + 1;
        let mut next = vec![0u32; day_index.days.len() * stride];
        // Each row's slot in `next`, found once for the counting and the scattering.
        let mut keys = Vec::with_capacity(emitted.len());
        for row in &emitted {
            let key = day_index.locate(row.time) * stride + rank[row.slot as usize] as usize;
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
        drop(keys);
        let mut start = 0;
        day_index
            .days
            .iter()
            .map(|&(day, rows)| {
                let day_order = &order[start..start + rows];
                start += rows;
                DayRows::gather(day, day_order, &emitted, &device_ids, &names)
            })
            .collect()
    }
}

/// Rows copied per step of [`DayRows::gather`]: 64 KiB, well inside the L2 cache.
const GATHER_CHUNK: usize = 2048;

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

/// A validated reading offered to the state machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Offer<'n> {
    pub device_id: i32,
    pub time: i64,
    pub cumulative_energy: f64,
    pub device_name: &'n str,
    /// Position in the message's `measurements`, handed back with a rejection.
    pub index: u32,
}

/// What became of an offered reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    Accepted,
    /// Same device, time and energy as an accepted reading: dropped, counted.
    Duplicate,
    /// Same device and time as an accepted reading, different energy: dead letter.
    ConflictingDuplicate {
        accepted_energy: f64,
    },
    /// Older than the device's last emitted reading: dead letter.
    Late {
        last_emitted: i64,
    },
}

/// Counters the state machine keeps itself, since only it sees emission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaCounters {
    /// Rows whose energy went down: `delta_energy` null, new baseline.
    pub counter_resets: u64,
    /// Rows emitted so far.
    pub rows: u64,
}

/// Marks "no reading emitted yet"; no parseable time is this early.
const NEVER: i64 = i64::MIN;

/// Index into [`Names`].
type NameId = u32;

/// Readings a device keeps inline: with the usual lateness (two reading intervals) about two
/// wait at a time, and a buffer of its own would be one more cache miss per reading.
const INLINE_PENDING: usize = 2;

/// State of one device, 80 bytes: memory per device is a stated target (≤ 150 bytes), so the
/// name is an id and only [`INLINE_PENDING`] waiting readings live inline; more spill to the
/// heap until they are emitted.
#[derive(Debug, Serialize, Deserialize)]
struct Device {
    device_id: i32,
    /// Name of the latest accepted reading.
    name: NameId,
    /// Time of the last emitted reading, or [`NEVER`].
    last_time: i64,
    /// Energy of the last emitted reading: the baseline of the next delta.
    last_energy: f64,
    /// Accepted, not yet emitted readings in time order (about lateness / interval of them).
    pending: SmallVec<[Pending; INLINE_PENDING]>,
}

// The size the memory budget above is computed with.
const _: () = assert!(std::mem::size_of::<Device>() == 80);

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Pending {
    time: i64,
    energy: f64,
    name: NameId,
}

/// A row of the current epoch, before it is ordered and laid out in columns: 24 bytes, as an
/// epoch's rows are the bulk of a run's memory.
#[derive(Debug, Clone, Copy)]
struct Emitted {
    time: i64,
    duration: MaybeF32,
    delta_energy: MaybeF32,
    name: NameId,
    /// The device's slot.
    slot: u32,
}

const _: () = assert!(std::mem::size_of::<Emitted>() == 24);

/// An optional `f32` in four bytes, NaN standing for null: no duration or delta is NaN, as
/// times and energies are finite.
#[derive(Debug, Clone, Copy)]
struct MaybeF32(f32);

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

/// The UTC days of an epoch's rows, sorted, with a row count each. Rows mostly come day by
/// day, so the last day's bounds answer almost every lookup without a division.
#[derive(Debug, Default)]
struct DayIndex {
    days: Vec<(i64, usize)>,
    /// `[start, end)` in µs of the last day looked up, and its index.
    last: Option<(i64, i64, usize)>,
}

impl DayIndex {
    /// Index of the day of `time`, added (with no rows) if it is new.
    fn locate(&mut self, time: i64) -> usize {
        if let Some((start, end, index)) = self.last {
            if time >= start && time < end {
                return index;
            }
        }
        let day = time.div_euclid(MICROS_PER_DAY);
        let index = match self.days.binary_search_by_key(&day, |&(d, _)| d) {
            Ok(i) => i,
            Err(i) => {
                self.days.insert(i, (day, 0));
                i
            }
        };
        let start = day.saturating_mul(MICROS_PER_DAY);
        self.last = Some((start, start.saturating_add(MICROS_PER_DAY), index));
        index
    }
}

/// Device names, each stored once in one buffer; a renamed device adds its new name, and
/// names seen in renames are looked up so a device flipping between names adds nothing.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Names {
    /// Each name as its byte length (4 bytes, little endian) followed by its UTF-8 bytes. A
    /// name's id is the offset of its length, so checking a reading's name against its
    /// device's touches one place in memory, not an index and then the text.
    text: Vec<u8>,
    /// Saved sorted: a hash map's order depends on its history, and a replayed epoch must
    /// write the same checkpoint bytes as the run it replays.
    #[serde(serialize_with = "sorted_map")]
    renamed: FxHashMap<Box<str>, NameId>,
}

fn sorted_map<S: serde::Serializer>(
    map: &FxHashMap<Box<str>, NameId>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(map.iter().collect::<std::collections::BTreeMap<_, _>>())
}

/// Bytes of the length before each name in [`Names::text`].
const NAME_LENGTH_BYTES: usize = 4;

impl Names {
    /// The UTF-8 bytes of name `id`.
    fn bytes(&self, id: NameId) -> &[u8] {
        let start = id as usize + NAME_LENGTH_BYTES;
        let mut length = [0; NAME_LENGTH_BYTES];
        length.copy_from_slice(&self.text[id as usize..start]);
        &self.text[start..start + u32::from_le_bytes(length) as usize]
    }

    fn add(&mut self, name: &str) -> NameId {
        let id = self.text.len() as NameId;
        self.text
            .extend_from_slice(&(name.len() as u32).to_le_bytes());
        self.text.extend_from_slice(name.as_bytes());
        id
    }

    /// The names text, for laying out an epoch elsewhere (renames are not needed there).
    fn snapshot(&self) -> Names {
        Names {
            text: self.text.clone(),
            renamed: FxHashMap::default(),
        }
    }

    fn rename(&mut self, name: &str) -> NameId {
        if let Some(&id) = self.renamed.get(name) {
            return id;
        }
        let id = self.add(name);
        self.renamed.insert(name.into(), id);
        id
    }

    /// How many names are stored.
    #[cfg(test)]
    fn count(&self) -> usize {
        let mut id = 0;
        let mut count = 0;
        while id < self.text.len() {
            id += NAME_LENGTH_BYTES + self.bytes(id as NameId).len();
            count += 1;
        }
        count
    }
}

/// Per-device state plus the watermark: everything that decides rows.
#[derive(Debug)]
pub struct Deltas {
    /// Device id → slot in `devices`; dense slots keep the per-device cost low.
    slots: DeviceMap<u32>,
    devices: Vec<Device>,
    /// Rows emitted in the current epoch, in emission order.
    emitted: Vec<Emitted>,
    /// Rows the last epoch emitted: `emitted` is sized for about as many when the next epoch
    /// starts (no regrowth copies of the biggest buffer), not while the state rests.
    last_epoch_rows: usize,
    /// Slots in device-id order (extended when devices were added).
    order: Vec<u32>,
    names: Names,
    watermark: Watermark,
    counters: DeltaCounters,
}

impl Deltas {
    /// Empty state whose watermark trails by `allowed_lateness` µs.
    pub fn new(allowed_lateness: i64) -> Self {
        Deltas {
            slots: DeviceMap::default(),
            devices: Vec::new(),
            emitted: Vec::new(),
            last_epoch_rows: 0,
            order: Vec::new(),
            names: Names::default(),
            watermark: Watermark::new(allowed_lateness),
            counters: DeltaCounters::default(),
        }
    }

    /// Offers one whole message's readings from `partition`, reporting every reading that was
    /// not accepted to `rejected`. The watermark moves only after the whole message, so
    /// readings of one message never make each other late.
    pub fn apply_message<'n>(
        &mut self,
        partition: usize,
        readings: impl IntoIterator<Item = Offer<'n>>,
        mut rejected: impl FnMut(&Offer<'n>, Outcome),
    ) {
        if self.emitted.capacity() == 0 {
            // With room, as emission lags the readings an epoch counts.
            self.emitted
                .reserve(self.last_epoch_rows + self.last_epoch_rows / 4);
        }
        let watermark = self.watermark.current();
        let mut latest: Option<i64> = None;
        for offer in readings {
            match self.offer(&offer, watermark) {
                Outcome::Accepted => {
                    latest = Some(latest.map_or(offer.time, |t| t.max(offer.time)))
                }
                outcome => rejected(&offer, outcome),
            }
        }
        self.watermark.observe(partition, latest);
    }

    fn offer(&mut self, offer: &Offer<'_>, watermark: i64) -> Outcome {
        let next_slot = self.devices.len() as u32;
        let slot = *self.slots.entry(offer.device_id).or_insert(next_slot);
        if slot == next_slot {
            let name = self.names.add(offer.device_name);
            self.devices.push(Device {
                device_id: offer.device_id,
                name,
                last_time: NEVER,
                last_energy: 0.0,
                pending: SmallVec::new(),
            });
        }
        let device = &mut self.devices[slot as usize];
        device.emit_until(slot, watermark, &mut self.emitted, &mut self.counters);

        if device.last_time != NEVER && offer.time <= device.last_time {
            return if offer.time < device.last_time {
                Outcome::Late {
                    last_emitted: device.last_time,
                }
            } else {
                same_time(device.last_energy, offer.cumulative_energy)
            };
        }
        match device.pending.binary_search_by_key(&offer.time, |p| p.time) {
            Ok(i) => same_time(device.pending[i].energy, offer.cumulative_energy),
            Err(i) => {
                if self.names.bytes(device.name) != offer.device_name.as_bytes() {
                    device.name = self.names.rename(offer.device_name);
                }
                let pending = Pending {
                    time: offer.time,
                    energy: offer.cumulative_energy,
                    name: device.name,
                };
                device.pending.insert(i, pending);
                Outcome::Accepted
            }
        }
    }

    /// Emits every waiting reading the watermark has passed: call at an epoch boundary so
    /// the epoch holds exactly what eager emission would have produced by then.
    pub fn emit_ready(&mut self) {
        let watermark = self.watermark.current();
        for (slot, device) in self.devices.iter_mut().enumerate() {
            device.emit_until(
                slot as u32,
                watermark,
                &mut self.emitted,
                &mut self.counters,
            );
        }
    }

    /// Whether some reading still waits for the watermark (a flush would emit rows).
    pub fn has_pending(&self) -> bool {
        self.devices.iter().any(|d| !d.pending.is_empty())
    }

    /// Emits everything still waiting: the end of a finite input. Emptied spilled buffers go
    /// back inline (see [`Device::emit_until`]), so the state left holds only each device's
    /// baseline.
    pub fn flush(&mut self) {
        for (slot, device) in self.devices.iter_mut().enumerate() {
            device.emit_until(slot as u32, i64::MAX, &mut self.emitted, &mut self.counters);
        }
    }

    /// Takes the rows emitted since the last call, grouped by UTC day (ascending) and sorted
    /// by (device_id, time) within each day.
    pub fn take_rows(&mut self) -> Vec<DayRows> {
        self.take_epoch_rows().into_days()
    }

    /// Takes the rows emitted since the last call with what ordering them needs, so the
    /// ordering can run on another thread while this state takes the next epoch.
    pub fn take_epoch_rows(&mut self) -> EpochRows {
        self.update_order();
        self.last_epoch_rows = self.emitted.len();
        let mut rank = vec![0u32; self.devices.len()];
        for (position, &slot) in self.order.iter().enumerate() {
            rank[slot as usize] = position as u32;
        }
        EpochRows {
            emitted: std::mem::take(&mut self.emitted),
            device_ids: self.devices.iter().map(|d| d.device_id).collect(),
            rank,
            names: self.names.snapshot(),
        }
    }

    /// Keeps `order` listing every slot by device id.
    fn update_order(&mut self) {
        if self.order.len() != self.devices.len() {
            let devices = &self.devices;
            self.order
                .extend(self.order.len() as u32..devices.len() as u32);
            // Stable sort: the old prefix is sorted, so this is one merge of two runs.
            self.order
                .sort_by_key(|&slot| devices[slot as usize].device_id);
        }
    }

    /// The state as bytes for a checkpoint: every device's baseline and waiting readings,
    /// the names, the watermark and the counters. Taken between epochs (no rows held).
    pub fn encode_state(&self) -> Result<Vec<u8>, StateError> {
        debug_assert!(self.emitted.is_empty(), "state is saved between epochs");
        let state = StateRef {
            devices: &self.devices,
            names: &self.names,
            watermark: &self.watermark,
            counters: &self.counters,
        };
        postcard::to_stdvec(&state).map_err(StateError)
    }

    /// State saved by [`Self::encode_state`]; the index and device order are rebuilt.
    pub fn decode_state(bytes: &[u8]) -> Result<Self, StateError> {
        let state: State = postcard::from_bytes(bytes).map_err(StateError)?;
        let slots = state
            .devices
            .iter()
            .enumerate()
            .map(|(slot, device)| (device.device_id, slot as u32))
            .collect();
        let mut deltas = Deltas {
            slots,
            devices: state.devices,
            emitted: Vec::new(),
            last_epoch_rows: 0,
            order: Vec::new(),
            names: state.names,
            watermark: state.watermark,
            counters: state.counters,
        };
        deltas.update_order();
        Ok(deltas)
    }

    /// The watermark, read-only.
    pub fn watermark(&self) -> &Watermark {
        &self.watermark
    }

    /// The watermark, for partition bookkeeping by the pipeline.
    pub fn watermark_mut(&mut self) -> &mut Watermark {
        &mut self.watermark
    }

    /// Devices ever seen (state is kept for each: a device's first delta needs its history).
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    pub fn counters(&self) -> DeltaCounters {
        self.counters
    }
}

/// Saved state that cannot be encoded or read back.
#[derive(Debug, thiserror::Error)]
#[error("per-device state cannot be encoded or decoded")]
pub struct StateError(#[source] postcard::Error);

/// What [`Deltas::encode_state`] writes; [`State`] reads the same fields in the same order.
#[derive(Serialize)]
struct StateRef<'a> {
    devices: &'a [Device],
    names: &'a Names,
    watermark: &'a Watermark,
    counters: &'a DeltaCounters,
}

#[derive(Deserialize)]
struct State {
    devices: Vec<Device>,
    names: Names,
    watermark: Watermark,
    counters: DeltaCounters,
}

/// A second reading for an already accepted (device, time).
fn same_time(accepted_energy: f64, offered_energy: f64) -> Outcome {
    if accepted_energy == offered_energy {
        Outcome::Duplicate
    } else {
        Outcome::ConflictingDuplicate { accepted_energy }
    }
}

impl Device {
    /// Emits pending readings with `time <= until`, oldest first.
    fn emit_until(
        &mut self,
        slot: u32,
        until: i64,
        out: &mut Vec<Emitted>,
        counters: &mut DeltaCounters,
    ) {
        let ready = self.pending.partition_point(|p| p.time <= until);
        if ready == 0 {
            return;
        }
        for reading in self.pending.drain(..ready) {
            let (duration, delta_energy) = if self.last_time == NEVER {
                (None, None)
            } else {
                let minutes = (reading.time - self.last_time) as f64 / MICROS_PER_MINUTE as f64;
                let delta = if reading.energy < self.last_energy {
                    counters.counter_resets += 1;
                    None
                } else {
                    Some((reading.energy - self.last_energy) as f32)
                };
                (Some(minutes as f32), delta)
            };
            self.last_time = reading.time;
            self.last_energy = reading.energy;
            counters.rows += 1;
            out.push(Emitted {
                time: reading.time,
                duration: duration.into(),
                delta_energy: delta_energy.into(),
                name: reading.name,
                slot,
            });
        }
        if self.pending.spilled() && self.pending.len() <= INLINE_PENDING {
            // Back inline after a burst, so the heap buffer does not stay for good.
            self.pending.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::parse_micros;

    const MINUTE: i64 = MICROS_PER_MINUTE;

    fn offer(device_id: i32, time: i64, energy: f64) -> Offer<'static> {
        Offer {
            device_id,
            time,
            cumulative_energy: energy,
            device_name: "Test Device",
            index: 0,
        }
    }

    /// Applies messages one by one, then flushes; returns rows and rejections.
    fn run(lateness: i64, messages: &[Vec<Offer<'static>>]) -> (Vec<Row>, Vec<Outcome>) {
        let mut deltas = Deltas::new(lateness);
        let mut rejected = Vec::new();
        for message in messages {
            deltas.apply_message(0, message.iter().copied(), |_, o| rejected.push(o));
        }
        deltas.flush();
        (rows_of(&mut deltas), rejected)
    }

    fn rows_of(deltas: &mut Deltas) -> Vec<Row> {
        deltas.take_rows().iter().flat_map(DayRows::rows).collect()
    }

    #[test]
    fn restored_state_continues_exactly_like_the_uninterrupted_run() {
        // Out of order, a reset, a duplicate, a rename, two days, readings still waiting at
        // the checkpoint: everything the saved state must carry.
        let day = 24 * 60 * MINUTE;
        let mut messages: Vec<Vec<Offer<'static>>> = Vec::new();
        for step in 0..40i64 {
            let time = day - 20 * 5 * MINUTE + step * 5 * MINUTE;
            let mut message = vec![offer(1, time, step as f64), offer(2, time + MINUTE, 100.0)];
            if step % 7 == 3 {
                message.push(offer(3, time - 4 * MINUTE, (40 - step) as f64));
            }
            if step == 11 {
                message[0].device_name = "Renamed";
                message.push(offer(2, time + MINUTE, 100.0));
            }
            messages.push(message);
        }
        messages.swap(5, 6);
        let (expected, _) = run(10 * MINUTE, &messages);

        let mut first = Deltas::new(10 * MINUTE);
        for message in &messages[..23] {
            first.apply_message(0, message.iter().copied(), |_, _| {});
        }
        first.emit_ready();
        let mut got = rows_of(&mut first);
        let saved = first.encode_state().unwrap();
        let mut second = Deltas::decode_state(&saved).unwrap();
        assert_eq!(
            second.encode_state().unwrap(),
            saved,
            "decode ∘ encode is the identity"
        );
        for message in &messages[23..] {
            second.apply_message(0, message.iter().copied(), |_, _| {});
        }
        second.flush();
        got.extend(rows_of(&mut second));
        got.sort_by_key(|r| (r.device_id, r.time));
        let mut expected = expected;
        expected.sort_by_key(|r| (r.device_id, r.time));
        assert_eq!(got, expected);
        assert_eq!(second.counters(), {
            let mut d = Deltas::new(10 * MINUTE);
            for m in &messages {
                d.apply_message(0, m.iter().copied(), |_, _| {});
            }
            d.flush();
            d.counters()
        });
        assert!(Deltas::decode_state(b"not a state").is_err());
    }

    #[test]
    fn seed_example_gives_the_documented_rows() {
        let t0 = parse_micros("2022-07-11T02:15:00Z").unwrap();
        let t1 = parse_micros("2022-07-11T02:20:00Z").unwrap();
        let (rows, rejected) = run(
            10 * MINUTE,
            &[vec![offer(123456, t0, 120.12), offer(123456, t1, 122.45)]],
        );
        assert!(rejected.is_empty());
        assert_eq!(
            rows,
            vec![
                Row {
                    device_id: 123456,
                    device_name: "Test Device".into(),
                    time: t0,
                    duration: None,
                    delta_energy: None
                },
                Row {
                    device_id: 123456,
                    device_name: "Test Device".into(),
                    time: t1,
                    duration: Some(5.0),
                    delta_energy: Some(2.33f32)
                },
            ]
        );
        // f64 subtraction then one rounding to f32, as the contract says.
        assert_eq!(rows[1].delta_energy, Some((122.45f64 - 120.12f64) as f32));
    }

    #[test]
    fn counter_reset_nulls_the_delta_and_rebases() {
        let (rows, _) = run(
            0,
            &[vec![
                offer(1, 0, 100.0),
                offer(1, MINUTE, 3.0),
                offer(1, 3 * MINUTE, 4.5),
            ]],
        );
        let deltas: Vec<_> = rows.iter().map(|r| (r.duration, r.delta_energy)).collect();
        assert_eq!(
            deltas,
            vec![(None, None), (Some(1.0), None), (Some(2.0), Some(1.5))]
        );
        let mut state = Deltas::new(0);
        state.apply_message(0, [offer(1, 0, 5.0), offer(1, MINUTE, 1.0)], |_, _| {});
        state.flush();
        assert_eq!(state.counters().counter_resets, 1);
    }

    #[test]
    fn equal_energy_gives_a_zero_delta() {
        let (rows, _) = run(0, &[vec![offer(1, 0, 7.0), offer(1, MINUTE, 7.0)]]);
        assert_eq!(rows[1].delta_energy, Some(0.0));
    }

    #[test]
    fn duplicates_pending_and_emitted() {
        // Pending duplicate and conflict (same message).
        let (rows, rejected) = run(
            10 * MINUTE,
            &[vec![offer(1, 0, 1.0), offer(1, 0, 1.0), offer(1, 0, 2.0)]],
        );
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rejected,
            vec![
                Outcome::Duplicate,
                Outcome::ConflictingDuplicate {
                    accepted_energy: 1.0
                }
            ]
        );
        // Against the last emitted reading, after the watermark passed it.
        let (rows, rejected) = run(
            0,
            &[
                vec![offer(1, 0, 1.0)],
                vec![offer(1, MINUTE, 2.0)],
                vec![offer(1, MINUTE, 2.0), offer(1, MINUTE, 3.0)],
            ],
        );
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rejected,
            vec![
                Outcome::Duplicate,
                Outcome::ConflictingDuplicate {
                    accepted_energy: 2.0
                }
            ]
        );
    }

    #[test]
    fn late_only_against_the_devices_own_emitted_history() {
        let (rows, rejected) = run(
            5 * MINUTE,
            &[
                vec![offer(1, 0, 1.0)],
                vec![offer(1, 10 * MINUTE, 2.0)],
                // Watermark is now 5 min: the 0-min reading is emitted; 10-min still waits.
                vec![offer(1, 7 * MINUTE, 1.5)], // in order for the device: accepted
                vec![offer(1, -MINUTE, 0.5)],    // older than emitted 0-min: late
                vec![offer(2, -60 * MINUTE, 9.0)], // another device's old backlog: not late
            ],
        );
        assert_eq!(rejected, vec![Outcome::Late { last_emitted: 0 }]);
        let device1: Vec<_> = rows
            .iter()
            .filter(|r| r.device_id == 1)
            .map(|r| r.time / MINUTE)
            .collect();
        assert_eq!(device1, vec![0, 7, 10]);
        assert!(rows.iter().any(|r| r.device_id == 2));
    }

    #[test]
    fn readings_of_one_message_never_make_each_other_late() {
        // Watermark after message 1 is 100 min; message 2 holds 200 and then 150 min.
        let (rows, rejected) = run(
            0,
            &[
                vec![offer(1, 100 * MINUTE, 1.0)],
                vec![offer(1, 200 * MINUTE, 3.0), offer(1, 150 * MINUTE, 2.0)],
            ],
        );
        assert!(rejected.is_empty());
        let times: Vec<_> = rows.iter().map(|r| r.time / MINUTE).collect();
        assert_eq!(times, vec![100, 150, 200]);
    }

    #[test]
    fn emit_ready_emits_exactly_what_the_watermark_passed() {
        let mut deltas = Deltas::new(10 * MINUTE);
        deltas.apply_message(0, [offer(2, 0, 1.0), offer(1, 0, 1.0)], |_, _| {});
        deltas.apply_message(0, [offer(3, 15 * MINUTE, 1.0)], |_, _| {});
        assert_eq!(deltas.counters().rows, 0, "lazy: nothing emitted yet");
        deltas.emit_ready();
        let ids: Vec<_> = rows_of(&mut deltas).iter().map(|r| r.device_id).collect();
        assert_eq!(ids, vec![1, 2], "sorted by device id");
        assert_eq!(deltas.device_count(), 3);
        assert!(rows_of(&mut deltas).is_empty(), "taken rows are gone");
    }

    #[test]
    fn take_rows_groups_by_utc_day_and_sorts_by_device_then_time() {
        let day = crate::timestamp::MICROS_PER_DAY;
        let mut deltas = Deltas::new(0);
        deltas.apply_message(
            0,
            [
                offer(9, day - MINUTE, 1.0),
                offer(9, day + MINUTE, 2.0),
                offer(3, day, 1.0),
                offer(3, -MINUTE, 1.0),
            ],
            |_, _| {},
        );
        deltas.flush();
        let days = deltas.take_rows();
        let layout: Vec<(i64, Vec<(i32, i64)>)> = days
            .iter()
            .map(|d| {
                (
                    d.day,
                    d.rows().map(|r| (r.device_id, r.time / MINUTE)).collect(),
                )
            })
            .collect();
        assert_eq!(
            layout,
            vec![
                (-1, vec![(3, -1)]),
                (0, vec![(9, 1439)]),
                (1, vec![(3, 1440), (9, 1441)])
            ]
        );
    }

    #[test]
    fn epochs_larger_than_a_gather_chunk_come_out_in_order() {
        // Devices first seen in descending id order (slots differ from ranks), readings
        // interleaved across devices and across midnight, more rows than one gather chunk.
        let day = crate::timestamp::MICROS_PER_DAY;
        let devices: Vec<i32> = (0..97).rev().map(|i| i * 7 - 300).collect();
        let mut deltas = Deltas::new(0);
        let mut expected = Vec::new();
        for step in 0..60i64 {
            let time = day - 30 * MINUTE + step * MINUTE;
            let message: Vec<Offer<'static>> = devices
                .iter()
                .map(|&id| offer(id, time, (step * i64::from(id).abs()) as f64))
                .collect();
            for &id in &devices {
                expected.push((time.div_euclid(day), id, time));
            }
            deltas.apply_message(0, message, |_, outcome| panic!("{outcome:?}"));
        }
        deltas.flush();
        expected.sort();
        assert!(expected.len() > 2 * GATHER_CHUNK);
        let days = deltas.take_rows();
        let rows: Vec<(i64, i32, i64)> = days
            .iter()
            .flat_map(|d| d.rows().map(move |r| (d.day, r.device_id, r.time)))
            .collect();
        assert_eq!(rows, expected);
        for row in days.iter().flat_map(DayRows::rows) {
            assert_eq!(row.device_name, "Test Device");
            if row.time > day - 30 * MINUTE {
                assert_eq!(row.delta_energy, Some(row.device_id.unsigned_abs() as f32));
            }
        }
    }

    #[test]
    fn rows_carry_the_name_of_their_own_reading() {
        let mut deltas = Deltas::new(0);
        let renamed = |time| Offer {
            device_name: "Renamed",
            ..offer(1, time, 2.0)
        };
        let original = |time| offer(1, time, 2.0);
        deltas.apply_message(
            0,
            [
                offer(1, 0, 1.0),
                renamed(MINUTE),
                original(2 * MINUTE),
                renamed(3 * MINUTE),
            ],
            |_, _| {},
        );
        deltas.flush();
        let names: Vec<_> = rows_of(&mut deltas)
            .into_iter()
            .map(|r| r.device_name)
            .collect();
        assert_eq!(
            names,
            vec!["Test Device", "Renamed", "Test Device", "Renamed"]
        );
        assert_eq!(
            deltas.names.count(),
            3,
            "flipping names are stored once each"
        );
    }
}
