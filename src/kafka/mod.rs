//! Kafka clients from meterflow's settings: brokers, TLS and SASL (SCRAM or PLAIN, as AWS MSK
//! uses), with secrets only from the environment.

pub mod dead_letter_topic;
pub mod publish;
pub mod source;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext};

use crate::run::telemetry::Metrics;

/// The service's consumer: its statistics callback turns librdkafka's view of each
/// partition's end offset into the consumer-lag metric.
pub type ServiceConsumer = BaseConsumer<LagContext>;

/// Consumer lag per partition: the broker's end offset (from librdkafka statistics, no extra
/// requests) minus the offset of the last committed checkpoint.
pub struct LagContext {
    metrics: Metrics,
    partitions: Mutex<HashMap<(String, i32), Offsets>>,
    /// The connection problems seen since the last metadata answer: librdkafka retries
    /// every one for ever, and a metadata timeout alone does not say why. Read only while
    /// starting up (metadata waits), and cleared by an answer, so an old one cannot end a run.
    connection: Mutex<ConnectionErrors>,
}

/// What went wrong connecting to the brokers, by how it ends a start-up wait.
#[derive(Default, Clone)]
struct ConnectionErrors {
    /// A refusal no retry can mend (an untrusted certificate, rejected credentials): the
    /// wait ends at once.
    refusal: Option<String>,
    /// The last other error (a reset handshake, a refused or timed-out connection): the
    /// broker may be starting, so the wait goes on and a timeout quotes it.
    last: Option<String>,
}

/// A partition's committed next offset and its last known end offset.
type Offsets = (Option<i64>, Option<i64>);

impl LagContext {
    pub fn new(metrics: Metrics) -> Self {
        LagContext {
            metrics,
            partitions: Mutex::new(HashMap::new()),
            connection: Mutex::new(ConnectionErrors::default()),
        }
    }

    fn connection(&self) -> std::sync::MutexGuard<'_, ConnectionErrors> {
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a committed offset and updates that partition's lag.
    pub fn committed(&self, topic: &str, partition: i32, next_offset: i64) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let entry = partitions
            .entry((topic.to_string(), partition))
            .or_default();
        entry.0 = Some(next_offset);
        self.publish(topic, partition, *entry);
    }

    fn publish(&self, topic: &str, partition: i32, (committed, end): Offsets) {
        if let (Some(committed), Some(end)) = (committed, end) {
            self.metrics.observe_lag(topic, partition, end - committed);
        }
    }
}

