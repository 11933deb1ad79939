"""Formats in and out, checked against what the real tools write and read.

Each export is read the way its trainer reads it: `datasets` (TRL and verl load Parquet with it,
EasyR1 JSON), then that trainer's own message building (EasyR1's and verl's `_build_messages`,
rewritten here line for line from their sources: hiyouga/EasyR1 verl/utils/dataset.py and
volcengine/verl verl/utils/dataset/rl_dataset.py), then the real Qwen2-VL processor of the tiny model,
which refuses a prompt whose image placeholders and images differ in number. Each input format is
written the way its tool writes it (`datasets.save_to_disk`, `to_parquet`, CSV, verl's
`_dump_generations`) and must give the same samples.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import make_image, record, write_jsonl

from curate.importer import import_rollouts
from curate.ingest import IngestOptions, ingest
from curate.select import SelectOptions, select_stage
from curate.store import Store
from generation.prompt import IMAGE_PLACEHOLDER
from schemas.errors import PebrError

pytestmark = pytest.mark.slow

MARK_CASES = {  # qid: (problem, images)
    "no-mark": ("How many circles are there?", ["a.png"]),
    "one-of-two": ("Left <image>, and the right one: which is larger?", ["a.png", "b.png"]),
    "both": ("<image> or <image>: which is red?", ["b.png", "c.png"]),
    "none-of-two": ("How many squares in all?", ["c.png", "a.png"]),
    "at-end": ("What colour is this? <image>", ["b.png"]),
}


def _images(root: Path) -> None:
    for name, colour in (("a.png", (200, 30, 30)), ("b.png", (30, 200, 30)), ("c.png", (30, 30, 200))):
        make_image(root / name, size=(56, 56), color=colour)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A store whose samples have marks and images in every agreeing shape (plus one that disagrees),
    all medium, exported for the reasoning stage in every format."""
    tmp = tmp_path_factory.mktemp("formats")
    root = tmp / "imgs"
    _images(root)
    rows = [record(q, problem=p, images=imgs, answer="3", response="### The final answer is: 3")
            for q, (p, imgs) in MARK_CASES.items()]
    rows.append(record("too-many-marks", problem="<image> <image> <image> three?", images=["a.png"]))
    store = Store(tmp / "store")
    report = ingest(store, IngestOptions(path=write_jsonl(tmp / "d.jsonl", rows), image_root=root, source="toy"))
    dump = [{"qid": q, "response": f"r{i}", "ground_truth": "3", "score": {"accuracy": float(i < 4)}}
            for q in MARK_CASES for i in range(8)]
    import_rollouts(store, write_jsonl(tmp / "dump.jsonl", dump))
    outs = {}
    for fmt in ("parquet", "easyr1", "sharegpt", "verl"):
        warmup = {"stage": "warmup", "hard_max": 0.5} if fmt == "sharegpt" else {"stage": "reasoning"}  # 4 of 8: hard
        outs[fmt] = select_stage(store, SelectOptions(out=tmp / fmt, format=fmt, **warmup))
    return tmp, store, report, outs


@pytest.fixture(scope="module")
def processor(tiny_model):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(tiny_model)


def _process(processor, messages, images) -> int:
    """Run the real processor as the trainers do; returns the number of image placeholders in the
    prompt (the processor raises when they and the images differ in number)."""
    from PIL import Image

    pil = [im if isinstance(im, Image.Image) else Image.open(im).convert("RGB") for im in images]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    processor(images=pil, text=[text], return_tensors="pt")
    return text.count("<|vision_start|>")


def test_more_marks_than_images_is_a_reject_with_its_own_reason(exported):
    _, store, report, _ = exported
    assert report.rejected == {"image_marks": 1}
    got = store.connect().execute("SELECT qid, reason, message FROM rejects").fetchall()
    assert got == [("too-many-marks", "image_marks", "the problem has 3 <image> marks for 1 image")]


