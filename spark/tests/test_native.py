"""The two decoding tiers agree: the native tier (Spark SQL) answers a message only where the
Python port of contract §2 gives the same readings and no dead letter, and the job's decoding
of a file (native where it can, Python for the rest) equals the Python port's of the whole file.

The messages are generated around what `from_json` decides differently from the contract:
NaN/Infinity, single quotes, escapes and lone surrogates, repeated keys (also in another case),
values of another JSON type, `1.0` and out-of-range ids, huge and negative energies, unusual
and invalid times, nested and trailing values, white space, blank lines and invalid UTF-8.
"""

from __future__ import annotations

import json
import random
import struct

import pandas as pd
import pytest
from meterflow_spark import job, native
from meterflow_spark.validate import decode_message, parse_time_us

LATEST_US = parse_time_us("2026-01-02T00:00:00Z")
CASES = 1500

# Per field: values the contract accepts (some of them unusual), then values it refuses or
# that from_json reads differently.
TIMES = (
    ["2022-07-11T02:20:00Z", "2022-07-11T02:20:00.000Z", "2022-07-11T10:20:00+08:00",
     "2022-07-11t02:20:00z", "2022-07-11 02:20:00", "2022-07-11T02:20:00.123456789-0130",
     "2024-02-29T23:59:59Z", "0000-01-01T00:00:00Z", "0001-03-01T00:00:00Z",
     "1969-12-31T23:59:59.5Z", "1900-02-28T12:00:00-12:00", "2026-01-01T23:59:59.999999Z"],
    ["2022-07-11T02:20:00.1234567891Z", "2022-07-11T02:20:00.Z", "2022-02-29T00:00:00Z",
     "2022-13-01T00:00:00Z", "2022-07-11T24:00:00Z", "2022-07-11T02:20:60Z",
     "2022-07-11T02:20:00+24:00", "2022-07-11T02:20:00+08:60", "2030-01-01T00:00:00Z",
     "2022-07-11T02:20", "2022-07-11T02:20:00+8:00", "2022-07-11T02:20:00 Z", "20220711",
     "9999-12-31T23:59:59.999999Z", "2022-07-11T02:20:00Z\n", "2022-07-11T02:20:00+08:00\r\n"],
)  # fmt: skip
ENERGIES = (
    ["122.45", "0", "-0", "-0.0", "4822.50", "1e5", "1E-3", "2.5e+2", "0.1", "1.0",
     "123456789012345678901234567890", "1.7976931348623157e308", "5e-324", "9007199254740993"],
    ["-1", "-0.5", "1e400", "NaN", "Infinity", "-Infinity", '"12.5"', "true", "null", "[1]",
     "{}", "01.5", "+1", ".5", "1."],
)  # fmt: skip
IDS = (
    ["1", "0", "-1", "2147483647", "-2147483648", "1000384"],
    ["2147483648", "-2147483649", "1.0", "1e3", "123456789012345678901", '"7"', "null",
     "true", "007", "99999999999999999"],
)  # fmt: skip
NAMES = (
    ['"Test Device"', '"Tai Po meter 00389"', '"大埔 meter"', '"O\'Brien"', '""',
     '"NaN meter"', '"x},{y"', '"[z]"', '"\\u00e9"', '"a\\"b"', '"\\ud83d\\ude00"'],
    ['"\\ud800"', '"\\udc00x"', "5", "null", "[]"],
)  # fmt: skip
FIELDS = {"device_id": IDS, "device_name": NAMES, "cumulative_energy": ENERGIES}
EXTRAS = ['"firmware":"4.2.1"', '"flags":3', '"ok":true', '"n":null', '"nested":{"a":1}',
          '"list":[1,2]', '"DEVICE_ID":5', '"Device_Name":"x"', '"device_idx":1',
          '"gain":NaN', '"cap":-Infinity', '"peak":INF', "'firmware':\"1\"", '"tag":\'x\'',
          '"note":"it\'s"']  # fmt: skip