impl ClientContext for LagContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::error!(target: "librdkafka", "librdkafka: {error}: {reason}");
        let code = error.rdkafka_error_code();
        let mut connection = self.connection();
        if is_permanent_refusal(code, reason) {
            connection.refusal = Some(reason.to_string());
        } else if code != Some(RDKafkaErrorCode::AllBrokersDown) {
            // "1/1 brokers are down" follows every failed attempt and says nothing of why.
            connection.last = Some(reason.to_string());
        }
    }

    fn stats(&self, statistics: Statistics) {
        let mut partitions = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        for (name, topic) in &statistics.topics {
            // librdkafka reports an unknown end offset as -1001.
            for (&id, partition) in topic.partitions.iter().filter(|(_, p)| p.hi_offset >= 0) {
                let entry = partitions.entry((name.clone(), id)).or_default();
                entry.1 = Some(partition.hi_offset);
                self.publish(name, id, *entry);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

/// A connection error that only a change of settings (or of the broker's) can mend: the
/// broker's certificate failed verification (untrusted CA, wrong host name, not valid at
/// this time), the broker rejected the SASL credentials, or it does not offer the SASL
/// mechanism. Everything else, a handshake the peer hung up on included (a broker still
/// starting, a load balancer without a ready backend), may pass and is waited out.
fn is_permanent_refusal(code: Option<RDKafkaErrorCode>, reason: &str) -> bool {
    let reason = reason.to_ascii_lowercase();
    match code {
        Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::BrokerTransportFailure) => {
            reason.contains("certificate verify failed")
        }
        Some(RDKafkaErrorCode::Authentication) => {
            reason.contains("authentication failed")
                || reason.contains("unsupported sasl mechanism")
        }
        _ => false,
    }
}

/// Errors setting up Kafka clients or finding topics; all operational.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaSetupError {
    #[error("cannot create a Kafka client for {brokers}")]
    Client {
        brokers: String,
        #[source]
        source: MaskedError,
    },
    #[error("cannot read topic metadata from {brokers} (are the brokers reachable?)")]
    Metadata {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot read topic metadata from {brokers}; the last connection error: {reason}")]
    Unreachable { brokers: String, reason: String },
    #[error("the brokers at {brokers} refused the connection: {reason}")]
    Refused { brokers: String, reason: String },
    #[error("topic {topic:?} does not exist on {brokers}")]
    MissingTopic { topic: String, brokers: String },
    #[error("SASL needs {variable} in the environment")]
    MissingSecret { variable: &'static str },
}

/// A client's error with every secret value replaced by `***`: librdkafka quotes a refused
/// option's value in its message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MaskedError(String);

/// `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecurityProtocol {
    Plaintext,
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

impl SecurityProtocol {
    fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SaslMechanism {
    #[value(name = "SCRAM-SHA-512")]
    ScramSha512,
    #[value(name = "SCRAM-SHA-256")]
    ScramSha256,
    #[value(name = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    fn name(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

/// Environment variables holding the SASL credentials.
pub const SASL_USERNAME_VAR: &str = "MF_KAFKA_SASL_USERNAME";
pub const SASL_PASSWORD_VAR: &str = "MF_KAFKA_SASL_PASSWORD";

/// Where the brokers are and how to talk to them.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    pub brokers: String,
    pub security_protocol: SecurityProtocol,
    pub sasl_mechanism: SaslMechanism,
    /// CA bundle for TLS; the system's when unset.
    pub ca_file: Option<PathBuf>,
    /// Extra librdkafka settings, applied last (they may override meterflow's).
    pub options: Vec<(String, String)>,
}

impl fmt::Display for KafkaSettings {
    /// The settings without secrets, for the startup log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "brokers={} security.protocol={}",
            self.brokers,
            self.security_protocol.name()
        )?;
        if self.security_protocol.uses_sasl() {
            write!(
                f,
                " sasl.mechanism={} sasl.username=${SASL_USERNAME_VAR}",
                self.sasl_mechanism.name()
            )?;
        }
        if let Some(ca) = &self.ca_file {
            write!(f, " ssl.ca.location={}", ca.display())?;
        }
        for (key, value) in &self.options {
            let shown = if SHOWN_OPTIONS.contains(&key.as_str()) {
                value
            } else {
                "***"
            };
            write!(f, " {key}={shown}")?;
        }
        Ok(())
    }
}

/// Debug output (errors, `{:?}` of the run's options) masks as the start-up log does.
impl fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KafkaSettings({self})")
    }
}

/// `--kafka-option` keys whose values are shown in the start-up log. Every other value is
/// masked: librdkafka has secrets under many names (`ssl.key.pem`, `ssl.keystore.password`,
/// `sasl.oauthbearer.config`, …), so only keys known to hold no secret are shown.
const SHOWN_OPTIONS: &[&str] = &[
    "acks",
    "api.version.request",
    "auto.offset.reset",
    "batch.size",
    "broker.address.family",
    "client.id",
    "client.rack",
    "compression.type",
    "debug",
    "enable.ssl.certificate.verification",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "isolation.level",
    "linger.ms",
    "max.partition.fetch.bytes",
    "message.max.bytes",
    "metadata.max.age.ms",
    "queued.max.messages.kbytes",
    "queued.min.messages",
    "reconnect.backoff.max.ms",
    "reconnect.backoff.ms",
    "retry.backoff.ms",
    "sasl.kerberos.service.name",
    "sasl.oauthbearer.method",
    "socket.connection.setup.timeout.ms",
    "socket.keepalive.enable",
    "socket.timeout.ms",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.endpoint.identification.algorithm",
    "ssl.key.location",
    "statistics.interval.ms",
    "topic.metadata.refresh.interval.ms",
];

