"""`curate select` owns only what it writes (issue 15, findings 4 and 5).

The output folder: a non-empty --out that is not a stage dataset is refused; --force removes
exactly the files the earlier manifest lists (copied images included), never a user's other files;
a lock beside --out keeps two selections from writing into the same folder at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import make_image, record, write_jsonl

from curate import select as select_mod
from curate.importer import import_rollouts
from curate.ingest import IngestOptions, ingest
from curate.select import SelectOptions, select_lock, select_stage
from curate.store import Store
from schemas.errors import PebrError
from schemas.io import file_lock

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """12 hard samples over 4 images (h0..h11; the even ones carry a gold response) and 4 easy ones."""
    tmp = tmp_path_factory.mktemp("select_output")
    root = tmp / "imgs"
    for i, c in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        make_image(root / f"img{i}.png", color=c)
    rows, dump = [], []
    for i in range(16):
        qid, k = (f"h{i}", 0) if i < 12 else (f"e{i}", 4)
        extra = {"response": f"### The final answer is: {i}"} if i % 2 == 0 else {}
        rows.append(record(qid, problem=f"Question {qid}: how many in <image>?", images=[f"img{i % 4}.png"], **extra))
        dump += [{"qid": qid, "response": f"r{j}", "ground_truth": "3", "score": {"accuracy": float(j < k)}} for j in range(4)]
    s = Store(tmp / "store")
    ingest(s, IngestOptions(path=write_jsonl(tmp / "data.jsonl", rows), image_root=root, source="toy"))
    import_rollouts(s, write_jsonl(tmp / "rollout_results.jsonl", dump))
    return s


def _tree(folder: Path) -> set[str]:
    """Every file under `folder`, relative to it."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def _user_files(out: Path) -> dict[str, bytes]:
    files = {"easyr1/checkpoints/model.bin": b"weights", "sharegpt/notes.md": b"mine", "README.txt": b"about this folder"}
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    return files


def _select(store: Store, out: Path, **kw):
    return select_stage(store, SelectOptions(stage="warmup", out=out, **kw))


# -- finding 4: a non-empty folder that is not a stage dataset -----------------------------------

def test_a_users_folder_is_refused_and_left_alone_even_with_force(tmp_path, store):
    out = tmp_path / "out"
    (out / "easyr1" / "checkpoints").mkdir(parents=True)
    (out / "easyr1" / "checkpoints" / "model.bin").write_bytes(b"weights")
    before = _tree(out)
    for force in (False, True):
        with pytest.raises(PebrError, match="not empty") as e:
            _select(store, out, format="easyr1", force=force)
        assert str(out) in str(e.value) and "easyr1" in str(e.value)
        assert _tree(out) == before and (out / "easyr1" / "checkpoints" / "model.bin").read_bytes() == b"weights"
    # A folder with shards of its own but other files too, and no manifest to tell them apart: refused.
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "train-00000-of-00001.parquet").write_bytes(b"x")
    (legacy / "notes.txt").write_text("mine")
    with pytest.raises(PebrError, match="notes.txt"):
        _select(store, legacy, force=True)
    assert _tree(legacy) == {"train-00000-of-00001.parquet", "notes.txt"}


def test_out_is_a_file(tmp_path, store):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PebrError, match="not a folder"):
        _select(store, tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


def test_an_empty_or_new_folder_takes_a_dataset(tmp_path, store):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "new" / "deeper"):
        r = _select(store, out)
        assert r.rows == 12
        assert _tree(out) == {"manifest.json", "select_drops.parquet", "train-00000-of-00001.parquet"}, "no lock or marker inside"


# -- finding 4: --force removes exactly what the earlier selection wrote -------------------------

@pytest.mark.parametrize("fmt", ["parquet", "easyr1", "sharegpt"])
def test_manifest_lists_every_file_the_selection_wrote(tmp_path, store, fmt):
    r = _select(store, tmp_path / "out", format=fmt, shard_rows=5)
    files = _manifest(r.out)["files"]
    assert _tree(r.out) - {"manifest.json"} == set(files), "the manifest lists every file, and nothing else"
    for name, entry in files.items():
        assert hashlib.sha256((r.out / name).read_bytes()).hexdigest() == entry["sha256"], name
    assert _manifest(r.out)["files_complete"] is True
    if fmt != "parquet":
        images = {n for n in files if n.startswith(f"{fmt}/images/")}
        assert len(images) == 4, "the copied images are listed (sharegpt: also those of skipped samples, they are copied)"


