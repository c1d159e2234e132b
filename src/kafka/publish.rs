//! `meterflow generate --kafka-brokers`: generated messages published to a topic, so a user
//! can load-test a running service.
//!
//! Each message is keyed by its gateway (first device id / devices per message) and the
//! partitioner is Kafka's own (murmur2), so a gateway's messages stay in one partition and in
//! order, as real meters' would.

use std::io::{self, Write};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use std::sync::Mutex;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

use crate::sink::dead_letter::{DeadLetter, Origin};

/// How long the last messages may take to be delivered before `finish` gives up.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// A `Write` that sends every complete line as one Kafka message.
pub struct KafkaLines {
    producer: BaseProducer,
    topic: String,
    devices_per_message: NonZeroU32,
    /// Messages per second, if limited.
    rate: Option<f64>,
    started: Instant,
    sent: u64,
    pending: Vec<u8>,
}

impl KafkaLines {
    /// A producer for `topic` with `config` (brokers, security, extra options already set).
    pub fn new(
        mut config: ClientConfig,
        topic: &str,
        devices_per_message: NonZeroU32,
        rate: Option<f64>,
    ) -> Result<Self, KafkaError> {
        let producer = config
            // Java clients' partitioner: the same key lands in the same partition for both.
            .set("partitioner", "murmur2_random")
            .set("enable.idempotence", "true")
            .create()?;
        Ok(KafkaLines {
            producer,
            topic: topic.to_string(),
            devices_per_message,
            rate: rate.filter(|r| *r > 0.0),
            started: Instant::now(),
            sent: 0,
            pending: Vec::new(),
        })
    }

    /// Messages handed to the producer so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Waits until every message is acknowledged by the brokers.
    pub fn finish(mut self) -> io::Result<u64> {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            self.send(&line)?;
        }
        self.producer
            .flush(FLUSH_TIMEOUT)
            .map_err(io::Error::other)?;
        Ok(self.sent)
    }

    fn send(&mut self, line: &[u8]) -> io::Result<()> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        if let Some(rate) = self.rate {
            let due = self.started + Duration::from_secs_f64(self.sent as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                // Serve delivery reports while waiting.
                self.producer.poll(wait);
            }
        }
        let key = gateway_key(line, self.devices_per_message);
        let mut record = BaseRecord::<String, [u8]>::to(&self.topic).payload(line);
        if let Some(key) = &key {
            record = record.key(key);
        }
        send_waiting(&self.producer, record).map_err(io::Error::other)?;
        self.producer.poll(Duration::ZERO);
        self.sent += 1;
        Ok(())
    }
}

impl Write for KafkaLines {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut rest = bytes;
        while let Some(end) = memchr::memchr(b'\n', rest) {
            if self.pending.is_empty() {
                self.send(&rest[..end])?;
            } else {
                self.pending.extend_from_slice(&rest[..end]);
                let line = std::mem::take(&mut self.pending);
                self.send(&line)?;
            }
            rest = &rest[end + 1..];
        }
        self.pending.extend_from_slice(rest);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Sends `record`, serving delivery reports while the producer's queue is full.
fn send_waiting<
    C: ProducerContext,
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
>(
    producer: &BaseProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> Result<(), KafkaError>
where
    C::DeliveryOpaque: Default,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(50));
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// The gateway of a message: its first integer `device_id` divided by the devices per
/// message; `None` (any partition) for a message without one, such as a faulty line.
fn gateway_key(line: &[u8], devices_per_message: NonZeroU32) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        measurements: Vec<ProbeReading>,
    }
    #[derive(serde::Deserialize)]
    struct ProbeReading {
        #[serde(default)]
        device_id: serde_json::Value,
    }
    let probe: Probe = serde_json::from_slice(line).ok()?;
    let id = probe
        .measurements
        .iter()
        .find_map(|r| r.device_id.as_i64())?;
    Some((id / i64::from(devices_per_message.get())).to_string())
}

/// Writes to a file, to Kafka, or both.
pub struct Tee<'a> {
    pub file: Option<&'a mut dyn Write>,
    pub kafka: Option<&'a mut KafkaLines>,
}