def test_trl_parquet_has_one_image_part_per_image(exported, processor):
    import datasets

    _, _, _, outs = exported
    ds = datasets.load_dataset("parquet", data_files=str(outs["parquet"].out / "train-*.parquet"), split="train")
    assert sorted(ds["qid"]) == sorted(MARK_CASES)
    for row in ds:
        parts = row["prompt"][0]["content"]
        assert sum(p["type"] == "image" for p in parts) == len(row["images"]) == len(MARK_CASES[row["qid"]][1])
        messages = [{"role": "user", "content": [{k: v for k, v in p.items() if v is not None} for p in parts]}]
        assert _process(processor, messages, row["images"]) == len(row["images"])


def easyr1_build_messages(example: dict, format_prompt: str | None) -> list[dict]:
    """hiyouga/EasyR1 verl/utils/dataset.py RLHFDataset._build_messages (image branch)."""
    from jinja2 import Template

    prompt_str = example["problem"]
    if format_prompt:
        prompt_str = Template(format_prompt.strip()).render(content=prompt_str)
    content_list = []
    for i, content in enumerate(prompt_str.split("<image>")):
        if i != 0:
            content_list.append({"type": "image"})
        if content:
            content_list.append({"type": "text", "text": content})
    return [{"role": "user", "content": content_list}]


def test_easyr1_json_is_read_as_easyr1_reads_it(exported, processor):
    """EasyR1 loads the JSON with `datasets`, renders its format prompt over `problem`, splits at the
    marks and joins image paths to data.image_dir: every row must reach the processor whole, and its
    prompt must equal the one the toolkit trains and scores with."""
    import datasets

    from generation.prompt import build_messages

    _, _, _, outs = exported
    folder = outs["easyr1"].out / "easyr1"
    fmt_prompt = (folder / "format_prompt.jinja").read_text()
    ds = datasets.load_dataset("json", data_files=str(folder / "train.json"), split="train")
    assert sorted(ds["qid"]) == sorted(MARK_CASES)
    for row in ds:
        messages = easyr1_build_messages(row, fmt_prompt)
        images = [folder / p for p in row["images"]]  # data.image_dir joined to each path
        assert _process(processor, messages, images) == len(images) == len(MARK_CASES[row["qid"]][1])
        assert messages == build_messages(MARK_CASES[row["qid"]][0], len(images), fmt_prompt)
    usage = json.loads((outs["easyr1"].out / "manifest.json").read_text())["use_with"]["easyr1"]
    assert f"data.train_files={folder.absolute()}/train.json" in usage
    assert f"data.image_dir={folder.absolute()}" in usage


def verl_build_messages(example: dict) -> list[dict]:
    """volcengine/verl verl/utils/dataset/rl_dataset.py RLHFDataset._build_messages."""
    from PIL import Image

    messages: list = example["prompt"]
    images = example.pop("images", None) or []
    image_offset = 0
    for message in messages:
        content = message["content"]
        content_list = []
        segments = [item for item in re.split("(<image>|<video>)", content) if item != ""]
        for segment in segments:
            if segment == "<image>":
                assert image_offset < len(images), f"image_offset {image_offset} >= len(images) {len(images)}"
                image = images[image_offset]
                if isinstance(image, Image.Image):
                    content_list.append({"type": "image", "image": image.convert("RGB")})
                else:
                    if "bytes" in image:
                        image["image"] = Image.open(io.BytesIO(image["bytes"]))
                    content_list.append({"type": "image", **image})
                image_offset += 1
            else:
                content_list.append({"type": "text", "text": segment})
        message["content"] = content_list
    assert image_offset == len(images), f"image_offset {image_offset} != len(images) {len(images)}"
    return messages


