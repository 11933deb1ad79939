from __future__ import annotations

import json
import os

import pytest
from conftest import make_image, record, write_jsonl

from curate.importer import import_rollouts
from curate.ingest import IngestOptions, ingest
from curate.sql import run_query
from curate.store import Store
from schemas.errors import PebrError


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    rows = [record(f"q{i}", answer=str(i)) for i in range(3)]
    s = Store(tmp_path / "store")
    ingest(s, IngestOptions(path=write_jsonl(tmp_path / "d.jsonl", rows), image_root=root, source="toy"))
    return s


def test_import_pebr_dump(tmp_path, store):
    lines = []
    for q, k in (("q0", 8), ("q1", 3), ("q2", 0), ("ghost", 2)):
        for i in range(8):
            lines.append({"qid": q, "response": f"resp {i}", "ground_truth": "x", "score": {"accuracy": float(i < k)}})
    lines.append("{broken")
    path = write_jsonl(tmp_path / "rollout_results.jsonl", lines)
    r = import_rollouts(store, path)
    assert (r.lines, r.rollouts, r.unreadable) == (33, 32, 1)
    assert (r.unmatched_rollouts, r.unmatched_qids) == (8, 1)
    con = store.connect()
    got = con.execute("select s.qid, d.k, d.band from difficulty d join samples s using (sample_id) order by 1").fetchall()
    assert got == [("q0", 8, "easy"), ("q1", 3, "medium"), ("q2", 0, "hard")]
    # an imported rollout's index is its position among the dump's records
    idx = con.execute("select rollout_idx, qid, response from rollouts order by rollout_idx").fetchall()
    assert [i for i, _, _ in idx] == list(range(32))
    assert [(q, r) for _, q, r in idx] == [(x["qid"], x["response"]) for x in lines[:32]]


def test_import_verl_dump_needs_qid_field(tmp_path, store):
    lines = [{"input": "p", "output": f"o{i}", "gts": "0", "score": float(i % 2), "step": 1, "qid": "q0"} for i in range(4)]
    path = write_jsonl(tmp_path / "1.jsonl", lines)
    with pytest.raises(PebrError, match="--qid-field"):
        import_rollouts(store, path)
    r = import_rollouts(store, path, qid_field="qid", correct_threshold=1.0)
    assert r.rollouts == 4 and r.unmatched_rollouts == 0
    assert run_query(store, f"select k from difficulty where run_id = '{r.run_id}'").to_pylist() == [{"k": 2}]


def test_sql_refuses_writes(store):
    for q in ("delete from samples", "create table t as select 1", "copy samples to '/tmp/x.csv'", "select 1; drop view samples"):
        with pytest.raises(PebrError, match="read-only"):
            run_query(store, q)
    with pytest.raises(PebrError):
        run_query(store, "select nope from samples")
    assert run_query(store, "select count(*) as n from samples").to_pylist() == [{"n": 3}]


def test_sql_json_output(store):
    import io

    from curate.sql import write_result

    buf = io.StringIO()
    write_result(run_query(store, "select qid from samples order by qid"), "json", buf)
    assert json.loads(buf.getvalue()) == [{"qid": "q0"}, {"qid": "q1"}, {"qid": "q2"}]


def test_every_non_blank_line_is_accounted_for(tmp_path, store):
    good = [json.dumps({"qid": f"q{i}", "response": "r", "ground_truth": "x", "score": {"accuracy": 1.0}}) for i in range(3)]
    lines = [good[0], "", "   ", good[1], "{broken", "[1, 2]", "42", json.dumps({"response": "no qid"}), good[2],
             '{"qid": "q0", "response": "cut off']
    path = tmp_path / "dump.jsonl"
    path.write_text("\n".join(lines))  # no newline after the truncated last record
    r = import_rollouts(store, path)
    # 8 records (blank and whitespace-only lines hold none): 3 rollouts, 5 unreadable.
    assert (r.lines, r.rollouts, r.unreadable) == (8, 3, 5)
    got = store.connect().execute("select rollout_idx, qid from rollouts order by 1").fetchall()
    assert got == [(0, "q0"), (1, "q1"), (6, "q2")]  # positions among the records


