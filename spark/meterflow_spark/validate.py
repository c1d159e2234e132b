"""contract §2 in Python: one input message (bytes) into valid readings and dead letters.

A port of meterflow's `reading.rs`/`timestamp.rs` rules, reason codes and their order, so the
Spark job refuses exactly what `meterflow transform` refuses. Python's `json` parses numbers
to correctly rounded floats (like serde_json's `float_roundtrip`), keeps the last of repeated
keys, and with `parse_constant` refuses NaN/Infinity as JSON does.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from dataclasses import dataclass

# JSON integers of any length, as serde_json reads them (Python refuses over 4,300 digits).
sys.set_int_max_str_digits(0)

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MICROS_PER_SECOND = 1_000_000
# The same `detail` wording as meterflow where it matters to a reader.
TIME_SHAPE = re.compile(
    rb"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(.*)", re.DOTALL
)
OFFSET = re.compile(rb"([+-])(\d{2}):?(\d{2})")


class Refused(Exception):
    """A reading or message broke a rule: its reason code and a readable detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Reading:
    device_id: int
    device_name: str
    time_us: int
    energy: float
    index: int


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    detail: str
    index: int | None
    record: str


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def _strings_encodable(value) -> bool:
    """JSON escapes can spell lone surrogates, which are not UTF-8 (serde_json refuses them)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(_strings_encodable(k) and _strings_encodable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_strings_encodable(v) for v in value)
    return True


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (any year 0000–9999)."""
    year -= month <= 2
    era = year // 400
    year_of_era = year - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return era * 146097 + day_of_era - 719468


def _days_in_month(year: int, month: int) -> int:
    if month == 2:
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        return 29 if leap else 28
    return 30 if month in (4, 6, 9, 11) else 31


@functools.lru_cache(maxsize=1 << 16)
def parse_time_us(text: str) -> int:
    """`YYYY-MM-DD[T|t| ]HH:MM:SS[.f{1,9}][Z|z|±hh:mm|±hhmm]` to UTC µs; no offset is UTC;
    the fraction is truncated to microseconds. A fleet's readings share their few time
    strings, so results are cached."""
    raw = text.encode("utf-8")
    if len(raw) < 19:
        raise Refused("invalid_time", f"time is too short for YYYY-MM-DDTHH:MM:SS: {text!r}")
    shape = TIME_SHAPE.fullmatch(raw)
    if not shape:
        raise Refused("invalid_time", f"time is not of the form YYYY-MM-DDTHH:MM:SS: {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in shape.groups()[:6])
    fraction, rest = shape.group(7), shape.group(8)
    if hour > 23 or minute > 59 or second > 59:
        raise Refused("invalid_time", f"time of day is out of range: {text!r}")
    if not 1 <= month <= 12 or not 1 <= day <= _days_in_month(year, month):
        raise Refused("invalid_time", f"no such calendar date: {text!r}")
    if fraction is not None and len(fraction) > 9:
        raise Refused("invalid_time", f"fraction of a second must have 1 to 9 digits: {text!r}")
    if fraction is None and rest.startswith(b"."):
        raise Refused("invalid_time", f"fraction of a second must have 1 to 9 digits: {text!r}")
    micros = int((fraction or b"0")[:6].ljust(6, b"0"))
    if rest in (b"", b"Z", b"z"):
        offset = 0
    else:
        parts = OFFSET.fullmatch(rest)
        if not parts:
            raise Refused(
                "invalid_time", f"time has an unreadable offset (expected Z or ±hh:mm): {text!r}"
            )
        sign, hh, mm = parts.group(1), int(parts.group(2)), int(parts.group(3))
        if hh > 23 or mm > 59:
            raise Refused("invalid_time", f"time offset is out of range: {text!r}")
        offset = (hh * 3600 + mm * 60) * (-1 if sign == b"-" else 1)
    seconds = _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second
    return (seconds - offset) * MICROS_PER_SECOND + micros


def _describe(field: str, value, present: bool, expected: str) -> str:
    if not present:
        return f"{field} is missing"
    return f"{field} is {json.dumps(value, ensure_ascii=False)}, expected {expected}"


def validate_reading(element, index: int, latest_time_us: int) -> Reading:
    """contract §2's table in order: the first failing rule gives the reason."""
    if not isinstance(element, dict):
        kind = "an array" if isinstance(element, list) else json.dumps(element)
        raise Refused("invalid_reading", f"measurement is {kind}, not an object")
    device_id = element.get("device_id")
    if (
        not isinstance(device_id, int)
        or isinstance(device_id, bool)
        or not INT32_MIN <= device_id <= INT32_MAX
    ):
        raise Refused(
            "invalid_device_id",
            _describe("device_id", device_id, "device_id" in element, "an integer in Int32 range"),
        )
    name = element.get("device_name")
    if not isinstance(name, str):
        raise Refused(
            "invalid_device_name",
            _describe("device_name", name, "device_name" in element, "a string"),
        )
    time = element.get("time")
    if not isinstance(time, str):
        raise Refused(
            "invalid_time", _describe("time", time, "time" in element, "an RFC 3339 string")
        )
    time_us = parse_time_us(time)
    energy = element.get("cumulative_energy")
    if isinstance(energy, bool) or not isinstance(energy, (int, float)):
        energy = None
    else:
        try:
            energy = float(energy)  # integers round to the nearest f64, as `as f64` does
        except OverflowError:
            energy = None
    if energy is None or not math.isfinite(energy) or energy < 0:
        raise Refused(
            "invalid_energy",
            _describe(
                "cumulative_energy",
                element.get("cumulative_energy"),
                "cumulative_energy" in element,
                "a finite number >= 0",
            ),
        )
    if time_us > latest_time_us:
        raise Refused("future_time", f"time {time} is after the latest accepted time")
    return Reading(device_id, name, time_us, energy, index)


def decode_message(line: bytes, latest_time_us: int) -> tuple[list[Reading], list[DeadLetter]]:
    """One message: its valid readings and its dead letters (index None: the whole message)."""
    try:
        text = line.decode("utf-8")
        message = json.loads(text, parse_constant=_no_constants)
        if "\\u" in text and not _strings_encodable(message):
            raise ValueError("a string holds a lone surrogate")
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        record = line.decode("utf-8", errors="replace")
        return [], [DeadLetter("invalid_json", f"not JSON: {error}", None, record)]
    if not isinstance(message, dict) or not isinstance(message.get("measurements"), list):
        detail = (
            "message is not a JSON object"
            if not isinstance(message, dict)
            else "message has no array `measurements`"
        )
        return [], [DeadLetter("missing_measurements", detail, None, text)]
    readings, letters = [], []
    for index, element in enumerate(message["measurements"]):
        try:
            readings.append(validate_reading(element, index, latest_time_us))
        except Refused as refused:
            record = json.dumps(element, ensure_ascii=False, separators=(",", ":"))
            letters.append(DeadLetter(refused.reason, refused.detail, index, record))
    return readings, letters


def split_lines(content: bytes):
    """(1-based line number, message bytes) of the non-blank lines, surrounding ASCII white
    space removed (a CR of CRLF files included), as `meterflow transform` reads files."""
    for number, line in enumerate(content.split(b"\n"), start=1):
        stripped = line.strip(b" \t\r\n\x0c")  # Rust's is_ascii_whitespace
        if stripped:
            yield number, stripped
