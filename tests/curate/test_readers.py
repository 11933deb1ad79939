"""curate.readers: every input format ingest accepts, record by record, with the records it cannot read."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import deadline, record, write_jsonl

from curate.readers import RawRecord, read_records
from schemas.errors import PebrError


def read(path, split=None) -> list[RawRecord]:
    return list(read_records(path, split))


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep the cache `datasets.load_dataset` writes for CSV / Arrow files inside the test's folder."""
    datasets = pytest.importorskip("datasets")
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return cache


# -- JSON arrays and JSONL ----------------------------------------------------------------------

def test_json_array_yields_every_element_with_its_position(tmp_path):
    rows = [record("q1"), record(7, answer=5, key_words="square"), [1, 2], "text", record("q3")]
    path = tmp_path / "arr.json"
    path.write_text("\n  " + json.dumps(rows))  # leading whitespace still reads as an array
    got = read(path)
    assert [r.index for r in got] == [0, 1, 2, 3, 4]
    # values pass through unchanged: numbers stay numbers, a string key_words stays a string (ingest normalises)
    assert got[0].value == record("q1") and got[1].value == {**record(7, answer=5), "key_words": "square"}
    assert got[1].value["qid"] == 7 and got[1].value["answer"] == 5
    assert got[0].raw is None and got[0].error is None, "array elements are not read as text"
    assert (got[2].value, got[2].raw, got[2].error) == (
        None, "[1, 2]", ("not_an_object", "a record must be a JSON object, got list"))
    assert (got[3].value, got[3].raw, got[3].error) == (
        None, '"text"', ("not_an_object", "a record must be a JSON object, got str"))
    assert got[4].value["qid"] == "q3"


def test_json_array_that_does_not_parse_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[{"qid": "a"}, {"qid": ')
    with pytest.raises(PebrError, match=r"bad.json: not a readable JSON array .*for per-record recovery use JSONL"):
        read(path)
    path.write_bytes(b'[{"qid": "\xff"}]')
    with pytest.raises(PebrError, match="not a readable JSON array"):
        read(path)


def test_jsonl_keeps_unreadable_lines_in_place_and_skips_blank_ones(tmp_path):
    good = [record("q1"), record("q2", answer="4")]
    lines = [json.dumps(good[0]), "", "   ", '{"qid": "cut', "[1, 2]", "42", "null", json.dumps(good[1])]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines))  # no newline after the last record
    got = read(path)
    # blank and whitespace-only lines hold no record and take no index
    assert [r.index for r in got] == [0, 1, 2, 3, 4, 5]
    assert got[0] == RawRecord(0, good[0], json.dumps(good[0]))
    assert got[5] == RawRecord(5, good[1], json.dumps(good[1]))
    assert got[1].value is None and got[1].raw == '{"qid": "cut'
    reason, message = got[1].error
    assert reason == "bad_json" and message.startswith("not JSON: ") and message.endswith("at column 9")
    assert [(r.raw, r.error) for r in got[2:5]] == [
        ("[1, 2]", ("not_an_object", "a record must be a JSON object, got list")),
        ("42", ("not_an_object", "a record must be a JSON object, got int")),
        ("null", ("not_an_object", "a record must be a JSON object, got NoneType")),
    ]


def test_jsonl_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"qid": "a"}\n{"qid": "\xff\xfe"}\n{"qid": "c"}\n')
    got = read(path)
    assert [r.index for r in got] == [0, 1, 2]
    assert got[1].value is None and got[1].error == ("bad_utf8", "not UTF-8: invalid start byte")
    assert got[1].raw == '{"qid": "\ufffd\ufffd"}', "the raw text keeps the line, bad bytes replaced"
    assert (got[0].value, got[2].value) == ({"qid": "a"}, {"qid": "c"})


def test_jsonl_line_breaks(tmp_path):
    # CRLF ends a line; U+2028 and U+0085 (valid unescaped inside a JSON string) do not.
    path = tmp_path / "d.jsonl"
    inner = {"qid": "a", "problem": "one\u2028two\u0085three"}
    path.write_bytes(json.dumps(inner, ensure_ascii=False).encode() + b"\r\n" + b'{"qid": "b"}\r\n')
    got = read(path)
    assert [r.value for r in got] == [inner, {"qid": "b"}]
    assert got[0].raw == json.dumps(inner, ensure_ascii=False), "no carriage return left on the raw text"


