//! The S3 sink against a real S3 server in a container (MinIO; SeaweedFS as a second
//! implementation where a rule must hold on more than one): output equals a local-directory
//! run, the schema is exact, `meterflow query` answers from the bucket as from the local copy,
//! conditional creates are enforced, and failures — wrong credentials, a missing bucket, the
//! server stopping mid-run — are clear errors that leave no partial Parquet object behind.

mod support;

use std::io::Write;
use std::path::Path as FsPath;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use meterflow::inspect::read_all;
use meterflow::run::checkpoint::CheckpointStore;
use meterflow::sink::store::{self, Location, StoreOptions};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode};
use support::{assert_parquet_objects_exact, meterflow, S3Server};

/// A fleet of `devices` with faults of every kind, so rows and dead letters are both written.
fn generate(dir: &FsPath, devices: u32) -> std::path::PathBuf {
    support::generate(
        dir,
        "in.jsonl",
        devices,
        &[
            "--hours",
            "20",
            "--seed",
            "11",
            "--fault-rate",
            "0.01",
            "--with-seed-example",
        ],
    )
}

fn transform(input: &FsPath, output: &str, env: &[(&str, String)]) -> Output {
    meterflow()
        .args(["transform", "--epoch-readings", "3000", "--input"])
        .arg(input)
        .args(["--output", output])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
}

/// Object names under `prefix`, relative to it, sorted.
async fn names(store: &dyn ObjectStore, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = store
        .list(Some(&Path::from(prefix)))
        .map_ok(|meta| {
            let name = meta.location.as_ref();
            name.strip_prefix(prefix)
                .unwrap_or(name)
                .trim_start_matches('/')
                .to_string()
        })
        .try_collect()
        .await
        .unwrap();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_output_equals_a_local_run_with_the_exact_schema() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let bucket = s3.create_bucket("sink").await;
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), 30);
    let local_dir = dir.path().join("local");
    let env = s3.env().await;

    let remote = transform(&input, &format!("s3://{bucket}/meters"), &env);
    assert!(
        remote.status.success(),
        "{}",
        String::from_utf8_lossy(&remote.stderr)
    );
    let local = transform(&input, local_dir.to_str().unwrap(), &[]);
    assert!(local.status.success());

    // Through the S3 API: the same objects, the same rows, the exact schema.
    let client = s3.client(&bucket).await;
    let remote_names = names(client.as_ref(), "meters").await;
    let local_location =
        store::open(local_dir.to_str().unwrap(), &StoreOptions::default()).unwrap();
    let local_names = names(
        local_location.store.as_ref(),
        local_location.prefix.as_ref(),
    )
    .await;
    assert_eq!(remote_names, local_names);
    let parquet: Vec<&String> = remote_names
        .iter()
        .filter(|n| n.ends_with(".parquet"))
        .collect();
    assert!(
        parquet.len() >= 2,
        "several epochs and days: {remote_names:?}"
    );
    assert!(remote_names.iter().any(|n| n.starts_with("_dead_letter/")));

    let remote_location = Location {
        store: client.clone(),
        prefix: Path::from("meters"),
        display: format!("s3://{bucket}/meters"),
    };
    let remote_rows = read_all(&remote_location).await.unwrap();
    let local_rows = read_all(&local_location).await.unwrap();
    assert!(remote_rows.iter().map(|b| b.num_rows()).sum::<usize>() > 1000);
    assert_eq!(remote_rows, local_rows);
    assert_parquet_objects_exact(client.as_ref(), &Path::from("meters")).await;

    // `meterflow query` reads the bucket with the same settings and answers as on the
    // local copy (integer aggregates: a float sum's order could differ between runs).
    let sql = "SELECT date, count(*) AS n, count(delta_energy) AS deltas, min(time) AS first, \
               max(time) AS last, sum(CAST(round(delta_energy * 1000) AS BIGINT)) AS wh \
               FROM readings GROUP BY date ORDER BY date";
    let query = |data: &str, env: &[(&str, String)]| {
        let done = meterflow()
            .args(["query", "--format", "csv", "--data", data, sql])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        String::from_utf8(done.stdout).unwrap()
    };
    let remote_answer = query(&format!("s3://{bucket}/meters"), &env);
    assert_eq!(remote_answer, query(local_dir.to_str().unwrap(), &[]));
    assert!(remote_answer.lines().count() >= 2, "{remote_answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_creates_are_enforced_on_every_s3_implementation() {
    // The checkpoint protocol's fence: `run` probes it at start and a second create of an
    // epoch's intent is refused, on MinIO and on SeaweedFS alike.
    for s3 in S3Server::every().await {
        let bucket = s3.create_bucket("fence").await;
        let location = Location {
            store: s3.client(&bucket).await,
            prefix: Path::from("out"),
            display: format!("s3://{bucket}/out ({})", s3.image()),
        };
        let checkpoints = CheckpointStore::new(location.clone());
        checkpoints
            .verify_conditional_create()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", s3.image()));
        let put = |body: &'static str| {
            let store = location.store.clone();
            async move {
                store
                    .put_opts(
                        &Path::from("out/_checkpoint/claim"),
                        body.into(),
                        PutMode::Create.into(),
                    )
                    .await
            }
        };
        put("first").await.expect("the first create");
        let second = put("second").await;
        assert!(
            matches!(second, Err(object_store::Error::AlreadyExists { .. })),
            "{}: {second:?}",
            s3.image()
        );
        let kept = location
            .store
            .get(&Path::from("out/_checkpoint/claim"))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&kept[..], b"first", "{}", s3.image());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_and_a_missing_bucket_are_clear_errors() {
    for s3 in S3Server::every().await {
        wrong_credentials_and_a_missing_bucket_on(&s3).await;
    }
}