impl Write for Tee<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if let Some(file) = self.file.as_mut() {
            file.write_all(bytes)?;
        }
        if let Some(kafka) = self.kafka.as_mut() {
            kafka.write_all(bytes)?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(file) = self.file.as_mut() {
            file.flush()?;
        }
        Ok(())
    }
}

/// Dead letters to a Kafka topic instead of `_dead_letter/` files (`run --dead-letter-topic`).
///
/// Published after an epoch's files and before its checkpoint, so none is lost; a replayed
/// epoch publishes its letters again (at least once: the key `topic/partition/offset/index`
/// of the refused record identifies duplicates). A letter larger than the topic takes is cut
/// to fit and says so (contract §2), never dropped.
pub struct DeadLetterTopic {
    producer: BaseProducer<Deliveries>,
    topic: String,
    /// The largest record the topic and the producer take, in bytes.
    max_record: usize,
}

/// Kafka's own default for a topic's `max.message.bytes`.
const KAFKA_DEFAULT_MAX_MESSAGE: usize = 1_048_588;

/// librdkafka's default `message.max.bytes`.
const PRODUCER_DEFAULT_MAX_MESSAGE: usize = 1_000_000;

/// A record's framing inside its batch (batch header 61 bytes, the record's varints and
/// attributes at most ~30) besides key and value, rounded up.
const RECORD_FRAMING: usize = 128;

/// The delivery reports of the letters in flight: a letter the broker refused (too large, not
/// authorised, topic gone) must stop its epoch's checkpoint, not vanish.
#[derive(Default)]
struct Deliveries {
    failed: Mutex<Option<KafkaError>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((error, _)) = result {
            let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            failed.get_or_insert_with(|| error.clone());
        }
    }
}

