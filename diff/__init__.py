"""Diff: read the pairs a run stored, compare candidate with baseline per segment (outputs,
latency, errors, drift, data quality) and turn the evidence into a defensible verdict.
Depends on `schemas` only; never imports `replay`."""
