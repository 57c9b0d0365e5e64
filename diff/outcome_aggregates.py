"""Per segment, what the outcome checks and the report read from the pairs joined to their first
outcome (`outcome_first`, diff/outcomes.py): the checks' sums, each side's reliability bins, a
histogram of the outcomes' delays, and the pairs the models disagree on.

Every part is a sum over signed rows (+1 a pair as it is now, -1 a pair as it was), so a look
of the watching judge brings the parts it keeps up to date from the pairs it changed and the
requests whose outcomes arrived, instead of joining every pair again (`kept_partials`); a full
re-judge builds the same parts from every pair. The examples are kept as the first rows of the
order they are shown in, a few times as many as shown, exactly: rows that a look changed are
taken out and put back as they are now, and a new row enters only ahead of the last one kept."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np

from shadowdiff.diff.aggregate import hist_quantiles, log_bin
from shadowdiff.diff.exports import table_exists
from shadowdiff.diff.kept import RATE, KeptPairs
from shadowdiff.diff.segments import ALL, SegmentSets
from shadowdiff.schemas.sql import literal

log = logging.getLogger(__name__)

# probabilities are clipped this far from 0 and 1 for the log loss: a confident miss costs
# log(1e6) = 13.8 instead of infinity
_LOG_CLIP = 1e-6
CALIBRATION_BINS = 10
EXAMPLES_KEPT = 4  # times the examples shown: the kept rows a look may take out before a rebuild

# a row's place in the examples: models disagreeing on a label before numbers, the candidate
# wrong before the baseline, the candidate's excess error largest first, then a fixed order
_LABELLED = "b_label IS NOT NULL AND c_label IS NOT NULL AND y_label IS NOT NULL AND b_label <> c_label"
_NUMERIC = "b_score IS NOT NULL AND c_score IS NOT NULL AND y_value IS NOT NULL AND b_score <> c_score"
_CLOSER = f"""CASE WHEN {_LABELLED} THEN (CASE WHEN c_label = y_label THEN 'candidate'
                                              WHEN b_label = y_label THEN 'baseline' ELSE 'neither' END)
                   ELSE (CASE WHEN abs(c_score - y_value) < abs(b_score - y_value) THEN 'candidate'
                              WHEN abs(c_score - y_value) > abs(b_score - y_value) THEN 'baseline' ELSE 'both' END) END"""
_ORDER_KEY = f"""{{'numeric': NOT ({_LABELLED}), 'candidate_right': ({_CLOSER}) = 'candidate',
                   'edge': CASE WHEN {_LABELLED} THEN 0 ELSE abs(b_score - y_value) - abs(c_score - y_value) END,
                   'hi': pair_hi, 'lo': pair_lo}}"""


def outcome_rows(sets: SegmentSets, pairs: str) -> str:
    """SQL: the pairs of relation `pairs` with their first outcome (if any), in the columns
    the outcome aggregates read."""
    segs = "".join(f"p.{c}, " for c in sets.columns)
    return f"""SELECT p.request_id, {segs}p.event_time, p.b_label, p.c_label, p.b_score, p.c_score, p.pair_hi, p.pair_lo,
                      f.y_label, f.y_value, f.observed_at, f.request_id IS NOT NULL AS has_outcome
               FROM {pairs} p LEFT JOIN outcome_first f ON f.request_id = p.request_id"""


def signed(rows: str) -> str:
    """SQL: the rows of query `rows`, each added once (+1)."""
    return f"(SELECT 1::TINYINT AS sign, * FROM ({rows}))"


def _sums(positive: str) -> dict[str, str]:
    """Per signed row with an outcome: what each check sums (NULL where it does not apply)."""
    y01 = _binary(positive)
    probs = "b_score BETWEEN 0 AND 1 AND c_score BETWEEN 0 AND 1"

    def ll(score: str) -> str:
        s = f"greatest(least({score}, {1 - _LOG_CLIP}), {_LOG_CLIP})"
        return f"-({y01} * ln({s}) + (1 - {y01}) * ln(1 - {s}))"

    cls = "b_label IS NOT NULL AND c_label IS NOT NULL AND y_label IS NOT NULL"
    prob = f"{probs} AND {y01} IS NOT NULL"
    reg = "b_score IS NOT NULL AND c_score IS NOT NULL AND y_value IS NOT NULL"
    d_brier = f"(power(c_score - {y01}, 2) - power(b_score - {y01}, 2))"
    d_ll = f"({ll('c_score')} - {ll('b_score')})"
    d_ae = "(abs(c_score - y_value) - abs(b_score - y_value))"
    d_se = "(power(c_score - y_value, 2) - power(b_score - y_value, 2))"

    def count(cond: str) -> str:
        return f"coalesce(sum(sign) FILTER (WHERE {cond}), 0)::BIGINT"

    def total(x: str, cond: str) -> str:
        return f"coalesce(fsum(sign * {x}) FILTER (WHERE {cond}), 0)"

    return {
        "n_pairs": "coalesce(sum(sign), 0)::BIGINT",
        "n_out": count("has_outcome"),
        "n_cls": count(cls),
        "b_wrong": count(f"{cls} AND b_label <> y_label"),
        "c_wrong": count(f"{cls} AND c_label <> y_label"),
        "c_only_wrong": count(f"{cls} AND c_label <> y_label AND b_label = y_label"),
        "b_only_wrong": count(f"{cls} AND b_label <> y_label AND c_label = y_label"),
        "n_prob": count(prob),
        "sum_brier_b": total(f"power(b_score - {y01}, 2)", prob),
        "sum_brier_c": total(f"power(c_score - {y01}, 2)", prob),
        "sum_d_brier": total(d_brier, prob),
        "sum_d_brier2": total(f"power({d_brier}, 2)", prob),
        "sum_ll_b": total(ll("b_score"), prob),
        "sum_ll_c": total(ll("c_score"), prob),
        "sum_d_ll": total(d_ll, prob),
        "sum_d_ll2": total(f"power({d_ll}, 2)", prob),
        "n_reg": count(reg),
        "sum_ae_b": total("abs(b_score - y_value)", reg),
        "sum_ae_c": total("abs(c_score - y_value)", reg),
        "sum_d_ae": total(d_ae, reg),
        "sum_d_ae2": total(f"power({d_ae}, 2)", reg),
        "sum_se_b": total("power(b_score - y_value, 2)", reg),
        "sum_se_c": total("power(c_score - y_value, 2)", reg),
        "sum_d_se": total(d_se, reg),
        "sum_d_se2": total(f"power({d_se}, 2)", reg),
    }


def _binary(positive: str) -> str:
    """The binary truth a probability score is read against: a 0/1 value, else the label."""
    return f"(CASE WHEN y_value IN (0, 1) THEN y_value WHEN y_label IS NOT NULL THEN (y_label = {literal(positive)})::DOUBLE END)"


class Partials:
    """The parts of one relation of signed rows: `<t>` the sums per segment, `<t>_cal` the
    reliability bins per segment and side, `<t>_delay` the delays' log-binned histogram (the
    whole relation), `<t>_ex` its first examples (at most `keep` rows)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, sets: SegmentSets, positive: str, keep: int) -> None:
        self.con = con
        self.sets = sets
        self.positive = positive
        self.keep = keep
        self.sums = _sums(positive)
        self.spec = repr((sets.sets, positive, CALIBRATION_BINS, keep, 1))

    def build(self, table: str, source: str, kind: str = "", examples: bool = True) -> None:
        sets, con = self.sets, self.con
        inner = ", ".join(f"{sql} AS {name}" for name, sql in self.sums.items())
        con.execute(
            f"""CREATE OR REPLACE {kind} TABLE {table} AS SELECT {sets.name_sql()} AS segment, {", ".join(self.sums)} FROM (
                  SELECT {sets.select()}, {inner} FROM {source} {sets.group_by()})"""
        )
        y01 = _binary(self.positive)
        parts = []
        for side, col in (("baseline", "b_score"), ("candidate", "c_score")):
            b = f"least(floor({col} * {CALIBRATION_BINS}), {CALIBRATION_BINS - 1})::INTEGER"
            parts.append(
                f"""SELECT {sets.name_sql()} AS segment, '{side}' AS side, bin, n, s_score, s_y FROM (
                      SELECT {sets.select()}, {b} AS bin, sum(sign)::BIGINT AS n, fsum(sign * {col}) AS s_score,
                             fsum(sign * {y01}) AS s_y
                      FROM {source} WHERE has_outcome AND {col} BETWEEN 0 AND 1 AND {y01} IS NOT NULL
                      {sets.group_by([b])})"""
            )
        con.execute(f"CREATE OR REPLACE {kind} TABLE {table}_cal AS {' UNION ALL '.join(parts)}")
        # an outcome observed before its request (clocks apart) counts as no delay
        delay = log_bin("greatest(epoch(observed_at) - epoch(event_time), 0)")
        con.execute(
            f"""CREATE OR REPLACE {kind} TABLE {table}_delay AS SELECT {delay} AS bin, sum(sign)::BIGINT AS k
                FROM {source} WHERE has_outcome GROUP BY ALL"""
        )
        if examples:  # a delta's examples are merged row by row (`apply`)
            con.execute(f"CREATE OR REPLACE {kind} TABLE {table}_ex AS {self.first_examples(source, self.keep)}")

    @staticmethod
    def first_examples(source: str, limit: int) -> str:
        """SQL: the first `limit` example rows of `source` (signed rows, all +1), with their key."""
        return f"""SELECT * EXCLUDE (sign), ({_CLOSER}) AS closer, {_ORDER_KEY} AS okey FROM {source}
                   WHERE has_outcome AND (({_LABELLED}) OR ({_NUMERIC})) ORDER BY okey LIMIT {int(limit)}"""

    def apply(self, table: str, delta: str, complete: bool) -> bool:
        """Add the signed rows of `delta` (those taken back as they were, -1; those of now, +1)
        to the kept parts; returns whether the kept examples are every example there is."""
        con = self.con
        self.build("outcome_delta", delta, "TEMP", examples=False)
        merged = ", ".join(f"{'fsum' if 'fsum' in sql else 'sum'}({c}) AS {c}" for c, sql in self.sums.items())
        con.execute(f"""CREATE OR REPLACE TABLE {table} AS SELECT segment, {merged} FROM (
                        SELECT * FROM {table} UNION ALL BY NAME SELECT * FROM outcome_delta) GROUP BY segment""")
        con.execute(f"""CREATE OR REPLACE TABLE {table}_cal AS
                        SELECT segment, side, bin, sum(n)::BIGINT AS n, fsum(s_score) AS s_score, fsum(s_y) AS s_y FROM (
                          SELECT * FROM {table}_cal UNION ALL SELECT * FROM outcome_delta_cal)
                        GROUP BY ALL HAVING sum(n) <> 0""")
        con.execute(f"""CREATE OR REPLACE TABLE {table}_delay AS SELECT bin, sum(k)::BIGINT AS k FROM (
                        SELECT * FROM {table}_delay UNION ALL SELECT * FROM outcome_delta_delay)
                        GROUP BY bin HAVING sum(k) <> 0""")
        # the examples: the rows taken back leave; the rows of now enter, all of them while
        # the kept ones are every example there is, else only ahead of the last one kept
        con.execute(f"""CREATE OR REPLACE TEMP TABLE outcome_touched AS SELECT DISTINCT request_id FROM {delta}""")
        con.execute(f"DELETE FROM {table}_ex WHERE request_id IN (SELECT request_id FROM outcome_touched)")
        entering = self.first_examples(f"(SELECT * FROM {delta} WHERE sign > 0)", 1 << 62)
        if not complete:
            entering = f"SELECT * FROM ({entering}) WHERE okey < (SELECT max(okey) FROM {table}_ex)"
        con.execute(f"INSERT INTO {table}_ex SELECT * FROM ({entering})")
        (kept,) = con.execute(f"SELECT count(*) FROM {table}_ex").fetchone() or (0,)
        con.execute(
            f"""DELETE FROM {table}_ex WHERE okey > (SELECT max(okey) FROM (
                  SELECT okey FROM {table}_ex ORDER BY okey LIMIT {self.keep}))"""
        )
        return bool(complete and kept <= self.keep)


