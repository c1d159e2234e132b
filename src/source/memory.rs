//! An in-process partitioned log behind [`Source`], for testing the service: topics of
//! partitions holding records at increasing offsets (with gaps where a test puts them), a
//! low watermark that retention can raise, and redelivery of records already read.
//!
//! A [`MemoryLog`] is shared: a test appends to it, redelivers or truncates while a service
//! reads it through [`MemoryLog::source`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{Assignment, Polled, Source, SourceFailure, SourceRecord};

/// The shared log.
#[derive(Debug, Clone, Default)]
pub struct MemoryLog {
    inner: Arc<Mutex<Log>>,
}

#[derive(Debug, Default)]
struct Log {
    topics: BTreeMap<String, Vec<PartitionLog>>,
    /// Records to deliver again before anything new: (topic, partition, offset).
    redeliveries: VecDeque<(String, i32, i64)>,
    /// Group offsets committed, by (topic, partition).
    committed: BTreeMap<(String, i32), i64>,
    /// Records handed out by all sources (redeliveries included).
    delivered: u64,
}

#[derive(Debug, Default)]
struct PartitionLog {
    /// Offsets below this are gone (retention).
    low: i64,
    /// (offset, payload), offsets increasing.
    records: Vec<(i64, Vec<u8>)>,
}

impl PartitionLog {
    fn high(&self) -> i64 {
        self.records
            .last()
            .map_or(self.low, |(offset, _)| offset + 1)
    }

    /// The first record at or after `offset` that retention has kept.
    fn at_or_after(&self, offset: i64) -> Option<&(i64, Vec<u8>)> {
        let from = offset.max(self.low);
        let index = self.records.partition_point(|(o, _)| *o < from);
        self.records.get(index)
    }
}

impl MemoryLog {
    fn lock(&self) -> MutexGuard<'_, Log> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates `topic` with `partitions` empty partitions (replacing it if it exists: a topic
    /// deleted and created again).
    pub fn create_topic(&self, topic: &str, partitions: usize) {
        self.lock().topics.insert(
            topic.to_string(),
            (0..partitions).map(|_| PartitionLog::default()).collect(),
        );
    }

    /// Adds `count` empty partitions to `topic` (as `kafka-topics --alter --partitions`).
    ///
    /// # Panics
    /// If the topic does not exist (a mistake in the test).
    pub fn add_partitions(&self, topic: &str, count: usize) {
        let mut log = self.lock();
        let partitions = log.topics.get_mut(topic).expect("topic exists");
        partitions.extend((0..count).map(|_| PartitionLog::default()));
    }

    /// Appends a record at the partition's next offset; returns that offset.
    ///
    /// # Panics
    /// If the topic or partition does not exist (a mistake in the test).
    pub fn append(&self, topic: &str, partition: i32, payload: &[u8]) -> i64 {
        let mut log = self.lock();
        let part = &mut log.topics.get_mut(topic).expect("topic exists")[partition as usize];
        let offset = part.high();
        part.records.push((offset, payload.to_vec()));
        offset
    }

    /// Appends a record at `offset`, leaving a gap (as compaction or transaction markers do).
    ///
    /// # Panics
    /// If `offset` is not after the partition's last one.
    pub fn append_at(&self, topic: &str, partition: i32, offset: i64, payload: &[u8]) {
        let mut log = self.lock();
        let part = &mut log.topics.get_mut(topic).expect("topic exists")[partition as usize];
        assert!(offset >= part.high(), "offsets only grow");
        part.records.push((offset, payload.to_vec()));
    }

    /// The next poll of any source delivers this record again (a broker resending a batch).
    pub fn redeliver(&self, topic: &str, partition: i32, offset: i64) {
        self.lock()
            .redeliveries
            .push_back((topic.to_string(), partition, offset));
    }

    /// Retention: records below `offset` are gone and the low watermark moves there.
    pub fn truncate_before(&self, topic: &str, partition: i32, offset: i64) {
        let mut log = self.lock();
        let part = &mut log.topics.get_mut(topic).expect("topic exists")[partition as usize];
        part.low = part.low.max(offset);
        part.records.retain(|(o, _)| *o >= offset);
    }

    /// The (low, high) offsets of a partition.
    pub fn watermarks(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        let log = self.lock();
        let part = log.topics.get(topic)?.get(partition as usize)?;
        Some((part.low, part.high()))
    }

    /// Group offsets committed so far.
    pub fn committed(&self) -> BTreeMap<(String, i32), i64> {
        self.lock().committed.clone()
    }

    /// Records delivered so far by all sources of this log.
    pub fn delivered(&self) -> u64 {
        self.lock().delivered
    }

    /// A reader of this log (what a consumer is to a broker).
    pub fn source(&self) -> MemorySource {
        MemorySource {
            log: self.clone(),
            assigned: Vec::new(),
            turn: 0,
        }
    }
}

/// One consumer of a [`MemoryLog`].
#[derive(Debug)]
pub struct MemorySource {
    log: MemoryLog,
    /// (topic, partition, next offset to deliver).
    assigned: Vec<(String, i32, i64)>,
    /// The partition polled first next time: partitions take turns, as a broker's fetches
    /// interleave them.
    turn: usize,
}

/// A failure of the in-memory log (a topic or partition that does not exist).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MemoryLogError(String);

