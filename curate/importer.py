"""Import rollout dumps of other trainers into `rollouts`, under a new run.

Formats:
- ``pebr``: PeBR-R1 / EasyR1 ``rollout_results.jsonl``: ``qid, response, ground_truth, score.accuracy``.
  The reference writes each response as its first and last 50 characters (``first...last``): such
  rollouts are imported with ``truncated = true`` (their accuracy is the dump's, so bands are exact),
  counted in the report, and `curate regrade` refuses them.
- ``verl``: verl's ``trainer.rollout_data_dir``, a folder of ``<step>.jsonl`` files (one run: all steps
  together make a sample's n): ``input, output, gts, score, step`` plus every key the reward function
  returned. verl writes no question id: ``--qid-field`` names a key the reward returned (e.g. ``qid``
  from ``extra_info``, where `curate select --format verl` puts it). A rollout is correct when the
  reward's ``acc`` says so (``true`` or 1); a record without ``acc`` is judged by ``score >=
  --correct-threshold``, which must then be given: verl's score is a reward (DAPO's is -1 or 1, a
  weighted one mixes in format), not an accuracy.

DuckDB reads the file; no Python loop touches a line. The dump is read once, in parallel, into a
staging Parquet file in the run's spill folder that keeps the file's order (a row's position in it is
its record's position); the record count comes from that one reading. The rollouts are a relation
over that file, which `Store.write` checks against the rollouts schema and has DuckDB write in
parallel. Lines DuckDB cannot parse (or that carry no question id) are counted against the file's
records (its non-blank lines) and reported.

Why a file and not a temporary table: past the memory limit a table spills uncompressed blocks and
reads them back, while the staging file is compressed and read column by column; at 20 M rollouts
the import took a fifth less time, at 2 M the same (BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from curate.difficulty import warm_cache
from curate.store import Store, new_run_id, sql_file, sql_literal
from curate.views import sql_identifier
from schemas.errors import PebrError
from schemas.io import sha256_file

MAX_RECORD_BYTES = 16 << 20
"""Records up to this length are always read (DuckDB's reader takes up to twice as much, and at
least 32 MiB); a longer one stops the import with a clear error, before anything is written."""
MEMORY_LIMIT = "512MB"
"""DuckDB's memory limit for an import; its joins and aggregations spill to <store>/tmp beyond it."""
NULL_COLUMNS = ("format", "keyword", "length", "clip", "n_tokens")
"""Rollout columns an import leaves NULL: dumps carry the accuracy only."""
TRUNCATED_CUT = 50
"""The reference's dump keeps this many characters at each end of a response, joined by '...'."""
MAX_THREADS = 4
"""Most DuckDB threads of an import: each reading thread holds a buffer of 2 x MAX_RECORD_BYTES (at
least 32 MiB), so more threads would not fit MEMORY_LIMIT."""


@dataclass
class ImportReport:
    run_id: str | None
    lines: int = 0
    rollouts: int = 0
    unreadable: int = 0
    unmatched_rollouts: int = 0
    unmatched_qids: int = 0
    already_imported: str | None = None
    """The earlier run that imported the same dump (same content, same options), when nothing was done."""
    truncated: int = 0
    """Rollouts whose response is the reference's truncated form (`TRUNCATED_CUT` characters at each end)."""
    correct_from: dict[str, int] | None = None
    """How correctness was read: rule -> rollouts (``acc``, ``score >= T``, ``score.accuracy >= T``)."""


