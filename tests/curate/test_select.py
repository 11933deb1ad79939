from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import make_image, record, write_jsonl

from curate.importer import import_rollouts
from curate.ingest import IngestOptions, ingest
from curate.select import SelectOptions, mix_targets, select_stage
from curate.store import Store
from schemas.errors import PebrError

REPO = Path(__file__).resolve().parents[2]


def build_store(tmp_path: Path, specs: list[dict], extra_records: dict | None = None) -> Store:
    """specs: dicts with qid, k, n and optional source, capability, problem, image, response."""
    root = tmp_path / "imgs"
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    for i, c in enumerate(colors):
        make_image(root / f"img{i}.png", color=c)
    rows, dump = [], []
    for sp in specs:
        extra = {k: sp[k] for k in ("source", "capability", "response") if k in sp}
        rows.append(record(sp["qid"], problem=sp.get("problem", f"Question {sp['qid']}: how many in <image>?"),
                           answer=sp.get("answer", "3"), images=[f"img{sp.get('image', 0)}.png"], **extra))
        for i in range(sp["n"]):
            dump.append({"qid": sp["qid"], "response": f"r{i}", "ground_truth": "3", "score": {"accuracy": float(i < sp["k"])}})
    s = Store(tmp_path / "store")
    ingest(s, IngestOptions(path=write_jsonl(tmp_path / "data.jsonl", rows), image_root=root, source="toy"))
    import_rollouts(s, write_jsonl(tmp_path / "rollout_results.jsonl", dump))
    return s


def _shards(out: Path) -> list[Path]:
    return sorted(out.glob("train-*-of-*.parquet"))


def _table(out: Path, columns: list[str] | None = None):
    """A stage dataset's rows, its shards read in order."""
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(f, columns=columns) for f in _shards(out)])


def _ids(out: Path) -> list[str]:
    return _table(out, ["sample_id"]).column("sample_id").to_pylist()


def _beta_pdeg(k: int, n: int, g: int) -> float:
    def moment(a, b):
        return math.exp(math.lgamma(a + g) - math.lgamma(a) + math.lgamma(a + b) - math.lgamma(a + b + g))

    return moment(k + 1, n - k + 1) + moment(n - k + 1, k + 1)


def test_bands_for_every_k_at_n8(tmp_path):
    store = build_store(tmp_path, [{"qid": f"q{k}", "k": k, "n": 8} for k in range(9)])
    expected = {"perception": ["q8"], "reasoning": [f"q{k}" for k in range(1, 8)], "warmup": ["q0"]}
    for stage, qids in expected.items():
        r = select_stage(store, SelectOptions(stage=stage, out=tmp_path / stage, group_size=4))
        t = _table(r.out)
        assert sorted(t.column("qid").to_pylist()) == qids
        assert r.rows == len(qids) == r.band_total
        for row in t.select(["k", "n", "p_degenerate", "pass_rate"]).to_pylist():
            assert row["p_degenerate"] == pytest.approx(_beta_pdeg(row["k"], row["n"], 4))
            assert row["pass_rate"] == row["k"] / row["n"]
        # Posterior, not point estimate: an 8/8 sample is not certain to give a degenerate group.
        assert 0.5 < t.column("p_degenerate")[0].as_py() < 1.0 if stage != "reasoning" else True


def test_bands_with_mixed_n_and_thresholds(tmp_path):
    specs = [{"qid": "a", "k": 1, "n": 1}, {"qid": "b", "k": 0, "n": 1}, {"qid": "c", "k": 3, "n": 4},
             {"qid": "d", "k": 2, "n": 3}, {"qid": "e", "k": 16, "n": 16}, {"qid": "f", "k": 1, "n": 16}]
    store = build_store(tmp_path, specs)
    con = store.connect()
    assert dict(con.execute("select s.qid, d.band from difficulty d join samples s using (sample_id)").fetchall()) == {
        "a": "easy", "b": "hard", "c": "medium", "d": "medium", "e": "easy", "f": "medium"}
    got = {}
    for stage in ("perception", "reasoning", "warmup"):
        r = select_stage(store, SelectOptions(stage=stage, out=tmp_path / stage, easy_min=0.75, hard_max=0.1))
        got[stage] = sorted(_table(r.out).column("qid").to_pylist())
    assert got == {"perception": ["a", "c", "e"], "reasoning": ["d"], "warmup": ["b", "f"]}
    with pytest.raises(PebrError, match="hard_max < easy_min"):
        select_stage(store, SelectOptions(stage="warmup", out=tmp_path / "x", easy_min=0.5, hard_max=0.5))


