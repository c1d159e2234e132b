//! Real services for integration tests, started with testcontainers: S3 servers (MinIO, and
//! SeaweedFS as a second implementation) and an Apache Kafka broker.
//!
//! `scripts/services` provides the runtime (`DOCKER_HOST`) and image names
//! (`MF_TEST_S3_IMAGE`, `MF_TEST_KAFKA_IMAGE`). Without them a test is skipped with a message —
//! except under `CI=true`, where a missing service fails the run.
#![allow(dead_code)] // Each test binary uses its own part of the support module.

pub mod faulty_store;
pub mod kafka;
pub mod produce;
pub mod service;
pub mod tls;

#[allow(unused_imports)] // Not every test binary starts a broker.
pub use kafka::KafkaBroker;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{ObjectStore, ObjectStoreExt};
use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::{ContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// A row with floats as bits, so rows compare and sort exactly: (device_id, device_name,
/// time µs, duration bits, delta_energy bits).
pub type Row = (i32, String, i64, Option<u32>, Option<u32>);

/// The rows of record batches in the output schema, sorted.
pub fn rows(batches: &[arrow::array::RecordBatch]) -> Vec<Row> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Float32Type, Int32Type, TimestampMicrosecondType};
    let mut rows = Vec::new();
    for batch in batches {
        let id = batch.column(0).as_primitive::<Int32Type>();
        let name = batch.column(1).as_string::<i32>();
        let time = batch.column(2).as_primitive::<TimestampMicrosecondType>();
        let duration = batch.column(3).as_primitive::<Float32Type>();
        let delta = batch.column(4).as_primitive::<Float32Type>();
        for i in 0..batch.num_rows() {
            let float =
                |a: &arrow::array::Float32Array| (!a.is_null(i)).then(|| a.value(i).to_bits());
            rows.push((
                id.value(i),
                name.value(i).to_string(),
                time.value(i),
                float(duration),
                float(delta),
            ));
        }
    }
    rows.sort();
    rows
}

/// Every dead letter under a local output directory's `_dead_letter/` (none if it is absent).
pub fn local_dead_letters(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut letters = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("_dead_letter")) else {
        return letters;
    };
    for entry in entries {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        letters.extend(
            text.lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()),
        );
    }
    letters
}

/// The `meterflow` binary built for these tests.
pub fn meterflow() -> std::process::Command {
    use assert_cmd::cargo::CommandCargoExt;
    std::process::Command::cargo_bin("meterflow").expect("the meterflow binary is built")
}

/// The same binary, for `assert_cmd`'s assertions on exit status and output.
pub fn meterflow_assert() -> assert_cmd::Command {
    assert_cmd::Command::from_std(meterflow())
}

/// The README's seed message (two readings of device 123456), as one JSON line.
pub const SEED_MESSAGE: &str = meterflow::generate::SEED_EXAMPLE;

/// `meterflow generate --devices N` with `args`, into `dir/name`; panics unless it succeeds.
pub fn generate(
    dir: &std::path::Path,
    name: &str,
    devices: u32,
    args: &[&str],
) -> std::path::PathBuf {
    let input = dir.join(name);
    let status = meterflow()
        .args(["generate", "--devices", &devices.to_string()])
        .args(args)
        .arg("--output")
        .arg(&input)
        .status()
        .unwrap();
    assert!(status.success(), "meterflow generate {args:?}");
    input
}

