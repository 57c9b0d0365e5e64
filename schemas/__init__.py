"""Contracts shared by replay, diff and reports: envelope and verdict JSON Schemas, store DDL,
run config and gate policy models, and the names in `records`. Imports nothing of the others."""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

ENVELOPE_SCHEMA_VERSION = 1
VERDICT_SCHEMA_VERSION = 1
STORE_SCHEMA_VERSION = 1
OUTCOME_STORE_SCHEMA_VERSION = 1
SERVED_STORE_SCHEMA_VERSION = 1
SERVED_RECORD_SCHEMA_VERSION = 1


def _text(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@cache
def envelope_schema() -> dict[str, Any]:
    """The request envelope JSON Schema (version 1)."""
    return dict(json.loads(_text("envelope.v1.schema.json")))


@cache
def verdict_schema() -> dict[str, Any]:
    """The verdict document JSON Schema (version 1)."""
    return dict(json.loads(_text("verdict.v1.schema.json")))


def store_ddl(segments_type: str, features_type: str) -> str:
    """The store DDL with the run's STRUCT types filled in."""
    return _text("store.sql").replace("{segments_type}", segments_type).replace("{features_type}", features_type)


def outcome_store_ddl() -> str:
    """The outcome store's DDL (schemas/outcomes.sql)."""
    return _text("outcomes.sql")


def served_store_ddl() -> str:
    """The served-traffic store's DDL (schemas/served.sql)."""
    return _text("served.sql")


@cache
def served_record_schema() -> dict[str, Any]:
    """The inference-log record JSON Schema (version 1), for the default JSON layout."""
    return dict(json.loads(_text("served.v1.schema.json")))