@pytest.mark.parametrize("body", [b'{"qid": "a"}\n{"qid": "b"}\n', b'[{"qid": "a"},\n {"qid": "b"}]\n'], ids=["jsonl", "array"])
def test_a_byte_order_mark_is_not_part_of_the_first_record(tmp_path, body):
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + body)
    assert [r.value for r in read(path)] == [{"qid": "a"}, {"qid": "b"}]


def test_any_other_suffix_is_read_as_json(tmp_path):
    path = write_jsonl(tmp_path / "records.txt", [record("q1")])
    assert [r.value for r in read(path)] == [record("q1")]
    (tmp_path / "arr.JSON").write_text(json.dumps([record("q2")]))
    assert [r.value["qid"] for r in read(tmp_path / "arr.JSON")] == ["q2"]


def test_empty_files_yield_nothing(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n\n  \n")
    (tmp_path / "empty.json").write_text("[]")
    assert read(tmp_path / "empty.jsonl") == [] and read(tmp_path / "empty.json") == []


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(PebrError, match=r"nope.jsonl: no such file or directory"):
        read(tmp_path / "nope.jsonl")


# -- Parquet ----------------------------------------------------------------------------------------

def test_parquet_rows_with_nested_values_and_nulls(tmp_path):
    rows = [record("q1"), {**record("q2", answer="4"), "extra": {"w": 1.5}}, {"qid": "q3", "problem": None}]
    path = tmp_path / "rows.PARQUET"  # the suffix is matched case-insensitively
    schema = pa.schema([("qid", pa.string()), ("problem", pa.string()), ("answer", pa.string()),
                        ("images", pa.list_(pa.string())), ("key_words", pa.list_(pa.string())),
                        ("extra", pa.struct([("w", pa.float64())]))])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    got = read(path)
    assert [r.index for r in got] == [0, 1, 2]
    assert all(r.raw is None and r.error is None for r in got)
    # every row carries every column of the file; a column a row lacks is None
    assert got[0].value == {**record("q1"), "extra": None}
    assert got[1].value["extra"] == {"w": 1.5} and got[1].value["images"] == ["a.png"]
    assert got[2].value == {"qid": "q3", "problem": None, "answer": None, "images": None, "key_words": None, "extra": None}


def test_parquet_indices_run_on_across_batches(tmp_path):
    n = 4096 + 7  # the reader takes batches of 4096 rows
    path = tmp_path / "many.parquet"
    pq.write_table(pa.table({"qid": [f"q{i}" for i in range(n)]}), path, row_group_size=1000)
    got = read(path)
    assert [r.index for r in got] == list(range(n))
    assert [r.value["qid"] for r in got[4094:4098]] == ["q4094", "q4095", "q4096", "q4097"]


def test_unreadable_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"this is not parquet")
    with pytest.raises(PebrError, match=r"junk.parquet: not a readable Parquet file"):
        read(path)


# -- Hugging Face datasets: save_to_disk folders, CSV and Arrow files ---------------------------------

def test_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [record("q1"), record("q2", answer="4", key_words=("a", "b"))]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "hf"))
    got = read(tmp_path / "hf")
    assert [(r.index, r.value, r.raw, r.error) for r in got] == [(0, rows[0], None, None), (1, rows[1], None, None)]
    assert type(got[0].value) is dict
    # a single Dataset has no splits: a split name is not needed, and ignored
    assert [r.value for r in read(tmp_path / "hf", "test")] == rows


def test_dataset_with_images_yields_undecoded_image_structs(tmp_path):
    datasets = pytest.importorskip("datasets")
    import io

    from PIL import Image

    ds = datasets.Dataset.from_dict(
        {"qid": ["a"], "images": [[Image.new("RGB", (40, 30), "red")]]},
        features=datasets.Features({"qid": datasets.Value("string"), "images": [datasets.Image()]}))
    ds.save_to_disk(str(tmp_path / "hf"))
    (got,) = read(tmp_path / "hf")
    (image,) = got.value["images"]
    assert set(image) == {"bytes", "path"} and isinstance(image["bytes"], bytes), "ingest decodes, not the reader"
    with Image.open(io.BytesIO(image["bytes"])) as im:
        assert im.size == (40, 30) and im.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


