from __future__ import annotations

import multiprocessing as mp

import pyarrow as pa
import pytest

from curate.store import Store
from schemas import ROLLOUTS, SchemaError, conform
from schemas.errors import PebrError


def _hold_lock(root, ready, release):
    store = Store(root)
    with store.writing("holder-test"):
        ready.set()
        release.wait(10)


def test_second_writer_gets_a_clear_error_naming_the_holder(tmp_path):
    ctx = mp.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(tmp_path, ready, release))
    p.start()
    try:
        assert ready.wait(10)
        with pytest.raises(PebrError, match=rf"pid {p.pid} .*holder-test"):
            with Store(tmp_path).writing("second"):
                pass
        # readers never block
        assert Store(tmp_path).connect().execute("select count(*) from samples").fetchone() == (0,)
    finally:
        release.set()
        p.join(10)
    with Store(tmp_path).writing("third"):
        pass


def test_writes_are_validated(tmp_path):
    store = Store(tmp_path)
    with store.writing("t"):
        with pytest.raises(SchemaError, match="unknown columns"):
            store.write("rollouts", pa.table({"bogus": [1]}), "r1")
        with pytest.raises(SchemaError, match="required column 'response'"):
            store.write("rollouts", pa.table({"run_id": ["r"], "rollout_idx": [0], "correct": [True]}), "r1")
        with pytest.raises(SchemaError, match="null value"):
            conform(pa.table({"run_id": [None], "rollout_idx": [0], "response": ["x"], "correct": [True]}), ROLLOUTS)
    with pytest.raises(RuntimeError, match="writing"):
        store.write("runs", pa.table({"run_id": ["x"]}), "x")


def test_uncommitted_parts_are_invisible_and_dropped(tmp_path):
    store = Store(tmp_path)
    row = {"run_id": "import-x", "rollout_idx": 0, "response": "r", "correct": True, "sample_id": "s", "qid": "q"}
    with store.writing("t"):
        part = store.write("rollouts", pa.Table.from_pylist([row]), "import-x")
        assert part.exists() and not list(part.parent.glob(".*.tmp"))
    # no runs row: the part does not count, and the next writer removes it
    assert store.connect().execute("select count(*) from rollouts").fetchone() == (0,)
    with store.writing("t2"):
        pass
    assert not part.exists()
    with store.writing("t3"):
        store.add_run("import-y", "import")
        store.write("rollouts", pa.Table.from_pylist([{**row, "run_id": "import-y"}]), "import-y")
    con = store.connect()
    assert con.execute("select count(*) from rollouts").fetchone() == (1,)
    assert con.execute("select n, k, band from difficulty").fetchall() == [(1, 1, "easy")]


def test_committed_scan_reads_the_rows_of_the_view(tmp_path):
    """The by-file reading of committed parts (what `curate select` joins) equals the view."""
    store = Store(tmp_path)
    row = {"run_id": "r", "rollout_idx": 0, "response": "r", "correct": True, "sample_id": "s", "qid": "q"}
    with store.writing("t"):
        store.add_run("import-a", "import")
        store.write("rollouts", pa.Table.from_pylist([{**row, "run_id": "import-a"}]), "import-a")
        store.write("rollouts", pa.Table.from_pylist([{**row, "run_id": "import-a", "rollout_idx": 1}]), "import-a")
        # a part of a run that never committed (a writer killed before its runs row)
        store.write("rollouts", pa.Table.from_pylist([{**row, "run_id": "import-b"}]), "import-b")
        con = store.connect()
        scan = store.committed_scan(con, "rollouts")
        got = con.execute(f"select run_id, rollout_idx from {scan} order by all").fetchall()
        assert got == con.execute("select run_id, rollout_idx from rollouts order by all").fetchall()
        assert got == [("import-a", 0), ("import-a", 1)]
        # a table without committed parts still has its columns
        assert con.execute(f"select count(*), count(qid) from {store.committed_scan(con, 'samples')}").fetchone() == (0, 0)
        sample = {"sample_id": "s", "source": "x", "qid": "q", "problem": "p", "answer": "a", "key_words": [], "images": [],
                  "ingest_file": "f", "record_index": 0}
        store.add_run("ingest-a", "ingest")
        store.write("samples", pa.Table.from_pylist([{**sample, "ingest_run": "ingest-a"}]), "ingest-a")
        store.write("samples", pa.Table.from_pylist([{**sample, "sample_id": "t", "ingest_run": "ingest-b"}]), "ingest-b")
        con = store.connect()
        scan = store.committed_scan(con, "samples")
        assert con.execute(f"select sample_id from {scan}").fetchall() == con.execute("select sample_id from samples").fetchall() == [("s",)]
        # the rule the by-file reading rests on: a part holds only its own run's rows
        with pytest.raises(ValueError, match="ingest_run = 'ingest-c'"):
            store.write("samples", pa.Table.from_pylist([{**sample, "ingest_run": "ingest-a"}]), "ingest-c")


