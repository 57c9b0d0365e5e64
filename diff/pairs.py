"""The `pairs` relation every check reads: one row per sampled request with the baseline's,
the candidate's and the repeat's answers side by side, and its segment values (rare values
pooled as '(other)').

On a judge's cache (diff/exports.open_cache) the pairs are kept in the cache between looks
and brought up to date from the rows later looks added: a look's cost of building them grows
with the new rows, not the run. Anywhere else they are built in a temporary table. Both hold
the same rows, and `pairs` over them is the same relation."""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass
from typing import Any

import duckdb

from shadowdiff.diff.exports import cache_generation, changed_since, replaced_since, table_exists
from shadowdiff.diff.kept import KeptPairs, StoredCounts, kept_table
from shadowdiff.diff.load import RunInfo
from shadowdiff.diff.scratch import SCRATCH, has_scratch
from shadowdiff.schemas.records import BASELINE, BASELINE_REPEAT, candidate_variant
from shadowdiff.schemas.sql import ident, literal

OTHER = "(other)"
# of the stored copies of a request id, the first stored
FIRST_COPY = 'QUALIFY row_number() OVER (PARTITION BY request_id ORDER BY source, part, "offset") = 1'


@dataclass(frozen=True)
class Pooling:
    """How rare segment values are pooled as '(other)': values rarer than `min_share` of the
    run's requests, and all but the `max_values` most frequent."""

    max_values: int = 50
    min_share: float = 0.01


@dataclass(frozen=True)
class BuiltPairs:
    seg_exprs: list[str]  # segment expressions over `requests r`, for queries that need no outputs
    pooled: dict[str, dict[str, Any]]  # field -> {"values": [...], "distinct": k, "requests": n}
    duplicates: int = 0  # stored requests whose request id an earlier one already had (kept out of `pairs`)
    kept: KeptPairs | None = None  # on a judge's cache: the kept pairs and what the last update changed


def build_pairs(
    con: duckdb.DuckDBPyConnection, info: RunInfo, candidate: str, segment_fields: list[str], pooling: Pooling
) -> BuiltPairs:
    """Make `pairs` (a temporary view) over the run's requests and outputs for `candidate`."""
    gen = cache_generation(con)
    built = _segment_exprs(con, segment_fields, pooling, gen)
    # the judge and the report's charts ask for the same pairs on one connection: build once
    (n_requests,) = con.execute("SELECT count(*) FROM requests").fetchone() or (0,)
    key = repr((candidate, built.seg_exprs, n_requests, gen))
    try:
        have = con.execute("SELECT key, duplicates FROM pairs_key").fetchone()
    except duckdb.CatalogException:
        have = None
    if have is not None and have[0] == key:
        return BuiltPairs(built.seg_exprs, built.pooled, int(have[1]), _kept_state(con, candidate) if gen is not None else None)
    # a request sent twice (producer retries) is one pair: the first stored copy counts
    if gen is None:
        (distinct,) = con.execute("SELECT count(DISTINCT request_id) FROM requests").fetchone() or (0,)
        duplicates = int(n_requests) - int(distinct)
    else:
        duplicates = _kept_duplicates(con, gen)
    built = BuiltPairs(built.seg_exprs, built.pooled, duplicates)
    select = _PairsSelect(candidate, built.seg_exprs, dedupe=built.duplicates > 0)
    kept: KeptPairs | None = None
    if gen is None:
        # compressed in a one-off judge's scratch file where it has one (diff/scratch.py)
        table = f"{SCRATCH}.pairs_all" if has_scratch(con) else "pairs_all"
        create_pairs(con, table, select, temp=table == "pairs_all")
    else:
        kept = _kept(con, candidate, select, gen)
        table = kept.table
    built = BuiltPairs(built.seg_exprs, built.pooled, built.duplicates, kept)
    quota_filter = keep_bottom_k(con, info)
    con.execute(f"CREATE OR REPLACE TEMP VIEW pairs AS SELECT * FROM {table}{quota_filter}")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE pairs_key AS SELECT $key AS key, $dups AS duplicates",
        {"key": key, "dups": built.duplicates},
    )
    return built