@pytest.fixture
def mixed(tmp_path):
    specs = []
    for i in range(30):
        specs.append({"qid": f"a{i}", "source": "alpha", "capability": "perception_coarse", "k": 8, "n": 8})
    for i in range(10):
        specs.append({"qid": f"b{i}", "source": "beta", "capability": "perception_fine", "k": 8, "n": 8})
    for i in range(6):
        # c0..c3 ask the same question of two images (answers differ, so ingest keeps all four).
        specs.append({"qid": f"c{i}", "source": "beta", "capability": "reasoning", "k": 8, "n": 8, "image": 1 + i // 2,
                      "answer": str(i),
                      "problem": "Same question <image>" if i < 4 else f"Other {i} <image>"})
    return build_store(tmp_path, specs)


def test_quotas_cap_and_seeds(tmp_path, mixed):
    base = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "all"))
    assert base.rows == 46 and base.by_source == {"alpha": 30, "beta": 16}

    r1 = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "q1", quota={"alpha": 5}, seed=1))
    assert r1.by_source == {"alpha": 5, "beta": 16}
    r1b = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "q1b", quota={"alpha": 5}, seed=1))
    r2 = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "q2", quota={"alpha": 5}, seed=2))
    assert r1.files == r1b.files and list(r1.files)[0] == "train-00000-of-00001.parquet"  # byte-identical rerun
    assert _ids(r1.out) == _ids(r1b.out)
    assert set(_ids(r1.out)) != set(_ids(r2.out))
    # The seed orders rows: the output is not in sample_id order, and a cap keeps a prefix of it.
    ids = _ids(base.out)
    capped = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "cap", cap=7))
    assert _ids(capped.out) == ids[:7] and capped.steps["cap"] == 7
    assert ids != sorted(ids)
    import duckdb

    keys = [duckdb.execute("SELECT md5_number(?)", [f"0:{i}"]).fetchone()[0] for i in ids]
    assert keys == sorted(keys), "rows come in the order the manifest's rule states"
    assert select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "z", quota={"beta": 0})).by_source == {"alpha": 30}


def test_filters_mix_dedup_and_where(tmp_path, mixed):
    r = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "mix", coarse_fine_mix=0.5,
                                          capabilities=["perception_coarse", "perception_fine"]))
    assert r.by_capability == {"perception_coarse": 10, "perception_fine": 10}
    r = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "dd", sources=["beta"], dedup=True))
    assert r.by_capability == {"perception_fine": 10, "reasoning": 4} and r.steps["dedup"] == 14
    r = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "w", where="qid LIKE 'b%' AND n = 8"))
    assert r.rows == 10
    with pytest.raises(PebrError, match="single SQL condition"):
        select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "bad", where="1=1); DROP VIEW samples; SELECT (1"))
    with pytest.raises(PebrError, match="selection step where .* failed"):
        select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "bad", where="nope > 1"))
    with pytest.raises(PebrError, match="already holds"):
        select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "w"))
    for bad in ("{{ content }} {{ other }}", "{{ content ", "{problem}", "no placeholder"):
        with pytest.raises(PebrError, match="format prompt"):
            select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "w", force=True, template=bad))
    assert _shards(tmp_path / "w"), "a refused selection leaves the existing dataset alone"
    assert mix_targets(3, 100, 0.25) == (3, 9)