def element(rng: random.Random, plain: bool) -> str:
    """One element's JSON text; `plain`: of the common shape and valid. Else unusual values
    of every field, and often one tricky value, repeated or missing key, or extra field."""
    if plain:
        fields = {
            "device_id": str(rng.randint(1, 3_000_000)),
            "device_name": json.dumps(f"meter {rng.randint(0, 99999):05d}"),
            "time": json.dumps(rng.choice(TIMES[0][:6])),
            "cumulative_energy": f"{rng.uniform(0, 99999):.{rng.randint(0, 4)}f}",
        }
        pairs = [f'"{k}":{v}' for k, v in fields.items()]
        if rng.random() < 0.3:
            pairs.insert(rng.randint(0, len(pairs)), rng.choice(EXTRAS[:4]))
        rng.shuffle(pairs)
        return "{" + ",".join(pairs) + "}"
    if rng.random() < 0.03:
        return rng.choice(["1", '"x"', "null", "[]", "[{}]"])
    fields = {key: rng.choice(choices[0]) for key, choices in FIELDS.items()}
    fields["time"] = json.dumps(rng.choice(TIMES[0]))
    if rng.random() < 0.5:
        key = rng.choice([*FIELDS, "time"])
        tricky = json.dumps(rng.choice(TIMES[1])) if key == "time" else None
        fields[key] = tricky or rng.choice(FIELDS[key][1])
    pairs = [f'"{k}":{v}' for k, v in fields.items()]
    twist = rng.random()
    if twist < 0.1:
        key = rng.choice(list(fields))
        pairs.append(f'"{key}":{rng.choice([fields[key], "2", chr(34) + "y" + chr(34)])}')
    elif twist < 0.15:
        pairs.pop(rng.randrange(len(pairs)))
    elif twist < 0.45:
        pairs.append(rng.choice(EXTRAS))
    rng.shuffle(pairs)
    space = rng.choice(["", " ", "\n", "\t"]) if rng.random() < 0.2 else ""
    return "{" + space + ("," + space).join(pairs) + space + "}"


# Values of the right JSON type that break a rule: the native tier reads them and refuses.
REFUSED = {
    "device_id": ["2147483648", "-2147483649", "99999999999999999"],
    "cumulative_energy": ["-1", "-0.5", "1e400", "-1e-300"],
    "time": [json.dumps(t) for t in TIMES[1] if ":" in t and "+8" not in t and " Z" not in t],
}


def message(rng: random.Random) -> tuple[str, bool]:
    """A message and whether it is plain (common shape: the native tier's)."""
    kind = rng.random()
    if kind < 0.55:
        elements = [element(rng, True) for _ in range(rng.randint(0, 6))]
        if kind < 0.2 and elements:
            # One value of the right type that breaks a rule.
            at, key = rng.randrange(len(elements)), rng.choice(list(REFUSED))
            fields = json.loads(elements[at])
            fields[key] = "@"
            text = json.dumps(fields, separators=(",", ":"))
            elements[at] = text.replace('"@"', rng.choice(REFUSED[key]))
        return '{"measurements":[' + ",".join(elements) + "]}", True
    elements = [element(rng, False) for _ in range(rng.randint(0, 6))]
    spaced = rng.random() < 0.3
    body = (", " if spaced else ",").join(elements)
    text = ('{ "measurements" : [ ' + body + " ] }") if spaced else '{"measurements":[' + body + "]}"
    twist = rng.random()
    if twist < 0.75:
        pass
    elif twist < 0.8:
        text += rng.choice(["{}", " 5", ',"x":1}', "]}"])
    elif twist < 0.85:
        text = text[:-1] + rng.choice([',"measurements":[]}', ',"gateway":"g1"}', ',"m":[1]}'])
    elif twist < 0.9:
        text = text[: rng.randint(0, len(text))]
    elif twist < 0.95:
        text = rng.choice(["[]", "5", '"x"', "{}", '{"measurements":{}}', "", "{'measurements':[]}"])
    return text, False


def bits(value: float) -> bytes:
    return struct.pack("<d", value)


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("meterflow-native-test")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    session.sparkContext.addPyFile(job.package_zip())
    yield session
    session.stop()


