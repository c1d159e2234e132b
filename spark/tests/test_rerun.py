"""Exactly once under failures: a micro-batch that fails part-way and is run again by Spark (it
is not committed) writes the same objects, byte for byte, as a run without the failure.

The failure is swept over the steps of a batch the driver takes after the rows are written:
before the dead letters, before the state, and after the state (before Spark commits the
batch); in the first and in a later batch. The job runs in this process so the failure can be
injected; Spark then replays the batch from its offset log on the next start.
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


@pytest.mark.parametrize("batch", [0, 1])
@pytest.mark.parametrize(
    "step",
    ["before dead letters", "before state", "after state"],
)
def test_a_batch_failed_part_way_and_run_again_writes_the_same_objects(
    inputs, clean, tmp_path, monkeypatch, batch, step
):
    original_letters, original_state = sink.write_dead_letters, devices.save_state
    calls = {"failed": False}

    def fail_here(batch_id: int) -> None:
        if batch_id == batch and not calls["failed"]:
            calls["failed"] = True
            raise Injected(f"{step} of batch {batch_id}")

    def write_dead_letters(output, batch_id, letters):
        if step == "before dead letters":
            fail_here(batch_id)
        return original_letters(output, batch_id, letters)

    def save_state(spark, state, front, root, batch_id):
        if step == "before state":
            fail_here(batch_id)
        original_state(spark, state, front, root, batch_id)
        if step == "after state":
            fail_here(batch_id)

    monkeypatch.setattr(sink, "write_dead_letters", write_dead_letters)
    monkeypatch.setattr(devices, "save_state", save_state)
    output = tmp_path / "out"
    with pytest.raises(Exception, match="Injected|of batch"):
        run(inputs, output)
    assert calls["failed"]
    # The failed attempt left part of the batch behind; the next start replays it.
    run(inputs, output)
    assert objects(output) == clean
