from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
from conftest import make_image, record, write_jsonl

from curate.ingest import REASONS, IngestOptions, ingest
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
    assert set(r for (r,) in con.execute("select reason from rejects").fetchall()) <= set(REASONS)
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
    path, root, accepted, _ = hostile
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
