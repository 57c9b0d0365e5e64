"""The evidence bundle (the seed's "preserve evidence"): everything needed to argue about a
rollout decision later, in one checksummed zip that can be attached to an incident."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

import duckdb
import orjson

from shadowdiff.diff.judge import judge
from shadowdiff.diff.load import RunInfo, open_run, run_info
from shadowdiff.diff.outcomes import load_outcomes
from shadowdiff.reports.html import write_report
from shadowdiff.schemas.errors import ShadowdiffError
from shadowdiff.schemas.layout import RunLayout
from shadowdiff.schemas.verdict import Verdict, verdict_dict

RANDOM_SAMPLE = 200


def _dump(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS, default=str)


_SAMPLE_COLUMNS = [
    "request_id", "source", "partition", "offset", "event_time", "segments", "input",
    "baseline", "baseline_ms", "candidate", "candidate_ms", "candidate_error",
]  # fmt: skip


def write_bundle(home: Path, run_id: str, out: Path, policy: Any, candidate: str | None = None) -> Path:
    """Re-judge the run from its stores and write the bundle; returns its path. The MANIFEST
    lists each file's sha256; BUNDLE.sha256 is the digest of the manifest itself."""
    con = open_run(home, run_id)
    try:
        load_outcomes(con, RunLayout(home, run_id))
        info = run_info(con)
        verdict = judge(con, policy, candidate)
        files = _evidence(con, info, verdict)
        report = write_report(home, verdict, out.with_suffix(".report.html"), with_evidently=False, con=con)
    finally:
        con.close()
    files["report.html"] = report.read_bytes()
    report.unlink()
    manifest = "".join(f"{hashlib.sha256(b).hexdigest()}  {name}\n" for name, b in sorted(files.items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(files.items()):
            zf.writestr(name, data)
        zf.writestr("MANIFEST.sha256", manifest)
        zf.writestr("BUNDLE.sha256", hashlib.sha256(manifest.encode()).hexdigest() + "  MANIFEST.sha256\n")
    return out


def _evidence(con: duckdb.DuckDBPyConnection, info: RunInfo, verdict: Verdict) -> dict[str, bytes]:
    """The bundle's files beside the report: the verdict, what the run was (config, versions,
    window), a random sample of its pairs and its dead letters."""
    cand = verdict.candidate
    sample = con.execute(
        """SELECT r.request_id, r.source, r.part, r."offset", r.event_time, r.segments, r.model_input,
                  b.output AS baseline, b.latency_ms AS baseline_ms, c.output AS candidate,
                  c.latency_ms AS candidate_ms, c.error_class
           FROM requests r
           LEFT JOIN outputs b ON b.source = r.source AND b.part = r.part AND b."offset" = r."offset"
                               AND b.variant = 'baseline'
           LEFT JOIN outputs c ON c.source = r.source AND c.part = r.part AND c."offset" = r."offset"
                               AND c.variant = $cand
           ORDER BY hash(r.part, r."offset") LIMIT $n""",
        {"cand": f"candidate:{cand}", "n": RANDOM_SAMPLE},
    ).fetchall()
    dead = con.execute('SELECT source, part, "offset", reason, detail FROM dead_letters ORDER BY 1, 2, 3 LIMIT 1000').fetchall()
    published = verdict_dict(verdict)
    versions = {
        "candidate": info.candidate(cand).model_dump(mode="json"),
        "baseline": info.run.baseline.model_dump(mode="json"),
        "software": info.meta.get("versions"),
        "config_digest": info.meta.get("config_digest"),
        "policy_digest": verdict.policy.digest,
    }

    def pair(row: tuple[Any, ...]) -> bytes:
        values = [orjson.loads(v) if isinstance(v, str) and v[:1] in "{[" else v for v in row]
        return orjson.dumps(dict(zip(_SAMPLE_COLUMNS, values, strict=True)), default=str)

    return {
        "verdict.json": _dump(published),
        "config.json": _dump(info.config),
        "run_meta.json": _dump({k: v for k, v in info.meta.items() if k != "config"}),
        "versions.json": _dump(versions),
        "kafka_window.json": _dump({"window": published["data"]["window"], "offsets": published["data"]["offsets"]}),
        "most_different_pairs.json": _dump(published["examples"]),
        "random_pairs.jsonl": b"\n".join(pair(row) for row in sample) + b"\n",
        "dead_letters.json": _dump(
            [dict(zip(["source", "partition", "offset", "reason", "detail"], d, strict=True)) for d in dead]
        ),
    }


def verify_bundle(path: Path) -> list[str]:
    """What is wrong with a bundle: files whose checksum does not match the manifest (by name),
    `missing: <name>` for listed files that are absent, `unlisted: <name>` for files the manifest
    does not cover. Empty when the bundle is intact. Raises ShadowdiffError when it is not a
    bundle at all."""
    try:
        zf = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise ShadowdiffError(f"{path}: not a readable evidence bundle ({err})") from err
    bad: list[str] = []
    with zf:
        names = set(zf.namelist())
        if not {"MANIFEST.sha256", "BUNDLE.sha256"} <= names:
            raise ShadowdiffError(f"{path}: not an evidence bundle (no MANIFEST.sha256 / BUNDLE.sha256)")
        manifest = zf.read("MANIFEST.sha256").decode("utf-8", "replace")
        if zf.read("BUNDLE.sha256").decode("utf-8", "replace").split()[:1] != [hashlib.sha256(manifest.encode()).hexdigest()]:
            bad.append("MANIFEST.sha256")
        listed = set()
        for line in manifest.splitlines():
            digest, _, name = line.partition("  ")
            listed.add(name)
            if name not in names:
                bad.append(f"missing: {name}")
            elif hashlib.sha256(zf.read(name)).hexdigest() != digest:
                bad.append(name)
        bad += [f"unlisted: {n}" for n in sorted(names - listed - {"MANIFEST.sha256", "BUNDLE.sha256"})]
    return bad