impl KafkaSettings {
    /// A client configuration with the connection and security settings.
    pub fn client_config(&self) -> Result<ClientConfig, KafkaSetupError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("security.protocol", self.security_protocol.name());
        if self.security_protocol.uses_sasl() {
            config
                .set("sasl.mechanism", self.sasl_mechanism.name())
                .set("sasl.username", secret(SASL_USERNAME_VAR)?)
                .set("sasl.password", secret(SASL_PASSWORD_VAR)?);
        }
        if let Some(ca) = &self.ca_file {
            config.set("ssl.ca.location", ca.display().to_string());
        }
        for (key, value) in &self.options {
            config.set(key, value);
        }
        Ok(config)
    }

    /// A client creation error, its text masked like the start-up log.
    pub fn client_error(&self, source: KafkaError) -> KafkaSetupError {
        KafkaSetupError::Client {
            brokers: self.brokers.clone(),
            source: MaskedError(self.mask(&source.to_string())),
        }
    }

    /// `text` with every secret value (the SASL password, options not known to be harmless)
    /// replaced by `***`, as in the start-up log.
    fn mask(&self, text: &str) -> String {
        let mut text = text.to_string();
        let password = std::env::var(SASL_PASSWORD_VAR).ok();
        let secrets = self
            .options
            .iter()
            .filter(|(key, _)| !SHOWN_OPTIONS.contains(&key.as_str()))
            .map(|(_, value)| value.as_str())
            .chain(password.as_deref());
        for secret in secrets.filter(|s| !s.is_empty()) {
            text = text.replace(secret, "***");
        }
        text
    }

    /// A consumer that reads assigned partitions from explicit offsets and commits them to
    /// `group` for lag monitoring only (the checkpoint is the source of truth).
    pub fn consumer(
        &self,
        group: &str,
        metrics: Metrics,
    ) -> Result<ServiceConsumer, KafkaSetupError> {
        self.client_config()?
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // Never move a read position silently: an offset outside the log is reported
            // (Polled::OutOfRange) and the service fails closed.
            .set("auto.offset.reset", "error")
            // Statistics carry each partition's end offset, for the lag metric.
            .set("statistics.interval.ms", "1000")
            .create_with_context(LagContext::new(metrics))
            .map_err(|e| self.client_error(e))
    }

    /// Every partition of `topics`, sorted; an error names a topic that does not exist.
    pub fn partitions(
        &self,
        consumer: &ServiceConsumer,
        topics: &[String],
        timeout: Duration,
    ) -> Result<Vec<(String, i32)>, KafkaSetupError> {
        let mut partitions = Vec::new();
        for topic in topics {
            let metadata = self.metadata(consumer, topic, timeout)?;
            let found = metadata
                .topics()
                .iter()
                .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
            let Some(found) = found else {
                return Err(KafkaSetupError::MissingTopic {
                    topic: topic.clone(),
                    brokers: self.brokers.clone(),
                });
            };
            partitions.extend(found.partitions().iter().map(|p| (topic.clone(), p.id())));
        }
        partitions.sort();
        Ok(partitions)
    }
}

impl KafkaSettings {
    /// `topic`'s metadata, waiting up to `timeout`; a refused connection (wrong CA, wrong
    /// host name, wrong password) ends the wait at once with the brokers' reason, and a
    /// timeout quotes the last connection error.
    fn metadata(
        &self,
        consumer: &ServiceConsumer,
        topic: &str,
        timeout: Duration,
    ) -> Result<rdkafka::metadata::Metadata, KafkaSetupError> {
        const STEP: Duration = Duration::from_secs(1);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match consumer.fetch_metadata(Some(topic), left.min(STEP)) {
                Ok(metadata) => {
                    *consumer.context().connection() = ConnectionErrors::default();
                    return Ok(metadata);
                }
                Err(source) => {
                    serve_events(consumer);
                    let errors = consumer.context().connection().clone();
                    let brokers = self.brokers.clone();
                    if let Some(reason) = errors.refusal {
                        let reason = self.mask(&reason);
                        return Err(KafkaSetupError::Refused { brokers, reason });
                    }
                    if left <= STEP {
                        return Err(match errors.last {
                            Some(reason) => KafkaSetupError::Unreachable {
                                brokers,
                                reason: self.mask(&reason),
                            },
                            None => KafkaSetupError::Metadata { brokers, source },
                        });
                    }
                }
            }
        }
    }
}

/// Hands the consumer's queued events to its context: librdkafka delivers connection
/// errors (and their reasons) as events, and nothing else polls before partitions are
/// assigned. No partition is assigned yet, so no message is taken.
fn serve_events(consumer: &ServiceConsumer) {
    const MAX_EVENTS: usize = 1000;
    // A zero timeout returns before the main queue's forwarded events are served.
    const WAIT: Duration = Duration::from_millis(100);
    for _ in 0..MAX_EVENTS {
        if consumer.poll(WAIT).is_none() {
            return;
        }
    }
}

