"""`curate check [--repair]`, broken store files met by commands, disk full, idempotent import.

Issue 15: findings 9 (disk full), 10 (corruption) and 11 (re-importing a dump doubles its rollouts).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sys

import pyarrow as pa
import pytest
from conftest import make_image, record, write_jsonl

from curate.check import QUARANTINE, check_store
from curate.importer import import_rollouts
from curate.ingest import IngestOptions, ingest
from curate.store import CATALOG, Store, store_error
from schemas.errors import PebrError


def cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """`curate ARGS` run in this process (so monkeypatches apply): exit code, stdout, stderr."""
    from curate.cli import main

    monkeypatch.setattr(sys, "argv", ["curate", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line(text: str) -> str:
    assert "Traceback" not in text
    assert text.strip().count("\n") == 0, text
    return text.strip()


@pytest.fixture
def world(tmp_path):
    """A store with one ingest (4 samples over 2 images, 1 reject) and one import of 16 rollouts."""
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    make_image(root / "b.png", color=(0, 0, 255))
    rows = [record(f"q{i}", problem=f"How many circles are in <image>? ({i})", answer=str(i),
                   images=["a.png" if i % 2 else "b.png"]) for i in range(4)]
    rows.append(record("q-missing", images=["nope.png"]))
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    store = Store(tmp_path / "store")
    ingest(store, IngestOptions(path=data, image_root=root, source="toy"))
    dump = write_jsonl(tmp_path / "dump.jsonl", [
        {"qid": f"q{i % 4}", "response": f"r{i}", "score": {"accuracy": float(i % 3 == 0)}} for i in range(16)])
    import_rollouts(store, dump)
    return store, data, root, dump


def count(store: Store, table: str) -> int:
    return store.connect().execute(f"select count(*) from {table}").fetchone()[0]


def part_of(store: Store, table: str, kind: str):
    (part,) = [p for p in store.parts(table) if p.name.startswith(f"part-{kind}-")]
    return part


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def lines(report) -> list[str]:
    return [f.line() for f in report.findings]


def problems(findings) -> list[str]:
    return [f.line() for f in findings if not f.leftover]


def notes(report) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((report.root / QUARANTINE).glob("*/note.json"))]


def test_a_healthy_store_checks_clean(world, monkeypatch, capsys):
    store, *_ = world
    report = check_store(store)
    assert report.ok and report.findings == []
    code, out, err = cli(monkeypatch, capsys, "check", "--store", store.root)
    assert code == 0 and out == "" and "consistent" in err
    # --repair on a healthy store changes nothing
    before = sorted(p.relative_to(store.root) for p in store.root.rglob("*") if p.is_file())
    assert check_store(store, repair=True).repairs == []
    assert sorted(p.relative_to(store.root) for p in store.root.rglob("*") if p.is_file()) == before


# -- finding 10: a truncated part stops every command --------------------------------------------------------


@pytest.mark.parametrize("table", ["runs", "rollouts"])
def test_a_truncated_part_is_one_line_that_points_at_check(world, monkeypatch, capsys, table):
    store, data, root, dump = world
    part = part_of(store, table, "import")
    truncate(part)
    code, out, err = cli(monkeypatch, capsys, "sql", "select 1", "--store", store.root)
    line = one_line(err)
    assert code == 2 and part.name in line and "curate check --repair" in line, line
    # a writer meets it too (a new writer reads runs before anything else)
    code, out, err = cli(monkeypatch, capsys, "import-rollouts", dump, "--again", "--store", store.root)
    assert code == 2 and "curate check --repair" in one_line(err)


def test_check_finds_and_repair_fixes_a_truncated_runs_part(world, monkeypatch, capsys):
    store, data, root, dump = world
    runs_part, rollouts_part = part_of(store, "runs", "import"), part_of(store, "rollouts", "import")
    run = runs_part.name[len("part-"):-len("-00000.parquet")]
    truncate(runs_part)
    code, out, err = cli(monkeypatch, capsys, "check", "--store", store.root)
    assert code == 1
    assert f"tables/runs/{runs_part.name}: not readable Parquet" in out
    # its rollouts lost their commit record: they are named, with the reason
    assert f"tables/rollouts/{rollouts_part.name}: a part of run {run}, whose commit record" in out
    assert "Traceback" not in out + err
    code, out, err = cli(monkeypatch, capsys, "check", "--repair", "--store", store.root)
    assert code == 0, out + err
    assert not runs_part.exists() and not rollouts_part.exists()
    (note,) = notes(check_store(store))
    moved = {m["path"]: m["reason"] for m in note["moved"]}
    assert "not readable Parquet" in moved[f"tables/runs/{runs_part.name}"]
    assert f"tables/rollouts/{rollouts_part.name}" in moved
    qdir = store.root / QUARANTINE / note["folder"]
    assert (qdir / "tables" / "runs" / runs_part.name).is_file() and (qdir / "note.txt").is_file()
    assert check_store(store).ok and check_store(store).findings == []
    assert count(store, "rollouts") == 0 and count(store, "samples") == 4
    # the import is no longer committed: importing the dump again restores it
    assert import_rollouts(store, dump).rollouts == 16 and count(store, "rollouts") == 16


def test_repair_of_a_truncated_rollouts_part_uncommits_its_import(world):
    store, data, root, dump = world
    part = part_of(store, "rollouts", "import")
    run = part.name[len("part-"):-len("-00000.parquet")]
    truncate(part)
    report = check_store(store)
    assert not report.ok
    assert f"tables/rollouts/{part.name}: not readable Parquet" in " ".join(lines(report))
    assert any(line.startswith(f"run {run}: ") and "lost rows" in line and part.name in line for line in lines(report))
    report = check_store(store, repair=True)
    assert report.remaining == [] and report.ok
    assert any("import-rollouts" in line for line in report.repairs)  # how to get the rows back
    assert count(store, "rollouts") == 0 and not store.connect().execute(
        "select * from runs where run_id = ?", [run]).fetchall()
    assert import_rollouts(store, dump).rollouts == 16


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_a_scoring_run_keeps_its_other_parts_and_its_gap_is_acknowledged(world, damage):
    store, *_ = world

    def rows(start: int) -> pa.Table:
        return pa.Table.from_pylist([{"run_id": "score-abc", "sample_id": sid, "qid": qid, "rollout_idx": start,
                                      "response": "r", "correct": True, "accuracy": 1.0}
                                     for sid, qid in store.connect().execute("select sample_id, qid from samples").fetchall()])

    with store.writing("t"):
        store.add_run("score-abc", "score", command="curate score --model m")
        parts = [store.write("rollouts", rows(i), "score-abc") for i in range(3)]
    truncate(parts[1]) if damage == "truncate" else parts[1].unlink()
    report = check_store(store, repair=True)
    assert any(f.line().startswith("run score-abc: ") and "lost rows" in f.line() for f in report.findings)
    assert report.remaining == [], [f.line() for f in report.remaining]
    assert any("curate score --model m" in line for line in report.repairs)
    assert not parts[1].exists() and parts[0].exists() and parts[2].exists()
    assert count(store, "rollouts where run_id = 'score-abc'") == 8
    # resuming never takes the name of a part the run still has
    with store.writing("t"):
        new = store.write("rollouts", rows(1), "score-abc")
    assert new.name == "part-score-abc-00003.parquet" and parts[2].exists()
    assert check_store(store).findings == []


# -- finding 10: a deleted part ------------------------------------------------------------------------------


def test_a_deleted_samples_part_names_the_run_that_lost_rows_and_repair_lets_it_be_ingested_again(world):
    store, data, root, dump = world
    part = part_of(store, "samples", "ingest")
    run = part.name[len("part-"):-len("-00000.parquet")]
    part.unlink()
    report = check_store(store)
    (line,) = problems(report.findings)
    assert line.startswith(f"run {run}: ingest run lost rows: 1 of its 5 records are in samples and rejects"), line
    # as it is, the file cannot be ingested again: the run that lost the rows still counts
    assert ingest(store, IngestOptions(path=data, image_root=root, source="toy")).already_ingested == run
    report = check_store(store, repair=True)
    assert report.remaining == []
    assert count(store, "samples") == 0 and count(store, "rejects") == 0
    r = ingest(store, IngestOptions(path=data, image_root=root, source="toy"))
    assert r.accepted == 4 and count(store, "samples") == 4
    # content-addressed ids: the import's rollouts find their samples again
    assert store.connect().execute("select count(*) from difficulty d join samples using (sample_id)").fetchone() == (4,)
    assert check_store(store).findings == []


# -- finding 10: a part of an uncommitted run ----------------------------------------------------------------


def test_a_part_of_an_uncommitted_run_is_found_and_quarantined(world, monkeypatch, capsys):
    store, *_ = world
    row = {"run_id": "import-ghost", "rollout_idx": 0, "response": "r", "correct": True, "sample_id": "s", "qid": "q"}
    with store.writing("t"):
        part = store.write("rollouts", pa.Table.from_pylist([row]), "import-ghost")
    report = check_store(store)
    assert problems(report.findings) == [
        f"tables/rollouts/{part.name}: a part of run import-ghost, which has no row in runs "
        "(its writer stopped before committing, or its runs part was lost)"]
    code, out, err = cli(monkeypatch, capsys, "check", "--repair", "--store", store.root)
    assert code == 0 and "quarantine" in out
    (note,) = notes(check_store(store))
    assert [m["path"] for m in note["moved"]] == [f"tables/rollouts/{part.name}"]
    assert (store.root / QUARANTINE / note["folder"] / "tables" / "rollouts" / part.name).is_file()
    assert check_store(store).findings == []


# -- finding 10: images ----------------------------------------------------------------------------------------


def image_of(store: Store, qid: str) -> str:
    return store.connect().execute("select images[1] from samples where qid = ?", [qid]).fetchone()[0]


def test_a_missing_image_is_restored_from_the_runs_image_root(world):
    store, data, root, dump = world
    rel = image_of(store, "q1")
    (store.root / rel).unlink()
    report = check_store(store)
    assert problems(report.findings) == [f"{rel}: missing; 2 sample(s) of run {ingest_run(store)} need it"]
    report = check_store(store, repair=True)
    assert report.remaining == []
    assert hashlib.sha256((store.root / rel).read_bytes()).hexdigest() == os.path.basename(rel).split(".")[0]
    assert any(line.startswith(f"restored {rel} from {root}") for line in report.repairs)


def test_a_corrupt_image_is_quarantined_and_restored(world):
    store, data, root, dump = world
    rel = image_of(store, "q2")
    (store.root / rel).write_bytes(b"garbage")
    report = check_store(store)
    assert problems(report.findings) == [
        f"{rel}: its content does not match its name (corrupt); 2 sample(s) of run {ingest_run(store)} need it"]
    report = check_store(store, repair=True)
    assert report.remaining == []
    assert hashlib.sha256((store.root / rel).read_bytes()).hexdigest() == os.path.basename(rel).split(".")[0]
    (note,) = notes(check_store(store))
    assert (store.root / QUARANTINE / note["folder"] / rel).read_bytes() == b"garbage"


def test_an_image_lost_for_good_turns_its_samples_into_rejects(world):
    store, data, root, dump = world
    rel = image_of(store, "q1")
    (store.root / rel).unlink()
    (root / "a.png").unlink()
    run = ingest_run(store)
    report = check_store(store, repair=True)
    assert report.remaining == [], [f.line() for f in report.remaining]
    # every record is still accounted for: the two samples are rejects of their run now, with the reason
    assert count(store, "samples") == 2
    got = store.connect().execute(
        "select qid, reason, ingest_run from rejects where reason = 'image_missing' order by qid").fetchall()
    assert got == [("q-missing", "image_missing", run), ("q1", "image_missing", run), ("q3", "image_missing", run)]
    message = store.connect().execute("select message, raw from rejects where qid = 'q1'").fetchone()
    assert rel in message[0] and json.loads(message[1])["answer"] == "1"
    assert check_store(store).findings == []


def ingest_run(store: Store) -> str:
    return store.connect().execute("select run_id from runs where kind = 'ingest'").fetchone()[0]


# -- finding 10: a garbled catalog -----------------------------------------------------------------------------


def test_a_garbled_catalog_is_found_repaired_and_rewritten_by_the_next_writer(world):
    import duckdb

    store, *_ = world
    catalog = store.root / CATALOG
    catalog.write_bytes(os.urandom(8192))  # its stamp still matches
    report = check_store(store)
    (line,) = problems(report.findings)
    assert line.startswith(f"{CATALOG}: does not open")
    assert check_store(store, repair=True).remaining == []
    with duckdb.connect(str(catalog), read_only=True) as con:
        assert con.execute("select count(*) from samples").fetchone() == (4,)
    catalog.write_bytes(os.urandom(8192))
    with store.writing("t"):
        pass
    with duckdb.connect(str(catalog), read_only=True) as con:
        assert con.execute("select count(*) from runs").fetchone() == (2,)


def test_a_broken_cache_file_is_found_and_repair_clears_the_cache(world):
    store, *_ = world
    (cached,) = (store.root / "cache" / "difficulty").glob("*.parquet")
    truncate(cached)
    report = check_store(store)
    (line,) = problems(report.findings)
    assert line.startswith(f"cache/difficulty/{cached.name}: not readable Parquet")
    report = check_store(store, repair=True)
    assert report.remaining == [] and not list((store.root / "cache" / "difficulty").iterdir())


# -- finding 9: leftovers and disk full --------------------------------------------------------------------------


def test_leftovers_are_listed_and_repair_removes_them(world, monkeypatch, capsys):
    store, *_ = world
    rel = image_of(store, "q1")
    stale = [store.table_dir("samples") / ".part-x.parquet.0123abcd.tmp",
             (store.root / rel).parent / f".{os.path.basename(rel)}.0123abcd.tmp",
             store.root / ".catalog.duckdb.1234abcd.tmp", store.root / ".catalog.duckdb.1234abcd.tmp.wal"]
    for p in stale:
        p.write_bytes(b"x")
    orphan = store.images_dir / "ff" / ("f" * 64 + ".png")
    orphan.parent.mkdir()
    orphan.write_bytes(b"an image of an ingest that never committed")
    (store.root / "tmp" / "import-x").mkdir(parents=True)
    report = check_store(store)
    assert report.ok  # leftovers are listed, but a store with them is consistent
    got = lines(report)
    for p in stale:
        assert f"{p.relative_to(store.root).as_posix()}: stale temporary file" in " ".join(got)
    assert f"{orphan.relative_to(store.root).as_posix()}: no committed sample references it" in got
    code, out, err = cli(monkeypatch, capsys, "check", "--store", store.root)
    assert code == 0 and "leftover" in out
    report = check_store(store, repair=True)
    assert report.remaining == []
    assert not any(p.exists() for p in stale) and not orphan.exists() and not (store.root / "tmp").exists()
    assert (store.root / rel).exists()


def test_a_full_disk_while_refreshing_the_catalog_still_reports_success(tmp_path, monkeypatch, capsys, caplog):
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    data = write_jsonl(tmp_path / "d.jsonl", [record(f"q{i}", answer=str(i)) for i in range(3)])
    store = tmp_path / "store"

    def full(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.root / CATALOG))

    monkeypatch.setattr(Store, "refresh_catalog", full)
    code, out, err = cli(monkeypatch, capsys, "ingest", data, "--image-root", root, "--store", store)
    assert code == 0, err
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]  # printed on stderr by the CLI
    assert "catalog.duckdb could not be refreshed (No space left on device)" in warning and "Traceback" not in err
    assert count(Store(store), "samples") == 3  # committed
    assert not (store / CATALOG).exists()
    # the re-run says what it did, and exits 0 (it used to fail again on the catalog)
    code, out, err = cli(monkeypatch, capsys, "ingest", data, "--image-root", root, "--store", store)
    assert code == 0 and "already ingested" in " ".join(err.split())  # rich wraps long paths
    monkeypatch.undo()
    # the next command rebuilds the catalog
    caplog.clear()
    code, out, err = cli(monkeypatch, capsys, "ingest", data, "--image-root", root, "--store", store)
    assert code == 0 and (store / CATALOG).exists() and not caplog.records
    assert check_store(Store(store)).findings == []


def test_a_full_disk_while_writing_a_part_is_one_line_and_leaves_the_store_consistent(tmp_path, monkeypatch, capsys):
    import curate.store

    root = tmp_path / "imgs"
    make_image(root / "a.png")
    data = write_jsonl(tmp_path / "d.jsonl", [record(f"q{i}", answer=str(i)) for i in range(3)])
    store = tmp_path / "store"
    real = curate.store._write_parquet

    def full(tmp, schema, tables):
        if "part-empty" not in tmp.name:
            tmp.write_bytes(b"PAR1 half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        return real(tmp, schema, tables)

    monkeypatch.setattr(curate.store, "_write_parquet", full)
    code, out, err = cli(monkeypatch, capsys, "ingest", data, "--image-root", root, "--store", store)
    line = one_line(err)
    assert code == 2 and "no space left on device" in line and "run the command again" in line, line
    monkeypatch.undo()
    s = Store(store)
    assert not list((store / "tables").rglob("*.tmp"))  # the half-written part is gone
    assert count(s, "samples") == 0 and count(s, "runs") == 0
    report = check_store(s)
    assert report.ok  # what is left (the copied image) is a leftover, which --repair removes
    assert report.findings and all(f.leftover and f.path.startswith("images/") for f in report.findings)
    code, out, err = cli(monkeypatch, capsys, "ingest", data, "--image-root", root, "--store", store)
    assert code == 0 and count(s, "samples") == 3
    assert check_store(s).findings == []


def test_store_error_names_disk_full_and_broken_files(tmp_path):
    import duckdb

    error = store_error(duckdb.IOException('IO Error: Could not write file "/x/y.parquet": No space left on device'))
    assert isinstance(error, PebrError) and "no space left on device" in str(error)
    assert store_error(ValueError("x")) is None
    assert store_error(OSError(errno.ENOENT, "No such file", "/x")) is None
    part = tmp_path / "s" / "tables" / "samples" / "part-ingest-a-00000.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"xx")
    error = store_error(duckdb.InvalidInputException(f"Invalid Input Error: File '{part}' too small to be a Parquet file"))
    assert "tables/samples/part-ingest-a-00000.parquet" in str(error) and "curate check --repair" in str(error)


# -- finding 11: importing a dump again -------------------------------------------------------------------------


def test_a_dump_already_imported_is_reported_and_not_imported_again(world, monkeypatch, capsys):
    store, data, root, dump = world
    (first,) = [r for (r,) in store.connect().execute("select run_id from runs where kind = 'import'").fetchall()]
    config = json.loads(store.connect().execute("select config from runs where run_id = ?", [first]).fetchone()[0])
    assert config["dump_sha256"] == hashlib.sha256(dump.read_bytes()).hexdigest()
    again = import_rollouts(store, dump)
    assert again.already_imported == first and count(store, "rollouts") == 16
    code, out, err = cli(monkeypatch, capsys, "import-rollouts", dump, "--store", store.root)
    assert code == 0 and "already imported" in err and first in err and "--again" in err
    assert count(store, "rollouts") == 16
    # other options are another import; so is --again
    assert import_rollouts(store, dump, correct_threshold=0.5).already_imported is None
    code, out, err = cli(monkeypatch, capsys, "import-rollouts", dump, "--again", "--store", store.root)
    assert code == 0 and "already imported" not in err
    assert count(store, "rollouts") == 48
    # the same content under another name is the same dump
    copy = dump.with_name("copy.jsonl")
    copy.write_bytes(dump.read_bytes())
    assert import_rollouts(store, copy).already_imported == first


def test_check_waits_for_no_writer_and_names_the_one_at_work(world, monkeypatch, capsys):
    store, *_ = world
    with store.writing("curate ingest x.jsonl"):
        with pytest.raises(PebrError, match="being written by .*curate ingest x.jsonl"):
            check_store(store)
    code, out, err = cli(monkeypatch, capsys, "check", "--store", store.root / "nothing")
    assert code == 2 and "no store" in one_line(err)


def test_check_has_help_with_an_example_and_loads_nothing_heavy():
    import subprocess

    probe = ("import sys, runpy; sys.argv = ['curate', 'check', '--help']\n"
             "try: runpy.run_module('curate.cli', run_name='__main__')\n"
             "except SystemExit: pass\n"
             "print('HEAVY', [m for m in ('duckdb', 'pyarrow', 'torch') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "Example:" in out.stdout and "--repair" in out.stdout and "HEAVY []" in out.stdout, out.stdout + out.stderr
