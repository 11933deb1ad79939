"""The store: Parquet tables written atomically, a DuckDB catalog of views, and a writer lock.

Layout of a store directory::

    tables/<table>/part-<run_id>-<n>.parquet   immutable parts, renamed into place when complete
    tmp/<run_id>/                              what the writer spills to disk (removed when it ends)
    tmp/sql-<pid>-<hex>/                       what a reader of user SQL spills (curate.sql.reader)
    images/<ab>/<sha256>.<ext>                 content-addressed copies of every ingested image
    catalog.duckdb                             views samples, rejects, rollouts, runs, difficulty
    cache/difficulty/<run_id>.<fp>.parquet     each run's difficulty rows (derived; see curate.difficulty)
    quarantine/<UTC time>/                     what `curate check --repair` took out, with a note (curate.check)
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
import errno
import functools
import hashlib
import json
import logging
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from curate.views import sql_file, sql_literal, view_statements
from schemas import RUN_COLUMNS, TABLE_NAMES
from schemas.errors import PebrError
from schemas.io import atomic_write, file_lock, process_label

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

# pyarrow is imported where a table is written or read, so that readers which only query through
# DuckDB (`curate select`, `curate sql`) start without it.

__all__ = ["CATALOG", "READER_SPILL_PREFIX", "ROW_GROUP_ROWS", "Store", "code_version", "new_run_id", "part_run",
           "sql_file", "sql_literal", "view_statements"]

CATALOG = "catalog.duckdb"
_EMPTY_PART = "part-empty.parquet"
ROW_GROUP_ROWS = 65_536
"""Most rows per Parquet row group of a part written by `Store.write` (DuckDB reads a file's row
groups in parallel). A streamed batch is written as it comes, as one row group when it fits."""
CATALOG_MISSING = "missing"
CATALOG_OUT_OF_DATE = "out of date (its views are not this code's)"
"""The two states of catalog.duckdb (`Store.catalog_state`) that are no fault of the file: the next writer rewrites it."""
RUN_COLUMN = {"samples": "ingest_run", "rejects": "ingest_run", "rollouts": "run_id", "runs": "run_id"}
"""The column naming each row's run: a part holds the rows of the run its name carries."""
READER_SPILL_PREFIX = "sql-"
"""A folder of `tmp/` named so belongs to a reader (`curate.sql.reader`), which removes it when done;
writers leave it alone unless it is older than STALE_READER_SPILL_S (its reader was killed)."""
STALE_READER_SPILL_S = 24 * 3600


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
            from schemas.tables import TABLES

            # An empty typed part keeps every view valid before the first write, and gives the views
            # a column added since older parts were written (their rows read it as NULL).
            if not (d / _EMPTY_PART).exists() or _part_columns(d / _EMPTY_PART) not in (None, TABLES[name].names):
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
            failed = True
            try:
                self._locked = True
                self.init()
                self._drop_uncommitted()
                yield self
                failed = False
            finally:
                self._locked = False
                if self.exists():
                    self._refresh_derived(quiet=failed)

    def _refresh_derived(self, quiet: bool = False) -> None:
        """Bring catalog.duckdb up to date after a write. Only derived data: what the writer committed
        stands whether or not this works (a full disk, say), so a failure is a warning (none when the
        write itself failed, whose error is what the user needs to see), and the next writer, or
        `curate check --repair`, builds the catalog again."""
        import duckdb

        try:
            self.ensure_catalog()
        except (OSError, duckdb.Error) as exc:
            if not quiet:
                logging.getLogger(__name__).warning(
                    "warning: %s could not be refreshed (%s); what was written is committed, and the next "
                    "command that writes the store rebuilds it", CATALOG, _reason(exc))

    def _require_lock(self) -> None:
        if not self._locked:
            raise RuntimeError("store writes need `with store.writing(...)`")

    def _drop_uncommitted(self) -> None:
        import duckdb

        # A run is committed by its row in `runs` (read through DuckDB: no pyarrow for this).
        with duckdb.connect() as con:
            committed = self._committed_runs(con)
        for name in ("samples", "rejects", "rollouts"):
            for part in self.table_dir(name).glob("part-*.parquet"):
                run = part_run(part)
                if run and run not in committed:
                    part.unlink()
        for tmp in (self.root / "tables").glob("*/.*.tmp"):
            tmp.unlink()
        # What a killed writer spilled to disk; a reader's folder only once it is stale.
        spill = self.root / "tmp"
        for entry in spill.iterdir() if spill.is_dir() else ():
            if entry.name.startswith(READER_SPILL_PREFIX):
                with contextlib.suppress(OSError):
                    if time.time() - entry.stat().st_mtime < STALE_READER_SPILL_S:
                        continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

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
        # One past the run's highest number, not its count of parts: where a part was lost (or moved to
        # quarantine by `curate check --repair`), a resumed run must not take, and replace, a name it
        # still has. Parts of another run whose id merely starts with this one's do not count.
        taken = [int(p.stem.rsplit("-", 1)[1]) for p in self.table_dir(name).glob("part-*.parquet")
                 if part_run(p) == run_id and p.stem.rsplit("-", 1)[1].isdigit()]
        return self.table_dir(name) / f"part-{run_id}-{max(taken, default=-1) + 1:05d}.parquet"

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
        return f"read_parquet([{', '.join(sql_file(p) for p in files)}], union_by_name = true)"

    def _committed_runs(self, con) -> set[str]:
        """The run ids of `runs`, read from its parts on `con` (any DuckDB connection)."""
        files = ", ".join(sql_file(p) for p in self.parts("runs"))
        if not files:
            return set()
        return {r for (r,) in con.execute(
            f"SELECT DISTINCT run_id FROM read_parquet([{files}], union_by_name = true)").fetchall()}

    def committed_parts(self, con) -> dict[str, list[Path]]:
        """Table -> the files its view reads now: every part of `runs`, and of the other tables the
        empty part plus the parts of committed runs (what `view_statements(files=...)` defines the
        views over; `con` reads `runs`)."""
        committed = self._committed_runs(con)
        files = {"runs": self.parts("runs")}
        for name in TABLE_NAMES:
            if name != "runs":
                files[name] = [p for p in self.parts(name) if p.name == _EMPTY_PART or part_run(p) in committed]
        return files

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

    def ensure_catalog(self, force: bool = False) -> None:
        """Write catalog.duckdb when missing or when its view definitions changed.

        The views read each table folder by glob, so new parts show up without a rewrite; only a new
        layout, a new macro or a moved store needs one (a stamp of the statements tells).

        A catalog that does not open, or lacks a view, is written again even when its stamp matches
        (a garbled file); `force` writes it in any case.
        """
        if not force and self.catalog_state() is None:
            return
        digest = self._catalog_digest()
        self.refresh_catalog()
        atomic_write(self.root / ".catalog.sha256", digest)

    def _catalog_digest(self) -> str:
        return hashlib.sha256("\n".join(view_statements(self)).encode()).hexdigest()

    def catalog_state(self) -> str | None:
        """None when catalog.duckdb holds the current views; else why not: CATALOG_MISSING,
        CATALOG_OUT_OF_DATE (its stamp is not of this code's views), or a problem of the file
        ("does not open (...)", "lacks the view(s) ...")."""
        import duckdb

        path, stamp = self.root / CATALOG, self.root / ".catalog.sha256"
        if not path.exists():
            return CATALOG_MISSING
        try:
            # Opening is cheap (no view is bound, so no part is read): a few milliseconds per writer.
            with duckdb.connect(str(path), read_only=True) as con:
                views = {v for (v,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        except duckdb.Error as exc:
            text = str(exc).lower()
            if "could not set lock" in text or "conflicting lock" in text:  # open in another process (the DuckDB CLI)
                return None
            return f"does not open ({_reason(exc)})"
        missing = sorted({*TABLE_NAMES, "difficulty"} - views)
        if missing:
            return f"lacks the view(s) {', '.join(missing)}"
        try:
            current = stamp.read_text() == self._catalog_digest()
        except OSError:
            current = False
        return None if current else CATALOG_OUT_OF_DATE

    def refresh_catalog(self) -> None:
        """Rewrite catalog.duckdb (atomically) so the DuckDB CLI sees the current views.

        Built in a private temporary folder, then copied: DuckDB reads a `?` in a database path as
        the start of options and puts the write-ahead log elsewhere (`s?1/c.duckdb` -> `s.wal?1/...`)."""
        import duckdb

        with tempfile.TemporaryDirectory(prefix="pebr-catalog-") as folder:
            built = Path(folder) / CATALOG
            with duckdb.connect(str(built)) as con:
                for statement in view_statements(self):
                    con.execute(statement)
                con.execute("CHECKPOINT")
            atomic_write(self.root / CATALOG, lambda tmp: shutil.copyfile(built, tmp))


def _part_columns(path: Path) -> list[str] | None:
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).names
    except (OSError, ValueError):
        return None


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


# -- errors that a store file or the disk caused, in one line -------------------------------------------

_DISK_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EFBIG: "file too large", errno.EIO: "input/output error"}
_QUOTED_PATH = re.compile("'(/[^']+)'|\"(/[^\"]+)\"")
_STORE_FILE = re.compile(r"(?P<root>.+)/(?P<rel>(?:tables/[^/]+|cache/difficulty)/[^/]+\.parquet|catalog\.duckdb)")


