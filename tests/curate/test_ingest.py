from __future__ import annotations

import io
import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import deadline, make_image, record, write_jsonl

from curate.ingest import REASONS, IngestOptions, _printable, ingest
from curate.store import Store
from schemas.errors import PebrError


def _counts(store: Store):
    con = store.connect()
    s = con.execute("select count(*) from samples").fetchone()[0]
    r = con.execute("select count(*) from rejects").fetchone()[0]
    return s, r, con


def test_hostile_file_accounts_for_every_record(tmp_path, hostile):
    path, root, accepted, reasons = hostile
    store = Store(tmp_path / "store")
    report = ingest(store, IngestOptions(path=path, image_root=root))
    assert report.records == accepted + len(reasons)
    assert report.accepted == accepted
    assert report.rejected == Counter(reasons)
    n_samples, n_rejects, con = _counts(store)
    assert n_samples + n_rejects == report.records
    assert n_samples == accepted
    # every record index appears exactly once across samples and rejects
    idx = con.execute("select record_index from samples union all select record_index from rejects order by 1").fetchall()
    assert [i for (i,) in idx] == list(range(report.records))
    assert {r for (r,) in con.execute("select reason from rejects").fetchall()} <= set(REASONS)
    # nothing outside the image root was copied into the store
    stored = [p for (ps,) in con.execute("select images from samples").fetchall() for p in ps]
    assert all(p.startswith("images/") and (store.root / p).is_file() for p in stored)
    outside = (tmp_path / "outside.png").read_bytes()
    assert all((store.root / p).read_bytes() != outside for p in stored)


def test_normalisation(tmp_path, hostile):
    path, root, _, _ = hostile
    store = Store(tmp_path / "store")
    ingest(store, IngestOptions(path=path, image_root=root, source="toy", capability="reasoning"))
    con = store.connect()
    rows = {r[0]: r[1:] for r in con.execute("select qid, answer, key_words, source, capability from samples").fetchall()}
    assert rows["7"] == ("5", ["square"], "toy", "reasoning")
    hashed = [q for q in rows if q.startswith("h-")]
    assert len(hashed) == 1
    # the hash qid is stable: a second store gives the same one
    store2 = Store(tmp_path / "store2")
    ingest(store2, IngestOptions(path=path, image_root=root, source="toy", capability="reasoning"))
    assert hashed[0] in {q for (q,) in store2.connect().execute("select qid from samples").fetchall()}


def test_ingest_twice_adds_nothing_and_survives_moving_images(tmp_path, hostile):
    path, root, _accepted, _ = hostile
    store = Store(tmp_path / "store")
    ingest(store, IngestOptions(path=path, image_root=root))
    before = _counts(store)[:2]
    again = ingest(store, IngestOptions(path=path, image_root=root))
    assert again.already_ingested and _counts(store)[:2] == before
    root.rename(tmp_path / "moved")
    con = store.connect()
    for (imgs,) in con.execute("select images from samples").fetchall():
        assert all((store.root / p).is_file() for p in imgs)


def test_duplicates_across_files(tmp_path):
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    first = write_jsonl(tmp_path / "one.jsonl", [record("q1")])
    second = write_jsonl(tmp_path / "two.jsonl", [record("q1"), record("q1", answer="9"), record("q2", answer="9")])
    store = Store(tmp_path / "store")
    ingest(store, IngestOptions(path=first, image_root=root, source="s"))
    r = ingest(store, IngestOptions(path=second, image_root=root, source="s"))
    assert r.accepted == 1 and r.rejected == Counter({"duplicate": 1, "conflicting_duplicate": 1})


