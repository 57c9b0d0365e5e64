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


@pytest.fixture(params=["kafka-python", "librdkafka"])
def kafka_client(request: pytest.FixtureRequest) -> str:
    """The consumer a Kafka test's replay runs on: the tests that read, resume and commit run
    on both (`[source] client`)."""
    return str(request.param)


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


@pytest.fixture(autouse=True)
def _no_child_outlives_its_test() -> Iterator[None]:
    from replays import STARTED

    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:  # the test failed half-way: its child must not run on
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-compatible server on loopback (moto's server, from PyPI), with test credentials
    in the environment as the AWS chain reads them."""
    from helpers import start_s3_server

    proc, url = start_s3_server()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_REGION": "us-east-1"})
    try:
        yield url
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(20)
