"""Fixtures are factories. The Kafka broker is a session fixture started only when a test asks
for it: an external broker from SHADOWDIFF_KAFKA_BOOTSTRAP, else a testcontainers Kafka when a
Docker daemon answers, else the local Apache Kafka from scripts/kafka.sh."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("SHADOWDIFF_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    yield from _local_broker()


def _local_broker() -> Iterator[str]:
    """The local Apache Kafka of scripts/kafka.sh. The address is read from the file the script
    writes, never from its output (Maven may print there on a first fetch). A broker this test
    session started is stopped when the session ends; one that was already running is left."""
    script = ["bash", str(ROOT / "scripts" / "kafka.sh")]
    state = Path(os.environ.get("SHADOWDIFF_KAFKA_HOME", ROOT / ".kafka"))
    was_running = _broker_alive(state)
    subprocess.run([*script, "start"], check=True, stdout=subprocess.DEVNULL, timeout=900)
    try:
        yield (state / "bootstrap").read_text(encoding="utf-8").strip()
    finally:
        if not was_running:
            subprocess.run([*script, "stop"], check=False, timeout=120)


def _broker_alive(state: Path) -> bool:
    try:
        os.kill(int((state / "pid").read_text(encoding="utf-8").strip()), 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Unique topic / group / run names per test."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_topic(kafka_bootstrap: str, unique: Callable[[str], str]) -> Callable[..., str]:
    from kafka.admin import KafkaAdminClient, NewTopic

    def make(partitions: int = 3) -> str:
        name = unique("t")
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            admin.close()
        return name

    return make
