"""contract §2 rules of the Spark job's decoder, one per reason code and time form."""

import json

import pytest
from meterflow_spark.validate import decode_message, parse_time_us, split_lines

LATEST = parse_time_us("2026-01-01T00:00:00Z")
SEED = b'{"device_id": 123456, "device_name": "Test Device", "time": "2022-07-11T02:20:00Z", "cumulative_energy": 122.45}'


def reasons(line: bytes) -> list:
    readings, letters = decode_message(line, LATEST)
    return [("ok", r.index) for r in readings] + [(d.reason, d.index) for d in letters]


def message(*elements: bytes) -> bytes:
    return b'{"measurements": [' + b",".join(elements) + b"]}"


def with_field(name: str, value: str) -> bytes:
    element = json.loads(SEED)
    element[name] = json.loads(value) if value != "<missing>" else None
    if value == "<missing>":
        del element[name]
    return json.dumps(element).encode()


def test_the_seed_reading_is_valid():
    readings, letters = decode_message(message(SEED), LATEST)
    assert letters == []
    (reading,) = readings
    assert reading.device_id == 123456 and reading.device_name == "Test Device"
    assert reading.time_us == 1_657_506_000_000_000 and reading.energy == 122.45


@pytest.mark.parametrize(
    "line, reason",
    [
        (b'{"measurements": [', "invalid_json"),
        (b'{"measurements": []} trailing', "invalid_json"),
        (b'{"measurements": [NaN]}', "invalid_json"),
        (b'{"measurements": ["\\ud800"]}', "invalid_json"),
        (b'\xff{"measurements": []}', "invalid_json"),
        (b"[1, 2]", "missing_measurements"),
        (b'{"readings": []}', "missing_measurements"),
        (b'{"measurements": {"a": 1}}', "missing_measurements"),
    ],
)
def test_whole_message_faults(line, reason):
    assert reasons(line) == [(reason, None)]


@pytest.mark.parametrize(
    "field, value, reason",
    [
        ("device_id", "<missing>", "invalid_device_id"),
        ("device_id", '"123456"', "invalid_device_id"),
        ("device_id", "1.0", "invalid_device_id"),
        ("device_id", "1e3", "invalid_device_id"),
        ("device_id", "true", "invalid_device_id"),
        ("device_id", "2147483648", "invalid_device_id"),
        ("device_name", "null", "invalid_device_name"),
        ("device_name", "7", "invalid_device_name"),
        ("time", "<missing>", "invalid_time"),
        ("time", '"2022-07-11 25:61"', "invalid_time"),
        ("time", '"2022-02-30T00:00:00Z"', "invalid_time"),
        ("time", '"2022-07-11T02:20:60Z"', "invalid_time"),
        ("time", '"2022-07-11T02:20:00.1234567890Z"', "invalid_time"),
        ("time", '"2022-07-11T02:20:00+8"', "invalid_time"),
        ("cumulative_energy", "-1.5", "invalid_energy"),
        ("cumulative_energy", '"12.5"', "invalid_energy"),
        ("cumulative_energy", "null", "invalid_energy"),
        ("time", '"2099-01-01T00:00:00Z"', "future_time"),
    ],
)
def test_reading_faults_leave_neighbours_alone(field, value, reason):
    line = message(SEED, with_field(field, value), b"42")
    assert reasons(line) == [("ok", 0), (reason, 1), ("invalid_reading", 2)]


def test_first_failing_rule_gives_the_reason():
    bad = json.dumps({"device_id": "x", "device_name": None, "time": 3, "cumulative_energy": -1})
    assert reasons(message(bad.encode())) == [("invalid_device_id", 0)]


def test_energy_beyond_f64_is_invalid_energy():
    element = SEED.replace(b"122.45", b"1e400")
    assert reasons(message(element)) == [("invalid_energy", 0)]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2022-07-11T02:20:00Z", "2022-07-11T02:20:00Z"),
        ("2022-07-11T10:20:00+08:00", "2022-07-11T02:20:00Z"),
        ("2022-07-11T10:20:00+0800", "2022-07-11T02:20:00Z"),
        ("2022-07-11t02:20:00z", "2022-07-11T02:20:00Z"),
        ("2022-07-11 02:20:00", "2022-07-11T02:20:00Z"),
    ],
)
def test_time_forms_and_offsets(text, expected):
    assert parse_time_us(text) == parse_time_us(expected)


def test_fractions_truncate_to_microseconds():
    base = parse_time_us("2022-07-11T02:20:00Z")
    assert parse_time_us("2022-07-11T02:20:00.1234569Z") == base + 123_456
    assert parse_time_us("1969-12-31T23:59:59.9999999Z") == -1


def test_lines_are_trimmed_and_blank_ones_skipped():
    content = b"one\r\n\n  \n\x0ctwo\x0c\nthree"
    assert list(split_lines(content)) == [(1, b"one"), (4, b"two"), (5, b"three")]


def test_an_unknown_field_of_any_size_costs_nothing():
    """A 5,000-digit number in an unknown field is ignored, as serde_json ignores it."""
    readings, letters = decode_message(message(SEED[:-1] + b', "pad": ' + b"7" * 5000 + b"}"), LATEST)
    assert letters == [] and len(readings) == 1
