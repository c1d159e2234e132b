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

from meterflow_spark import deltas, devices, native, sink, validate

log = logging.getLogger("meterflow_spark")

# The watermark of the batch that holds the control row ending a bounded run: past every
# reading, so every waiting reading is emitted (meterflow's flush at the end of input).
FLUSH_WATERMARK_US = 2**62
# Before any reading: nothing is emitted.
NO_WATERMARK_US = -(2**62)
PARSED_SCHEMA = (
    "kind string, device_id int, device_name string, time_us long, energy double, "
    "seq_a string, seq_p int, seq_b long, idx int, reason string, detail string, "
    "source string, record string"
)
# Rust's is_ascii_whitespace, trimmed around a line of a file (a CR of CRLF files included).
LINE_SPACE = " \t\r\n\f"
# The binaryFile source's columns (a streaming source needs its schema up front).
FILE_SCHEMA = "path string, modificationTime timestamp, length long, content binary"
HUGE_METHODS = "-XX:-DontCompileHugeMethods"
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
    """mapInPandas function, the Python tier: messages the native tier routed here (origin
    `line`: one line of a file; `kafka`: one record; `file`: a whole file that is not UTF-8)
    to readings and dead letters by validate.py; with `letters_only`, only the dead letters
    (the native tier took the message's valid readings)."""
    latest_us = settings["latest_us"]

    def run(frames):
        for frame in frames:
            records = []  # tuples in PARSED_SCHEMA order
            for origin, seq_a, seq_p, seq_b, value, letters_only in frame[
                ["origin", "seq_a", "seq_p", "seq_b", "value", "letters_only"]
            ].itertuples(index=False):
                if origin == "file":
                    messages = validate.split_lines(bytes(value))
                else:
                    # A Kafka record without a value is an empty message, as in meterflow.
                    messages = [(int(seq_b), bytes(value) if value is not None else b"")]
                for position, message in messages:
                    if origin == "kafka":
                        source = deltas.source_json(topic=seq_a, partition=seq_p, offset=position)
                    else:
                        source = deltas.source_json(file=seq_a, line=position)
                    readings, letters = validate.decode_message(message, latest_us)
                    for r in [] if letters_only else readings:
                        records.append(
                            ("reading", r.device_id, r.device_name, r.time_us, r.energy,
                             seq_a, seq_p, position, r.index, None, None, None, None)
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


MESSAGE_KEY = ["origin", "seq_a", "seq_p", "seq_b"]


def messages_of(batch):
    """A micro-batch's source rows as messages, one scan: each line of a UTF-8 file and each
    UTF-8 Kafka record as `text`; a file or record that is not UTF-8, and the control rows,
    whole in `value`."""
    from pyspark.sql import functions as F

    origin, text = F.col("origin"), F.col("value").cast("string")
    utf8 = F.coalesce(F.is_valid_utf8(text), F.lit(False))
    pieces = F.when((origin == "file") & utf8, F.split(text, "\n", -1)).when(
        (origin == "kafka") & utf8, F.array(text)
    )
    whole = batch.select(
        *MESSAGE_KEY, pieces.alias("pieces"), F.when(pieces.isNull(), F.col("value")).alias("value")
    )
    split = whole.select(
        *MESSAGE_KEY, "value", F.posexplode_outer("pieces").alias("position", "piece")
    )
    is_line = (F.col("origin") == "file") & F.col("piece").isNotNull()
    return split.select(
        F.when(is_line, F.lit("line")).otherwise(F.col("origin")).alias("origin"),
        "seq_a",
        "seq_p",
        F.when(is_line, F.col("position") + 1).otherwise(F.col("seq_b")).alias("seq_b"),
        F.when(is_line, F.btrim("piece", F.lit(LINE_SPACE)))
        .otherwise(F.col("piece"))
        .alias("text"),
        "value",
    ).filter((F.col("origin") != "line") | (F.col("text") != ""))  # blank lines of files


def parse(batch, latest_us: int):
    """The parsed batch (PARSED_SCHEMA): native readings, the Python tier's readings and dead
    letters, and the control rows; and the frames cached for it (each tier runs once)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    cache = StorageLevel.MEMORY_AND_DISK
    decided = native.plain(messages_of(batch)).persist(cache)
    elements = decided.filter("plain").select(
        *MESSAGE_KEY, F.posexplode("elements").alias("idx", "element")
    )
    judged = elements.select(
        *MESSAGE_KEY, "idx", *native.reading(F.col("element"), latest_us)
    ).persist(cache)

    nothing = lambda kind: F.lit(None).cast(kind)  # noqa: E731
    readings = judged.filter("valid").select(
        F.lit("reading").alias("kind"),
        "device_id", "device_name", "time_us", "energy", "seq_a", "seq_p", "seq_b", "idx",
        *[nothing("string").alias(c) for c in ("reason", "detail", "source", "record")],
    )  # fmt: skip
    # A plain message with a refused reading: Python writes its dead letters (Spark broadcasts
    # the keys when they are few, as they are in a fleet's stream).
    refused = judged.filter("NOT valid").select(*MESSAGE_KEY).distinct()
    letters_only = decided.join(refused, MESSAGE_KEY, "left_semi").select(
        *MESSAGE_KEY, F.col("text").cast("binary").alias("value"), F.lit(True).alias("letters_only")
    )
    whole = decided.filter("NOT plain AND origin != 'control'").select(
        *MESSAGE_KEY,
        F.coalesce(F.col("value"), F.col("text").cast("binary")).alias("value"),
        F.lit(False).alias("letters_only"),
    )
    python = (
        whole.unionByName(letters_only)
        .mapInPandas(explode({"latest_us": latest_us}), PARSED_SCHEMA)
        .persist(cache)
    )
    control = decided.filter("origin = 'control'").select(
        F.lit("control").alias("kind"),
        *[nothing(t).alias(c) for c, t in (("device_id", "int"), ("device_name", "string"))],
        nothing("long").alias("time_us"),
        nothing("double").alias("energy"),
        "seq_a", "seq_p", "seq_b",
        *[nothing(t).alias(c) for c, t in (("idx", "int"), ("reason", "string"))],
        *[nothing("string").alias(c) for c in ("detail", "source", "record")],
    )  # fmt: skip
    return readings.unionByName(python).unionByName(control), [decided, judged, python]


class Totals:
    """What the run did, summed over its micro-batches (printed as the summary)."""

    def __init__(self):
        self.rows = 0
        self.files = 0
        self.dead_letters: dict[str, int] = {}
        self.duplicates = 0
        self.counter_resets = 0
        self.batches = 0

    def add_batch(self, files: list, letters: list[dict], duplicates: int) -> None:
        self.batches += 1
        self.files += len(files)
        self.rows += sum(file.rows for file in files)
        self.counter_resets += sum(file.resets for file in files)
        self.duplicates += duplicates
        for letter in letters:
            self.dead_letters[letter["reason"]] = self.dead_letters.get(letter["reason"], 0) + 1

    def as_dict(self) -> dict:
        return dict(self.__dict__)


WRITE_ORDER = [("date", "ascending"), ("device_id", "ascending"), ("time_us", "ascending")]


def partition_writer(output: str, batch_id: int):
    """mapInArrow function: one writer's rows of a batch to Parquet files (the task's
    partition number is the writer number in the file names); yields (path, rows, resets)."""
    from pyspark import TaskContext

    def write(batches):
        batches = [b for b in batches if b.num_rows]
        if not batches:
            return
        # Sorted by Arrow, not by Spark: one writer's rows are few. (device_id, time_us) is
        # unique among rows, so the order is total and the files deterministic.
        table = pa.Table.from_batches(batches).sort_by(WRITE_ORDER)
        writer = TaskContext.get().partitionId()
        for path, rows, resets in sink.write_row_files(output, batch_id, writer, table):
            yield pa.RecordBatch.from_pydict({"path": [path], "rows": [rows], "resets": [resets]})

    return write


def batch_processor(spark, args, totals: Totals):
    """foreachBatch function: the batch decoded by both tiers, offered to the devices' state
    of the batch before, rows and dead letters written under `output`, the new state kept."""
    from pyspark.sql import functions as F

    state_root = args.checkpoint.rstrip("/") + "/state"

    def process(batch, batch_id: int):
        parsed, cached = parse(batch, args.latest_us)
        facts = parsed.agg(
            F.max(F.when(F.col("kind") == "reading", F.col("time_us"))).alias("newest"),
            F.max((F.col("kind") == "control").cast("int")).alias("flush"),
        ).first()
        previous, front = devices.load_state(spark, state_root, batch_id)
        if facts["newest"] is not None:
            front = facts["newest"] if front is None else max(front, facts["newest"])
        if facts["flush"]:
            watermark = FLUSH_WATERMARK_US
        else:
            watermark = NO_WATERMARK_US if front is None else front - args.allowed_lateness
        outcome = devices.step(
            parsed.filter(F.col("kind") == "reading"), previous, watermark, args.partitions
        )
        rows = outcome.rows.withColumn(
            "date", F.date_format(F.timestamp_micros("time_us"), "yyyy-MM-dd")
        )
        files = rows.mapInArrow(
            partition_writer(args.output, batch_id), "path string, rows long, resets long"
        ).collect()
        decoded = parsed.filter(F.col("kind") == "dead_letter").select(
            "reason", "detail", "source", "idx", "record"
        )
        letters = [r.asDict() for r in decoded.unionByName(outcome.letters).collect()]
        letters.sort(key=lambda r: (tuple(json.loads(r["source"]).values()), r["idx"] or -1))
        sink.write_dead_letters(args.output, batch_id, letters)
        duplicates = outcome.duplicates.count()
        devices.save_state(spark, outcome.state, front, state_root, batch_id)
        devices.prune_state(state_root, batch_id)
        outcome.release()
        for frame in cached:
            frame.unpersist()
        totals.add_batch(files, letters, duplicates)
        log.info("batch %d: %d files, %d dead letters", batch_id, len(files), len(letters))

    return process


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
        # The decoding's whole-stage code is above the JVM's 8,000-byte limit for compiling a
        # method; left to the interpreter, the job took 160 s instead of 119 s (docs/spark.md).
        .config("spark.driver.extraJavaOptions", HUGE_METHODS)
        .config("spark.executor.extraJavaOptions", HUGE_METHODS)
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


def build_query(spark, args, control_dir: str, totals: Totals):
    from pyspark.sql import functions as F

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
    writer = raw.unionByName(control).writeStream.foreachBatch(
        batch_processor(spark, args, totals)
    )
    return writer.option("checkpointLocation", sink.spark_path(args.checkpoint))


def run_once(spark, args, control_dir: str, totals: Totals, available_now: bool) -> None:
    writer = build_query(spark, args, control_dir, totals)
    if available_now:
        writer = writer.trigger(availableNow=True)
    else:
        writer = writer.trigger(processingTime=args.trigger_interval)
    writer.start().awaitTermination()


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
    control = args.checkpoint.rstrip("/") + "/control"
    control_dir = sink.spark_path(control)
    spark = session(args)
    store, root = sink.filesystem(control)
    store.create_dir(root, recursive=True)

    def flush() -> None:
        """End of a bounded input: the batch with a control row emits every waiting reading."""
        with store.open_output_stream(f"{root}/flush-{int(time.time() * 1000)}") as stream:
            stream.write(b"flush")

    totals = Totals()
    # Without a per-trigger limit a bounded run is one micro-batch: the control row joins it,
    # and that batch flushes (all its readings are offered before any is emitted, so the rows
    # are those of a flush one batch later, without a second query).
    one_batch = not (args.max_files_per_trigger or args.max_offsets_per_trigger)
    if args.stop_when_drained and one_batch:
        flush()
    run_once(spark, args, control_dir, totals, available_now=args.stop_when_drained)
    if args.stop_when_drained and not one_batch:
        flush()
        run_once(spark, args, control_dir, totals, available_now=True)
    summary = totals.as_dict() | {"seconds": round(time.monotonic() - started, 3)}
    print(json.dumps(summary, sort_keys=True))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
