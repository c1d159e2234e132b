"""The Spark job against `meterflow transform` on the same input (Spark `local[2]`, file
source and Kafka source): identical rows to the last f32 bit and identical dead letters per
reason; and the one documented difference (docs/spark.md), asserted exactly.

Needs the meterflow binary: `MF_BIN` (scripts/test sets it), else target/debug/meterflow. The
Kafka source test needs `eval "$(scripts/services)"` (a container runtime, MF_TEST_KAFKA_IMAGE
and the Kafka source's jars in MF_SPARK_JARS); without them it is skipped, and under CI=true
it fails.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("MF_BIN", str(REPO / "target" / "debug" / "meterflow"))
PROCESSING_TIME = "2026-01-01T00:00:00Z"


def meterflow(*args: str) -> str:
    done = subprocess.run([BIN, *args], capture_output=True, text=True, check=True)
    return done.stdout


def spark_job(input_dir: Path, output: Path, *extra: str) -> dict:
    return spark_job_on(["--input", str(input_dir)], output, *extra)


def spark_job_on(source: list[str], output: Path | str, *extra: str, env=None) -> dict:
    """The job drained from `source` (`--input DIR` or `--kafka-brokers B --topics T`), with
    `env` added to the environment."""
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, **(env or {}))
    command = [sys.executable, "-m", "meterflow_spark.job", *source]
    command += ["--output", str(output), "--master", "local[2]", "--stop-when-drained"]
    command += ["--processing-time", PROCESSING_TIME, *extra]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO / "spark", env=env, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_files(directory: Path, chunks: list[list[str]]) -> list[Path]:
    """Input files in name order with increasing modification times (the file source takes
    files oldest first)."""
    directory.mkdir(parents=True)
    paths = []
    for number, lines in enumerate(chunks):
        path = directory / f"part-{number:04d}.jsonl"
        path.write_text("".join(line + "\n" for line in lines))
        os.utime(path, (1_700_000_000 + number, 1_700_000_000 + number))
        paths.append(path)
    return paths


def rows(output: Path) -> list[tuple]:
    """Every row, sorted; floats compared by their f32 bits (NaN-safe, -0 ≠ 0)."""
    files = sorted(glob.glob(f"{output}/date=*/*.parquet"))
    assert files, f"no Parquet under {output}"
    table = pa.concat_tables([pq.read_table(f, partitioning=None) for f in files])
    result = []
    for device_id, name, time, duration, delta in zip(
        *[table.column(c).to_pylist() for c in table.column_names]
    ):
        bits = [
            None if v is None else pa.array([v], pa.float32()).view(pa.int32())[0].as_py()
            for v in (duration, delta)
        ]
        result.append((device_id, name, time, *bits))
    return sorted(result)


def dead_letters(output: Path) -> dict:
    counts = collections.Counter()
    for file in glob.glob(f"{output}/_dead_letter/*.jsonl"):
        for line in open(file, encoding="utf-8"):
            counts[json.loads(line)["reason"]] += 1
    return dict(counts)


def summary_count(summary: str, label: str) -> int:
    return int(re.search(rf"^\s*{label}\s+(\d+)", summary, re.MULTILINE).group(1))


def parquet_layout(output: Path) -> list[tuple]:
    """(name, physical type, logical type, REQUIRED?) per column of one file."""
    schema = pq.ParquetFile(sorted(glob.glob(f"{output}/date=*/*.parquet"))[0]).schema
    return [
        (c.name, c.physical_type, str(c.logical_type), c.max_definition_level == 0)
        for c in (schema.column(i) for i in range(len(schema)))
    ]


# The differential fleet: a day of 40 meters, disorder within the lateness, faults, re-sends.
FLEET = [
    "--devices",
    "40",
    "--hours",
    "24",
    "--disorder",
    "5m",
    "--fault-rate",
    "0.02",
    "--duplicate-rate",
    "0.01",
]


def transform(inputs: list[Path], output: Path, *extra: str) -> str:
    """`meterflow transform` of `inputs` at the tests' processing time; its printed summary."""
    return meterflow(
        "transform",
        "--input",
        *map(str, inputs),
        "--output",
        str(output),
        "--processing-time",
        PROCESSING_TIME,
        *extra,
    )


def assert_same_as_meterflow(expected: Path, printed: str, got: Path, summary: dict) -> None:
    """The Spark output `got` (and its `summary`) against meterflow's `expected` (and the
    summary it `printed`): a real fleet, identical rows, dead letters, duplicates and column
    layout."""
    expected_rows = rows(expected)
    assert len(expected_rows) > 10_000
    assert rows(got) == expected_rows
    letters = dead_letters(expected)
    assert set(letters) >= {"invalid_time", "future_time", "conflicting_duplicate"}
    assert dead_letters(got) == letters
    assert summary["duplicates"] == summary_count(printed, "duplicates") > 0
    assert parquet_layout(got) == parquet_layout(expected)


