//! The event-time watermark across input partitions (DESIGN §3).
//!
//! Each partition remembers the latest accepted event time it has delivered; the watermark is
//! the minimum over the partitions that still hold it back, minus the allowed lateness. It only
//! moves forward, so a partition that stops being idle cannot pull it back.

/// Watermark state; pure data, advanced by the pipeline after each whole message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Watermark {
    /// How far behind the slowest partition's latest event the watermark trails, in µs.
    allowed_lateness: i64,
    /// Per partition, indexed by the pipeline's partition number.
    partitions: Vec<PartitionClock>,
    /// The current watermark in UTC µs; `i64::MIN` until every active partition has data.
    current: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
struct PartitionClock {
    /// Latest accepted event time delivered by this partition.
    latest: Option<i64>,
    /// Caught up for longer than the idle timeout: does not hold the watermark back.
    idle: bool,
}

impl Watermark {
    /// A watermark trailing by `allowed_lateness` µs, with no partition seen yet.
    pub fn new(allowed_lateness: i64) -> Self {
        Watermark {
            allowed_lateness,
            partitions: Vec::new(),
            current: i64::MIN,
        }
    }

    /// Readings with `time <= current()` are final and may be emitted.
    pub fn current(&self) -> i64 {
        self.current
    }

    /// Registers a partition that must deliver before the watermark can pass it.
    pub fn add_partition(&mut self, partition: usize) {
        self.clock(partition);
        self.advance();
    }

    /// Records a whole message of `partition` whose latest accepted event time is `latest`
    /// (`None` if it accepted nothing), and moves the watermark.
    pub fn observe(&mut self, partition: usize, latest: Option<i64>) {
        let clock = self.clock(partition);
        clock.idle = false;
        if let Some(time) = latest {
            clock.latest = Some(clock.latest.map_or(time, |t| t.max(time)));
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
        let slowest = active.map(|p| p.latest).min().flatten();
        if let Some(latest) = slowest {
            self.current = self
                .current
                .max(latest.saturating_sub(self.allowed_lateness));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trails_the_latest_time_by_the_lateness() {
        let mut w = Watermark::new(10);
        assert_eq!(w.current(), i64::MIN);
        w.observe(0, Some(100));
        assert_eq!(w.current(), 90);
        w.observe(0, Some(50));
        assert_eq!(w.current(), 90, "older data never moves it back");
        w.observe(0, None);
        assert_eq!(w.current(), 90);
    }

    #[test]
    fn slowest_partition_holds_it_until_idle() {
        let mut w = Watermark::new(0);
        w.add_partition(1);
        w.observe(0, Some(100));
        assert_eq!(
            w.current(),
            i64::MIN,
            "partition 1 has delivered nothing yet"
        );
        w.observe(1, Some(40));
        assert_eq!(w.current(), 40);
        w.set_idle(1, true);
        assert_eq!(w.current(), 100);
        w.set_idle(1, false);
        assert_eq!(
            w.current(),
            100,
            "a partition waking up cannot pull it back"
        );
        w.observe(0, Some(200));
        assert_eq!(w.current(), 100, "partition 1 holds it again");
    }
}