def test_json_array_parquet_and_hf_dataset(tmp_path):
    import datasets
    import pyarrow as pa

    root = tmp_path / "imgs"
    make_image(root / "a.png")
    rows = [record("q1"), record("q2", answer="4")]
    (tmp_path / "arr.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    for i, p in enumerate(["arr.json", "rows.parquet", "hf"]):
        store = Store(tmp_path / f"store{i}")
        r = ingest(store, IngestOptions(path=tmp_path / p, image_root=root))
        assert (r.records, r.accepted) == (2, 2), p


def test_hf_dataset_with_embedded_images(tmp_path):
    import datasets
    from PIL import Image

    ds = datasets.Dataset.from_dict({
        "qid": ["a", "b"], "problem": ["What is <image>?"] * 2, "answer": ["x", "y"],
        "images": [[Image.new("RGB", (40, 40), "red")], [Image.new("RGB", (10, 10), "blue")]],
    }, features=datasets.Features({"qid": datasets.Value("string"), "problem": datasets.Value("string"),
                                   "answer": datasets.Value("string"), "images": [datasets.Image()]}))
    ds.save_to_disk(str(tmp_path / "hf"))
    store = Store(tmp_path / "store")
    r = ingest(store, IngestOptions(path=tmp_path / "hf", image_root=tmp_path))
    assert r.accepted == 1 and r.rejected == Counter({"image_too_small": 1})


def test_unreadable_inputs_are_clear_errors(tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(PebrError, match="no such file"):
        ingest(store, IngestOptions(path=tmp_path / "nope.jsonl", image_root=tmp_path))
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(PebrError, match="JSON array"):
        ingest(store, IngestOptions(path=tmp_path / "bad.json", image_root=tmp_path))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(PebrError, match="no records"):
        ingest(store, IngestOptions(path=tmp_path / "empty.jsonl", image_root=tmp_path))


# -- hostile records and inputs (issue 15) -------------------------------------------------------------

def _reasons(store: Store) -> dict[int, str | None]:
    """record_index -> reject reason, None for a sample."""
    con = store.connect()
    rows = con.execute("select record_index, null from samples union all select record_index, reason from rejects").fetchall()
    return dict(sorted(rows))


def test_image_path_with_a_nul_byte_or_an_impossible_name_is_a_reject(tmp_path):
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    rows = [record("nul", images=["a\x00.png"]), record("long", images=["x" * 300 + ".png"]),
            record("deep", images=["d/" * 3000 + "a.png"]), record("ok")]
    store = Store(tmp_path / "store")
    r = ingest(store, IngestOptions(path=write_jsonl(tmp_path / "d.jsonl", rows), image_root=root))
    assert r.records == 4 and r.accepted == 1
    assert _reasons(store) == {0: "bad_field", 1: "image_missing", 2: "image_missing", 3: None}


def test_text_that_is_not_unicode_is_a_reject_not_a_failed_write(tmp_path):
    """JSON can escape a lone surrogate (\\ud800): Python reads it, Arrow cannot write it."""
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    lines = [json.dumps(record("s1", problem="What is \ud800 <image>?")), json.dumps(record("s2", note="\udfff")),
             json.dumps(record("s3", key_words=["\ud83d"])), json.dumps(record("\ud800")), json.dumps(record("ok"))]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    store = Store(tmp_path / "store")
    r = ingest(store, IngestOptions(path=path, image_root=root))
    assert r.accepted == 1 and r.rejected == Counter({"bad_field": 4})
    # the same in a JSON array, where a rejected element's raw text is made from the parsed value
    (tmp_path / "arr.json").write_text(json.dumps(["\ud800 not an object", record("s1", problem="\ud800 <image>")]))
    r = ingest(store, IngestOptions(path=tmp_path / "arr.json", image_root=root))
    assert r.rejected == Counter({"not_an_object": 1, "bad_field": 1})
    raws = [raw for (raw,) in store.connect().execute("select raw from rejects where raw like '%not an object%'").fetchall()]
    assert raws == ['"\\ud800 not an object"']


def _image_outcomes(tmp_path):
    """Image references of every kind, with the outcome each must have."""
    from PIL import Image

    root = tmp_path / "imgs"
    make_image(root / "a.png")
    make_image(root / "sub" / "b.png", color=(0, 0, 255))
    outside = make_image(tmp_path / "outside.png", color=(1, 2, 3))
    (root / "escape.png").symlink_to(outside)
    buf = io.BytesIO()
    Image.new("RGB", (50, 50), "green").save(buf, format="PNG")
    cases = [
        ({"bytes": None, "path": str(outside)}, "image_outside_root"),
        ({"bytes": None, "path": "../outside.png"}, "image_outside_root"),
        ({"bytes": None, "path": "escape.png"}, "image_outside_root"),
        ({"bytes": None, "path": "a.png"}, None),  # relative: resolves against --image-root, not the working folder
        ({"bytes": None, "path": "sub/b.png"}, None),
        ({"bytes": None, "path": "nope.png"}, "image_missing"),
        ({"bytes": buf.getvalue(), "path": str(outside)}, None),  # embedded bytes are the image; the path is a name
        ({"bytes": None, "path": None}, "no_image"),
    ]
    return root, outside, cases


def _check_outcomes(store, report, cases, outside):
    assert report.records == len(cases)
    assert _reasons(store) == {i: want for i, (_, want) in enumerate(cases)}
    stored = [p for (ps,) in store.connect().execute("select images from samples").fetchall() for p in ps]
    assert all((store.root / p).read_bytes() != outside.read_bytes() for p in stored), "an outside file was copied in"


def _image_rows(cases):
    return [{"qid": f"q{i}", "problem": f"What is in <image>? ({i})", "answer": "x", "images": [ref]}
            for i, (ref, _) in enumerate(cases)]


_IMAGE_STRUCT = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))


