"""Checks before anything is consumed: the source can be read (the recording exists; the broker
answers and has the topic; an Avro schema file parses, a schema registry answers with the given
credentials) and every HTTP model can be connected to. A run that could only fill
its store with connection errors is refused at start, with one line per problem, instead of
after the whole topic was read."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from shadowdiff.replay.formats import format_problems
from shadowdiff.schemas.config import FileSource, KafkaSource, ModelSpec, OutcomeSpec, RunConfig, ServedRunConfig, redact_url
from shadowdiff.schemas.errors import ConfigError

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 5.0


def preflight(cfg: RunConfig, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raises ConfigError naming every unreachable part; returns when all answer."""
    problems = _source_problems(cfg.source, timeout_s) + format_problems(cfg.envelope)
    models = [*cfg.candidates, *([cfg.baseline.model] if cfg.baseline.model and cfg.baseline.kind == "model" else [])]
    http = [m for m in models if m.kind != "python"]
    if http:
        problems += asyncio.run(_model_problems(http, timeout_s))
    if problems:
        raise ConfigError("run (preflight: nothing was consumed)", problems)


def outcome_preflight(spec: OutcomeSpec, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """The outcome worker's: its source can be read and its format's schema found."""
    problems = _source_problems(spec.source, timeout_s, "outcomes.source") + format_problems(spec, "outcomes")
    if problems:
        raise ConfigError("outcomes (preflight: nothing was consumed)", problems)


def served_preflight(cfg: ServedRunConfig, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """The inference logs' source answers and their format can be read, before anything is stored."""
    problems = _source_problems(cfg.served.source, timeout_s, "served.source") + format_problems(cfg.served, "served")
    if problems:
        raise ConfigError("served (preflight: nothing was consumed)", problems)


def _source_problems(spec: FileSource | KafkaSource, timeout_s: float, key: str = "source") -> list[str]:
    if isinstance(spec, FileSource):
        return [] if spec.path.exists() else [f"{key}.path: recording not found: {spec.path}"]
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    try:
        # a broker that answers at all answers the version probe at once
        consumer = KafkaConsumer(bootstrap_servers=spec.bootstrap.split(","), bootstrap_timeout_ms=int(timeout_s * 1000))
    except KafkaError as err:
        return [f"{key}.bootstrap: no Kafka broker answers at {spec.bootstrap} ({type(err).__name__})"]
    try:
        topics = consumer.topics()
    except KafkaError as err:
        return [f"{key}.bootstrap: the broker at {spec.bootstrap} did not list its topics ({type(err).__name__})"]
    finally:
        consumer.close()
    if spec.topic not in topics:
        return [f"{key}.topic: the broker at {spec.bootstrap} has no topic {spec.topic!r}"]
    return []


async def _model_problems(models: list[ModelSpec], timeout_s: float) -> list[str]:
    """One request to each model's URL: any HTTP answer means it is there (a probe has no valid
    input to send); a refused connection or an unknown host means it is not. No answer in time
    is logged and let through: the model may be there and slow."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def probe(m: ModelSpec) -> str | None:
            assert m.url is not None
            try:
                async with session.post(m.url, data=b"{}", headers={"content-type": "application/json", **m.header_values()}):
                    return None
            except TimeoutError:
                # there, but slow (warming up, or slow to refuse a probe): its calls will say more
                log.warning("model %s: no answer to a probe in %g s; going on", m.name, timeout_s)
                return None
            except aiohttp.ClientError as err:
                # the URL as shown everywhere (credentials redacted) and the cause, not the
                # exception's text, which may carry the URL as given
                cause = getattr(err, "os_error", None) or type(err).__name__
                return f"model {m.name}: cannot reach {redact_url(m.url)} ({cause})"[:300]

        found = await asyncio.gather(*(probe(m) for m in models))
    return [p for p in found if p is not None]
