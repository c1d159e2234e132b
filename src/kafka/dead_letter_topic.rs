//! Dead letters to a Kafka topic (`run --dead-letter-topic`): every letter acknowledged
//! before its epoch's checkpoint, and cut to fit what the topic takes rather than refused.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

use crate::kafka::publish::{send_waiting, FLUSH_TIMEOUT};
use crate::sink::dead_letter::{DeadLetter, LetterTooLarge, Origin};

/// Dead letters to a Kafka topic instead of `_dead_letter/` files (`run --dead-letter-topic`).
///
/// Published after an epoch's files and before its checkpoint, so none is lost; a replayed
/// epoch publishes its letters again (at least once: the key `topic/partition/offset/index`
/// of the refused record identifies duplicates). A letter larger than the topic takes is cut
/// to fit and says so (contract §2), never dropped.
pub struct DeadLetterTopic {
    producer: BaseProducer<Deliveries>,
    topic: String,
    /// The largest record the topic and the producer take, in bytes; halved when the
    /// brokers refuse a letter as too large all the same (their limit was not known).
    max_record: AtomicUsize,
    /// Set once the brokers refused a letter as too large: each letter is flushed alone.
    one_per_request: AtomicBool,
}

/// Kafka's own default for a topic's `max.message.bytes`.
const KAFKA_DEFAULT_MAX_MESSAGE: usize = 1_048_588;

/// librdkafka's default `message.max.bytes`.
const PRODUCER_DEFAULT_MAX_MESSAGE: usize = 1_000_000;

/// A record's framing inside its batch (batch header 61 bytes, the record's varints and
/// attributes at most ~30) besides key and value, rounded up.
const RECORD_FRAMING: usize = 128;

/// The smallest record limit a letter is cut to: room for its fixed fields, its key and a
/// start of its record. A topic that takes less is refused at start.
const MIN_RECORD: usize = 1024;

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
        if max_record < MIN_RECORD {
            return Err(KafkaError::ClientCreation(format!(
                "the dead-letter topic {topic} takes records of at most {max_record} bytes \
                 (max.message.bytes, message.max.bytes); a dead letter needs {MIN_RECORD}"
            )));
        }
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
            max_record: AtomicUsize::new(max_record),
            one_per_request: AtomicBool::new(false),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends the letters and waits until the brokers have acknowledged them all; the first
    /// refusal is the error. A refusal as too large (the topic takes less than its
    /// configuration could be read to say) sends them all again cut to half the size, down to
    /// [`MIN_RECORD`], and from then on one letter per request (the producer's batches were
    /// sized to the assumed limit): letters sent twice carry the same key, as a replay's do.
    pub fn publish(&self, letters: &[DeadLetter]) -> Result<(), PublishError> {
        loop {
            let limit = self.max_record.load(Ordering::Relaxed);
            match self.publish_within(letters, limit) {
                Err(PublishError::Kafka(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageSizeTooLarge,
                ))) if limit > MIN_RECORD => {
                    let smaller = (limit / 2).max(MIN_RECORD);
                    tracing::warn!(
                        topic = %self.topic,
                        refused = limit,
                        limit = smaller,
                        "the dead-letter topic refused a letter as too large; sending the \
                         epoch's letters again, cut to a smaller limit, one per request"
                    );
                    self.max_record.store(smaller, Ordering::Relaxed);
                    self.one_per_request.store(true, Ordering::Relaxed);
                }
                result => return result,
            }
        }
    }

    /// [`Self::publish`] with letters cut to records of at most `max_record` bytes.
    fn publish_within(
        &self,
        letters: &[DeadLetter],
        max_record: usize,
    ) -> Result<(), PublishError> {
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
        let one_per_request = self.one_per_request.load(Ordering::Relaxed);
        for letter in letters {
            let key = letter_key(letter);
            let room = max_record.saturating_sub(RECORD_FRAMING + key.len());
            let payload = letter.json_within(room)?;
            send_waiting(
                &self.producer,
                BaseRecord::to(&self.topic).key(&key).payload(&payload),
            )?;
            if one_per_request {
                self.producer.flush(FLUSH_TIMEOUT)?;
            }
        }
        self.producer.flush(FLUSH_TIMEOUT)?;
        failed().map_or(Ok(()), |error| Err(error.into()))
    }
}