@pytest.mark.parametrize("fmt", ["dataset", "parquet", "arrow", "jsonl"])
def test_images_from_outside_the_root_are_rejected_in_every_format(tmp_path, monkeypatch, fmt):
    root, outside, cases = _image_outcomes(tmp_path)
    rows = _image_rows(cases)
    table = pa.table({"qid": [r["qid"] for r in rows], "problem": [r["problem"] for r in rows],
                      "answer": [r["answer"] for r in rows], "images": pa.array([r["images"] for r in rows], _IMAGE_STRUCT)})
    if fmt == "dataset":
        path = _saved_dataset(tmp_path / "hf", table)
    elif fmt == "parquet":
        path = tmp_path / "rows.parquet"
        pq.write_table(table, path)
    elif fmt == "arrow":
        import datasets

        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
        path = tmp_path / "rows.arrow"
        schema = table.schema.with_metadata({b"huggingface": json.dumps({"info": {"features": _features().to_dict()}}).encode()})
        with pa.ipc.new_stream(str(path), schema) as w:
            w.write_table(table.cast(schema))
    else:  # JSON has no bytes: {"path": ...} objects, as a datasets Image column would give them
        cases = [c for c in cases if c[0]["bytes"] is None]
        path = write_jsonl(tmp_path / "rows.jsonl", _image_rows(cases))
    elsewhere = tmp_path / "elsewhere"
    make_image(elsewhere / "nope.png")  # would be found if relative paths resolved against the working folder
    monkeypatch.chdir(elsewhere)
    store = Store(tmp_path / "store")
    _check_outcomes(store, ingest(store, IngestOptions(path=path, image_root=root)), cases, outside)


def _features():
    import datasets

    return datasets.Features({"qid": datasets.Value("string"), "problem": datasets.Value("string"),
                              "answer": datasets.Value("string"), "images": datasets.List(datasets.Image())})


def _saved_dataset(folder, table):
    """A save_to_disk folder holding `table` as it is (image paths not embedded, as older `datasets` wrote them)."""
    import datasets

    datasets.Dataset.from_list([{"qid": "x", "problem": "p", "answer": "a", "images": []}], features=_features()).save_to_disk(str(folder))
    schema = table.schema.with_metadata({b"huggingface": json.dumps({"info": {"features": _features().to_dict()}}).encode()})
    with pa.ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), schema) as w:
        w.write_table(table.cast(schema))
    return folder


@pytest.mark.parametrize("ref", [{"bytes": "text"}, {"bytes": 10**12}, {"bytes": [137, 80]}, {"path": 5}, 5, None, [["a.png"]]])
def test_image_values_of_the_wrong_type_are_bad_fields(tmp_path, ref):
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    store = Store(tmp_path / "store")
    r = ingest(store, IngestOptions(path=write_jsonl(tmp_path / "d.jsonl", [record("q", images=[ref]), record("ok")]), image_root=root))
    assert r.accepted == 1 and r.rejected == Counter({"bad_field": 1})


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_input_that_is_not_a_regular_file_is_one_clear_error(tmp_path, kind):
    path = tmp_path / "in.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    store = Store(tmp_path / "store")
    with deadline(20), pytest.raises(PebrError, match=r"in.jsonl: not a regular file or a dataset folder"):
        ingest(store, IngestOptions(path=path, image_root=tmp_path))