def test_difficulty_cache_matches_the_view_and_follows_new_parts(tmp_path, store):
    from curate.difficulty import cache_path, load_difficulty
    from curate.store import part_run

    lines = [{"qid": q, "response": "r", "ground_truth": "x", "score": {"accuracy": float(i < k)}}
             for q, k in (("q0", 4), ("q1", 1)) for i in range(4)]
    r = import_rollouts(store, write_jsonl(tmp_path / "a.jsonl", lines))
    path = cache_path(store, r.run_id)
    assert path.exists(), "import warms the run's cache"
    con = store.connect()
    view = con.execute(f"select d.*, s.source, s.capability from difficulty d join samples s using (sample_id) "
                       f"where run_id = '{r.run_id}' order by sample_id").fetchall()
    table = load_difficulty(store, con, r.run_id)
    assert con.execute(f"select * from {table} order by sample_id").fetchall() == view
    assert len(view) == 2 and view[0][-2:] == ("toy", None)  # the toy records name no capability
    # A cache file is trusted only for the parts it was made from: a new part of the run changes its name.
    part = next(p for p in store.table_dir("rollouts").glob("part-*.parquet") if part_run(p) == r.run_id)
    extra = part.with_name(part.name.replace("-00000.", "-00001."))
    extra.write_bytes(part.read_bytes())  # the same rollouts again: every n doubles
    assert cache_path(store, r.run_id) != path
    con = store.connect()
    table = load_difficulty(store, con, r.run_id)
    assert sorted(con.execute(f"select n, k from {table}").fetchall()) == [(8, 2), (8, 8)]
    # A superseded file stays while a reader may still be about to open it (even if it is itself old),
    # and goes once its replacement has been there for STALE_CACHE_S.
    from curate.difficulty import STALE_CACHE_S

    os.utime(path, (0, 0))
    load_difficulty(store, store.connect(), r.run_id)
    assert path.exists()
    current = cache_path(store, r.run_id)
    os.utime(current, (current.stat().st_mtime - STALE_CACHE_S - 1,) * 2)
    load_difficulty(store, store.connect(), r.run_id)
    assert not path.exists() and current.exists(), "the superseded file of the run is dropped"


def test_selection_works_where_the_cache_cannot_be_written(tmp_path, store):
    import shutil

    from curate.select import SelectOptions, select_stage

    lines = [{"qid": q, "response": "r", "ground_truth": "x", "score": {"accuracy": float(i < k)}}
             for q, k in (("q0", 4), ("q1", 1), ("q2", 0)) for i in range(4)]
    import_rollouts(store, write_jsonl(tmp_path / "a.jsonl", lines))
    shutil.rmtree(store.root / "cache")
    (store.root / "cache").write_text("not a folder")  # as unwritable as it gets for root
    got = {stage: select_stage(store, SelectOptions(stage=stage, out=tmp_path / stage)).rows
           for stage in ("perception", "reasoning", "warmup")}
    assert got == {"perception": 1, "reasoning": 1, "warmup": 1}


def test_paths_with_quotes(tmp_path):
    from curate.select import SelectOptions, select_stage

    root = tmp_path / "it's here"
    make_image(root / "imgs" / "a.png")
    s = Store(root / "o'store")
    ingest(s, IngestOptions(path=write_jsonl(root / "d.jsonl", [record("q0", answer="1")]), image_root=root / "imgs", source="toy"))
    dump = [{"qid": "q0", "response": "r", "ground_truth": "1", "score": {"accuracy": 1.0}}] * 2
    r = import_rollouts(s, write_jsonl(root / "o'dump.jsonl", dump))
    assert (r.lines, r.rollouts) == (2, 2)
    assert select_stage(s, SelectOptions(stage="perception", out=root / "st'age")).rows == 1


def test_positions_survive_a_parallel_reading(tmp_path, store, monkeypatch):
    """The dump is read by several threads in 1 MiB buffers; each rollout's index is still its line."""
    import curate.importer

    monkeypatch.setattr(curate.importer, "MAX_RECORD_BYTES", 1 << 20)
    lines = [{"qid": f"q{(i * 7) % 3}", "response": f"response {i:06d} " + "x" * (i % 200), "ground_truth": "0",
              "score": {"accuracy": float(i % 3 == 0)}} for i in range(30_000)]
    lines[12_345] = "{broken"
    path = write_jsonl(tmp_path / "big.jsonl", lines)
    assert path.stat().st_size > 4 << 20
    r = import_rollouts(store, path)
    assert (r.lines, r.rollouts, r.unreadable) == (30_000, 29_999, 1)
    got = store.connect().execute("select rollout_idx, qid, response from rollouts order by rollout_idx").fetchall()
    want = [(i, x["qid"], x["response"]) for i, x in enumerate(lines) if i != 12_345]
    assert got == want