@dataclass(frozen=True)
class _State:
    spec: str
    pairs_gen: int
    outcome_seq: int
    complete: bool  # the kept examples are every example there is


def kept_partials(con: duckdb.DuckDBPyConnection, kept: KeptPairs, partials: Partials, outcome_seq: int) -> str:
    """The parts of the kept pairs' rate samples with their outcomes, kept in the judge's cache
    as of the kept pairs' look and outcome ingest `outcome_seq` (diff/outcomes.py), in one
    transaction: current; or brought up from the pairs the kept pairs' delta changed and the
    requests whose outcomes arrived since; or built whole."""
    tag = hashlib.sha256(kept.table.encode()).hexdigest()[:16]
    spec = f"{kept.shape}|{partials.spec}"  # pairs built with other segment values: built whole
    table, rows = f"kept_outcomes_{tag}", f"kept_outcome_rows_{tag}"
    con.execute(
        """CREATE TABLE IF NOT EXISTS kept_outcome_state (name VARCHAR PRIMARY KEY, spec VARCHAR, pairs_gen INTEGER,
           outcome_seq INTEGER, complete BOOLEAN)"""
    )
    row = con.execute("SELECT spec, pairs_gen, outcome_seq, complete FROM kept_outcome_state WHERE name = ?", [table]).fetchone()
    state = _State(str(row[0]), int(row[1]), int(row[2]), bool(row[3])) if row is not None else None
    usable = state is not None and state.spec == spec and table_exists(con, table) and table_exists(con, rows)
    if usable and state is not None and (state.pairs_gen, state.outcome_seq) == (kept.gen, outcome_seq):
        return table
    con.execute("BEGIN")
    try:
        if usable and state is not None and state.pairs_gen in (kept.gen, kept.from_gen) and state.outcome_seq <= outcome_seq:
            complete = _update(con, kept, partials, table, rows, state, outcome_seq)
            log.debug("outcomes: updated from look %s, outcomes %s", state.pairs_gen, state.outcome_seq)
        else:
            complete = _build(con, kept, partials, table, rows)
            log.debug("outcomes: built whole at look %s, outcomes %s", kept.gen, outcome_seq)
        con.execute(
            "INSERT OR REPLACE INTO kept_outcome_state VALUES (?, ?, ?, ?, ?)",
            [table, spec, kept.gen, outcome_seq, complete],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return table


def _build(con: duckdb.DuckDBPyConnection, kept: KeptPairs, partials: Partials, table: str, rows: str) -> bool:
    con.execute(f"CREATE OR REPLACE TABLE {rows} AS {outcome_rows(partials.sets, f'(SELECT * FROM {kept.table} WHERE {RATE})')}")
    partials.build(table, f"(SELECT 1::TINYINT AS sign, * FROM {rows})")
    (n,) = con.execute(f"SELECT count(*) FROM {table}_ex").fetchone() or (0,)
    return bool(n < partials.keep)


def _update(
    con: duckdb.DuckDBPyConnection, kept: KeptPairs, partials: Partials, table: str, rows: str, state: _State, outcome_seq: int
) -> bool:
    moved = f"UNION SELECT request_id FROM {kept.delta}" if state.pairs_gen != kept.gen else ""
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE outcome_affected AS
            SELECT request_id FROM cached_outcome_records WHERE outcome_seq > {int(state.outcome_seq)} {moved}"""
    )
    now = outcome_rows(
        partials.sets,
        f"(SELECT * FROM {kept.table} WHERE {RATE} AND request_id IN (SELECT request_id FROM outcome_affected))",
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE outcome_rows_now AS {now}")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE outcome_signed AS
            SELECT -1::TINYINT AS sign, * FROM {rows} WHERE request_id IN (SELECT request_id FROM outcome_affected)
            UNION ALL BY NAME SELECT 1::TINYINT AS sign, * FROM outcome_rows_now"""
    )
    complete = partials.apply(table, "outcome_signed", state.complete)
    con.execute(f"DELETE FROM {rows} WHERE request_id IN (SELECT request_id FROM outcome_affected)")
    con.execute(f"INSERT INTO {rows} BY NAME SELECT * FROM outcome_rows_now")
    (n,) = con.execute(f"SELECT count(*) FROM {table}_ex").fetchone() or (0,)
    if not complete and n < partials.keep // EXAMPLES_KEPT:
        # too many kept examples were taken back to know the first ones: read them again
        again = partials.first_examples(f"(SELECT 1 AS sign, * FROM {rows})", partials.keep)
        con.execute(f"CREATE OR REPLACE TABLE {table}_ex AS {again}")
        (n,) = con.execute(f"SELECT count(*) FROM {table}_ex").fetchone() or (0,)
        complete = n < partials.keep
    return complete