fn secret(variable: &'static str) -> Result<String, KafkaSetupError> {
    std::env::var(variable).map_err(|_| KafkaSetupError::MissingSecret { variable })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_settings_never_hold_the_password() {
        let settings = KafkaSettings {
            brokers: "b-1.msk:9096".into(),
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: SaslMechanism::ScramSha512,
            ca_file: None,
            options: vec![
                ("sasl.password".into(), "hunter2".into()),
                ("ssl.key.pem".into(), "-----BEGIN PRIVATE KEY-----".into()),
                (
                    "sasl.oauthbearer.config".into(),
                    "clientSecret=s3cr3t".into(),
                ),
                ("ssl.keystore.password".into(), "storepass".into()),
                ("client.id".into(), "meterflow-7".into()),
            ],
        };
        let shown = settings.to_string();
        assert!(
            shown.contains("SASL_SSL") && shown.contains("SCRAM-SHA-512"),
            "{shown}"
        );
        for secret in ["hunter2", "PRIVATE KEY", "s3cr3t", "storepass"] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(
            shown.contains("client.id=meterflow-7"),
            "known-safe keys are shown"
        );
    }

    #[test]
    fn sasl_without_credentials_is_a_clear_error() {
        let settings = KafkaSettings {
            brokers: "localhost:9092".into(),
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: SaslMechanism::Plain,
            ca_file: None,
            options: Vec::new(),
        };
        // The variables are not set in the test environment.
        if std::env::var(SASL_USERNAME_VAR).is_err() {
            let error = settings.client_config().unwrap_err();
            assert!(error.to_string().contains(SASL_USERNAME_VAR), "{error}");
        }
        let plain = KafkaSettings {
            security_protocol: SecurityProtocol::Plaintext,
            ..settings
        };
        let config = plain.client_config().unwrap();
        assert_eq!(config.get("security.protocol"), Some("PLAINTEXT"));
        assert_eq!(config.get("sasl.mechanism"), None);
    }

    #[test]
    fn only_a_failed_certificate_or_rejected_credentials_end_the_wait() {
        use RDKafkaErrorCode::{Authentication, BrokerTransportFailure, SSL};
        let permanent = [
            (
                SSL,
                "ssl://127.0.0.1:9094/bootstrap: SSL handshake failed: error:0A000086:SSL \
                 routines::certificate verify failed: broker certificate could not be verified",
            ),
            (
                BrokerTransportFailure,
                "SSL handshake failed: certificate verify failed (after 3ms in state \
                 SSL_HANDSHAKE)",
            ),
            (
                Authentication,
                "SASL authentication error: Authentication failed during authentication due \
                 to invalid credentials with SASL mechanism SCRAM-SHA-512",
            ),
            (
                Authentication,
                "SASL SCRAM authentication failed: broker responded with unknown-user",
            ),
            (
                Authentication,
                "SASL SCRAM-SHA-512 mechanism handshake failed: Broker: Unsupported SASL \
                 mechanism: broker's supported mechanisms: PLAIN",
            ),
        ];
        // A broker restarting, a load balancer without a ready backend, a slow handshake.
        let passing = [
            (
                BrokerTransportFailure,
                "ssl://127.0.0.1:9092/bootstrap: SSL handshake failed: Disconnected: \
                 connection closed by peer: receiving 0 after 0 bytes",
            ),
            (SSL, "SSL transport error: Connection reset by peer"),
            (
                BrokerTransportFailure,
                "sasl_ssl://127.0.0.1:9096/bootstrap: 1 request(s) timed out: disconnect \
                 (after 10046ms in state AUTH_HANDSHAKE)",
            ),
            (
                BrokerTransportFailure,
                "Connect to ipv4#127.0.0.1:9092 failed: Connection refused",
            ),
        ];
        for (code, reason) in permanent {
            assert!(is_permanent_refusal(Some(code), reason), "{reason}");
        }
        for (code, reason) in passing {
            assert!(!is_permanent_refusal(Some(code), reason), "{reason}");
        }
        assert!(!is_permanent_refusal(None, "certificate verify failed"));
    }

    #[test]
    fn a_reason_quoted_in_an_error_is_masked_like_the_start_up_log() {
        let settings = KafkaSettings {
            brokers: "b-1.msk:9098".into(),
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: SaslMechanism::ScramSha512,
            ca_file: None,
            options: vec![
                (
                    "sasl.oauthbearer.config".into(),
                    "clientSecret=s3cr3t".into(),
                ),
                ("client.id".into(), "meterflow-7".into()),
            ],
        };
        let masked = settings.mask("bad config clientSecret=s3cr3t for meterflow-7");
        assert_eq!(masked, "bad config *** for meterflow-7");
    }
}
