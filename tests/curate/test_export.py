"""Unit tests of curate/export.py: the stage files written from hand-made DuckDB relations and a
hand-made image folder (no store, no select run; tests/curate/test_select.py covers those end to end)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_image

from curate import export
from curate.export import (
    COMPRESSION,
    GOLD_RESPONSE_KEYS,
    HF_FEATURES,
    ROW_GROUP_ROWS,
    STAGE_COLUMNS,
    ImageReader,
    gold_response_sql,
    images_sql,
    llamafactory_dataset_info,
    record_rows,
    shard_name,
    write_json_records,
    write_parquet,
    write_shards,
)
from curate.steps import STEP_COLUMNS
from generation.prompt import build_messages
from schemas.errors import PebrError


def store_image(root: Path, color, size=(32, 32)) -> str:
    """An image under `root` at its content address, as ingest stores it; returns the relative path."""
    tmp = make_image(root / "incoming.png", size=size, color=color)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    rel = f"images/{digest[:2]}/{digest}.png"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(root / rel)
    return rel


@pytest.fixture
def root(tmp_path):
    """A store folder with three images: (root, [rel0, rel1, rel2])."""
    r = tmp_path / "store"
    return r, [store_image(r, c) for c in [(200, 30, 30), (30, 200, 30), (30, 30, 200)]]


def src_table(con, images: list[list[str]], problems: list[str] | None = None, name: str = "src") -> str:
    """Table `name`(i, imgs, problem), row i holding images[i]."""
    problems = problems or [f"Question {i} <image>?" for i in range(len(images))]
    con.register("_src", pa.table({"i": list(range(len(images))), "imgs": images, "problem": problems}))
    con.execute(f"CREATE TABLE {name} AS SELECT * FROM _src")
    con.unregister("_src")
    return name


def stage_query(src: str, store_root: Path, mode: str) -> str:
    """A hand-made query of STAGE_COLUMNS over `src`(i, imgs, problem), ordered by i."""
    return (f"SELECT [{{'role': 'user', 'content': [{{'type': 'text', 'text': problem}}]}}] AS prompt, "
            f"{images_sql('imgs', store_root, mode)} AS images, 'a' || i AS answer, ['kw'] AS key_words, "
            "'s' || i AS sample_id, 'toy' AS source, 'reasoning' AS capability, 'q' || i AS qid, problem, "
            "NULL::VARCHAR AS response, 8::BIGINT AS n, 4::BIGINT AS k, 0.5::DOUBLE AS pass_rate, 'medium' AS band, "
            "0.1::DOUBLE AS p_degenerate "
            f"FROM {src} ORDER BY i")


def row_groups(path: Path) -> list[int]:
    meta = pq.read_metadata(path)
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


# -- write_parquet ---------------------------------------------------------------------------------

def test_path_mode_file_layout_and_metadata(tmp_path, root):
    store_root, rels = root
    con = duckdb.connect()
    n = 2 * ROW_GROUP_ROWS + 100
    con.execute(f"CREATE TABLE src AS SELECT range AS i, [{export.sql_literal(rels[0])}] AS imgs, "
                f"'Question ' || range AS problem FROM range({n})")
    out = tmp_path / "out"
    out.mkdir()
    assert write_parquet(con, stage_query("src", store_root, "path"), out / "d.parquet", store_root) == n
    assert sorted(p.name for p in out.iterdir()) == ["d.parquet"], "no temporary file is left"
    meta = pq.read_metadata(out / "d.parquet")
    assert meta.num_rows == n and row_groups(out / "d.parquet") == [ROW_GROUP_ROWS, ROW_GROUP_ROWS, 100]
    assert {meta.row_group(g).column(c).compression for g in range(meta.num_row_groups)
            for c in range(meta.num_columns)} == {COMPRESSION.upper()}
    assert meta.metadata[b"huggingface"] == HF_FEATURES.encode()
    t = pq.read_table(out / "d.parquet")
    assert tuple(t.column_names) == STAGE_COLUMNS
    assert t.column("sample_id").to_pylist()[:3] == ["s0", "s1", "s2"]
    assert t.column("images")[5].as_py() == [{"bytes": None, "path": (store_root / rels[0]).absolute().as_posix()}]


def test_a_failing_query_leaves_the_destination_as_it_was(tmp_path, root):
    store_root, rels = root
    con = duckdb.connect()
    con.execute(f"CREATE VIEW src AS SELECT range AS i, [{export.sql_literal(rels[0])}] AS imgs, "
                f"CASE WHEN range = 30000 THEN error('boom at row 30000') ELSE 'ok' END AS problem FROM range(40000)")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(duckdb.Error, match="boom at row 30000"):
        write_parquet(con, stage_query("src", store_root, "path"), out / "new.parquet", store_root)
    assert list(out.iterdir()) == [], "no partial file and no .tmp file"
    (out / "old.parquet").write_bytes(b"the previous dataset")
    with pytest.raises(duckdb.Error, match="boom"):
        write_parquet(con, stage_query("src", store_root, "path"), out / "old.parquet", store_root)
    assert [p.name for p in out.iterdir()] == ["old.parquet"]
    assert (out / "old.parquet").read_bytes() == b"the previous dataset"
    with pytest.raises(ValueError, match="images must be one of"):
        write_parquet(con, stage_query("src", store_root, "path"), out / "x.parquet", store_root, images="zip")
    assert [p.name for p in out.iterdir()] == ["old.parquet"]


def test_embed_mode_holds_the_image_bytes_and_file_names(tmp_path, root):
    store_root, rels = root
    con = duckdb.connect()
    images = [[rels[0]], [rels[1], rels[2]], [rels[0], rels[0], rels[1]], [rels[2]]]
    src = src_table(con, images)
    out = tmp_path / "out"
    out.mkdir()
    assert write_parquet(con, stage_query(src, store_root, "embed"), out / "e.parquet", store_root, images="embed") == 4
    assert sorted(p.name for p in out.iterdir()) == ["e.parquet"]
    meta = pq.read_metadata(out / "e.parquet")
    assert meta.metadata[b"huggingface"] == HF_FEATURES.encode()
    assert meta.row_group(0).column(0).compression == COMPRESSION.upper()
    got = pq.read_table(out / "e.parquet").column("images").to_pylist()
    assert got == [[{"bytes": (store_root / r).read_bytes(), "path": Path(r).name} for r in row] for row in images]
    # Same columns and types as the path mode writes (nullability may differ: DuckDB marks constants).
    write_parquet(con, stage_query(src, store_root, "path"), out / "p.parquet", store_root)
    e, p = pq.read_schema(out / "e.parquet"), pq.read_schema(out / "p.parquet")
    assert [(f.name, f.type) for f in e] == [(f.name, f.type) for f in p]


def test_embed_mode_in_many_small_writes_gives_the_same_rows(tmp_path, root, monkeypatch):
    store_root, rels = root
    con = duckdb.connect()
    src = src_table(con, [[rels[i % 3]] * (1 + i % 2) for i in range(11)])
    write_parquet(con, stage_query(src, store_root, "embed"), tmp_path / "whole.parquet", store_root, images="embed")
    monkeypatch.setattr(export, "BATCH_ROWS", 4)  # Arrow batches of 4 rows: slices start at offsets != 0
    monkeypatch.setattr(export, "IMAGE_BATCH_BYTES", 1)  # then one row per write
    assert write_parquet(con, stage_query(src, store_root, "embed"), tmp_path / "bits.parquet", store_root, images="embed") == 11
    assert row_groups(tmp_path / "bits.parquet") == [4] + [1] * 7
    assert pq.read_table(tmp_path / "bits.parquet").to_pylist() == pq.read_table(tmp_path / "whole.parquet").to_pylist()


def test_embed_mode_names_a_missing_image(tmp_path, root):
    store_root, rels = root
    con = duckdb.connect()
    src = src_table(con, [[rels[0]], [rels[1]]])
    (store_root / rels[1]).unlink()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(PebrError, match=f"image {rels[1]} is missing from the store at {store_root}"):
        write_parquet(con, stage_query(src, store_root, "embed"), out / "e.parquet", store_root, images="embed")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("mode", ["path", "embed"])
def test_datasets_decodes_images_as_pil(tmp_path, root, mode):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    store_root, rels = root
    con = duckdb.connect()
    src = src_table(con, [[rels[1]], [rels[0], rels[2]]])
    write_parquet(con, stage_query(src, store_root, mode), tmp_path / "d.parquet", store_root, images=mode)
    ds = datasets.load_dataset("parquet", data_files=str(tmp_path / "d.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.features["images"] == datasets.Sequence(datasets.Image())
    pixels = [[im.getpixel((5, 5)) for im in row] for row in ds["images"]]
    assert pixels == [[(30, 200, 30)], [(200, 30, 30), (30, 30, 200)]]
    assert all(isinstance(im, Image.Image) and im.size == (32, 32) for row in ds["images"] for im in row)


# -- ImageReader -------------------------------------------------------------------------------------

def test_image_reader_cache_hits_and_least_recently_used_eviction(root):
    store_root, rels = root
    sizes = {r: (store_root / r).stat().st_size for r in rels}
    reader = ImageReader(store_root, budget=sizes[rels[0]] + sizes[rels[1]])
    data0 = (store_root / rels[0]).read_bytes()
    assert reader.read(rels[0]) == data0
    (store_root / rels[0]).rename(store_root / "away")
    assert reader.read(rels[0]) == data0, "a cache hit does not touch the file"
    (store_root / "away").rename(store_root / rels[0])
    reader.read(rels[1])
    reader.read(rels[0])  # now the most recently used
    reader.read(rels[2])
    assert list(reader.cache) == [rels[0], rels[2]] and reader.size == sizes[rels[0]] + sizes[rels[2]]
    (store_root / rels[1]).unlink()
    with pytest.raises(PebrError, match=f"image {rels[1]} is missing"):
        reader.read(rels[1])  # evicted, so read again, and gone


def test_image_reader_keeps_one_image_over_the_budget(root):
    store_root, rels = root
    reader = ImageReader(store_root, budget=1)
    reader.read(rels[0])
    assert list(reader.cache) == [rels[0]]
    reader.read(rels[1])
    assert list(reader.cache) == [rels[1]] and reader.size == (store_root / rels[1]).stat().st_size


def test_image_reader_embeds_a_sliced_list_array(root):
    store_root, rels = root
    typ = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    rows = [[rels[0]], [rels[1], rels[2]], [], [rels[1]]]
    arr = pa.array([[{"bytes": None, "path": r} for r in row] for row in rows], type=typ).slice(1)
    assert arr.offsets[0].as_py() == 1
    got = ImageReader(store_root).embed(arr).to_pylist()
    assert got == [[{"bytes": (store_root / r).read_bytes(), "path": Path(r).name} for r in row] for row in rows[1:]]


# -- the SQL pieces ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["path", "embed"])
def test_images_sql_for_one_and_several_images_under_an_awkward_root(tmp_path, monkeypatch, mode):
    monkeypatch.chdir(tmp_path)
    store_root = Path("it's a store/")  # relative, with a quote: made absolute and quoted
    lists = [["images/ab/x.png"], ["images/ab/x.png", "images/cd/y.jpg", "images/ab/x.png"]]
    got = duckdb.connect().execute(f"SELECT {images_sql('imgs', store_root, mode)} FROM "
                                   "(SELECT unnest(?) AS imgs, generate_subscripts(?, 1) AS o) ORDER BY o",
                                   [lists, lists]).fetchall()
    prefix = "" if mode == "embed" else f"{tmp_path.as_posix()}/it's a store/"
    assert [g for (g,) in got] == [[{"bytes": None, "path": prefix + p} for p in paths] for paths in lists]


def test_gold_response_is_the_first_key_present():
    assert GOLD_RESPONSE_KEYS == ("response", "solution", "rationale")
    extras = [
        ('{"response": "r", "solution": "s", "rationale": "x"}', "r"),
        ('{"rationale": "x", "solution": "s"}', "s"),
        ('{"rationale": "x", "other": "o"}', "x"),
        ('{"response": null, "solution": "s"}', "s"),
        ('{"response": 42}', "42"),
        ('{"response": ""}', ""),
        ('{"other": "o"}', None),
        ("{}", None),
        (None, None),
    ]
    got = duckdb.connect().execute(f"SELECT {gold_response_sql('e')} FROM (SELECT unnest(?) AS e, "
                                   "generate_subscripts(?, 1) AS o) ORDER BY o",
                                   [[e for e, _ in extras], [e for e, _ in extras]]).fetchall()
    assert [g for (g,) in got] == [want for _, want in extras]


# -- JSON formats ----------------------------------------------------------------------------------

def json_row(i: int, images: list[str], problem: str = "Which <image>?", response: str | None = "gold") -> dict:
    return {"sample_id": f"s{i}", "source": "toy", "capability": "reasoning", "qid": f"q{i}", "problem": problem,
            "answer": str(i), "key_words": ["kw"], "images": images, "extra": None, "ingest_run": "run",
            "ingest_file": "f", "record_index": i, "response": response, "pass_rate": i / 8}


def test_easyr1_records_link_images_next_to_the_json(tmp_path, root):
    store_root, rels = root
    path = tmp_path / "easyr1" / "train.json"
    path.parent.mkdir()
    rows = [json_row(0, [rels[0]], problem="Quelle forme a l’objet ? <image>"), json_row(1, [rels[1], rels[0]], response=None)]
    assert write_json_records(iter(rows), path, "easyr1", store_root) == (2, 0)
    raw = path.read_text(encoding="utf-8")
    assert "l’objet" in raw, "non-ASCII text is written as is"
    assert json.loads(raw) == [
        {"qid": "q0", "problem": "Quelle forme a l’objet ? <image>", "answer": "0", "images": [f"images/{Path(rels[0]).name}"],
         "key_words": ["kw"], "sample_id": "s0", "source": "toy", "capability": "reasoning", "pass_rate": 0.0},
        {"qid": "q1", "problem": "<image>Which <image>?", "answer": "1",  # one mark per image: the missing one first
         "images": [f"images/{Path(rels[1]).name}", f"images/{Path(rels[0]).name}"],
         "key_words": ["kw"], "sample_id": "s1", "source": "toy", "capability": "reasoning", "pass_rate": 0.125}]
    assert sorted(p.name for p in path.parent.iterdir()) == ["images", "train.json"], "no temporary file is left"
    assert sorted(p.name for p in (path.parent / "images").iterdir()) == sorted(Path(r).name for r in rels[:2])
    for r in rels[:2]:
        assert (path.parent / "images" / Path(r).name).samefile(store_root / r), "hard-linked, not copied"


def test_images_are_copied_where_links_fail(tmp_path, root, monkeypatch):
    store_root, rels = root

    def no_link(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    path = tmp_path / "out" / "train.json"
    path.parent.mkdir()
    assert write_json_records(iter([json_row(0, [rels[2]])]), path, "easyr1", store_root) == (1, 0)
    copy = path.parent / "images" / Path(rels[2]).name
    assert copy.read_bytes() == (store_root / rels[2]).read_bytes() and not copy.samefile(store_root / rels[2])
    assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name], "no temporary file is left"
    (store_root / rels[1]).unlink()
    with pytest.raises(PebrError, match=f"image {rels[1]} is missing"):
        write_json_records(iter([json_row(1, [rels[1]])]), tmp_path / "out" / "other.json", "easyr1", store_root)
    assert sorted(p.name for p in path.parent.iterdir()) == ["images", "train.json"]


def test_sharegpt_records_one_mark_per_image_and_skip_without_response(tmp_path, root):
    store_root, rels = root
    path = tmp_path / "sharegpt" / "warmup.json"
    path.parent.mkdir()
    rows = [json_row(0, [rels[0]], problem="What is in <image>?", response="### The final answer is: 0"),
            json_row(1, [rels[1]], response=None),
            json_row(2, [rels[0], rels[1], rels[2]], problem="Compare <image> with the others", response="r2"),
            json_row(3, [rels[2]], response=""),
            json_row(4, [rels[1], rels[2]], problem="No mark here", response="r4")]
    template = "Q: {{ content }} A:"
    assert write_json_records(iter(rows), path, "sharegpt", store_root, template) == (3, 2)
    recs = json.loads(path.read_text(encoding="utf-8"))
    name = [f"images/{Path(r).name}" for r in rels]
    assert recs == [
        {"messages": [{"role": "user", "content": "Q: What is in <image>? A:"},
                      {"role": "assistant", "content": "### The final answer is: 0"}], "images": [name[0]], "sample_id": "s0"},
        {"messages": [{"role": "user", "content": "Q: <image><image>Compare <image> with the others A:"},
                      {"role": "assistant", "content": "r2"}], "images": name, "sample_id": "s2"},
        {"messages": [{"role": "user", "content": "Q: <image><image>No mark here A:"},
                      {"role": "assistant", "content": "r4"}], "images": [name[1], name[2]], "sample_id": "s4"}]
    for rec in recs:
        assert rec["messages"][0]["content"].count("<image>") == len(rec["images"])


@pytest.mark.parametrize("fmt", ["easyr1", "sharegpt"])
def test_no_records_is_an_empty_json_array(tmp_path, root, fmt):
    store_root, rels = root
    path = tmp_path / "o.json"
    rows = [json_row(0, [rels[0]], response=None)] if fmt == "sharegpt" else []
    assert write_json_records(iter(rows), path, fmt, store_root) == (0, len(rows))
    assert json.loads(path.read_text()) == []


def test_llamafactory_dataset_info():
    assert llamafactory_dataset_info("pebr_warmup", "warmup.json") == {"pebr_warmup": {
        "file_name": "warmup.json", "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}


# -- write_shards ----------------------------------------------------------------------------------

def shard_tables(con, root, n: int) -> list[str]:
    """Tables `samples` (the SAMPLES columns) and `picked` (STEP_COLUMNS, seeded rank_key) of `n`
    samples; returns the sample ids in rank_key order."""
    store_root, rels = root
    images = [[rels[i % 3]] if i % 4 else [rels[0], rels[2]] for i in range(n)]
    con.register("_s", pa.table({
        "sample_id": [f"s{i:02d}" for i in range(n)], "source": ["toy"] * n, "capability": ["reasoning"] * n,
        "qid": [f"q{i}" for i in range(n)], "problem": [f"Problem {i} <image>" if i % 2 else f"Problem {i}" for i in range(n)],
        "answer": [str(i) for i in range(n)], "key_words": [["kw"]] * n, "images": images,
        "extra": [json.dumps({"solution": f"gold {i}"}) if i % 3 == 0 else None for i in range(n)],
        "ingest_run": ["run"] * n, "ingest_file": ["f"] * n, "record_index": list(range(n))}))
    con.execute("CREATE TABLE samples AS SELECT * FROM _s")
    con.unregister("_s")
    std = ", ".join(f"0.0 AS {c}" for c in STEP_COLUMNS if c.startswith("std_"))
    con.execute(f"CREATE TABLE picked AS SELECT sample_id, source, capability, 8 AS n, record_index AS k, "
                f"record_index / 8 AS pass_rate, 'medium' AS band, 0.25 AS p_degenerate, {std}, "
                "md5_number('7:' || sample_id) AS rank_key FROM samples")
    assert tuple(c for (c, *_) in con.execute("DESCRIBE picked").fetchall()) == STEP_COLUMNS
    con.execute("SET threads = 1")
    return [s for (s,) in con.execute("SELECT sample_id FROM picked ORDER BY rank_key").fetchall()]


def test_shards_are_consecutive_parts_of_the_seeded_order(tmp_path, root):
    store_root, _ = root
    con = duckdb.connect()
    order = shard_tables(con, root, 10)
    assert order != sorted(order), "the rank, not the sample id, orders the rows"
    kw = dict(images="path", template="Q: {{ content }}", rows=10)
    (tmp_path / "many").mkdir()
    (tmp_path / "one").mkdir()
    assert write_shards(con, "picked", "samples", tmp_path / "many", store_root, shard_rows=4, workers=2, **kw) == (
        10, [shard_name(i, 3) for i in range(3)])
    assert [shard_name(i, 3) for i in range(3)] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    assert write_shards(con, "picked", "samples", tmp_path / "one", store_root, shard_rows=100, workers=2, **kw) == (
        10, ["train-00000-of-00001.parquet"])
    shards = [tmp_path / "many" / shard_name(i, 3) for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == [p.name for p in shards]
    assert [pq.read_metadata(p).num_rows for p in shards] == [4, 3, 3]
    many = pa.concat_tables([pq.read_table(p) for p in shards])
    one = pq.read_table(tmp_path / "one" / "train-00000-of-00001.parquet")
    assert many.to_pylist() == one.to_pylist()
    assert tuple(one.column_names) == STAGE_COLUMNS and one.column("sample_id").to_pylist() == order
    assert pq.read_metadata(shards[1]).metadata[b"huggingface"] == HF_FEATURES.encode()
    for row in one.to_pylist():
        i = int(row["sample_id"][1:])
        prompt = [{"role": m["role"], "content": [{k: v for k, v in p.items() if v is not None} for p in m["content"]]}
                  for m in row["prompt"]]
        assert prompt == build_messages(row["problem"], len(row["images"]), "Q: {{ content }}")
        assert row["response"] == (f"gold {i}" if i % 3 == 0 else None)
        assert (row["k"], row["answer"], row["pass_rate"]) == (i, str(i), i / 8)
        assert [im["path"] for im in row["images"]] == [
            (store_root / r).absolute().as_posix() for r in con.execute("SELECT images FROM samples WHERE sample_id = ?",
                                                                          [row["sample_id"]]).fetchone()[0]]


def test_no_rows_is_one_empty_shard(tmp_path, root):
    store_root, _ = root
    con = duckdb.connect()
    shard_tables(con, root, 3)
    con.execute("DELETE FROM picked")
    assert write_shards(con, "picked", "samples", tmp_path, store_root, images="path", template="{{ content }}",
                        shard_rows=4, rows=0, workers=2) == (0, ["train-00000-of-00001.parquet"])
    t = pq.read_table(tmp_path / "train-00000-of-00001.parquet")
    assert t.num_rows == 0 and tuple(t.column_names) == STAGE_COLUMNS


def test_a_failing_shard_removes_every_shard(tmp_path, root, monkeypatch):
    store_root, rels = root
    con = duckdb.connect()
    order = shard_tables(con, root, 9)
    # The last sample of the order gets an image of its own, missing from the store: shards 0 and 1
    # are written before shard 2 fails.
    con.execute("UPDATE samples SET images = ['images/zz/missing.png'] WHERE sample_id = ?", [order[-1]])
    written = []
    real = export.write_parquet

    def spy(con, query, path, store_root, images="path"):
        rows = real(con, query, path, store_root, images)
        written.append((path.name, path.is_file()))
        return rows

    monkeypatch.setattr(export, "write_parquet", spy)
    (tmp_path / "keep.txt").write_text("not a shard")
    with pytest.raises(PebrError, match="image images/zz/missing.png is missing"):
        write_shards(con, "picked", "samples", tmp_path, store_root, images="embed", template="{{ content }}",
                     shard_rows=3, rows=9, workers=1)
    assert written == [(shard_name(0, 3), True), (shard_name(1, 3), True)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "store"], "no shard and no .tmp file is left"


def test_record_rows_are_the_samples_in_seeded_order_with_response_and_pass_rate(root, monkeypatch):
    con = duckdb.connect()
    order = shard_tables(con, root, 7)
    monkeypatch.setattr(export, "BATCH_ROWS", 3)  # fetched in batches of 3, 3, 1
    rows = list(record_rows(con, "picked", "samples"))
    assert [r["sample_id"] for r in rows] == order
    for r in rows:
        i = r["record_index"]
        assert (r["response"], r["pass_rate"], r["qid"]) == (f"gold {i}" if i % 3 == 0 else None, i / 8, f"q{i}")
        assert r["images"] == ([root[1][0], root[1][2]] if i % 4 == 0 else [root[1][i % 3]])