def test_imported_part_has_the_rollouts_schema(tmp_path, store):
    import pyarrow.parquet as pq

    from curate.store import part_run
    from schemas import ROLLOUTS, RUN_COLUMNS, RUNS, SCHEMA_VERSION

    lines = [{"qid": "q0", "response": "r", "ground_truth": "x", "score": {"accuracy": 1.0}}]
    r = import_rollouts(store, write_jsonl(tmp_path / "a.jsonl", lines))
    parts = [p for p in store.table_dir("rollouts").glob("part-*.parquet") if part_run(p) == r.run_id]
    assert len(parts) == 1
    schema = pq.read_schema(parts[0])
    assert [(f.name, f.type) for f in schema] == [(f.name, f.type) for f in ROLLOUTS]
    assert schema.metadata[b"pebr.table"] == b"rollouts"
    assert schema.metadata[b"pebr.schema_version"] == str(SCHEMA_VERSION).encode()
    # the run's row reads back with the runs schema and its metadata
    run = store.table_dir("runs") / f"part-{r.run_id}-00000.parquet"
    schema = pq.read_schema(run)
    assert [(f.name, f.type) for f in schema] == [(f.name, f.type) for f in RUNS] and tuple(RUNS.names) == RUN_COLUMNS
    assert schema.metadata[b"pebr.table"] == b"runs"
    assert schema.metadata[b"pebr.schema_version"] == str(SCHEMA_VERSION).encode()
    row = next(x for x in store.read("runs").to_pylist() if x["run_id"] == r.run_id)
    assert row["kind"] == "import" and row["created_at"].tzinfo is not None and json.loads(row["config"])["lines"] == 1
    assert not (store.root / "tmp").exists(), "the import's spill folder is removed"


def test_a_record_too_long_stops_the_import_cleanly(tmp_path, store, monkeypatch):
    import curate.importer

    monkeypatch.setattr(curate.importer, "MAX_RECORD_BYTES", 1 << 20)  # DuckDB's buffer is 32 MiB at least
    lines = [{"qid": "q0", "response": "r", "ground_truth": "x", "score": {"accuracy": 1.0}},
             {"qid": "q1", "response": "y" * (34 << 20), "ground_truth": "x", "score": {"accuracy": 1.0}}]
    with pytest.raises(PebrError, match="longer than the importer reads"):
        import_rollouts(store, write_jsonl(tmp_path / "long.jsonl", lines))
    con = store.connect()
    assert con.execute("select count(*) from rollouts").fetchone() == (0,)
    assert con.execute("select count(*) from runs where kind = 'import'").fetchone() == (0,)
    assert not list(store.table_dir("rollouts").glob(".*.tmp")) and not (store.root / "tmp").exists()


def test_verl_scores_meet_the_threshold_at_their_own_precision(tmp_path, store):
    lines = [{"input": "p", "output": f"o{i}", "gts": "0", "score": s, "uid": "q0"}
             for i, s in enumerate([0.999999999, 1.0, 0.5, 0.49999999999])]
    r = import_rollouts(store, write_jsonl(tmp_path / "v.jsonl", lines), qid_field="uid", correct_threshold=0.5)
    got = store.connect().execute(f"select rollout_idx, correct from rollouts where run_id = '{r.run_id}' order by 1").fetchall()
    assert got == [(0, True), (1, True), (2, True), (3, False)]  # 0.49999999999 rounds to 0.5 as a FLOAT
    r = import_rollouts(store, write_jsonl(tmp_path / "w.jsonl", lines), qid_field="uid", correct_threshold=1.0)
    got = store.connect().execute(f"select correct from rollouts where run_id = '{r.run_id}' order by rollout_idx").fetchall()
    assert [c for (c,) in got] == [False, True, False, False]


def test_odd_scores_are_kept_as_incorrect_rollouts(tmp_path, store):
    """A record whose score is not {"accuracy": number} is still a rollout: NULL accuracy, not correct."""
    scores = {"a": {"accuracy": 1.0}, "b": 1.0, "c": "abc", "d": {"accuracy": "x"}, "e": None, "f": {"accuracy": True},
              "g": {"accuracy": "0.5"}, "h": {"accuracy": 1, "format": 0.5}, "i": "null", "j": {"accuracy": [1]}}
    lines = []
    for qid, score in scores.items():
        rec = {"qid": qid, "response": "r"}
        if score is not None:
            rec["score"] = None if score == "null" else score
        lines.append(rec)
    r = import_rollouts(store, write_jsonl(tmp_path / "odd.jsonl", lines))
    assert (r.lines, r.rollouts, r.unreadable) == (10, 10, 0)
    got = store.connect().execute("SELECT qid, accuracy, correct FROM rollouts ORDER BY rollout_idx").fetchall()
    assert got == [("a", 1.0, True), ("b", None, False), ("c", None, False), ("d", None, False), ("e", None, False),
                   ("f", 1.0, True), ("g", 0.5, False), ("h", 1.0, True), ("i", None, False), ("j", None, False)]


def test_a_dump_without_a_rollout_writes_nothing(tmp_path, store):
    # the first record names the format; no record carries a question id
    path = write_jsonl(tmp_path / "none.jsonl", [{"qid": None, "response": "r"}, "{broken", "[1]"])
    with pytest.raises(PebrError, match=r"no rollout could be read \(3 lines\)"):
        import_rollouts(store, path)
    assert [p.name for p in store.table_dir("rollouts").iterdir()] == ["part-empty.parquet"]
    assert store.connect().execute("select count(*) from runs where kind = 'import'").fetchone() == (0,)