def test_same_rows_dead_letters_and_counters_as_meterflow(tmp_path):
    generated = tmp_path / "fleet.jsonl"
    meterflow("generate", *FLEET, "--seed", "11", "--output", str(generated))
    lines = generated.read_text().splitlines()
    third = len(lines) // 3
    inputs = write_files(
        tmp_path / "in", [lines[:third], lines[third : 2 * third], lines[2 * third :]]
    )
    expected = tmp_path / "meterflow"
    printed = transform(inputs, expected)
    got = tmp_path / "spark"
    # One file per micro-batch: state and watermark carry across batches.
    summary = spark_job(tmp_path / "in", got, "--max-files-per-trigger", "1")

    assert_same_as_meterflow(expected, printed, got, summary)
    assert summary["counter_resets"] == summary_count(printed, "counter resets")
    assert (
        parquet_layout(expected)
        == [
            ("device_id", "INT32", "None", True),
            ("device_name", "BYTE_ARRAY", "String", True),
            (
                "time",
                "INT64",
                "Timestamp(isAdjustedToUTC=true, timeUnit=microseconds, "
                "is_from_converted_type=false, force_set_converted_type=false)",
                True,
            ),
            ("duration", "FLOAT", "None", False),
            ("delta_energy", "FLOAT", "None", False),
        ]
    )