@dataclass(frozen=True)
class _PairsSelect:
    candidate: str
    seg_exprs: list[str]
    dedupe: bool  # some request id was stored twice: keep its first copy

    @property
    def shape(self) -> str:
        """What the kept pairs were built with: another shape means building them anew."""
        return repr(self.seg_exprs)

    def sql(self, requests: str, outputs: str) -> str:
        """The pairs of the requests in relation `requests`, with their answers in `outputs`."""
        segs = (", ".join(self.seg_exprs) + ",") if self.seg_exprs else ""
        variants = {
            "base": literal(BASELINE),
            "cand": literal(candidate_variant(self.candidate)),
            "rep": literal(BASELINE_REPEAT),
        }

        def pick(column: str, variant: str) -> str:
            return f"any_value({column}) FILTER (WHERE variant = {variants[variant]})"

        # one pass over the outputs, pivoted to a row per request, then one join: three joins of
        # the outputs (one per variant) left DuckDB to guess their sizes, and on tables without a
        # key it built its hash tables on the wide side and ran out of memory at 5M pairs
        return f"""
        WITH r AS (SELECT * FROM {requests} {FIRST_COPY if self.dedupe else ""}),
        o AS (
          SELECT source, part, "offset",
                 {pick("score", "base")} AS b_score, {pick("label", "base")} AS b_label,
                 {pick("latency_ms", "base")} AS b_lat, {pick("error_class", "base")} AS b_err,
                 {pick("score", "cand")} AS c_score, {pick("label", "cand")} AS c_label,
                 {pick("latency_ms", "cand")} AS c_lat, {pick("error_class", "cand")} AS c_err,
                 {pick("called_at", "cand")} AS called_at,
                 {pick("score", "rep")} AS r_score, {pick("label", "rep")} AS r_label, {pick("error_class", "rep")} AS r_err,
                 bool_or(variant = {variants["rep"]}) AS has_repeat,
                 bool_or(variant = {variants["cand"]}) AS has_candidate
          FROM {outputs} WHERE variant IN ({variants["cand"]}, {variants["base"]}, {variants["rep"]})
          GROUP BY source, part, "offset")
        SELECT * EXCLUDE (pair_md5),
               -- the pair's share of the order-free digest of the pair set (diff/explain.py)
               (pair_md5 >> 64)::UBIGINT AS pair_hi, (pair_md5 & 18446744073709551615::UHUGEINT)::UBIGINT AS pair_lo
        FROM (
          SELECT r.source, r.part, r."offset", r.request_id, r.event_time, r.sampled_reason,
                 r.feature_version, {segs}
                 o.b_score, o.b_label, o.b_lat, o.b_err, o.c_score, o.c_label, o.c_lat, o.c_err, o.called_at,
                 o.r_score, o.r_label, o.r_err, o.has_repeat,
                 md5_number(concat_ws(':', r.source, r.part, r."offset", r.request_id)) AS pair_md5
          FROM r JOIN o ON o.source = r.source AND o.part = r.part AND o."offset" = r."offset"
          WHERE o.has_candidate)"""


# pairs built in one query, about: the pivot of the outputs is a hash aggregate with a group a
# pair. Smaller pieces built the pairs faster, at 10M and at 50M pairs alike, down to about this
# many (bench/judge_bench.py); below it the time stays the same
PAIRS_PER_QUERY = 1_000_000


