//! An Apache Kafka broker in a container: plaintext for most tests, and with the listeners MSK
//! offers (SSL, SASL_SSL with SCRAM) for the security tests.

use std::time::Duration;

use testcontainers::core::{CmdWaitFor, ContainerPort, ExecCommand, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use super::tls::TestTls;
use super::{bind_loopback, bind_loopback_all, free_port, image_for, split_image};

/// A running Kafka broker, reachable over PLAINTEXT at [`KafkaBroker::bootstrap`].
pub struct KafkaBroker {
    pub container: ContainerAsync<GenericImage>,
    pub bootstrap: String,
}

/// A broker with TLS listeners besides the plaintext one (which tests use to create topics
/// and produce): SSL on [`SecureKafka::ssl`], SASL_SSL with SCRAM-SHA-512 and -256 on
/// [`SecureKafka::sasl_ssl`], both with the certificate of a [`TestTls`].
pub struct SecureKafka {
    pub broker: KafkaBroker,
    pub ssl: String,
    pub sasl_ssl: String,
}

/// A listener only the container itself reaches (advertised as `localhost`), for the admin
/// commands run inside it: the plaintext listener advertises the host's port instead.
const INTERNAL_LISTENER: &str = "localhost:9095";

impl KafkaBroker {
    /// Starts the broker of `MF_TEST_KAFKA_IMAGE`; `None` when skipped. The host port is
    /// chosen first, because the broker must advertise the address clients reach it at.
    pub async fn start() -> Option<KafkaBroker> {
        let image = image_for("MF_TEST_KAFKA_IMAGE")?;
        let (name, tag) = split_image(&image);
        let port = free_port();
        let advertised = format!("127.0.0.1:{port}");
        let request =
            GenericImage::new(name.clone(), tag).with_exposed_port(ContainerPort::Tcp(9092));
        let request = if name.contains("apache/kafka") {
            // A single KRaft node (broker and controller), as Apache Kafka's image documents.
            request
                .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
                .with_env_var("KAFKA_NODE_ID", "1")
                .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
                .with_env_var("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
                .with_env_var(
                    "KAFKA_ADVERTISED_LISTENERS",
                    format!("PLAINTEXT://{advertised}"),
                )
                .with_env_var("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
                .with_env_var(
                    "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                    "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                )
                .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
                .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
                .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
                .with_env_var("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        } else {
            // The image scripts/services builds from Kafka's jars: settings as overrides of
            // its server.properties.
            request
                .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
                .with_cmd(overrides(&[(
                    "advertised.listeners",
                    format!("PLAINTEXT://{advertised}"),
                )]))
        };
        let container = request
            .with_host_config_modifier(bind_loopback(9092, Some(port)))
            .with_startup_timeout(Duration::from_secs(90))
            .start()
            .await
            .unwrap_or_else(|e| panic!("cannot start the Kafka container {image}: {e}"));
        Some(KafkaBroker {
            container,
            bootstrap: advertised,
        })
    }

    /// Starts the image scripts/services builds with SSL and SASL_SSL listeners serving
    /// `tls`'s broker certificate; `None` when skipped. Registry images configure listeners
    /// their own way, so these tests need the local image.
    pub async fn start_secure(tls: &TestTls) -> Option<SecureKafka> {
        let image = image_for("MF_TEST_KAFKA_IMAGE")?;
        if image.contains("apache/kafka") {
            assert!(
                std::env::var("CI").map_or(true, |ci| ci != "true"),
                "the TLS tests need the image scripts/services builds, not {image}"
            );
            eprintln!("skipped: the TLS tests need the image scripts/services builds");
            return None;
        }
        let (name, tag) = split_image(&image);
        let [plain, ssl, sasl_ssl] = [free_port(), free_port(), free_port()];
        let scram_login = "org.apache.kafka.common.security.scram.ScramLoginModule required;";
        let settings = [
            (
                "listeners",
                format!(
                    "PLAINTEXT://:9092,CONTROLLER://localhost:9093,SSL://:9094,\
                     INTERNAL://{INTERNAL_LISTENER},SASL_SSL://:9096"
                ),
            ),
            (
                "advertised.listeners",
                format!(
                    "PLAINTEXT://127.0.0.1:{plain},SSL://127.0.0.1:{ssl},\
                     INTERNAL://{INTERNAL_LISTENER},SASL_SSL://127.0.0.1:{sasl_ssl}"
                ),
            ),
            (
                "listener.security.protocol.map",
                "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SSL:SSL,\
                 SASL_SSL:SASL_SSL"
                    .into(),
            ),
            ("ssl.keystore.type", "PEM".into()),
            (
                "ssl.keystore.certificate.chain",
                tls.server_cert_pem.clone(),
            ),
            ("ssl.keystore.key", tls.server_key_pem.clone()),
            (
                "sasl.enabled.mechanisms",
                "SCRAM-SHA-512,SCRAM-SHA-256".into(),
            ),
            (
                "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config",
                scram_login.into(),
            ),
            (
                "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config",
                scram_login.into(),
            ),
        ];
        let container = GenericImage::new(name, tag)
            .with_exposed_port(ContainerPort::Tcp(9092))
            .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
            .with_cmd(overrides(&settings))
            .with_host_config_modifier(bind_loopback_all(vec![
                (9092, Some(plain)),
                (9094, Some(ssl)),
                (9096, Some(sasl_ssl)),
            ]))
            .with_startup_timeout(Duration::from_secs(90))
            .start()
            .await
            .unwrap_or_else(|e| panic!("cannot start the Kafka container {image}: {e}"));
        Some(SecureKafka {
            broker: KafkaBroker {
                container,
                bootstrap: format!("127.0.0.1:{plain}"),
            },
            ssl: format!("127.0.0.1:{ssl}"),
            sasl_ssl: format!("127.0.0.1:{sasl_ssl}"),
        })
    }

    /// Creates (or replaces) the SCRAM-SHA-512 and SCRAM-SHA-256 credentials of `user`, with
    /// Kafka's own `kafka-configs` command run inside the container (one mechanism per
    /// request: the broker refuses to alter one user twice in a request).
    pub async fn add_scram_user(&self, user: &str, password: &str) {
        for mechanism in ["SCRAM-SHA-512", "SCRAM-SHA-256"] {
            let credential = format!("{mechanism}=[password={password}]");
            let command = [
                "/opt/jre/bin/java",
                "-cp",
                "/opt/kafka/libs/*",
                "kafka.admin.ConfigCommand",
                "--bootstrap-server",
                INTERNAL_LISTENER,
                "--alter",
                "--entity-type",
                "users",
                "--entity-name",
                user,
                "--add-config",
                &credential,
            ];
            let command = ExecCommand::new(command).with_cmd_ready_condition(CmdWaitFor::exit());
            let mut result = self
                .container
                .exec(command)
                .await
                .expect("kafka-configs runs in the container");
            let stdout = result.stdout_to_vec().await.unwrap();
            let stderr = result.stderr_to_vec().await.unwrap();
            assert_eq!(
                result.exit_code().await.unwrap(),
                Some(0),
                "kafka-configs failed:\n{}\n{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
    }
}

/// `kafka.Kafka`'s `--override key=value` arguments.
fn overrides(settings: &[(&str, String)]) -> Vec<String> {
    settings
        .iter()
        .flat_map(|(key, value)| ["--override".to_string(), format!("{key}={value}")])
        .collect()
}