def test_every_sample_of_the_run_is_kept_or_dropped_with_a_reason(tmp_path):
    specs = [{"qid": f"e{i}", "source": "alpha", "capability": "reasoning", "k": 8, "n": 8} for i in range(4)]
    specs += [{"qid": f"m{i}", "source": "alpha" if i < 6 else "beta", "capability": "reasoning", "k": 1 + i % 7, "n": 8}
              for i in range(10)]
    specs += [{"qid": f"h{i}", "source": "beta", "capability": "reasoning", "k": 0, "n": 8} for i in range(3)]
    store = build_store(tmp_path, specs)
    # The condition names source and qid bare (no alias) and holds the text of an alias in a literal,
    # which the selection must pass to DuckDB untouched.
    r = select_stage(store, SelectOptions(stage="reasoning", out=tmp_path / "r", quota={"alpha": 4}, cap=5,
                                          where="source <> 'd.source ' AND qid <> 'm1'"))
    drops = pq.read_table(r.out / "select_drops.parquet").to_pylist()
    kept = _ids(r.out)
    run_samples = [sid for (sid,) in store.connect().execute("SELECT sample_id FROM samples").fetchall()]
    assert len(kept) == r.rows == 5
    assert sorted(kept + [d["sample_id"] for d in drops]) == sorted(run_samples), "each sample kept or dropped, once"
    by_step = {}
    for d in drops:
        by_step.setdefault(d["step"], {}).setdefault(d["reason"], 0)
        by_step[d["step"]][d["reason"]] += 1
    assert by_step == {"band": {"band_easy": 4, "band_hard": 3}, "where": {"where_false": 1},
                       "quota": {"over_quota": 1}, "cap": {"over_cap": 3}}
    manifest = json.loads((r.out / "manifest.json").read_text())
    assert [(s["step"], s["kept"], s["by_reason"]) for s in manifest["steps"]] == [
        ("band", 10, {"band_easy": 4, "band_hard": 3}), ("where", 9, {"where_false": 1}),
        ("quota", 8, {"over_quota": 1}), ("cap", 5, {"over_cap": 3})]
    assert manifest["drops"]["rows"] == len(drops) == 12
    assert "where source <> 'd.source ' AND qid <> 'm1'" in manifest["rule"]


def test_shards_split_the_seeded_order(tmp_path, mixed):
    one = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "one"))
    many = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "many", shard_rows=7))
    names = [f.name for f in _shards(many.out)]
    assert names == [f"train-{i:05d}-of-00007.parquet" for i in range(7)]  # 46 rows, at most 7 per shard
    sizes = [pq.read_metadata(f).num_rows for f in _shards(many.out)]
    assert sum(sizes) == many.rows == 46 and max(sizes) - min(sizes) <= 1
    assert _table(many.out).to_pylist() == _table(one.out).to_pylist(), "the shards, in name order, are the one file"
    exact = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "exact", shard_rows=23))
    assert [pq.read_metadata(f).num_rows for f in _shards(exact.out)] == [23, 23] and _ids(exact.out) == _ids(one.out)
    empty = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "empty", cap=0, shard_rows=7))
    assert [f.name for f in _shards(empty.out)] == ["train-00000-of-00001.parquet"] and _table(empty.out).num_rows == 0
    manifest = json.loads((many.out / "manifest.json").read_text())
    assert list(manifest["files"]) == [*names, "select_drops.parquet"] and manifest["rows"] == 46
    again = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "many", shard_rows=7, force=True))
    assert again.files == many.files, "byte-identical shards on a rerun"
    embedded = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "emb", shard_rows=20, images="embed"))
    assert len(_shards(embedded.out)) == 3
    assert _table(embedded.out).drop_columns(["images"]).to_pylist() == _table(one.out).drop_columns(["images"]).to_pylist()
    fewer = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "many", force=True))
    assert [f.name for f in _shards(fewer.out)] == ["train-00000-of-00001.parquet"], "no shard of the replaced dataset is left"
    single = tmp_path / "single"
    single.mkdir()
    pq.write_table(_table(one.out), single / "train.parquet")  # a stage dataset written as one file
    with pytest.raises(PebrError, match="already holds"):
        select_stage(mixed, SelectOptions(stage="perception", out=single))
    select_stage(mixed, SelectOptions(stage="perception", out=single, force=True))
    assert sorted(p.name for p in single.iterdir()) == ["manifest.json", "select_drops.parquet", "train-00000-of-00001.parquet"]
    with pytest.raises(PebrError, match="shard_rows"):
        select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "x", shard_rows=0))


def test_select_command_line(tmp_path, mixed):
    def select(*args):
        return subprocess.run([sys.executable, "-m", "curate.cli", "select", "--stage", "perception", "--store", str(mixed.root),
                               *args], capture_output=True, text=True, timeout=300)

    r = select("--out", str(tmp_path / "p"), "--shard-rows", "20")
    assert r.returncode == 0, r.stderr
    assert "perception: 46 samples" in r.stderr and "(3 Parquet shards)" in r.stderr
    assert len(_shards(tmp_path / "p")) == 3
    r = select("--out", str(tmp_path / "x"), "--shard-rows", "0")
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "shard_rows must be >= 1" in r.stderr


