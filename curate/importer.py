"""Import rollout dumps of other trainers into `rollouts`, under a new run.

Formats:
- ``pebr``: PeBR-R1 / EasyR1 ``rollout_results.jsonl``: ``qid, response, ground_truth, score.accuracy``.
- ``verl``: verl ``trainer.rollout_data_dir`` JSONL: ``input, output, gts, score, step`` plus the reward's
  extra fields; verl writes no question id, so ``--qid-field`` names the field that carries one
  (an extra reward field such as ``uid`` or ``index``).

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


def _select_sql(fmt: str, qid_field: str | None) -> tuple[str, dict]:
    """SELECT list over the reader (qid, response, and `score`: the dump's reward at its own
    precision, compared with the correctness threshold) and the reader's columns."""
    if fmt == "pebr":
        # ground_truth is the sample's answer, already in the store. A score that is not an object
        # with a numeric accuracy reads as NULL (tested), the record is kept.
        columns = {"qid": "VARCHAR", "response": "VARCHAR", "score": "STRUCT(accuracy DOUBLE)"}
        return "SELECT qid, response, CAST(score.accuracy AS FLOAT) AS score", columns
    if not qid_field:
        raise PebrError("verl dumps carry no question id: pass --qid-field NAME (a field your reward function logged, e.g. uid)")
    columns = {"input": "VARCHAR", "output": "VARCHAR", "score": "DOUBLE", qid_field: "VARCHAR"}
    # The field name is the user's: an identifier, quoted, never SQL (the reader's `columns` quote it as a literal).
    return f"SELECT CAST({sql_identifier(qid_field)} AS VARCHAR) AS qid, output AS response, score", columns


def import_rollouts(store: Store, path: Path, source: str | None = None, fmt: str | None = None,
                    qid_field: str | None = None, correct_threshold: float = 1.0, again: bool = False) -> ImportReport:
    """Import the dump at `path` as a new run. A dump a committed run already imported (the same content,
    by its sha256, with the same options) is not imported again unless `again`: the report names that
    run in `already_imported` (a re-run after a kill that landed after the commit adds nothing)."""
    if not path.is_file():
        raise PebrError(f"{path}: no such file")
    fmt = fmt or _sniff(path)
    select, columns = _select_sql(fmt, qid_field)
    # The dump's hash (1.4 s for 2 M lines here) runs beside the import, with the GIL released; it is
    # awaited first only when an earlier import read a dump of the same size.
    hasher = ThreadPoolExecutor(1)
    digest = hasher.submit(sha256_file, path)
    hasher.shutdown(wait=False)
    size = path.stat().st_size
    options = {"format": fmt, "qid_field": qid_field, "source": source, "correct_threshold": float(correct_threshold)}

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
            report, part = _import(store, con, path, run_id, fmt, select, columns, source, float(correct_threshold), spill)
            store.add_run(run_id, "import", con, config={
                "path": str(path.absolute()), "dump_sha256": digest.result(), "dump_size": size,
                "fingerprint": fingerprint(),
                "format": fmt, "qid_field": qid_field, "source": source,
                "correct_threshold": correct_threshold, "lines": report.lines, "rollouts": report.rollouts,
                "unreadable": report.unreadable, "unmatched_rollouts": report.unmatched_rollouts,
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


def _import(store: Store, con, path: Path, run_id: str, fmt: str, select: str, columns: dict, source: str | None,
            threshold: float, spill: Path) -> tuple[ImportReport, Path]:
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
    reader = (f"read_json({sql_file(path)}, format = 'newline_delimited', columns = {cols}, ignore_errors = true, "
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
    lines, rollouts = con.execute(f"SELECT count(*), count(qid) FROM {dump}").fetchone()
    if rollouts == 0:
        raise PebrError(f"{path}: no rollout could be read ({lines} lines)")
    con.execute("SET preserve_insertion_order = false")
    reward_nulls = ", ".join(f"CAST(NULL AS FLOAT) AS \"{c}\"" for c in NULL_COLUMNS if c != "n_tokens")
    rows = con.sql(f"""
        SELECT {sql_literal(run_id)} AS run_id, m.sample_id, d.qid, CAST(d.file_row_number AS INTEGER) AS rollout_idx,
          CAST(NULL AS BIGINT) AS seed, coalesce(d.response, '') AS response, CAST(NULL AS INTEGER) AS n_tokens,
          CAST(NULL AS VARCHAR) AS finish_reason, CAST(d.score AS FLOAT) AS accuracy, {reward_nulls},
          CAST(d.score AS FLOAT) AS overall, coalesce(d.score, 0) >= {threshold!r} AS correct
        FROM {dump} d LEFT JOIN qmap m USING (qid)
        WHERE d.qid IS NOT NULL
    """)
    part = store.write("rollouts", rows, run_id)
    # Rollouts matched to no sample, counted on the written part (uncommitted: a failure from here
    # on leaves it to the next writer, who removes it).
    unmatched, unmatched_qids = con.execute(f"""
        SELECT count(*), count(DISTINCT qid) FROM read_parquet({sql_file(part)}) WHERE sample_id IS NULL
    """).fetchone()
    report = ImportReport(run_id=run_id, lines=lines, rollouts=rollouts, unreadable=lines - rollouts,
                          unmatched_rollouts=unmatched, unmatched_qids=unmatched_qids)
    return report, part
