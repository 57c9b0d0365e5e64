"""The watching judge's cache of a run's exports: each look reads only the exports it has not
read, and what it holds (so the verdict) equals a full re-read of every export, whatever order
the exports arrived in, including copies of one row that two workers exported."""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import orjson
import pytest
from helpers import judged_document
from replays import Replay

from shadowdiff.diff import exports
from shadowdiff.diff.exports import open_cache, open_exports
from shadowdiff.diff.testing import Scenario, write_synthetic_store
from shadowdiff.schemas.errors import JudgeCacheBusy
from shadowdiff.schemas.layout import EXPORT_KEYS, EXPORT_TABLES, RunLayout
from shadowdiff.schemas.policy import Policy


def export_rows(store: Path, layout: RunLayout, worker: str, seq: int, lo: float, hi: float) -> Path:
    """Publish the store's rows whose offsets fall in [lo, hi) of the run as one export folder
    of `worker`, as replay/exports.py lays it out (manifest last)."""
    folder = layout.worker_exports(worker) / f"{seq:08d}"
    folder.mkdir(parents=True)
    with duckdb.connect(str(store), read_only=True) as con:
        (top,) = con.execute('SELECT max("offset") + 1 FROM requests').fetchone()  # type: ignore[misc]
        where = f'"offset" >= {int(lo * top)} AND "offset" < {int(hi * top)}'
        for t in EXPORT_TABLES:
            con.execute(f"COPY (SELECT * FROM {t} WHERE {where}) TO '{folder / f'{t}.parquet'}' (FORMAT parquet)")
        checkpoints = [
            {"source": s, "part": p, "next_offset": o, "consumed": c, "sampled": n}
            for s, p, o, c, n in con.execute("SELECT source, part, next_offset, consumed, sampled FROM checkpoints").fetchall()
        ]
        meta = {k: orjson.loads(v) for k, v in con.execute("SELECT key, value FROM run_meta").fetchall()}
    manifest = {"worker": worker, "seq": seq, "created_at": f"2026-12-01T00:00:{seq:02d}+00:00", "checkpoints": checkpoints}
    (folder / "manifest.json").write_bytes(orjson.dumps(manifest | {"run_meta": meta}))
    return folder


def small_run(tmp: Path, n: int, seed: int) -> tuple[Path, Path, RunLayout]:
    """The run home, a synthetic store of `n` pairs to export from, and the run's layout."""
    store = write_synthetic_store(tmp / "src" / "store-w0.duckdb", Scenario(n=n, segments=3, seed=seed), "run")
    return tmp / "runs", store, RunLayout(tmp / "runs", "run")


def slower_copy(folder: Path, factor: float) -> None:
    """The same rows as another worker stored them: same requests, other measured latencies."""
    path = str(folder / "outputs.parquet")
    with duckdb.connect() as con:
        con.execute(f"CREATE TABLE o AS SELECT * REPLACE (latency_ms * {factor} AS latency_ms) FROM '{path}'")
        con.execute(f"COPY o TO '{path}' (FORMAT parquet)")


def look_and_rejudge(home: Path, policy: Policy) -> tuple[dict, dict]:
    """The verdict documents of a watch's look (the cache) and of a full re-read of the exports."""
    docs = []
    for opened in (open_cache, open_exports):
        con = opened(home, "run")
        try:
            docs.append(judged_document(con, policy))
        finally:
            con.close()
    return docs[0], docs[1]


