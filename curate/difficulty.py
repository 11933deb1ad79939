"""The difficulty view: per sample and run, how often the model was right, and what that means
for a GRPO group.

Bands follow the paper (easy: k = n, medium: 0 < k < n, hard: k = 0). The interval is Wilson's.
The degenerate-group probability p^G + (1-p)^G is taken under the Beta(k+1, n-k+1) posterior of
the pass rate rather than at the point estimate k/n: an 8/8 sample is not certain to give a
degenerate group of 8, and samples with different n (adaptive runs) are compared fairly.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import time
from pathlib import Path

from curate.store import part_run
from curate.views import (
    DEFAULT_GROUP_SIZE,
    DIFFICULTY_SQL,
    MACROS,
    agg_sql,
    from_agg,
    sql_file,
    sql_literal,
)
from schemas import STAGE_BANDS  # noqa: F401  (the paper's band -> stage map; re-exported)
from schemas.io import atomic_write

# The view's SQL lives in curate.views (the store defines the views from it); re-exported here, where
# selections, reports and the API have always found it.
__all__ = ["CACHE_DIR", "DEFAULT_GROUP_SIZE", "DIFFICULTY_SQL", "MACROS", "ROLLOUT_RUN_KINDS", "STAGE_BANDS",
           "STALE_CACHE_S", "cache_difficulty", "cache_path", "check_thresholds", "difficulty_query",
           "load_difficulty", "resolve_run", "warm_cache"]

ROLLOUT_RUN_KINDS = ("score", "import", "regrade")
"""Run kinds whose rollouts define a difficulty; the latest of them is the default run."""


def check_thresholds(easy_min: float, hard_max: float) -> None:
    """Bands must not overlap: a sample cannot be both easy and hard."""
    from schemas.errors import PebrError

    if not (0.0 <= hard_max < easy_min <= 1.0):
        raise PebrError(f"band thresholds need 0 <= hard_max < easy_min <= 1 (got hard_max={hard_max}, easy_min={easy_min})")


def resolve_run(con, run: str | None = None) -> str:
    """The run whose rollouts define difficulty: `run` when given (checked), else the latest one.

    "Latest" is the newest run of kind score / import / regrade that has at least one rollout
    matched to a sample, so an ingest or an import of an unrelated dump never hides the real one.
    """
    from schemas.errors import PebrError

    kinds = ", ".join(f"'{k}'" for k in ROLLOUT_RUN_KINDS)
    if run is not None:
        rows = con.execute("SELECT kind FROM runs WHERE run_id = ?", [run]).fetchall()
        if not rows:
            raise PebrError(f"no run {run!r} in the store (list them: curate sql \"select run_id, kind, created_at from runs\")")
        if not con.execute("SELECT 1 FROM rollouts WHERE run_id = ? AND sample_id IS NOT NULL LIMIT 1", [run]).fetchall():
            raise PebrError(f"run {run!r} ({rows[0][0]}) has no rollouts matched to samples")
        return run
    candidates = con.execute(f"SELECT run_id FROM runs WHERE kind IN ({kinds}) ORDER BY created_at DESC, run_id DESC").fetchall()
    for (run_id,) in candidates:  # newest first; one matched rollout is enough (the scan stops there)
        if con.execute("SELECT 1 FROM rollouts WHERE run_id = ? AND sample_id IS NOT NULL LIMIT 1", [run_id]).fetchall():
            return run_id
    raise PebrError("the store has no rollouts yet: run `curate score` or `curate import-rollouts` first")


def difficulty_query(run_id: str, *, easy_min: float = 1.0, hard_max: float = 0.0,
                     group_size: int = DEFAULT_GROUP_SIZE, relation: str | None = None) -> str:
    """SELECT over the `difficulty` view for one run, with the band and p_degenerate recomputed
    for the given thresholds and group size (the view itself uses the paper's defaults).

    `relation` is a FROM item already holding the run's difficulty rows (`load_difficulty`), read
    instead of the view, which aggregates every rollout again.
    """
    check_thresholds(easy_min, hard_max)
    if group_size < 1:
        from schemas.errors import PebrError

        raise PebrError(f"group size must be at least 1 (got {group_size})")
    source = relation or f"difficulty WHERE run_id = {sql_literal(run_id)}"
    return (
        f"SELECT * REPLACE (band(k, n, easy_min := {float(easy_min)!r}, hard_max := {float(hard_max)!r}) AS band, "
        f"p_degenerate(k, n, {int(group_size)}) AS p_degenerate) FROM {source}"
    )


# -- the per-run difficulty cache --------------------------------------------------------------
# A selection or report reads a few columns per sample; the view re-aggregates every rollout of the
# run (2 M rollouts: ~0.4 s on 2 cores). Each run's difficulty rows are therefore kept as one
# Parquet file under <store>/cache/difficulty/, named by a fingerprint of the run's rollout parts
# (parts are immutable and uniquely named) and of the view's SQL. More rollouts of a resumed run, a
# dropped part or a new definition give a new name, so a stale file is never read. The cache is
# derived data: deleting the folder only costs one aggregation per run.

CACHE_DIR = Path("cache") / "difficulty"
STALE_CACHE_S = 600
"""A superseded cache file is removed once its replacement is this old (seconds)."""


def _run_rows_sql(rollouts: str = "rollouts", null_columns: tuple[str, ...] = (), samples: str = "samples") -> str:
    return (f"SELECT a.*, s.source, s.capability FROM ({agg_sql(rollouts, True, null_columns)}) a "
            f"LEFT JOIN {samples} s USING (sample_id)")


_RUN_ROWS = _run_rows_sql("{rollouts}", samples="{samples}")
"""A run's cached rows (`_run_rows_sql`; this template is part of the cache file's fingerprint): the
aggregates of the difficulty view, with each sample's source and capability (selections and reports
group and filter by them without reading the samples); the derived columns are computed on reading,
by the view's own expressions."""


