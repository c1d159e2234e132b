"""contract §2's common case in Spark SQL: messages decoded and validated by `from_json` with an
explicit schema and column expressions, with no Python per row.

Two tiers, like meterflow's own decoder. This one answers only a message it can decide exactly:
every element a valid reading, in the plain shape below. Everything else goes whole to the
Python port of the rules (validate.py, through `explode` in job.py), which also writes every
dead letter of §2, so the tiers never answer the same message and never disagree
(tests/test_native.py generates the edge cases and requires both to agree where this one
answers). A message is routed to Python when:

- it is not valid UTF-8, holds a backslash (escapes, lone surrogates), a single quote (Spark's
  `allowSingleQuotes`) or `NaN`/`INF`/`Infinity` (Spark's `allowNonNumericNumbers`);
- `from_json` cannot parse it, or it is not exactly `{"measurements": [ … ]}` with flat
  objects as elements (one `[`/`]` pair and one `{}` per element outside strings: nothing
  after the top-level object, no nested values);
- an element does not hold each of `device_id` (an integer literal of at most 18 digits),
  `device_name` (a string), `time` (a string) and `cumulative_energy` (a number literal)
  exactly once — counted in the text, so repeated keys and values of another JSON type,
  which Spark would convert, are Python's;
- a reading breaks a rule: device id outside Int32, an unusual or invalid time, energy below
  zero or not finite, time after the latest accepted one.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
WS = r"[ \t\n\r]*"  # JSON's white space
ELEMENT_SCHEMA = (
    "device_id long, device_name string, time string, cumulative_energy double"
)
MESSAGE_SCHEMA = f"measurements array<struct<{ELEMENT_SCHEMA}>>, _corrupt_record string"
TIME_FORM = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(Z|z|[+-][0-9]{2}:?[0-9]{2})?$"
)
# Each key once per element, with a value of its type: (key, the text after `"key":`).
KEY_FORMS = {
    "device_id": r"-?(0|[1-9][0-9]{0,17})" + WS + "[,}]",
    "device_name": '"',
    "time": '"',
    "cumulative_energy": r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?" + WS + "[,}]",
}
# What only the Python tier may judge (see the module doc).
PYTHON_ONLY = r"[\\']|NaN|INF|Infinity"
MESSAGE_START = r"^\{" + WS + '"measurements"' + WS + ":" + WS + r"\["
MESSAGE_END = r"\]" + WS + r"\}$"


def occurrences(text: Column, needle: str) -> Column:
    """How often the literal `needle` occurs in `text` (no regular expression)."""
    return F.floor(
        (F.length(text) - F.length(F.replace(text, F.lit(needle), F.lit("")))) / len(needle)
    )


def time_us(text: Column) -> tuple[Column, Column]:
    """(µs since the epoch, valid?) of an RFC 3339 time in the form validate.py accepts;
    valid is false for any other text (Python then decides, with its own detail)."""
    # Spark's ANSI mode fails a query on a bad cast: `try_cast` gives null instead.
    part = lambda start, length: F.substring(text, start, length).try_cast("long")  # noqa: E731
    year, month, day = part(1, 4), part(6, 2), part(9, 2)
    hour, minute, second = part(12, 2), part(15, 2), part(18, 2)
    tail = F.substring(text, 20, 64)
    fraction = F.regexp_extract(tail, r"^\.([0-9]+)", 1)
    offset = F.regexp_extract(tail, r"[+-][0-9]{2}:?[0-9]{2}$", 0)
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


def decide(messages: DataFrame, latest_us: int) -> DataFrame:
    """`messages` (a string column `text`: one trimmed, non-blank, valid UTF-8 message) with
    `native` (this tier decides it: every element a valid reading) and `readings`, an array
    of (device_id, device_name, time_us, energy) in element order."""
    text = F.col("text")
    parsed = F.from_json(text, MESSAGE_SCHEMA)
    elements = parsed["measurements"]
    count = F.size(elements)
    skeleton = F.regexp_replace(text, r'"[^"]*"', "")
    shape = (
        ~text.rlike(PYTHON_ONLY)
        & text.rlike(MESSAGE_START)
        & text.rlike(MESSAGE_END)
        & parsed["_corrupt_record"].isNull()
        & elements.isNotNull()
        & (occurrences(skeleton, "[") == 1)
        & (occurrences(skeleton, "]") == 1)
        & (occurrences(skeleton, "{") == count + 1)
        & (occurrences(skeleton, "}") == count + 1)
    )
    for key, value in KEY_FORMS.items():
        shape = shape & (occurrences(text, f'"{key}"') == count)
        shape = shape & (F.regexp_count(text, F.lit(f'"{key}"{WS}:{WS}{value}')) == count)

    def reading(element: Column) -> Column:
        micros, time_valid = time_us(element["time"])
        energy = element["cumulative_energy"]
        in_range = element["device_id"].between(INT32_MIN, INT32_MAX)
        valid = (
            in_range
            & element["device_name"].isNotNull()
            & time_valid
            & energy.isNotNull()
            & (energy >= 0)
            & (energy < float("inf"))
            & (micros <= latest_us)
        )
        return F.struct(
            F.when(in_range, element["device_id"].cast("int")).alias("device_id"),
            element["device_name"].alias("device_name"),
            micros.alias("time_us"),
            energy.alias("energy"),
            F.coalesce(valid, F.lit(False)).alias("valid"),
        )

    # The element expressions run only on messages of the plain shape.
    plain = F.coalesce(shape, F.lit(False))
    decided = messages.withColumn("readings", F.when(plain, F.transform(elements, reading)))
    valid = F.forall(F.col("readings"), lambda r: r["valid"])
    return decided.withColumn("native", F.coalesce(valid, F.lit(False)))