def contents(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    return {t: con.execute(f"SELECT * FROM {t} ORDER BY {EXPORT_KEYS[t]}").fetchall() for t in EXPORT_TABLES}


@pytest.mark.parametrize("rows_per_step", [4_000_000, 1], ids=["one-step", "a-folder-a-step"])
def test_each_look_reads_only_new_exports_and_equals_a_full_reread(tmp_path, monkeypatch, rows_per_step):
    # a look reads its folders a stretch at a time (of at most INGEST_ROWS_PER_STEP rows, or
    # a folder): the cache holds the same rows whatever the stretches
    monkeypatch.setattr(exports, "INGEST_ROWS_PER_STEP", rows_per_step)
    home, store, layout = small_run(tmp_path, 12_000, 3)
    policy = Policy(min_samples=200)
    hidden = tmp_path / "not-yet-published"
    hidden.mkdir()
    # w0 exports the first 60 % in three folders; w1 also stored 50-60 % during a rebalance
    # (its copy measured slower), then the rest
    export_rows(store, layout, "w0", 1, 0.0, 0.2)
    late = [export_rows(store, layout, "w0", 2, 0.2, 0.4), export_rows(store, layout, "w0", 3, 0.4, 0.6)]
    slower_copy(export_rows(store, layout, "w1", 1, 0.5, 0.6), 3.0)
    export_rows(store, layout, "w1", 2, 0.6, 1.0)
    # w0's folders 2 and 3 arrive only after w1's: its copy of 50-60 % is then the later one to
    # arrive, yet the one a full re-read keeps (the first folder by worker and number)
    for f in late:
        shutil.move(str(f), hidden / f.name)

    con = open_cache(home, "run")
    first = judged_document(con, policy)
    (ingested,) = con.execute("SELECT count(*) FROM ingested").fetchone()  # type: ignore[misc]
    con.close()
    assert ingested == 3
    assert first["data"]["pairs"] < 12_000  # 40-50 % not yet published

    for f in late:
        shutil.move(str(hidden / f.name), layout.worker_exports("w0") / f.name)
    con = open_cache(home, "run")
    try:
        (ingested,) = con.execute("SELECT count(*) FROM ingested").fetchone()  # type: ignore[misc]
        cached, looked = contents(con), judged_document(con, policy)
        (latency_sum,) = con.execute("SELECT sum(latency_ms) FROM outputs").fetchone()  # type: ignore[misc]
    finally:
        con.close()
    full_con = open_exports(home, "run")
    try:
        full, rejudged = contents(full_con), judged_document(full_con, policy)
    finally:
        full_con.close()
    assert ingested == 5  # the second look read the two new folders only
    assert cached == full  # the same rows, the same copy of each
    assert looked["data"]["pairs"] == rejudged["data"]["pairs"] == 12_000
    assert looked["digest"] == rejudged["digest"]
    # the rows 50-60 % are w0's copies (the store's latencies), not w1's slower ones
    with duckdb.connect(str(store), read_only=True) as src:
        (original,) = src.execute("SELECT sum(latency_ms) FROM outputs").fetchone()  # type: ignore[misc]
    assert abs(latency_sum - original) < 1e-9 * original


def test_a_damaged_cache_is_rebuilt_from_the_exports(tmp_path):
    home, store, layout = small_run(tmp_path, 3_000, 4)
    export_rows(store, layout, "w0", 1, 0.0, 1.0)
    layout.judge_cache.write_bytes(b"not a database")
    con = open_cache(home, "run")
    try:
        assert con.execute("SELECT count(*) FROM requests").fetchone() == (3_000,)
    finally:
        con.close()


def test_a_failed_look_does_not_stop_the_watch(tmp_path):
    # an export that cannot be read (a damaged Parquet file): the look fails and publishes
    # nothing, the watch says so and tries again; once the folder is readable, it judges
    home, store, layout = small_run(tmp_path, 3_000, 5)
    export_rows(store, layout, "w0", 1, 0.0, 0.5)
    broken = export_rows(store, layout, "w0", 2, 0.5, 1.0)
    good = (broken / "outputs.parquet").read_bytes()
    (broken / "outputs.parquet").write_bytes(b"PAR1 damaged")
    beat = layout.worker_exports("w0") / "heartbeat.json"
    beat.write_bytes(orjson.dumps({"worker": "w0", "at": datetime.now(UTC).isoformat(), "final": False}))
    (home / "run" / "policy.json").write_text(Policy(min_samples=200).model_dump_json(), encoding="utf-8")
    watch = Replay(args=["judge", "--run", "run", "--home", str(home), "--watch", "--every", "0.2"])
    watch.line("this look failed, trying again", 120)
    assert not layout.verdict("cand").exists()  # nothing published from a failed look
    (broken / "outputs.parquet").write_bytes(good)
    watch.until(lambda: layout.verdict("cand").exists(), 120, "a verdict once the export is readable")
    beat.write_bytes(orjson.dumps({"worker": "w0", "at": datetime.now(UTC).isoformat(), "final": True}))
    assert watch.proc.wait(120) in (0, 1, 2), "".join(watch.lines[-20:])
    assert orjson.loads(layout.verdict("cand").read_bytes())["data"]["pairs"] == 3_000


def test_a_damaged_export_fails_the_look_and_leaves_the_cache_as_it_was(tmp_path):
    home, store, layout = small_run(tmp_path, 3_000, 6)
    export_rows(store, layout, "w0", 1, 0.0, 0.5)
    open_cache(home, "run").close()
    broken = export_rows(store, layout, "w0", 2, 0.5, 1.0)
    (broken / "requests.parquet").write_bytes(b"PAR1 damaged")
    with pytest.raises(duckdb.Error):
        open_cache(home, "run")
    # not rebuilt from scratch at every look: what it had read is still there
    with duckdb.connect(str(layout.judge_cache), read_only=True) as con:
        assert con.execute("SELECT folder FROM ingested").fetchall() == [("w0/00000001",)]


def test_a_second_judge_is_refused_and_does_not_touch_the_cache(tmp_path):
    import subprocess
    import sys

    home, store, layout = small_run(tmp_path, 1_000, 8)
    export_rows(store, layout, "w0", 1, 0.0, 1.0)
    open_cache(home, "run").close()
    # another process holds the cache open until told to let go
    hold = f"import duckdb, sys; c = duckdb.connect({str(layout.judge_cache)!r}); print('held', flush=True); sys.stdin.read()"
    holder = subprocess.Popen(
        [sys.executable, "-c", hold],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(JudgeCacheBusy):
            open_cache(home, "run")
    finally:
        holder.communicate("", timeout=30)
    con = open_cache(home, "run")  # the cache is intact: nothing to read again
    try:
        assert con.execute("SELECT count(*) FROM ingested").fetchone() == (1,)
    finally:
        con.close()


@pytest.mark.parametrize("rows_per_step", [4_000_000, 1], ids=["one-step", "a-folder-a-step"])
def test_rows_two_folders_of_one_look_hold_keep_the_first_folders_copy(tmp_path, monkeypatch, rows_per_step):
    # w0 stored 0-60 %, w1 50-100 %: both copies of 50-60 % arrive in one look, read in one
    # stretch (its keys repeat) or in two (the second clashes with the cached first); w0's stays
    monkeypatch.setattr(exports, "INGEST_ROWS_PER_STEP", rows_per_step)
    home, store, layout = small_run(tmp_path, 6_000, 5)
    export_rows(store, layout, "w0", 1, 0.0, 0.6)
    slower_copy(export_rows(store, layout, "w1", 1, 0.5, 1.0), 3.0)
    con = open_cache(home, "run")
    try:
        cached = contents(con)
        (latency_sum,) = con.execute("SELECT sum(latency_ms) FROM outputs").fetchone()  # type: ignore[misc]
    finally:
        con.close()
    full_con = open_exports(home, "run")
    try:
        assert cached == contents(full_con)
    finally:
        full_con.close()
    assert len(cached["requests"]) == 6_000
    with duckdb.connect(str(store), read_only=True) as src:
        (original,) = src.execute('SELECT sum(latency_ms) FROM outputs WHERE "offset" < 3600').fetchone()  # type: ignore[misc]
        (slower,) = src.execute('SELECT 3 * sum(latency_ms) FROM outputs WHERE "offset" >= 3600').fetchone()  # type: ignore[misc]
    assert abs(latency_sum - (original + slower)) < 1e-9 * latency_sum


def resent_copy(folder: Path) -> None:
    """The folder's requests as a producer's retry stored them: the same request ids at other
    coordinates, which sort before the first copies (so they are the copies a pair keeps), with
    other measured latencies."""
    with duckdb.connect() as con:
        for t in ("requests", "outputs"):
            path = str(folder / f"{t}.parquet")
            slower = ", latency_ms * 2 AS latency_ms" if t == "outputs" else ""
            con.execute(f"CREATE TABLE x AS SELECT * REPLACE (part - 100 AS part{slower}) FROM '{path}'")
            con.execute(f"COPY x TO '{path}' (FORMAT parquet)")
            con.execute("DROP TABLE x")


def judged_pairs(con: duckdb.DuckDBPyConnection, policy: Policy) -> tuple[dict, list[tuple]]:
    """The verdict, then the pairs and the count of stored requests that repeat a request id."""
    doc = judged_document(con, policy)
    (duplicates,) = con.execute("SELECT duplicates FROM pairs_key").fetchone()  # type: ignore[misc]
    return doc, [*con.execute('SELECT * FROM pairs ORDER BY source, part, "offset"').fetchall(), ("duplicates", duplicates)]


def test_pairs_kept_between_looks_equal_pairs_built_whole_after_every_look(tmp_path, caplog):
    # five looks, each adding rows: a copy replaced by an earlier folder's, and a producer's
    # resent requests whose copies become the ones the pairs keep
    home, store, layout = small_run(tmp_path, 6_000, 9)
    policy = Policy(min_samples=200)
    hidden = tmp_path / "not-yet-published"
    hidden.mkdir()
    slower_copy(export_rows(store, layout, "w1", 1, 0.5, 0.6), 3.0)
    export_rows(store, layout, "w0", 1, 0.0, 0.3)
    late = export_rows(store, layout, "w0", 2, 0.3, 0.6)
    shutil.move(str(late), hidden / late.name)
    steps = [
        lambda: shutil.move(str(hidden / late.name), late),  # replaces w1's copies of 50-60 %
        lambda: export_rows(store, layout, "w1", 2, 0.6, 0.9),
        lambda: resent_copy(export_rows(store, layout, "w1", 3, 0.1, 0.2)),
        lambda: export_rows(store, layout, "w0", 3, 0.9, 1.0),
    ]
    caplog.set_level(logging.DEBUG, logger="shadowdiff.diff.kept")
    for look in range(1 + len(steps)):
        if look:
            steps[look - 1]()
        caplog.clear()
        con = open_cache(home, "run")
        try:
            (gen,) = con.execute("SELECT max(gen) FROM ingested").fetchone()  # type: ignore[misc]
            looked, kept = judged_pairs(con, policy)
            (built_at,) = con.execute("SELECT gen FROM kept_pairs").fetchone()  # type: ignore[misc]
        finally:
            con.close()
        full_con = open_exports(home, "run")
        try:
            rejudged, whole = judged_pairs(full_con, policy)
        finally:
            full_con.close()
        assert gen == built_at == look + 1
        assert len(kept) == len(whole), f"look {look + 1}: {len(kept) - 1} pairs kept, {len(whole) - 1} built whole"
        assert kept == whole, f"look {look + 1}: kept pairs differ from a whole build"
        assert looked["digest"] == rejudged["digest"]
        # the checks' aggregates followed the pairs: built whole at the first look only
        kept_aggregates = [r.getMessage() for r in caplog.records if r.name == "shadowdiff.diff.kept"]
        how = "built whole" if look == 0 else "updated"
        # built again, and why, at look 2: an earlier folder's copy replaced 600 stored requests
        # (the features' min and max and the rows sent cannot take a row back), and the run's growth doubles the
        # latency blocks' size (2,400 pairs, 32 a block, become 3,600, 64 a block); at look 3,
        # a new pair's score lies beyond the range so far, and the score histograms' bins move
        rebuilt = {
            1: [
                "features: built whole at look 2 (600 stored requests replaced by an earlier folder's copy)",
                "latency_blocks: built whole at look 2 (block size 32 -> 64)",
                "rows_sent: built whole at look 2 (1800 stored answers replaced by an earlier folder's copy)",
                "segment_values: built whole at look 2 (600 stored requests replaced by an earlier folder's copy)",
            ],
            2: ["score_bins: built whole at look 3 (its spec changed)"],
        }.get(look, [])
        followed = {"pair_stats", "windows_300", "windows_180", "latency_blocks", "features", "label_counts"}
        followed |= {"score_range", "score_bins", "score_moments", "pair_set", "examples", "rows_sent", "segment_values"}
        followed -= {m.split(":")[0] for m in rebuilt}
        assert followed <= {m.split(":")[0] for m in kept_aggregates if how in m}
        if look:
            assert sorted(m for m in kept_aggregates if "built whole" in m) == rebuilt
    resent = [p for p in kept if p[1] < 0]
    assert len(resent) == 600  # the retried copies are the pairs of their request ids
    assert kept[-1] == ("duplicates", 600)  # counted at look 4 from the rows it added, kept at look 5
    assert looked["data"]["pairs"] == 6_000


def test_feature_statistics_kept_between_looks_equal_a_full_rejudge(tmp_path, caplog, monkeypatch):
    # a reference window (the first half hour of two hours) that fills over the first looks,
    # nulls that start late, and a sample of 1,000 rows a side, so that each side outgrows its
    # sample rate while the looks go on: the kept features give the verdict a full re-judge gives
    from datetime import timedelta

    from shadowdiff.diff import features
    from shadowdiff.diff.testing import T0
    from shadowdiff.schemas.policy import Reference

    monkeypatch.setattr(features.FeatureTables.collect, "__defaults__", (1_000,))
    scenario = Scenario(n=8_000, segments=3, null_spike={"f1": 0.3}, null_spike_after=0.7, seed=12)
    store = write_synthetic_store(tmp_path / "src" / "store-w0.duckdb", scenario, "run")
    home, layout = tmp_path / "runs", RunLayout(tmp_path / "runs", "run")
    window = Reference(start=T0.isoformat(), end=(T0 + timedelta(minutes=30)).isoformat())
    policy = Policy(min_samples=200, reference=window)
    caplog.set_level(logging.DEBUG, logger="shadowdiff.diff.kept")
    for look, (lo, hi) in enumerate([(0.0, 0.15), (0.15, 0.4), (0.4, 0.7), (0.7, 0.85), (0.85, 1.0)]):
        export_rows(store, layout, "w0", look + 1, lo, hi)
        caplog.clear()
        looked, rejudged = look_and_rejudge(home, policy)
        assert looked["digest"] == rejudged["digest"], f"look {look + 1}"
        logged = [
            r.getMessage() for r in caplog.records if r.name == "shadowdiff.diff.kept" and r.getMessage().startswith("features")
        ]
        if look:
            # every look adds its rows; the out-of-range counts start again while the reference's
            # range still moves (its window fills at looks 1-2)
            assert f"features: updated from look {look} to {look + 1}" in logged
            if look >= 2:
                assert f"features_out_of_range: updated from look {look} to {look + 1}" in logged
    checks = {(c["check"], c["segment"], c.get("feature")): c for c in looked["checks"]}
    drift = [c for c in looked["checks"] if c["check"] == "feature_drift"]
    assert {c["feature"] for c in drift} == {"f0", "f1", "f2"}
    assert checks[("null_spike", "all", "f1")]["status"] != "pass"  # the late nulls are seen


def test_a_worker_that_never_exported_is_covered_and_named_silent(tmp_path):
    # w0 started (its first heartbeat) and then published nothing: the verdict holds none of its
    # data, so coverage must name it, not list w1 alone as if it were the whole run
    from shadowdiff.diff.exports import coverage

    home, store, layout = small_run(tmp_path, 1_000, 4)
    done = export_rows(store, layout, "w1", 1, 0.0, 1.0).parent
    (done / "heartbeat.json").write_bytes(
        orjson.dumps({"worker": "w1", "at": datetime.now(UTC).isoformat(), "seq": 1, "final": True})
    )
    started = layout.worker_exports("w0")
    started.mkdir(parents=True)
    beat = {"worker": "w0", "at": "2026-12-01T00:00:00+00:00", "seq": 0, "final": False}
    (started / "heartbeat.json").write_bytes(orjson.dumps(beat))
    for con in (open_cache(home, "run"), open_exports(home, "run")):
        try:
            covered = coverage(con, silent_after_s=60)
        finally:
            con.close()
        assert covered is not None
        workers = [(w.worker, w.exports, w.last_export_at, w.final) for w in covered.workers]
        assert workers == [("w0", 0, None, False), ("w1", 1, "2026-12-01T00:00:01+00:00", True)]
        assert covered.silent_workers == ["w0"]


def test_a_failed_export_shows_in_the_verdict_coverage_and_the_gate_metrics(tmp_path, monkeypatch):
    import random

    import httpx
    from helpers import envelope, file_config, jsonl, serving

    from shadowdiff.cli.wiring import judge_and_publish
    from shadowdiff.replay.exports import Exporter
    from shadowdiff.replay.job import run_replay
    from shadowdiff.reports.service import GateSettings, create_app
    from shadowdiff.schemas.config import load_config

    rng = random.Random(5)
    jsonl(tmp_path / "t.jsonl", [envelope(i, rng) for i in range(800)])
    cfg_path = file_config(tmp_path, "oom", "t.jsonl")
    # the second and third checkpoint exports fail as a COPY out of its memory budget does
    publish, calls = Exporter._publish, []

    def out_of_memory_twice(self: Exporter, tops: dict[str, int]) -> Path:
        calls.append(1)
        if len(calls) in (2, 3):
            raise duckdb.OutOfMemoryException("failed to allocate data of size 32.0 MiB (37.4 MiB/61.0 MiB used)")
        return publish(self, tops)

    monkeypatch.setattr(Exporter, "_publish", out_of_memory_twice)
    home, seen = tmp_path / "runs", []

    def look(writer, stats, final) -> None:  # what a judge of the exports publishes meanwhile
        if len(calls) == 3 and not seen:
            with open_exports(home, "oom") as con:
                seen.append(judge_and_publish(con, home, "oom", Policy(min_samples=50))[0])

    run_replay(load_config(cfg_path), on_checkpoint=look, checkpoint_every_s=0)
    (failing,) = seen[0].coverage.workers
    assert (failing.failed_exports, failing.failing_exports) == (2, 2)
    assert "OutOfMemoryException" in (failing.last_export_failure or "")
    assert any("its last 2 checkpoint exports failed" in r for r in seen[0].reasons)
    # later exports carried the rows: nothing is missing, and the failures stay counted
    with open_exports(home, "oom") as con:
        (pairs,) = con.execute("SELECT count(*) FROM requests").fetchone()  # type: ignore[misc]
        (final,) = judge_and_publish(con, home, "oom", Policy(min_samples=50), final=True)
    assert pairs == 800
    (worker,) = final.coverage.workers
    assert (worker.failed_exports, worker.failing_exports) == (2, 0)
    with serving(create_app(GateSettings(home=home, token="t"))) as url:
        metrics = httpx.get(f"{url}/metrics").text
    assert 'shadowdiff_worker_failed_exports{run="oom",worker="w0"} 2' in metrics
    assert 'shadowdiff_worker_failing_exports{run="oom",worker="w0"} 0' in metrics


def test_latency_blocks_kept_in_stretches_equal_a_full_rejudge(tmp_path, monkeypatch):
    # at scale the latency blocks are computed a few blocks a query, the pairs ranked once in a
    # table's row ids; on the cache that happens inside the aggregates' transaction, where a new
    # table's row ids start at 2**62: every pair once fell into one block, and a 5M-pair watch
    # said "1 stretch of time" where a full re-judge said 10
    from shadowdiff.diff import aggregate

    monkeypatch.setattr(aggregate, "QUANTILE_PAIRS_PER_QUERY", 700)
    home, store, layout = small_run(tmp_path, 6_000, 5)
    export_rows(store, layout, "w0", 1, 0.0, 0.5)
    export_rows(store, layout, "w0", 2, 0.5, 1.0)
    policy = Policy(min_samples=200)
    looked, whole = look_and_rejudge(home, policy)
    latency = next(c for c in looked["checks"] if c["kind"] == "latency" and c["segment"] == "all")
    assert latency["extra"]["blocks"] == 10, latency["detail"]
    assert looked["digest"] == whole["digest"]