def test_dataset_dict_splits(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([record("t1"), record("t2")]),
                               "test": datasets.Dataset.from_list([record("x1")])})
    dd.save_to_disk(str(tmp_path / "dd"))
    assert [r.value["qid"] for r in read(tmp_path / "dd", "test")] == ["x1"]
    assert [(r.index, r.value["qid"]) for r in read(tmp_path / "dd", "train")] == [(0, "t1"), (1, "t2")]
    with pytest.raises(PebrError, match=r"dd: has splits \[.*'test'.*\]; choose one with --split"):
        read(tmp_path / "dd")
    with pytest.raises(PebrError, match=r"dd: no split 'validation' \(has \["):
        read(tmp_path / "dd", "validation")
    # a DatasetDict of one split needs no --split
    datasets.DatasetDict({"only": datasets.Dataset.from_list([record("o1")])}).save_to_disk(str(tmp_path / "one"))
    assert [r.value["qid"] for r in read(tmp_path / "one")] == ["o1"]


def test_folder_that_is_not_a_saved_dataset(tmp_path):
    pytest.importorskip("datasets")
    folder = tmp_path / "plain"
    folder.mkdir()
    write_jsonl(folder / "d.jsonl", [record("q1")])
    with pytest.raises(PebrError, match=r"plain: not a dataset saved with save_to_disk"):
        read(folder)


def test_csv_file(tmp_path, hf_cache):
    path = tmp_path / "rows.csv"
    path.write_text('qid,problem,answer,n\nq1,How many <image>?,3 apples,1\nq2,"a, quoted <image>",x,2\n')
    got = read(path)
    assert [(r.index, r.raw, r.error) for r in got] == [(0, None, None), (1, None, None)]
    assert got[0].value == {"qid": "q1", "problem": "How many <image>?", "answer": "3 apples", "n": "1"}
    assert got[1].value == {"qid": "q2", "problem": "a, quoted <image>", "answer": "x", "n": "2"}
    assert hf_cache.is_dir(), "the datasets cache went where the test put it"


def test_csv_cells_stay_text(tmp_path, hf_cache):
    """No type or NA guessing: every cell is the text written; an empty cell is a missing field, and a
    JSON list in images / key_words is that list."""
    path = tmp_path / "rows.csv"
    path.write_text('qid,problem,answer,key_words,images\n'
                    '0012,How many <image>?,007,"[""red"", ""2""]",a.png\n'
                    '0013,Ratio <image>?,0.10,circle,"[""a.png"", ""b.png""]"\n'
                    '0014,Which <image>?,NA,,a.png\n')
    got = [r.value for r in read(path)]
    assert [(v["qid"], v["answer"]) for v in got] == [("0012", "007"), ("0013", "0.10"), ("0014", "NA")]
    assert [v["key_words"] for v in got] == [["red", "2"], "circle", None]
    assert [v["images"] for v in got] == ["a.png", ["a.png", "b.png"], "a.png"]


@pytest.mark.parametrize("writer", ["stream", "file"])
def test_arrow_file(tmp_path, hf_cache, writer):
    table = pa.table({"qid": ["a", "b"], "key_words": [["x"], []], "k": [1, 2]})
    path = tmp_path / "rows.arrow"
    new = pa.ipc.new_stream if writer == "stream" else pa.ipc.new_file
    with new(str(path), table.schema) as w:
        w.write_table(table)
    got = read(path)
    assert [(r.index, r.value) for r in got] == [(0, {"qid": "a", "key_words": ["x"], "k": 1}),
                                                 (1, {"qid": "b", "key_words": [], "k": 2})]


def test_unreadable_arrow_file_is_a_clear_error(tmp_path, hf_cache):
    path = tmp_path / "junk.arrow"
    path.write_bytes(b"garbage")
    with pytest.raises(PebrError, match=r"junk.arrow: could not be read as arrow"):
        read(path)


# -- hostile records: each is a record the reader hands back, never an exception (issue 15) ---------

DEEP = "[" * 200_000 + "]" * 200_000
HUGE_INT = "9" * 5000


def test_jsonl_line_nested_too_deep_is_one_bad_json_record(tmp_path):
    path = tmp_path / "d.jsonl"
    deep = '{"qid": "deep", "x": ' + DEEP + "}"
    path.write_text("\n".join([json.dumps(record("q1")), deep, json.dumps(record("q2"))]) + "\n")
    got = read(path)
    assert [r.index for r in got] == [0, 1, 2]
    assert (got[1].value, got[1].raw) == (None, deep)
    assert got[1].error == ("bad_json", "not JSON: nested deeper than the parser allows")
    assert (got[0].value, got[2].value) == (record("q1"), record("q2"))


