"""Exactly once under failures: a micro-batch that fails part-way and is run again by Spark (it
is not committed) writes the same objects, byte for byte, as a run without the failure.

The failure is swept over the steps of a batch the driver takes after the rows are written:
before the dead letters, before the state, and after the state (before Spark commits the
batch); in the first batch, in its replay, in a later batch and in the flush batch, one
failure per start of the job. The job runs in this process so the failure can be injected;
Spark replays the unfinished batch from its offset log on the next start.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from meterflow_spark import devices, job, sink

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("MF_BIN", str(REPO / "target" / "debug" / "meterflow"))


class Injected(RuntimeError):
    pass


def objects(output: Path) -> dict[str, bytes]:
    """Every row and dead-letter object under `output` (not the checkpoint), by path."""
    found = {}
    for path in sorted(output.rglob("*")):
        relative = path.relative_to(output).as_posix()
        if path.is_file() and not relative.startswith("_spark_checkpoint"):
            found[relative] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("fleet")
    generated = directory / "fleet.jsonl"
    fleet = ["--devices", "12", "--hours", "6", "--disorder", "5m", "--fault-rate", "0.05"]
    fleet += ["--duplicate-rate", "0.02", "--seed", "5", "--output", str(generated)]
    subprocess.run([BIN, "generate", *fleet], check=True, capture_output=True)
    lines = generated.read_text().splitlines(keepends=True)
    files = directory / "in"
    files.mkdir()
    half = len(lines) // 2
    for number, part in enumerate([lines[:half], lines[half:]]):
        path = files / f"part-{number:04d}.jsonl"
        path.write_text("".join(part))
        os.utime(path, (1_700_000_000 + number, 1_700_000_000 + number))
    return files


def run(files: Path, output: Path) -> None:
    argv = ["--input", str(files), "--output", str(output), "--master", "local[2]"]
    argv += ["--stop-when-drained", "--max-files-per-trigger", "1", "--partitions", "3"]
    argv += ["--processing-time", "2026-01-01T00:00:00Z"]
    assert job.main(argv) == 0


@pytest.fixture(scope="module")
def clean(inputs, tmp_path_factory) -> dict[str, bytes]:
    output = tmp_path_factory.mktemp("clean") / "out"
    run(inputs, output)
    found = objects(output)
    assert any(name.startswith("date=") for name in found)
    assert any(name.startswith("_dead_letter/") for name in found)
    return found


# (batch, step) failures, one per start of the job, each in the batch the last start left
# unfinished or a later one: the first batch, a replay of it, a later batch, the flush batch.
FAILURES = [
    (0, "before dead letters"),
    (0, "after state"),
    (1, "before state"),
    (2, "after state"),
]


def test_batches_failed_part_way_and_run_again_write_the_same_objects(
    inputs, clean, tmp_path, monkeypatch
):
    original_letters, original_state = sink.write_dead_letters, devices.save_state
    pending = list(FAILURES)

    def fail_at(step: str, batch_id: int) -> None:
        if pending and pending[0] == (batch_id, step):
            pending.pop(0)
            raise Injected(f"{step} of batch {batch_id}")

    def write_dead_letters(output, batch_id, letters):
        fail_at("before dead letters", batch_id)
        return original_letters(output, batch_id, letters)

    def save_state(spark, state, front, root, batch_id):
        fail_at("before state", batch_id)
        original_state(spark, state, front, root, batch_id)
        fail_at("after state", batch_id)

    monkeypatch.setattr(sink, "write_dead_letters", write_dead_letters)
    monkeypatch.setattr(devices, "save_state", save_state)
    output = tmp_path / "out"
    for failure in FAILURES:
        # Each start replays what the last one left unfinished, then fails as listed.
        with pytest.raises(Exception, match="Injected|of batch"):
            run(inputs, output)
        assert failure not in pending
    run(inputs, output)
    assert objects(output) == clean