def outcome_stats(
    con: duckdb.DuckDBPyConnection,
    sets: SegmentSets,
    positive: str,
    where: str = "TRUE",
    kept: KeptPairs | None = None,
    examples: int = 10,
    outcome_seq: int | None = None,
) -> dict[str, dict[str, Any]]:
    """Per segment: the outcome checks' sums over the pairs `where` selects (`n_pairs`), those
    with an outcome (`n_out`) and each side's reliability bins (`calibration`); `all` also
    carries the delays' quantiles, the first `examples` disagreements and `n_out_every_pair`
    (pairs of any sampling with an outcome). With `kept` (a judge's cache) and `outcome_seq`,
    the rate samples' parts are kept between looks (`kept_partials`); `where` is then every
    pair or the rate samples, as for the pair statistics."""
    partials = Partials(con, sets, positive, max(examples, 1) * EXAMPLES_KEPT)
    tables: list[str] = []
    if kept is not None and outcome_seq is not None:
        tables.append(kept_partials(con, kept, partials, outcome_seq))
        if where != RATE:  # quota samples are few: added afresh at every look
            partials.build(
                "outcomes_rest",
                f"(SELECT 1::TINYINT AS sign, * FROM ({outcome_rows(sets, f'(SELECT * FROM pairs WHERE NOT ({RATE}))')}))",
                "TEMP",
            )
            tables.append("outcomes_rest")
    else:
        partials.build(
            "outcomes_whole",
            f"(SELECT 1::TINYINT AS sign, * FROM ({outcome_rows(sets, f'(SELECT * FROM pairs WHERE {where})')}))",
            "TEMP",
        )
        tables.append("outcomes_whole")
    union = " UNION ALL BY NAME ".join(f"SELECT * FROM {t}" for t in tables)
    merged = ", ".join(f"{'fsum' if 'fsum' in sql else 'sum'}({c}) AS {c}" for c, sql in partials.sums.items())
    cur = con.execute(f"SELECT segment, {merged} FROM ({union}) GROUP BY segment HAVING sum(n_pairs) > 0")
    names = [d[0] for d in cur.description]
    out = {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}
    cal = " UNION ALL ".join(f"SELECT * FROM {t}_cal" for t in tables)
    for seg, side, _, n, s_score, s_y in con.execute(
        f"""SELECT segment, side, bin, sum(n) AS n, fsum(s_score), fsum(s_y) FROM ({cal})
            GROUP BY ALL HAVING sum(n) > 0 ORDER BY segment, side, bin"""
    ).fetchall():
        if seg in out:
            out[seg].setdefault("calibration", {}).setdefault(side, []).append([float(s_score) / n, float(s_y) / n, int(n)])
    if ALL in out:
        whole = out[ALL]
        whole["delay_s"] = _delay_quantiles(con, tables)
        whole["examples"] = _examples(con, tables, sets, examples)
        whole["n_out_every_pair"] = int(whole["n_out"])
        if where == RATE:
            (more,) = con.execute(
                f"SELECT count(*) FROM pairs p SEMI JOIN outcome_first f ON f.request_id = p.request_id WHERE NOT ({RATE})"
            ).fetchone() or (0,)
            whole["n_out_every_pair"] += int(more)
    return out


