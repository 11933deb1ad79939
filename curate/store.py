"""The store: Parquet tables written atomically, a DuckDB catalog of views, and a writer lock.

Layout of a store directory::

    tables/<table>/part-<run_id>-<n>.parquet   immutable parts, renamed into place when complete
    tmp/<run_id>/                              what the writer spills to disk (removed when it ends)
    images/<ab>/<sha256>.<ext>                 content-addressed copies of every ingested image
    catalog.duckdb                             views samples, rejects, rollouts, runs, difficulty
    cache/difficulty/<run_id>.<fp>.parquet     each run's difficulty rows (derived; see curate.difficulty)
    .lock                                      held (flock) by the one writer; names its holder

Every table is written by `Store.write`, which checks each row against the table's schema and stamps
the part with the schema's name and version; a part becomes visible only by an atomic rename
(`schemas.io.atomic_write`), so readers never see half a file. Samples and rejects of an ingest count
only once its row in `runs` exists (the commit record); parts of an ingest or import that died before
committing are removed by the next writer; a scoring run commits its row first, so its rollouts count
as they land and the run can be resumed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import shutil
import sys
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from curate.views import sql_literal, view_statements
from schemas import RUN_COLUMNS, TABLE_NAMES
from schemas.errors import PebrError
from schemas.io import atomic_write, file_lock, process_label

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

# pyarrow is imported where a table is written or read, so that readers which only query through
# DuckDB (`curate select`, `curate sql`) start without it.

__all__ = ["CATALOG", "ROW_GROUP_ROWS", "Store", "code_version", "new_run_id", "part_run", "sql_literal",
           "view_statements"]

CATALOG = "catalog.duckdb"
_EMPTY_PART = "part-empty.parquet"
ROW_GROUP_ROWS = 65_536
"""Most rows per Parquet row group of a part written by `Store.write` (DuckDB reads a file's row
groups in parallel). A streamed batch is written as it comes, as one row group when it fits."""
RUN_COLUMN = {"samples": "ingest_run", "rejects": "ingest_run", "rollouts": "run_id", "runs": "run_id"}
"""The column naming each row's run: a part holds the rows of the run its name carries."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_run_id(kind: str) -> str:
    return f"{kind}-{_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


