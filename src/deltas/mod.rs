//! The per-device delta state machine (contract §3): pure, no I/O and no clock.
//!
//! Accepted readings wait in a small per-device buffer until the watermark passes them, then
//! are emitted in time order against the device's last emitted reading. Emission is lazy, and
//! the rule that makes it exact is: a device catches up to the watermark of the previous
//! message once, before any reading of the current message is judged. So readings of one
//! message never emit each other (a device's backlog, in any order, is judged only against
//! what it emitted before that message), and the rows are exactly those of checking emission
//! after every whole message; [`Deltas::emit_ready`] catches every device up at an epoch
//! boundary.
//!
//! Emitted rows go to one epoch buffer; [`epoch`] lays them out for Parquet.

pub(crate) mod device_hash;
mod epoch;
mod names;
pub mod watermark;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::deltas::device_hash::DeviceMap;
use crate::deltas::watermark::Watermark;
use crate::timestamp::MICROS_PER_MINUTE;
pub use epoch::{DayRows, EpochRows, Row};
use epoch::{Emitted, MaybeF32};
use names::{NameId, Names};

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
    /// With a state TTL: a reading older than the TTL horizon (the watermark minus the TTL)
    /// of a device the state keeps no history for: it may repeat what was written before the
    /// device was evicted, so it is refused like a late one.
    BeyondTtl {
        horizon: i64,
    },
}

/// Counters the state machine keeps itself, since only it sees emission.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaCounters {
    /// Rows whose energy went down: `delta_energy` null, new baseline.
    pub counter_resets: u64,
    /// Rows emitted so far.
    pub rows: u64,
    /// Devices dropped from the state by the state TTL.
    pub devices_evicted: u64,
}

/// Settings that decide rows besides the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSettings {
    /// How far the watermark trails the partitions' event-time fronts, in µs.
    pub allowed_lateness: i64,
    /// Devices that must reach an event time before it moves their partition's front (see
    /// [`Watermark`]); 1 is the plain maximum.
    pub watermark_quorum: usize,
    /// Devices with no reading newer than the watermark minus this (µs) are dropped from the
    /// state at an epoch boundary; `None` keeps every device.
    pub state_ttl: Option<i64>,
}

/// Devices that must agree on an event time by default: up to two meters of a partition with
/// a clock running ahead do not move its watermark.
pub const DEFAULT_WATERMARK_QUORUM: usize = 3;

impl StateSettings {
    /// The defaults, with `allowed_lateness` µs of lateness.
    pub fn with_lateness(allowed_lateness: i64) -> Self {
        StateSettings {
            allowed_lateness,
            watermark_quorum: DEFAULT_WATERMARK_QUORUM,
            state_ttl: None,
        }
    }
}

/// What [`Deltas::judge`] decided about one reading.
enum Judged {
    Accepted,
    /// Valid so far, but its place is far from the end of a long waiting list: put in place
    /// with the message's other such readings (and checked against them) after the message.
    Deferred(Pending),
    Refused(Outcome),
}

/// A reading's slot in the catch-up pass when its device is not in the state yet.
const NEW_DEVICE: u32 = u32::MAX;

/// Waiting readings a single insertion may shift; beyond that it is deferred.
const MAX_SHIFT: usize = 32;

/// Marks "no reading emitted yet"; no parseable time is this early.
const NEVER: i64 = i64::MIN;

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
    state_ttl: Option<i64>,
    /// Each reading's device slot while a message is applied (kept to reuse its allocation).
    message_slots: Vec<u32>,
}

impl Deltas {
    /// Empty state with the default settings and `allowed_lateness` µs of lateness.
    pub fn new(allowed_lateness: i64) -> Self {
        Self::with_settings(StateSettings::with_lateness(allowed_lateness))
    }

    /// Empty state.
    pub fn with_settings(settings: StateSettings) -> Self {
        Deltas {
            slots: DeviceMap::default(),
            devices: Vec::new(),
            emitted: Vec::new(),
            last_epoch_rows: 0,
            order: Vec::new(),
            names: Names::default(),
            watermark: Watermark::new(settings.allowed_lateness, settings.watermark_quorum),
            counters: DeltaCounters::default(),
            state_ttl: settings.state_ttl,
            message_slots: Vec::new(),
        }
    }

