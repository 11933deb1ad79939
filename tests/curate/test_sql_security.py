"""User SQL reaches the store's views and nothing else (issue 15, findings 1-3).

`curate sql`, `StoreView.sql` and `curate select --where` run on a connection locked down by DuckDB's own
settings (external access limited to the store's committed parts, no extension install or load, the
configuration locked), and only a single SELECT (or one boolean expression) is accepted on top of that;
flags that reach SQL are quoted; a store path holding glob characters reads and removes its own parts only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_image, record, write_jsonl

import curate
from curate.importer import import_rollouts
from curate.ingest import IngestOptions, ingest
from curate.select import SelectOptions, select_stage
from curate.sql import run_query
from curate.steps import STEP_COLUMNS
from curate.store import Store
from schemas.errors import PebrError

REPO = Path(__file__).resolve().parents[2]


def make_store(tmp: Path, root: Path, specs: list[tuple[str, int, int]], source: str = "toy") -> Store:
    """A store at `root`: one sample per (qid, k, n) and an imported run with k of n rollouts correct.
    The input files live in `tmp` (beside the store), so only the store's own path is under test."""
    images = tmp / "imgs"
    make_image(images / "a.png")
    store = Store(root)
    data = write_jsonl(tmp / f"data-{source}.jsonl", [record(q, problem=f"Question {q}: how many in <image>?") for q, _, _ in specs])
    ingest(store, IngestOptions(path=data, image_root=images, source=source))
    dump = [{"qid": q, "response": f"r{i}", "ground_truth": "3", "score": {"accuracy": float(i < k)}}
            for q, k, n in specs for i in range(n)]
    import_rollouts(store, write_jsonl(tmp / f"dump-{source}.jsonl", dump))
    return store


SPECS = [(f"e{i}", 8, 8) for i in range(3)] + [(f"m{i}", 4, 8) for i in range(4)] + [(f"h{i}", 0, 8) for i in range(5)]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sqlsec")
    store = make_store(tmp, tmp / "store", SPECS)
    secret = tmp / "secret.txt"
    secret.write_text("top secret\n")
    outside = tmp / "outside.parquet"
    import duckdb

    duckdb.connect().execute(f"COPY (SELECT 'x' AS sample_id) TO '{outside}'")
    return tmp, store, secret, outside


