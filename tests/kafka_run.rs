//! `meterflow run` end to end against a real broker and a real object store: a topic of three
//! partitions pre-filled with a generated fleet (disorder within the lateness, duplicates,
//! resets, bad records) is drained into the bucket; the rows equal `meterflow transform` on the
//! same messages, the schema is exact, and the dead letters per reason are the same.

mod support;

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use meterflow::inspect::read_all;
use meterflow::sink::store::{self, Location, StoreOptions};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;
use support::kafka::SecureKafka;
use support::produce::{batching_producer, produce_batched};
use support::tls::TestTls;
use support::{
    assert_parquet_objects_exact, free_port, meterflow, objects, rows, unique_name, KafkaBroker,
    Row, S3Server,
};

const PARTITIONS: i32 = 3;

fn generate(dir: &FsPath, devices: u32, hours: &str) -> PathBuf {
    support::generate(
        dir,
        "fleet.jsonl",
        devices,
        &[
            "--hours",
            hours,
            "--seed",
            "5",
            "--disorder",
            "2m",
            "--fault-rate",
            "0.01",
            "--duplicate-rate",
            "0.01",
            "--with-seed-example",
        ],
    )
}

/// The partition a gateway's messages go to, as a producer keyed by gateway would choose:
/// the most common `device_id / 8` of the message (8 meters per gateway), so each device's
/// messages stay in one partition, in order.
fn partition_of(line: &str) -> i32 {
    let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
    let mut gateways: BTreeMap<i64, usize> = BTreeMap::new();
    for reading in value["measurements"].as_array().into_iter().flatten() {
        if let Some(id) = reading["device_id"].as_i64() {
            *gateways.entry(id / 8).or_default() += 1;
        }
    }
    let gateway = gateways
        .into_iter()
        .max_by_key(|&(gateway, count)| (count, -gateway))
        .map_or(0, |(gateway, _)| gateway);
    gateway.rem_euclid(i64::from(PARTITIONS)) as i32
}

async fn create_topic(broker: &KafkaBroker) -> String {
    create_topic_of(broker, PARTITIONS).await
}

async fn create_topic_of(broker: &KafkaBroker, partitions: i32) -> String {
    create_topic_with(broker, partitions, &[]).await
}