def test_force_removes_only_what_the_manifest_lists(tmp_path, store):
    out = tmp_path / "out"
    first = _select(store, out, format="easyr1", shard_rows=5)
    assert len(first.files) == 3 + 1 + 2 + 4  # 3 shards, drops, train.json + format prompt, 4 images
    mine = _user_files(out)
    with pytest.raises(PebrError, match="already holds"):
        _select(store, out, format="sharegpt")
    assert _tree(out) == set(first.files) | {"manifest.json", *mine}, "refused without --force: nothing touched"
    # Replaced by a smaller sharegpt selection: of the old dataset nothing is left, the user's files all are.
    second = _select(store, out, format="sharegpt", cap=1, force=True)
    assert _tree(out) == set(second.files) | {"manifest.json", *mine}
    assert all((out / rel).read_bytes() == data for rel, data in mine.items())
    assert not (out / "easyr1" / "train.json").exists() and not (out / "easyr1" / "images").exists()
    # Back to plain Parquet: the sharegpt files go, the folders the selection made go once empty.
    third = _select(store, out, force=True)
    assert _tree(out) == set(third.files) | {"manifest.json", *mine}
    assert sorted(p.name for p in (out / "sharegpt").iterdir()) == ["notes.md"]
    (out / "sharegpt" / "notes.md").unlink()
    (out / "easyr1" / "checkpoints" / "model.bin").unlink()
    _select(store, out, format="easyr1", force=True)
    _select(store, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "easyr1", "manifest.json", "select_drops.parquet",
                                                     "train-00000-of-00001.parquet"]
    assert [p.name for p in (out / "easyr1").iterdir()] == ["checkpoints"], "the user's (empty) folder stays"


def test_force_follows_a_manifest_written_before_images_were_listed(tmp_path, store):
    out = tmp_path / "out"
    r = _select(store, out, format="easyr1")
    old_images = {n for n in r.files if "/images/" in n}
    assert len(old_images) == 4
    manifest = _manifest(out)
    manifest["files"] = {n: v for n, v in manifest["files"].items() if n not in old_images}
    del manifest["files_complete"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    mine = _user_files(out)
    (out / "easyr1" / "images" / "mine.png").write_bytes(b"not from the store")
    _select(store, out, force=True)
    assert not any((out / n).exists() for n in old_images), "the images the old records name are removed"
    assert (out / "easyr1" / "images" / "mine.png").exists() and all((out / rel).exists() for rel in mine)


def test_force_never_leaves_the_folder(tmp_path, store):
    out = tmp_path / "out"
    _select(store, out)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    manifest = _manifest(out)
    manifest["files"]["../outside.txt"] = {"sha256": "0"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PebrError, match="outside"):
        _select(store, out, force=True)
    assert outside.read_text() == "keep"
    # A listed path through a link that leaves the folder is refused too.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "train.json").write_text("keep")
    manifest["files"] = {n: v for n, v in manifest["files"].items() if n != "../outside.txt"}
    manifest["files"]["easyr1/train.json"] = {"sha256": "0"}
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "easyr1").symlink_to(elsewhere)
    with pytest.raises(PebrError, match="outside"):
        _select(store, out, force=True)
    assert (elsewhere / "train.json").read_text() == "keep"


def test_a_failed_selection_removes_what_it_wrote_and_nothing_else(tmp_path, store, monkeypatch):
    out = tmp_path / "out"
    first = _select(store, out, format="sharegpt")
    mine = _user_files(out)

    def broken(*args, **kwargs):
        raise PebrError("disk trouble")

    monkeypatch.setattr(select_mod, "write_json_records", broken)
    with pytest.raises(PebrError, match="disk trouble"):
        _select(store, out, format="easyr1", force=True)
    assert _tree(out) == set(mine), "the new shards are gone, the old dataset was replaced, the user's files stay"
    assert first.rows == 12