def cli(*args, env=None, **kw):
    env = {**os.environ, "COLUMNS": "200", **(env or {})}
    env.pop("PEBR_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "curate.cli", *args], check=False, capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120, **kw)


def _parts(store: Store) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(store.root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted((store.root / "tables").rglob("*.parquet"))}


# -- finding 1: a read-only SQL surface --------------------------------------------------------------

def test_explain_analyze_runs_nothing_but_a_select(built):
    tmp, store, _, _ = built
    before = _parts(store)
    victim = next(p for p in store.parts("samples") if p.name != "part-empty.parquet")
    attacks = [
        f"EXPLAIN ANALYZE COPY (SELECT * FROM samples LIMIT 1) TO '{victim}' (FORMAT parquet)",
        f"EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO '{tmp / 'written.csv'}'",
        "EXPLAIN ANALYZE SET memory_limit = '1TB'",
        "EXPLAIN ANALYZE SET enable_external_access = true",
        "EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1",
        "EXPLAIN ANALYZE INSTALL httpfs",
        "/* hidden */ EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'",
        "EXPLAIN (FORMAT json) COPY (SELECT 1) TO 'x.csv'",
        "SELECT 1; COPY (SELECT 1) TO 'x.csv'",
        "PIVOT (SELECT 1 AS a, 2 AS b) ON a USING sum(b)",
        "CALL duckdb_settings()",
        "PRAGMA version",
        "ATTACH 'other.duckdb'",
    ]
    for query in attacks:
        with pytest.raises(PebrError, match="single SELECT"):
            run_query(store, query)
    assert _parts(store) == before, "committed parts were rewritten"
    assert not (tmp / "written.csv").exists() and not (REPO / "x.csv").exists()
    # What stays allowed: SELECT in its forms, and EXPLAIN [ANALYZE] of a SELECT.
    assert run_query(store, "select count(*) as n from samples").to_pylist() == [{"n": 12}]
    assert run_query(store, "FROM runs SELECT count(*) AS n").to_pylist() == [{"n": 2}]
    assert run_query(store, "EXPLAIN ANALYZE SELECT count(*) FROM rollouts").num_rows >= 1
    assert run_query(store, "  explain select band, count(*) from difficulty group by band;").num_rows >= 1
    assert run_query(store, "DESCRIBE samples").num_rows > 5


def test_no_file_outside_the_stores_parts_is_reachable(built):
    tmp, store, secret, outside = built
    hostile = [
        f"SELECT * FROM read_text('{secret}')",
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM read_blob('{secret}')",
        f"SELECT * FROM glob('{tmp}/*')",
        f"SELECT * FROM read_parquet('{outside}')",
        f"SELECT * FROM read_text('{store.root / 'tables' / '..' / '..' / secret.name}')",
        f"SELECT * FROM read_text('{store.root / '.catalog.sha256'}')",
        f"SELECT * FROM read_parquet('{store.table_dir('samples')}/*.parquet')",  # a glob of the store: not a listed part
        "SELECT * FROM read_text('/etc/hostname')",
        f"SELECT * FROM sniff_csv('{secret}')",
    ]
    for query in hostile:
        with pytest.raises(PebrError):
            run_query(store, query)
    view = curate.open_store(store.root)
    with pytest.raises(PebrError):
        view.sql(f"SELECT * FROM read_text('{secret}')")
    assert view.sql("select count(*) as n from rollouts").item() == 96


def test_the_locked_connection_holds_without_the_statement_check(built):
    """The settings themselves refuse: the statement check is a second wall, not the only one."""
    import duckdb

    from curate.sql import reader

    tmp, store, secret, _ = built
    victim = next(p for p in store.parts("samples") if p.name != "part-empty.parquet")
    size = victim.stat().st_size
    with reader(store) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone() == (12,)
        for statement in (f"SELECT * FROM read_text('{secret}')",
                          f"COPY (SELECT 1 AS x) TO '{tmp / 'w.csv'}'",
                          f"COPY (SELECT * FROM samples LIMIT 1) TO '{victim}' (FORMAT parquet)",
                          "SET enable_external_access = true", "SET lock_configuration = false",
                          "SET memory_limit = '100GB'", "SET allowed_directories = ['/']",
                          "INSTALL httpfs", "LOAD httpfs", f"ATTACH '{tmp / 'x.duckdb'}'"):
            with pytest.raises(duckdb.Error):
                con.execute(statement)
    assert victim.stat().st_size == size and not (tmp / "w.csv").exists() and not (tmp / "x.duckdb").exists()


def test_remote_files_need_no_network_and_write_nothing(built, tmp_path):
    _, store, _, _ = built
    home = tmp_path / "home"
    home.mkdir()
    start = time.monotonic()
    r = cli("sql", "--store", str(store.root), "select * from read_csv('https://example.com/data.csv')",
            env={"HOME": str(home)})
    assert r.returncode == 2 and r.stderr.count("\n") <= 1 and "Traceback" not in r.stdout + r.stderr, r.stderr
    assert time.monotonic() - start < 30
    assert list(home.iterdir()) == [], "nothing is installed or cached under ~/.duckdb"


def test_memory_limit_and_spill_folder_in_the_store(built):
    from curate.sql import DEFAULT_MEMORY_LIMIT

    _, store, _, _ = built
    r = cli("sql", "--store", str(store.root), "--format", "json",
            "select current_setting('memory_limit') as m, current_setting('temp_directory') as t")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert DEFAULT_MEMORY_LIMIT == "2GB" and row["m"] == "1.8 GiB"
    assert Path(row["t"]).parent == store.root / "tmp"
    r = cli("sql", "--store", str(store.root), "--memory-limit", "64MB", "--format", "json",
            "select current_setting('memory_limit') as m, count(*) as n from "
            "(select i, md5(i::varchar) || repeat('x', 60) as s from range(1500000) r(i) order by s)")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["m"].startswith("61") and row["n"] == 1_500_000  # past the limit: it spilled, and finished
    assert not list((store.root / "tmp").glob("sql-*")), "a reader removes its spill folder"
    r = cli("sql", "--store", str(store.root), "--memory-limit", "lots", "select 1")
    assert r.returncode == 2 and "memory" in r.stderr.lower()


def test_writers_leave_a_live_readers_spill_folder(tmp_path):
    store = Store(tmp_path / "store")
    with store.writing("test"):
        pass
    live, stale, writer = (store.root / "tmp" / n for n in ("sql-1-live", "sql-2-stale", "import-x"))
    for folder in (live, stale, writer):
        folder.mkdir(parents=True)
        (folder / "spill.tmp").write_bytes(b"x")
    os.utime(stale, (time.time() - 3 * 86400,) * 2)
    with store.writing("test"):
        pass
    assert live.exists() and not stale.exists() and not writer.exists()


def test_ctrl_c_cancels_a_running_query(built):
    _, store, _, _ = built
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("PEBR_DEBUG", None)
    p = subprocess.Popen([sys.executable, "-m", "curate.cli", "sql", "--store", str(store.root),
                          "select count(*) from range(1000000000000) r(i) where i % 7 = 3"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    time.sleep(4)  # started, and inside the query
    assert p.poll() is None
    p.send_signal(signal.SIGINT)
    start = time.monotonic()
    try:
        out, err = p.communicate(timeout=10)
    finally:
        p.kill()
    assert time.monotonic() - start < 5
    assert p.returncode == 130
    assert (out + err).strip() == "interrupted", out + err


# -- finding 2: injection ------------------------------------------------------------------------------

def test_where_cannot_break_out_of_its_condition(built):
    tmp, store, _, _ = built
    columns = ", ".join("'medium'" if c == "band" else c for c in STEP_COLUMNS)
    payloads = [
        f"1=1) UNION ALL SELECT {columns} FROM run_rows WHERE band = 'hard' AND (1=1",
        "1=1) OR (1=1",
        "true) ORDER BY (1",
        "true) GROUP BY ALL HAVING (true",
        "1=1); DROP VIEW samples; SELECT (1",
        "true --",
        "k, n",
    ]
    for i, where in enumerate(payloads):
        out = tmp / f"inj{i}"
        try:
            r = select_stage(store, SelectOptions(stage="reasoning", out=out, where=where))
        except PebrError as exc:
            assert any(w in str(exc) for w in ("single SQL condition", "does not parse", "failed")), exc
            assert not out.exists()
        else:  # a payload that happens to be one harmless expression keeps the band's rows only
            assert r.rows <= 4 and r.band_total == 4, where
    # A condition with a comment, a newline or a subquery over the store's views still works.
    r = select_stage(store, SelectOptions(stage="reasoning", out=tmp / "ok", where="k = 4 -- four of eight\n AND n = 8"))
    assert r.rows == 4
    r = select_stage(store, SelectOptions(stage="reasoning", out=tmp / "ok2",
                                          where="qid IN (SELECT qid FROM samples WHERE qid IN ('m0', 'm1'))"))
    assert r.rows == 2


def test_a_where_subquery_cannot_read_files(built):
    tmp, store, secret, outside = built
    for i, where in enumerate([f"length((SELECT content FROM read_text('{secret}'))) > 0",
                               f"sample_id NOT IN (SELECT sample_id FROM read_parquet('{outside}'))",
                               f"EXISTS (SELECT 1 FROM glob('{tmp}/*'))"]):
        with pytest.raises(PebrError, match="where .* failed"):
            select_stage(store, SelectOptions(stage="reasoning", out=tmp / f"rf{i}", where=where))


def test_qid_field_is_an_identifier_not_sql(tmp_path):
    store = make_store(tmp_path, tmp_path / "store", [("q0", 1, 2)])
    pwned = tmp_path / "pwned.csv"
    lines = [{"input": "p", "output": f"o{i}", "gts": "0", "score": float(i % 2), 'we"ird\'id': "q0", "uid": "q0"} for i in range(4)]
    dump = write_jsonl(tmp_path / "verl.jsonl", lines)
    payload = (f'uid" AS VARCHAR) AS qid, output AS response, score FROM (SELECT 1 AS uid, 2 AS output, 3 AS score); '
               f'COPY (SELECT 42) TO $${pwned}$$; SELECT CAST("input')
    with pytest.raises(PebrError):
        import_rollouts(store, dump, qid_field=payload, correct_threshold=1.0)
    assert not pwned.exists()
    r = import_rollouts(store, dump, qid_field='we"ird\'id', correct_threshold=1.0)  # any field name works, quotes and all
    assert r.rollouts == 4 and r.unmatched_rollouts == 0


# -- finding 3: glob-safe store paths ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["sb[1]", "s?1", "s*1"])
def test_a_store_path_with_glob_characters_is_read_literally(tmp_path, name):
    sibling = make_store(tmp_path, tmp_path / "sb1", [("x0", 8, 8), ("x1", 0, 8), ("x2", 0, 8)], source="sibling")
    store = make_store(tmp_path, tmp_path / name, [("q0", 8, 8), ("q1", 4, 8)], source="ours")
    sibling_parts = _parts(sibling)
    assert run_query(store, "select count(*) as n, min(source) as s from samples").to_pylist() == [{"n": 2, "s": "ours"}]
    with store.connect() as con:
        assert con.execute("select count(*), count(DISTINCT source) from samples").fetchone() == (2, 1)
        assert con.execute(f"select count(*) from {store.committed_scan(con, 'rollouts')}").fetchone() == (16,)
    import duckdb

    with duckdb.connect(str(store.root / "catalog.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from samples").fetchone() == (2,)
    # A second writer keeps this store's committed parts (it used to see the sibling's runs only).
    ours = _parts(store)
    make_store(tmp_path, store.root, [("q2", 0, 8)], source="more")
    assert set(ours) <= set(_parts(store))
    assert run_query(store, "select count(*) as n from samples").to_pylist() == [{"n": 3}]
    r = select_stage(store, SelectOptions(stage="warmup", out=tmp_path / f"out-{name}"))  # the latest run: q2's
    assert r.rows == 1 and r.by_source == {"more": 1}
    r = select_stage(store, SelectOptions(stage="warmup", out=tmp_path / f"where-{name}", where="qid = 'q2' AND k = 0"))
    assert r.rows == 1  # --where runs on the locked connection, whose allowed paths are escaped too
    assert _parts(sibling) == sibling_parts
    assert run_query(sibling, "select count(*) as n from samples").to_pylist() == [{"n": 3}]