@pytest.mark.parametrize("decode", [True, False], ids=["pil", "dict"])
def test_verl_parquet_is_read_as_verl_reads_it(exported, processor, decode):
    """verl loads the Parquet with `datasets` (images decoded to PIL by the file's features, or plain
    dicts with bytes) and splits the prompt's text at its marks."""
    import datasets

    _, _, _, outs = exported
    path = outs["verl"].out / "verl" / "train.parquet"
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
    if not decode:
        ds = ds.cast_column("images", datasets.Sequence(datasets.Image(decode=False)))
    assert set(ds.column_names) >= {"data_source", "prompt", "images", "ability", "reward_model", "extra_info"}
    for row in ds:
        qid = row["extra_info"]["qid"]
        assert row["reward_model"] == {"style": "rule", "ground_truth": "3"} and row["data_source"] == "toy"
        assert row["extra_info"]["stage"] == "reasoning" and row["extra_info"]["sample_id"]
        messages = verl_build_messages(dict(row))
        images = [p["image"] for p in messages[0]["content"] if p["type"] == "image"]
        stripped = [{"role": "user", "content": [{"type": "image"} if p["type"] == "image" else p
                                                 for p in messages[0]["content"]]}]
        assert _process(processor, stripped, images) == len(MARK_CASES[qid][1])


def test_sharegpt_has_one_mark_per_image(exported):
    """LLaMA-Factory's mm_plugin raises when a message's <image> marks and the images differ in number."""
    _, _, _, outs = exported
    folder = outs["sharegpt"].out / "sharegpt"
    info = json.loads((folder / "dataset_info.json").read_text())
    recs = json.loads((folder / info["pebr_warmup"]["file_name"]).read_text())
    assert len(recs) == len(MARK_CASES)
    for rec in recs:
        assert rec["messages"][0]["content"].count(IMAGE_PLACEHOLDER) == len(rec["images"])
        assert all((folder / p).is_file() for p in rec["images"]), "images resolve under dataset_dir (media_dir)"


def test_every_export_says_how_to_use_it(exported):
    _, _, _, outs = exported
    tools = {fmt: set(json.loads((r.out / "manifest.json").read_text())["use_with"]) for fmt, r in outs.items()}
    assert tools == {"parquet": {"pebr", "trl"}, "easyr1": {"pebr", "trl", "easyr1"},
                     "sharegpt": {"pebr", "trl", "llamafactory"}, "verl": {"pebr", "trl", "verl"}}


# -- formats in --------------------------------------------------------------------------------------

def _jpeg(mode: str, colour) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (48, 40), colour).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_image_bytes_are_kept_byte_for_byte_from_every_format(tmp_path):
    """The same records written as `save_to_disk`, `to_parquet` (datasets' own writers) and JSONL with
    files give the same sample ids, and the store holds the original bytes (a CMYK JPEG included)."""
    import datasets

    cmyk, rgb = _jpeg("CMYK", (0, 120, 200, 10)), _jpeg("RGB", (10, 200, 30))
    root = tmp_path / "imgs"
    root.mkdir()
    (root / "cmyk.jpg").write_bytes(cmyk)
    (root / "rgb.jpg").write_bytes(rgb)
    rows = [{"qid": "c", "problem": "What colour? <image>", "answer": "blue", "images": [{"bytes": cmyk, "path": "cmyk.jpg"}]},
            {"qid": "r", "problem": "What colour? <image>", "answer": "green", "images": [{"bytes": rgb, "path": "rgb.jpg"}]}]
    features = datasets.Features({"qid": datasets.Value("string"), "problem": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "images": datasets.Sequence(datasets.Image())})
    ds = datasets.Dataset.from_list(rows, features=features)
    ds.save_to_disk(str(tmp_path / "saved"))
    ds.to_parquet(str(tmp_path / "data.parquet"))
    write_jsonl(tmp_path / "data.jsonl", [{**r, "images": [r["images"][0]["path"]]} for r in rows])
    ids = {}
    for name in ("saved", "data.parquet", "data.jsonl"):
        store = Store(tmp_path / f"store-{name}")
        r = ingest(store, IngestOptions(path=tmp_path / name, image_root=root, source="colours"))
        assert (r.accepted, dict(r.rejected)) == (2, {}), name
        got = store.connect().execute("SELECT qid, sample_id, images[1] FROM samples ORDER BY qid").fetchall()
        ids[name] = [(q, sid) for q, sid, _ in got]
        stored = {q: (store.root / rel) for q, _, rel in got}
        assert stored["c"].read_bytes() == cmyk and stored["r"].read_bytes() == rgb, name
        assert all(p.suffix == ".jpg" for p in stored.values()), name
    assert ids["saved"] == ids["data.parquet"] == ids["data.jsonl"]