class Store:
    """A store directory. Cheap to construct; `init` creates the layout when missing."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        self._locked = False

    # -- layout ---------------------------------------------------------------------------
    def table_dir(self, name: str) -> Path:
        return self.root / "tables" / name

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    def exists(self) -> bool:
        return (self.root / "tables").is_dir()

    def require(self) -> Store:
        if not self.exists():
            raise PebrError(f"no store at {self.root} (run `curate ingest` first, or pass --store DIR)")
        return self

    def init(self) -> Store:
        for name in TABLE_NAMES:
            d = self.table_dir(name)
            d.mkdir(parents=True, exist_ok=True)
            if not (d / _EMPTY_PART).exists():
                from schemas.tables import TABLES

                # An empty typed part keeps every view valid before the first write.
                atomic_write(d / _EMPTY_PART, functools.partial(_write_parquet, schema=TABLES[name], tables=()))
        self.images_dir.mkdir(parents=True, exist_ok=True)
        return self

    # -- writer lock ----------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, command: str, wait: float = 0.0) -> Iterator[Store]:
        """Hold the store's writer lock for the block.

        A second writer waits up to `wait` seconds (scoring shards take turns this way), then gets
        a clear error naming the holder.
        """
        def busy(holder: str) -> str:
            return f"store {self.root} is being written by {holder}; wait for it to finish"

        with file_lock(self.root / ".lock", process_label(command), wait=wait, busy=busy):
            try:
                self._locked = True
                self.init()
                self._drop_uncommitted()
                yield self
            finally:
                self._locked = False
                if self.exists():
                    self.ensure_catalog()

    def _require_lock(self) -> None:
        if not self._locked:
            raise RuntimeError("store writes need `with store.writing(...)`")

    def _drop_uncommitted(self) -> None:
        import duckdb

        # A run is committed by its row in `runs` (read through DuckDB: no pyarrow for this).
        with duckdb.connect() as con:
            committed = {r for (r,) in con.execute(
                f"SELECT DISTINCT run_id FROM read_parquet({sql_literal(self.table_dir('runs') / '*.parquet')}, "
                "union_by_name = true)").fetchall()}
        for name in ("samples", "rejects", "rollouts"):
            for part in self.table_dir(name).glob("part-*.parquet"):
                run = part_run(part)
                if run and run not in committed:
                    part.unlink()
        for tmp in (self.root / "tables").glob("*/.*.tmp"):
            tmp.unlink()
        shutil.rmtree(self.root / "tmp", ignore_errors=True)  # what a killed writer spilled to disk

    # -- writing --------------------------------------------------------------------------
    def write(self, name: str, data: pa.Table | pa.RecordBatchReader | duckdb.DuckDBPyRelation,
              run_id: str) -> Path | None:
        """Add `data` to table `name` as one new immutable part of run `run_id`; returns the part, or
        None when there is no row to write. Every table of the store is written here.

        `data` is one of:
        - an Arrow table, checked whole by `schemas.tables.conform` (columns, order, types, required
          values) before anything is written;
        - a RecordBatchReader, streamed: each batch goes through `conform` and becomes a row group,
          so memory holds one batch whatever the size of the part;
        - a DuckDB relation (rows SQL computes), written by DuckDB itself, in parallel: its columns
          go through `conform` on a zero-row sample and must already have the schema's types, and
          the required columns are checked on the written file's statistics.
        Every row must belong to `run_id`. The part carries the schema's metadata (`pebr.table`,
        `pebr.schema_version`); a part that fails a check is never published.
        """
        import pyarrow as pa

        from schemas.tables import TABLES, conform

        self._require_lock()
        schema = TABLES[name]
        if isinstance(data, pa.Table):
            tables: Iterator[pa.Table] = iter([conform(data, schema)] if data.num_rows else [])
        elif isinstance(data, pa.RecordBatchReader):
            conform(data.schema.empty_table(), schema)  # columns and types, before a row is read
            tables = (conform(pa.Table.from_batches([batch]), schema) for batch in data if batch.num_rows)
        else:
            import duckdb

            if not isinstance(data, duckdb.DuckDBPyRelation):
                raise TypeError(f"{name}: Store.write takes an Arrow Table or RecordBatchReader or a DuckDB relation, "
                                f"not {type(data).__name__}")
            path = self._next_part(name, run_id)
            try:
                atomic_write(path, lambda tmp: _copy_relation(tmp, data, schema, RUN_COLUMN[name], run_id))
            except _NoRows:
                return None
            return path
        first = next(tables, None)
        if first is None:
            return None
        path = self._next_part(name, run_id)
        checked = (_check_run(name, t, run_id) for t in _chain(first, tables))
        atomic_write(path, lambda tmp: _write_parquet(tmp, schema, checked))
        return path

    def _next_part(self, name: str, run_id: str) -> Path:
        d = self.table_dir(name)
        return d / f"part-{run_id}-{len(list(d.glob(f'part-{run_id}-*.parquet'))):05d}.parquet"

    def add_run(self, run_id: str, kind: str, con: duckdb.DuckDBPyConnection | None = None, **fields) -> Path:
        """Write the run's row in `runs`; for an ingest or an import this commits its parts.

        `fields` are the other columns of `runs` (`schemas.RUN_COLUMNS`); a dict value is stored as
        JSON. The row is a one-row DuckDB relation (Arrow built from Python values would load pandas,
        0.25 s, into commands that never need it), made on a cursor of `con` when the caller has a
        connection open (a new DuckDB costs 15-40 ms).
        """
        import duckdb

        self._require_lock()
        row = {"run_id": run_id, "kind": kind, "created_at": _now().isoformat(), "code_version": code_version(),
               "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
        for key, value in fields.items():
            row[key] = json.dumps(value, sort_keys=True, default=str) if isinstance(value, dict) else value
        unknown = sorted(set(row) - set(RUN_COLUMNS))
        if unknown:
            raise ValueError(f"runs: unknown columns {unknown}")

        def column(name: str) -> str:
            value = "NULL" if row.get(name) is None else sql_literal(str(row[name]))
            return f"CAST({value} AS {'TIMESTAMPTZ' if name == 'created_at' else 'VARCHAR'}) AS {name}"

        with duckdb.connect() if con is None else con.cursor() as own:
            own.execute("SET TimeZone = 'UTC'")  # so created_at is the schema's timestamp[us, tz=UTC]
            return self.write("runs", own.sql(f"SELECT {', '.join(column(c) for c in RUN_COLUMNS)}"), run_id)

    def put_image(self, data: bytes, suffix: str) -> str:
        """Copy image bytes into the content-addressed image folder; returns the store-relative path."""
        digest = hashlib.sha256(data).hexdigest()
        rel = Path("images") / digest[:2] / f"{digest}{suffix.lower() or '.img'}"
        dest = self.root / rel
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(dest, data)
        return rel.as_posix()

    # -- reading --------------------------------------------------------------------------
    def parts(self, name: str) -> list[Path]:
        return sorted(self.table_dir(name).glob("*.parquet"))

    def committed_scan(self, con, name: str) -> str:
        """A FROM item over the committed parts of `name` (samples, rejects or rollouts): the rows of
        the view, read by file instead of filtered row by row, so DuckDB knows how many there are
        (the view's per-row commit filter leaves its planner guessing a fifth, and a join then
        hashes the wrong side). A part holds the rows of the run its name carries."""
        committed = {r for (r,) in con.execute("SELECT run_id FROM runs").fetchall()}
        files = [p for p in self.parts(name) if p.name == _EMPTY_PART or part_run(p) in committed]
        return f"read_parquet([{', '.join(sql_literal(p) for p in files)}], union_by_name = true)"

    def read(self, name: str, columns: list[str] | None = None) -> pa.Table:
        """The whole table as Arrow (small tables; use `connect()` and SQL for big ones)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from schemas.tables import TABLES

        parts = self.parts(name)
        if not parts:
            return TABLES[name].empty_table().select(columns or TABLES[name].names)
        tables = [pq.read_table(p, columns=columns, schema=TABLES[name]) for p in parts]
        return pa.concat_tables(tables)

    def connect(self, database: str = ":memory:"):
        """A DuckDB connection with the store's views and macros defined."""
        import duckdb

        con = duckdb.connect(database)
        for statement in view_statements(self):
            con.execute(statement)
        return con

    def ensure_catalog(self) -> None:
        """Write catalog.duckdb when missing or when its view definitions changed.

        The views read each table folder by glob, so new parts show up without a rewrite; only a new
        layout, a new macro or a moved store needs one (a stamp of the statements tells).
        """
        stamp = self.root / ".catalog.sha256"
        digest = hashlib.sha256("\n".join(view_statements(self)).encode()).hexdigest()
        if (self.root / CATALOG).exists() and stamp.exists() and stamp.read_text() == digest:
            return
        self.refresh_catalog()
        atomic_write(stamp, digest)

    def refresh_catalog(self) -> None:
        """Rewrite catalog.duckdb (atomically) so the DuckDB CLI sees the current views."""
        import duckdb

        def build(tmp: Path) -> None:
            try:
                with duckdb.connect(str(tmp)) as con:
                    for statement in view_statements(self):
                        con.execute(statement)
                    con.execute("CHECKPOINT")
            finally:
                Path(f"{tmp}.wal").unlink(missing_ok=True)  # empty after the checkpoint

        atomic_write(self.root / CATALOG, build)


