"""The model client interface and the output reader shared by all clients."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from shadowdiff.schemas.config import OutputSpec
from shadowdiff.schemas.paths import lookup
from shadowdiff.schemas.records import ErrorClass


class CallResult(NamedTuple):
    """One row's answer: the raw output, or an error class with detail. A NamedTuple: one is
    built per row per variant, and a frozen dataclass costs ~4x more to build."""

    output: Any
    latency_ms: float | None
    error_class: ErrorClass | None
    error_detail: str | None
    attempts: int


class ModelClient(Protocol):
    name: str
    model_version: str | None

    async def predict(self, inputs: list[dict[str, Any]]) -> list[CallResult]:
        """One result per input, in order. Never raises for a model's failure."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ReadOutput:
    score: float | None
    label: str | None
    error: str | None  # a wrong-shape description, or None


class OutputReader:
    """`read_output` compiled once per run: (score, label, wrong-shape problem or None)."""

    def __init__(self, spec: OutputSpec) -> None:
        self.spec = spec
        single = spec.kind == "score" and spec.score_path and "." not in spec.score_path
        self._score_key = spec.score_path if single else None
        self._label_key = spec.label_path if spec.label_path and "." not in spec.label_path else None
        self._simple = single and (not spec.label_path or self._label_key is not None)
        self.bare_scores = spec.kind == "score"  # a bare number answer is the score

    def read(self, output: Any) -> tuple[float | None, str | None, str | None]:
        if type(output) is float and self.bare_scores and output - output == 0:
            # a bare number is the score (tensor protocols, vectorised in-process models)
            threshold = self.spec.threshold
            return output, None if threshold is None else ("1" if output >= threshold else "0"), None
        if self._simple and type(output) is dict:
            # the common shape, {"score": 0.42, ...}, without the general path walk
            v = output.get(self._score_key)
            if (type(v) is float or type(v) is int) and v - v == 0:
                label = None
                if self._label_key is not None:
                    lv = output.get(self._label_key)
                    label = None if lv is None or type(lv) in (dict, list) else str(lv)
                if label is None and self.spec.threshold is not None:
                    label = "1" if v >= self.spec.threshold else "0"
                return float(v), label, None
        r = read_output(self.spec, output)
        return r.score, r.label, r.error


def read_output(spec: OutputSpec, output: Any) -> ReadOutput:
    """Pull the score and label a config points at out of a model output."""
    score: float | None = None
    label: str | None = None
    if spec.kind in ("score", "label"):
        if spec.kind == "score" or spec.score_path:
            # tensor protocols (OIP v2) answer a bare number per row: that is the score
            v = output if isinstance(output, int | float) else lookup(output, spec.score_path, None)
            if isinstance(v, list) and len(v) == 1:
                v = v[0]
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                if spec.kind == "score":
                    return ReadOutput(None, None, f"no finite number at {spec.score_path or '<output>'}")
            else:
                score = float(v)
        if spec.label_path or spec.kind == "label":
            v = lookup(output, spec.label_path, None)
            if v is None or isinstance(v, dict | list):
                if spec.kind == "label":
                    return ReadOutput(score, None, f"no label at {spec.label_path or '<output>'}")
            else:
                label = str(v)
        if label is None and score is not None and spec.threshold is not None:
            label = "1" if score >= spec.threshold else "0"
    elif spec.kind == "ranking":
        v = lookup(output, spec.score_path, None)
        if not isinstance(v, list):
            return ReadOutput(None, None, f"no list at {spec.score_path or '<output>'}")
    return ReadOutput(score, label, None)
