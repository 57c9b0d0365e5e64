"""Big synthetic run stores generated inside DuckDB (10M pairs in seconds, little Python memory)."""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shadowdiff.diff.testing import Scenario, config_for, write_run_meta
from shadowdiff.schemas import store_ddl


def big_store(
    path: Path,
    n: int,
    segments: int = 20,
    features: int = 15,
    run_id: str = "big",
    hours: float = 24.0,
    latency_factor: float = 1.0,
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    feats = [f"f{i}" for i in range(features)]
    con.execute(store_ddl('STRUCT("seg" VARCHAR)', "STRUCT(" + ", ".join(f'"{f}" DOUBLE' for f in feats) + ")"))
    con.execute("SELECT setseed(0.42)")
    feat_expr = ", ".join(f"'{f}': (random() + random() + random() - 1.5) * 2 + {i % 3}" for i, f in enumerate(feats))
    con.execute(f"""
        CREATE TEMP TABLE base AS
        SELECT i, 'sim' AS source, (i % 4)::INT AS part, i AS "offset",
               'r' || i AS request_id,
               TIMESTAMPTZ '2026-11-25 00:00:00+00' + to_microseconds((i * {hours * 3600e6 / n})::BIGINT) AS event_time,
               's' || lpad(((hash(i) % {segments}))::VARCHAR, 2, '0') AS seg,
               random() < 0.3 AS label, random() AS score
        FROM range({n}) t(i)""")
    con.execute(f"""INSERT INTO requests
        SELECT source, part, "offset", request_id, event_time, 'rate', {{'seg': seg}}, {{{feat_expr}}}, NULL, 'v1'
        FROM base""")
    for variant, flip, lat in (
        ("baseline", 0.005, 1.0),
        ("baseline_repeat", 0.005, 1.0),
        ("candidate:cand", 0.005, latency_factor),
    ):
        con.execute(f"""INSERT INTO outputs
            SELECT source, part, "offset", '{variant}', 'v',
                   score + (random() - 0.5) * 0.02,
                   CASE WHEN (random() < {flip}) <> label THEN '1' ELSE '0' END,
                   NULL, exp(ln(20) + 0.4 * (random() + random() + random() - 1.5) * 2) * {lat}, NULL, NULL, 1,
                   event_time
            FROM base""")
    con.execute(f"INSERT INTO checkpoints SELECT 'sim', p, {n // 4}, {n // 4}, {n // 4} FROM range(4) t(p)")
    write_run_meta(con, config_for(Scenario(features=features), run_id), run_id)
    con.execute("DROP TABLE base")
    con.close()
    return path
