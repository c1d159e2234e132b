"""contract §3 for one device in plain Python: the model the Spark job's SQL step
(devices.py) is tested against.

The per-device rules are meterflow's `deltas.rs`: readings wait in a time-ordered buffer until
the watermark passes them, then become rows with duration and delta computed in f64 and rounded
once to f32; the first reading gets nulls, a counter that goes down a null delta; a repeat of an
accepted (device, time) is a duplicate or a `conflicting_duplicate`; a reading older than the
device's last emitted one is `late`.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field

import numpy as np

MICROS_PER_MINUTE = 60_000_000

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


def source_json(**fields) -> str:
    """A dead letter's `source`, spelled as Spark's `to_json` spells the native tier's."""
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
