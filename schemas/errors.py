"""The one exception root of shadowdiff and its small tree.

ShadowdiffError
├── ConfigError      a run config or gate policy is invalid (says which key, what was expected)
├── StoreError       a DuckDB store cannot be opened or has the wrong schema
│   └── JudgeCacheBusy another process holds the run's judge cache (one watch per run)
├── RunNotFound      no run with that id
└── UnknownCandidate the run has no candidate of that name
"""

from __future__ import annotations


class ShadowdiffError(Exception):
    """Root of every error shadowdiff raises on purpose."""


class ConfigError(ShadowdiffError):
    """Invalid run config or policy. `problems` lists `key: what was expected` lines."""

    def __init__(self, origin: str, problems: list[str]) -> None:
        self.origin = origin
        self.problems = problems
        super().__init__(f"invalid {origin}:\n  " + "\n  ".join(problems))


class StoreError(ShadowdiffError):
    """A store cannot be opened, or was written by an incompatible version."""


class JudgeCacheBusy(StoreError):
    """Another process holds the run's judge cache open: one watch per run."""


class RunNotFound(ShadowdiffError):
    """No run with the requested id."""


class UnknownCandidate(ShadowdiffError):
    """The run has no candidate of the requested name."""


class VerdictOutsideContract(ShadowdiffError):
    """A verdict about to be published names properties its models do not declare: the judge
    emits only the contract's fields (schemas/verdict.py), so this is a bug, never a verdict."""
