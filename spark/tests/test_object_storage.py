"""The Spark job writing to MinIO: rows and dead letters through pyarrow's S3 client, Spark's
checkpoint and control rows through s3a (hadoop-aws and the AWS SDK of spark/jars/s3a.xml),
and the same differential expectations as on local files.

Needs `eval "$(scripts/services)"` (a container runtime, MF_TEST_S3_IMAGE and MF_SPARK_JARS);
without them it is skipped, and under CI=true it fails.
"""

from __future__ import annotations

import socket
import time

import pyarrow.fs as pafs
import pytest

from test_differential import (
    FLEET,
    assert_same_as_meterflow,
    meterflow,
    service_or_skip,
    spark_job_on,
    transform,
    write_files,
)

ACCESS_KEY = "meterflow-spark"
SECRET_KEY = "meterflow-spark-secret"


@pytest.fixture(scope="module")
def minio():
    """MinIO (the image scripts/services builds) on a free 127.0.0.1 port: its endpoint."""
    import docker
    import requests

    image = service_or_skip("MF_TEST_S3_IMAGE")
    service_or_skip("MF_SPARK_JARS")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    container = docker.from_env().containers.run(
        image,
        ["server", "/data"],
        environment={"MINIO_ROOT_USER": ACCESS_KEY, "MINIO_ROOT_PASSWORD": SECRET_KEY},
        ports={"9000/tcp": ("127.0.0.1", port)},
        detach=True,
        remove=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(endpoint, timeout=1)
                break
            except requests.RequestException:
                assert time.monotonic() < deadline, container.logs()[-4000:]
                time.sleep(0.2)
        yield endpoint
    finally:
        container.stop(timeout=2)


def test_to_minio_through_s3a_it_writes_the_rows_and_dead_letters_of_meterflow(
    tmp_path, minio
):
    generated = tmp_path / "fleet.jsonl"
    meterflow("generate", *FLEET, "--seed", "17", "--output", str(generated))
    lines = generated.read_text().splitlines()
    half = len(lines) // 2
    inputs = write_files(tmp_path / "in", [lines[:half], lines[half:]])
    expected = tmp_path / "meterflow"
    printed = transform(inputs, expected)

    store = pafs.S3FileSystem(
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        endpoint_override=minio.removeprefix("http://"),
        scheme="http",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    store.create_dir("readings")
    env = {
        "MF_S3_ENDPOINT": minio,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": "us-east-1",
    }
    summary = spark_job_on(
        ["--input", str(tmp_path / "in")],
        "s3://readings/spark",
        "--max-files-per-trigger",
        "1",
        env=env,
    )

    # Spark's own state went through s3a: the offsets and commits of every micro-batch.
    checkpoint = pafs.FileSelector("readings/spark/_spark_checkpoint", recursive=True)
    names = [info.path for info in store.get_file_info(checkpoint)]
    for part in ("/offsets/", "/commits/", "/state/"):
        assert any(part in name for name in names), f"no {part} in {names}"
    # The rows and dead letters, read back from the bucket.
    got = tmp_path / "from-minio"
    pafs.copy_files("readings/spark", str(got), source_filesystem=store)
    assert_same_as_meterflow(expected, printed, got, summary)


def test_s3a_follows_the_row_writers_endpoint_and_leaves_credentials_to_aws_without_keys():
    from meterflow_spark.job import s3a_settings

    assert s3a_settings({}) == {}
    keyed = s3a_settings({"MF_S3_ENDPOINT": "HTTPS://minio:9000", "AWS_ACCESS_KEY_ID": "k"})
    assert keyed["spark.hadoop.fs.s3a.endpoint"] == "HTTPS://minio:9000"
    assert keyed["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "true"
    assert keyed["spark.hadoop.fs.s3a.path.style.access"] == "true"
    assert "EnvironmentVariableCredentialsProvider" in keyed[
        "spark.hadoop.fs.s3a.aws.credentials.provider"
    ]
    profile = s3a_settings({"AWS_ENDPOINT_URL": "http://s3.local", "AWS_DEFAULT_REGION": "eu-west-1"})
    assert profile["spark.hadoop.fs.s3a.connection.ssl.enabled"] == "false"
    assert profile["spark.hadoop.fs.s3a.endpoint.region"] == "eu-west-1"
    assert "spark.hadoop.fs.s3a.aws.credentials.provider" not in profile
