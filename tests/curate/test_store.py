from __future__ import annotations

import multiprocessing as mp

import pyarrow as pa
import pytest

from curate.errors import PebrError
from curate.store import Store
from schemas import ROLLOUTS, SchemaError, conform


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
    from math import comb

    a, bb = k + 1, 8 - k + 1
    def moment(a, b, g):
        out = 1.0
        for i in range(g):
            out *= (a + i) / (a + b + i)
        return out
    assert pdeg == pytest.approx(moment(a, bb, 8) + moment(bb, a, 8), rel=1e-9)
    assert comb(8, k) >= 1