def test_a_failed_shard_leaves_no_dataset(tmp_path, mixed):
    image = next((mixed.root / "images").rglob("*.png"))
    image.rename(image.with_name("moved"))  # embedding then fails on the samples that use it
    with pytest.raises(PebrError, match="missing from the store"):
        select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "e", images="embed", shard_rows=5))
    assert sorted(p.name for p in (tmp_path / "e").iterdir()) == [], "no shard, temporary file or manifest is left"


def test_sharded_stage_dataset_loads_for_training(tmp_path, mixed):
    datasets = pytest.importorskip("datasets")
    from train.data import load_rl

    one = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "one"))
    many = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "many", shard_rows=7))
    ds = datasets.load_dataset("parquet", data_files=str(many.out / "train-*-of-*.parquet"), split="train")
    assert ds["sample_id"] == _ids(one.out)
    pq.write_table(_table(one.out).slice(0, 3), many.out / "stray.parquet")  # not the dataset's: not read
    rl, report = load_rl(many.out)
    assert rl["sample_id"] == _ids(one.out) and report.manifest["rows"] == 46
    _shards(many.out)[0].unlink()
    with pytest.raises(PebrError, match=r"missing what the manifest lists \(train-00000-of-00007.parquet\)"):
        load_rl(many.out)
    (many.out / "manifest.json").unlink()
    with pytest.raises(PebrError, match="without manifest.json"):
        load_rl(many.out)


def test_manifest_and_datasets_load(tmp_path, mixed):
    datasets = pytest.importorskip("datasets")
    r = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "p", quota={"alpha": 4}, group_size=8))
    manifest = json.loads((r.out / "manifest.json").read_text())
    ds = datasets.load_dataset("parquet", data_files=str(r.out / "train-*-of-*.parquet"), split="train")
    assert len(ds) == manifest["rows"] == 20
    by_source = {}
    for src in ds["source"]:
        by_source[src] = by_source.get(src, 0) + 1
    assert manifest["counts"]["by_source"] == by_source == {"alpha": 4, "beta": 16}
    assert manifest["counts"]["by_band"] == {"easy": 20}
    assert manifest["run"]["run_id"] == r.run_id and manifest["run"]["kind"] == "import"
    from schemas.io import sha256_file

    assert manifest["files"] == {f.name: {"sha256": sha256_file(f)} for f in [*_shards(r.out), r.out / "select_drops.parquet"]}
    assert manifest["zero_advantage"]["accuracy_predicted"] == pytest.approx(_beta_pdeg(8, 8, 8))
    assert manifest["zero_advantage"]["accuracy_point_estimate"] == pytest.approx(1.0)
    assert manifest["zero_advantage"]["observed_zero_std"]["accuracy"] == 1.0
    row = ds[0]
    from PIL import Image

    assert isinstance(row["images"][0], Image.Image) and row["images"][0].size == (64, 64)
    assert row["prompt"][0]["role"] == "user"
    assert [p["type"] for p in row["prompt"][0]["content"]].count("image") == 1
    assert row["answer"] == "3" and row["band"] == "easy" and row["key_words"] == ["circle"]


def test_images_by_path_or_embedded(tmp_path, mixed):
    datasets = pytest.importorskip("datasets")
    by_path = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "p", cap=6))
    embedded = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "e", cap=6, images="embed"))
    a, b = _table(by_path.out), _table(embedded.out)
    assert [(f.name, f.type) for f in a.schema] == [(f.name, f.type) for f in b.schema]
    assert a.schema.metadata == b.schema.metadata
    assert a.drop_columns(["images"]).to_pylist() == b.drop_columns(["images"]).to_pylist()
    for x, y in zip(a.column("images").to_pylist(), b.column("images").to_pylist(), strict=True):
        assert x[0]["bytes"] is None and Path(x[0]["path"]).is_absolute()
        assert y[0]["bytes"] == Path(x[0]["path"]).read_bytes() and y[0]["path"] == Path(x[0]["path"]).name
    pa_, pb = (datasets.load_dataset("parquet", data_files=str(r.out / "train-*-of-*.parquet"), split="train") for r in (by_path, embedded))
    assert [list(im.getdata()) for im in pa_[0]["images"]] == [list(im.getdata()) for im in pb[0]["images"]]
    manifest = json.loads((embedded.out / "manifest.json").read_text())
    assert manifest["options"]["images"] == "embed" and set(manifest["schema"]) == set(a.schema.names)
    with pytest.raises(PebrError, match="images mode"):
        select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "x", images="zip"))


