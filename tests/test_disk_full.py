"""Disk full mid-run: the replay stops with one clear line whose cause comes first, commits
nothing of the failed batch, and once space is back a restart stores every request exactly once.
Needs root to mount a small tmpfs (skipped otherwise)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from helpers import envelope, jsonl, write_config

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_the_replay_with_its_cause_and_a_restart_loses_nothing(tmp_path, small_disk):
    rng = random.Random(21)
    envs = [envelope(i, rng) for i in range(30_000)]
    for e in envs:
        e["input"]["blob"] = "x" * 200  # bulk, so the store outgrows 4 MiB
    recording = jsonl(tmp_path / "traffic.jsonl", envs)
    cfg = write_config(
        tmp_path / "run.toml",
        f"""
[run]
id = "full"
home = "{small_disk}"
batch_size = 1000
[source]
kind = "file"
path = "{recording}"
[output]
score_path = "score"
[[candidates]]
name = "v2"
kind = "python"
target = "models_for_tests:logistic"
""",
    )
    cmd = [sys.executable, "-m", "shadowdiff.cli.main", "replay", "--config", str(cfg), "--no-judge"]
    first = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert first.returncode == 3, first.stderr[-2000:]
    last = first.stderr.strip().splitlines()[-1]
    assert last.startswith("shadowdiff: storing a batch failed"), first.stderr[-2000:]
    assert "No space left on device" in last or "out of space" in last.lower(), last
    assert "cannot rollback" not in first.stderr
    # space comes back: the same replay resumes from what was committed
    subprocess.run(["mount", "-o", "remount,size=200m", str(small_disk)], check=True)
    second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    with duckdb.connect(str(small_disk / "full" / "store-w0.duckdb"), read_only=True) as con:
        n, distinct = con.execute("SELECT count(*), count(DISTINCT request_id) FROM requests").fetchone()
        (outs,) = con.execute("SELECT count(*) FROM outputs WHERE variant = 'candidate:v2'").fetchone()
    assert (n, distinct, outs) == (len(envs), len(envs), len(envs))