def test_jsonl_integer_too_long_for_python_is_one_bad_field_record(tmp_path):
    path = tmp_path / "d.jsonl"
    big = '{"qid": "big", "answer": ' + HUGE_INT + "}"
    path.write_text("\n".join([big, json.dumps(record("q2"))]) + "\n")
    got = read(path)
    assert [r.index for r in got] == [0, 1]
    assert got[0].value is None and got[0].raw == big
    reason, message = got[0].error
    assert reason == "bad_field" and message.startswith("a number too long to read: ")
    assert got[1].value == record("q2")


def test_json_array_hostile_elements_are_records_of_their_own(tmp_path):
    path = tmp_path / "arr.json"
    deep = '{"qid": "deep", "x": ' + DEEP + "}"
    big = '{"qid": "big", "answer": -' + HUGE_INT + "}"
    path.write_text("[" + ",\n".join([json.dumps(record("q1")), deep, big, '"a ] string"', json.dumps(record("q2"))]) + "]")
    got = read(path)
    assert [r.index for r in got] == [0, 1, 2, 3, 4]
    assert got[1].value is None and got[1].error == ("bad_json", "not JSON: nested deeper than the parser allows")
    assert got[1].raw == deep[:10_000], "the raw text of a rejected element is its text, cut at 10,000 characters"
    assert got[2].value is None and got[2].error[0] == "bad_field" and got[2].raw == big[:10_000]
    assert got[3].error[0] == "not_an_object"
    assert (got[0].value, got[4].value) == (record("q1"), record("q2"))


ARRAY_VALUES = [
    record("q1"), 12345678, -0.5e-3, 'a "quoted" [string] {with} brackets, commas: \\ and \u00e9', [1, [2, {"a": "]"}]],
    None, True, {}, [], record("q2", problem="\u00e9 \u00fc \U0001F600 <image>"), {"k": "\\\"", "deep": [[[[[]]]]]},
]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_json_array_is_read_in_pieces_of_any_size(tmp_path, monkeypatch, chunk):
    from curate import readers

    monkeypatch.setattr(readers, "CHUNK_CHARS", chunk)
    path = tmp_path / "arr.json"
    hostile = ['{"n": ' + "[" * 3000 + "]" * 3000 + "}", '{"answer": ' + HUGE_INT + "}"]
    text = "[" + ", ".join([json.dumps(v, indent=1) for v in ARRAY_VALUES] + hostile + ["7"]) + " ]  \n"
    path.write_text(text, encoding="utf-8")
    got = read(path)
    want = [readers._record(i, v, None) for i, v in enumerate(ARRAY_VALUES)]
    assert got[:len(ARRAY_VALUES)] == want
    deep, big, seven = got[len(ARRAY_VALUES):]
    assert (deep.error[0], big.error[0], seven.error[0]) == ("bad_json", "bad_field", "not_an_object")
    assert [r.index for r in got] == list(range(len(ARRAY_VALUES) + 3))


@pytest.mark.parametrize("text", ['[{"a": 1}, {"b": ', '[{"a": 1}] trailing', '[1,]', '[1 2]', '[', '[{"a": 1}, "open'])
def test_broken_json_array_is_one_clear_error(tmp_path, monkeypatch, text):
    from curate import readers

    monkeypatch.setattr(readers, "CHUNK_CHARS", 3)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(PebrError, match=r"bad.json: not a readable JSON array .*for per-record recovery use JSONL"):
        read(path)


def test_json_array_element_over_the_record_limit_is_a_clear_error(tmp_path, monkeypatch):
    from curate import readers

    monkeypatch.setattr(readers, "MAX_RECORD_CHARS", 1000)
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([record("q1"), {"problem": "x" * 5000}]))
    with pytest.raises(PebrError, match=r"arr.json: record 1 is over 1,000 characters"):
        read(path)