impl DeadLetterTopic {
    /// A producer for `topic`, its letters sized to the topic's `max.message.bytes` (asked
    /// of the brokers within `timeout`; Kafka's default when they do not say) and the
    /// producer's `message.max.bytes`.
    pub fn new(
        mut config: ClientConfig,
        topic: &str,
        timeout: Duration,
    ) -> Result<Self, KafkaError> {
        let producer_max = config
            .get("message.max.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(PRODUCER_DEFAULT_MAX_MESSAGE);
        let topic_max = topic_max_message_bytes(&config, topic, timeout);
        let max_record = producer_max.min(topic_max);
        let producer = config
            .set("enable.idempotence", "true")
            // A batch never larger than one record the topic takes: a batch of small letters
            // is refused as a whole otherwise.
            .set("batch.size", max_record.to_string())
            .create_with_context(Deliveries::default())?;
        tracing::info!(topic, max_record, "dead letters go to a Kafka topic");
        Ok(DeadLetterTopic {
            producer,
            topic: topic.to_string(),
            max_record,
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends the letters and waits until the brokers have acknowledged them all; the first
    /// refusal is the error.
    pub fn publish(&self, letters: &[DeadLetter]) -> Result<(), KafkaError> {
        let failed = || {
            self.producer
                .context()
                .failed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
        };
        // A refusal reported after the last publish gave up belongs to that one.
        let _ = failed();
        for letter in letters {
            let key = letter_key(letter);
            let room = self.max_record.saturating_sub(RECORD_FRAMING + key.len());
            let payload = letter.json_within(room).map_err(|_| {
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
            })?;
            send_waiting(
                &self.producer,
                BaseRecord::to(&self.topic).key(&key).payload(&payload),
            )?;
        }
        self.producer.flush(FLUSH_TIMEOUT)?;
        failed().map_or(Ok(()), Err)
    }
}

/// `topic/partition/offset/index` (index empty for a whole message) or `file:line`: the
/// refused record's place, which identifies a letter sent again by a replay.
fn letter_key(letter: &DeadLetter) -> String {
    match &letter.source {
        Origin::Kafka {
            topic,
            partition,
            offset,
        } => format!(
            "{topic}/{partition}/{offset}/{}",
            letter.index.map_or(String::new(), |i| i.to_string())
        ),
        Origin::File { file, line } => format!("{file}:{line}"),
    }
}

/// The topic's `max.message.bytes`; Kafka's default when the brokers do not answer
/// DescribeConfigs (not authorised, not implemented), with a warning.
fn topic_max_message_bytes(config: &ClientConfig, topic: &str, timeout: Duration) -> usize {
    let asked = config
        .create::<AdminClient<DefaultClientContext>>()
        .map_err(|e| e.to_string())
        .and_then(|admin| {
            let options = AdminOptions::new().request_timeout(Some(timeout));
            let answer = futures::executor::block_on(
                admin.describe_configs([&ResourceSpecifier::Topic(topic)], &options),
            );
            let resource = answer
                .map_err(|e| e.to_string())?
                .pop()
                .ok_or("no answer")?
                .map_err(|code| code.to_string())?;
            let value = resource
                .get("max.message.bytes")
                .and_then(|entry| entry.value.as_deref())
                .ok_or("max.message.bytes not set")?;
            value.parse::<usize>().map_err(|e| e.to_string())
        });
    asked.unwrap_or_else(|why| {
        tracing::warn!(
            topic,
            why,
            assumed = KAFKA_DEFAULT_MAX_MESSAGE,
            "cannot read the dead-letter topic's max.message.bytes; assuming Kafka's default"
        );
        KAFKA_DEFAULT_MAX_MESSAGE
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reading::reason::Reason;
    use crate::sink::dead_letter::{Detail, RecordText};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    #[test]
    fn a_letter_the_broker_refuses_fails_the_publish() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("letters", 1, 1).unwrap();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("message.timeout.ms", "5000");
        let topic = DeadLetterTopic::new(config, "letters", Duration::from_secs(5)).unwrap();
        let letter = DeadLetter {
            reason: Reason::InvalidJson,
            detail: Detail::Text("expected value".into()),
            source: Origin::Kafka {
                topic: "readings".into(),
                partition: 0,
                offset: 7,
            },
            index: None,
            record: RecordText::Owned("{not json".into()),
        };
        topic.publish(std::slice::from_ref(&letter)).unwrap();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 8],
        );
        let refused = topic.publish(std::slice::from_ref(&letter));
        assert!(refused.is_err(), "a refused letter fails the publish");
    }

    #[test]
    fn a_letter_larger_than_a_record_may_be_arrives_cut_with_its_size_and_digest() {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message;
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("letters", 1, 1).unwrap();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("message.timeout.ms", "5000")
            .set("message.max.bytes", "2000");
        let topic = DeadLetterTopic::new(config, "letters", Duration::from_secs(2)).unwrap();
        let big = format!("{{\"measurements\": [{}", "\"x\",".repeat(3000));
        let letter = |record: &str| DeadLetter {
            reason: Reason::InvalidJson,
            detail: Detail::Text("EOF while parsing a list".into()),
            source: Origin::Kafka {
                topic: "readings".into(),
                partition: 0,
                offset: 7,
            },
            index: None,
            record: RecordText::Owned(record.into()),
        };
        topic.publish(&[letter(&big), letter("{}")]).unwrap();

        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "reader")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["letters"]).unwrap();
        let mut received = Vec::new();
        let started = std::time::Instant::now();
        while received.len() < 2 && started.elapsed() < Duration::from_secs(20) {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.unwrap();
                assert!(message.payload_len() + message.key_len() <= 2000 - RECORD_FRAMING);
                received.push(
                    serde_json::from_slice::<serde_json::Value>(message.payload().unwrap())
                        .unwrap(),
                );
            }
        }
        assert_eq!(received.len(), 2, "both letters arrive");
        let cut = &received[0];
        assert!(big.starts_with(cut["record"].as_str().unwrap()));
        assert_eq!(cut["truncated"]["bytes"], big.len());
        use sha2::Digest;
        let digest: String = sha2::Sha256::digest(big.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(cut["truncated"]["sha256"], digest.as_str());
        assert_eq!(received[1]["record"], "{}");
        assert!(
            received[1].get("truncated").is_none(),
            "a letter that fits is whole"
        );
    }

    #[test]
    fn a_message_is_keyed_by_its_gateway() {
        let line = br#"{"measurements":[{"device_id":"x"},{"device_id":1000385,"time":"t"}]}"#;
        assert_eq!(
            gateway_key(line, NonZeroU32::new(8).unwrap()).as_deref(),
            Some("125048")
        );
        assert_eq!(gateway_key(b"{not json", NonZeroU32::new(8).unwrap()), None);
        assert_eq!(
            gateway_key(br#"{"measurements":[]}"#, NonZeroU32::new(8).unwrap()),
            None
        );
    }
}