async fn wrong_credentials_and_a_missing_bucket_on(s3: &S3Server) {
    let bucket = s3.create_bucket("auth").await;
    let dir = tempfile::tempdir().unwrap();
    let input = generate(dir.path(), 30);
    let mut env = s3.env().await;
    env.push(("MF_S3_MAX_RETRIES", "0".into()));

    let mut wrong = env.clone();
    wrong.retain(|(k, _)| *k != "AWS_SECRET_ACCESS_KEY");
    wrong.push(("AWS_SECRET_ACCESS_KEY", "not-the-secret".into()));
    let denied = transform(&input, &format!("s3://{bucket}/out"), &wrong);
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(!denied.status.success());
    assert!(stderr.contains(&format!("s3://{bucket}/out")), "{stderr}");
    assert!(
        stderr.contains("403") || stderr.contains("SignatureDoesNotMatch"),
        "{stderr}"
    );

    let missing = transform(&input, "s3://no-such-bucket-here/out", &env);
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(stderr.contains("s3://no-such-bucket-here/out"), "{stderr}");
    assert!(
        stderr.contains("NoSuchBucket") || stderr.contains("404"),
        "{stderr}"
    );
    // Nothing was written with the wrong secret.
    assert!(names(s3.client(&bucket).await.as_ref(), "out")
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_stopping_mid_run_fails_clearly_and_leaves_only_whole_objects() {
    let Some(s3) = S3Server::start().await else {
        return;
    };
    let bucket = s3.create_bucket("stop").await;
    let dir = tempfile::tempdir().unwrap();
    // Several MiB, so the first half alone fills input blocks and closes epochs.
    let input = std::fs::read_to_string(generate(dir.path(), 300)).unwrap();
    let lines: Vec<&str> = input.lines().collect();
    let (first, rest) = lines.split_at(lines.len() / 2);

    let mut env = s3.env().await;
    env.push(("MF_S3_MAX_RETRIES", "1".into()));
    env.push(("MF_S3_RETRY_TIMEOUT", "2s".into()));
    let mut child = meterflow()
        .args(["transform", "--epoch-readings", "500", "--input", "-"])
        .args(["--output", &format!("s3://{bucket}/out")])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for line in first {
        writeln!(stdin, "{line}").unwrap();
    }
    stdin.flush().unwrap();

    // Once the first epochs are uploaded, the server goes away.
    let client = s3.client(&bucket).await;
    let started = Instant::now();
    while !names(client.as_ref(), "out")
        .await
        .iter()
        .any(|n| n.ends_with(".parquet"))
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no epoch was uploaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s3.container.stop().await.unwrap();
    for line in rest {
        // The process may already have failed and closed its input.
        if writeln!(stdin, "{line}").is_err() {
            break;
        }
    }
    drop(stdin);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("error: cannot write"), "{stderr}");

    // Back up: every object that is visible is a whole Parquet file.
    s3.restart(&bucket).await;
    let client = s3.client(&bucket).await;
    let visible = names(client.as_ref(), "out").await;
    assert!(!visible.is_empty());
    assert_parquet_objects_exact(client.as_ref(), &Path::from("out")).await;
}
