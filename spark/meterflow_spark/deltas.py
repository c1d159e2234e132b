"""contract §3 per device, as Spark's stateful function (`applyInPandasWithState`).

The per-device rules are meterflow's `deltas.rs`: readings wait in a time-ordered buffer until
the watermark passes them, then become rows with duration and delta computed in f64 and rounded
once to f32; the first reading gets nulls, a counter that goes down a null delta; a repeat of an
accepted (device, time) is a duplicate or a `conflicting_duplicate`; a reading older than the
device's last emitted one is `late`. What differs is the watermark: Spark's (see docs/spark.md).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

MICROS_PER_MINUTE = 60_000_000

# Rows out of the stateful operator: data rows, dead letters, and counters.
OUTPUT_SCHEMA = (
    "kind string, device_id int, device_name string, time_us long, duration float, "
    "delta_energy float, reason string, detail string, source string, idx int, "
    "record string, count long"
)
# Per device: the waiting readings, and the last emitted one (the next delta's baseline).
STATE_SCHEMA = (
    "pending_time array<long>, pending_energy array<double>, pending_name array<string>, "
    "has_last boolean, last_time long, last_energy double"
)
OUTPUT_COLUMNS = [part.strip().split(" ")[0] for part in OUTPUT_SCHEMA.split(",")]
# pandas dtypes that keep nulls in integer and f32 columns on their way to Arrow.
OUTPUT_DTYPES = {
    "kind": "string",
    "device_id": "Int32",
    "device_name": "string",
    "time_us": "Int64",
    "duration": "Float32",
    "delta_energy": "Float32",
    "reason": "string",
    "detail": "string",
    "source": "string",
    "idx": "Int32",
    "record": "string",
    "count": "Int64",
}


def typed(frame: pd.DataFrame) -> pd.DataFrame:
    """The output columns, in order, with the dtypes of [`OUTPUT_SCHEMA`]."""
    return frame.reindex(columns=OUTPUT_COLUMNS).astype(OUTPUT_DTYPES)


def output_frame(out: list[dict]) -> pd.DataFrame:
    """Output records as a frame of [`OUTPUT_SCHEMA`], built column by column (cheaper than
    a frame of objects converted afterwards: this runs once per device and batch)."""
    return pd.DataFrame(
        {
            name: pd.array([record.get(name) for record in out], dtype=dtype)
            for name, dtype in OUTPUT_DTYPES.items()
        }
    )


def f32(value: float) -> float:
    """Rounds an f64 to the nearest f32, as Rust's `as f32` does."""
    return float(np.float32(value))


@dataclass
class Device:
    """One device's state: readings waiting for the watermark, and the last emitted one."""

    pending: list[tuple[int, float, str]] = field(default_factory=list)
    last_time: int | None = None
    last_energy: float = 0.0

    def emit_until(self, until_us: int, out: list[dict], device_id: int) -> int:
        """Emits waiting readings with time <= `until_us`, oldest first; returns the number of
        counter resets among them."""
        ready = bisect.bisect_right(self.pending, until_us, key=lambda p: p[0])
        resets = 0
        for time_us, energy, name in self.pending[:ready]:
            duration = delta = None
            if self.last_time is not None:
                duration = f32((time_us - self.last_time) / MICROS_PER_MINUTE)
                if energy < self.last_energy:
                    resets += 1
                else:
                    delta = f32(energy - self.last_energy)
            self.last_time, self.last_energy = time_us, energy
            out.append(
                {
                    "kind": "row",
                    "device_id": device_id,
                    "device_name": name,
                    "time_us": time_us,
                    "duration": duration,
                    "delta_energy": delta,
                }
            )
        del self.pending[:ready]
        return resets

    def offer(self, time_us: int, energy: float, name: str) -> tuple[str, str | None]:
        """Takes a valid reading: `accepted`, `duplicate`, or a dead-letter reason + detail."""
        if self.last_time is not None and time_us <= self.last_time:
            if time_us < self.last_time:
                return "late", f"older than the device's last emitted reading ({self.last_time} µs)"
            return _same_time(self.last_energy, energy)
        at = bisect.bisect_left(self.pending, time_us, key=lambda p: p[0])
        if at < len(self.pending) and self.pending[at][0] == time_us:
            return _same_time(self.pending[at][1], energy)
        self.pending.insert(at, (time_us, energy, name))
        return "accepted", None

    def to_state(self) -> tuple:
        return (
            [p[0] for p in self.pending],
            [p[1] for p in self.pending],
            [p[2] for p in self.pending],
            self.last_time is not None,
            self.last_time if self.last_time is not None else 0,
            self.last_energy,
        )

    @classmethod
    def from_state(cls, state: tuple) -> Device:
        times, energies, names, has_last, last_time, last_energy = state
        pending = [(int(t), float(e), str(n)) for t, e, n in zip(times, energies, names)]
        return cls(pending, int(last_time) if has_last else None, float(last_energy))


