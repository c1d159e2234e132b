"""The Spark Structured Streaming job: meter batches from Kafka (or JSON-lines files) to
Parquet in meterflow's schema and layout, with meterflow's validation and delta semantics.

    python -m meterflow_spark.job --input DIR --output DIR --stop-when-drained   # files, tests
    spark-submit spark/meterflow_spark_job.py --kafka-brokers B --topics T --output s3a://…

Settings share meterflow's names and `MF_*` variables where they overlap (docs/spark.md).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa

from meterflow_spark import deltas, sink, validate

log = logging.getLogger("meterflow_spark")

# The control row that ends a bounded run: its event time moves the watermark past every
# reading, so every waiting reading is emitted (meterflow's flush at the end of input).
FLUSH_TIME_US = 9_214_646_400_000_000  # 2262-01-01T00:00:00Z
# pandas holds timestamps in ns (1677-09-22 to 2262-04-11): the watermark column is clamped to
# that range on its way to the stateful function (readings outside it are far below any
# watermark, or refused as future_time, either way).
EVENT_TIME_RANGE_US = (-9_214_560_000_000_000, FLUSH_TIME_US)  # 1678-01-01 .. 2262-01-01
PARSED_SCHEMA = (
    "kind string, device_id int, device_name string, time_us long, energy double, "
    "seq_a string, seq_p int, seq_b long, idx int, reason string, detail string, "
    "source string, record string"
)
# The binaryFile source's columns (a streaming source needs its schema up front).
FILE_SCHEMA = "path string, modificationTime timestamp, length long, content binary"
PARSED_COLUMNS = [part.strip().split(" ")[0] for part in PARSED_SCHEMA.split(",")]


def duration_us(text: str) -> int:
    """`10m`, `90s`, `1h`, `1d`, `250ms` (meterflow's duration syntax) to microseconds."""
    match = re.fullmatch(r"(\d+)(ms|s|m|h|d)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration like 10m or 90s: {text!r}")
    unit = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000}
    unit["d"] = 24 * unit["h"]
    return int(match.group(1)) * unit[match.group(2)]


def arguments(argv: list[str]) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="meterflow-spark", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="directory of JSON-lines files (read in name order)")
    source.add_argument("--kafka-brokers", default=env("MF_KAFKA_BROKERS"))
    parser.add_argument("--topics", default=env("MF_TOPICS", "meter-readings"))
    parser.add_argument("--output", default=env("MF_OUTPUT"), required=env("MF_OUTPUT") is None)
    parser.add_argument(
        "--checkpoint",
        default=env("MF_SPARK_CHECKPOINT"),
        help="Spark checkpoint location (default: OUTPUT/_spark_checkpoint)",
    )
    parser.add_argument(
        "--allowed-lateness", type=duration_us, default=env("MF_ALLOWED_LATENESS", "10m")
    )
    parser.add_argument("--max-future", type=duration_us, default=env("MF_MAX_FUTURE", "1d"))
    parser.add_argument(
        "--processing-time",
        default=env("MF_PROCESSING_TIME"),
        help="RFC 3339 instant for the future-time guard (default: when the job starts)",
    )
    parser.add_argument(
        "--stop-when-drained",
        action="store_true",
        default=env("MF_STOP_WHEN_DRAINED", "") in ("1", "true"),
        help="read what is there, flush every waiting reading, stop (bounded runs)",
    )
    parser.add_argument("--trigger-interval", default=env("MF_EPOCH_INTERVAL", "60s"))
    parser.add_argument("--max-files-per-trigger", type=int, default=None)
    parser.add_argument(
        "--max-offsets-per-trigger",
        type=int,
        default=None,
        help="Kafka messages per micro-batch, split across partitions (default: all available)",
    )
    parser.add_argument("--partitions", type=int, default=8, help="state and shuffle partitions")
    parser.add_argument("--master", default=env("MF_SPARK_MASTER"))
    parser.add_argument("--driver-memory", help="for local masters, e.g. 4g")
    parser.add_argument(
        "--jars",
        default=env("MF_SPARK_JARS"),
        help="comma-separated jars for Spark (the Kafka source and s3a: spark/jars/)",
    )
    parser.add_argument("--log", default=env("MF_LOG", "warn"))
    return parser.parse_args(argv)