def test_the_toolkit_reads_its_own_export_back(exported, tmp_path):
    """The default export names images by absolute path into the store (datasets' path-only Image
    structs); ingesting it with the store's image folder as root gives the same samples."""
    _, store, _, outs = exported
    again = Store(tmp_path / "again")
    r = ingest(again, IngestOptions(path=next(outs["parquet"].out.glob("train-*.parquet")), image_root=store.root / "images"))
    assert (r.accepted, dict(r.rejected)) == (len(MARK_CASES), {})
    query = "SELECT sample_id, images FROM samples ORDER BY sample_id"
    assert again.connect().execute(query).fetchall() == store.connect().execute(query).fetchall()


def test_csv_values_stay_text_through_ingest(tmp_path):
    root = tmp_path / "imgs"
    _images(root)
    path = tmp_path / "d.csv"
    path.write_text("qid,problem,answer,images\n0012,How many <image>?,007,a.png\n0013,Ratio <image>?,0.10,b.png\n")
    store = Store(tmp_path / "store")
    ingest(store, IngestOptions(path=path, image_root=root, source="csv"))
    got = store.connect().execute("SELECT qid, answer FROM samples ORDER BY qid").fetchall()
    assert got == [("0012", "007"), ("0013", "0.10")]


# -- verl dumps ------------------------------------------------------------------------------------

def _verl_store(tmp_path: Path) -> Store:
    root = tmp_path / "imgs"
    _images(root)
    store = Store(tmp_path / "store")
    rows = [record(q, problem=f"{q}: how many <image>?", images=["a.png"]) for q in ("q0", "q1")]
    ingest(store, IngestOptions(path=write_jsonl(tmp_path / "d.jsonl", rows), image_root=root, source="toy"))
    return store


