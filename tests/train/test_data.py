"""train.data: stage datasets (Parquet shards + manifest), reference records and sharegpt records in;
`datasets.Dataset` rows for SFT and GRPO out, with a report of what was not used."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_image, record, write_jsonl
from PIL import Image

from schemas.errors import PebrError

pytest.importorskip("datasets")
from train.data import load_rl, load_sft  # noqa: E402 - after the datasets check

RED, BLUE = (200, 30, 30), (0, 0, 255)

# A stage dataset as `curate select` writes it (curate/export.py STAGE_COLUMNS, struct image parts with a
# NULL text, images as datasets.Image storage, the `huggingface` key telling `datasets` so).
_PART = pa.struct([("type", pa.string()), ("text", pa.string())])
STAGE_SCHEMA = pa.schema(
    [("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.list_(_PART))]))),
     ("images", pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))),
     ("answer", pa.string()), ("key_words", pa.list_(pa.string())), ("sample_id", pa.string()), ("source", pa.string()),
     ("capability", pa.string()), ("qid", pa.string()), ("problem", pa.string()), ("response", pa.string()),
     ("n", pa.int64()), ("k", pa.int64()), ("pass_rate", pa.float64()), ("band", pa.string()),
     ("p_degenerate", pa.float64())],
    metadata={"huggingface": json.dumps({"info": {"features": {"images": {"feature": {"_type": "Image"},
                                                                          "_type": "Sequence"}}}})})
STAGE_PROMPT = [{"role": "user", "content": [{"type": "text", "text": "Stage prompt for "}, {"type": "image", "text": None},
                                             {"type": "text", "text": "?"}]}]
"""Deliberately unlike `build_messages`' text: a stage dataset's own prompt must be used as it is."""


def stage_row(i: int, image: dict, response: str | None = None, capability: str | None = "reasoning") -> dict:
    return {"prompt": STAGE_PROMPT, "images": [image], "answer": str(i), "key_words": ["circle"], "sample_id": f"s{i}",
            "source": "toy", "capability": capability, "qid": f"q{i}", "problem": f"Question {i} <image>?",
            "response": response, "n": 8, "k": 4, "pass_rate": 0.5, "band": "medium", "p_degenerate": 0.1}


def write_stage(out: Path, shards: list[list[dict]], manifest: bool = True, extra_files: dict | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    names = [f"train-{i:05d}-of-{len(shards):05d}.parquet" for i in range(len(shards))]
    for name, rows in zip(names, shards, strict=True):
        pq.write_table(pa.Table.from_pylist(rows, schema=STAGE_SCHEMA), out / name)
    files = {name: {"sha256": "0" * 64} for name in names}
    files.update(extra_files or {})
    data = {"stage": "reasoning", "rows": sum(map(len, shards)), "files": files}
    if manifest:
        (out / "manifest.json").write_text(json.dumps(data))
    return data


def png_bytes(color, size=(32, 32), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def pixel(img) -> tuple:
    assert isinstance(img, Image.Image) and img.mode == "RGB"
    return img.getpixel((0, 0))


# -- stage datasets --------------------------------------------------------------------------------

def test_stage_dataset_in_manifest_order_with_its_own_prompt(tmp_path):
    img = make_image(tmp_path / "store" / "images" / "ab" / "red.png", color=RED)
    path_image = {"bytes": None, "path": str(img)}
    embedded = {"bytes": png_bytes(BLUE, (40, 30)), "path": "images/cd/blue.png"}  # --images embed
    out = tmp_path / "stage"
    manifest = write_stage(out, [[stage_row(0, path_image), stage_row(1, embedded)], [stage_row(2, path_image, capability=None)]],
                           extra_files={"sharegpt/warmup.json": {"sha256": "1" * 64},
                                        "select_drops.parquet": {"sha256": "2" * 64}})
    # a Parquet file the manifest does not list is not part of the dataset
    pq.write_table(pa.Table.from_pylist([stage_row(9, path_image)], schema=STAGE_SCHEMA), out / "stray.parquet")
    # nor is the selection's account of what it left out, which the manifest lists beside the shards
    pq.write_table(pa.table({"sample_id": ["x"], "step": ["band"], "reason": ["not medium"]}), out / "select_drops.parquet")
    ds, report = load_rl(out)
    assert ds["sample_id"] == ["s0", "s1", "s2"]
    assert (report.rows, report.skipped, report.source, report.manifest) == (3, {}, str(out), manifest)
    assert ds["answer"] == ["0", "1", "2"] and ds["key_words"] == [["circle"]] * 3
    assert ds["source"] == ["toy"] * 3 and ds["capability"] == ["reasoning", "reasoning", None]
    assert ds[0]["prompt"] == STAGE_PROMPT, "the stage's prompt is used, not rebuilt from `problem`"
    (a,), (b,) = ds[0]["images"], ds[1]["images"]
    assert pixel(a) == RED and a.size == (64, 64)
    assert pixel(b) == BLUE and b.size == (40, 30), "embedded bytes win over the (store-relative) path"
    assert set(ds.column_names) == {"prompt", "images", "answer", "key_words", "sample_id", "source", "capability"}


def test_stage_dataset_for_warmup_uses_the_gold_response_column(tmp_path):
    img = {"bytes": png_bytes(RED), "path": None}
    out = tmp_path / "warm"
    write_stage(out, [[stage_row(0, img, response="### The final answer is: 0"), stage_row(1, img),
                       stage_row(2, img, response="   ")]])
    ds, report = load_sft(out)
    assert (report.rows, report.skipped) == (1, {"no_gold_response": 2})
    assert report.manifest["rows"] == 3
    assert ds[0]["prompt"] == STAGE_PROMPT
    assert ds[0]["completion"] == [{"role": "assistant", "content": [{"type": "text", "text": "### The final answer is: 0"}]}]
    assert pixel(ds[0]["images"][0]) == RED


def test_missing_shards_and_manifest_are_clear_errors(tmp_path):
    img = {"bytes": png_bytes(RED), "path": None}
    out = tmp_path / "stage"
    write_stage(out, [[stage_row(0, img)], [stage_row(1, img)], [stage_row(2, img)]])
    (out / "train-00000-of-00003.parquet").unlink()
    (out / "train-00002-of-00003.parquet").unlink()
    with pytest.raises(PebrError, match=r"missing what the manifest lists \(train-00000-of-00003.parquet, "
                                        r"train-00002-of-00003.parquet\); select the stage again"):
        load_rl(out)
    (out / "manifest.json").unlink()
    with pytest.raises(PebrError, match=r"Parquet shards without manifest.json, an unfinished `curate select`"):
        load_sft(out)


def test_folder_of_plain_parquet_files_and_empty_folders(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    make_image(folder / "a.png")
    pq.write_table(pa.Table.from_pylist([record("b1"), record("b2")]), folder / "b.parquet")
    pq.write_table(pa.Table.from_pylist([record("a1")]), folder / "a.parquet")
    ds, report = load_rl(folder)
    assert ds["sample_id"] == ["a1", "b1", "b2"], "every Parquet file, in name order"
    assert report.manifest is None and ds["source"] == ["plain"] * 3, "a folder's name is the default source"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.jsonl").write_text("{}\n")
    with pytest.raises(PebrError, match=r"empty: no Parquet files \(expected a stage dataset from `curate select`\)"):
        load_rl(empty)
    with pytest.raises(PebrError, match=r"nope.jsonl: no such file or directory"):
        load_rl(tmp_path / "nope.jsonl")


# -- reference records ----------------------------------------------------------------------------

def test_rl_records_are_normalised_and_unusable_ones_counted(tmp_path):
    make_image(tmp_path / "a.png", color=RED)
    make_image(tmp_path / "sub" / "b.png", color=BLUE)
    rows = [
        record("q1", answer=5, key_words="square", source="geo", capability="perception_fine"),
        {"problem": "no answer <image>", "images": ["a.png"]},
        record(None, problem="", answer="x"),
        {"problem": "What colour is <image>?", "answer": "blue", "image": "sub/b.png", "key_words": [1, 2.5]},
        {**record("q5", key_words=None), "sample_id": "given"},
    ]
    path = write_jsonl(tmp_path / "rl.jsonl", rows)
    ds, report = load_rl(path, template="{{ content }}")
    assert (report.rows, report.skipped, report.manifest) == (3, {"no_problem_or_answer": 2}, None)
    assert ds["answer"] == ["5", "blue", "3"]
    assert ds["key_words"] == [["square"], ["1", "2.5"], []]
    # sample_id, else qid, else the record's position in the file (skipped records count)
    assert ds["sample_id"] == ["q1", "3", "given"]
    assert ds["source"] == ["geo", "rl", "rl"] and ds["capability"] == ["perception_fine", None, None]
    assert ds[0]["prompt"] == [{"role": "user", "content": [
        {"type": "text", "text": "How many circles are in "}, {"type": "image", "text": None}, {"type": "text", "text": "?"}]}]
    assert [pixel(i) for i in ds[1]["images"]] == [BLUE], "a single `image` path, relative to the file's folder"
    assert [pixel(i) for i in ds[0]["images"]] == [RED]


def test_the_default_template_wraps_the_problem(tmp_path):
    make_image(tmp_path / "a.png")
    ds, _ = load_rl(write_jsonl(tmp_path / "d.jsonl", [record("q1")]))
    (message,) = ds[0]["prompt"]
    first, image, last = message["content"]
    assert first["text"].endswith("\nHow many circles are in ") and len(first["text"]) > 100
    assert image == {"type": "image", "text": None} and last == {"type": "text", "text": "?"}


def test_images_without_a_mark_go_first(tmp_path):
    make_image(tmp_path / "a.png", color=RED)
    make_image(tmp_path / "b.png", color=BLUE)
    ds, _ = load_rl(write_jsonl(tmp_path / "d.jsonl", [record("q1", problem="Compare them.", images=["a.png", "b.png"])]),
                    template="{{ content }}")
    assert ds[0]["prompt"][0]["content"] == [{"type": "image", "text": None}, {"type": "image", "text": None},
                                             {"type": "text", "text": "Compare them."}]
    assert [pixel(i) for i in ds[0]["images"]] == [RED, BLUE]


def test_an_integer_qid_of_zero_is_the_sample_id(tmp_path):
    make_image(tmp_path / "a.png")
    ds, _ = load_rl(write_jsonl(tmp_path / "d.jsonl", [record(7), record(0, answer="4")]))
    assert ds["sample_id"] == ["7", "0"]


def test_image_root_json_array_and_parquet_records(tmp_path):
    images = tmp_path / "imgs"
    make_image(images / "a.png", color=BLUE)
    data = tmp_path / "data"
    data.mkdir()
    rows = [record("q1"), record("q2", answer="4")]
    (data / "arr.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), data / "rows.parquet")
    for name in ("arr.json", "rows.parquet"):
        with pytest.raises(PebrError, match=f"image {data / 'a.png'} not found"):
            load_rl(data / name)  # relative to the file's folder by default
        ds, report = load_rl(data / name, image_root=images)
        assert ds["sample_id"] == ["q1", "q2"] and ds["answer"] == ["3", "4"], name
        assert pixel(ds[1]["images"][0]) == BLUE and report.source == str(data / name)


def test_images_in_any_mode_become_rgb(tmp_path):
    Image.new("RGBA", (30, 30), (10, 20, 30, 128)).save(tmp_path / "rgba.png")
    Image.new("L", (30, 30), 77).save(tmp_path / "grey.png")
    Image.new("P", (30, 30), 0).save(tmp_path / "pal.png")
    rows = [record(f"q{i}", images=[name]) for i, name in enumerate(["rgba.png", "grey.png", "pal.png"])]
    ds, _ = load_rl(write_jsonl(tmp_path / "d.jsonl", rows))
    assert [pixel(r[0]) for r in ds["images"]] == [(10, 20, 30), (77, 77, 77), (0, 0, 0)]


def test_unreadable_image_references(tmp_path):
    with pytest.raises(PebrError, match="cannot read an image from int"):
        load_rl(write_jsonl(tmp_path / "d.jsonl", [record("q1", images=[123])]))
    with pytest.raises(PebrError, match=f"image {tmp_path / 'nope.png'} not found .*--images embed"):
        load_rl(write_jsonl(tmp_path / "e.jsonl", [record("q1", images=["nope.png"])]))


def test_bad_jsonl_line_and_nothing_usable(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record("q1")) + "\n\n{broken\n")
    with pytest.raises(PebrError, match=r"d.jsonl:3: not JSON"):
        load_rl(path)
    write_jsonl(path, [{"problem": "p"}, {"answer": "a"}])
    with pytest.raises(PebrError, match=r"d.jsonl: no usable record \(\{'no_problem_or_answer': 2\}\)"):
        load_rl(path)


# -- warm-up SFT -----------------------------------------------------------------------------------------

def test_sft_gold_response_from_response_or_extra(tmp_path):
    make_image(tmp_path / "a.png", color=RED)
    rows = [
        record("q1", response="gold one"),
        record("q2", response="  ", extra=json.dumps({"response": "gold from extra"})),
        record("q3", extra={"response": "gold from a dict"}),
        record("q4", extra="{not json"),
        record("q5"),
        {"qid": "q6", "answer": "1", "images": ["a.png"], "response": "no problem"},
    ]
    ds, report = load_sft(write_jsonl(tmp_path / "sft.jsonl", rows), template="Q: {{ content }}")
    assert (report.rows, report.skipped) == (3, {"no_gold_response": 2, "no_problem": 1})
    assert [c[0]["content"][0]["text"] for c in ds["completion"]] == ["gold one", "gold from extra", "gold from a dict"]
    assert ds[0]["completion"] == [{"role": "assistant", "content": [{"type": "text", "text": "gold one"}]}]
    assert ds[0]["prompt"] == [{"role": "user", "content": [
        {"type": "text", "text": "Q: How many circles are in "}, {"type": "image", "text": None}, {"type": "text", "text": "?"}]}]
    assert [pixel(r[0]) for r in ds["images"]] == [RED] * 3
    assert set(ds.column_names) == {"prompt", "completion", "images"}


def test_sft_sharegpt_messages(tmp_path):
    make_image(tmp_path / "images" / "a.png", color=BLUE)
    rows = [
        {"messages": [{"role": "user", "content": "Templated <image> question"}, {"role": "assistant", "content": "answer A"}],
         "images": ["images/a.png"]},
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "human", "content": "no image here"},
                      {"role": "gpt", "content": "answer B"}]},
        {"messages": [{"role": "user", "content": "no reply"}]},
        {"messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": " \n"}], "images": ["images/a.png"]},
    ]
    path = tmp_path / "warmup.json"
    path.write_text(json.dumps(rows))  # LLaMA-Factory's JSON array
    ds, report = load_sft(path, template="IGNORED {{ content }}")
    assert (report.rows, report.skipped) == (2, {"no_gold_response": 2})
    # the user turn is already the full prompt: the template is not applied again
    assert ds[0]["prompt"] == [{"role": "user", "content": [
        {"type": "text", "text": "Templated "}, {"type": "image", "text": None}, {"type": "text", "text": " question"}]}]
    assert ds[1]["prompt"] == [{"role": "user", "content": [{"type": "text", "text": "no image here"}]}]
    assert [c[0]["content"][0]["text"] for c in ds["completion"]] == ["answer A", "answer B"]
    assert [len(r) for r in ds["images"]] == [1, 0] and pixel(ds[0]["images"][0]) == BLUE


def test_sft_with_nothing_to_train_on(tmp_path):
    make_image(tmp_path / "a.png")
    path = write_jsonl(tmp_path / "d.jsonl", [record("q1"), record("q2")])
    with pytest.raises(PebrError, match=r"d.jsonl: no record with a gold response to train on \(\{'no_gold_response': 2\}\)"):
        load_sft(path)
