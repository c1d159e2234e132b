"""contract §3 per device in the Spark job's state logic."""

from meterflow_spark.deltas import Device, f32
from meterflow_spark.validate import parse_time_us

T0 = parse_time_us("2022-07-11T02:15:00Z")
MINUTE = 60_000_000


def emit_all(device: Device) -> list:
    out = []
    device.emit_until(2**62, out, 123456)
    return [(r["time_us"], r["duration"], r["delta_energy"]) for r in out]


def test_seed_example_rows():
    device = Device()
    assert device.offer(T0 + 5 * MINUTE, 122.45, "Test Device") == ("accepted", None)
    assert device.offer(T0, 120.12, "Test Device") == ("accepted", None)
    assert emit_all(device) == [(T0, None, None), (T0 + 5 * MINUTE, 5.0, f32(122.45 - 120.12))]
    assert f32(122.45 - 120.12) == f32(2.33)


def test_counter_reset_nulls_the_delta_and_rebases():
    device = Device()
    for minute, energy in ((0, 10.0), (5, 2.0), (10, 3.5)):
        device.offer(T0 + minute * MINUTE, energy, "d")
    out = []
    assert device.emit_until(2**62, out, 1) == 1
    assert [(r["duration"], r["delta_energy"]) for r in out] == [
        (None, None),
        (5.0, None),
        (5.0, 1.5),
    ]


def test_duplicates_conflicts_and_late():
    device = Device()
    device.offer(T0, 1.0, "d")
    assert device.offer(T0, 1.0, "d") == ("duplicate", None)
    assert device.offer(T0, 2.0, "d")[0] == "conflicting_duplicate"
    device.emit_until(T0, [], 1)
    assert device.offer(T0, 1.0, "d") == ("duplicate", None)
    assert device.offer(T0 - MINUTE, 0.5, "d")[0] == "late"


def test_state_round_trips():
    device = Device()
    device.offer(T0, 1.0, "a")
    device.emit_until(T0, [], 1)
    device.offer(T0 + MINUTE, 2.0, "b")
    restored = Device.from_state(device.to_state())
    assert restored == device