def test_catalog_file_opens_in_duckdb(tmp_path):
    import duckdb

    store = Store(tmp_path)
    with store.writing("t"):
        store.add_run("score-a", "score")
    con = duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True)
    assert con.execute("select kind from runs").fetchall() == [("score",)]
    assert {r[0] for r in con.execute("select view_name from duckdb_views() where not internal").fetchall()} >= {
        "samples", "rejects", "rollouts", "runs", "difficulty"}
    con.close()
    # the views read folders by glob: adding parts does not rewrite the catalog, and it still sees them
    inode = (tmp_path / "catalog.duckdb").stat().st_ino
    with store.writing("t2"):
        store.add_run("score-b", "score")
    assert (tmp_path / "catalog.duckdb").stat().st_ino == inode
    con = duckdb.connect(str(tmp_path / "catalog.duckdb"), read_only=True)
    assert con.execute("select count(*) from runs").fetchone() == (2,)


@pytest.mark.parametrize("k,band", [(0, "hard"), (1, "medium"), (7, "medium"), (8, "easy")])
def test_difficulty_bands_and_degenerate_probability(tmp_path, k, band):
    store = Store(tmp_path)
    rows = [{"run_id": "score-z", "sample_id": "s", "qid": "q", "rollout_idx": i, "response": "r", "correct": i < k,
             "accuracy": float(i < k)} for i in range(8)]
    with store.writing("t"):
        store.add_run("score-z", "score")
        store.write("rollouts", pa.Table.from_pylist(rows), "score-z")
    n, kk, b, p, lo, hi, pdeg = store.connect().execute(
        "select n, k, band, pass_rate, ci_low, ci_high, p_degenerate from difficulty").fetchone()
    assert (n, kk, b) == (8, k, band) and p == k / 8 and lo <= p <= hi
    # Beta(k+1, n-k+1) posterior, computed directly
    a, bb = k + 1, 8 - k + 1
    def moment(a, b, g):
        out = 1.0
        for i in range(g):
            out *= (a + i) / (a + b + i)
        return out
    assert pdeg == pytest.approx(moment(a, bb, 8) + moment(bb, a, 8), rel=1e-9)


# -- one write path: every part is checked against its schema and carries its version ------------------


def _rollout_rows(run: str, n: int, start: int = 0) -> list[dict]:
    return [{"run_id": run, "sample_id": f"s{i % 3}", "qid": f"q{i % 3}", "rollout_idx": i, "response": f"r{i}",
             "correct": i % 2 == 0, "accuracy": float(i % 2 == 0)} for i in range(start, start + n)]


def _meta(path) -> dict:
    import pyarrow.parquet as pq

    return {k.decode(): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items()}


def _same_columns(path, schema) -> bool:
    import pyarrow.parquet as pq

    got = pq.read_schema(path)
    return [(f.name, f.type) for f in got] == [(f.name, f.type) for f in schema]


def test_a_runs_part_carries_the_schema_and_its_version(tmp_path):
    from schemas import RUNS, SCHEMA_VERSION

    store = Store(tmp_path)
    with store.writing("t"):
        part = store.add_run("score-a", "score", model="m", sampling={"n": 8}, parent_run=None)
    assert part == store.table_dir("runs") / "part-score-a-00000.parquet"
    assert _meta(part) == {"pebr.table": "runs", "pebr.schema_version": str(SCHEMA_VERSION)}
    assert _same_columns(part, RUNS)
    row = store.connect().execute("select kind, model, sampling, parent_run, typeof(created_at) from runs").fetchone()
    assert row == ("score", "m", '{"n": 8}', None, "TIMESTAMP WITH TIME ZONE")
    with store.writing("t2"), pytest.raises(ValueError, match="unknown columns"):
        store.add_run("score-b", "score", temperature=1.0)
    # on a caller's open connection: the row is made on a cursor, the caller's settings stay as they were
    con = store.connect()
    con.execute("SET TimeZone = 'America/New_York'")
    with store.writing("t3"):
        part = store.add_run("score-c", "score", con)
    assert _same_columns(part, RUNS)
    assert con.execute("select current_setting('TimeZone')").fetchall() == [("America/New_York",)]


def test_write_streams_a_record_batch_reader(tmp_path):
    import pyarrow.parquet as pq

    from schemas import SCHEMA_VERSION

    store = Store(tmp_path)
    schema = pa.Table.from_pylist(_rollout_rows("score-a", 1)).schema
    batches = [pa.RecordBatch.from_pylist(_rollout_rows("score-a", n, start), schema=schema)
               for n, start in ((5, 0), (0, 5), (4, 5))]
    with store.writing("t"):
        part = store.write("rollouts", pa.RecordBatchReader.from_batches(schema, batches), "score-a")
        assert store.write("rollouts", pa.RecordBatchReader.from_batches(schema, []), "score-a") is None
        store.add_run("score-a", "score")
    assert [p.name for p in store.table_dir("rollouts").glob("part-score-a-*")] == [part.name]
    assert _meta(part)["pebr.schema_version"] == str(SCHEMA_VERSION) and _same_columns(part, ROLLOUTS)
    assert pq.ParquetFile(part).metadata.num_row_groups == 2  # one per non-empty batch: nothing gathered
    got = store.connect().execute("select rollout_idx, response, n_tokens from rollouts order by 1").fetchall()
    assert got == [(i, f"r{i}", None) for i in range(9)]