def _reason(exc: BaseException) -> str:
    """The first line of an error's message, without DuckDB's "<Kind> Error: " prefix."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return re.sub(r"^[A-Za-z ]*Error: ", "", text.splitlines()[0]) if text else type(exc).__name__


def _from_duckdb(exc: BaseException) -> bool:
    return type(exc).__module__.lstrip("_").startswith("duckdb")


def store_error(exc: BaseException) -> PebrError | None:
    """The one line a user needs for an error that a store file or the disk caused; None for any other.
    For a command line or an API: ``raise (store_error(exc) or exc)``. The `curate` commands all do.

    - A Parquet part, cache file or catalog that DuckDB cannot read (truncated, garbled): names the file
      and points at `curate check --repair`, which moves it to quarantine.
    - A full disk (or quota, read-only file system, I/O error), from Python or from DuckDB: says so, and
      that the store is consistent (a part is published whole or not at all, a run counts once committed).
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:  # the error, then what it was raised from (or during)
        seen.add(id(exc))
        error = _store_error(exc)
        if error is not None:
            return error
        exc = exc.__cause__ or exc.__context__
    return None


def _store_error(exc: BaseException) -> PebrError | None:
    broken = _broken_file(exc)
    if broken is not None:
        return broken
    reason = where = None
    if isinstance(exc, OSError) and exc.errno in _DISK_ERRORS:
        reason, where = _DISK_ERRORS[exc.errno], exc.filename
    elif _from_duckdb(exc):
        text = str(exc).lower()
        reason = next((message for message in _DISK_ERRORS.values() if message in text), None)
    if reason is None:
        return None
    return PebrError(f"{reason}{f' ({where})' if where else ''}: make room and run the command again; the store is "
                     "consistent (parts are published whole or not at all, a run counts once committed, an "
                     "interrupted score run resumes; `curate check` verifies it)")


def _broken_file(exc: BaseException) -> PebrError | None:
    """`store_error` for a DuckDB error naming a store file it could not read."""
    if not _from_duckdb(exc):
        return None
    head = str(exc).split("\n\n")[0]  # DuckDB's message, before the SQL it quotes
    if "could not set lock" in head.lower():
        return None  # a database file open in another process: nothing is broken
    for match in _QUOTED_PATH.finditer(head):
        path = match.group(1) or match.group(2)
        found = _STORE_FILE.fullmatch(path)
        if found is None or not Path(path).is_file():
            continue
        import shlex

        root, rel = found["root"], found["rel"]
        reason = re.sub(r"\s+", " ", _reason(exc).replace(f"'{path}'", "").replace(f'"{path}"', "")).replace(" :", ":")
        return PebrError(f"{rel} of the store {root} is broken ({reason.strip()}); "
                         f"`curate check --repair --store {shlex.quote(root)}` moves it to quarantine and makes the "
                         "store consistent (`curate check` lists what is wrong)")
    return None


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
