//! Smoke test of the Apache Kafka broker the integration tests use: produce, consume with a
//! consumer group, commit an offset, and a second consumer of the group resumes exactly there;
//! a consumer assigned inside a record batch reads every later message.

mod support;

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset};
use support::{unique_name, KafkaBroker};

const MESSAGES: i64 = 100;
const FIRST_CONSUMER_TAKES: i64 = 40;

fn config(broker: &KafkaBroker) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &broker.bootstrap);
    config
}

fn consumer(broker: &KafkaBroker, group: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = config(broker)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        // A consumer that goes away hands its partitions over quickly.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    consumer
}

/// A new single-partition topic named after `prefix`.
async fn create_topic(broker: &KafkaBroker, prefix: &str) -> String {
    let topic = unique_name(prefix);
    let admin: AdminClient<DefaultClientContext> = config(broker).create().expect("admin");
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics request");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    topic
}

/// The next message's (offset, payload), failing after 30 s instead of hanging.
async fn next(consumer: &StreamConsumer) -> (i64, String) {
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a message within 30 s")
        .expect("consume");
    let payload = String::from_utf8(message.payload().unwrap_or_default().to_vec()).unwrap();
    (message.offset(), payload)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_group_resumes_from_its_committed_offset() {
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    let topic = create_topic(&broker, "smoke").await;

    let producer: FutureProducer = config(&broker)
        .set("message.timeout.ms", "30000")
        .create()
        .expect("producer");
    for i in 0..MESSAGES {
        let payload = format!("message-{i}");
        let record = FutureRecord::to(&topic).key("meter").payload(&payload);
        producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(error, _)| error)
            .expect("delivered");
    }

    let group = unique_name("group");
    let first = consumer(&broker, &group, &topic);
    for i in 0..FIRST_CONSUMER_TAKES {
        assert_eq!(next(&first).await, (i, format!("message-{i}")));
    }
    // The committed position is the next offset to read.
    let mut position = rdkafka::TopicPartitionList::new();
    position
        .add_partition_offset(&topic, 0, Offset::Offset(FIRST_CONSUMER_TAKES))
        .unwrap();
    first.commit(&position, CommitMode::Sync).expect("commit");
    let committed = first
        .committed(Duration::from_secs(10))
        .expect("committed offsets");
    assert_eq!(
        committed.find_partition(&topic, 0).map(|p| p.offset()),
        Some(Offset::Offset(FIRST_CONSUMER_TAKES))
    );
    leave(first);

    let second = consumer(&broker, &group, &topic);
    for i in FIRST_CONSUMER_TAKES..MESSAGES {
        assert_eq!(next(&second).await, (i, format!("message-{i}")));
    }
    leave(second);
}

/// Drops a consumer on a thread of its own: rdkafka's drop closes the consumer and polls until
/// the group has let it go, which need not hold up the test.
fn leave(consumer: StreamConsumer) {
    std::thread::spawn(move || drop(consumer));
}

/// A restarted service seeks into the middle of a partition: every message from the seek
/// offset on must come back, in order and without gaps, also when the offset is inside a
/// compressed record batch (the broker returns the whole batch; the client skips the records
/// before the offset).
#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_assigned_at_any_offset_reads_every_later_message() {
    use rdkafka::consumer::BaseConsumer;
    use support::produce::{batching_producer, produce_batched};
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    let topic = create_topic(&broker, "seek").await;
    let payloads: Vec<String> = (0..300)
        .map(|i| format!("message-{i}-{}", "x".repeat(500)))
        .collect();
    let producer = batching_producer(&broker.bootstrap, "lz4");
    produce_batched(
        &producer,
        &topic,
        payloads.iter().map(|p| (0, p.as_str())),
        50,
    )
    .await;

    // Batches start at multiples of 50: every start but 0 and 150 is inside one.
    for start in [0i64, 2, 11, 57, 150, 298] {
        let consumer: BaseConsumer = config(&broker)
            .set("group.id", unique_name("seek-group"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, Offset::Offset(start))
            .unwrap();
        consumer.assign(&list).unwrap();
        let mut offsets = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while offsets.last() != Some(&299) && std::time::Instant::now() < deadline {
            if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                let message = message.expect("consume");
                offsets.push(message.offset());
            }
        }
        let expected: Vec<i64> = (start..300).collect();
        assert_eq!(offsets, expected, "reading from offset {start}");
    }
}
