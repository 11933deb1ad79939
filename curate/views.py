"""The SQL that defines the store's macros and views (the catalog file and every connection share it).

A leaf module: it imports nothing else of curate, so the store (which defines the views) and the
difficulty module (which reads and caches them) both build on it without importing each other.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from pathlib import Path

from schemas import REWARD_COLUMNS

DEFAULT_GROUP_SIZE = 8
"""GRPO group size G of the `difficulty` view's p_degenerate (the paper's)."""


def sql_literal(text: str | Path) -> str:
    """`text` (or a path) as a quoted SQL string literal.

    >>> sql_literal("it's")
    "'it''s'"
    """
    text = text.as_posix() if isinstance(text, Path) else text
    return "'" + text.replace("'", "''") + "'"


def sql_file(path: str | Path, pattern: str = "") -> str:
    """A path for DuckDB's readers (read_parquet, read_json, ...) as a quoted SQL literal.

    DuckDB globs every path it reads, so `[`, `]`, `?` and `*` in a folder name would match other
    folders (a store at `sb[1]` read `sb1`); they are escaped here. `pattern`, appended unescaped, is
    a glob of the caller's own (`*.parquet`).

    >>> sql_file(Path("/data/sb[1]/it's"), "*.parquet")
    "'/data/sb[[]1]/it''s/*.parquet'"
    """
    text = glob.escape(path.as_posix() if isinstance(path, Path) else path)
    return sql_literal(f"{text.rstrip('/')}/{pattern}" if pattern else text)


def sql_identifier(name: str) -> str:
    '''A name as a quoted SQL identifier.

    >>> print(sql_identifier('my "id"'))
    "my ""id"""
    '''
    return '"' + str(name).replace('"', '""') + '"'


MACROS = [
    # E[p^g] under Beta(a, b) = B(a + g, b) / B(a, b), in log-gamma form.
    "CREATE OR REPLACE MACRO pebr_beta_moment(a, b, g) AS "
    "exp(lgamma(a + g) - lgamma(a) + lgamma(a + b) - lgamma(a + b + g))",
    "CREATE OR REPLACE MACRO p_degenerate(k, n, g) AS "
    "pebr_beta_moment(k + 1, n - k + 1, g) + pebr_beta_moment(n - k + 1, k + 1, g)",
    # Band with configurable thresholds on the pass rate (defaults: the paper's k = n and k = 0).
    "CREATE OR REPLACE MACRO band(k, n, easy_min := 1.0, hard_max := 0.0) AS "
    "CASE WHEN k >= easy_min * n THEN 'easy' WHEN k <= hard_max * n THEN 'hard' ELSE 'medium' END",
    "CREATE OR REPLACE MACRO wilson_low(k, n, z := 1.96) AS CASE WHEN k = 0 THEN 0.0 ELSE "
    "((k / n) + z * z / (2 * n) - z * sqrt((k / n) * (1 - k / n) / n + z * z / (4 * n * n))) / (1 + z * z / n) END",
    "CREATE OR REPLACE MACRO wilson_high(k, n, z := 1.96) AS CASE WHEN k = n THEN 1.0 ELSE "
    "((k / n) + z * z / (2 * n) + z * sqrt((k / n) * (1 - k / n) / n + z * z / (4 * n * n))) / (1 + z * z / n) END",
]


def agg_sql(rollouts: str, one_run: bool = False, null_columns: tuple[str, ...] = ()) -> str:
    """Per (run, sample) of `rollouts`: the counts and reward moments every other difficulty column
    derives from; with `one_run`, of the run named by the query parameter `$run` only (grouped by
    sample alone). `null_columns` (reward columns, or n_tokens) are known to hold only NULLs in
    `rollouts`, so their moments are NULL without a pass over them."""

    def moment(fn: str, column: str) -> str:
        return "CAST(NULL AS DOUBLE)" if column in null_columns else f"{fn}({column})"

    stats = ",\n    ".join(f"{moment('avg', c)} AS mean_{c}, {moment('stddev_pop', c)} AS std_{c}" for c in REWARD_COLUMNS)
    run, where, group = ("CAST($run AS VARCHAR)", " AND run_id = $run", "sample_id") if one_run else ("run_id", "", "run_id, sample_id")
    return f"""SELECT {run} AS run_id, sample_id, count(*) AS n, count(*) FILTER (WHERE correct) AS k,
    {stats},
    {moment('avg', 'n_tokens')} AS mean_tokens
  FROM {rollouts} WHERE sample_id IS NOT NULL{where}
  GROUP BY {group}"""


def from_agg(agg: str, extra: str = "") -> str:
    """The difficulty columns over a relation holding `agg_sql`'s columns (plus `extra` ones)."""
    return f"""SELECT run_id, sample_id, n, k, k / n AS pass_rate, band(k, n) AS band,
  wilson_low(k, n) AS ci_low, wilson_high(k, n) AS ci_high,
  {", ".join(f"mean_{c}, std_{c}" for c in REWARD_COLUMNS)},
  mean_tokens, p_degenerate(k, n, {DEFAULT_GROUP_SIZE}) AS p_degenerate{extra}
FROM {agg}"""


DIFFICULTY_SQL = "CREATE OR REPLACE VIEW difficulty AS\n" + from_agg(f"({agg_sql('rollouts')}) agg")


def view_statements(store, files: Mapping[str, Sequence[Path]] | None = None) -> list[str]:
    """SQL that defines the macros and views of `store` (a `curate.store.Store`: only its
    `table_dir` is used); the catalog file and every connection run it.

    By default each view reads its table folder by (escaped) glob, so parts written later show up,
    and keeps the rows of committed runs. With `files` (table -> the committed parts, see
    `Store.committed_parts`) each view reads exactly those files: what the locked connection of user
    SQL may open (`curate.sql.reader`), where a glob would need the whole folder."""

    def scan(name: str) -> str:
        if files is not None:
            return f"read_parquet([{', '.join(sql_file(p) for p in files[name])}], union_by_name = true)"
        return f"read_parquet({sql_file(store.table_dir(name), '*.parquet')}, union_by_name = true)"

    def committed(column: str) -> str:  # listed files are committed parts already
        return "" if files is not None else f" WHERE {column} IN (SELECT run_id FROM runs)"

    return [
        *MACROS,
        f"CREATE OR REPLACE VIEW runs AS SELECT * FROM {scan('runs')}",
        f"CREATE OR REPLACE VIEW samples AS SELECT * FROM {scan('samples')}{committed('ingest_run')}",
        f"CREATE OR REPLACE VIEW rejects AS SELECT * FROM {scan('rejects')}{committed('ingest_run')}",
        f"CREATE OR REPLACE VIEW rollouts AS SELECT * FROM {scan('rollouts')}{committed('run_id')}",
        DIFFICULTY_SQL,
    ]
