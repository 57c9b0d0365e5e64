"""Preflight: a run whose candidate cannot be reached, whose broker does not answer or whose
topic does not exist is refused before anything is consumed: exit 3, one line per problem, no
traceback, and no run folder left behind."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import envelope, jsonl, write_config

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"}


def replay(cfg: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "shadowdiff.cli.main", "replay", "--config", str(cfg)]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)


def closed_port() -> int:
    """A port bound here and never listened on: connections to it are refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    closed_port.held = s  # type: ignore[attr-defined]  # kept bound so no one else takes it
    return int(s.getsockname()[1])


def test_an_unreachable_candidate_is_refused_before_anything_is_consumed(tmp_path):
    recording = jsonl(tmp_path / "t.jsonl", [envelope(i, random.Random(1)) for i in range(50)])
    port = closed_port()
    cfg = write_config(
        tmp_path / "run.toml",
        f"""
[run]
id = "unreachable"
home = "{tmp_path / "runs"}"
[source]
kind = "file"
path = "{recording}"
[[candidates]]
name = "v2"
kind = "mlflow"
url = "http://svc:hunter2@127.0.0.1:{port}/invocations"
""",
    )
    out = replay(cfg)
    assert out.returncode == 3, out.stderr
    assert "Traceback" not in out.stderr
    assert f"model v2: cannot reach http://***@127.0.0.1:{port}/invocations" in out.stderr
    assert "hunter2" not in out.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.kafka
def test_an_unreachable_broker_or_a_missing_topic_is_refused_at_once(tmp_path, kafka_bootstrap, unique):
    def config(bootstrap: str, topic: str) -> Path:
        return write_config(
            tmp_path / "live.toml",
            f"""
[run]
id = "nobroker"
home = "{tmp_path / "runs"}"
[source]
kind = "kafka-live"
bootstrap = "{bootstrap}"
topic = "{topic}"
group = "{unique("g")}"
[[candidates]]
name = "v2"
kind = "python"
target = "models_for_tests:logistic"
""",
        )

    out = replay(config(f"127.0.0.1:{closed_port()}", "t"))
    assert out.returncode == 3, out.stderr
    assert "source.bootstrap: no Kafka broker answers" in out.stderr
    assert "Traceback" not in out.stderr
    missing = unique("nope")
    out = replay(config(kafka_bootstrap, missing))
    assert out.returncode == 3, out.stderr
    assert f"source.topic: the broker at {kafka_bootstrap} has no topic '{missing}'" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_numbers_given_as_text_are_config_errors_not_conversions(tmp_path):
    from shadowdiff.schemas.config import load_config
    from shadowdiff.schemas.errors import ConfigError
    from shadowdiff.schemas.policy import parse_policy

    cfg = write_config(
        tmp_path / "run.toml",
        """
[run]
id = "strict"
batch_size = "64"
[source]
kind = "file"
path = "t.jsonl"
[sampling]
rate = "0.5"
[[candidates]]
name = "c"
kind = "python"
target = "models_for_tests:logistic"
""",
    )
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert "run.batch_size: Input should be a valid integer" in str(err.value)
    assert "sampling.rate: Input should be a valid number" in str(err.value)
    with pytest.raises(ConfigError, match="min_samples"):
        parse_policy({"min_samples": "500"})


def test_credentials_given_twice_or_headers_http_cannot_carry_are_refused_at_start():
    from shadowdiff.schemas.config import parse_config
    from shadowdiff.schemas.errors import ConfigError

    model = {"name": "c", "kind": "http", "url": "http://u:p@127.0.0.1:1/predict", "headers": {"Authorization": "Bearer t"}}
    with pytest.raises(ConfigError, match="either in the URL or in an Authorization header"):
        parse_config({"run": {"id": "x"}, "source": {"kind": "file", "path": "t.jsonl"}, "candidates": [model]})
    # a header that cannot go out as one line of HTTP/1.1 is refused before anything runs, and
    # the error names the header, never its (secret) value
    for headers, reason in (({"X-Key": "t\r\nHost: elsewhere"}, "line break"), ({"X-Key": "clé—"}, "Latin-1")):
        model = {"name": "c", "kind": "http", "url": "http://127.0.0.1:1/predict", "headers": headers}
        with pytest.raises(ConfigError, match=reason) as caught:
            parse_config({"run": {"id": "x"}, "source": {"kind": "file", "path": "t.jsonl"}, "candidates": [model]})
        assert "elsewhere" not in str(caught.value)
        assert "clé" not in str(caught.value)


def test_an_avro_run_whose_registry_or_schema_cannot_be_read_is_refused_before_anything_is_consumed(tmp_path):
    recording = jsonl(tmp_path / "t.jsonl", [envelope(i, random.Random(1)) for i in range(20)])
    (tmp_path / "broken.avsc").write_text('{"type": "record", "name": "R"', encoding="utf-8")

    def config(run: str, envelope_section: str) -> Path:
        return write_config(
            tmp_path / f"{run}.toml",
            f"""
[run]
id = "{run}"
home = "{tmp_path / "runs"}"
[source]
kind = "file"
path = "{recording}"
{envelope_section}
[[candidates]]
name = "c"
kind = "python"
target = "models_for_tests:logistic"
""",
        )

    port = closed_port()
    down = replay(config("down", f'[envelope]\nformat = "avro"\nschema_registry = {{ url = "http://127.0.0.1:{port}" }}'))
    assert down.returncode == 3, down.stderr
    assert "Traceback" not in down.stderr
    assert f"envelope.schema_registry: http://127.0.0.1:{port} did not answer" in down.stderr
    creds = '{ url = "http://127.0.0.1:1", username_env = "NO_SUCH_USER_VAR", password_env = "NO_SUCH_PASSWORD_VAR" }'
    missing = replay(config("creds", f'[envelope]\nformat = "avro"\nschema_registry = {creds}'))
    assert missing.returncode == 3
    assert "set NO_SUCH_USER_VAR and NO_SUCH_PASSWORD_VAR in the environment" in missing.stderr
    broken = replay(config("broken", '[envelope]\nformat = "avro"\nschema_file = "broken.avsc"'))
    assert broken.returncode == 3
    assert "not an Avro schema" in broken.stderr
    assert not (tmp_path / "runs").exists()
