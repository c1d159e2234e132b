//! The event-time watermark across input partitions (contract §3).
//!
//! Each partition has an event-time front; the watermark is the minimum of the fronts of the
//! partitions that still hold it back, minus the allowed lateness, and it only moves forward
//! (a partition that stops being idle cannot pull it back).
//!
//! A partition's front is not simply its newest reading: one meter whose clock runs hours
//! ahead would then move the watermark for the whole fleet, and every other meter's ordinary
//! disorder would turn `late`. The front is the newest time that `quorum` distinct devices
//! of the partition have reached among its recent readings (the K-th newest device), or the
//! oldest of the recent devices' newest readings while fewer than `quorum` devices are recent
//! (a partition of one meter follows that meter). "Recent" is the current and
//! the previous generation of [`GENERATION_READINGS`] accepted readings: a device that
//! stopped reporting leaves the window, so it cannot hold the front back for good. All of it
//! is a pure function of the readings in order, saved with the state, so a replay decides the
//! same watermark.

use serde::{Deserialize, Serialize};

/// The largest quorum: the front is found by scanning up to twice this many devices.
pub const MAX_QUORUM: usize = 64;

/// Accepted readings of a partition per generation of its recent-device window.
pub const GENERATION_READINGS: u32 = 1024;

/// Watermark state; pure data, advanced by the pipeline after each whole message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// How far behind the slowest partition's front the watermark trails, in µs.
    allowed_lateness: i64,
    /// Distinct devices that must reach a time before it moves their partition's front.
    quorum: u32,
    /// Per partition, indexed by the pipeline's partition number.
    partitions: Vec<PartitionClock>,
    /// The current watermark in UTC µs; `i64::MIN` until every active partition has data.
    current: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
struct PartitionClock {
    /// The partition's event-time front after its last whole message.
    front: Option<i64>,
    /// Caught up for longer than the idle timeout: does not hold the watermark back.
    idle: bool,
    /// The newest devices of the current generation of readings.
    current: NewestDevices,
    /// The same for the previous generation.
    previous: NewestDevices,
    /// Accepted readings in the current generation.
    readings: u32,
    /// Whether `current` changed since the front was last computed (not saved: a restored
    /// front is up to date).
    #[serde(skip)]
    changed: bool,
}

/// Up to `quorum` devices with the newest readings, each with its newest time.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
struct NewestDevices {
    /// (device id, newest time), in no particular order (at most `quorum` entries).
    entries: Vec<(i32, i64)>,
}

impl NewestDevices {
    /// Takes a reading into account; readings no newer than the quorum-th newest device
    /// change nothing (the common case, a few comparisons). Whether anything changed.
    fn note(&mut self, quorum: usize, device: i32, time: i64) -> bool {
        let full = self.entries.len() >= quorum;
        if full && self.entries.iter().all(|&(_, t)| time <= t) {
            return false;
        }
        if let Some(entry) = self.entries.iter_mut().find(|(d, _)| *d == device) {
            entry.1 = entry.1.max(time);
        } else if !full {
            self.entries.push((device, time));
        } else if let Some(oldest) = self.entries.iter_mut().min_by_key(|(_, t)| *t) {
            *oldest = (device, time);
        }
        true
    }
}

impl PartitionClock {
    /// The quorum-th newest device over both generations, or the oldest if fewer devices.
    fn recompute_front(&mut self, quorum: usize) {
        let mut newest: Vec<(i32, i64)> = Vec::with_capacity(2 * quorum);
        for &(device, time) in self.current.entries.iter().chain(&self.previous.entries) {
            match newest.iter_mut().find(|(d, _)| *d == device) {
                Some(entry) => entry.1 = entry.1.max(time),
                None => newest.push((device, time)),
            }
        }
        let mut times: Vec<i64> = newest.into_iter().map(|(_, t)| t).collect();
        times.sort_unstable_by(|a, b| b.cmp(a));
        self.front = times
            .get(quorum.saturating_sub(1))
            .or(times.last())
            .copied();
    }
}

/// One partition's clock while a message's accepted readings are taken in.
pub struct PartitionNotes<'w> {
    clock: &'w mut PartitionClock,
    quorum: usize,
}

impl PartitionNotes<'_> {
    /// Takes an accepted reading into the partition's front (at the end of the message).
    pub fn note(&mut self, device: i32, time: i64) {
        self.clock.readings += 1;
        if self.clock.current.note(self.quorum, device, time) {
            self.clock.changed = true;
        }
    }
}

impl Watermark {
    /// A watermark trailing by `allowed_lateness` µs, with no partition seen yet.
    pub fn new(allowed_lateness: i64, quorum: usize) -> Self {
        Watermark {
            allowed_lateness,
            quorum: quorum.clamp(1, MAX_QUORUM) as u32,
            partitions: Vec::new(),
            current: i64::MIN,
        }
    }

    /// Readings with `time <= current()` are final and may be emitted.
    pub fn current(&self) -> i64 {
        self.current
    }

    /// Changes the quorum (a restart with another setting); it shapes fronts from the next
    /// message on.
    pub fn set_quorum(&mut self, quorum: usize) {
        self.quorum = quorum.clamp(1, MAX_QUORUM) as u32;
    }

    /// Changes the allowed lateness (a restart with another setting). The watermark never
    /// moves back: a longer lateness takes effect once the fronts have moved on by the
    /// difference, a shorter one at the next advance.
    pub fn set_lateness(&mut self, allowed_lateness: i64) {
        self.allowed_lateness = allowed_lateness;
    }