    /// Offers one whole message's readings from `partition`, reporting every reading that was
    /// not accepted to `rejected`.
    ///
    /// First every device the message names catches up to the watermark the previous
    /// message left; then each reading is judged against that emitted history and the
    /// device's waiting readings; the watermark moves only after the whole message. So
    /// readings of one message never make each other late, and their order within the
    /// message does not matter.
    pub fn apply_message<'n, I>(
        &mut self,
        partition: usize,
        readings: I,
        rejected: impl FnMut(&Offer<'n>, Outcome),
    ) where
        I: IntoIterator<Item = Offer<'n>>,
        I::IntoIter: Clone,
    {
        let readings = readings.into_iter();
        let device_ids = readings.clone().map(|offer| offer.device_id);
        self.apply_message_of(partition, device_ids, readings, rejected);
    }

    /// [`Self::apply_message`] with the readings' device ids given apart (the same ids, in
    /// the same order), so the catch-up pass does not build each offer twice.
    pub fn apply_message_of<'n>(
        &mut self,
        partition: usize,
        device_ids: impl Iterator<Item = i32>,
        readings: impl Iterator<Item = Offer<'n>>,
        mut rejected: impl FnMut(&Offer<'n>, Outcome),
    ) {
        if self.emitted.capacity() == 0 {
            // With room, as emission lags the readings an epoch counts.
            self.emitted
                .reserve(self.last_epoch_rows + self.last_epoch_rows / 4);
        }
        let watermark = self.watermark.current();
        let horizon = self.ttl_horizon();
        let mut slots = std::mem::take(&mut self.message_slots);
        slots.clear();
        let mut previous = None;
        for device_id in device_ids {
            let Some(&slot) = self.slots.get(&device_id) else {
                // New to the state: nothing to catch up; added when its reading is judged.
                slots.push(NEW_DEVICE);
                continue;
            };
            if previous != Some(slot) {
                let device = &mut self.devices[slot as usize];
                device.emit_until(slot, watermark, &mut self.emitted, &mut self.counters);
                if device.has_no_history_before(horizon) && device.last_time != NEVER {
                    // Evicted in effect, whether or not an epoch boundary removed it yet:
                    // its next reading starts it afresh.
                    device.last_time = NEVER;
                    self.counters.devices_evicted += 1;
                }
                previous = Some(slot);
            }
            slots.push(slot);
        }
        // Readings that would be inserted far from the end of a long waiting list (a
        // backlog sent newest first) are put in place together after the message, so a
        // message costs O(n log n), not a shift of the list per reading.
        let mut deferred: Vec<(u32, Pending, Offer<'n>)> = Vec::new();
        let mut notes = self.watermark.notes(partition);
        let mut state = Judge {
            slots: &mut self.slots,
            devices: &mut self.devices,
            names: &mut self.names,
        };
        for (offer, &slot) in readings.zip(&slots) {
            let slot = if slot == NEW_DEVICE {
                state.slot_of(&offer)
            } else {
                slot
            };
            match state.judge(&offer, slot, horizon) {
                Judged::Accepted => notes.note(offer.device_id, offer.time),
                Judged::Deferred(pending) => deferred.push((slot, pending, offer)),
                Judged::Refused(outcome) => rejected(&offer, outcome),
            }
        }
        if !deferred.is_empty() {
            self.place_deferred(partition, deferred, &mut rejected);
        }
        self.message_slots = slots;
        self.watermark.end_message(partition);
    }

    /// Puts a message's deferred readings into their devices' waiting lists: sorted by
    /// (device, time), the first of equal times (in message order) is taken and the others
    /// judged against it, and each device's list is merged once.
    fn place_deferred<'n>(
        &mut self,
        partition: usize,
        mut deferred: Vec<(u32, Pending, Offer<'n>)>,
        rejected: &mut impl FnMut(&Offer<'n>, Outcome),
    ) {
        // Stable: equal (slot, time) keep message order.
        deferred.sort_by_key(|(slot, pending, _)| (*slot, pending.time));
        let mut start = 0;
        while start < deferred.len() {
            let slot = deferred[start].0;
            let end = start + deferred[start..].partition_point(|(s, _, _)| *s == slot);
            let mut taken: Vec<Pending> = Vec::with_capacity(end - start);
            for (_, pending, offer) in &deferred[start..end] {
                match taken.last() {
                    Some(last) if last.time == pending.time => {
                        rejected(offer, same_time(last.energy, pending.energy));
                    }
                    _ => {
                        self.watermark.note(partition, offer.device_id, offer.time);
                        taken.push(*pending);
                    }
                }
            }
            // Merge from the first taken reading's place on: the readings before it stay
            // put, so this costs what inserting them one by one would shift at most once.
            let device = &mut self.devices[slot as usize];
            let from = device.pending.partition_point(|w| w.time < taken[0].time);
            let mut tail: Vec<Pending> = device.pending.drain(from..).collect();
            tail.reserve(taken.len());
            let mut waiting = std::mem::take(&mut tail).into_iter().peekable();
            for pending in taken {
                while let Some(w) = waiting.next_if(|w| w.time < pending.time) {
                    tail.push(w);
                }
                tail.push(pending);
            }
            tail.extend(waiting);
            device.pending.extend(tail);
            start = end;
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
    /// ordering can run on another thread while this state takes the next epoch. This is the
    /// epoch boundary: afterwards expired devices are evicted and unused names dropped.
    pub fn take_epoch_rows(&mut self) -> EpochRows {
        self.update_order();
        self.last_epoch_rows = self.emitted.len();
        let mut rank = vec![0u32; self.devices.len()];
        for (position, &slot) in self.order.iter().enumerate() {
            rank[slot as usize] = position as u32;
        }
        let rows = EpochRows {
            emitted: std::mem::take(&mut self.emitted),
            device_ids: self.devices.iter().map(|d| d.device_id).collect(),
            rank,
            names: self.names.snapshot(),
        };
        self.evict_expired();
        if self.names.wants_compaction() {
            self.compact_names();
        }
        rows
    }

    /// Drops devices whose newest reading is older than the watermark minus the TTL and
    /// that have nothing waiting. Decided from event time only, so a replay evicts the same
    /// devices; the survivors keep their relative order, so the saved state stays canonical.
    fn evict_expired(&mut self) {
        if self.state_ttl.is_none() {
            return;
        }
        // The horizon the next message is judged with, so a device removed here is one the
        // next message would treat as evicted anyway: rows do not depend on where epochs end.
        let horizon = self.ttl_horizon();
        let expired = |d: &Device| d.has_no_history_before(horizon);
        if !self.devices.iter().any(expired) {
            return;
        }
        // Devices created for readings that were all refused hold nothing: not counted.
        let evicted = self
            .devices
            .iter()
            .filter(|d| expired(d) && d.last_time != NEVER)
            .count();
        let mut new_slot = vec![u32::MAX; self.devices.len()];
        let mut kept = 0u32;
        for (slot, device) in self.devices.iter().enumerate() {
            if !expired(device) {
                new_slot[slot] = kept;
                kept += 1;
            }
        }
        self.devices.retain(|d| !expired(d));
        self.counters.devices_evicted += evicted as u64;
        self.devices.shrink_to_fit();
        self.slots = slot_index(&self.devices);
        self.order = self
            .order
            .iter()
            .map(|&slot| new_slot[slot as usize])
            .filter(|&slot| slot != u32::MAX)
            .collect();
        self.compact_names();
    }

    /// The state TTL's horizon for the next message: readings of devices without history are
    /// refused before it. `i64::MIN` without a TTL.
    fn ttl_horizon(&self) -> i64 {
        match self.state_ttl {
            Some(ttl) => self.watermark.current().saturating_sub(ttl),
            None => i64::MIN,
        }
    }

    /// Rebuilds the names from those still referenced, in slot order (deterministic).
    fn compact_names(&mut self) {
        let devices = &mut self.devices;
        self.names.compact(|visit| {
            for device in devices.iter_mut() {
                visit(&mut device.name);
                for pending in device.pending.iter_mut() {
                    visit(&mut pending.name);
                }
            }
        });
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

    /// State saved by [`Self::encode_state`]; the index and device order are rebuilt. The
    /// quorum and TTL of `settings` apply from now on; the lateness is the saved one until
    /// [`Self::apply_settings`].
    pub fn decode_state(bytes: &[u8], settings: &StateSettings) -> Result<Self, StateError> {
        let state: State = postcard::from_bytes(bytes).map_err(StateError)?;
        let slots = slot_index(&state.devices);
        let mut watermark = state.watermark;
        watermark.set_quorum(settings.watermark_quorum);
        let mut deltas = Deltas {
            slots,
            devices: state.devices,
            emitted: Vec::new(),
            last_epoch_rows: 0,
            order: Vec::new(),
            names: state.names,
            watermark,
            counters: state.counters,
            state_ttl: settings.state_ttl,
            message_slots: Vec::new(),
        };
        deltas.update_order();
        Ok(deltas)
    }

    /// Applies `settings` from the next message on (an epoch recorded with other flags than
    /// the state was saved with).
    pub fn apply_settings(&mut self, settings: &StateSettings) {
        self.watermark.set_lateness(settings.allowed_lateness);
        self.watermark.set_quorum(settings.watermark_quorum);
        self.state_ttl = settings.state_ttl;
    }

    /// The watermark, read-only.
    pub fn watermark(&self) -> &Watermark {
        &self.watermark
    }

    /// The watermark, for partition bookkeeping by the pipeline.
    pub fn watermark_mut(&mut self) -> &mut Watermark {
        &mut self.watermark
    }

    /// Devices in the state (every device seen, less those the TTL evicted).
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Bytes of device-name text the state holds.
    pub fn name_bytes(&self) -> usize {
        self.names.text_len()
    }

    pub fn counters(&self) -> DeltaCounters {
        self.counters
    }
}

/// The parts of the state a reading is judged against, borrowed apart from the watermark so
/// the watermark can take each accepted reading in the same pass.
struct Judge<'s> {
    slots: &'s mut DeviceMap<u32>,
    devices: &'s mut Vec<Device>,
    names: &'s mut Names,
}

impl Judge<'_> {
    /// The device's slot, adding the device if it is new.
    fn slot_of(&mut self, offer: &Offer<'_>) -> u32 {
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
        slot
    }

    /// Accepts a reading into its device's waiting readings, or says why not. `horizon` is
    /// the state TTL's (the previous watermark minus the TTL), `i64::MIN` without one.
    fn judge(&mut self, offer: &Offer<'_>, slot: u32, horizon: i64) -> Judged {
        let device = &mut self.devices[slot as usize];
        if device.last_time == NEVER && offer.time < horizon {
            return Judged::Refused(Outcome::BeyondTtl { horizon });
        }
        if device.last_time != NEVER && offer.time <= device.last_time {
            return Judged::Refused(if offer.time < device.last_time {
                Outcome::Late {
                    last_emitted: device.last_time,
                }
            } else {
                same_time(device.last_energy, offer.cumulative_energy)
            });
        }
        match device.pending.binary_search_by_key(&offer.time, |p| p.time) {
            Ok(i) => Judged::Refused(same_time(device.pending[i].energy, offer.cumulative_energy)),
            Err(i) => {
                if self.names.bytes(device.name) != offer.device_name.as_bytes() {
                    device.name = self.names.rename(offer.device_name);
                }
                let pending = Pending {
                    time: offer.time,
                    energy: offer.cumulative_energy,
                    name: device.name,
                };
                if device.pending.len() - i > MAX_SHIFT {
                    return Judged::Deferred(pending);
                }
                device.pending.insert(i, pending);
                Judged::Accepted
            }
        }
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

/// Device id → slot for devices stored in slot order.
fn slot_index(devices: &[Device]) -> DeviceMap<u32> {
    devices
        .iter()
        .enumerate()
        .map(|(slot, device)| (device.device_id, slot as u32))
        .collect()
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
    /// Whether the state TTL treats the device as evicted: nothing waits and its newest
    /// reading is older than `horizon` (or it has none: a device whose readings were all
    /// refused, or one evicted in effect).
    fn has_no_history_before(&self, horizon: i64) -> bool {
        self.pending.is_empty() && self.last_time < horizon
    }

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
                duration: MaybeF32::from(duration),
                delta_energy: MaybeF32::from(delta_energy),
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
    use super::epoch::GATHER_CHUNK;
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
        let mut second =
            Deltas::decode_state(&saved, &StateSettings::with_lateness(10 * MINUTE)).unwrap();
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
        assert!(Deltas::decode_state(b"not a state", &StateSettings::with_lateness(0)).is_err());
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
        let mut deltas = Deltas::with_settings(StateSettings {
            watermark_quorum: 1,
            ..StateSettings::with_lateness(10 * MINUTE)
        });
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

    #[test]
    fn a_device_renamed_on_every_reading_keeps_the_state_flat() {
        let mut deltas = Deltas::new(0);
        let mut largest = 0;
        let mut last_row = None;
        for epoch in 0..100i64 {
            for step in 0..10_000i64 {
                let minute = epoch * 10_000 + step;
                let name = format!("meter 7 firmware {minute}");
                let reading = Offer {
                    device_name: &name,
                    ..offer(7, minute * MINUTE, minute as f64)
                };
                deltas.apply_message(0, [reading], |_, outcome| panic!("{outcome:?}"));
            }
            deltas.emit_ready();
            let rows: Vec<Row> = rows_of(&mut deltas);
            assert_eq!(rows.len(), 10_000);
            // Rows carry their own reading's name, compactions or not.
            assert_eq!(
                rows[0].device_name,
                format!("meter 7 firmware {}", epoch * 10_000)
            );
            last_row = rows.last().cloned();
            largest = largest.max(deltas.encode_state().unwrap().len());
        }
        // A million names of about 25 bytes were seen (25 MB, twice that with the renames'
        // index); the state holds at most about a compaction's worth.
        assert!(largest < 4 << 20, "the state grew to {largest} bytes");
        assert!(
            deltas.name_bytes() < 2 << 20,
            "{} bytes of names",
            deltas.name_bytes()
        );
        assert_eq!(last_row.unwrap().device_name, "meter 7 firmware 999999");
        deltas.apply_message(0, [offer(7, i64::MAX / 2, 2e6)], |_, o| panic!("{o:?}"));
        deltas.flush();
        let rows = rows_of(&mut deltas);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].device_name, "Test Device");
    }

    #[test]
    fn the_state_ttl_evicts_devices_silent_past_it_by_event_time() {
        let hour = 60 * MINUTE;
        let mut deltas = Deltas::with_settings(StateSettings {
            watermark_quorum: 1,
            state_ttl: Some(hour),
            ..StateSettings::with_lateness(0)
        });
        deltas.apply_message(0, [offer(1, 0, 1.0), offer(2, 0, 1.0)], |_, _| {});
        for step in 1..=6 {
            deltas.apply_message(
                0,
                [offer(2, step * 15 * MINUTE, 1.0 + step as f64)],
                |_, _| {},
            );
            deltas.emit_ready();
            rows_of(&mut deltas);
            let expected = if step * 15 * MINUTE > hour { 1 } else { 2 };
            assert_eq!(deltas.device_count(), expected, "after {} min", step * 15);
        }
        assert_eq!(deltas.counters().devices_evicted, 1);
        // A resend of what device 1 wrote before it was evicted is refused, not written again.
        let mut refused = Vec::new();
        deltas.apply_message(0, [offer(1, 0, 1.0)], |_, o| refused.push(o));
        assert_eq!(
            refused,
            vec![Outcome::BeyondTtl {
                horizon: 90 * MINUTE - hour
            }]
        );
        // Device 1 reports again: a new device to the state, so its deltas are null.
        deltas.apply_message(0, [offer(1, 2 * hour, 9.0)], |_, _| {});
        deltas.flush();
        let device1: Vec<Row> = rows_of(&mut deltas)
            .into_iter()
            .filter(|r| r.device_id == 1)
            .collect();
        assert_eq!(device1.len(), 1);
        assert_eq!((device1[0].duration, device1[0].delta_energy), (None, None));
        // Without a TTL nothing is evicted.
        let mut keep = Deltas::new(0);
        keep.apply_message(0, [offer(1, 0, 1.0), offer(2, 10 * hour, 1.0)], |_, _| {});
        keep.emit_ready();
        rows_of(&mut keep);
        assert_eq!(keep.device_count(), 2);
    }
}