impl Source for MemorySource {
    fn partitions(&self, topics: &[String]) -> Result<Vec<(String, i32)>, SourceFailure> {
        let log = self.log.lock();
        let mut found = Vec::new();
        for topic in topics {
            let Some(partitions) = log.topics.get(topic).filter(|p| !p.is_empty()) else {
                return Err(MemoryLogError(format!("topic {topic:?} does not exist")).into());
            };
            found.extend((0..partitions.len()).map(|p| (topic.clone(), p as i32)));
        }
        found.sort();
        Ok(found)
    }

    fn assign(&mut self, partitions: &[Assignment]) -> Result<(), SourceFailure> {
        let log = self.log.lock();
        let mut assigned = Vec::with_capacity(partitions.len());
        for a in partitions {
            let part = log
                .topics
                .get(&*a.topic)
                .and_then(|p| p.get(a.partition as usize))
                .ok_or_else(|| {
                    MemoryLogError(format!("no partition {}[{}]", a.topic, a.partition))
                })?;
            assigned.push((
                a.topic.to_string(),
                a.partition,
                a.offset.unwrap_or(part.low),
            ));
        }
        drop(log);
        self.assigned = assigned;
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Polled {
        let mut log = self.log.lock();
        while let Some((topic, partition, offset)) = log.redeliveries.pop_front() {
            let index = self
                .assigned
                .iter()
                .position(|(t, p, _)| *t == topic && *p == partition);
            let record = log
                .topics
                .get(&topic)
                .and_then(|p| p.get(partition as usize))
                .and_then(|part| part.at_or_after(offset))
                .filter(|(o, _)| *o == offset);
            if let (Some(index), Some((offset, payload))) = (index, record) {
                let record = SourceRecord {
                    partition: index,
                    offset: *offset,
                    payload: payload.clone(),
                };
                log.delivered += 1;
                return Polled::Record(record);
            }
        }
        // A broker refuses to read below its low watermark or past its high one.
        let out_of_range = self.assigned.iter().any(|(topic, partition, next)| {
            let part = &log.topics[topic][*partition as usize];
            *next < part.low || *next > part.high()
        });
        if out_of_range {
            return Polled::OutOfRange;
        }
        let count = self.assigned.len();
        for step in 0..count {
            let index = (self.turn + step) % count;
            let (topic, partition, next) = &self.assigned[index];
            let part = &log.topics[topic][*partition as usize];
            if let Some((offset, payload)) = part.at_or_after(*next) {
                let record = SourceRecord {
                    partition: index,
                    offset: *offset,
                    payload: payload.clone(),
                };
                self.assigned[index].2 = offset + 1;
                self.turn = index + 1;
                log.delivered += 1;
                return Polled::Record(record);
            }
        }
        drop(log);
        // Nothing new: wait a little (not the whole timeout), so tests stay fast without
        // spinning.
        std::thread::sleep(timeout.min(Duration::from_millis(2)));
        Polled::Nothing
    }

    fn watermarks(&self, partition: usize) -> Result<(i64, i64), SourceFailure> {
        let (topic, number, _) = self
            .assigned
            .get(partition)
            .ok_or_else(|| MemoryLogError(format!("partition {partition} is not assigned")))?;
        self.log
            .watermarks(topic, *number)
            .ok_or_else(|| MemoryLogError(format!("no partition {topic}[{number}]")).into())
    }

    fn committed(&self, next_offsets: &[(usize, i64)], commit: bool) {
        if !commit {
            return;
        }
        let mut log = self.log.lock();
        for &(index, next) in next_offsets {
            if let Some((topic, partition, _)) = self.assigned.get(index) {
                log.committed.insert((topic.clone(), *partition), next);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(polled: Polled) -> SourceRecord {
        match polled {
            Polled::Record(record) => record,
            other => panic!("expected a record, got {other:?}"),
        }
    }

    #[test]
    fn reads_from_the_assigned_offset_in_turns_with_gaps_and_redeliveries() {
        let log = MemoryLog::default();
        log.create_topic("t", 2);
        for i in 0..3 {
            log.append("t", 0, format!("a{i}").as_bytes());
        }
        log.append_at("t", 1, 5, b"b5");
        log.append_at("t", 1, 9, b"b9");
        let mut source = log.source();
        assert_eq!(
            source.partitions(&["t".into()]).unwrap(),
            vec![("t".into(), 0), ("t".into(), 1)]
        );
        assert!(source.partitions(&["missing".into()]).is_err());
        source
            .assign(&[
                Assignment {
                    topic: "t".into(),
                    partition: 0,
                    offset: Some(1),
                },
                Assignment {
                    topic: "t".into(),
                    partition: 1,
                    offset: None,
                },
            ])
            .unwrap();
        let seen: Vec<(usize, i64)> = (0..4)
            .map(|_| {
                let r = record(source.poll(Duration::ZERO));
                (r.partition, r.offset)
            })
            .collect();
        assert_eq!(seen, vec![(0, 1), (1, 5), (0, 2), (1, 9)]);
        assert!(matches!(source.poll(Duration::ZERO), Polled::Nothing));
        log.redeliver("t", 0, 1);
        let again = record(source.poll(Duration::ZERO));
        assert_eq!(
            (again.partition, again.offset, &again.payload[..]),
            (0, 1, &b"a1"[..])
        );
        assert_eq!(source.watermarks(1).unwrap(), (0, 10));
        log.truncate_before("t", 0, 2);
        assert_eq!(source.watermarks(0).unwrap(), (2, 3));
        assert_eq!(log.delivered(), 5);
        source.committed(&[(0, 3), (1, 10)], true);
        assert_eq!(log.committed()[&("t".to_string(), 1)], 10);
    }
}