def test_easyr1_and_sharegpt_formats(tmp_path):
    specs = [{"qid": "h1", "k": 0, "n": 8, "response": "### The final answer is: 3"}, {"qid": "h2", "k": 0, "n": 8, "image": 2},
             {"qid": "m1", "k": 4, "n": 8}]
    store = build_store(tmp_path, specs)
    r = select_stage(store, SelectOptions(stage="warmup", out=tmp_path / "w", format="sharegpt"))
    recs = json.loads((r.out / "sharegpt" / "warmup.json").read_text())
    assert r.skipped_no_response == 1 and len(recs) == 1
    assert recs[0]["messages"][1]["content"] == "### The final answer is: 3"
    assert recs[0]["messages"][0]["content"].count("<image>") == len(recs[0]["images"]) == 1
    assert (r.out / "sharegpt" / recs[0]["images"][0]).is_file()
    t = _table(r.out).to_pylist()
    assert {x["qid"]: x["response"] for x in t} == {"h1": "### The final answer is: 3", "h2": None}

    r = select_stage(store, SelectOptions(stage="warmup", out=tmp_path / "e", format="easyr1"))
    recs = json.loads((r.out / "easyr1" / "train.json").read_text())
    assert sorted(x["qid"] for x in recs) == ["h1", "h2"]
    assert set(recs[0]) >= {"qid", "problem", "answer", "images", "key_words"}
    for x in recs:
        assert (r.out / "easyr1" / x["images"][0]).is_file()
    assert "easyr1/train.json" in json.loads((r.out / "manifest.json").read_text())["files"]


def test_counts_equal_reference_split(tmp_path):
    specs = [{"qid": f"q{i}", "k": (i * 5) % 9, "n": 8} for i in range(40)]
    store = build_store(tmp_path, specs)
    data = [json.loads(line) for line in (tmp_path / "data.jsonl").read_text().splitlines()]
    (tmp_path / "data.json").write_text(json.dumps(data))
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "reference_split.py"), str(tmp_path / "rollout_results.jsonl"),
                          str(tmp_path / "data.json"), str(tmp_path / "ref")], capture_output=True, text=True, check=True)
    ref = json.loads(out.stdout)
    for stage, band in (("perception", "easy"), ("reasoning", "medium"), ("warmup", "hard")):
        r = select_stage(store, SelectOptions(stage=stage, out=tmp_path / stage))
        assert r.rows == ref[band] == len(json.loads((tmp_path / "ref" / f"{band}.json").read_text()))
        assert r.rows > 0


def test_latest_run_by_default_and_run_option(tmp_path):
    store = build_store(tmp_path, [{"qid": "q0", "k": 8, "n": 8}])
    first = store.connect().execute("select run_id from runs where kind = 'import'").fetchone()[0]
    dump = [{"qid": "q0", "response": "x", "ground_truth": "3", "score": {"accuracy": 0.0}}] * 4
    second = import_rollouts(store, write_jsonl(tmp_path / "again.jsonl", dump)).run_id
    r = select_stage(store, SelectOptions(stage="warmup", out=tmp_path / "latest"))
    assert (r.run_id, r.rows) == (second, 1)
    r = select_stage(store, SelectOptions(stage="perception", out=tmp_path / "first", run=first))
    assert (r.run_id, r.rows) == (first, 1)
    with pytest.raises(PebrError, match="no run"):
        select_stage(store, SelectOptions(stage="warmup", out=tmp_path / "x", run="nope"))


@pytest.mark.slow
def test_export_trains_one_grpo_step(tmp_path, mixed):
    pytest.importorskip("trl")
    from datasets import load_dataset
    from trl import GRPOConfig, GRPOTrainer

    from train.tiny import build_tiny_model

    r = select_stage(mixed, SelectOptions(stage="perception", out=tmp_path / "p", cap=4))
    ds = load_dataset("parquet", data_files=str(r.out / "train-*-of-*.parquet"), split="train")
    model = build_tiny_model(tmp_path / "tiny")
    seen = []

    def reward(completions, answer, **kw):
        seen.extend(answer)
        return [float(len(c[0]["content"]) % 2) for c in completions]

    args = GRPOConfig(output_dir=str(tmp_path / "run"), use_cpu=True, bf16=False, per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=8, max_steps=1, report_to=[], save_strategy="no",
                      logging_steps=1)
    trainer = GRPOTrainer(model=str(model), reward_funcs=reward, args=args, train_dataset=ds)
    trainer.train()
    assert trainer.state.global_step == 1 and seen and set(seen) <= set(ds["answer"])