def test_the_native_tier_answers_only_what_python_answers_the_same(spark):
    """Per message the native tier reads (plain), each element's reading equals Python's and
    each element it refuses is one Python dead-letters, at the same index."""
    from pyspark.sql import functions as F

    rng = random.Random(20261207)
    cases = [message(rng) for _ in range(CASES)]
    frame = spark.createDataFrame([(n, text) for n, (text, _) in enumerate(cases)], "n int, text string")
    decided = native.plain(frame)
    plain = {r["n"]: r["plain"] for r in decided.select("n", "plain").collect()}
    elements = decided.filter("plain").select("n", F.posexplode("elements").alias("idx", "e"))
    judged = elements.select("n", "idx", *native.reading(F.col("e"), LATEST_US)).collect()
    native_answers: dict[int, dict] = {}
    for row in judged:
        native_answers.setdefault(row["n"], {})[row["idx"]] = row

    read = valid_elements = refused = 0
    for n, (text, generated_plain) in enumerate(cases):
        readings, letters = decode_message(text.encode("utf-8", "surrogatepass"), LATEST_US)
        if generated_plain:
            # The common shape, valid or not, is the native tier's: it must not route it away.
            assert plain[n], text
        if not plain[n]:
            continue
        read += 1
        python = {r.index: r for r in readings}
        assert all(d.index is not None for d in letters), text
        python_refused = {d.index for d in letters}
        for idx, row in native_answers.get(n, {}).items():
            if row["valid"]:
                valid_elements += 1
                r = python[idx]
                assert (row["device_id"], row["device_name"], row["time_us"], bits(row["energy"])) == (
                    r.device_id, r.device_name, r.time_us, bits(r.energy)
                ), text  # fmt: skip
            else:
                refused += 1
                assert idx in python_refused, text
        assert len(native_answers.get(n, {})) == len(readings) + len(letters), text
    # Not vacuous: both tiers saw many cases, and unusual ones reached the native tier.
    generated = sum(1 for _, p in cases if p)
    assert generated > CASES // 3
    assert read - generated > 10, read - generated
    assert refused > 100, refused
    assert valid_elements > 1000, valid_elements
    assert CASES - read > CASES // 5, CASES - read


def test_a_file_decodes_as_the_python_port_decodes_it(spark, tmp_path):
    """Per file: the job's decoding (native where it can, the rest by Python) equals the
    Python port's of the whole file, line numbers, element indexes and reasons included."""
    rng = random.Random(7)
    files = []
    for number in range(4):
        lines = [message(rng)[0] for _ in range(300)]
        text = "\n".join(
            rng.choice(["", "  ", "\t"]) + line + rng.choice(["", "\r", " "]) for line in lines
        )
        content = text.encode("utf-8", "surrogatepass") + b"\n\n"
        if number == 3:
            content += b'{"measurements":[]}\xff\n'  # not UTF-8: the whole file is Python's
        path = tmp_path / f"part-{number}.jsonl"
        path.write_bytes(content)
        files.append(path)

    raw = spark.read.format("binaryFile").load(str(tmp_path)).selectExpr(
        "'file' AS origin", "path AS seq_a", "-1 AS seq_p", "CAST(0 AS long) AS seq_b",
        "content AS value",
    )  # fmt: skip
    parsed, cached = job.parse(raw, LATEST_US)

    def key(row) -> tuple:
        energy = None if row["energy"] is None else bits(row["energy"])
        return (row["seq_a"].rsplit("/", 1)[-1], row["seq_b"], row["idx"], row["kind"],
                row["device_id"], row["device_name"], row["time_us"], energy, row["reason"])  # fmt: skip

    got = sorted(key(r) for r in parsed.collect())
    expected = []
    for path in files:
        frame = pd.DataFrame(
            {"origin": ["file"], "seq_a": [str(path)], "seq_p": [-1], "seq_b": [0],
             "value": [path.read_bytes()], "letters_only": [False]}
        )  # fmt: skip
        for out in job.explode({"latest_us": LATEST_US})([frame]):
            expected += [key(r) for r in out.astype(object).where(out.notna(), None).to_dict("records")]
    assert got == sorted(expected)
    native_rows = cached[1].filter("valid").count()
    assert native_rows > 1000, native_rows
    assert len(got) - native_rows > 500



def test_kafka_records_without_a_message_are_dead_letters_not_lost(spark):
    """An empty record and one without a value are `invalid_json`, as meterflow reads them."""
    raw = spark.createDataFrame(
        [("kafka", "meters", 0, 7, b""), ("kafka", "meters", 0, 8, None),
         ("kafka", "meters", 1, 3, b'{"measurements":[]}')],
        "origin string, seq_a string, seq_p int, seq_b long, value binary",
    )  # fmt: skip
    parsed, _ = job.parse(raw, LATEST_US)
    got = sorted((r["seq_p"], r["seq_b"], r["kind"], r["reason"]) for r in parsed.collect())
    assert got == [(0, 7, "dead_letter", "invalid_json"), (0, 8, "dead_letter", "invalid_json")]
