"""What the Avro and Protobuf tests share: a loopback schema registry, the traffic, and a run
judged and read back.

No schema registry server runs here (Apicurio's app needs a Quarkus build, Karapace is not on
PyPI), so the registry is a loopback server of the Confluent REST API as confluent-kafka's
serializers and registry client call it: register a schema (with its references) under a
subject, look it up, fetch a subject's version, fetch a schema by id."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from helpers import T0, envelope, judged_document, window_config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from shadowdiff.diff.load import open_run
from shadowdiff.replay.job import run_replay
from shadowdiff.schemas.config import load_config
from shadowdiff.schemas.policy import Policy


def registry_app() -> Starlette:
    """The Confluent schema registry's REST API, as far as the serializers and the client use it.
    Schemas are kept as sent: confluent-kafka registers Protobuf as a base64 file descriptor,
    which is what the real registry answers to `format=serialized`."""
    schemas: list[dict[str, Any]] = []  # id - 1 -> {"schema", "schemaType", "references"}
    subjects: dict[str, list[int]] = {}  # subject -> ids of its versions, in order

    def registered(subject: str, schema_id: int) -> dict[str, Any]:
        version = subjects[subject].index(schema_id) + 1
        return {"subject": subject, "id": schema_id, "version": version, **schemas[schema_id - 1]}

    async def body(request: Request) -> dict[str, Any]:
        sent = await request.json()
        out = {"schema": sent["schema"], "references": sent.get("references", [])}
        if sent.get("schemaType", "AVRO") != "AVRO":  # the real registry leaves AVRO out
            out["schemaType"] = sent["schemaType"]
        return out

    async def register(request: Request) -> JSONResponse:
        schema = await body(request)
        if schema not in schemas:
            schemas.append(schema)
        schema_id = schemas.index(schema) + 1
        versions = subjects.setdefault(request.path_params["subject"], [])
        if schema_id not in versions:
            versions.append(schema_id)
        return JSONResponse({"id": schema_id})

    async def lookup(request: Request) -> JSONResponse:
        schema, subject = await body(request), request.path_params["subject"]
        if schema not in schemas or schemas.index(schema) + 1 not in subjects.get(subject, []):
            return JSONResponse({"error_code": 40403, "message": "Schema not found"}, status_code=404)
        return JSONResponse(registered(subject, schemas.index(schema) + 1))

    async def version(request: Request) -> JSONResponse:
        subject, number = request.path_params["subject"], request.path_params["version"]
        versions = subjects.get(subject, [])
        if not 1 <= number <= len(versions):
            return JSONResponse({"error_code": 40402, "message": "Version not found"}, status_code=404)
        return JSONResponse(registered(subject, versions[number - 1]))

    async def by_id(request: Request) -> JSONResponse:
        schema_id = request.path_params["id"]
        if not 1 <= schema_id <= len(schemas):
            return JSONResponse({"error_code": 40403, "message": "Schema not found"}, status_code=404)
        return JSONResponse(schemas[schema_id - 1])

    async def subject_names(request: Request) -> JSONResponse:
        return JSONResponse(sorted(subjects))

    return Starlette(
        routes=[
            Route("/subjects", subject_names),
            Route("/subjects/{subject:path}/versions", register, methods=["POST"]),
            Route("/subjects/{subject:path}/versions/{version:int}", version),
            Route("/subjects/{subject:path}", lookup, methods=["POST"]),
            Route("/schemas/ids/{id:int}", by_id),
        ]
    )


def traffic(n: int) -> list[dict[str, Any]]:
    rng = random.Random(11)
    out = []
    for i in range(n):
        env = envelope(i, rng)
        # millisecond event times: what timestamp-millis can carry, and the JSON twin carries the same
        env["event_time"] = (T0 + timedelta(seconds=i)).isoformat()
        out.append(env)
    return out


CANDIDATE = """[[candidates]]
name = "c"
kind = "python"
target = "models_for_tests:logistic"
"""


def config(tmp: Path, bootstrap: str, topic: str, run: str, envelope_section: str) -> Path:
    return window_config(tmp, bootstrap, topic, run, CANDIDATE, extra=envelope_section, batch=300)


def judged_alike(doc: dict[str, Any]) -> dict[str, Any]:
    """The verdict without what names the run rather than judges its traffic (its id, topic,
    config digest, when it was judged) and without what this machine measured while it ran: the
    rate calls were sent at and the candidate's call latencies."""
    drop = ("run_id", "digest", "generated_at", "versions", "run_active", "load")
    out = {k: v for k, v in doc.items() if k not in drop}
    out["data"] = {k: v for k, v in doc["data"].items() if k not in ("offsets", "pair_set_digest", "window")}
    out["data"]["window"] = {k: v for k, v in doc["data"]["window"].items() if k != "configured"}
    out["checks"] = [c for c in doc["checks"] if c["kind"] != "latency"]
    out["reasons"] = [r for r in doc["reasons"] if not r.startswith("latency")]
    out["examples"] = [{k: v for k, v in e.items() if k != "coordinates"} for e in doc["examples"]]
    return out


