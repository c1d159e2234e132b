"""contract §2's common case in Spark SQL: messages decoded and validated by `from_json` with an
explicit schema and column expressions, with no Python per row.

Two tiers, like meterflow's own decoder. This one answers only a message it can decide exactly:
every element a valid reading, in the plain shape below. Everything else goes whole to the
Python port of the rules (validate.py, through `explode` in job.py), which also writes every
dead letter of §2, so the tiers never answer the same message and never disagree
(tests/test_native.py generates the edge cases and requires both to agree where this one
answers). A message is routed to Python when:

- it is not valid UTF-8, or holds a `\\u` escape (lone surrogates, keys spelled with escapes);
- it does not start with `{"measurements":[` and end with `]}` with no other `[` or `]` in it
  (so nothing follows the object, which from_json would ignore);
- `device_name` or `time` is not followed by `:"` wherever it occurs (Spark turns a number,
  boolean or object where a string belongs into text);
- `from_json` cannot parse it with the element schema, with Spark's single quotes and
  `NaN`/`INF`/`Infinity` turned off (the contract refuses them as invalid JSON), or an element
  lacks one of the four fields. Repeated keys agree: both tiers keep the last;
- a reading breaks a rule: device id outside Int32, an unusual or invalid time, energy below
  zero or not finite, time after the latest accepted one.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
ELEMENT_SCHEMA = "device_id long, device_name string, time string, cumulative_energy double"
MESSAGE_SCHEMA = f"measurements array<struct<{ELEMENT_SCHEMA}>>, _corrupt_record string"
TIME_FORM = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(Z|z|[+-][0-9]{2}:?[0-9]{2})?\z"
)  # `\z`: Java's `$` also matches before a final line break
# Escapes of any code point (lone surrogates, keys spelled with escapes) are Python's to judge.
ESCAPE = "\\u"
# Jackson's leniencies Spark turns on, turned off: a message with a single-quoted key or value,
# or NaN/INF/Infinity anywhere (in a field the schema skips too), is then not plain.
JSON_OPTIONS = {"allowSingleQuotes": "false", "allowNonNumericNumbers": "false"}
# A key that must hold a string, followed by something else: Spark would turn the number,
# boolean or object into text where the contract refuses it.
NOT_A_STRING = r'"(?:device_name|time)"(?!:")'
MESSAGE_START = '{"measurements":['
MESSAGE_END = "]}"


def time_us(text: Column) -> tuple[Column, Column]:
    """(µs since the epoch, valid?) of an RFC 3339 time in the form validate.py accepts;
    valid is false for any other text (Python then decides, with its own detail)."""
    # Spark's ANSI mode fails a query on a bad cast: `try_cast` gives null instead.
    part = lambda start, length: F.substring(text, start, length).try_cast("long")  # noqa: E731
    year, month, day = part(1, 4), part(6, 2), part(9, 2)
    hour, minute, second = part(12, 2), part(15, 2), part(18, 2)
    tail = F.substring(text, 20, 64)
    fraction = F.regexp_extract(tail, r"^\.([0-9]+)", 1)
    offset = F.regexp_extract(tail, r"[+-][0-9]{2}:?[0-9]{2}\z", 0)
    offset_hours = F.substring(offset, 2, 2).try_cast("long")
    offset_minutes = F.substring(offset, -2, 2).try_cast("long")
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    month_days = (
        F.when(month == 2, F.when(leap, 29).otherwise(28))
        .when(month.isin(4, 6, 9, 11), 30)
        .otherwise(31)
    )
    shape = text.rlike(TIME_FORM)
    valid = (
        shape
        & (hour <= 23)
        & (minute <= 59)
        & (second <= 59)
        & month.between(1, 12)
        & (day >= 1)
        & (day <= month_days)
        & ((offset == "") | ((offset_hours <= 23) & (offset_minutes <= 59)))
    )
    # Days from 1970-01-01 of a proleptic Gregorian date (validate._days_from_civil).
    shifted = year - F.when(month <= 2, 1).otherwise(0)
    era = F.floor(shifted / 400)
    year_of_era = shifted - era * 400
    day_of_year = F.floor(
        (153 * (month + F.when(month > 2, -3).otherwise(9)) + 2) / 5
    ) + (day - 1)
    day_of_era = (
        year_of_era * 365
        + F.floor(year_of_era / 4)
        - F.floor(year_of_era / 100)
        + day_of_year
    )
    days = era * 146097 + day_of_era - 719468
    offset_seconds = F.when(offset == "", 0).otherwise(
        (offset_hours * 3600 + offset_minutes * 60)
        * F.when(F.substring(offset, 1, 1) == "-", -1).otherwise(1)
    )
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - offset_seconds
    micros = F.rpad(F.substring(fraction, 1, 6), 6, "0").try_cast("long")
    return F.when(shape, seconds * 1_000_000 + micros), valid


def plain(messages: DataFrame) -> DataFrame:
    """`messages` (a string column `text`: one trimmed, non-blank, valid UTF-8 message) with
    `plain` (this tier reads it) and `elements`, its measurements as parsed by from_json."""
    text = F.col("text")
    plain_text = text.startswith(MESSAGE_START) & text.endswith(MESSAGE_END)
    plain_text = plain_text & ~text.contains(ESCAPE)
    # One `[` and one `]` (strings included): the array is the only one, and nothing can follow
    # the object, which from_json would ignore.
    plain_text = plain_text & (F.regexp_count(text, F.lit(r"[\[\]]")) == 2)
    plain_text = plain_text & ~text.rlike(NOT_A_STRING)
    parsed = messages.withColumn(
        "parsed", F.when(plain_text, F.from_json(text, MESSAGE_SCHEMA, JSON_OPTIONS))
    )
    elements = F.col("parsed.measurements")
    complete = F.forall(
        elements,
        lambda e: e["device_id"].isNotNull()
        & e["device_name"].isNotNull()
        & e["time"].isNotNull()
        & e["cumulative_energy"].isNotNull(),
    )
    shape = F.col("parsed._corrupt_record").isNull() & elements.isNotNull() & complete
    readable = F.coalesce(shape, F.lit(False))
    return parsed.select(
        *messages.columns, readable.alias("plain"), F.when(readable, elements).alias("elements")
    )


def reading(element: Column, latest_us: int) -> list[Column]:
    """An element of a plain message (after `posexplode`, where Spark generates code for the
    expressions) as its reading's columns and `valid`: false sends the message to Python for
    its dead letters."""
    micros, time_valid = time_us(element["time"])
    energy = element["cumulative_energy"]
    in_range = element["device_id"].between(INT32_MIN, INT32_MAX)
    valid = (
        in_range
        & time_valid
        & (energy >= 0)
        & (energy < float("inf"))
        & (micros <= latest_us)
    )
    return [
        F.when(in_range, element["device_id"].cast("int")).alias("device_id"),
        element["device_name"].alias("device_name"),
        micros.alias("time_us"),
        energy.alias("energy"),
        F.coalesce(valid, F.lit(False)).alias("valid"),
    ]
