"""Replay: read production requests (Kafka or a recording), sample them, call the baseline and
candidate models, and store the pairs in DuckDB exactly once. Depends on `schemas` only."""