def test_folder_that_is_not_a_dataset_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from curate import ingest as ingest_module

    folder = tmp_path / "plain"
    make_image(folder / "a.png")
    monkeypatch.setattr(ingest_module, "_file_digest", lambda path: pytest.fail("hashed a folder that is not a dataset"))
    with pytest.raises(PebrError, match=r"plain: not a dataset saved with save_to_disk"):
        ingest(Store(tmp_path / "store"), IngestOptions(path=folder, image_root=folder))


def test_rows_are_written_in_parts_of_bounded_size(tmp_path, monkeypatch):
    """Rows go to the store whenever their text reaches FLUSH_BYTES, not only every 50,000 records."""
    from curate import ingest as ingest_module

    monkeypatch.setattr(ingest_module, "FLUSH_BYTES", 200_000)
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    rows = [record(f"q{i}", problem=f"{i} <image> " + "x" * 10_000) for i in range(100)] + ['{"bad": '] * 30
    store = Store(tmp_path / "store")
    r = ingest(store, IngestOptions(path=write_jsonl(tmp_path / "d.jsonl", rows), image_root=root))
    assert (r.accepted, r.records) == (100, 130)
    assert len(store.parts("samples")) >= 5
    assert sum(pq.read_metadata(p).num_rows for p in store.parts("samples")) == 100


def test_ingest_streams_a_large_file(tmp_path, monkeypatch):
    """Python's peak allocation during an ingest stays far below the size of the file: records are
    read one at a time and rows leave for the store every FLUSH_BYTES (here 1 MiB)."""
    import tracemalloc

    from curate import ingest as ingest_module

    monkeypatch.setattr(ingest_module, "FLUSH_BYTES", 1 << 20)
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        f.writelines(json.dumps(record(f"q{i}", problem=f"{i} <image> " + "x" * 3000)) + "\n" for i in range(6000))
    size = path.stat().st_size
    store = Store(tmp_path / "store")
    tracemalloc.start()
    try:
        r = ingest(store, IngestOptions(path=path, image_root=root))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert r.accepted == 6000
    assert peak < size / 4, f"peak {peak:,} bytes while ingesting a {size:,}-byte file"


def test_embedded_image_bytes_are_stored_as_they_are(tmp_path):
    """A datasets Image struct's bytes are checked (decoded in full) and copied byte for byte, named by
    their format when the struct names no file."""
    import hashlib

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (48, 40), "blue").save(buf, format="JPEG")
    jpeg = buf.getvalue()
    table = pa.table({"qid": ["j"], "problem": ["What is <image>?"], "answer": ["blue"],
                      "images": pa.array([[{"bytes": jpeg, "path": None}]], _IMAGE_STRUCT)})
    pq.write_table(table, tmp_path / "rows.parquet")
    store = Store(tmp_path / "store")
    assert ingest(store, IngestOptions(path=tmp_path / "rows.parquet", image_root=tmp_path)).accepted == 1
    ((stored,),) = store.connect().execute("select images from samples").fetchone()
    assert stored.endswith(f"{hashlib.sha256(jpeg).hexdigest()}.jpg")
    assert (store.root / stored).read_bytes() == jpeg


def test_input_file_name_that_is_not_utf8(tmp_path):
    """A file name's bytes that are not UTF-8 reach Python as surrogates; the source it gives and the
    file it names in samples and rejects are written escaped instead of failing the write."""
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    path = write_jsonl(Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.jsonl")), [record("q1"), "not json"])
    store = Store(tmp_path / "store")
    r = ingest(store, IngestOptions(path=path, image_root=root))
    assert (r.accepted, r.rejected) == (1, Counter({"bad_json": 1}))
    con = store.connect()
    assert con.execute("select source, ingest_file from samples").fetchone() == ("caf\\xe9", _printable(str(path)))
    assert con.execute("select source_file from rejects").fetchone()[0].endswith("/caf\\xe9.jsonl")
