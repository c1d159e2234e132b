"""contract §3 per device over one micro-batch, in Spark SQL (window functions, no Python per
row), with the state between batches kept as Parquet in the checkpoint directory.

The rules are meterflow's `deltas.rs` (and the Python model in deltas.py): readings wait until
the watermark passes them, then become rows in time order with duration and delta computed in
f64 and rounded once to f32; the first reading of a device gets nulls, a counter that goes down
a null delta; a repeat of an accepted (device, time) is a duplicate or `conflicting_duplicate`;
a reading older than its device's last emitted one is `late`. Within a batch every reading is
offered before any is emitted: lateness is judged once per batch (docs/spark.md, difference 1).

State per device, written under the batch id (`STATE/batch=<id>`): the last emitted reading
(`last`, the next delta's baseline) and the waiting readings (`pending`), plus one `front` row,
the newest event time seen so far. A batch reads the state of the newest batch before it, so a
batch Spark runs again after a failure starts from the same state and writes the same state.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs as pafs
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from meterflow_spark import sink

MICROS_PER_MINUTE = 60_000_000
STATE_SCHEMA = "kind string, device_id int, device_name string, time_us long, energy double"
# Input order of a batch's readings: earlier batches' waiting readings first, then file (or
# topic), partition, line (or offset), element.
ORDER = ["origin_rank", "seq_a", "seq_p", "seq_b", "idx"]


@dataclass
class Step:
    """One batch's outcome: `rows` (device_id, device_name, time_us, duration, delta_energy,
    counter_reset), `letters` (reason, detail, source, idx, record), the number of duplicates,
    and the `state` to keep for the next batch."""

    rows: DataFrame
    letters: DataFrame
    duplicates: DataFrame
    state: DataFrame
    cached: list[DataFrame]

    def release(self) -> None:
        for frame in self.cached:
            frame.unpersist()


def source(seq_a, seq_p, seq_b):
    """A reading's `source` as meterflow writes it: file and line, or topic, partition, offset."""
    return F.when(
        seq_p == -1, F.to_json(F.struct(seq_a.alias("file"), seq_b.alias("line")))
    ).otherwise(
        F.to_json(
            F.struct(seq_a.alias("topic"), seq_p.alias("partition"), seq_b.alias("offset"))
        )
    )


def element_json(device_id, name, micros, energy):
    """A refused reading rebuilt as JSON from its fields (the original text is not kept)."""
    time = F.date_format(F.timestamp_micros(micros), "yyyy-MM-dd'T'HH:mm:ss.SSSSSS'Z'")
    return F.to_json(
        F.struct(
            device_id.alias("device_id"),
            name.alias("device_name"),
            time.alias("time"),
            energy.alias("cumulative_energy"),
        )
    )