def dump_files(path: Path) -> list[Path]:
    """The files of a dump: the file itself, or a folder's ``*.jsonl`` files in step order (verl names
    them ``<step>.jsonl``; other names after, by name)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise PebrError(f"{path}: no such file or folder")
    files = [p for p in path.iterdir() if p.suffix == ".jsonl" and p.is_file()]
    if not files:
        raise PebrError(f"{path}: a folder without .jsonl files (a verl rollout_data_dir holds <step>.jsonl)")
    return sorted(files, key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.name))


def _sniff(path: Path) -> str:
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                try:
                    first = json.loads(line)
                except ValueError:
                    raise PebrError(f"{path}: the first line is not JSON") from None
                break
        else:
            raise PebrError(f"{path}: empty file")
    if not isinstance(first, dict):
        raise PebrError(f"{path}: lines must be JSON objects")
    if "response" in first and "qid" in first:
        return "pebr"
    if "output" in first and "input" in first:
        return "verl"
    raise PebrError(f"{path}: unknown rollout format (keys {sorted(first)}); expected PeBR/EasyR1 or verl dumps")


QID_HELP = ("verl dumps carry no question id: pass --qid-field NAME, a key your reward function returns "
            "(verl dumps every key of its result), e.g. return {'score': s, 'acc': ok, 'qid': extra_info['qid']}; "
            "`curate select --format verl` writes qid and sample_id into extra_info")


def _select_sql(fmt: str, qid_field: str | None) -> tuple[str, dict]:
    """SELECT list over the reader (qid, response, `score`: the dump's reward at its own precision,
    `acc`: the dump's own correctness when it has one, as 0/1) and the reader's columns."""
    if fmt == "pebr":
        # ground_truth is the sample's answer, already in the store. A score that is not an object
        # with a numeric accuracy reads as NULL (tested), the record is kept.
        columns = {"qid": "VARCHAR", "response": "VARCHAR", "score": "STRUCT(accuracy DOUBLE)"}
        return "SELECT qid, response, CAST(score.accuracy AS FLOAT) AS score", columns
    if not qid_field:
        raise PebrError(QID_HELP)
    columns = {"input": "VARCHAR", "output": "VARCHAR", "score": "DOUBLE", "acc": "JSON", qid_field: "VARCHAR"}
    if qid_field == "acc":
        raise PebrError("--qid-field acc: acc is the reward's correctness, not a question id")
    # The field name is the user's: an identifier, quoted, never SQL (the reader's `columns` quote it as a literal).
    acc = ("CASE json_type(acc) WHEN 'BOOLEAN' THEN CAST(CAST(acc AS BOOLEAN) AS DOUBLE) "
           "ELSE TRY_CAST(acc AS DOUBLE) END AS acc")
    return f"SELECT CAST({sql_identifier(qid_field)} AS VARCHAR) AS qid, output AS response, score, {acc}", columns


def _digest(files: list[Path], folder: bool) -> str:
    if not folder:
        return sha256_file(files[0])
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{sha256_file(p)}\0".encode())
    return h.hexdigest()


def import_rollouts(store: Store, path: Path, source: str | None = None, fmt: str | None = None,
                    qid_field: str | None = None, correct_threshold: float | None = None,
                    again: bool = False) -> ImportReport:
    """Import the dump at `path` (a file, or a folder of step files: one run) as a new run. A dump a
    committed run already imported (the same content, by its sha256, with the same options) is not
    imported again unless `again`: the report names that run in `already_imported` (a re-run after a
    kill that landed after the commit adds nothing).

    `correct_threshold`: a rollout without its own correctness (verl's ``acc``) is correct when its
    score is at least this (default 1.0 for the reference's accuracy; required for verl dumps whose
    records lack ``acc``)."""
    files = dump_files(path)
    fmt = fmt or _sniff(files[0])
    select, columns = _select_sql(fmt, qid_field)
    # The dump's hash (1.4 s for 2 M lines here) runs beside the import, with the GIL released; it is
    # awaited first only when an earlier import read a dump of the same size.
    hasher = ThreadPoolExecutor(1)
    digest = hasher.submit(_digest, files, path.is_dir())
    hasher.shutdown(wait=False)
    size = sum(p.stat().st_size for p in files)
    options = {"format": fmt, "qid_field": qid_field, "source": source,
               "correct_threshold": None if correct_threshold is None else float(correct_threshold)}

    def fingerprint() -> str:
        return json.dumps({"dump_sha256": digest.result(), **options}, sort_keys=True)

    with store.writing(f"curate import-rollouts {path.name}"):
        # Store.write checks the rollouts against their Arrow schema: pyarrow loads (0.2 s of CPU) on
        # the side while DuckDB, started by now, works with the GIL released.
        threading.Thread(target=_load_arrow, daemon=True).start()
        run_id = new_run_id("import")
        spill = store.root / "tmp" / run_id
        spill.parent.mkdir(exist_ok=True)
        con = store.connect()
        try:
            same_size = not again and con.execute(
                "SELECT count(*) FROM runs WHERE kind = 'import' "
                "AND TRY_CAST(json_extract_string(config, '$.dump_size') AS BIGINT) = ?", [size]).fetchone()[0]
            prior = con.execute(
                "SELECT run_id FROM runs WHERE kind = 'import' AND json_extract_string(config, '$.fingerprint') = ? "
                "ORDER BY created_at LIMIT 1", [fingerprint()]).fetchone() if same_size else None
            if prior:
                return ImportReport(run_id=None, already_imported=prior[0])
            report, part = _import(store, con, path, files, run_id, fmt, select, columns, source, correct_threshold, spill)
            store.add_run(run_id, "import", con, config={
                "path": str(path.absolute()), "dump_sha256": digest.result(), "dump_size": size,
                "fingerprint": fingerprint(),
                "format": fmt, "qid_field": qid_field, "source": source,
                "correct_threshold": correct_threshold, "lines": report.lines, "rollouts": report.rollouts,
                "unreadable": report.unreadable, "unmatched_rollouts": report.unmatched_rollouts,
                "files": [p.name for p in files] if path.is_dir() else None, "truncated": report.truncated,
                "correct_from": report.correct_from,
            }, grader_version=f"imported:{fmt}")
            # So that every `curate select` of the run starts from it; read from the run's one part.
            warm_cache(store, run_id, con, rollouts=f"read_parquet({sql_file(part)})", null_columns=NULL_COLUMNS)
        finally:
            con.close()
            shutil.rmtree(spill, ignore_errors=True)  # ours; readers of user SQL spill beside it (curate.sql.reader)
            with contextlib.suppress(OSError):
                spill.parent.rmdir()  # when no reader spills there
        return report


def _load_arrow() -> None:
    import pyarrow.parquet  # noqa: F401

    import schemas.tables  # noqa: F401


def _import(store: Store, con, path: Path, files: list[Path], run_id: str, fmt: str, select: str, columns: dict,
            source: str | None, threshold: float | None, spill: Path) -> tuple[ImportReport, Path]:
    """Write the dump's rollouts as the run's part (not yet committed); returns the counts and the part."""
    import duckdb

    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    con.execute(f"SET threads = {max(1, min(os.cpu_count() or 1, MAX_THREADS))}")
    con.execute(f"SET temp_directory = {sql_literal(spill)}")
    source_filter = "WHERE source = ?" if source else ""
    con.execute("CREATE TEMP TABLE qmap AS SELECT qid, any_value(sample_id) AS sample_id, count(*) AS n "
                f"FROM {store.committed_scan(con, 'samples')} {source_filter} GROUP BY qid", [source] if source else [])
    ambiguous = con.execute("SELECT count(*) FROM qmap WHERE n > 1").fetchone()[0]
    if ambiguous:
        raise PebrError(f"{ambiguous} qid(s) name samples of several sources; pass --source to choose one")
    cols = "{" + ", ".join(f"{sql_literal(k)}: {sql_literal(v)}" for k, v in columns.items()) + "}"
    paths = "[" + ", ".join(sql_file(p) for p in files) + "]"
    reader = (f"read_json({paths}, format = 'newline_delimited', columns = {cols}, ignore_errors = true, "
              f"maximum_object_size = {MAX_RECORD_BYTES})")
    # One parallel reading of the dump into a staging file that keeps the file's order: each non-blank
    # line is one row (a line the reader cannot parse is a row of NULLs), and a row's position in the
    # file is its record's position, which becomes the imported rollout's index. A dump still being
    # appended to is imported, and accounted for, as this reading saw it.
    spill.mkdir(parents=True, exist_ok=True)
    staged = spill / "dump.parquet"
    con.execute("SET preserve_insertion_order = true")
    try:
        con.execute(f"COPY ({select} FROM {reader}) TO {sql_literal(staged)} (FORMAT parquet, COMPRESSION snappy)")
    except duckdb.InvalidInputException as exc:
        if "maximum_object_size" not in str(exc):
            raise
        raise PebrError(f"{path}: a record is longer than the importer reads ({MAX_RECORD_BYTES >> 20} MiB, "
                        "pebr's curate.importer.MAX_RECORD_BYTES); nothing was imported") from None
    dump = f"read_parquet({sql_file(staged)}, file_row_number = true)"
    has_acc = fmt == "verl"  # the reference's dumps carry their accuracy only
    lines, rollouts, with_acc = con.execute("SELECT count(*), count(qid), "
                                            f"{'count(qid) FILTER (acc IS NOT NULL)' if has_acc else '0'} FROM {dump}").fetchone()
    if rollouts == 0:
        raise PebrError(f"{path}: no rollout could be read ({lines} lines)")
    if threshold is None:
        if with_acc < rollouts and fmt == "verl":
            raise PebrError(f"{path}: {rollouts - with_acc:,} of {rollouts:,} rollouts carry no `acc`, and verl's score "
                            "is a reward, not an accuracy: pass --correct-threshold T (correct when score >= T); "
                            "nothing was imported")
        threshold = 1.0
    rule = "score.accuracy" if fmt == "pebr" else "score"
    correct_from = {k: v for k, v in {"acc": with_acc, f"{rule} >= {threshold:g}": rollouts - with_acc}.items() if v}
    con.execute("SET preserve_insertion_order = false")
    reward_nulls = ", ".join(f"CAST(NULL AS FLOAT) AS \"{c}\"" for c in NULL_COLUMNS if c != "n_tokens")
    # correct: the dump's own acc (1 or true) when the record has one, else score >= threshold; the
    # accuracy column is that correctness as 0/1 for verl (its score is a reward, kept as overall).
    correct = f"coalesce(d.score, 0) >= {float(threshold)!r}"
    if has_acc:
        correct = f"CASE WHEN d.acc IS NOT NULL THEN d.acc >= 1 ELSE {correct} END"
    accuracy = "CAST(d.score AS FLOAT)" if fmt == "pebr" else f"CAST(({correct}) AS FLOAT)"
    cut = TRUNCATED_CUT
    truncated = (f"(length(d.response) = {2 * cut + 3} AND substr(d.response, {cut + 1}, 3) = '...')" if fmt == "pebr"
                 else "false")
    rows = con.sql(f"""
        SELECT {sql_literal(run_id)} AS run_id, m.sample_id, d.qid, CAST(d.file_row_number AS INTEGER) AS rollout_idx,
          CAST(NULL AS BIGINT) AS seed, coalesce(d.response, '') AS response, CAST(NULL AS INTEGER) AS n_tokens,
          CAST(NULL AS VARCHAR) AS finish_reason, {accuracy} AS accuracy, {reward_nulls},
          CAST(d.score AS FLOAT) AS overall, {correct} AS correct, coalesce({truncated}, false) AS truncated
        FROM {dump} d LEFT JOIN qmap m USING (qid)
        WHERE d.qid IS NOT NULL
    """)
    part = store.write("rollouts", rows, run_id)
    # Rollouts matched to no sample, counted on the written part (uncommitted: a failure from here
    # on leaves it to the next writer, who removes it).
    # Two filtered counts: the part's statistics let DuckDB skip row groups without NULL ids or truncated rows.
    unmatched, unmatched_qids = con.execute(f"""
        SELECT count(*), count(DISTINCT qid) FROM read_parquet({sql_file(part)}) WHERE sample_id IS NULL
    """).fetchone()
    n_truncated = con.execute(f"SELECT count(*) FROM read_parquet({sql_file(part)}) WHERE truncated").fetchone()[0]
    report = ImportReport(run_id=run_id, lines=lines, rollouts=rollouts, unreadable=lines - rollouts,
                          unmatched_rollouts=unmatched, unmatched_qids=unmatched_qids, truncated=n_truncated,
                          correct_from=correct_from)
    return report, part
