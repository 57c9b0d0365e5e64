"""shadowdiff: shadow-replay and output-diff analysis for ML model rollouts.

Subpackages, with one-way dependencies (replay -> schemas <- diff <- reports):
    shadowdiff.schemas   contracts: run config, policy, envelope codec, store layout, verdict, gate
    shadowdiff.replay    Kafka / file sources -> sampling -> models -> DuckDB store
    shadowdiff.diff      the judge: evidence from the stored pairs -> checks -> verdict
    shadowdiff.reports   HTML reports, the gate service
    shadowdiff.cli       the thin `shadowdiff` command line and the demo
"""