/// The Parquet schema exactly as contract §1 states it: names, physical and logical types,
/// repetition (read with the parquet crate, not with meterflow's own reader).
pub fn assert_exact_schema(bytes: bytes::Bytes) {
    use parquet::basic::{LogicalType, Repetition, TimeUnit, Type};
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(bytes).unwrap();
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let got: Vec<_> = (0..schema.num_columns())
        .map(|i| {
            let c = schema.column(i);
            (
                c.name().to_string(),
                c.physical_type(),
                c.self_type().get_basic_info().repetition(),
                c.logical_type_ref().cloned(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("device_id".into(), Type::INT32, Repetition::REQUIRED, None),
            (
                "device_name".into(),
                Type::BYTE_ARRAY,
                Repetition::REQUIRED,
                Some(LogicalType::String)
            ),
            (
                "time".into(),
                Type::INT64,
                Repetition::REQUIRED,
                Some(LogicalType::timestamp(true, TimeUnit::MICROS))
            ),
            ("duration".into(), Type::FLOAT, Repetition::OPTIONAL, None),
            (
                "delta_energy".into(),
                Type::FLOAT,
                Repetition::OPTIONAL,
                None
            ),
        ]
    );
}

/// Every object under `prefix`, read whole, by name.
pub async fn objects(
    store: &dyn ObjectStore,
    prefix: &Path,
) -> std::collections::BTreeMap<String, bytes::Bytes> {
    use futures::TryStreamExt;
    use object_store::ObjectStoreExt;
    let listed: Vec<_> = store.list(Some(prefix)).try_collect().await.unwrap();
    let mut objects = std::collections::BTreeMap::new();
    for object in listed {
        let bytes = store
            .get(&object.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        objects.insert(object.location.to_string(), bytes);
    }
    objects
}

/// Reads every Parquet object under `prefix` whole and checks its schema; how many there were.
pub async fn assert_parquet_objects_exact(store: &dyn ObjectStore, prefix: &Path) -> usize {
    let mut checked = 0;
    for (_, bytes) in objects(store, prefix)
        .await
        .into_iter()
        .filter(|(name, _)| name.ends_with(".parquet"))
    {
        assert_exact_schema(bytes);
        checked += 1;
    }
    checked
}

/// The credentials every test S3 server accepts (baked into the SeaweedFS image; set as the
/// root user for MinIO).
pub const ACCESS_KEY: &str = "meterflow-test";
pub const SECRET_KEY: &str = "meterflow-test-secret";
pub const REGION: &str = "us-east-1";

/// The image to use for a service, or `None` when the test should be skipped.
fn image_for(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(image) if !image.is_empty() => Some(image),
        _ if std::env::var("CI").is_ok_and(|ci| ci == "true") => {
            panic!("{variable} is not set under CI=true: run `eval \"$(scripts/services)\"` first")
        }
        _ => {
            eprintln!("skipped: {variable} is not set (run `eval \"$(scripts/services)\"`)");
            None
        }
    }
}

/// `name:tag` split for testcontainers (a registry host's port stays in the name).
fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.into(), tag.into()),
        _ => (image.into(), "latest".into()),
    }
}

/// Publishes container `port` on 127.0.0.1, on `host_port` or (`None`) a random port. podman
/// reports publish-all bindings with an empty host IP, which testcontainers skips, so the
/// binding is always explicit.
fn bind_loopback(
    port: u16,
    host_port: Option<u16>,
) -> impl Fn(&mut HostConfig) + Send + Sync + 'static {
    bind_loopback_all(vec![(port, host_port)])
}

/// [`bind_loopback`] for several (container port, host port) pairs.
fn bind_loopback_all(
    ports: Vec<(u16, Option<u16>)>,
) -> impl Fn(&mut HostConfig) + Send + Sync + 'static {
    move |config: &mut HostConfig| {
        config.publish_all_ports = Some(false);
        config.port_bindings = Some(
            ports
                .iter()
                .map(|(port, host_port)| {
                    (
                        format!("{port}/tcp"),
                        Some(vec![PortBinding {
                            host_ip: Some("127.0.0.1".into()),
                            host_port: Some(host_port.map(|p| p.to_string()).unwrap_or_default()),
                        }]),
                    )
                })
                .collect(),
        );
    }
}

/// A running S3 server.
pub struct S3Server {
    pub container: ContainerAsync<GenericImage>,
    port: u16,
    image: String,
}

impl S3Server {
    /// Starts the server of `MF_TEST_S3_IMAGE` (MinIO); `None` when skipped.
    pub async fn start() -> Option<S3Server> {
        Some(Self::start_image(image_for("MF_TEST_S3_IMAGE")?).await)
    }

    /// Every S3 implementation the tests have: `MF_TEST_S3_IMAGE` and
    /// `MF_TEST_SECOND_S3_IMAGE` (SeaweedFS), for rules that must hold on more than one;
    /// empty when skipped.
    pub async fn every() -> Vec<S3Server> {
        let mut servers = Vec::new();
        for variable in ["MF_TEST_S3_IMAGE", "MF_TEST_SECOND_S3_IMAGE"] {
            if let Some(image) = image_for(variable) {
                servers.push(Self::start_image(image).await);
            }
        }
        servers
    }

