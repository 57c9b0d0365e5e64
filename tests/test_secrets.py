"""Secrets stay secret: a token planted in a candidate's headers and a password in its URL reach
the model server, and no artifact of the run (store, verdict, report, evidence bundle, policy
and run files, the commands' output) contains either."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import duckdb
from helpers import envelope, jsonl, write_config
from models_for_tests import logistic

from shadowdiff.replay.testing import ModelServer, ServerBehaviour

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}
TOKEN = "PLANTED-TOKEN-5f1c9a"
PASSWORD = "PLANTED-PASSWORD-77e0"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shadowdiff.cli.main", *args], env=ENV, capture_output=True, timeout=300)


def test_a_planted_token_reaches_the_model_and_no_artifact(tmp_path):
    rng = random.Random(5)
    recording = jsonl(tmp_path / "traffic.jsonl", [envelope(i, rng) for i in range(800)])
    behaviour = ServerBehaviour()
    with ModelServer(logistic, behaviour) as url:
        host = url.removeprefix("http://")
        cfg = write_config(
            tmp_path / "run.toml",
            f"""
[run]
id = "secret"
home = "{tmp_path / "runs"}"
[source]
kind = "file"
path = "{recording}"
[output]
score_path = "score"
[[candidates]]
name = "v2"
kind = "http"
url = "http://svc:{PASSWORD}@{host}/predict"
headers = {{ "X-Api-Key" = "{TOKEN}" }}
""",
        )
        outputs = [cli("replay", "--config", str(cfg), "--judge-every", "0.5")]
    assert outputs[0].returncode == 0, outputs[0].stderr.decode()[-2000:]
    # the secrets were used: the server saw the token and the URL's credentials (basic auth)
    assert behaviour.headers_seen.get("X-Api-Key") == TOKEN
    assert behaviour.headers_seen.get("Authorization", "").startswith("Basic ")
    home = tmp_path / "runs"
    outputs.append(cli("judge", "--home", str(home), "--run", "secret", "--json"))
    outputs.append(cli("gate", "--home", str(home), "--run", "secret"))
    outputs.append(cli("report", "--home", str(home), "--run", "secret"))
    outputs.append(cli("evidence", "--home", str(home), "--run", "secret", "-o", str(tmp_path / "bundle.zip")))
    # judge and gate answer with a verdict (0, 1 or 2: which one does not matter here)
    codes = [o.returncode for o in outputs[-4:]]
    assert codes[0] in (0, 1, 2), outputs[-4].stderr.decode()[-1000:]
    assert codes[1] in (0, 1, 2), outputs[-3].stderr.decode()[-1000:]
    assert codes[2:] == [0, 0], [o.stderr.decode()[-1000:] for o in outputs[-2:]]
    # every file of the run, the bundle's members, every command's output
    blobs: dict[str, bytes] = {str(p): p.read_bytes() for p in home.rglob("*") if p.is_file()}
    with zipfile.ZipFile(tmp_path / "bundle.zip") as zf:
        blobs |= {f"bundle:{n}": zf.read(n) for n in zf.namelist()}
    blobs |= {f"output {n}": o.stdout + o.stderr for n, o in enumerate(outputs)}
    # the store's text, decoded (DuckDB may compress what it writes to disk)
    with duckdb.connect(str(home / "secret" / "store-w0.duckdb"), read_only=True) as con:
        for table in ("run_meta", "outputs", "dead_letters"):
            rows = con.execute(f"SELECT * FROM {table}").fetchall()
            blobs[f"store:{table}"] = repr(rows).encode()
    # the checkpoint exports' Parquet, decoded (compressed on disk)
    import pyarrow.parquet as pq

    for path in home.rglob("*.parquet"):
        blobs[f"parquet:{path}"] = repr(pq.read_table(path).to_pylist()).encode()
    assert any(k.startswith("parquet:") for k in blobs)
    assert any(b"report" in k.encode() for k in blobs)  # the report and the bundle are among them
    leaks = [name for name, data in blobs.items() if TOKEN.encode() in data or PASSWORD.encode() in data]
    assert leaks == []
    # the redacted forms are what the run's config shows
    meta = blobs["store:run_meta"].decode()
    assert "***@127.0.0.1" in meta
    assert '\\\\"X-Api-Key\\\\":\\\\"***\\\\"' in meta or '"X-Api-Key":"***"' in meta
