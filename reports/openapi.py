"""OpenAPI 3.1 description of the gate service (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

from shadowdiff.schemas.gate import GateAnswer, WaiverRequest
from shadowdiff.schemas.verdict import Verdict


def _answer_schema() -> dict[str, Any]:
    """The gate answer's schema, generated from its typed model (schemas/gate.py), plus what the
    service adds to it."""
    schema = GateAnswer.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    _COMPONENTS.update(defs)
    schema["properties"]["report_url"] = {"type": "string"}
    schema["properties"]["waivers"] = {"description": "the same as waivers_applied (the first gate API's name)", "type": "array"}
    verdict = Verdict.model_json_schema(ref_template="#/components/schemas/{model}")
    _COMPONENTS.update(verdict.pop("$defs", {}))
    _COMPONENTS["Verdict"] = verdict
    schema["properties"]["document"] = {
        "$ref": "#/components/schemas/Verdict",
        "description": "the verdict document (schemas/verdict.v1.schema.json), with ?full=1",
    }
    return schema


_COMPONENTS: dict[str, Any] = {}
_status = _answer_schema()
_waiver_request = WaiverRequest.model_json_schema(ref_template="#/components/schemas/{model}")
_error = {"type": "object", "properties": {"error": {"type": "string"}}}
_run = {"name": "run", "in": "path", "required": True, "schema": {"type": "string"}}
_cand = {"name": "candidate", "in": "query", "required": False, "schema": {"type": "string"}}


def _json(schema: dict[str, Any], desc: str) -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


def _body(required: list[str], fields: dict[str, str]) -> dict[str, Any]:
    """A required JSON object request body with the given field types."""
    schema = {"type": "object", "required": required, "properties": {k: {"type": t} for k, t in fields.items()}}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "shadowdiff gate",
        "version": "1.0.0",
        "description": "Go/no-go status of shadow runs for deploy pipelines (Argo Rollouts, Flagger, CI).",
    },
    "paths": {
        "/runs/{run}/verdict": {
            "get": {
                "summary": "Argo Rollouts web metric: 200 with the verdict for a known run",
                "parameters": [_run, _cand, {"name": "full", "in": "query", "schema": {"enum": ["1"]}}],
                "responses": {"200": _json(_status, "the gate status"), "404": _json(_error, "unknown run or candidate")},
            }
        },
        "/runs/{run}/flagger": {
            "post": {
                "summary": "Flagger webhook: 200 go; 412 no_go; 425 pending",
                "parameters": [_run],
                "requestBody": _body(
                    ["name", "namespace", "phase"],
                    {"name": "string", "namespace": "string", "phase": "string", "checksum": "string", "metadata": "object"},
                ),
                "responses": {
                    "200": _json(_status, "go"),
                    "400": _json(_error, "malformed payload"),
                    "404": _json(_error, "unknown run or candidate"),
                    "412": _json(_status, "no_go"),
                    "425": _json(_status, "pending"),
                },
            }
        },
        "/runs/{run}/waivers": {
            "post": {
                "summary": "Record a waiver for a failing check (bearer token)",
                "security": [{"bearer": []}],
                "parameters": [_run],
                "requestBody": {"required": True, "content": {"application/json": {"schema": _waiver_request}}},
                "responses": {
                    "201": _json({"type": "object"}, "recorded"),
                    "422": _json(_error, "invalid waiver (the problems are listed), or an expiry past the maximum"),
                    "401": _json(_error, "no or wrong token"),
                    "404": _json(_error, "unknown run"),
                },
            }
        },
        "/runs": {"get": {"summary": "Runs and their verdicts", "responses": {"200": _json({"type": "object"}, "runs")}}},
        "/runs/{run}/report": {
            "get": {
                "summary": "The HTML report",
                "parameters": [_run, _cand],
                "responses": {"200": {"description": "text/html"}, "404": _json(_error, "none")},
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"}, "ok")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text/plain"}}}},
    },
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": _COMPONENTS},
}
