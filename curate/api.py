"""The Python API over a store, for notebooks: `curate.open_store(path)`.

SQL and difficulty come back as polars DataFrames, rollouts and samples as polars LazyFrames over
the committed Parquet parts, and select / score are the very functions the CLI calls. Every read
goes through the code the commands use (`curate.sql.run_query`, the difficulty cache), so a
notebook sees what `curate sql`, `curate select` and `curate report` see.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from curate.difficulty import (
    DEFAULT_GROUP_SIZE,
    difficulty_query,
    load_difficulty,
    resolve_run,
)
from curate.store import Store, part_run
from schemas.errors import PebrError

if TYPE_CHECKING:
    from curate.score import ScoreReport
    from curate.select import SelectReport

SCANNED_TABLES = ("samples", "rejects", "rollouts")
"""Tables whose parts belong to a run and count once the run's row in `runs` exists."""


def open_store(path: str | Path | Store) -> StoreView:
    """The store at `path`, for reading in polars and for selecting and scoring from Python.

    Raises PebrError when there is no store there (as every `curate` command does).
    """
    return StoreView(path)


class StoreView:
    """A store seen from Python. Cheap to hold: each call opens what it needs and closes it again,
    so a view stays valid while `curate` commands write to the store."""

    def __init__(self, path: str | Path | Store):
        self.store = (path if isinstance(path, Store) else Store(path)).require()

    @property
    def path(self) -> Path:
        return self.store.root

    # -- reading ----------------------------------------------------------------------------
    def sql(self, query: str, *, memory_limit: str | None = None) -> pl.DataFrame:
        """Read-only SQL over the views samples, rejects, rollouts, runs and difficulty (and the
        macros band, p_degenerate, wilson_low/high), exactly as `curate sql` runs it: one SELECT,
        which reaches no file, URL or setting beyond the views; an interrupt (Ctrl-C, a notebook's
        stop button) cancels it. `memory_limit` as `curate sql --memory-limit` (default 2GB)."""
        from curate.sql import DEFAULT_MEMORY_LIMIT, run_query

        return pl.from_arrow(run_query(self.store, query, memory_limit=memory_limit or DEFAULT_MEMORY_LIMIT))

    def runs(self) -> pl.DataFrame:
        """The committed runs (ingest, score, import, regrade; and a `score-session` row per `curate
        score` that generated rollouts, whose parent_run is its run), oldest first."""
        return self.sql("SELECT * FROM runs ORDER BY created_at, run_id")

    def resolve_run(self, run: str | None = None) -> str:
        """The run `difficulty` and `select` read: `run` when given (checked), else the latest
        score / import / regrade run with rollouts matched to samples."""
        con = self.store.connect()
        try:
            return resolve_run(con, run)
        finally:
            con.close()

    def difficulty(self, run: str | None = None, *, easy_min: float = 1.0, hard_max: float = 0.0,
                   group_size: int = DEFAULT_GROUP_SIZE, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """One row per sample of `run` (default: the latest, see `resolve_run`), ordered by sample_id:
        the difficulty view's columns (n, k, pass_rate, band, ci_low/high, reward moments,
        mean_tokens, p_degenerate) plus the sample's source and capability.

        Bands and p_degenerate follow the given thresholds and GRPO group size, as `curate select
        --easy-min/--hard-max/--group-size` and `curate report` compute them, from the same per-run
        cache. `columns` reads only those (DuckDB then skips the others in the cache file).
        """
        import duckdb

        con = self.store.connect()
        try:
            run_id = resolve_run(con, run)
            query = difficulty_query(run_id, easy_min=easy_min, hard_max=hard_max, group_size=group_size,
                                     relation=load_difficulty(self.store, con, run_id))
            columns = [columns] if isinstance(columns, str) else columns
            select = "*" if columns is None else ", ".join(_identifier(c) for c in columns)
            order = " ORDER BY sample_id" if columns is None or "sample_id" in columns else ""
            try:
                table = con.sql(f"SELECT {select} FROM ({query}){order}").to_arrow_table()
            except duckdb.Error as exc:  # a column that does not exist
                raise PebrError(str(exc).splitlines()[0]) from None
        finally:
            con.close()
        return pl.from_arrow(table)

    def rollouts(self, run: str | None = None) -> pl.LazyFrame:
        """The committed rollouts, lazily: of every run when `run` is None, else of that run only.

        Scans the Parquet parts of committed runs (a run counts once its row in `runs` exists) and
        no others, so the rollouts of a run still being written by an import, or left by one that
        died, never show up. Filter and select before `.collect()`: polars then reads only the
        row groups and columns it needs.
        """
        runs = self._committed()
        if run is not None and run not in runs:
            raise PebrError(f"no run {run!r} in the store (list them: open_store(...).runs())")
        return self._scan("rollouts", {run} if run is not None else runs)

    def samples(self) -> pl.LazyFrame:
        """The committed samples, lazily (the rows of the `samples` view)."""
        return self._scan("samples", self._committed())

    def rejects(self) -> pl.LazyFrame:
        """The committed rejects, lazily (the rows of the `rejects` view)."""
        return self._scan("rejects", self._committed())

    def _committed(self) -> set[str]:
        con = self.store.connect()
        try:
            return {r for (r,) in con.execute("SELECT run_id FROM runs").fetchall()}
        finally:
            con.close()

    def _scan(self, name: str, runs: set[str]) -> pl.LazyFrame:
        """The parts of table `name` written by `runs` (a part holds the rows of the run its name
        carries; see Store.committed_scan), typed by the table's schema."""
        from schemas.tables import TABLES

        schema = pl.from_arrow(TABLES[name].empty_table()).schema
        files = [p for p in self.store.parts(name) if part_run(p) in runs]
        if not files:
            return pl.LazyFrame(schema=schema)
        # Parts of an older schema version lack newer columns: those read as nulls.
        return pl.scan_parquet(files, schema=schema, missing_columns="insert", extra_columns="ignore")

    # -- doing ------------------------------------------------------------------------------
    def select(self, stage: str, out: str | Path, **options: Any) -> SelectReport:
        """Write a stage dataset, as `curate select --stage STAGE --out OUT` does; `options` are the
        fields of curate.select.SelectOptions (run, sources, capabilities, quota, cap, seed, where,
        easy_min, hard_max, group_size, images, format, shard_rows, force, ...)."""
        from curate.select import SelectOptions, select_options, select_stage

        _check_names("select", options, _field_names(SelectOptions) - {"stage", "out"} | {"format_prompt"})
        return select_stage(self.store, select_options(stage, out, options))

    def score(self, model: str | Path, *, progress: Callable[[int, int | None], None] | None = None,
              **options: Any) -> ScoreReport:
        """Score the store's samples with `model`, as `curate score --model MODEL` does (resumable:
        the same call continues the same run).

        `options` are the fields of curate.score.ScoreOptions (engine, sources, shard as (i, N),
        adaptive, round_size, chunk, limit, run, new_run, ...), of its sampling config (n,
        temperature, top_p, max_new_tokens, seed, min_pixels, max_pixels) and of its engine options
        (dtype, tensor_parallel_size, gpu_memory_utilization, max_model_len, batch_size, ...); with
        `ray=True`, those of its Ray options (replicas, gpus_per_replica, cpus_per_replica,
        ray_address, ...). Whole `sampling=` / `engine_options=` / `ray_options=` objects are accepted
        too; single fields override them.
        """
        from curate import score as scoring

        known = (_field_names(scoring.ScoreOptions) | _field_names(scoring.SamplingConfig)
                 | _field_names(scoring.EngineOptions) | _field_names(scoring.RayOptions) | {"format_prompt"}) - {"model"}
        _check_names("score", options, known)
        return scoring.score(self.store, scoring.score_options(str(model), options), progress=progress)

    # -- display ----------------------------------------------------------------------------
    def __repr__(self) -> str:
        try:
            con = self.store.connect()
            try:
                counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in (*SCANNED_TABLES, "runs")}
                # A scoring session's row records an invocation of its run, not a run of its own.
                latest = con.execute("SELECT run_id FROM runs WHERE kind <> 'score-session' "
                                     "ORDER BY created_at DESC, run_id DESC LIMIT 1").fetchone()
            finally:
                con.close()
        except Exception as exc:  # a repr must not raise: say what went wrong instead
            return f"StoreView({str(self.path)!r}, unreadable: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        text = ", ".join(f"{t}={n:,}" for t, n in counts.items())
        return f"StoreView({str(self.path)!r}, {text}" + (f", latest_run={latest[0]!r})" if latest else ")")


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_names(command: str, options: dict, known: set[str]) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise PebrError(f"{command}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                        f"known: {', '.join(sorted(known))}")


def _identifier(name: str) -> str:
    """A column name as a quoted SQL identifier (nothing a caller passes is pasted in unquoted)."""
    from curate.views import sql_identifier

    return sql_identifier(name)