def create_pairs(con: duckdb.DuckDBPyConnection, table: str, select: _PairsSelect, temp: bool) -> None:
    """Create `table` with every pair of the stored requests, a range of offsets at a time:
    each query pivots about PAIRS_PER_QUERY pairs' outputs. A request and its outputs share
    their coordinates, so every pair is built whole in exactly one range, as one query over all
    the rows would build it. Ranges of offsets, because rows are stored in batch order: a
    constant range of offsets lets DuckDB read only the row groups whose min/max offsets
    overlap it, so the store is read about once over all the ranges."""
    (n,) = con.execute("SELECT count(*) FROM requests").fetchone() or (0,)
    count = max(1, -(-int(n) // PAIRS_PER_QUERY))
    create = f"CREATE OR REPLACE {'TEMP ' if temp else ''}TABLE {table} AS"
    if count == 1:
        con.execute(f"{create} {select.sql('requests', 'outputs')}")
        return
    requests = "requests"
    if select.dedupe:
        # the first copy of a request id is chosen among all the run's copies, never in a range
        con.execute(f"CREATE OR REPLACE TEMP TABLE requests_first AS SELECT * FROM requests {FIRST_COPY}")
        requests, select = "requests_first", _PairsSelect(select.candidate, select.seg_exprs, dedupe=False)
    # equal counts of requests a range (approximately: any cut points partition the pairs)
    cuts = ", ".join(str(k / count) for k in range(1, count))
    (points,) = con.execute(f'SELECT approx_quantile("offset", [{cuts}]) FROM {requests}').fetchone() or ([],)
    edges = sorted({int(x) for x in points or []})
    ranges = [f'"offset" < {edges[0]}'] if edges else ["true"]
    ranges += [f'"offset" >= {lo} AND "offset" < {hi}' for lo, hi in itertools.pairwise(edges)]
    ranges += [f'"offset" >= {edges[-1]}'] if edges else []
    for i, where in enumerate(ranges):
        sql = select.sql(f"(SELECT * FROM {requests} WHERE {where})", f"(SELECT * FROM outputs WHERE {where})")
        con.execute(f"{create} {sql}" if i == 0 else f"INSERT INTO {table} {sql}")
    if requests != "requests":
        con.execute(f"DROP TABLE {requests}")


def _kept_names(candidate: str) -> tuple[str, str]:
    tag = hashlib.sha256(candidate.encode()).hexdigest()[:16]
    return "kept_pairs_" + tag, "kept_delta_" + tag


def _kept_state(con: duckdb.DuckDBPyConnection, candidate: str) -> KeptPairs | None:
    row = con.execute("SELECT shape, gen, from_gen FROM kept_pairs WHERE candidate = ?", [candidate]).fetchone()
    if row is None:
        return None
    table, delta = _kept_names(candidate)
    return KeptPairs(table, delta, int(row[1]), None if row[2] is None else int(row[2]), str(row[0]))


def _kept(con: duckdb.DuckDBPyConnection, candidate: str, select: _PairsSelect, gen: int) -> KeptPairs:
    """`candidate`'s pairs kept in the judge's cache, brought up to look `gen`: built whole the
    first time (or when the segments' pooling changed), else only the pairs of request ids that
    rows of later looks touched are built again, and what that changed is kept as the delta."""
    table, delta = _kept_names(candidate)
    con.execute("CREATE TABLE IF NOT EXISTS kept_pairs (candidate VARCHAR PRIMARY KEY, shape VARCHAR, gen INTEGER)")
    # caches of earlier versions kept no delta
    con.execute("ALTER TABLE kept_pairs ADD COLUMN IF NOT EXISTS from_gen INTEGER")
    state = con.execute("SELECT shape, gen FROM kept_pairs WHERE candidate = ?", [candidate]).fetchone()
    con.execute("BEGIN")
    try:
        if state is None or state[0] != select.shape or not table_exists(con, table):
            create_pairs(con, table, select, temp=False)
            con.execute(f"DROP TABLE IF EXISTS {delta}")
            _request_ids(con)
            from_gen: int | None = None
        elif int(state[1]) < gen:
            from_gen = int(state[1])
            _update_kept(con, table, delta, _PairsSelect(candidate, select.seg_exprs, dedupe=True), from_gen)
        else:
            con.execute("COMMIT")
            kept = _kept_state(con, candidate)
            assert kept is not None
            return kept
        con.execute(
            "INSERT OR REPLACE INTO kept_pairs (candidate, shape, gen, from_gen) VALUES (?, ?, ?, ?)",
            [candidate, select.shape, gen, from_gen],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return KeptPairs(table, delta, gen, from_gen, select.shape)


def _update_kept(con: duckdb.DuckDBPyConnection, table: str, delta: str, again: _PairsSelect, from_gen: int) -> None:
    """Build again the kept pairs of the request ids whose rows changed after look `from_gen`
    (new requests, new answers, a copy replaced), from all their stored rows, as a whole build
    would build them; `delta` gets the pairs taken back and those added."""
    if _touched(con, from_gen):
        # an id stored before (a producer's retry, a late answer, a replaced copy): its pair is
        # built again from every stored copy, found by scanning the stored requests
        con.execute(
            """CREATE OR REPLACE TEMP TABLE touched_rows AS
               SELECT * FROM requests WHERE request_id IN (SELECT request_id FROM touched)"""
        )
        taken_back = f"FROM {table} WHERE request_id IN (SELECT request_id FROM touched)"
        con.execute(f"CREATE OR REPLACE TABLE {delta} AS SELECT -1::TINYINT AS sign, * {taken_back}")
        con.execute(f"DELETE {taken_back}")
    else:
        # every touched id is new: its rows are all among the changed ones, and no kept pair has it
        con.execute(f"CREATE OR REPLACE TEMP TABLE touched_rows AS {changed_since('requests', from_gen)}")
        con.execute(f"CREATE OR REPLACE TABLE {delta} AS SELECT -1::TINYINT AS sign, * FROM {table} LIMIT 0")
    outputs = """(SELECT * FROM outputs o SEMI JOIN touched_rows t
                   ON t.source = o.source AND t.part = o.part AND t."offset" = o."offset")"""
    con.execute(f"CREATE OR REPLACE TEMP TABLE fresh_pairs AS {again.sql('touched_rows', outputs)}")
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM fresh_pairs")
    con.execute(f"INSERT INTO {delta} BY NAME SELECT 1::TINYINT AS sign, * FROM fresh_pairs")


# a request id's 64-bit share of its md5: stable across DuckDB versions (its hash() is not), and
# two ids share one about once in 10**19 pairs of ids (a clash costs a scan, never a wrong pair)
_ID_HASH = "(md5_number({}) & 18446744073709551615::UHUGEINT)::UBIGINT"


def _request_ids(con: duckdb.DuckDBPyConnection) -> None:
    """Bring `request_ids` up to the cache's latest look (built whole along with the kept pairs
    and duplicates, so that a look's probe never pays for it)."""
    con.execute("CREATE TABLE IF NOT EXISTS request_ids (h UBIGINT, gen INTEGER)")
    (have,) = con.execute("SELECT max(gen) FROM request_ids").fetchone() or (None,)
    con.execute(
        f"""INSERT INTO request_ids SELECT {_ID_HASH.format("request_id")}, gen
            FROM ({changed_since("requests", -1 if have is None else int(have), with_gen=True)})"""
    )


def _touched(con: duckdb.DuckDBPyConnection, gen: int) -> bool:
    """Make temp table `touched`: the request ids whose rows (requests or answers) changed
    after look `gen`. Says whether one of them may have been stored by look `gen` or before: by
    a row that a later look replaced with an earlier folder's copy (its id is then gone from the
    stored rows), or by a stored row of those looks, found in `request_ids` (the ids' hashes and
    the look that stored each). A probe of 8 bytes a stored request instead of a scan of every
    stored id, which DuckDB cannot prune (ids are in no order). Made once a connection for each
    `gen` (the duplicates and each candidate's pairs ask alike)."""
    # asked inside a transaction, which a failed statement would abort: looked up, not tried
    made = con.execute("SELECT 1 FROM duckdb_tables() WHERE table_name = 'touched_since' AND temporary").fetchone()
    if made:
        row = con.execute("SELECT seen FROM touched_since WHERE gen = ?", [gen]).fetchone()
        if row is not None:
            return bool(row[0])
    # the changed rows' coordinates are ranges of offsets, which DuckDB prunes the scans by
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE touched AS
            WITH changed AS (SELECT source, part, "offset" FROM ({changed_since("requests", gen)})
                             UNION SELECT source, part, "offset" FROM ({changed_since("outputs", gen)}))
            SELECT DISTINCT r.request_id FROM requests r SEMI JOIN changed c
              ON c.source = r.source AND c.part = r.part AND c."offset" = r."offset\""""
    )
    seen = bool(replaced_since(con, "requests", gen))
    if not seen:
        _request_ids(con)
        (n,) = con.execute(
            f"""SELECT count(*) FROM touched t SEMI JOIN (SELECT h FROM request_ids WHERE gen <= {int(gen)}) s
                ON s.h = {_ID_HASH.format("t.request_id")}"""
        ).fetchone() or (0,)
        seen = bool(n)
    con.execute("CREATE OR REPLACE TEMP TABLE touched_since AS SELECT ? AS gen, ? AS seen", [gen, seen])
    return seen


def _kept_duplicates(con: duckdb.DuckDBPyConnection, gen: int) -> int:
    """How many stored requests repeat an earlier one's request id, on a judge's cache: the
    request ids stored more than once are kept between looks (`kept_duplicates`), and a look
    counts again only the ids of the rows it added, instead of every id of the run."""
    con.execute("CREATE TABLE IF NOT EXISTS kept_duplicates_gen (gen INTEGER)")
    (have,) = con.execute("SELECT max(gen) FROM kept_duplicates_gen").fetchone() or (None,)
    if have is None or int(have) < gen or not table_exists(con, "kept_duplicates"):
        con.execute("BEGIN")
        try:
            if have is None or not table_exists(con, "kept_duplicates"):
                con.execute(
                    """CREATE OR REPLACE TABLE kept_duplicates AS SELECT request_id, count(*) AS copies
                       FROM requests GROUP BY request_id HAVING count(*) > 1"""
                )
            else:
                # a row a look added is new, or the copy of an earlier folder that replaced the
                # one at its coordinates: either way, its request id is counted again (with
                # the others touched), among the added rows alone when no earlier row had it
                rows = "requests" if _touched(con, int(have)) else f"({changed_since('requests', int(have))})"
                con.execute(
                    f"""CREATE OR REPLACE TEMP TABLE recounted AS SELECT request_id, count(*) AS copies
                        FROM {rows} WHERE request_id IN (SELECT request_id FROM touched) GROUP BY request_id"""
                )
                con.execute("DELETE FROM kept_duplicates WHERE request_id IN (SELECT request_id FROM recounted)")
                con.execute("INSERT INTO kept_duplicates SELECT * FROM recounted WHERE copies > 1")
            con.execute("DELETE FROM kept_duplicates_gen")
            con.execute("INSERT INTO kept_duplicates_gen VALUES (?)", [gen])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    (n,) = con.execute("SELECT coalesce(sum(copies - 1), 0) FROM kept_duplicates").fetchone() or (0,)
    return int(n)


def keep_bottom_k(con: duckdb.DuckDBPyConnection, info: RunInfo) -> str:
    """The filter that keeps out of `pairs` the quota samples not among their segment's k
    smallest hashes (replay/sampling.py): a request stored while among the k smallest so far,
    and pushed out by a smaller one later, is not part of the segment's sample. Empty when the
    run has no quotas."""
    if not info.has_quotas():
        return ""
    (hashes,) = con.execute("SELECT count(*) FROM quota_samples").fetchone() or (0,)
    if not hashes:  # no quota sample stored yet: nothing to filter
        return ""
    con.execute('CREATE OR REPLACE TEMP TABLE quota_kept (source VARCHAR, part INTEGER, "offset" BIGINT, quota VARCHAR)')
    # the named quotas and those `min_per_segment` opened for each segment value seen
    quotas = {q: k for (q,) in con.execute("SELECT DISTINCT quota FROM quota_samples").fetchall() if (k := info.quota_k(q))}
    for q, k in sorted(quotas.items()):
        field, _, value = q.partition("=")
        (n_rate,) = con.execute(
            f"SELECT count(*) FROM requests WHERE sampled_reason = 'rate' AND segments.{ident(field)} = ?", [value]
        ).fetchone() or (0,)
        con.execute(
            """INSERT INTO quota_kept SELECT source, part, "offset", quota FROM quota_samples WHERE quota = ?
               ORDER BY sample_hash, source, part, "offset" LIMIT ?""",
            [q, max(0, int(k) - int(n_rate))],
        )
    return """ p WHERE p.sampled_reason <> 'quota' OR EXISTS (
             SELECT 1 FROM quota_kept k WHERE k.source = p.source AND k.part = p.part AND k."offset" = p."offset")"""


def _raw_value(field: str) -> str:
    return f"coalesce(r.segments.{ident(field)}, '(missing)')"


class _SegmentValues(StoredCounts):
    """The stored requests per value of each segment field, kept in a judge's cache as of a look."""

    name = "segment_values"
    stored = "requests"
    keys = ("field", "v")
    counted = ("n",)

    def __init__(self, con: duckdb.DuckDBPyConnection, fields: list[str]) -> None:
        super().__init__(con)
        self.fields = fields
        self.spec = repr(fields)

    def counts(self, rows: str) -> str:
        return " UNION ALL ".join(
            f"SELECT {literal(f)} AS field, {_raw_value(f)} AS v, count(*) AS n FROM {rows} r GROUP BY v" for f in self.fields
        )


def _segment_exprs(con: duckdb.DuckDBPyConnection, fields: list[str], pooling: Pooling, gen: int | None) -> BuiltPairs:
    """The segment expressions, rare values pooled; on a judge's cache (`gen`) from counts kept
    between looks instead of a pass over every stored request for each field."""
    seg_exprs: list[str] = []
    pooled: dict[str, dict[str, Any]] = {}
    counted = kept_table(con, "segment_values", _SegmentValues(con, fields), gen) if gen is not None and fields else None
    for f in fields:
        raw = _raw_value(f)
        if counted is None:
            counts = con.execute(f"SELECT {raw} AS v, count(*) AS n FROM requests r GROUP BY 1 ORDER BY n DESC, v").fetchall()
        else:
            counts = con.execute(f"SELECT v, n FROM {counted} WHERE field = ? ORDER BY n DESC, v", [f]).fetchall()
        total = sum(int(n) for _, n in counts)
        keep = [v for v, n in counts[: pooling.max_values] if n >= pooling.min_share * total]
        rare = [(v, int(n)) for v, n in counts if v not in set(keep)]
        if not rare:
            seg_exprs.append(f"{raw} AS {ident('seg_' + f)}")
            continue
        pooled[f] = {
            "values": [str(v) for v, _ in rare[:50]],
            "distinct": len(rare),
            "requests": sum(n for _, n in rare),
        }
        kept = ", ".join(literal(str(v)) for v in keep) or "NULL"
        seg_exprs.append(f"CASE WHEN {raw} IN ({kept}) THEN {raw} ELSE '{OTHER}' END AS {ident('seg_' + f)}")
    return BuiltPairs(seg_exprs, pooled)


__all__ = ["OTHER", "BuiltPairs", "Pooling", "build_pairs", "keep_bottom_k"]