def cache_path(store, run_id: str) -> Path:
    """Where the difficulty rows of `run_id` are cached for the run's current rollout parts."""
    h = hashlib.sha256(f"{DIFFICULTY_SQL}\n{_RUN_ROWS}\n{run_id}".encode())
    for part in sorted(store.table_dir("rollouts").glob("part-*.parquet")):
        if part_run(part) == run_id:
            h.update(f"\n{part.name}:{part.stat().st_size}".encode())
    return store.root / CACHE_DIR / f"{run_id}.{h.hexdigest()[:16]}.parquet"


def cache_difficulty(store, con, run_id: str, rollouts: str = "rollouts", null_columns: tuple[str, ...] = ()) -> Path | None:
    """Write the run's difficulty rows to the cache (atomically) unless present, and prune the run's
    superseded files (`_prune`). Returns the file, or None where the store cannot be written.

    `rollouts` is the FROM item read for the run's rollouts: the view, or (for a writer that has
    just committed them) the run's own part files; `null_columns` as in `agg_sql`, from a writer
    that knows them."""
    import duckdb

    path = cache_path(store, run_id)
    if path.exists():
        _prune(path, run_id)
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = _run_rows_sql(rollouts, null_columns, store.committed_scan(con, "samples"))
        atomic_write(path, lambda tmp: con.execute(
            f"COPY ({rows}) TO {sql_literal(tmp)} (FORMAT parquet, COMPRESSION zstd)", {"run": run_id}))
    except (OSError, duckdb.IOException):
        return None
    return path


def _prune(current: Path, run_id: str) -> None:
    """Remove the run's superseded cache files once `current` has replaced them for STALE_CACHE_S:
    a reader that named an older file just before stays able to read it."""
    with contextlib.suppress(OSError):
        if time.time() - current.stat().st_mtime < STALE_CACHE_S:
            return
        for old in current.parent.glob(f"{glob.escape(run_id)}.*.parquet"):
            if old != current:
                old.unlink(missing_ok=True)


def warm_cache(store, run_id: str, con=None, rollouts: str = "rollouts", null_columns: tuple[str, ...] = ()) -> Path | None:
    """Write the run's cache file now (a run's writer calls this when it ends), so that the
    selections and reports that follow start from it. Only a speed-up: a failure here leaves the
    run as it is, and the next reader aggregates instead."""
    import duckdb

    own = con is None
    try:
        con = store.connect() if own else con
        try:
            return cache_difficulty(store, con, run_id, rollouts, null_columns)
        finally:
            if own:
                con.close()
    except (OSError, duckdb.Error):
        return None


def load_difficulty(store, con, run_id: str, table: str = "run_difficulty") -> str:
    """A relation (SQL FROM item) with the run's rows of the difficulty view plus `source` and
    `capability`: over the cached Parquet file when the store can hold it (written now if missing),
    else the table `table` aggregated from the rollouts. For `difficulty_query(relation=...)`; over
    the file, a query reads only the columns it needs."""
    path = cache_difficulty(store, con, run_id)
    if path is not None:
        relation = f"read_parquet({sql_file(path)})"
        return f"({from_agg(relation, ', source, capability')})"
    rows = _run_rows_sql()
    # A table of the connection's in-memory database, not a TEMP one: the export's cursors see it.
    con.execute(f"CREATE OR REPLACE TABLE {table} AS {from_agg(f'({rows})', ', source, capability')}",
                {"run": run_id})
    return table