def test_a_bounded_run_in_one_batch_flushes_in_it(tmp_path):
    """Without a per-trigger limit the run is one micro-batch, which holds the flush too: the
    same rows and dead letters as meterflow, and no second batch."""
    generated = tmp_path / "fleet.jsonl"
    meterflow("generate", *FLEET, "--seed", "12", "--output", str(generated))
    lines = generated.read_text().splitlines()
    inputs = write_files(tmp_path / "in", [lines[: len(lines) // 2], lines[len(lines) // 2 :]])
    expected = tmp_path / "meterflow"
    printed = transform(inputs, expected)
    got = tmp_path / "spark"
    summary = spark_job(tmp_path / "in", got)

    assert summary["batches"] == 1
    assert_same_as_meterflow(expected, printed, got, summary)


def element(device: int, minute: int, energy: float) -> dict:
    hours, minutes = divmod(minute, 60)
    return {
        "device_id": device,
        "device_name": f"m{device}",
        "time": f"2022-07-11T{hours:02d}:{minutes:02d}:00Z",
        "cumulative_energy": energy,
    }


def reading(device: int, minute: int, energy: float) -> str:
    """A message of one reading."""
    return json.dumps({"measurements": [element(device, minute, energy)]})


def test_the_documented_differences_and_nothing_else(tmp_path):
    """docs/spark.md, "Where Spark differs": lateness is judged once per micro-batch.

    Device 1's reading for 03:02 comes in the same file (micro-batch) as its readings up to
    04:00: meterflow, judging after every message, has emitted up to 03:50 and dead-letters it
    as `late`; the Spark job offers every reading of a batch before it emits any, so it takes
    the reading into its place in the series.

    And what is not a difference: device 2 goes quiet at 02:30 and sends 02:35–03:00 two
    batches after device 1 moved the watermark to 03:50, all in one message and newest first,
    as a meter back online sends it. Both take the whole backlog: it is not older than device
    2's own history, and readings of one message never make each other late.

    So Spark's output is exactly meterflow's with a lateness that makes nothing late.

    Two meters are fewer than meterflow's watermark quorum, so meterflow runs here with
    `--watermark-quorum 1`: its watermark then follows the newest reading, as Spark's does
    (difference 2 is the quorum itself)."""
    steady = [reading(1, m, m / 10) for m in range(120, 245, 5)]
    steady += [reading(2, m, m / 10) for m in range(120, 155, 5)]
    same_batch_late = reading(1, 182, 18.2)
    filler = [reading(1, 250, 25.0)]
    backlog_readings = [element(2, m, m / 10) for m in range(180, 150, -5)]
    backlog = [json.dumps({"measurements": backlog_readings})]
    after = [reading(2, 245, 24.5)]
    inputs = write_files(tmp_path / "in", [steady + [same_batch_late], filler, backlog + after])
    got = tmp_path / "spark"
    spark_job(tmp_path / "in", got, "--max-files-per-trigger", "1")

    strict, lenient = tmp_path / "meterflow", tmp_path / "meterflow-lenient"
    transform(inputs, strict, "--watermark-quorum", "1")
    transform(inputs, lenient, "--watermark-quorum", "1", "--allowed-lateness", "1d")
    assert dead_letters(strict) == {"late": 1}
    assert dead_letters(got) == {}
    assert rows(got) == rows(lenient)
    backlog_rows = [r for r in rows(got) if r[0] == 2 and 155 <= r[2].hour * 60 + r[2].minute <= 180]
    assert len(backlog_rows) == len(backlog_readings) == 6
    assert len(rows(strict)) == len(rows(got)) - 1


def service_or_skip(variable: str) -> str:
    """A service setting from scripts/services; skips without it, fails under CI=true."""
    value = os.environ.get(variable, "")
    if not value:
        message = f'{variable} is not set: run `eval "$(scripts/services)"` first'
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return value


@pytest.fixture(scope="module")
def kafka_broker():
    """Apache Kafka's broker (the image scripts/services builds, or a registry's apache/kafka)
    on a free 127.0.0.1 port, with topics of 3 partitions created when first produced to."""
    import socket

    import docker

    image = service_or_skip("MF_TEST_KAFKA_IMAGE")
    service_or_skip("MF_SPARK_JARS")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    advertised = f"PLAINTEXT://127.0.0.1:{port}"
    settings = {
        "advertised.listeners": advertised,
        "auto.create.topics.enable": "true",
        "num.partitions": "3",
    }
    if "apache/kafka" in image:
        # Apache Kafka's image: a single KRaft node configured by environment variables.
        settings.update(
            {
                "node.id": "1",
                "process.roles": "broker,controller",
                "listeners": "PLAINTEXT://:9092,CONTROLLER://:9093",
                "controller.listener.names": "CONTROLLER",
                "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                "controller.quorum.voters": "1@localhost:9093",
                "offsets.topic.replication.factor": "1",
            }
        )
        environment = {"KAFKA_" + k.replace(".", "_").upper(): v for k, v in settings.items()}
        command = None
    else:
        environment = {}
        command = [arg for k, v in settings.items() for arg in ("--override", f"{k}={v}")]
    client = docker.from_env()
    container = client.containers.run(
        image,
        command,
        environment=environment,
        ports={"9092/tcp": ("127.0.0.1", port)},
        detach=True,
        remove=True,
    )
    try:
        deadline = time.monotonic() + 90
        while b"Kafka Server started" not in container.logs():
            assert time.monotonic() < deadline, container.logs()[-4000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        container.stop(timeout=2)


def test_the_kafka_source_gives_the_rows_and_dead_letters_of_meterflow(tmp_path, kafka_broker):
    topic = f"readings-{os.getpid()}"
    sent = tmp_path / "sent.jsonl"
    meterflow(
        "generate",
        *FLEET,
        "--seed",
        "13",
        "--kafka-brokers",
        kafka_broker,
        "--topic",
        topic,
        "--output",
        str(sent),
    )
    # A micro-batch ends each partition at its share of the offsets, so the partitions' last
    # event times differ by a few messages; a reading at the next batch's start must still
    # be above the watermark (newest - lateness). Both sides get a lateness that covers this
    # skew plus the disorder; with the disorder within it, the rows are the same either way.
    lateness = ["--allowed-lateness", "30m"]
    expected = tmp_path / "meterflow"
    printed = transform([sent], expected, *lateness)
    messages = len(sent.read_text().splitlines())
    got = tmp_path / "spark"
    # About four micro-batches: state and watermark carry across batches, as with files.
    summary = spark_job_on(
        ["--kafka-brokers", kafka_broker, "--topics", topic],
        got,
        "--max-offsets-per-trigger",
        str(messages // 4 + 1),
        *lateness,
    )

    assert_same_as_meterflow(expected, printed, got, summary)


def test_spark_reads_meterflows_output_with_the_contracts_types(tmp_path):
    from pyspark.sql import SparkSession

    meterflow(
        "generate",
        "--devices",
        "3",
        "--hours",
        "1",
        "--with-seed-example",
        "--output",
        str(tmp_path / "in.jsonl"),
    )
    meterflow(
        "transform",
        "--input",
        str(tmp_path / "in.jsonl"),
        "--output",
        str(tmp_path / "out"),
        "--processing-time",
        PROCESSING_TIME,
    )
    spark = (
        SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
    )
    try:
        schema = spark.read.parquet(str(tmp_path / "out")).schema
        types = [(f.name, f.dataType.simpleString()) for f in schema.fields]
    finally:
        spark.stop()
    assert types == [
        ("device_id", "int"),
        ("device_name", "string"),
        ("time", "timestamp"),
        ("duration", "float"),
        ("delta_energy", "float"),
        ("date", "date"),
    ]


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
