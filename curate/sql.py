"""Read-only SQL over the store, with output as a rich table, CSV or JSON."""

from __future__ import annotations

import json
import sys

import pyarrow as pa

from curate.store import Store
from schemas.errors import PebrError

READ_ONLY = {"SELECT", "EXPLAIN"}


def run_query(store: Store, query: str) -> pa.Table:
    import duckdb

    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise PebrError(f"SQL does not parse: {exc}") from None
    if not statements:
        raise PebrError("empty query")
    for st in statements:
        if st.type.name not in READ_ONLY:
            raise PebrError(f"only read-only queries are allowed here ({st.type.name} refused); the store changes only through curate commands")
    con = store.connect()
    try:
        result = None
        for st in statements:
            result = con.sql(st.query).to_arrow_table()
        return result
    except duckdb.Error as exc:
        raise PebrError(str(exc).splitlines()[0]) from None
    finally:
        con.close()


def write_result(table: pa.Table, fmt: str, out=None) -> None:
    out = out or sys.stdout
    if fmt == "csv":
        import csv

        w = csv.writer(out, lineterminator="\n")
        w.writerow(table.column_names)
        for row in table.to_pylist():
            w.writerow([_cell(v) for v in row.values()])
    elif fmt == "json":
        json.dump(table.to_pylist(), out, default=_json_value, ensure_ascii=False)
        out.write("\n")
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(*table.column_names)
        for row in table.to_pylist():
            t.add_row(*[_cell(v) for v in row.values()])
        Console(file=out).print(t)
        Console(stderr=True).print(f"{table.num_rows} row(s)")


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
