//! Producing test streams the way real producers do: batched and compressed, with record
//! batches of a known size so a test can tell where a restart resumed inside one.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;

/// A producer with librdkafka's normal batching, `compression` (`none`, `gzip`, `snappy`,
/// `lz4`, `zstd`) and idempotence (many sends in flight, still in order per partition).
/// `linger.ms` is long so that a batch leaves only when [`produce_batched`] flushes it.
pub fn batching_producer(bootstrap: &str, compression: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", compression)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "1000")
        .create()
        .expect("producer")
}

/// Largest uncompressed record batch librdkafka sends whole (`message.max.bytes` is 1 MB).
const BATCH_BYTES: usize = 900_000;

/// Sends `records` (partition, payload) to `topic` in rounds: each round queues the next
/// `batch` records of every partition and flushes, so each partition's log holds record
/// batches of exactly `batch` messages (the last one fewer), in the given order. Panics
/// unless every record is delivered, or when `batch` records would not fit in one batch.
pub async fn produce_batched<'a>(
    producer: &FutureProducer,
    topic: &str,
    records: impl IntoIterator<Item = (i32, &'a str)>,
    batch: usize,
) {
    let mut by_partition: BTreeMap<i32, Vec<&str>> = BTreeMap::new();
    for (partition, payload) in records {
        by_partition.entry(partition).or_default().push(payload);
    }
    let mut chunks: Vec<_> = by_partition
        .iter()
        .map(|(partition, payloads)| (*partition, payloads.chunks(batch)))
        .collect();
    loop {
        let mut sent = Vec::new();
        for (partition, partition_chunks) in &mut chunks {
            let Some(chunk) = partition_chunks.next() else {
                continue;
            };
            let bytes: usize = chunk.iter().map(|payload| payload.len()).sum();
            assert!(
                bytes <= BATCH_BYTES,
                "{batch} records of {bytes} bytes do not fit in one record batch"
            );
            for payload in chunk {
                let record = FutureRecord::<(), str>::to(topic)
                    .partition(*partition)
                    .payload(*payload);
                let delivery = producer
                    .send_result(record)
                    .map_err(|(error, _)| error)
                    .expect("queued");
                sent.push(delivery);
            }
        }
        if sent.is_empty() {
            return;
        }
        producer.flush(Duration::from_secs(30)).expect("flushed");
        for delivery in sent {
            delivery
                .await
                .expect("delivery report")
                .map_err(|(error, _)| error)
                .expect("delivered");
        }
    }
}