def test_a_bad_batch_late_in_a_stream_publishes_nothing(tmp_path):
    store = Store(tmp_path)
    good = _rollout_rows("score-a", 3)
    schema = pa.Table.from_pylist(good).schema
    bad = [{**r, "response": None} for r in _rollout_rows("score-a", 2, 3)]
    other_run = _rollout_rows("score-b", 2, 3)
    with store.writing("t"):
        for rows, error in ((bad, SchemaError), (other_run, ValueError)):
            reader = pa.RecordBatchReader.from_batches(schema, [pa.RecordBatch.from_pylist(good, schema=schema),
                                                                pa.RecordBatch.from_pylist(rows, schema=schema)])
            with pytest.raises(error, match="response|score-a"):
                store.write("rollouts", reader, "score-a")
        with pytest.raises(SchemaError, match="unknown columns"):  # before a row is read
            store.write("rollouts", pa.RecordBatchReader.from_batches(pa.schema([("bogus", pa.int64())]), []), "score-a")
        with pytest.raises(TypeError, match="Store.write takes"):
            store.write("rollouts", _rollout_rows("score-a", 1), "score-a")
    assert [p.name for p in store.table_dir("rollouts").iterdir()] == ["part-empty.parquet"]


RELATION = """SELECT 'import-a' AS run_id, 's' || (i % 3) AS sample_id, 'q' || (i % 3) AS qid,
    CAST(i AS INTEGER) AS rollout_idx, CAST(NULL AS BIGINT) AS seed, {response} AS response,
    CAST(NULL AS INTEGER) AS n_tokens, CAST(NULL AS VARCHAR) AS finish_reason, CAST(i % 2 AS FLOAT) AS accuracy,
    CAST(NULL AS FLOAT) AS format, CAST(NULL AS FLOAT) AS keyword, CAST(NULL AS FLOAT) AS length,
    CAST(NULL AS FLOAT) AS clip, CAST(i % 2 AS FLOAT) AS overall, i % 2 = 1 AS correct, CAST(NULL AS BOOLEAN) AS truncated
  FROM range({n}) t(i)"""


def test_write_has_duckdb_write_a_relation_checked_like_a_table(tmp_path):
    import duckdb

    from schemas import SCHEMA_VERSION

    store = Store(tmp_path)
    con = duckdb.connect()
    with store.writing("t"):
        part = store.write("rollouts", con.sql(RELATION.format(response="'r' || i", n=10)), "import-a")
        assert store.write("rollouts", con.sql(RELATION.format(response="'r'", n=0)), "import-a") is None
        store.add_run("import-a", "import")
        # the rows are checked as conform checks a table's: a null where the schema forbids one ...
        nulls = RELATION.format(response="CASE WHEN i = 7 THEN NULL ELSE 'r' END", n=10)
        with pytest.raises(SchemaError, match=r"rollouts\.response: null value"):
            store.write("rollouts", con.sql(nulls), "import-a")
        # ... a row of another run, a type that is not the schema's, a missing or unknown column
        with pytest.raises(ValueError, match="run_id = 'import-b'"):
            store.write("rollouts", con.sql(RELATION.format(response="'r'", n=3)), "import-b")
        with pytest.raises(SchemaError, match="rollout_idx: int64"):
            store.write("rollouts", con.sql(RELATION.format(response="'r'", n=3).replace("CAST(i AS INTEGER)", "i")), "import-a")
        with pytest.raises(SchemaError, match="required column 'response'"):
            store.write("rollouts", con.sql("SELECT 'import-a' AS run_id, 0 AS rollout_idx, true AS correct"), "import-a")
        with pytest.raises(SchemaError, match="unknown columns"):
            store.write("rollouts", con.sql("SELECT *, 1 AS bogus FROM (" + RELATION.format(response="'r'", n=3) + ")"), "import-a")
    assert sorted(p.name for p in store.table_dir("rollouts").iterdir()) == ["part-empty.parquet", part.name]
    assert _meta(part) == {"pebr.table": "rollouts", "pebr.schema_version": str(SCHEMA_VERSION)}
    assert _same_columns(part, ROLLOUTS)
    assert store.connect().execute("select count(*), sum(k) from difficulty").fetchone() == (3, 5)


def test_no_two_curate_modules_import_each_other():
    """The import graph of curate (function-level imports included) has no cycle."""
    import ast
    from pathlib import Path

    import curate

    root = Path(curate.__file__).parent
    modules = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def target(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            edges |= {t for n in names if n.split(".")[0] == "curate" and (t := target(n)) and t != name}
        graph[name] = edges

    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail[trail.index(nxt):], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    assert {"curate.store", "curate.difficulty", "curate.views"} <= set(graph)
    assert "curate.views" in graph["curate.store"] and "curate.store" in graph["curate.difficulty"]
    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
