"""Runs every example query of docs/analytics.md through `meterflow query` and DuckDB on a
transform output, and compares both answers with values computed here from the generated
input (sort each device's readings, take differences: contract §3 on a clean input).

Usage: check_queries.py METERFLOW_BIN INPUT.jsonl OUTPUT_DIR
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import re
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np

DOC = Path(__file__).resolve().parent.parent / "docs" / "analytics.md"
GAP_MINUTES = 15


def f32(value: float) -> float:
    return float(np.float32(value))


def doc_queries() -> dict[str, str]:
    """The `-- query: NAME` SQL blocks of the analytics guide."""
    blocks = re.findall(r"```sql\n-- query: (\w+)\n(.*?)```", DOC.read_text(), re.DOTALL)
    return {name: sql.strip() for name, sql in blocks}


def expected_rows(input_path: str) -> list[tuple]:
    """(device_id, time, duration, delta_energy) per reading, computed from the input."""
    per_device = collections.defaultdict(list)
    for line in open(input_path, encoding="utf-8"):
        if not line.strip():
            continue
        for reading in json.loads(line)["measurements"]:
            time = datetime.fromisoformat(reading["time"].replace("Z", "+00:00"))
            per_device[reading["device_id"]].append(
                (time.astimezone(timezone.utc), float(reading["cumulative_energy"]))
            )
    rows = []
    for device, readings in per_device.items():
        readings.sort()
        previous = None
        for time, energy in readings:
            duration = delta = None
            if previous is not None:
                duration = f32((time - previous[0]) / timedelta(minutes=1))
                delta = None if energy < previous[1] else f32(energy - previous[1])
            rows.append((device, time, duration, delta))
            previous = (time, energy)
    return rows


def add(total, value):
    """SQL's sum: NULLs ignored, NULL when every value is."""
    if value is None:
        return total
    return value if total is None else total + value


def expected_answers(rows: list[tuple]) -> dict[str, list[tuple]]:
    per_day = {}
    per_device_two_days = {}
    profile = {}
    first_day, second_day = date(2022, 7, 11), date(2022, 7, 12)
    for device, time, _, delta in rows:
        day = time.date()
        per_day[(device, day)] = add(per_day.get((device, day)), delta)
        if first_day <= day <= second_day:
            per_device_two_days[device] = add(per_device_two_days.get(device), delta)
        if day == first_day:
            bucket = (time.replace(minute=0, second=0, microsecond=0), time.minute // 15 * 15)
            kwh, count = profile.get(bucket, (None, 0))
            profile[bucket] = (add(kwh, delta), count + 1)
    top = sorted(per_device_two_days.items(), key=lambda item: (-(item[1] or 0), item[0]))[:10]
    return {
        "energy_per_device_per_day": sorted((d, day, kwh) for (d, day), kwh in per_day.items()),
        "top_consumers": top,
        "load_profile_15_minutes": sorted((h, q, kwh, n) for (h, q), (kwh, n) in profile.items()),
        "gaps": sorted(
            (d, t, dur) for d, t, dur, _ in rows if dur is not None and dur > GAP_MINUTES
        ),
        "counter_resets": sorted(
            (d, t, dur) for d, t, dur, delta in rows if delta is None and dur is not None
        ),  # fmt: skip
    }


def normalize(value):
    """Engine values to comparable Python ones: UTC datetimes, dates, ints, floats."""
    if isinstance(value, datetime):
        return (
            value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)
        )
    if isinstance(value, str):
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return date.fromisoformat(value)
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}[T ][\d:.]+(Z|[+-]\d{2}(:?\d{2})?)?", value):
            return normalize(datetime.fromisoformat(value.replace("Z", "+00:00")))
        if re.fullmatch(r"-?\d+", value):
            return int(value)
        if value == "":
            return None
        return float(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return value  # compared with tolerance below
    return value


def same(got, want, rel_tol: float) -> bool:
    if isinstance(want, float) or isinstance(got, float):
        if got is None or want is None:
            return got is want
        return math.isclose(float(got), float(want), rel_tol=rel_tol, abs_tol=1e-6)
    return got == want


def compare(
    engine: str, name: str, got: list[tuple], want: list[tuple], rel_tol: float = 1e-9
) -> None:
    """Exits with the first difference; floats equal within `rel_tol`."""
    got = [tuple(normalize(v) for v in row) for row in got]

    def equal(g, w) -> bool:
        return len(g) == len(w) and all(same(a, b, rel_tol) for a, b in zip(g, w))

    if len(got) != len(want) or not all(equal(g, w) for g, w in zip(got, want)):
        difference = next(((g, w) for g, w in zip(got, want) if not equal(g, w)), None)
        sys.exit(
            f"{engine} {name}: {len(got)} rows, expected {len(want)}; first difference {difference}"
        )


def meterflow_query(binary: str, output: str, sql: str) -> list[tuple]:
    done = subprocess.run(
        [binary, "query", "--data", output, "--format", "csv", sql],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"meterflow query failed:\n{sql}\n{done.stderr}")
    rows = list(csv.reader(io.StringIO(done.stdout)))
    return [tuple(row) for row in rows[1:]]


def main(binary: str, input_path: str, output: str) -> None:
    queries = doc_queries()
    wanted = expected_answers(expected_rows(input_path))
    missing = set(wanted) ^ set(queries)
    if missing:
        sys.exit(f"docs/analytics.md and this check disagree on the queries: {sorted(missing)}")
    for name in ("gaps", "counter_resets"):
        if not wanted[name]:
            sys.exit(f"the generated fleet has no {name}: the check would prove nothing")

    duck = duckdb.connect()
    duck.execute("SET TimeZone = 'UTC'")
    duck.execute(
        "CREATE VIEW readings AS SELECT * FROM read_parquet("
        f"'{output}/date=*/*.parquet', hive_partitioning = true)"
    )
    for name, sql in queries.items():
        compare("meterflow query", name, meterflow_query(binary, output, sql), wanted[name])
        compare("DuckDB", name, duck.execute(sql).fetchall(), wanted[name])
        print(f"query {name}: {len(wanted[name])} rows, meterflow query = DuckDB = expected")


if __name__ == "__main__":
    main(*sys.argv[1:])
