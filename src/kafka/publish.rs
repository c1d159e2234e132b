//! `meterflow generate --kafka-brokers`: generated messages published to a topic, so a user
//! can load-test a running service.
//!
//! Each message is keyed by its gateway (first device id / devices per message) and the
//! partitioner is Kafka's own (murmur2), so a gateway's messages stay in one partition and in
//! order, as real meters' would. A message without a readable device id has no key and goes
//! to one fixed partition, so one seed always gives the same topic.

use std::io::{self, Write};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::ClientConfig;

/// How long the last messages may take to be delivered before `finish` gives up.
pub(crate) const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

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
            // Keyless messages to a fixed partition, not a random one (`murmur2_random`).
            .set("partitioner", "murmur2")
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
pub(crate) fn send_waiting<
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

#[cfg(test)]
mod tests {
    use super::*;

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