def _same_time(accepted: float, offered: float) -> tuple[str, str | None]:
    if accepted == offered:
        return "duplicate", None
    return "conflicting_duplicate", f"energy {offered!r} differs from accepted {accepted!r}"


def process_group(key, frames, state):
    """The function for `applyInPandasWithState` (append mode, event-time timeout).

    Key `None` collects what is not a device's reading — dead letters found while decoding and
    the control rows that end a bounded run — and passes the dead letters through. A device's
    group offers its new readings in input order, emits what the watermark passed, and sets a
    timeout at its oldest waiting reading so a quiet device is emitted too.
    """
    (device_id,) = key
    if device_id is None or pd.isna(device_id):  # the null key arrives as NaN
        for frame in frames:
            letters = frame[frame["kind"] == "dead_letter"]
            if len(letters):
                yield typed(letters)
        return

    device = Device.from_state(state.get) if state.exists else Device()
    watermark_us = state.getCurrentWatermarkMs() * 1000
    out: list[dict] = []
    resets = duplicates = 0
    if not state.hasTimedOut:
        columns = ["seq_a", "seq_p", "seq_b", "idx", "time_us", "energy", "device_name", "source"]
        readings = []
        for frame in frames:
            readings.extend(zip(*(frame[c].tolist() for c in columns)))
        readings.sort(key=lambda r: r[:4])  # input order: file/topic, partition, line/offset
        resets += device.emit_until(watermark_us, out, int(device_id))
        for _, _, _, idx, time_us, energy, name, source in readings:
            outcome, detail = device.offer(int(time_us), float(energy), name)
            if outcome == "duplicate":
                duplicates += 1
            elif outcome != "accepted":
                out.append(
                    {
                        "kind": "dead_letter",
                        "reason": outcome,
                        "detail": detail,
                        "source": source,
                        "idx": int(idx),
                        "record": element_text(int(device_id), time_us, energy, name),
                        "device_id": int(device_id),
                    }
                )
    resets += device.emit_until(watermark_us, out, int(device_id))
    for kind, count in (("duplicate", duplicates), ("counter_reset", resets)):
        if count:
            out.append({"kind": kind, "count": count})

    state.update(device.to_state())
    if device.pending:
        # Spark times a group out once its watermark is *past* the timestamp; a reading is
        # ready when the watermark (ms) reaches its time (µs).
        oldest_ms = -(-device.pending[0][0] // 1000)
        state.setTimeoutTimestamp(max(oldest_ms - 1, state.getCurrentWatermarkMs()))
    if out:
        yield output_frame(out)


def element_text(device_id: int, time_us: int, energy: float, name: str) -> str:
    """A refused reading's element as JSON text (re-serialized: the original spacing and
    number spelling are not kept through Spark's columns)."""
    seconds, micros = divmod(int(time_us), 1_000_000)
    time = datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    element = {
        "device_id": device_id,
        "device_name": name,
        "time": f"{time}.{micros:06d}Z" if micros else f"{time}Z",
        "cumulative_energy": float(energy),
    }
    return json.dumps(element, ensure_ascii=False, separators=(",", ":"))


def source_json(**fields) -> str:
    return json.dumps(fields, separators=(",", ":"))