    /// Registers a partition that must deliver before the watermark can pass it.
    pub fn add_partition(&mut self, partition: usize) {
        self.clock(partition);
        self.advance();
    }

    /// Takes an accepted reading of `partition` into its front (applied at the end of the
    /// message, by [`Self::end_message`]).
    pub fn note(&mut self, partition: usize, device: i32, time: i64) {
        self.notes(partition).note(device, time);
    }

    /// For taking a message's accepted readings of `partition` one by one.
    pub fn notes(&mut self, partition: usize) -> PartitionNotes<'_> {
        let quorum = self.quorum as usize;
        PartitionNotes {
            clock: self.clock(partition),
            quorum,
        }
    }

    /// A whole message of `partition` has been applied: its front and the watermark move,
    /// and a full generation becomes the previous one (only here, between messages, so the
    /// order of readings inside a message cannot matter).
    pub fn end_message(&mut self, partition: usize) {
        let quorum = self.quorum as usize;
        let clock = self.clock(partition);
        clock.idle = false;
        if clock.readings >= GENERATION_READINGS {
            clock.previous = std::mem::take(&mut clock.current);
            clock.readings = 0;
            clock.changed = true;
        }
        if clock.changed {
            clock.recompute_front(quorum);
            clock.changed = false;
        }
        self.advance();
    }

    /// Per partition, whether it is idle (not holding the watermark back).
    pub fn idle_flags(&self) -> Vec<bool> {
        self.partitions.iter().map(|p| p.idle).collect()
    }

    /// Marks a partition idle (caught up past the idle timeout) or active again.
    pub fn set_idle(&mut self, partition: usize, idle: bool) {
        self.clock(partition).idle = idle;
        self.advance();
    }

    fn clock(&mut self, partition: usize) -> &mut PartitionClock {
        if self.partitions.len() <= partition {
            self.partitions
                .resize(partition + 1, PartitionClock::default());
        }
        &mut self.partitions[partition]
    }

    fn advance(&mut self) {
        let mut active = self.partitions.iter().filter(|p| !p.idle).peekable();
        if active.peek().is_none() {
            return;
        }
        let slowest = active.map(|p| p.front).min().flatten();
        if let Some(front) = slowest {
            self.current = self
                .current
                .max(front.saturating_sub(self.allowed_lateness));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One message of `partition` with readings of (device, time).
    fn message(w: &mut Watermark, partition: usize, readings: &[(i32, i64)]) {
        for &(device, time) in readings {
            w.note(partition, device, time);
        }
        w.end_message(partition);
    }

    #[test]
    fn trails_the_latest_time_by_the_lateness() {
        let mut w = Watermark::new(10, 1);
        assert_eq!(w.current(), i64::MIN);
        message(&mut w, 0, &[(1, 100)]);
        assert_eq!(w.current(), 90);
        message(&mut w, 0, &[(1, 50)]);
        assert_eq!(w.current(), 90, "older data never moves it back");
        message(&mut w, 0, &[]);
        assert_eq!(w.current(), 90);
    }

    #[test]
    fn slowest_partition_holds_it_until_idle() {
        let mut w = Watermark::new(0, 1);
        w.add_partition(1);
        message(&mut w, 0, &[(1, 100)]);
        assert_eq!(
            w.current(),
            i64::MIN,
            "partition 1 has delivered nothing yet"
        );
        message(&mut w, 1, &[(2, 40)]);
        assert_eq!(w.current(), 40);
        w.set_idle(1, true);
        assert_eq!(w.current(), 100);
        w.set_idle(1, false);
        assert_eq!(
            w.current(),
            100,
            "a partition waking up cannot pull it back"
        );
        message(&mut w, 0, &[(1, 200)]);
        assert_eq!(w.current(), 100, "partition 1 holds it again");
    }

    #[test]
    fn devices_ahead_of_the_quorum_do_not_move_the_front() {
        let mut w = Watermark::new(0, 3);
        message(&mut w, 0, &[(1, 100), (2, 100), (3, 100), (4, 100)]);
        assert_eq!(w.current(), 100);
        // Two fast clocks: the third newest device is still at 100.
        message(&mut w, 0, &[(8, 10_000), (9, 20_000)]);
        assert_eq!(w.current(), 100);
        message(&mut w, 0, &[(1, 105), (2, 105)]);
        assert_eq!(w.current(), 105, "the third newest now: device 1 or 2");
    }

    #[test]
    fn fewer_devices_than_the_quorum_follow_the_oldest() {
        let mut w = Watermark::new(0, 3);
        message(&mut w, 0, &[(1, 100)]);
        assert_eq!(w.current(), 100, "one meter: its own clock");
        message(&mut w, 0, &[(2, 5_000)]);
        assert_eq!(w.current(), 100, "device 2 alone is not a quorum");
        message(&mut w, 0, &[(1, 200)]);
        assert_eq!(w.current(), 200);
    }

    #[test]
    fn a_silent_device_leaves_the_window_and_stops_holding_the_front() {
        let mut w = Watermark::new(0, 3);
        message(&mut w, 0, &[(1, 0), (2, 0), (3, 0)]);
        // Device 3 goes silent; devices 1 and 2 report on.
        let generation = GENERATION_READINGS as i64;
        for step in 1..=generation / 4 {
            message(&mut w, 0, &[(1, step), (2, step)]);
        }
        assert_eq!(
            w.current(),
            0,
            "device 3 is still recent and holds the front"
        );
        for step in generation / 4 + 1..=2 * generation {
            message(&mut w, 0, &[(1, step), (2, step)]);
        }
        assert_eq!(w.current(), 2 * generation, "device 3 left the window");
    }
}