def part_run(part: Path) -> str | None:
    stem = part.stem  # part-<run_id>-<n>
    if not stem.startswith("part-") or stem == Path(_EMPTY_PART).stem:
        return None
    return stem[len("part-"):].rsplit("-", 1)[0]


def code_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"pebr {version('pebr')}"
    except PackageNotFoundError:
        return "pebr (not installed)"


def _chain(first: pa.Table, rest: Iterable[pa.Table]) -> Iterator[pa.Table]:
    yield first
    yield from rest


def _check_run(name: str, table: pa.Table, run_id: str) -> pa.Table:
    """`table` when every row belongs to run `run_id` (`committed_scan` reads parts by their name)."""
    column = RUN_COLUMN[name]
    if table.column(column).unique().to_pylist() != [run_id]:
        raise ValueError(f"{name}: every row of a part of run {run_id} must have {column} = {run_id!r}")
    return table


def _write_parquet(tmp: Path, schema: pa.Schema, tables: Iterable[pa.Table]) -> int:
    """Write `tables` (already of `schema`) as one Parquet file, one table after the other, each in
    row groups of at most ROW_GROUP_ROWS rows; returns the rows written. Only the table in hand is
    held, so a stream's batch size sets the memory a write takes."""
    import pyarrow.parquet as pq

    rows = 0
    # Plain encoding: zstd packs repeated ids (a sample's n rollouts) about as well as dictionaries do;
    # 2M rollouts streamed from DuckDB wrote 20% faster, and 25% smaller, without them.
    with pq.ParquetWriter(tmp, schema, compression="zstd", use_dictionary=False) as writer:
        for table in tables:
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            rows += table.num_rows
    return rows