def _delay_quantiles(con: duckdb.DuckDBPyConnection, tables: Sequence[str]) -> list[float | None]:
    union = " UNION ALL ".join(f"SELECT * FROM {t}_delay" for t in tables)
    cols = con.execute(f"SELECT bin, sum(k)::BIGINT AS k FROM ({union}) GROUP BY bin").fetchnumpy()
    bins, counts = np.asarray(cols["bin"], dtype=np.int64), np.asarray(cols["k"], dtype=np.int64)
    got = hist_quantiles(bins, counts, [0.5, 0.9, 0.99]) if len(bins) else None
    return [None, None, None] if got is None else [float(v) for v in got]


def _examples(con: duckdb.DuckDBPyConnection, tables: Sequence[str], sets: SegmentSets, limit: int) -> list[dict[str, Any]]:
    union = " UNION ALL BY NAME ".join(f"SELECT * FROM {t}_ex" for t in tables)
    fields = sets.fields
    segs = "".join(f"{c}, " for c in sets.columns)
    rows = con.execute(
        f"""SELECT request_id, {segs}b_label, c_label, b_score, c_score, y_label, y_value, closer
            FROM ({union}) ORDER BY okey LIMIT {int(limit)}"""
    ).fetchall()
    out = []
    for r in rows:
        rid, *rest = r
        seg_values = dict(zip(fields, rest[: len(fields)], strict=True))
        b_label, c_label, b_score, c_score, y_label, y_value, closer = rest[len(fields) :]
        out.append(
            {
                "request_id": rid,
                "segments": {k: v for k, v in seg_values.items() if v is not None},
                "baseline": {"label": b_label, "score": b_score},
                "candidate": {"label": c_label, "score": c_score},
                "outcome": {"label": y_label, "value": y_value},
                "right": closer,
            }
        )
    return out
