//! The service's [`Source`] on a Kafka cluster: explicit assignment (no group rebalances),
//! records named by their position in the assignment, group offsets for monitoring only.

use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::{KafkaSettings, ServiceConsumer};
use crate::source::{Assignment, Polled, Source, SourceFailure, SourceRecord};

/// A consumer and what it was assigned.
pub struct KafkaSource {
    consumer: ServiceConsumer,
    settings: KafkaSettings,
    request_timeout: Duration,
    assigned: Vec<(String, i32)>,
}

impl KafkaSource {
    pub fn new(
        consumer: ServiceConsumer,
        settings: KafkaSettings,
        request_timeout: Duration,
    ) -> Self {
        KafkaSource {
            consumer,
            settings,
            request_timeout,
            assigned: Vec::new(),
        }
    }
}

impl Source for KafkaSource {
    fn partitions(&self, topics: &[String]) -> Result<Vec<(String, i32)>, SourceFailure> {
        Ok(self
            .settings
            .partitions(&self.consumer, topics, self.request_timeout)?)
    }

    fn assign(&mut self, partitions: &[Assignment]) -> Result<(), SourceFailure> {
        let mut list = TopicPartitionList::new();
        for p in partitions {
            let offset = p.offset.map_or(Offset::Beginning, Offset::Offset);
            list.add_partition_offset(&p.topic, p.partition, offset)?;
        }
        self.consumer.assign(&list)?;
        self.assigned = partitions
            .iter()
            .map(|p| (p.topic.to_string(), p.partition))
            .collect();
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Polled {
        match self.consumer.poll(timeout) {
            None => Polled::Nothing,
            Some(Ok(message)) => {
                let (topic, number) = (message.topic(), message.partition());
                let position = self
                    .assigned
                    .iter()
                    .position(|(t, p)| t == topic && *p == number);
                match position {
                    Some(partition) => Polled::Record(SourceRecord {
                        partition,
                        offset: message.offset(),
                        payload: message.payload().unwrap_or_default().to_vec(),
                    }),
                    // Not assigned (cannot happen with explicit assignment): ignored.
                    None => Polled::Nothing,
                }
            }
            Some(Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::AutoOffsetReset | RDKafkaErrorCode::OffsetOutOfRange,
            ))) => Polled::OutOfRange,
            Some(Err(error)) => Polled::Transient(error.to_string()),
        }
    }

    fn watermarks(&self, partition: usize) -> Result<(i64, i64), SourceFailure> {
        let (topic, number) = &self.assigned[partition];
        Ok(self
            .consumer
            .fetch_watermarks(topic, *number, self.request_timeout)?)
    }

    fn committed(&self, next_offsets: &[(usize, i64)], commit: bool) {
        let mut list = TopicPartitionList::new();
        for &(index, next) in next_offsets {
            let Some((topic, partition)) = self.assigned.get(index) else {
                continue;
            };
            self.consumer.context().committed(topic, *partition, next);
            let _ = list.add_partition_offset(topic, *partition, Offset::Offset(next));
        }
        if commit {
            if let Err(error) = self.consumer.commit(&list, CommitMode::Async) {
                tracing::warn!(%error, "cannot commit group offsets (monitoring only)");
            }
        }
    }
}