class _NoRows(Exception):
    """A relation had no row: nothing to publish."""


def _copy_relation(tmp: Path, relation: duckdb.DuckDBPyRelation, schema: pa.Schema, run_column: str, run_id: str) -> int:
    """Write the rows of a DuckDB relation to `tmp` with DuckDB's own (parallel) Parquet writer, checked
    as `conform` checks a table; returns the rows written, or raises _NoRows."""
    import pyarrow.parquet as pq

    from schemas.tables import SchemaError, conform

    table = schema.metadata[b"pebr.table"].decode()
    sample = relation.limit(0).to_arrow_table()
    conform(sample, schema)  # unknown, missing or uncastable columns, in conform's words
    # DuckDB writes the relation's own columns, so they must be the schema's already: all, in order, typed.
    have, want = {f.name: f.type for f in sample.schema}, {f.name: f.type for f in schema}
    problems = [f"{n} missing" for n in want if n not in have]
    problems += [f"{n}: {have[n]}, not {t}" for n, t in want.items() if n in have and have[n] != t]
    if problems or list(have) != list(want):
        raise SchemaError(f"{table}: a relation needs the schema's columns, in order, with its types "
                          f"({'; '.join(problems) or 'columns out of order'})")
    meta = ", ".join(f"{sql_literal(k.decode())}: {sql_literal(v.decode())}" for k, v in schema.metadata.items())
    relation.query("pebr_part", f"COPY (SELECT * FROM pebr_part) TO {sql_literal(tmp)} (FORMAT parquet, "
                   f"COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_ROWS}, KV_METADATA {{{meta}}})")
    # The rows did not pass through conform: what it checks of values (no null in a required column,
    # every row of this run) is read from the statistics DuckDB wrote for each column chunk.
    footer = pq.ParquetFile(tmp).metadata
    if footer.num_rows == 0:
        raise _NoRows
    run_index = schema.get_field_index(run_column)
    for g in range(footer.num_row_groups):
        group = footer.row_group(g)
        for i, field in enumerate(schema):
            stats = group.column(i).statistics
            if not field.nullable and (stats is None or not stats.has_null_count or stats.null_count):
                raise SchemaError(f"{table}.{field.name}: null value(s) in a required column (or no statistics to tell)")
        stats = group.column(run_index).statistics
        if not stats.has_min_max or stats.min != run_id or stats.max != run_id:
            raise ValueError(f"{table}: every row of a part of run {run_id} must have {run_column} = {run_id!r}")
    return footer.num_rows