/// A new topic of `partitions` with the topic settings `configs`.
async fn create_topic_with(
    broker: &KafkaBroker,
    partitions: i32,
    configs: &[(&str, &str)],
) -> String {
    let topic = unique_name("readings");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .expect("admin client");
    let new_topic = configs.iter().fold(
        NewTopic::new(&topic, partitions, TopicReplication::Fixed(1)),
        |new_topic, (key, value)| new_topic.set(key, value),
    );
    let created = admin
        .create_topics(
            &[new_topic],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics request");
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    topic
}

/// Messages per record batch in the produced topics (see [`produce_batched`]).
const BATCH: usize = 50;

/// Produces every line of `input` to the partition `partition` picks, in record batches of
/// [`BATCH`] messages compressed with `compression` (`none`, `gzip`, `snappy`, `lz4`, `zstd`:
/// producers on MSK use any of them).
async fn produce_to(
    broker: &KafkaBroker,
    topic: &str,
    input: &FsPath,
    partition: impl Fn(&str) -> i32,
    compression: &str,
) -> usize {
    let producer = batching_producer(&broker.bootstrap, compression);
    let text = std::fs::read_to_string(input).unwrap();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let records = lines.iter().map(|line| (partition(line), *line));
    produce_batched(&producer, topic, records, BATCH).await;
    lines.len()
}

/// `meterflow run` on the topic into `output`, draining it.
fn service(broker: &KafkaBroker, topic: &str, output: &str, env: &[(&str, String)]) -> Child {
    meterflow()
        .args(["run", "--brokers", &broker.bootstrap, "--topics", topic])
        .args(["--group", &format!("{topic}-group"), "--output", output])
        .args(["--epoch-interval", "300ms", "--idle-timeout", "30s"])
        .args(["--stop-when-drained", "--log", "meterflow=info"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meterflow run starts")
}

/// Waits for `child`, failing after `limit`; returns stderr.
fn finish(mut child: Child, limit: Duration) -> String {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let stderr = read_stderr(&mut child);
            assert!(
                status.success(),
                "meterflow run failed ({status}):\n{stderr}"
            );
            return stderr;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "meterflow run did not drain within {limit:?}:\n{}",
                read_stderr(&mut child)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_stderr(child: &mut Child) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut text);
    }
    text
}

/// Dead letters per reason under `location`'s `_dead_letter/`.
async fn dead_letter_counts(location: &Location) -> BTreeMap<String, usize> {
    let directory = location.prefix.clone().join("_dead_letter");
    let mut counts = BTreeMap::new();
    for bytes in objects(location.store.as_ref(), &directory).await.values() {
        for line in std::str::from_utf8(bytes).unwrap().lines() {
            let letter: serde_json::Value = serde_json::from_str(line).unwrap();
            *counts
                .entry(letter["reason"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    }
    counts
}

/// One dead letter without its source (a file line for `transform`, an offset for `run`):
/// reason, detail, index and record.
type Letter = (String, String, serde_json::Value, String);

/// Every dead letter under `location`'s `_dead_letter/`, sorted.
async fn dead_letter_records(location: &Location) -> Vec<Letter> {
    let directory = location.prefix.clone().join("_dead_letter");
    let mut letters = Vec::new();
    for bytes in objects(location.store.as_ref(), &directory).await.values() {
        for line in std::str::from_utf8(bytes).unwrap().lines() {
            let letter: serde_json::Value = serde_json::from_str(line).unwrap();
            let text = |field: &str| letter[field].as_str().unwrap().to_string();
            let mut detail = text("detail");
            if letter["reason"] == "future_time" {
                // Names the run's clock ("... after the latest accepted time T").
                detail.truncate(detail.find(" is after").unwrap_or(detail.len()));
            }
            letters.push((
                text("reason"),
                detail,
                letter["index"].clone(),
                text("record"),
            ));
        }
    }
    letters.sort_by(|a, b| {
        (&a.0, &a.1, a.2.to_string(), &a.3).cmp(&(&b.0, &b.1, b.2.to_string(), &b.3))
    });
    letters
}

/// Reference output: `meterflow transform` of the same lines into a local directory.
async fn transform_reference(input: &FsPath, dir: &FsPath) -> (Vec<Row>, BTreeMap<String, usize>) {
    let output = dir.join("reference");
    let status = meterflow()
        .args(["transform", "--overwrite", "--input"])
        .arg(input)
        .arg("--output")
        .arg(&output)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let location = store::open(output.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let rows = rows(&read_all(&location).await.unwrap());
    (rows, dead_letter_counts(&location).await)
}

fn s3_location(client: std::sync::Arc<dyn ObjectStore>, bucket: &str, prefix: &str) -> Location {
    Location {
        store: client,
        prefix: Path::from(prefix),
        display: format!("s3://{bucket}/{prefix}"),
    }
}

/// A broker and an object store with a topic of [`PARTITIONS`] partitions, an empty bucket,
/// and the fleet the topic was filled with.
struct Stage {
    broker: KafkaBroker,
    s3: S3Server,
    dir: tempfile::TempDir,
    input: PathBuf,
    topic: String,
    bucket: String,
    env: Vec<(&'static str, String)>,
    /// `s3://{bucket}/meters`
    output: String,
}

impl Stage {
    /// Services started, a fleet of `devices` × `hours` produced keyed by gateway, a bucket
    /// named after `bucket`; `None` when the services are skipped.
    async fn prefilled(bucket: &str, devices: u32, hours: &str) -> Option<Stage> {
        Stage::filled(bucket, devices, hours, partition_of, "none").await
    }

    /// As [`Stage::prefilled`], with `partition` choosing each message's partition and the
    /// producer compressing with `compression`.
    async fn filled(
        bucket: &str,
        devices: u32,
        hours: &str,
        partition: impl Fn(&str) -> i32,
        compression: &str,
    ) -> Option<Stage> {
        let broker = KafkaBroker::start().await?;
        let s3 = S3Server::start().await?;
        let dir = tempfile::tempdir().unwrap();
        let input = generate(dir.path(), devices, hours);
        let topic = create_topic(&broker).await;
        let produced = produce_to(&broker, &topic, &input, partition, compression).await;
        assert!(produced > 100, "a real fleet: {produced} messages");
        let bucket = s3.create_bucket(bucket).await;
        let env = s3.env().await;
        let output = format!("s3://{bucket}/meters");
        Some(Stage {
            broker,
            s3,
            dir,
            input,
            topic,
            bucket,
            env,
            output,
        })
    }
}

impl Stage {
    /// `meterflow run --stop-when-drained` into the bucket.
    fn service(&self) -> Child {
        service(&self.broker, &self.topic, &self.output, &self.env)
    }

    /// As [`Stage::service`], epochs also closing at 256 KiB of messages: checkpoints (and so
    /// restarts) then fall at offsets unrelated to the producer's record batches.
    fn service_closing_by_size(&self) -> Child {
        let mut env = self.env.clone();
        env.push(("MF_EPOCH_MAX_BYTES", (256 << 10).to_string()));
        service(&self.broker, &self.topic, &self.output, &env)
    }

    /// The run's output prefix in the bucket.
    async fn location(&self) -> Location {
        s3_location(self.s3.client(&self.bucket).await, &self.bucket, "meters")
    }

    /// See [`assert_bucket_equals_transform`].
    async fn assert_equals_transform(&self, logs: &str) -> Location {
        assert_bucket_equals_transform(&self.s3, &self.bucket, &self.input, self.dir.path(), logs)
            .await
    }
}

/// The bucket's rows and dead letters per reason are exactly `transform`'s on `input`;
/// returns the output location. `logs` go into the failure message.
async fn assert_bucket_equals_transform(
    s3: &S3Server,
    bucket: &str,
    input: &FsPath,
    dir: &FsPath,
    logs: &str,
) -> Location {
    let location = s3_location(s3.client(bucket).await, bucket, "meters");
    let got = rows(&read_all(&location).await.unwrap());
    let (expected, expected_letters) = transform_reference(input, dir).await;
    let letters = dead_letter_counts(&location).await;
    assert!(
        got == expected,
        "{}\ndead letters {letters:?}, expected {expected_letters:?}\n{logs}",
        difference(&got, &expected)
    );
    assert_eq!(letters, expected_letters);
    let reference = store::open(
        dir.join("reference").to_str().unwrap(),
        &StoreOptions::default(),
    )
    .unwrap();
    let got_letters = dead_letter_records(&location).await;
    let expected_letters = dead_letter_records(&reference).await;
    let first_difference = got_letters
        .iter()
        .zip(&expected_letters)
        .find(|(got, expected)| got != expected);
    assert!(
        got_letters == expected_letters,
        "dead letters differ record by record; first: {first_difference:?}"
    );
    location
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prefilled_topic_drains_into_exactly_the_rows_of_transform() {
    // zstd-compressed batches: librdkafka decodes them only when built with zstd.
    let Some(stage) = Stage::filled("run", 48, "8", partition_of, "zstd").await else {
        return;
    };

    let stderr = finish(stage.service(), Duration::from_secs(180));
    assert!(stderr.contains("epoch committed"), "{stderr}");
    let location = stage.assert_equals_transform(&stderr).await;
    let (expected, expected_letters) = transform_reference(&stage.input, stage.dir.path()).await;
    assert!(
        expected.len() > 1000,
        "a real fleet: {} rows",
        expected.len()
    );
    assert!(!expected_letters.is_empty());
    let checked = assert_parquet_objects_exact(location.store.as_ref(), &location.prefix).await;
    assert!(checked > 0, "no Parquet object under {}", location.display);
}

/// Lists what differs between two sorted row sets, for a failure message.
fn difference(got: &[Row], expected: &[Row]) -> String {
    use std::collections::BTreeSet;
    let got_set: BTreeSet<&Row> = got.iter().collect();
    let expected_set: BTreeSet<&Row> = expected.iter().collect();
    let missing: Vec<&&Row> = expected_set.difference(&got_set).take(20).collect();
    let extra: Vec<&&Row> = got_set.difference(&expected_set).take(20).collect();
    format!(
        "{} rows, expected {}; missing (first 20): {missing:?}; unexpected (first 20): {extra:?}",
        got.len(),
        expected.len()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_and_restarted_at_random_moments_it_writes_every_row_once() {
    kill_and_restart(10, 400).await;
}

/// The long version: `cargo test --test kafka_run -- --ignored chaos`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "chaos run, about 10 minutes"]
async fn chaos_a_hundred_kills_lose_and_duplicate_nothing() {
    kill_and_restart(100, 12_000).await;
}

/// SIGKILLs the service `kills` times at random moments (restarting it each time), lets the
/// last run drain, and compares the bucket with `transform`; `devices` is sized so that most
/// kills hit a running service.
async fn kill_and_restart(kills: usize, devices: u32) {
    use rand::{Rng, SeedableRng};
    let Some(stage) = Stage::prefilled("crash", devices, "24").await else {
        return;
    };

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut killed_while_running = 0;
    let mut logs = String::new();
    let replays = |logs: &str| logs.matches("replaying the epoch recorded").count();
    // A kill between an epoch's intent and its checkpoint leaves an epoch the next run
    // replays: the test is about those, so it goes on killing (up to three times as many kills) until
    // the runs have met some; about a third of the kills leave one.
    let mut round = 0;
    while round < kills || (replays(&logs) == 0 && round < 3 * kills) {
        round += 1;
        let mut child = stage.service_closing_by_size();
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        if child.try_wait().unwrap().is_none() {
            killed_while_running += 1;
        }
        // SIGKILL: no chance to finish the epoch or to clean up.
        let _ = child.kill();
        let _ = child.wait();
        logs.push_str(&read_stderr(&mut child));
        logs.push_str("---- killed\n");
    }
    assert!(
        killed_while_running >= round / 2,
        "only {killed_while_running} of {round} kills hit a running service: make the input larger"
    );
    logs.push_str(&finish(stage.service(), Duration::from_secs(180)));
    let replays = replays(&logs);
    assert!(
        replays >= 1,
        "no kill fell inside an epoch; no replay was exercised"
    );
    // Real producers batch: a restart must also resume inside a record batch.
    let inside_a_batch = resume_offsets(&logs)
        .into_iter()
        .filter(|offset| offset % BATCH as i64 != 0)
        .count();
    assert!(
        inside_a_batch >= 1,
        "no restart resumed inside a record batch of {BATCH}"
    );
    eprintln!(
        "{round} kills ({killed_while_running} while running), {replays} replays, \
         {inside_a_batch} partitions resumed inside a batch"
    );

    stage.assert_equals_transform(&logs).await;
}

/// The offsets the runs in `logs` resumed partitions at (the `resume_at` of their
/// "consuming" lines; partitions without a position left out).
fn resume_offsets(logs: &str) -> Vec<i64> {
    logs.lines()
        .filter(|line| line.contains("consuming"))
        .filter_map(|line| line.split("resume_at=").nth(1))
        .flat_map(|positions| {
            positions
                .split_whitespace()
                .take_while(|token| token.contains('@'))
                .filter_map(|token| token.rsplit('@').next()?.parse().ok())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_epoch_without_its_checkpoint_is_replayed_into_identical_bytes() {
    let Some(stage) = Stage::filled("replay", 48, "8", partition_of, "gzip").await else {
        return;
    };
    finish(stage.service(), Duration::from_secs(180));

    // A crash after the files of the last epoch and before its checkpoint leaves exactly
    // this: the epoch's intent and files, no checkpoint.
    let location = stage.location().await;
    let before = objects(location.store.as_ref(), &location.prefix).await;
    let last = before
        .keys()
        .filter(|name| name.contains("_checkpoint/checkpoint-"))
        .max()
        .cloned()
        .expect("a committed checkpoint");
    let epoch: u64 = last
        .rsplit("checkpoint-")
        .next()
        .and_then(|n| n.strip_suffix(".bin"))
        .and_then(|n| n.parse().ok())
        .unwrap();
    let files_of_epoch = before
        .keys()
        .filter(|name| name.contains(&format!("part-{epoch:08}-")))
        .count();
    assert!(files_of_epoch > 0, "epoch {epoch} wrote files");
    let checkpoints = meterflow::run::checkpoint::CheckpointStore::new(location.clone());
    let committed = checkpoints.latest().await.unwrap().unwrap();
    location
        .store
        .delete(&Path::from(last.as_str()))
        .await
        .unwrap();

    let stderr = finish(stage.service(), Duration::from_secs(180));
    assert!(stderr.contains("replaying"), "{stderr}");
    let after = objects(location.store.as_ref(), &location.prefix).await;
    // Each start's conditional-create probe is removed best-effort: not part of the output.
    let output = |objects: &BTreeMap<String, bytes::Bytes>| -> Vec<String> {
        objects
            .keys()
            .filter(|key| !key.contains("/_checkpoint/probe-"))
            .cloned()
            .collect()
    };
    assert_eq!(
        output(&after),
        output(&before),
        "the replay writes the same objects"
    );
    let replayed = checkpoints.latest().await.unwrap().unwrap();
    assert_eq!(
        (&replayed.files, &replayed.next_offsets, &replayed.totals),
        (&committed.files, &committed.next_offsets, &committed.totals),
        "{stderr}"
    );
    assert!(
        replayed.state == committed.state,
        "the same per-device state"
    );
    for (name, bytes) in before.iter().rev() {
        assert!(
            after[name] == *bytes,
            "{name} is byte-identical after the replay"
        );
    }
}

/// The value of one sample line of `/metrics` (`name{labels}` exactly), if present.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(port: u16, path: &str) -> Option<(u16, String)> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// Polls `/metrics` until `done` holds, failing after `limit` with the last scrape.
async fn metrics_until(port: u16, limit: Duration, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        if let Some((200, text)) = scrape(port, "/metrics").await {
            if done(&text) {
                return text;
            }
            last = text;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("metrics did not get there within {limit:?}; last scrape:\n{last}");
}

#[tokio::test(flavor = "multi_thread")]
async fn produced_while_running_it_reports_true_metrics_and_sigterm_commits_all_it_read() {
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let topic = create_topic(&broker).await;
    let bucket = s3.create_bucket("live").await;
    let env = s3.env().await;
    let output = format!("s3://{bucket}/meters");
    let port = free_port();
    let running = meterflow()
        .args(["run", "--brokers", &broker.bootstrap, "--topics", &topic])
        .args(["--group", &format!("{topic}-group"), "--output", &output])
        .args(["--epoch-interval", "500ms", "--log", "meterflow=info"])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meterflow run starts");
    let started = Instant::now();
    while scrape(port, "/readyz").await.map(|(status, _)| status) != Some(200) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "/readyz never said ready: {:?}",
            scrape(port, "/readyz").await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        scrape(port, "/healthz").await.map(|(status, _)| status),
        Some(200)
    );

    // Published by the generator while the service runs (keyed by gateway, paced).
    let input = dir.path().join("fleet.jsonl");
    let status = meterflow()
        .args([
            "generate",
            "--devices",
            "96",
            "--hours",
            "8",
            "--seed",
            "11",
        ])
        .args([
            "--disorder",
            "2m",
            "--fault-rate",
            "0.01",
            "--duplicate-rate",
            "0.01",
        ])
        .args(["--kafka-brokers", &broker.bootstrap, "--topic", &topic])
        .args(["--rate", "3000"])
        .arg("--output")
        .arg(&input)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let produced = std::fs::read_to_string(&input)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as f64;
    let (expected, expected_letters) = transform_reference(&input, dir.path()).await;

    // Every message consumed and committed: the counters and the lag say so.
    let lag = |p: i32| format!("meterflow_consumer_lag{{topic=\"{topic}\",partition=\"{p}\"}}");
    let metrics = metrics_until(port, Duration::from_secs(120), |m| {
        sample(m, "meterflow_messages_total") == Some(produced)
            && (0..PARTITIONS).all(|p| sample(m, &lag(p)) == Some(0.0))
    })
    .await;
    for (reason, count) in &expected_letters {
        let name = format!("meterflow_dead_letters_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&metrics, &name), Some(*count as f64), "{name}");
    }
    let rows_so_far = sample(&metrics, "meterflow_rows_written_total").unwrap();
    assert!(rows_so_far > 0.0 && rows_so_far <= expected.len() as f64);
    assert!(sample(&metrics, "meterflow_epoch_duration_seconds_count").unwrap() >= 1.0);
    assert!(sample(&metrics, "meterflow_devices").unwrap() >= 96.0);

    // SIGTERM: exits 0 promptly, and the last checkpoint holds every offset it read.
    let pid = running.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    finish(running, Duration::from_secs(30));
    let location = s3_location(s3.client(&bucket).await, &bucket, "meters");
    let checkpoint = meterflow::run::checkpoint::CheckpointStore::new(location.clone())
        .latest()
        .await
        .unwrap()
        .expect("a checkpoint");
    assert_eq!(checkpoint.next_offsets.iter().sum::<i64>() as f64, produced);

    // The readings still waiting for the watermark come out when a backfill run drains.
    finish(
        service(&broker, &topic, &output, &env),
        Duration::from_secs(120),
    );
    let got = rows(&read_all(&location).await.unwrap());
    assert!(got == expected, "{}", difference(&got, &expected));
    assert_eq!(dead_letter_counts(&location).await, expected_letters);
    let checked = assert_parquet_objects_exact(location.store.as_ref(), &location.prefix).await;
    assert!(checked > 0);
}

/// `meterflow run` that must fail: its exit status and stderr.
fn failing_run(args: &[&str], env: &[(&str, String)]) -> String {
    let output = meterflow()
        .arg("run")
        .args(args)
        .args(["--metrics-addr", "127.0.0.1:0", "--stop-when-drained"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_topic_a_missing_bucket_and_wrong_credentials_are_clear_errors() {
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let topic = create_topic(&broker).await;
    let bucket = s3.create_bucket("faults").await;
    let env = s3.env().await;
    let output = format!("s3://{bucket}/meters");
    let brokers = ["--brokers", broker.bootstrap.as_str()];

    let stderr = failing_run(
        &[
            &brokers[..],
            &["--topics", "no-such-topic", "--output", &output],
        ]
        .concat(),
        &env,
    );
    assert!(
        stderr.contains("topic \"no-such-topic\" does not exist"),
        "{stderr}"
    );

    let stderr = failing_run(
        &[
            &brokers[..],
            &["--topics", &topic, "--output", "s3://no-such-bucket/meters"],
        ]
        .concat(),
        &env,
    );
    assert!(stderr.contains("no-such-bucket"), "{stderr}");
    assert!(stderr.contains("NoSuchBucket"), "{stderr}");

    let mut wrong = env.clone();
    for (key, value) in &mut wrong {
        if *key == "AWS_SECRET_ACCESS_KEY" {
            *value = "not-the-secret".into();
        }
    }
    let stderr = failing_run(
        &[&brokers[..], &["--topics", &topic, "--output", &output]].concat(),
        &wrong,
    );
    assert!(
        stderr.contains("SignatureDoesNotMatch") || stderr.contains("AccessDenied"),
        "{stderr}"
    );
}

/// The SCRAM user of the security tests. The password is distinctive so that its absence
/// from every output is a real check.
const SCRAM_USER: &str = "meterflow-scram";
const SCRAM_PASSWORD: &str = "Pa55-scram-7f3c9e1d";

/// `meterflow run` over a secured listener into the local directory `output`, draining
/// `topic`; its output (stdout and stderr) is returned with its exit code.
fn secure_run(
    address: &str,
    protocol_args: &[&str],
    topic: &str,
    output: &FsPath,
    password: &str,
) -> (Option<i32>, String) {
    let run = meterflow()
        .args(["run", "--brokers", address, "--topics", topic])
        .args(protocol_args)
        .args(["--group", &unique_name("secure-group")])
        .arg("--output")
        .arg(output)
        .args(["--epoch-interval", "300ms", "--stop-when-drained"])
        .args(["--metrics-addr", "127.0.0.1:0", "--log", "info"])
        .env("MF_KAFKA_SASL_USERNAME", SCRAM_USER)
        .env("MF_KAFKA_SASL_PASSWORD", password)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    (run.status.code(), text)
}

/// A broker with `tls`'s SSL and SASL_SSL listeners and the [`SCRAM_USER`] for both SCRAM
/// mechanisms; `None` when skipped.
async fn secure_broker(tls: &TestTls) -> Option<SecureKafka> {
    let kafka = KafkaBroker::start_secure(tls).await?;
    kafka
        .broker
        .add_scram_user(SCRAM_USER, SCRAM_PASSWORD)
        .await;
    Some(kafka)
}

#[tokio::test(flavor = "multi_thread")]
async fn over_ssl_and_sasl_ssl_with_both_scram_mechanisms_it_drains_the_rows_of_transform() {
    let tls = TestTls::generate();
    let Some(kafka) = secure_broker(&tls).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), 16, "4");
    let topic = create_topic(&kafka.broker).await;
    produce_to(&kafka.broker, &topic, &input, partition_of, "lz4").await;
    let (expected, expected_letters) = transform_reference(&input, dir.path()).await;
    assert!(expected.len() > 500, "{} rows", expected.len());

    let ca = tls.ca_file.to_str().unwrap();
    let cases: [(&str, &[&str]); 3] = [
        (&kafka.ssl, &["--security-protocol", "ssl"]),
        (
            &kafka.sasl_ssl,
            &[
                "--security-protocol",
                "sasl-ssl",
                "--sasl-mechanism",
                "SCRAM-SHA-512",
            ],
        ),
        (
            &kafka.sasl_ssl,
            &[
                "--security-protocol",
                "sasl-ssl",
                "--sasl-mechanism",
                "SCRAM-SHA-256",
            ],
        ),
    ];
    for (i, (address, protocol)) in cases.into_iter().enumerate() {
        let output = dir.path().join(format!("secure-{i}"));
        let args = [protocol, &["--ca-file", ca]].concat();
        let (code, text) = secure_run(address, &args, &topic, &output, SCRAM_PASSWORD);
        assert_eq!(code, Some(0), "{protocol:?}:\n{text}");
        assert!(text.contains("epoch committed"), "{text}");
        let location = store::open(output.to_str().unwrap(), &StoreOptions::default()).unwrap();
        let got = rows(&read_all(&location).await.unwrap());
        assert!(
            got == expected,
            "{protocol:?}: {}",
            difference(&got, &expected)
        );
        assert_eq!(dead_letter_counts(&location).await, expected_letters);
        assert!(!text.contains(SCRAM_PASSWORD), "the password in the output");
    }
}

/// A refused connection: the case, the address, meterflow's security flags, the SASL
/// password, and what the error must say.
type Refusal<'a> = (&'a str, &'a str, Vec<&'a str>, &'a str, &'a [&'a str]);

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_host_name_or_password_fails_at_once_and_says_why() {
    let tls = TestTls::generate();
    let Some(kafka) = secure_broker(&tls).await else {
        return;
    };
    let topic = create_topic(&kafka.broker).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = tls.ca_file.to_str().unwrap();
    let other_ca = tls.other_ca_file.to_str().unwrap();
    // The certificate names 127.0.0.1 only: the same listener as `localhost` is another host.
    let ssl_port = kafka.ssl.rsplit_once(':').unwrap().1;
    let by_host_name = format!("localhost:{ssl_port}");
    let wrong_password = "Wr0ng-scram-0a9b8c7d";
    let cases: [Refusal; 4] = [
        (
            "untrusted CA",
            &kafka.ssl,
            vec!["--security-protocol", "ssl", "--ca-file", other_ca],
            SCRAM_PASSWORD,
            &["certificate verify failed"],
        ),
        (
            "system CAs only",
            &kafka.ssl,
            vec!["--security-protocol", "ssl"],
            SCRAM_PASSWORD,
            &["certificate verify failed"],
        ),
        (
            "wrong host name",
            &by_host_name,
            vec!["--security-protocol", "ssl", "--ca-file", ca],
            SCRAM_PASSWORD,
            &["certificate verify failed"],
        ),
        (
            "wrong password",
            &kafka.sasl_ssl,
            vec!["--security-protocol", "sasl-ssl", "--ca-file", ca],
            wrong_password,
            &["Authentication failed", "SCRAM-SHA-512"],
        ),
    ];
    for (case, address, args, password, reasons) in cases {
        let started = Instant::now();
        let output = dir.path().join(case.replace(' ', "-"));
        let (code, text) = secure_run(address, &args, &topic, &output, password);
        assert_eq!(code, Some(1), "{case}:\n{text}");
        assert!(text.contains("refused the connection"), "{case}:\n{text}");
        for reason in reasons {
            assert!(text.contains(reason), "{case}: no {reason:?} in\n{text}");
        }
        // Not the 30 s metadata timeout, and not an endless retry loop.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{case}: {:?}\n{text}",
            started.elapsed()
        );
        assert!(!text.contains(password), "{case}: the password in\n{text}");
    }

    // TLS to the plaintext listener: the broker hangs up during the handshake, as a broker
    // still starting can. That is waited out; the timeout says what was seen.
    let started = Instant::now();
    let args = ["--security-protocol", "ssl", "--ca-file", ca];
    let output = dir.path().join("tls-to-plaintext");
    let (code, text) = secure_run(&kafka.broker.bootstrap, &args, &topic, &output, "");
    assert_eq!(code, Some(1), "{text}");
    // The error itself names the cause (not librdkafka's "1/1 brokers are down").
    let error = text.lines().find(|l| l.starts_with("error:")).unwrap_or("");
    assert!(!error.contains("refused the connection"), "{text}");
    assert!(
        error.contains("the last connection error") && error.contains("SSL handshake failed"),
        "{error}\n{text}"
    );
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(25)..Duration::from_secs(60)).contains(&waited),
        "{waited:?}"
    );
}

/// A load balancer in front of `backend`: it hangs up on every connection until it has hung
/// up on `hang_ups` and `for_at_least` has passed since the first, then forwards them, as one
/// does while its target is still starting.
async fn load_balancer(backend: String, hang_ups: usize, for_at_least: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut first: Option<Instant> = None;
        let mut dropped = 0;
        while let Ok((mut client, _)) = listener.accept().await {
            let since = *first.get_or_insert_with(Instant::now);
            if dropped < hang_ups || since.elapsed() < for_at_least {
                dropped += 1;
                drop(client);
                continue;
            }
            let backend = backend.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(&backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_hung_up_on_while_the_broker_starts_is_waited_out() {
    let tls = TestTls::generate();
    let Some(kafka) = secure_broker(&tls).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), 4, "2");
    let topic = create_topic(&kafka.broker).await;
    produce_to(&kafka.broker, &topic, &input, partition_of, "lz4").await;
    let (expected, _) = transform_reference(&input, dir.path()).await;

    // Bootstrap through the balancer: its hang-ups for the first seconds are TLS handshakes
    // the peer closed, which an earlier version took for a refusal and exited on.
    let hang_up_for = Duration::from_secs(4);
    let bootstrap = load_balancer(kafka.ssl.clone(), 3, hang_up_for).await;
    let output = dir.path().join("out");
    let ca = tls.ca_file.to_str().unwrap();
    let args = ["--security-protocol", "ssl", "--ca-file", ca];
    let started = Instant::now();
    // Blocks this thread only: the balancer runs on the runtime's workers.
    let (code, text) = secure_run(&bootstrap, &args, &topic, &output, "");
    assert_eq!(code, Some(0), "{text}");
    assert!(started.elapsed() >= hang_up_for, "{:?}", started.elapsed());
    assert!(
        text.contains("SSL handshake failed"),
        "no hang-up seen:\n{text}"
    );
    let location = store::open(output.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let got = rows(&read_all(&location).await.unwrap());
    assert!(got == expected, "{}", difference(&got, &expected));
}

/// Freezes a container's processes for `duration` (connections stay open, nothing answers).
async fn pause_for(
    container: &testcontainers::ContainerAsync<testcontainers::GenericImage>,
    duration: Duration,
) {
    container.pause().await.expect("pause a container");
    tokio::time::sleep(duration).await;
    container.unpause().await.expect("unpause a container");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_object_store_and_the_broker_paused_mid_run_lose_and_duplicate_nothing() {
    let Some(stage) = Stage::prefilled("pause", 400, "24").await else {
        return;
    };

    let mut running = stage.service();
    tokio::time::sleep(Duration::from_millis(800)).await;
    // Requests in flight (an upload, a checkpoint) hang, then are retried.
    pause_for(&stage.s3.container, Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    pause_for(&stage.broker.container, Duration::from_secs(3)).await;
    assert!(
        running.try_wait().unwrap().is_none(),
        "the service was still at work through both pauses"
    );
    let logs = finish(running, Duration::from_secs(240));

    stage.assert_equals_transform(&logs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_broker_killed_mid_epoch_and_restarted_on_its_log_loses_and_duplicates_nothing() {
    let Some(stage) = Stage::filled("restart", 400, "24", partition_of, "lz4").await else {
        return;
    };
    // Dead letters go to a topic on the same broker, so the outage also hits their sends.
    let dead_letter_topic = create_topic(&stage.broker).await;
    let mut env = stage.env.clone();
    env.push(("MF_DEAD_LETTER_TOPIC", dead_letter_topic.clone()));

    let mut running = service(&stage.broker, &stage.topic, &stage.output, &env);
    // Mid-drain: after the first checkpoint (the service is reading), and epochs close
    // every 300 ms while the drain takes minutes, so one is open.
    let checkpoints = meterflow::run::checkpoint::CheckpointStore::new(stage.location().await);
    let deadline = Instant::now() + Duration::from_secs(60);
    while checkpoints.latest().await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "no checkpoint within a minute");
        assert!(running.try_wait().unwrap().is_none(), "the service exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SIGKILL: no clean shutdown, the broker recovers its log from disk on restart. With one
    // broker every partition's leader is gone meanwhile.
    stage
        .broker
        .container
        .stop_with_timeout(Some(0))
        .await
        .expect("kill the broker");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        running.try_wait().unwrap().is_none(),
        "the service waits for the broker"
    );
    stage
        .broker
        .container
        .start()
        .await
        .expect("restart the broker");
    let logs = finish(running, Duration::from_secs(240));

    let location = stage.location().await;
    let got = rows(&read_all(&location).await.unwrap());
    let (expected, expected_letters) = transform_reference(&stage.input, stage.dir.path()).await;
    assert!(got == expected, "{}\n{logs}", difference(&got, &expected));
    // At least once: deduplicated by key (source topic/partition/offset/index), the topic
    // holds exactly transform's letters. No run restarted, so nothing is replayed; a copy
    // can only come from a send retried across the outage.
    let records = all_topic_records(&stage.broker, &dead_letter_topic, PARTITIONS);
    let mut unique = BTreeMap::new();
    for (key, payload) in &records {
        let previous = unique.insert(key.clone(), payload.clone());
        assert!(
            previous.is_none_or(|p| &p == payload),
            "{key}: two letters differ"
        );
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for payload in unique.values() {
        let letter: serde_json::Value = serde_json::from_slice(payload).unwrap();
        *counts
            .entry(letter["reason"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(counts, expected_letters);
    eprintln!(
        "dead-letter topic: {} records, {} copies",
        records.len(),
        records.len() - unique.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_on_one_checkpoint_prefix_never_both_commit() {
    let Some(stage) = Stage::filled("twins", 400, "24", partition_of, "snappy").await else {
        return;
    };

    let mut twins = [stage.service(), stage.service()];
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for child in &mut twins {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                outcomes.push((status.success(), read_stderr(child)));
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(240), "a twin hangs");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let winners = outcomes.iter().filter(|(ok, _)| *ok).count();
    // Started together, they race for the same epochs: one loses a conditional put.
    assert_eq!(winners, 1, "{outcomes:#?}");
    for (ok, stderr) in &outcomes {
        // The loser stops with a fencing error (the epoch claimed, or committed past it),
        // never with anything else.
        assert!(
            *ok || stderr.contains("already claimed by another instance")
                || stderr.contains("which another instance already committed"),
            "{stderr}"
        );
    }

    stage.assert_equals_transform("").await;
}

/// `meterflow run` without draining, with metrics on `port`.
fn live_service(
    broker: &KafkaBroker,
    topic: &str,
    output: &str,
    env: &[(&str, String)],
    port: u16,
    idle_timeout: &str,
) -> Child {
    meterflow()
        .args(["run", "--brokers", &broker.bootstrap, "--topics", topic])
        .args(["--group", &format!("{topic}-group"), "--output", output])
        .args(["--epoch-interval", "300ms", "--idle-timeout", idle_timeout])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meterflow run starts")
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_partition_stops_holding_the_watermark_after_the_idle_timeout() {
    // Partition 2 never receives a message.
    let Some(stage) =
        Stage::filled("idle-fleet", 48, "8", |line| partition_of(line) % 2, "none").await
    else {
        return;
    };
    let (broker, s3, topic, env) = (&stage.broker, &stage.s3, &stage.topic, &stage.env);
    let produced = std::fs::read_to_string(&stage.input)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    let consumed = |m: &str| sample(m, "meterflow_messages_total") == Some(produced as f64);

    // Waiting for partition 2 for an hour: everything is read, nothing can be emitted.
    let held_bucket = s3.create_bucket("held").await;
    let held_port = free_port();
    let held = live_service(
        broker,
        topic,
        &format!("s3://{held_bucket}/meters"),
        env,
        held_port,
        "1h",
    );
    // (Counters move only when an epoch commits: all messages are in committed epochs.)
    let metrics = metrics_until(held_port, Duration::from_secs(120), consumed).await;
    assert_eq!(sample(&metrics, "meterflow_rows_written_total"), Some(0.0));

    // Idle after 2 s: the two active partitions alone move the watermark.
    let idle_bucket = s3.create_bucket("idle").await;
    let idle_port = free_port();
    let idle = live_service(
        broker,
        topic,
        &format!("s3://{idle_bucket}/meters"),
        env,
        idle_port,
        "2s",
    );
    let metrics = metrics_until(idle_port, Duration::from_secs(120), |m| {
        consumed(m) && sample(m, "meterflow_rows_written_total").is_some_and(|rows| rows > 0.0)
    })
    .await;
    // All but the readings within the allowed lateness of the newest one are out.
    let rows = sample(&metrics, "meterflow_rows_written_total").unwrap();
    let accepted = sample(&metrics, "meterflow_readings_accepted_total").unwrap();
    assert!(rows > accepted * 0.9, "{rows} of {accepted}");
    for mut child in [held, idle] {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_can_go_to_a_kafka_topic_with_their_source() {
    let Some(stage) = Stage::filled("dlq", 48, "8", partition_of, "lz4").await else {
        return;
    };
    let dead_letter_topic = create_topic(&stage.broker).await;
    let status = meterflow()
        .args([
            "run",
            "--brokers",
            &stage.broker.bootstrap,
            "--topics",
            &stage.topic,
        ])
        .args(["--output", &stage.output])
        .args(["--epoch-interval", "300ms", "--stop-when-drained"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(["--dead-letter-topic", &dead_letter_topic])
        .envs(stage.env.iter().map(|(k, v)| (*k, v.as_str())))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let (expected_rows, expected_letters) =
        transform_reference(&stage.input, stage.dir.path()).await;
    let total: usize = expected_letters.values().sum();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (key, payload) in topic_records(&stage.broker, &dead_letter_topic, PARTITIONS, total) {
        let letter: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(letter["source"]["topic"], stage.topic.as_str());
        assert!(
            key.starts_with(&format!(
                "{}/{}/{}/",
                stage.topic, letter["source"]["partition"], letter["source"]["offset"]
            )),
            "{key}"
        );
        *counts
            .entry(letter["reason"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(counts, expected_letters);
    let location = stage.location().await;
    assert!(
        dead_letter_counts(&location).await.is_empty(),
        "no dead-letter files"
    );
    assert_eq!(rows(&read_all(&location).await.unwrap()), expected_rows);
}

/// Every record (key, payload) of `topic`'s `partitions`, read to the end offsets they have now.
fn all_topic_records(broker: &KafkaBroker, topic: &str, partitions: i32) -> Vec<(String, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .create()
        .unwrap();
    let total: i64 = (0..partitions)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(30))
                .expect("end offsets");
            high - low
        })
        .sum();
    let records = topic_records(broker, topic, partitions, total as usize);
    assert_eq!(records.len() as i64, total, "read the whole topic");
    records
}

/// The first `count` records (key, payload) of `topic`'s `partitions`, waiting up to a minute.
fn topic_records(
    broker: &KafkaBroker,
    topic: &str,
    partitions: i32,
    count: usize,
) -> Vec<(String, Vec<u8>)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", unique_name("dlq-reader"))
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&list).unwrap();
    let mut records = Vec::new();
    let started = Instant::now();
    while records.len() < count && started.elapsed() < Duration::from_secs(60) {
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message.unwrap();
            let key = String::from_utf8(message.key().unwrap_or_default().to_vec()).unwrap();
            records.push((key, message.payload().unwrap_or_default().to_vec()));
        }
    }
    records
}

/// Contract §2 on a topic whose records are small: a letter larger than one record is sent cut
/// to fit, with its record's size and digest; a letter that fits is whole; none is missing.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_larger_than_its_topic_takes_arrives_cut_with_size_and_digest() {
    use sha2::Digest;
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let huge_name = "Tsuen Wan \\\"block\\\" ".repeat(1500);
    let bad_reading = format!(
        r#"{{"device_id":"7","device_name":"{huge_name}","time":"2022-07-10T00:00:00Z","cumulative_energy":1}}"#
    );
    let good =
        r#"{"device_id":8,"device_name":"m8","time":"2022-07-10T00:00:00Z","cumulative_energy":1}"#;
    let not_json = format!("{{\"measurements\": [{}", "1,".repeat(20_000));
    let lines = [
        format!(r#"{{"measurements":[{good},{bad_reading}]}}"#),
        not_json.clone(),
        "{\"measurements\": 5}".to_string(),
    ];
    let input = dir.path().join("letters.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let topic = create_topic_of(&broker, 1).await;
    produce_to(&broker, &topic, &input, |_| 0, "none").await;
    let limit = 4096;
    let letters_topic =
        create_topic_with(&broker, 1, &[("max.message.bytes", &limit.to_string())]).await;
    let bucket = s3.create_bucket("cut").await;
    let env = s3.env().await;
    let output = format!("s3://{bucket}/meters");
    let child = meterflow()
        .args(["run", "--brokers", &broker.bootstrap, "--topics", &topic])
        .args(["--output", &output, "--epoch-interval", "300ms"])
        .args(["--stop-when-drained", "--metrics-addr", "127.0.0.1:0"])
        .args(["--dead-letter-topic", &letters_topic])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = finish(child, Duration::from_secs(120));
    let records = topic_records(&broker, &letters_topic, 1, 3);
    assert_eq!(records.len(), 3, "every letter arrives:\n{stderr}");
    let sha256 = |text: &str| -> String {
        sha2::Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let mut by_offset = BTreeMap::new();
    for (key, payload) in &records {
        assert!(payload.len() + key.len() < limit, "{} bytes", payload.len());
        let letter: serde_json::Value = serde_json::from_slice(payload).unwrap();
        by_offset.insert(letter["source"]["offset"].as_i64().unwrap(), letter);
    }
    let cut_reading = &by_offset[&0];
    assert_eq!(cut_reading["reason"], "invalid_device_id");
    assert_eq!(cut_reading["index"], 1);
    assert!(bad_reading.starts_with(cut_reading["record"].as_str().unwrap()));
    assert_eq!(cut_reading["truncated"]["bytes"], bad_reading.len());
    assert_eq!(
        cut_reading["truncated"]["sha256"],
        sha256(&bad_reading).as_str()
    );
    let cut_message = &by_offset[&1];
    assert_eq!(cut_message["reason"], "invalid_json");
    assert!(not_json.starts_with(cut_message["record"].as_str().unwrap()));
    assert_eq!(cut_message["truncated"]["bytes"], not_json.len());
    assert_eq!(
        cut_message["truncated"]["sha256"],
        sha256(&not_json).as_str()
    );
    let whole = &by_offset[&2];
    assert_eq!(whole["reason"], "missing_measurements");
    assert_eq!(whole["record"], lines[2].as_str());
    assert!(whole.get("truncated").is_none());
}

/// The message-level rule through the service: a meter back online sends its backlog, newest
/// first, in one message after the watermark passed it. Every reading newer than the meter's
/// emitted history is a row; only the one older than that history is `late`.
#[tokio::test(flavor = "multi_thread")]
async fn a_backlog_sent_after_the_watermark_passed_it_is_taken_in_full() {
    let Some(broker) = KafkaBroker::start().await else {
        return;
    };
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let reading = |device: i32, time: &str, energy: f64| {
        format!(
            r#"{{"device_id":{device},"device_name":"m{device}","time":"{time}","cumulative_energy":{energy}}}"#
        )
    };
    let at = |minute: i64| format!("2022-07-10T{:02}:{:02}:00Z", minute / 60, minute % 60);
    let mut lines = vec![format!(
        r#"{{"measurements":[{}]}}"#,
        reading(1, &at(0), 1.0)
    )];
    // Four meters report every five minutes until 10:00: the watermark passes 03:00.
    for step in 0..=120i64 {
        let round: Vec<String> = (10..14)
            .map(|d| reading(d, &at(step * 5), step as f64))
            .collect();
        lines.push(format!(r#"{{"measurements":[{}]}}"#, round.join(",")));
    }
    let backlog = [
        reading(1, &at(180), 4.0),
        reading(1, &at(120), 3.0),
        reading(1, "2022-07-09T23:00:00Z", 0.5),
        reading(1, &at(60), 2.0),
    ];
    lines.push(format!(r#"{{"measurements":[{}]}}"#, backlog.join(",")));
    let input = dir.path().join("backlog.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();

    let topic = create_topic_of(&broker, 1).await;
    produce_to(&broker, &topic, &input, |_| 0, "none").await;
    let bucket = s3.create_bucket("backlog").await;
    let env = s3.env().await;
    let output = format!("s3://{bucket}/meters");
    let stderr = finish(
        service(&broker, &topic, &output, &env),
        Duration::from_secs(120),
    );
    let location = assert_bucket_equals_transform(&s3, &bucket, &input, dir.path(), &stderr).await;
    let got = rows(&read_all(&location).await.unwrap());
    let device1: Vec<(i64, Option<u32>)> = got
        .iter()
        .filter(|r| r.0 == 1)
        .map(|r| ((r.2 % 86_400_000_000) / 3_600_000_000, r.3))
        .collect();
    let hour = Some(60f32.to_bits());
    assert_eq!(device1, vec![(0, None), (1, hour), (2, hour), (3, hour)]);
    let letters = dead_letter_counts(&location).await;
    assert_eq!(letters, BTreeMap::from([("late".to_string(), 1)]));
}