def step(readings: DataFrame, previous: DataFrame, watermark_us: int, partitions: int) -> Step:
    """Offers `readings` (kind reading rows of the parsed batch) to the devices of `previous`
    and emits every waiting reading with time <= `watermark_us`."""
    values = ["device_id", "device_name", "time_us", "energy"]
    no_position = [
        F.lit(None).cast(kind).alias(name)
        for name, kind in (("seq_a", "string"), ("seq_p", "int"), ("seq_b", "long"), ("idx", "int"))
    ]
    kept = lambda kind, rank: previous.filter(F.col("kind") == kind).select(  # noqa: E731
        *values, F.lit(rank).alias("origin_rank"), *no_position
    )
    last, pending = kept("last", -1), kept("pending", 0)
    offered = readings.select(*values, F.lit(1).alias("origin_rank"), *ORDER[1:])
    everything = last.unionByName(pending).unionByName(offered).repartition(
        partitions, "device_id"
    )

    # Every window below is over the device's readings in (time, input order), so Spark sorts
    # the batch once (docs/spark.md, "Cost").
    same_time = Window.partitionBy("device_id", "time_us").orderBy(*ORDER)
    device = Window.partitionBy("device_id")
    earlier = device.orderBy("time_us", *ORDER).rowsBetween(Window.unboundedPreceding, -1)
    base = F.col("origin_rank") == -1
    ranked = (
        everything.withColumn("rank", F.row_number().over(same_time))
        .withColumn("first_energy", F.first("energy").over(same_time))
        .withColumn("last_time", F.max(F.when(base, F.col("time_us"))).over(device))
        .withColumn("last_energy", F.max(F.when(base, F.col("energy"))).over(device))
    )
    # Past `late` and the baseline's own time, no baseline shares the reading's time, so the
    # (device, time) group holds offered readings only, in input order.
    at_last = F.col("time_us") == F.col("last_time")
    outcome = (
        F.when(base, "last")
        .when(F.col("time_us") < F.col("last_time"), "late")
        .when(at_last & (F.col("energy") == F.col("last_energy")), "duplicate")
        .when(at_last, "conflicting_duplicate")
        .when(F.col("rank") == 1, "accepted")
        .when(F.col("energy") == F.col("first_energy"), "duplicate")
        .otherwise("conflicting_duplicate")
    )
    accepted = F.col("outcome") == "accepted"
    ready = accepted & (F.col("time_us") <= watermark_us)
    # The device's series: its baseline, then the readings emitted now, in time order (one
    # accepted reading per time); each row's previous one is the last series row before it.
    series = base | ready
    in_series = lambda column: F.when(series, F.col(column))  # noqa: E731
    judged = (
        ranked.withColumn("outcome", outcome)
        .withColumn("previous_time", F.last(in_series("time_us"), True).over(earlier))
        .withColumn("previous_energy", F.last(in_series("energy"), True).over(earlier))
        .withColumn("series_end", F.max(in_series("time_us")).over(device))
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    rows = judged.filter(ready).select(
        "device_id",
        "device_name",
        "time_us",
        ((F.col("time_us") - F.col("previous_time")) / MICROS_PER_MINUTE)
        .cast("float")
        .alias("duration"),
        F.when(
            F.col("energy") >= F.col("previous_energy"),
            (F.col("energy") - F.col("previous_energy")).cast("float"),
        ).alias("delta_energy"),
        (F.col("energy") < F.col("previous_energy")).alias("counter_reset"),
    )

    refused = judged.filter(F.col("outcome").isin("late", "conflicting_duplicate"))
    letters = refused.select(
        F.col("outcome").alias("reason"),
        F.when(
            F.col("outcome") == "late",
            F.format_string(
                "older than the device's last emitted reading (%d µs)", F.col("last_time")
            ),
        )
        .otherwise(
            F.format_string(
                "energy %s differs from accepted %s",
                F.col("energy").cast("string"),
                F.coalesce(
                    F.when(at_last, F.col("last_energy")), F.col("first_energy")
                ).cast("string"),
            )
        )
        .alias("detail"),
        source(F.col("seq_a"), F.col("seq_p"), F.col("seq_b")).alias("source"),
        "idx",
        element_json(
            F.col("device_id"), F.col("device_name"), F.col("time_us"), F.col("energy")
        ).alias("record"),
    )
    duplicates = judged.filter(F.col("outcome") == "duplicate")

    kept_last = judged.filter(series & (F.col("time_us") == F.col("series_end"))).select(
        F.lit("last").alias("kind"), "device_id", "device_name", "time_us", "energy"
    )
    waiting = judged.filter(accepted & (F.col("time_us") > watermark_us)).select(
        F.lit("pending").alias("kind"), "device_id", "device_name", "time_us", "energy"
    )
    state = kept_last.unionByName(waiting)
    return Step(rows, letters, duplicates, state, [judged])


def state_directory(root: str, batch_id: int) -> str:
    return f"{root.rstrip('/')}/batch={batch_id:08d}"


def kept_batches(root: str) -> list[int]:
    """The batch ids with a state directory under `root`, in order."""
    store, path = sink.filesystem(root)
    found = store.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(
        int(info.base_name[len("batch=") :])
        for info in found
        if info.type == pafs.FileType.Directory and info.base_name.startswith("batch=")
    )


def load_state(spark: SparkSession, root: str, batch_id: int) -> tuple[DataFrame, int | None]:
    """The state the newest batch before `batch_id` kept, and the event-time front it saw
    (None: no batch yet)."""
    earlier = [kept for kept in kept_batches(root) if kept < batch_id]
    if not earlier:
        return spark.createDataFrame([], STATE_SCHEMA), None
    location = sink.spark_path(state_directory(root, earlier[-1]))
    state = spark.read.schema(STATE_SCHEMA).parquet(location)
    front = state.filter(F.col("kind") == "front").first()
    return state, front["time_us"] if front else None


def save_state(spark: SparkSession, state: DataFrame, front: int | None, root: str, batch_id: int):
    """The state after `batch_id`, overwriting what an earlier attempt of the batch wrote."""
    marker = spark.createDataFrame([("front", None, None, front, None)], STATE_SCHEMA)
    state.unionByName(marker).write.mode("overwrite").parquet(
        sink.spark_path(state_directory(root, batch_id))
    )


def prune_state(root: str, batch_id: int) -> None:
    """Deletes the states older than the one `batch_id` read: a replay of `batch_id` needs
    only that one (and later batches only `batch_id`'s)."""
    earlier = [kept for kept in kept_batches(root) if kept < batch_id]
    store, _ = sink.filesystem(root)
    for old in earlier[:-1]:
        store.delete_dir(sink.filesystem(state_directory(root, old))[1])
