//! Secrets never leave the process: every secret given to `meterflow run` — SASL credentials
//! and S3 keys through the environment, private keys and tokens through `--kafka-option` (flag
//! and `MF_KAFKA_OPTIONS`) — is absent from stdout and stderr, in text and JSON logs at debug
//! level, on runs that fail at the broker and at the store (so their error messages are
//! searched too), and from every object a run writes (intents, checkpoints, files).

mod support;

use std::process::Output;
use std::thread;

use meterflow::kafka::{KafkaSettings, SaslMechanism, SecurityProtocol};
use support::meterflow;
use support::service::*;

const SECRETS: [&str; 7] = [
    "sasl-password-7f3a",
    "aws-secret-key-91bd",
    "-----BEGIN PRIVATE KEY-----pem-body-55e1",
    "oauth-config-c0ffee",
    "keystore-password-env-42",
    "sasl-username-b00b",
    "typo-option-value-d1ce",
];

/// Where a run with secrets fails.
#[derive(Debug, Clone, Copy)]
enum FailsAt {
    /// Creating the Kafka client: the private key does not parse.
    Key,
    /// Reaching the broker (plaintext, so SASL and TLS options are set but unused), after the
    /// store was probed.
    Broker,
    /// Reaching the store, with SASL credentials in the client.
    Store,
    /// Creating the Kafka client: an option name with a typo (librdkafka quotes the value).
    UnknownOption,
}

/// `meterflow run` with every secret of `failing`.
fn run_with_secrets(log_format: &str, failing: FailsAt) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("out").display().to_string();
    let mut command = meterflow();
    command
        .args(["run", "--brokers", "127.0.0.1:1", "--topics", "readings"])
        .args([
            "--kafka-option",
            &format!("sasl.oauthbearer.config={}", SECRETS[3]),
        ])
        .args([
            "--s3-endpoint",
            "http://127.0.0.1:1",
            "--s3-retry-timeout",
            "1s",
        ])
        .args(["--log", "debug", "--log-format", log_format])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .env("MF_KAFKA_SASL_USERNAME", SECRETS[5])
        .env("MF_KAFKA_SASL_PASSWORD", SECRETS[0])
        .env("AWS_ACCESS_KEY_ID", "meterflow-test")
        .env("AWS_SECRET_ACCESS_KEY", SECRETS[1])
        .env("AWS_REGION", "us-east-1")
        .env(
            "MF_KAFKA_OPTIONS",
            format!("ssl.keystore.password={}", SECRETS[4]),
        );
    match failing {
        FailsAt::Key => command
            .args(["--security-protocol", "sasl-ssl", "--output", &local])
            .args(["--kafka-option", &format!("ssl.key.pem={}", SECRETS[2])]),
        FailsAt::Broker => command.args(["--security-protocol", "plaintext", "--output", &local]),
        FailsAt::UnknownOption => command.args(["--output", &local]).args([
            "--kafka-option",
            &format!("ssl.keystore.pasword={}", SECRETS[6]),
        ]),
        FailsAt::Store => command
            .args(["--security-protocol", "sasl-ssl"])
            .args(["--output", "s3://bucket/prefix"]),
    };
    command.output().unwrap()
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} holds {secret:?}:\n{text}");
    }
}

#[test]
fn no_secret_reaches_stdout_stderr_or_an_error_message() {
    let mut cases = Vec::new();
    for format in ["text", "json"] {
        for failing in [
            FailsAt::Key,
            FailsAt::Broker,
            FailsAt::Store,
            FailsAt::UnknownOption,
        ] {
            cases.push(thread::spawn(move || {
                (format, failing, run_with_secrets(format, failing))
            }));
        }
    }
    for case in cases {
        let (format, failing, output) = case.join().unwrap();
        let case = format!("{format} logs, failing at {failing:?}");
        assert!(!output.status.success(), "{case}: the run fails");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("meterflow run starting"),
            "{case}: the start-up configuration was logged:\n{stderr}"
        );
        assert!(
            stderr.contains("sasl.oauthbearer.config=***"),
            "{case}: {stderr}"
        );
        assert!(
            stderr.to_lowercase().contains("error"),
            "{case}: an error: {stderr}"
        );
        if matches!(failing, FailsAt::UnknownOption) {
            assert!(stderr.contains("ssl.keystore.pasword"), "{case}: {stderr}");
        }
        assert_no_secret(&format!("{case}: stdout"), &stdout);
        assert_no_secret(&format!("{case}: stderr"), &stderr);
    }
}

#[test]
fn no_secret_reaches_the_bucket_or_debug_output() {
    let settings = KafkaSettings {
        brokers: "b-1.msk:9096".into(),
        security_protocol: SecurityProtocol::SaslSsl,
        sasl_mechanism: SaslMechanism::ScramSha512,
        ca_file: None,
        options: vec![
            ("ssl.key.pem".into(), SECRETS[2].into()),
            ("sasl.oauthbearer.config".into(), SECRETS[3].into()),
            ("ssl.keystore.password".into(), SECRETS[4].into()),
        ],
    };
    let lines = fleet(12, 61);
    let log = log_of(&lines, 2);
    let location = memory_location();
    let mut options = draining();
    options.kafka = settings;
    assert_no_secret("the run's options, debug-printed", &format!("{options:?}"));
    serve(&log, &location, &options, never()).unwrap();
    let written = objects(&location);
    assert!(written.keys().any(|p| p.contains("intent-")), "{written:?}");
    for (path, bytes) in written {
        let text = if path.ends_with(".bin") {
            // Checkpoints: magic and format, then a zstd frame.
            zstd::decode_all(&bytes[8..]).unwrap()
        } else {
            bytes
        };
        assert_no_secret(&path, &String::from_utf8_lossy(&text));
    }
}