def explode(settings: dict):
    """mapInPandas function: raw input rows to readings, dead letters and control rows."""
    latest_us = settings["latest_us"]

    def run(frames):
        for frame in frames:
            records = []  # tuples in PARSED_COLUMNS order
            for origin, seq_a, seq_p, seq_b, value in frame[
                ["origin", "seq_a", "seq_p", "seq_b", "value"]
            ].itertuples(index=False):
                if origin == "control":
                    records.append(("control", None, None, FLUSH_TIME_US) + (None,) * 9)
                    continue
                if origin == "file":
                    messages = validate.split_lines(bytes(value))
                else:
                    messages = [(int(seq_b), bytes(value))] if value is not None else []
                for position, message in messages:
                    if origin == "file":
                        source = deltas.source_json(file=seq_a, line=position)
                    else:
                        source = deltas.source_json(topic=seq_a, partition=seq_p, offset=position)
                    readings, letters = validate.decode_message(message, latest_us)
                    for r in readings:
                        records.append(
                            ("reading", r.device_id, r.device_name, r.time_us, r.energy,
                             seq_a, seq_p, position, r.index, None, None, source, None)
                        )  # fmt: skip
                    for d in letters:
                        records.append(
                            ("dead_letter", None, None, None, None, seq_a, seq_p, position,
                             d.index, d.reason, d.detail, source, d.record)
                        )  # fmt: skip
            parsed = pd.DataFrame.from_records(records, columns=PARSED_COLUMNS)
            yield parsed.astype(
                {"device_id": "Int32", "time_us": "Int64", "seq_p": "Int32", "seq_b": "Int64",
                 "idx": "Int32", "energy": "float64"}
            )  # fmt: skip

    return run


class Totals:
    """What the run did, summed over its micro-batches (printed as the summary)."""

    def __init__(self):
        self.rows = 0
        self.files = 0
        self.dead_letters: dict[str, int] = {}
        self.duplicates = 0
        self.counter_resets = 0
        self.batches = 0

    def add_batch(self, files: list, letters: list[dict]) -> None:
        self.batches += 1
        self.files += len(files)
        self.rows += sum(file.rows for file in files)
        for letter in letters:
            self.dead_letters[letter["reason"]] = self.dead_letters.get(letter["reason"], 0) + 1

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def partition_writer(output: str, batch_id: int):
    """mapInArrow function: one writer's sorted rows of a batch to Parquet files (the task's
    partition number is the writer number in the file names); yields (path, rows)."""
    from pyspark import TaskContext

    def write(batches):
        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        table = pa.Table.from_batches(batches)
        writer = TaskContext.get().partitionId()
        for path, rows in sink.write_row_files(output, batch_id, writer, table):
            yield pa.RecordBatch.from_pydict({"path": [path], "rows": [rows]})

    return write


def batch_writer(output: str, writers: int, totals: Totals):
    """foreachBatch function: Parquet rows and dead letters under `output`, counters."""
    from pyspark.sql import functions as F

    def write(batch, batch_id: int):
        batch.persist()
        rows = (
            batch.filter(F.col("kind") == "row")
            .withColumn("date", F.date_format(F.timestamp_micros("time_us"), "yyyy-MM-dd"))
            .select("date", "device_id", "device_name", "time_us", "duration", "delta_energy")
            .repartition(writers, "date")
            .sortWithinPartitions("date", "device_id", "time_us")
        )
        files = rows.mapInArrow(partition_writer(output, batch_id), "path string, rows long")
        files = files.collect()
        letters = [r.asDict() for r in batch.filter(F.col("kind") == "dead_letter").collect()]
        letters.sort(key=lambda r: (tuple(json.loads(r["source"]).values()), r["idx"] or -1))
        sink.write_dead_letters(output, batch_id, letters)
        counts = batch.filter(F.col("kind").isin("duplicate", "counter_reset"))
        for kind, count in counts.groupBy("kind").agg(F.sum("count")).collect():
            if kind == "duplicate":
                totals.duplicates += int(count)
            else:
                totals.counter_resets += int(count)
        batch.unpersist()
        totals.add_batch(files, letters)
        log.info("batch %d: %d files, %d dead letters", batch_id, len(files), len(letters))

    return write


def package_zip() -> str:
    """This package as a zip for the executors' Python workers (`addPyFile`)."""
    package = Path(__file__).resolve().parent
    handle, path = tempfile.mkstemp(suffix=".zip", prefix="meterflow_spark-")
    os.close(handle)
    with zipfile.ZipFile(path, "w") as archive:
        for file in package.glob("*.py"):
            archive.write(file, f"meterflow_spark/{file.name}")
    return path