def run_and_judge(cfg: Path, run: str) -> tuple[dict[str, Any], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    run_replay(load_config(cfg))
    con = open_run(cfg.parent / "runs", run)
    try:
        rows = con.execute(
            """SELECT r."offset", r.request_id, r.event_time, r.segments, r.model_input, o.variant, o.score, o.label
               FROM requests r JOIN outputs o USING (source, part, "offset") ORDER BY 1, 6"""
        ).fetchall()
        dead = con.execute('SELECT "offset", reason FROM dead_letters ORDER BY 1').fetchall()
        return judged_document(con, Policy(min_samples=100)), rows, dead
    finally:
        con.close()


def judged_topics(
    tmp: Path,
    bootstrap: str,
    topics: tuple[str, str, str],
    framed: tuple[list[bytes], list[bytes], list[int], list[bytes]],
    registry_section: str,
) -> tuple[Any, Any, Any]:
    """The JSON twin, the wire-format topic and the poison topic (20 good records, then the
    poison ones) produced and each judged: (from_json, from_wire, poisoned). `framed` is the
    records' keys, wire-format values, timestamps and poison values."""
    from helpers import produce

    json_topic, wire_topic, poison_topic = topics
    keys, wire, stamps, poison = framed
    produce(bootstrap, wire_topic, list(zip(keys, wire, strict=True)), stamps)
    poisoned_records = list(zip(keys[:20], wire[:20], strict=True)) + [(b"p%d" % i, p) for i, p in enumerate(poison)]
    produce(bootstrap, poison_topic, poisoned_records, stamps[: len(poisoned_records)])
    from_json = run_and_judge(config(tmp, bootstrap, json_topic, "json", ""), "json")
    from_wire = run_and_judge(config(tmp, bootstrap, wire_topic, "wire", registry_section), "wire")
    poisoned = run_and_judge(config(tmp, bootstrap, poison_topic, "poison", registry_section), "poison")
    return from_json, from_wire, poisoned


def assert_never_crashes(read: Any, valid: bytes) -> None:
    """Hostile bytes are BadMessages, never crashes: random bytes, or the valid record with
    bytes spliced in at a random place (lengths and varints turned huge or negative, tags and
    wire types changed, strings cut or made invalid UTF-8, unions out of range)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from shadowdiff.schemas.envelope import BadMessage

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.one_of(st.binary(max_size=200), st.tuples(st.integers(0, len(valid)), st.binary(max_size=8))))
    def never_crashes(data: bytes | tuple[int, bytes]) -> None:
        value = data if isinstance(data, bytes) else valid[: data[0]] + data[1] + valid[data[0] + len(data[1]) :]
        try:
            out = read(value)
        except BadMessage:
            return
        assert isinstance(out, dict)

    never_crashes()


def assert_judged_as_json(judged: tuple[Any, Any, Any], from_file: Any, reasons: list[str]) -> None:
    """The wire-format and schema-file runs stored and judged as the JSON twin (1,200 requests),
    no dead letters; the poison run's 20 good records stored and each poison record
    dead-lettered with its reason, in order."""
    from_json, from_wire, poisoned = judged
    assert len(from_json[1]) == 2 * 1200  # baseline (live) and candidate answers of every request
    for other in (from_wire, from_file):
        assert other[1] == from_json[1]  # the same requests, inputs, times, segments and answers
        assert judged_alike(other[0]) == judged_alike(from_json[0])
    assert from_file[2] == from_wire[2] == from_json[2] == []
    assert poisoned[2] == [(20 + i, reason) for i, reason in enumerate(reasons)]
    assert poisoned[1] == from_json[1][:40]
