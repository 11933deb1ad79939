"""Read-only SQL over the store, with output as a rich table, CSV or JSON.

User SQL (`curate sql`, `StoreView.sql`, `curate select --where`) runs on `reader(store)`: a DuckDB
connection whose views read the store's committed parts and which DuckDB's own settings keep from
reaching anything else (no other file, no network, no extension, no setting); on top of that only
a single SELECT is accepted. Ctrl-C interrupts a running query.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from curate.store import READER_SPILL_PREFIX, Store, sql_literal, view_statements
from schemas.errors import PebrError

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

T = TypeVar("T")

DEFAULT_MEMORY_LIMIT = "2GB"
"""DuckDB's memory limit for user SQL (`curate sql --memory-limit`); past it, DuckDB spills to a
folder of its own under `<store>/tmp`, removed when the query ends."""

_EXPLAIN = re.compile(r"\s*EXPLAIN(\s+ANALY[SZ]E)?(\s*\(\s*FORMAT\s+\w+\s*\))?\s+", re.IGNORECASE)


@contextlib.contextmanager
def reader(store: Store, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB connection for user SQL: the store's macros and views (over the committed parts as
    they are now), and nothing else within reach.

    In this order, since each step closes a door the next would need: extension auto-install and
    auto-load off; the memory limit and the spill folder (`<store>/tmp/sql-...`, or none where the
    store cannot be written); `allowed_paths` = exactly the committed parts, with external access
    off, so no other file, folder, URL or database can be opened and no new file written (DuckDB
    writes a COPY to a temporary name first, which is not allowed either); the views; then the
    configuration locked, so no SET undoes any of it. Closing removes the spill folder.
    """
    import duckdb

    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    spill = None
    try:
        try:
            con.execute(f"SET memory_limit = {sql_literal(str(memory_limit))}")
        except duckdb.Error as exc:
            raise PebrError(f"memory limit {memory_limit!r}: {_first_line(exc)} (e.g. 2GB, 512MB)") from None
        try:
            parts = store.committed_parts(con)
            readable = {p for group in parts.values() for p in group}
            # DuckDB checks a reader's path as written (globs escaped, see views.sql_file) and each file it opens.
            allowed = sorted({s for p in readable for s in (p.as_posix(), glob.escape(p.as_posix()))})
            spill = _spill_folder(store)
            con.execute(f"SET temp_directory = {sql_literal(spill or '')}")
            con.execute(f"SET allowed_paths = [{', '.join(sql_literal(s) for s in allowed)}]")
            con.execute("SET enable_external_access = false")
            for statement in view_statements(store, parts):
                con.execute(statement)
            con.execute("SET lock_configuration = true")
        except duckdb.Error as exc:
            raise PebrError(f"store {store.root}: {_first_line(exc)}") from None
        yield con
    finally:
        con.close()
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)
            with contextlib.suppress(OSError):
                spill.parent.rmdir()  # when no one else spills there


def _spill_folder(store: Store) -> Path | None:
    """A new folder of this reader under `<store>/tmp` for DuckDB to spill to; None where the store
    cannot be written (DuckDB then keeps everything in memory)."""
    folder = store.root / "tmp" / f"{READER_SPILL_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir(parents=True)
    except OSError:
        return None
    return folder


def read_only_statement(query: str) -> str:
    """`query` when it is a single SELECT (in any of its forms: FROM-first, VALUES, DESCRIBE, SHOW,
    SUMMARIZE) or EXPLAIN [ANALYZE] of one; else a PebrError. EXPLAIN ANALYZE runs the statement
    it explains, so that one is checked too."""
    import duckdb

    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise PebrError(f"SQL does not parse: {_first_line(exc)}") from None
    if not statements:
        raise PebrError("empty query")
    kinds = [st.type.name for st in statements]
    if len(statements) == 1 and _is_select(statements[0]):
        return statements[0].query
    refused = "several statements" if len(statements) > 1 else kinds[0]
    raise PebrError(f"only read-only queries are allowed here: a single SELECT, or EXPLAIN [ANALYZE] of one "
                    f"({refused} refused); the store changes only through curate commands")


def _is_select(statement) -> bool:
    import duckdb

    if statement.type.name == "SELECT":
        return True
    match = _EXPLAIN.match(statement.query) if statement.type.name == "EXPLAIN" else None
    if match is None:
        return False
    try:
        inner = duckdb.extract_statements(statement.query[match.end():])
    except duckdb.Error:
        return False
    return len(inner) == 1 and inner[0].type.name == "SELECT"


def run_query(store: Store, query: str, memory_limit: str = DEFAULT_MEMORY_LIMIT) -> pa.Table:
    """The result of one read-only query (`read_only_statement`) over the store, run on `reader`."""
    import duckdb

    statement = read_only_statement(query)
    with reader(store, memory_limit) as con:
        try:
            return interruptible(con, lambda: con.sql(statement).to_arrow_table())
        except duckdb.Error as exc:
            raise PebrError(_first_line(exc)) from None


def interruptible(con: duckdb.DuckDBPyConnection, work: Callable[[], T]) -> T:
    """`work()` (queries on `con`), run so that Ctrl-C stops it: DuckDB holds the main thread in C++
    until a query ends, where Python's SIGINT handler cannot run; so the query runs on a worker
    thread, and a KeyboardInterrupt in the waiting main thread interrupts the query on `con`, waits
    for the worker to stop, and goes on up."""
    outcome: dict = {}
    done = threading.Event()  # not Thread.is_alive: a join cut short by Ctrl-C leaves that saying False

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001  (handed to the waiting thread)
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="pebr-sql", daemon=True).start()
    try:
        while not done.wait(0.2):
            pass
    except KeyboardInterrupt:
        while not done.is_set():  # an interrupt that came before the query started is lost: repeat it
            con.interrupt()
            done.wait(0.1)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def write_result(table: pa.Table, fmt: str, out=None) -> None:
    out = out or sys.stdout
    if fmt == "csv":
        import csv

        # csv quotes a field holding "\n" but not one holding a bare "\r", which readers take for a line break;
        # a row with one is written fully quoted, so every value reads back exactly
        w = csv.writer(out, lineterminator="\n")
        quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        for cells in ([str(c) for c in table.column_names], *([_cell(v) for v in row.values()] for row in table.to_pylist())):
            (quoted if any("\r" in c for c in cells) else w).writerow(cells)
    elif fmt == "json":
        json.dump(table.to_pylist(), out, default=_json_value, ensure_ascii=False)
        out.write("\n")
    else:
        from rich.table import Table

        from schemas.cli import cell, console

        # cells are Text, never markup, with control characters shown as escapes (CSV and JSON stay exact)
        t = Table()
        for name in table.column_names:
            t.add_column(cell(name))
        for row in table.to_pylist():
            t.add_row(*[cell(_cell(v)) for v in row.values()])
        console(file=out).print(t)
        console().print(f"{table.num_rows} row(s)")


def _json_value(value):
    """Decimals (DuckDB's sum of integers is a HUGEINT) as numbers; everything else as text."""
    from decimal import Decimal

    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str, ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