def _dump_generations(folder: Path, step: int, entries: list[dict]) -> None:
    """verl's RayPPOTrainer._dump_generations: one `<step>.jsonl` per step; input, output, gts, score,
    step, then every key of the reward's result."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"input": f"user\n{e['qid']}: how many?\nassistant\n", "output": e["output"], "gts": "3",
                         "score": e["score"], "step": step, **{k: v for k, v in e.items() if k not in ("output", "score")}},
                        ensure_ascii=False) for e in entries]
    (folder / f"{step}.jsonl").write_text("\n".join(lines) + "\n")


def test_a_verl_dump_folder_is_one_run_and_acc_decides(tmp_path):
    """DAPO's reward: score -1 or 1 with `acc`. 4 correct of 8 for q0 spread over two steps is one
    medium sample, not 0/4 hard and 4/4 easy in two runs."""
    store = _verl_store(tmp_path)
    dumps = tmp_path / "rollout_data"
    for step in (1, 2):
        _dump_generations(dumps, step, [{"qid": "q0", "output": f"o{step}{i}", "score": 1.0 if step == 2 else -1.0,
                                         "acc": step == 2, "pred": "3"} for i in range(4)]
                          + [{"qid": "q1", "output": f"p{step}{i}", "score": -1.0, "acc": False, "pred": "x"} for i in range(4)])
    r = import_rollouts(store, dumps, qid_field="qid")
    assert (r.rollouts, r.correct_from) == (16, {"acc": 16})
    got = store.connect().execute("SELECT s.qid, d.n, d.k, d.band FROM difficulty d JOIN samples s USING (sample_id) "
                                    f"WHERE d.run_id = '{r.run_id}' ORDER BY s.qid").fetchall()
    assert got == [("q0", 8, 4, "medium"), ("q1", 8, 0, "hard")]
    mean = store.connect().execute(f"SELECT avg(accuracy) FROM rollouts WHERE run_id = '{r.run_id}'").fetchone()[0]
    assert mean == pytest.approx(0.25), "accuracy is correctness (0/1), not DAPO's -1/1 score"
    assert store.connect().execute("SELECT count(*) FROM runs WHERE kind = 'import'").fetchone()[0] == 1


def test_a_verl_dump_without_acc_needs_the_users_threshold(tmp_path):
    """A 0.9 accuracy + 0.1 format reward: 8 correct but unformatted answers score 0.9 each."""
    store = _verl_store(tmp_path)
    dumps = tmp_path / "rollout_data"
    _dump_generations(dumps, 1, [{"qid": "q0", "output": f"o{i}", "score": 0.9} for i in range(8)])
    with pytest.raises(PebrError, match=r"carry no `acc`.*--correct-threshold"):
        import_rollouts(store, dumps, qid_field="qid")
    assert store.connect().execute("SELECT count(*) FROM rollouts").fetchone()[0] == 0, "nothing was imported"
    r = import_rollouts(store, dumps, qid_field="qid", correct_threshold=0.9)
    assert r.correct_from == {"score >= 0.9": 8}
    assert store.connect().execute(f"SELECT band FROM difficulty WHERE run_id = '{r.run_id}'").fetchall() == [("easy",)]


def test_verl_needs_a_real_qid_source(tmp_path):
    store = _verl_store(tmp_path)
    _dump_generations(tmp_path / "d", 1, [{"qid": "q0", "output": "o", "score": 1.0, "acc": True}])
    with pytest.raises(PebrError, match=r"--qid-field NAME, a key your reward function returns") as exc:
        import_rollouts(store, tmp_path / "d")
    assert "uid" not in str(exc.value), "verl's uid is a fresh uuid per prompt per step, no question id"


def test_the_verl_reward_returns_what_the_import_reads(exported, tmp_path):
    """rewards.verl.compute_score on a verl export's row gives the `acc` and `qid` the import joins on."""
    import datasets

    from rewards.verl import compute_score

    _, store, _, outs = exported
    ds = datasets.load_dataset("parquet", data_files=str(outs["verl"].out / "verl" / "train.parquet"), split="train")
    row = ds[0]
    out = compute_score(row["data_source"], "### The final answer is: 3", row["reward_model"]["ground_truth"], row["extra_info"])
    assert out["acc"] is True and out["qid"] == row["extra_info"]["qid"] and out["sample_id"] == row["extra_info"]["sample_id"]


# -- truncated reference dumps ---------------------------------------------------------------------

def test_truncated_reference_dumps_are_flagged_and_regrade_refuses_them(tmp_path):
    from curate.grade import regrade

    store = _verl_store(tmp_path)
    full = "### Image Description: two red circles on a white ground. ### Rationales: count them. ### The final answer is: 3"
    cut = full[:50] + "..." + full[-50:]
    dump = [{"qid": "q0", "response": cut, "ground_truth": "3", "score": {"accuracy": 1.0}} for _ in range(3)]
    dump += [{"qid": "q1", "response": "short and whole", "ground_truth": "3", "score": {"accuracy": 0.0}}]
    r = import_rollouts(store, write_jsonl(tmp_path / "rollout_results.jsonl", dump))
    assert r.truncated == 3
    got = store.connect().execute("SELECT qid, truncated FROM rollouts ORDER BY rollout_idx").fetchall()
    assert got == [("q0", True)] * 3 + [("q1", False)]
    with pytest.raises(PebrError, match=r"3 of its 4 responses are truncated"):
        regrade(store, r.run_id)


def test_a_store_from_before_the_truncated_column_still_reads(tmp_path):
    """Parts written without the column read it as NULL; the next write brings the column to the views."""
    store = _verl_store(tmp_path)
    empty = store.table_dir("rollouts") / "part-empty.parquet"
    old = pq.read_table(empty).drop(["truncated"])
    pq.write_table(old, empty)
    dump = [{"qid": "q0", "response": "r", "ground_truth": "3", "score": {"accuracy": 1.0}}]
    import_rollouts(store, write_jsonl(tmp_path / "d.jsonl", dump))
    assert "truncated" in pq.read_schema(empty).names
    assert store.connect().execute("SELECT count(*) FILTER (truncated) FROM rollouts").fetchone()[0] == 0
