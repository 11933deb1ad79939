"""The store: Parquet tables written atomically, a DuckDB catalog of views, and a writer lock.

Layout of a store directory::

    tables/<table>/part-<run_id>-<n>.parquet   immutable parts, renamed into place when complete
    tmp/<run_id>/                              what the writer spills to disk (removed when it ends)
    images/<ab>/<sha256>.<ext>                 content-addressed copies of every ingested image
    catalog.duckdb                             views samples, rejects, rollouts, runs, difficulty
    cache/difficulty/<run_id>.<fp>.parquet     each run's difficulty rows (derived; see curate.difficulty)
    .lock                                      held (flock) by the one writer; names its holder

A part becomes visible only by an atomic rename, so readers never see half a file. Samples and
rejects of an ingest count only once its row in `runs` exists (the commit record); parts of an
ingest or import that died before committing are removed by the next writer; a scoring run
commits its row first, so its rollouts count as they land and the run can be resumed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from curate.errors import PebrError
from schemas import RUN_COLUMNS, SCHEMA_VERSION, TABLE_NAMES

if TYPE_CHECKING:
    import pyarrow as pa

# pyarrow is imported where a table is written or read, so that readers which only query through
# DuckDB (`curate select`, `curate sql`) start without it.

CATALOG = "catalog.duckdb"
_EMPTY_PART = "part-empty.parquet"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_run_id(kind: str) -> str:
    return f"{kind}-{_now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def default_store() -> Path:
    return Path(os.environ.get("PEBR_STORE") or "store")


class Store:
    """A store directory. Cheap to construct; `init` creates the layout when missing."""

    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        self._lock_fd: int | None = None

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
                self._write_atomic(d / _EMPTY_PART, TABLES[name].empty_table())
        self.images_dir.mkdir(parents=True, exist_ok=True)
        return self

    # -- writer lock ----------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, command: str, wait: float = 0.0) -> Iterator[Store]:
        """Hold the store's writer lock for the block.

        A second writer waits up to `wait` seconds (scoring shards take turns this way), then gets
        a clear error naming the holder.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                holder = Path(path).read_text(errors="replace").strip() or "another process"
                os.close(fd)
                raise PebrError(f"store {self.root} is being written by {holder}; wait for it to finish") from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} ({command}, since {_now():%Y-%m-%d %H:%M:%S} UTC)".encode())
            self._lock_fd = fd
            self.init()
            self._drop_uncommitted()
            yield self
        finally:
            self._lock_fd = None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            if self.exists():
                self.ensure_catalog()

    def _require_lock(self) -> None:
        if self._lock_fd is None:
            raise RuntimeError("store writes need `with store.writing(...)`")

    def _drop_uncommitted(self) -> None:
        import duckdb

        # A run is committed by its row in `runs` (read through DuckDB: no pyarrow for this).
        with duckdb.connect() as con:
            committed = {r for (r,) in con.execute(
                f"SELECT DISTINCT run_id FROM read_parquet({_glob(self, 'runs')}, union_by_name = true)").fetchall()}
        for name in ("samples", "rejects", "rollouts"):
            for part in self.table_dir(name).glob("part-*.parquet"):
                run = part_run(part)
                if run and run not in committed:
                    part.unlink()
        for tmp in (self.root / "tables").glob("*/.*.tmp"):
            tmp.unlink()
        shutil.rmtree(self.root / "tmp", ignore_errors=True)  # what a killed writer spilled to disk

    # -- writing --------------------------------------------------------------------------
    def write(self, name: str, table: pa.Table, run_id: str) -> Path | None:
        """Validate `table` against the table's schema and add it as one new immutable part."""
        from schemas.tables import TABLES, conform

        self._require_lock()
        if table.num_rows == 0:
            return None
        table = conform(table, TABLES[name])
        # A part holds the rows of the run its name carries (committed_scan reads parts by name).
        column = "run_id" if name == "rollouts" else "ingest_run"
        if column in table.column_names and table.column(column).unique().to_pylist() != [run_id]:
            raise ValueError(f"{name}: every row of a part of run {run_id} must have {column} = {run_id!r}")
        d = self.table_dir(name)
        existing = len(list(d.glob(f"part-{run_id}-*.parquet")))
        path = d / f"part-{run_id}-{existing:05d}.parquet"
        self._write_atomic(path, table)
        return path

    def add_run(self, run_id: str, kind: str, con=None, **fields) -> None:
        """Write the run's row in `runs`; for an ingest this commits its samples and rejects.

        Written by DuckDB (a one-row COPY; through `con` when the caller has a connection open), so
        a command that only runs SQL never loads pyarrow.
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
        columns = ", ".join(f"CAST(${i + 1} AS {'TIMESTAMPTZ' if c == 'created_at' else 'VARCHAR'}) AS {c}"
                            for i, c in enumerate(RUN_COLUMNS))
        path = self.table_dir("runs") / f"part-{run_id}-00000.parquet"
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        meta = "{'pebr.table': 'runs', 'pebr.schema_version': " + sql_literal(str(SCHEMA_VERSION)) + "}"
        copy = f"COPY (SELECT {columns}) TO {sql_literal(tmp)} (FORMAT parquet, COMPRESSION zstd, KV_METADATA {meta})"
        try:
            if con is None:
                with duckdb.connect() as own:
                    own.execute(copy, [row.get(c) for c in RUN_COLUMNS])
            else:
                con.execute(copy, [row.get(c) for c in RUN_COLUMNS])
            fsync_file(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _write_atomic(path: Path, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        fsync_file(tmp)
        os.replace(tmp, path)

    def put_image(self, data: bytes, suffix: str) -> str:
        """Copy image bytes into the content-addressed image folder; returns the store-relative path."""
        digest = hashlib.sha256(data).hexdigest()
        rel = Path("images") / digest[:2] / f"{digest}{suffix.lower() or '.img'}"
        dest = self.root / rel
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, dest)
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
        stamp.write_text(digest)

    def refresh_catalog(self) -> None:
        """Rewrite catalog.duckdb (atomically) so the DuckDB CLI sees the current views."""
        import duckdb

        tmp = self.root / f".{CATALOG}.{uuid.uuid4().hex[:8]}.tmp"
        con = duckdb.connect(str(tmp))
        try:
            for statement in view_statements(self):
                con.execute(statement)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp, self.root / CATALOG)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{tmp}.wal")


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (before the rename that publishes it)."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


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


def sql_literal(text: str | Path) -> str:
    """`text` (or a path) as a quoted SQL string literal."""
    text = text.as_posix() if isinstance(text, Path) else text
    return "'" + text.replace("'", "''") + "'"


def _glob(store: Store, name: str) -> str:
    return sql_literal(store.table_dir(name) / "*.parquet")


def view_statements(store: Store) -> list[str]:
    """SQL that defines the store's macros and views; the catalog file and `curate sql` share it."""
    from curate.difficulty import DIFFICULTY_SQL, MACROS

    def scan(name: str) -> str:
        return f"read_parquet({_glob(store, name)}, union_by_name = true)"

    return [
        *MACROS,
        f"CREATE OR REPLACE VIEW runs AS SELECT * FROM {scan('runs')}",
        f"CREATE OR REPLACE VIEW samples AS SELECT * FROM {scan('samples')} "
        "WHERE ingest_run IN (SELECT run_id FROM runs)",
        f"CREATE OR REPLACE VIEW rejects AS SELECT * FROM {scan('rejects')} "
        "WHERE ingest_run IN (SELECT run_id FROM runs)",
        f"CREATE OR REPLACE VIEW rollouts AS SELECT * FROM {scan('rollouts')} "
        "WHERE run_id IN (SELECT run_id FROM runs)",
        DIFFICULTY_SQL,
    ]