    /// The image this server runs.
    pub fn image(&self) -> &str {
        &self.image
    }

    async fn start_image(image: String) -> S3Server {
        let (name, tag) = split_image(&image);
        let minio = name.contains("minio");
        let port = if minio { 9000 } else { 8333 };
        let wait = if minio {
            // Releases differ in the stream of their banner.
            WaitFor::message_on_either_std("API:")
        } else {
            WaitFor::message_on_stderr("Start Seaweed S3 API Server")
        };
        let mut request = GenericImage::new(name, tag)
            .with_exposed_port(ContainerPort::Tcp(port))
            .with_wait_for(wait)
            .with_host_config_modifier(bind_loopback(port, None))
            .with_startup_timeout(Duration::from_secs(60));
        if minio {
            request = request
                .with_cmd(["server", "/data"])
                .with_env_var("MINIO_ROOT_USER", ACCESS_KEY)
                .with_env_var("MINIO_ROOT_PASSWORD", SECRET_KEY);
        }
        let container = request
            .start()
            .await
            .unwrap_or_else(|e| panic!("cannot start the S3 container {image}: {e}"));
        let server = S3Server {
            container,
            port,
            image,
        };
        server.wait_until_answering().await;
        server
    }

    /// The start-up log line can come before the published port accepts connections (a
    /// bucket request once met "connection refused"): wait for any HTTP answer.
    async fn wait_until_answering(&self) {
        let endpoint = self.endpoint().await;
        let started = std::time::Instant::now();
        while reqwest::get(&endpoint).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the S3 server at {endpoint} does not answer"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a stopped server again and waits until it answers requests.
    pub async fn restart(&self, bucket: &str) {
        self.container
            .start()
            .await
            .expect("restart the S3 container");
        let client = self.client(bucket).await;
        let started = std::time::Instant::now();
        // Listing answers as soon as the S3 gateway is up; reading objects needs the volume
        // server registered again (SeaweedFS answers 500 until then): wait for a whole
        // write-and-read round trip.
        let probe = Path::from("_restart_probe");
        loop {
            let round_trip = async {
                client.put(&probe, "probe".into()).await?;
                client.get(&probe).await?.bytes().await?;
                client.delete(&probe).await
            };
            if round_trip.await.is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the S3 server did not come back"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `http://127.0.0.1:PORT` (the port changes when the container is restarted).
    pub async fn endpoint(&self) -> String {
        let port = self
            .container
            .get_host_port_ipv4(self.port)
            .await
            .expect("the S3 port is published");
        format!("http://127.0.0.1:{port}")
    }

    /// A client of `bucket` with the test credentials.
    pub async fn client(&self, bucket: &str) -> Arc<AmazonS3> {
        let store = AmazonS3Builder::new()
            .with_endpoint(self.endpoint().await)
            .with_region(REGION)
            .with_bucket_name(bucket)
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
            .build()
            .expect("valid S3 client settings");
        Arc::new(store)
    }

    /// Creates a fresh bucket (object_store cannot create buckets: a presigned `PUT /bucket`).
    pub async fn create_bucket(&self, prefix: &str) -> String {
        let bucket = unique_name(prefix);
        let client = self.client(&bucket).await;
        let url = client
            .signed_url(
                reqwest::Method::PUT,
                &Path::from(""),
                Duration::from_secs(60),
            )
            .await
            .expect("presigned bucket URL");
        let response = reqwest::Client::new()
            .put(url)
            .send()
            .await
            .expect("bucket creation request");
        assert!(
            response.status().is_success(),
            "creating bucket {bucket}: {}",
            response.status()
        );
        bucket
    }

    /// Environment for a `meterflow` process writing to this server.
    pub async fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", REGION.into()),
            ("MF_S3_ENDPOINT", self.endpoint().await),
        ]
    }
}

/// A name no other test of this run uses (buckets, topics, groups): lowercase, dash-separated.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free local port")
        .port()
}
