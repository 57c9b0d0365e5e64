"""OpenAPI 3.1 description of the gate service (served at /openapi.json)."""

from __future__ import annotations

from typing import Any

_status = {
    "type": "object",
    "required": ["run_id", "verdict", "reasons", "report_url"],
    "properties": {
        "run_id": {"type": "string"},
        "candidate": {"type": ["string", "null"]},
        "verdict": {"enum": ["go", "no_go", "pending"]},
        "reasons": {"type": "array", "items": {"type": "string"}},
        "failing_segments": {"type": "array", "items": {"type": "string"}},
        "waivers": {"type": "array", "items": {"type": "object"}},
        "pairs": {"type": "integer"},
        "digest": {"type": ["string", "null"]},
        "report_url": {"type": "string"},
        "document": {"description": "the verdict document (schemas/verdict.v1.schema.json), with ?full=1"},
    },
}
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
                "responses": {"200": _json(_status, "the gate status"), "404": _json(_error, "unknown run")},
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
                    "404": _json(_error, "unknown run"),
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
                "requestBody": _body(
                    ["check", "reason", "by"],
                    {"check": "string", "segment": "string", "candidate": "string", "reason": "string", "by": "string"},
                ),
                "responses": {
                    "201": _json({"type": "object"}, "recorded"),
                    "400": _json(_error, "malformed"),
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
    "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
}