def test_a_killed_selection_is_replaced_by_force(tmp_path, store, monkeypatch):
    """A selection killed half-way (no manifest yet) leaves a marker; --force then removes what it wrote."""
    out = tmp_path / "out"
    real = select_mod.write_json_records

    def killed(rows, path, *args, **kwargs):
        real(rows, path, *args, **kwargs)
        raise KeyboardInterrupt  # stands for SIGKILL, with the cleanup switched off below

    monkeypatch.setattr(select_mod, "write_json_records", killed)
    monkeypatch.setattr(select_mod, "_discard_partial", lambda claim: None)
    with pytest.raises(KeyboardInterrupt):
        _select(store, out, format="sharegpt", shard_rows=5)
    monkeypatch.undo()
    assert (out / "sharegpt" / "warmup.json").exists() and not (out / "manifest.json").exists()
    mine = _user_files(out)  # files of the user's land in the folder afterwards
    with pytest.raises(PebrError, match="already holds an unfinished selection"):
        _select(store, out)
    r = _select(store, out, force=True)
    assert _tree(out) == set(r.files) | {"manifest.json", *mine}
    assert not (out / "sharegpt" / "images").exists()


def test_a_dataset_without_manifest_is_replaced_by_force(tmp_path, store):
    out = tmp_path / "single"
    out.mkdir()
    (out / "train.parquet").write_bytes(b"x")  # a stage dataset written as one file
    with pytest.raises(PebrError, match="already holds"):
        _select(store, out)
    r = _select(store, out, force=True)
    assert _tree(out) == set(r.files) | {"manifest.json"}


# -- finding 5: one selection at a time into a folder ---------------------------------------------

def test_a_held_lock_refuses_a_second_selection(tmp_path, store):
    out = tmp_path / "out"
    assert select_lock(out).parent == tmp_path, "the lock lies beside the folder, not in it"
    with file_lock(select_lock(out), "pid 4242 on box (curate select --stage warmup, since now)"):
        with pytest.raises(PebrError, match="pid 4242 on box") as e:
            _select(store, out)
        assert str(out) in str(e.value) and "\n" not in str(e.value)
    assert not out.exists(), "the refused selection wrote nothing"
    assert _select(store, out).rows == 12, "free again once the holder is done"


def test_two_processes_cannot_interleave(tmp_path, store):
    """A second `curate select` into a folder another one is writing fails with one line naming the holder."""
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from schemas.io import file_lock, process_label
        from curate.select import select_lock
        with file_lock(select_lock(__import__('pathlib').Path({str(out)!r})), process_label("curate select --stage warmup")):
            print("held", flush=True)
            sys.stdin.readline()
        """)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = subprocess.run([sys.executable, "-m", "curate.cli", "select", "--stage", "warmup", "--store", str(store.root),
                            "--out", str(out)], check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and "Traceback" not in r.stderr
        assert r.stderr.strip().count("\n") == 0, r.stderr
        assert f"pid {holder.pid}" in r.stderr and "curate select" in r.stderr
        assert not out.exists()
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    r = subprocess.run([sys.executable, "-m", "curate.cli", "select", "--stage", "warmup", "--store", str(store.root),
                        "--out", str(out)], check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _tree(out) == {"manifest.json", "select_drops.parquet", "train-00000-of-00001.parquet"}
    assert os.path.exists(select_lock(out))


def test_a_lost_samples_part_stops_the_selection_instead_of_writing_fewer_rows(tmp_path):
    make_image(tmp_path / "imgs" / "a.png")
    rows = [record(f"e{i}", problem=f"Question {i} <image>?", images=["a.png"]) for i in range(5)]
    dump = [{"qid": f"e{i}", "response": "r", "score": {"accuracy": 1.0}} for i in range(5) for _ in range(4)]
    s = Store(tmp_path / "store")
    ingest(s, IngestOptions(path=write_jsonl(tmp_path / "data.jsonl", rows), image_root=tmp_path / "imgs", source="toy"))
    import_rollouts(s, write_jsonl(tmp_path / "dump.jsonl", dump))
    select_stage(s, SelectOptions(stage="perception", out=tmp_path / "ok"))  # the run's difficulty rows are cached
    for part in s.table_dir("samples").glob("part-ingest-*.parquet"):
        part.unlink()
    with pytest.raises(PebrError, match="5 of the 5 selected samples are missing from the store"):
        select_stage(s, SelectOptions(stage="perception", out=tmp_path / "lost"))
    assert not (tmp_path / "lost" / "manifest.json").exists()