/// Why letters could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Cutting its record cannot make this letter fit (a smaller limit would not either).
    #[error(transparent)]
    Cut(#[from] LetterTooLarge),
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

    /// A producer's settings for the mock cluster at `bootstrap`.
    fn producer_config(bootstrap: &str) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", bootstrap)
            .set("message.timeout.ms", "5000");
        config
    }

    #[test]
    fn a_letter_the_broker_refuses_fails_the_publish() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("letters", 1, 1).unwrap();
        let config = producer_config(&cluster.bootstrap_servers());
        let topic = DeadLetterTopic::new(config, "letters", Duration::from_secs(5)).unwrap();
        let letter = invalid_json("{not json");
        topic.publish(std::slice::from_ref(&letter)).unwrap();
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 8],
        );
        let refused = topic.publish(std::slice::from_ref(&letter));
        assert!(refused.is_err(), "a refused letter fails the publish");
    }

    /// Up to `count` letters of the `letters` topic (20 s at most, or until none came for
    /// 3 s after the first), each checked to be at most `max_bytes` of key and value.
    fn read_letters(bootstrap: &str, count: usize, max_bytes: usize) -> Vec<serde_json::Value> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Message;
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "reader")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&["letters"]).unwrap();
        let mut received = Vec::new();
        let started = std::time::Instant::now();
        let mut last = started;
        while received.len() < count
            && started.elapsed() < Duration::from_secs(20)
            && (received.is_empty() || last.elapsed() < Duration::from_secs(3))
        {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.unwrap();
                last = std::time::Instant::now();
                assert!(message.payload_len() + message.key_len() <= max_bytes);
                received.push(
                    serde_json::from_slice::<serde_json::Value>(message.payload().unwrap())
                        .unwrap(),
                );
            }
        }
        received
    }

    /// `letter` holds a prefix of `original` with its size and SHA-256.
    fn assert_cut_from(letter: &serde_json::Value, original: &str) {
        use sha2::Digest;
        assert!(original.starts_with(letter["record"].as_str().unwrap()));
        assert!(letter["record"].as_str().unwrap().len() < original.len());
        assert_eq!(letter["truncated"]["bytes"], original.len());
        let digest: String = sha2::Sha256::digest(original.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(letter["truncated"]["sha256"], digest.as_str());
    }

    fn invalid_json(record: &str) -> DeadLetter {
        DeadLetter {
            reason: Reason::InvalidJson,
            detail: Detail::Text("EOF while parsing a list".into()),
            source: Origin::Kafka {
                topic: "readings".into(),
                partition: 0,
                offset: 7,
            },
            index: None,
            record: RecordText::Owned(record.into()),
        }
    }

    #[test]
    fn a_letter_refused_as_too_large_is_sent_again_cut_never_dropped() {
        // The mock brokers do not answer DescribeConfigs: the topic's limit is assumed, and
        // the brokers refuse the first letter as larger than the topic takes.
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("letters", 1, 1).unwrap();
        let config = producer_config(&cluster.bootstrap_servers());
        let topic = DeadLetterTopic::new(config, "letters", Duration::from_secs(2)).unwrap();
        let assumed = topic.max_record.load(Ordering::Relaxed);
        let big = "x".repeat(assumed * 3 / 4);
        cluster.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
        );
        let mut letters = vec![invalid_json(&big)];
        letters.extend((0..20).map(|i| invalid_json(&format!("{{\"small\": {i}"))));
        topic.publish(&letters).unwrap();
        // Letters the brokers took before the refusal may arrive twice; each arrives.
        let received = read_letters(&cluster.bootstrap_servers(), usize::MAX, assumed / 2);
        let cut: Vec<_> = received
            .iter()
            .filter(|l| l.get("truncated").is_some())
            .collect();
        assert!(!cut.is_empty(), "the big letter arrives");
        for letter in cut {
            assert_cut_from(letter, &big);
        }
        for i in 0..20 {
            let record = format!("{{\"small\": {i}");
            assert!(
                received.iter().any(|l| l["record"] == record.as_str()),
                "letter {i}"
            );
        }
    }

    #[test]
    fn a_topic_too_small_for_any_letter_is_refused_at_start() {
        let cluster = MockCluster::new(1).unwrap();
        let mut config = producer_config(&cluster.bootstrap_servers());
        config.set("message.max.bytes", "1000");
        let error = DeadLetterTopic::new(config, "letters", Duration::from_secs(2))
            .err()
            .expect("refused");
        assert!(error.to_string().contains("at most 1000 bytes"), "{error}");
    }

    #[test]
    fn a_letter_larger_than_a_record_may_be_arrives_cut_with_its_size_and_digest() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("letters", 1, 1).unwrap();
        let mut config = producer_config(&cluster.bootstrap_servers());
        config.set("message.max.bytes", "2000");
        let topic = DeadLetterTopic::new(config, "letters", Duration::from_secs(2)).unwrap();
        let big = format!("{{\"measurements\": [{}", "\"x\",".repeat(3000));
        topic
            .publish(&[invalid_json(&big), invalid_json("{}")])
            .unwrap();

        let received = read_letters(&cluster.bootstrap_servers(), 2, 2000 - RECORD_FRAMING);
        assert_eq!(received.len(), 2, "both letters arrive");
        assert_cut_from(&received[0], &big);
        assert_eq!(received[1]["record"], "{}");
        assert!(
            received[1].get("truncated").is_none(),
            "a letter that fits is whole"
        );
    }
}