def test_jsonl_line_over_the_record_limit_is_a_reject_and_reading_goes_on(tmp_path, monkeypatch):
    from curate import readers

    monkeypatch.setattr(readers, "MAX_RECORD_BYTES", 1000)
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([json.dumps(record("q1")), json.dumps({"problem": "x" * 5000}), json.dumps(record("q2"))]) + "\n")
    got = read(path)
    assert [r.index for r in got] == [0, 1, 2]
    size = len(json.dumps({"problem": "x" * 5000}))
    assert got[1].value is None and got[1].error == ("record_too_large", f"a record of {size:,} bytes, over the limit of 1,000")
    assert got[1].raw == json.dumps({"problem": "x" * 5000})[:1000]
    assert (got[0].value, got[2].value) == (record("q1"), record("q2"))


@pytest.mark.parametrize("kind", ["fifo", "device", "link to a device"])
def test_input_that_is_not_a_regular_file_is_one_clear_error(tmp_path, kind):
    path = tmp_path / "in.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = Path("/dev/zero")
    else:
        path.symlink_to("/dev/zero")
    with deadline(20), pytest.raises(PebrError, match=r": not a regular file or a dataset folder"):
        read(path)


def test_folder_with_a_fifo_that_is_not_a_saved_dataset(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    os.mkfifo(folder / "data-00000-of-00001.arrow")
    write_jsonl(folder / "d.jsonl", [record("q1")])
    with deadline(20), pytest.raises(PebrError, match=r"plain: not a dataset saved with save_to_disk"):
        read(folder)


def _count_with_peak(path: Path) -> tuple[int, int]:
    """The records read from `path` and Python's peak allocation while reading them."""
    tracemalloc.start()
    try:
        return sum(1 for _ in read_records(path)), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_jsonl_is_streamed_not_read_whole(tmp_path):
    """Reading holds about one line at a time: Python's peak allocation stays far below the file's size."""
    path = tmp_path / "big.jsonl"
    line = json.dumps(record("q", problem="How many circles are in <image>? " + "x" * 1000)) + "\n"
    with open(path, "w") as f:
        f.writelines(line for _ in range(16_000))
    size = path.stat().st_size
    n, peak = _count_with_peak(path)
    assert n == 16_000
    assert peak < size / 8, f"peak {peak:,} bytes while reading a {size:,}-byte file"


def test_json_array_is_streamed_not_read_whole(tmp_path):
    path = tmp_path / "big.json"
    element = json.dumps(record("q", problem="How many circles are in <image>? " + "x" * 1000))
    with open(path, "w") as f:
        f.write("[")
        f.write(",\n".join([element] * 16_000))
        f.write("]")
    size = path.stat().st_size
    n, peak = _count_with_peak(path)
    assert n == 16_000
    assert peak < size / 3, f"peak {peak:,} bytes while reading a {size:,}-byte file"


def _path_only_dataset(folder: Path, image_paths: list) -> Path:
    """A save_to_disk folder whose Image column holds paths, not bytes (as older `datasets` wrote them;
    today's save_to_disk embeds the files)."""
    datasets = pytest.importorskip("datasets")
    n = len(image_paths)
    feats = datasets.Features({"qid": datasets.Value("string"), "problem": datasets.Value("string"),
                               "answer": datasets.Value("string"), "images": datasets.List(datasets.Image())})
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"qid": [f"p{i}" for i in range(n)], "problem": ["What is in <image>?"] * n, "answer": ["x"] * n,
                      "images": pa.array([[{"bytes": None, "path": p}] for p in image_paths], pa.list_(struct))})
    datasets.Dataset.from_list([{"qid": "x", "problem": "p", "answer": "a", "images": []}],
                               features=feats).save_to_disk(str(folder))
    schema = table.schema.with_metadata({b"huggingface": json.dumps({"info": {"features": feats.to_dict()}}).encode()})
    with pa.ipc.new_stream(str(folder / "data-00000-of-00001.arrow"), schema) as w:
        w.write_table(table.cast(schema))
    return folder


def test_dataset_images_are_not_decoded_by_the_reader(tmp_path):
    """Image columns come as {bytes, path} structs: ingest decodes them itself, under its pixel bound,
    and checks every path against the image root (datasets would open any path it holds)."""
    from PIL import Image

    Image.new("RGB", (40, 30), "red").save(tmp_path / "outside.png")
    folder = _path_only_dataset(tmp_path / "hf", [str(tmp_path / "outside.png"), "rel/a.png"])
    got = read(folder)
    assert [r.value["images"] for r in got] == [[{"bytes": None, "path": str(tmp_path / "outside.png")}],
                                                [{"bytes": None, "path": "rel/a.png"}]]
