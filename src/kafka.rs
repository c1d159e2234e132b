//! Kafka clients from meterflow's settings: brokers, TLS and SASL (SCRAM or PLAIN, as AWS MSK
//! uses), with secrets only from the environment.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::ClientConfig;

/// Errors setting up Kafka clients or finding topics; all operational.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaSetupError {
    #[error("cannot create a Kafka client for {brokers}")]
    Client {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("cannot read topic metadata from {brokers} (are the brokers reachable?)")]
    Metadata {
        brokers: String,
        #[source]
        source: KafkaError,
    },
    #[error("topic {topic:?} does not exist on {brokers}")]
    MissingTopic { topic: String, brokers: String },
    #[error("SASL needs {variable} in the environment")]
    MissingSecret { variable: &'static str },
}

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    pub brokers: String,
    pub security_protocol: SecurityProtocol,
    pub sasl_mechanism: SaslMechanism,
    /// CA bundle for TLS; the system's when unset.
    pub ca_file: Option<PathBuf>,
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
        Ok(())
    }
}

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
        Ok(config)
    }

    fn client_error(&self, source: KafkaError) -> KafkaSetupError {
        KafkaSetupError::Client {
            brokers: self.brokers.clone(),
            source,
        }
    }

    /// A consumer that reads assigned partitions from explicit offsets and commits them to
    /// `group` for lag monitoring only (the checkpoint is the source of truth).
    pub fn consumer(&self, group: &str) -> Result<BaseConsumer, KafkaSetupError> {
        self.client_config()?
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| self.client_error(e))
    }

    /// Every partition of `topics`, sorted; an error names a topic that does not exist.
    pub fn partitions(
        &self,
        consumer: &BaseConsumer,
        topics: &[String],
        timeout: Duration,
    ) -> Result<Vec<(String, i32)>, KafkaSetupError> {
        let mut partitions = Vec::new();
        for topic in topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(|source| KafkaSetupError::Metadata {
                    brokers: self.brokers.clone(),
                    source,
                })?;
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
        };
        let shown = settings.to_string();
        assert!(
            shown.contains("SASL_SSL") && shown.contains("SCRAM-SHA-512"),
            "{shown}"
        );
        assert!(!shown.to_lowercase().contains("password"), "{shown}");
    }

    #[test]
    fn sasl_without_credentials_is_a_clear_error() {
        let settings = KafkaSettings {
            brokers: "localhost:9092".into(),
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: SaslMechanism::Plain,
            ca_file: None,
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
}
