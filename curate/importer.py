"""Import rollout dumps of other trainers into `rollouts`, under a new run.

Formats:
- ``pebr``: PeBR-R1 / EasyR1 ``rollout_results.jsonl``: ``qid, response, ground_truth, score.accuracy``.
- ``verl``: verl ``trainer.rollout_data_dir`` JSONL: ``input, output, gts, score, step`` plus the reward's
  extra fields; verl writes no question id, so ``--qid-field`` names the field that carries one
  (an extra reward field such as ``uid`` or ``index``).

DuckDB reads the file and writes Parquet; no Python loop touches a line. Lines DuckDB cannot parse
(or that carry no question id) are counted against the file's records (its non-blank lines) and
reported.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from curate.difficulty import warm_cache
from curate.errors import PebrError
from curate.store import Store, new_run_id, sql_literal
from schemas import ROLLOUTS


@dataclass
class ImportReport:
    run_id: str
    lines: int = 0
    rollouts: int = 0
    unreadable: int = 0
    unmatched_rollouts: int = 0
    unmatched_qids: int = 0
    by_format: dict = field(default_factory=dict)


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


# An imported rollout's index is its position among the dump's records (unreadable ones take a number
# too): unique within the run and traceable to the file, with no window function over the whole dump.
_ORDINAL = "CAST(ordinality - 1 AS INTEGER) AS position"


def _select_sql(fmt: str, qid_field: str | None, threshold: float) -> tuple[str, dict]:
    if fmt == "pebr":
        columns = {"qid": "VARCHAR", "response": "VARCHAR", "ground_truth": "VARCHAR", "score": "JSON"}
        accuracy = "TRY_CAST(json_extract(score, '$.accuracy') AS FLOAT)"
        return (
            f"SELECT CAST(qid AS VARCHAR) AS qid, coalesce(response, '') AS response, {accuracy} AS accuracy, "
            f"coalesce({accuracy}, 0) >= {threshold} AS correct, {_ORDINAL}",
            columns,
        )
    if not qid_field:
        raise PebrError("verl dumps carry no question id: pass --qid-field NAME (a field your reward function logged, e.g. uid)")
    columns = {"input": "VARCHAR", "output": "VARCHAR", "score": "DOUBLE", qid_field: "VARCHAR"}
    return (
        f"SELECT CAST(\"{qid_field}\" AS VARCHAR) AS qid, coalesce(output, '') AS response, CAST(score AS FLOAT) AS accuracy, "
        f"coalesce(score, 0) >= {threshold} AS correct, {_ORDINAL}",
        columns,
    )


def import_rollouts(store: Store, path: Path, source: str | None = None, fmt: str | None = None,
                    qid_field: str | None = None, correct_threshold: float = 1.0) -> ImportReport:
    if not path.is_file():
        raise PebrError(f"{path}: no such file")
    fmt = fmt or _sniff(path)
    select, columns = _select_sql(fmt, qid_field, correct_threshold)
    with store.writing(f"curate import-rollouts {path.name}"):
        run_id = new_run_id("import")
        con = store.connect()
        con.execute("SET preserve_insertion_order = false")
        con.execute("SET memory_limit = '640MB'")
        cols = "{" + ", ".join(f"'{k}': '{v}'" for k, v in columns.items()) + "}"
        reader = (f"read_json({sql_literal(path)}, format = 'newline_delimited', columns = {cols}, ignore_errors = true, "
                  "maximum_object_size = 67108864)")
        # Every non-blank line is one record of the reader (a line it cannot parse is a row of NULLs).
        # Counted first, and the import keeps to those records: a dump still being appended to is
        # imported, and accounted for, as it was at this moment.
        lines = con.execute(f"SELECT count(*) FROM {reader}").fetchone()[0]
        con.execute(f"CREATE TEMP VIEW dump AS SELECT * FROM ({select} FROM {reader} WITH ORDINALITY) "
                    f"WHERE position < {int(lines)}")
        source_filter = "WHERE source = ?" if source else ""
        params = [source] if source else []
        con.execute(
            "CREATE TEMP TABLE qmap AS SELECT qid, any_value(sample_id) AS sample_id, count(*) AS n "
            f"FROM samples {source_filter} GROUP BY qid", params,
        )
        ambiguous = con.execute("SELECT count(*) FROM qmap WHERE n > 1").fetchone()[0]
        if ambiguous:
            raise PebrError(f"{ambiguous} qid(s) name samples of several sources; pass --source to choose one")
        d = store.table_dir("rollouts")
        tmp = d / f".import-{uuid.uuid4().hex[:8]}.parquet.tmp"
        final = d / f"part-{run_id}-00000.parquet"
        reward_nulls = ", ".join(f"CAST(NULL AS FLOAT) AS \"{c}\"" for c in ("format", "keyword", "length", "clip"))
        con.execute(f"""
            COPY (
              SELECT '{run_id}' AS run_id, m.sample_id, d.qid,
                d.position AS rollout_idx,
                CAST(NULL AS BIGINT) AS seed, d.response, CAST(NULL AS INTEGER) AS n_tokens,
                CAST(NULL AS VARCHAR) AS finish_reason, d.accuracy, {reward_nulls},
                d.accuracy AS overall, d.correct
              FROM dump d LEFT JOIN qmap m USING (qid)
              WHERE d.qid IS NOT NULL
            ) TO {sql_literal(tmp)} (FORMAT parquet, COMPRESSION zstd)
        """)
        written = pq.read_schema(tmp)
        expected = ROLLOUTS.remove_metadata()
        if [(f.name, f.type) for f in written] != [(f.name, f.type) for f in expected]:
            tmp.unlink()
            raise RuntimeError(f"import wrote an unexpected schema: {written}")
        stats = con.execute(f"""
            SELECT count(*), count(*) FILTER (WHERE sample_id IS NULL),
                   count(DISTINCT qid) FILTER (WHERE sample_id IS NULL)
            FROM read_parquet({sql_literal(tmp)})
        """).fetchone()
        con.close()
        report = ImportReport(run_id=run_id, lines=lines, rollouts=stats[0], unreadable=lines - stats[0],
                              unmatched_rollouts=stats[1], unmatched_qids=stats[2], by_format={fmt: stats[0]})
        if report.rollouts == 0:
            tmp.unlink()
            raise PebrError(f"{path}: no rollout could be read ({lines} lines)")
        os.replace(tmp, final)
        store.add_run(run_id, "import", config={
            "path": str(path.absolute()), "format": fmt, "qid_field": qid_field, "source": source,
            "correct_threshold": correct_threshold, "lines": lines, "rollouts": report.rollouts,
            "unreadable": report.unreadable, "unmatched_rollouts": report.unmatched_rollouts,
        }, grader_version=f"imported:{fmt}")
        warm_cache(store, run_id)  # so that every `curate select` of the run starts from it
        return report