@pytest.mark.parametrize("mode", ["path", "embed"])
def test_images_column_for_any_number_of_images(tmp_path, mode):
    import duckdb

    from curate.export import images_sql

    lists = [[], ["images/ab/x.png"], ["images/ab/x.png", "images/cd/y.jpg"]]
    got = duckdb.connect().execute(f"SELECT {images_sql('i', tmp_path, mode)} FROM (SELECT unnest(?) AS i, "
                                   "generate_subscripts(?, 1) AS o) ORDER BY o", [lists, lists]).fetchall()
    prefix = "" if mode == "embed" else tmp_path.absolute().as_posix() + "/"
    assert [g for (g,) in got] == [[{"bytes": None, "path": prefix + p} for p in paths] for paths in lists]


def test_a_format_prompt_file_reaches_the_prompts_the_exports_and_training(tmp_path, mixed):
    from curate.select import select_options
    from generation.prompt import build_messages
    from train.data import load_rl

    prompt = tmp_path / "pebr_format.jinja"
    prompt.write_text("Describe, reason, answer.\n\n{{ content | trim }}\n")
    r = select_stage(mixed, select_options("perception", tmp_path / "p", {"format_prompt": str(prompt), "format": "easyr1",
                                                                          "cap": 3}))
    rows = _table(r.out).to_pylist()
    for row in rows:
        got = [{"role": m["role"], "content": [{k: v for k, v in part.items() if v is not None} for part in m["content"]]}
               for m in row["prompt"]]
        assert got == build_messages(row["problem"], 1, prompt.read_text())
        assert got[0]["content"][0]["text"].startswith("Describe, reason, answer.\n\n" + row["problem"].split("<image>")[0])
    manifest = json.loads((r.out / "manifest.json").read_text())
    assert manifest["format_prompt"]["text"] == prompt.read_text() and not manifest["format_prompt"]["default"]
    # EasyR1 applies its format prompt itself: the JSON keeps the problem, the template travels beside it.
    assert (r.out / "easyr1" / "format_prompt.jinja").read_text() == prompt.read_text()
    assert [rec["problem"] for rec in json.loads((r.out / "easyr1" / "train.json").read_text())] == [row["problem"] for row in rows]
    # Training reads the prompts as selected, and refuses to mix in another format prompt.
    ds, _ = load_rl(r.out, template=prompt.read_text())
    assert len(ds) == 3
    with pytest.raises(PebrError, match="another format prompt"):
        load_rl(r.out, template="Other: {{ content }}")


def test_warmup_leaves_out_reflection_responses_as_the_reference(tmp_path):
    specs = [{"qid": "h1", "k": 0, "n": 8, "response": "### Step 1: I think I have made a mistake. Let me RETHINK it."},
             {"qid": "h2", "k": 0, "n": 8, "response": "### The final answer is: 3"},
             {"qid": "h3", "k": 0, "n": 8}]
    store = build_store(tmp_path, specs)
    phrases = ["let me rethink it"]
    r = select_stage(store, SelectOptions(stage="warmup", out=tmp_path / "w", exclude_responses=phrases, format="sharegpt"))
    assert r.rows == 2 and r.steps == {"band": 3, "response": 2}
    drops = pq.read_table(r.out / "select_drops.parquet").to_pylist()
    assert [d["reason"] for d in drops] == ["response_excluded"]
    texts = [m["messages"][1]["content"] for m in json.loads((r.out / "sharegpt" / "warmup.json").read_text())]
    assert texts == ["### The final answer is: 3"] and r.skipped_no_response == 1
    # The GRPO stages use no gold response: the option adds no step there.
    rl = select_stage(store, SelectOptions(stage="reasoning", out=tmp_path / "r", exclude_responses=phrases, hard_max=0.0,
                                           easy_min=1.0, where="true"))
    assert "response" not in rl.steps