def session(args):
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("meterflow-spark")
    if args.master:
        builder = builder.master(args.master)
    if args.driver_memory:
        builder = builder.config("spark.driver.memory", args.driver_memory)
    if args.jars:
        builder = builder.config("spark.jars", args.jars)
    for key, value in s3a_settings(os.environ).items():
        builder = builder.config(key, value)
    spark = (
        builder.config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", str(args.partitions))
        .config("spark.sql.streaming.numRecentProgressUpdates", "100000")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel(args.log.upper())
    spark.sparkContext.addPyFile(package_zip())
    return spark


def s3a_settings(environ) -> dict[str, str]:
    """S3A pointed where the row writer points (`MF_S3_ENDPOINT` or `AWS_ENDPOINT_URL`,
    path-style, and the `AWS_*` keys when they are set), so the checkpoint and the rows land
    in the same store; none without an endpoint (AWS itself, or spark-defaults.conf)."""
    endpoint = environ.get("MF_S3_ENDPOINT") or environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return {}
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    settings = {
        "spark.hadoop.fs.s3a.endpoint": endpoint,
        "spark.hadoop.fs.s3a.endpoint.region": region,
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(
            endpoint.lower().startswith("https")
        ).lower(),
    }
    if environ.get("AWS_ACCESS_KEY_ID"):
        # Else S3A's default chain (instance profile, web identity) finds the credentials.
        settings["spark.hadoop.fs.s3a.aws.credentials.provider"] = (
            "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider"
        )
    return settings


def spark_path(location: str) -> str:
    """Spark reads object storage through S3A: `s3://` becomes `s3a://`."""
    return "s3a://" + location[len("s3://") :] if location.startswith("s3://") else location


def build_query(spark, args, control_dir: str, totals: Totals):
    from pyspark.sql import functions as F
    from pyspark.sql.streaming.state import GroupStateTimeout

    if args.input:
        reader = spark.readStream.format("binaryFile").schema(FILE_SCHEMA)
        if args.max_files_per_trigger:
            reader = reader.option("maxFilesPerTrigger", args.max_files_per_trigger)
        raw = reader.load(args.input).select(
            F.lit("file").alias("origin"),
            F.col("path").alias("seq_a"),
            F.lit(-1).alias("seq_p"),
            F.lit(0).cast("long").alias("seq_b"),
            F.col("content").alias("value"),
        )
    else:
        raw = (
            spark.readStream.format("kafka")
            .option("kafka.bootstrap.servers", args.kafka_brokers)
            .option("subscribe", args.topics)
            .option("startingOffsets", "earliest")
            .options(
                **(
                    {"maxOffsetsPerTrigger": str(args.max_offsets_per_trigger)}
                    if args.max_offsets_per_trigger
                    else {}
                )
            )
            .load()
            .select(
                F.lit("kafka").alias("origin"),
                F.col("topic").alias("seq_a"),
                F.col("partition").alias("seq_p"),
                F.col("offset").alias("seq_b"),
                F.col("value"),
            )
        )
    control = (
        spark.readStream.format("binaryFile")
        .schema(FILE_SCHEMA)
        .load(control_dir)
        .select(
            F.lit("control").alias("origin"),
            F.col("path").alias("seq_a"),
            F.lit(-1).alias("seq_p"),
            F.lit(0).cast("long").alias("seq_b"),
            F.col("content").alias("value"),
        )
    )
    settings = {"latest_us": args.latest_us}
    parsed = raw.unionByName(control).mapInPandas(explode(settings), PARSED_SCHEMA)
    timed = parsed.withColumn(
        "event_time",
        F.when(
            F.col("kind").isin("reading", "control"),
            F.timestamp_micros(
                F.least(
                    F.greatest("time_us", F.lit(EVENT_TIME_RANGE_US[0])),
                    F.lit(EVENT_TIME_RANGE_US[1]),
                )
            ),
        ),
    ).withWatermark("event_time", f"{args.allowed_lateness // 1000} milliseconds")
    rows = timed.groupBy("device_id").applyInPandasWithState(
        deltas.process_group,
        deltas.OUTPUT_SCHEMA,
        deltas.STATE_SCHEMA,
        "append",
        GroupStateTimeout.EventTimeTimeout,
    )
    writer = rows.writeStream.foreachBatch(batch_writer(args.output, args.partitions, totals))
    return writer.option("checkpointLocation", spark_path(args.checkpoint))


def run_once(spark, args, control_dir: str, totals: Totals, available_now: bool):
    writer = build_query(spark, args, control_dir, totals)
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=args.trigger_interval)
    query = writer.start()
    query.awaitTermination()
    return sum(
        operator.numRowsDroppedByWatermark
        for progress in query.recentProgress
        for operator in progress.stateOperators
    )


def main(argv: list[str] | None = None) -> int:
    args = arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log.upper(), format="%(asctime)s %(levelname)s %(message)s")
    started = time.monotonic()
    now = (
        datetime.fromisoformat(args.processing_time.replace("Z", "+00:00"))
        if args.processing_time
        else datetime.now(timezone.utc)
    )
    args.latest_us = int(now.timestamp()) * 1_000_000 + now.microsecond + args.max_future
    args.checkpoint = args.checkpoint or args.output.rstrip("/") + "/_spark_checkpoint"
    control_dir = spark_path(args.checkpoint.rstrip("/") + "/control")
    spark = session(args)
    store, root = sink.filesystem(args.checkpoint.rstrip("/") + "/control")
    store.create_dir(root, recursive=True)

    totals = Totals()
    dropped = run_once(spark, args, control_dir, totals, available_now=args.stop_when_drained)
    if args.stop_when_drained:
        # End of a bounded input: a control row moves the watermark past every reading; the
        # next run's no-data batch times every waiting device out, emitting its readings.
        with store.open_output_stream(f"{root}/flush-{int(time.time() * 1000)}") as stream:
            stream.write(b"flush")
        dropped += run_once(spark, args, control_dir, totals, available_now=True)
        dropped += run_once(spark, args, control_dir, totals, available_now=True)
    summary = totals.as_dict() | {
        "dropped_by_watermark": dropped,
        "seconds": round(time.monotonic() - started, 3),
    }
    print(json.dumps(summary, sort_keys=True))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
