"""Warm-up SFT, GRPO per stage and evaluation on the tiny model with the real rewards (CPU, seconds each)."""

from __future__ import annotations

import json

import pytest

from train.config import (
    EvalConfig,
    WarmupConfig,
    load_recipe,
    parse_overrides,
    stage_config,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from curate.synth import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, n=48, seed=3, test_fraction=0.25)
    return out


def _tiny_grpo(stage, max_steps=2):
    return stage_config(stage, overrides=dict(num_generations=4, micro_batch_size=4, update_batch_questions=2,
                                              rollout_batch_questions=2, max_completion_length=24, learning_rate=1e-3,
                                              max_steps=max_steps, save_steps=1))


def test_short_warmup_lowers_the_loss_and_records_provenance(tmp_path, tiny_model, world):
    from train.warmup import run_warmup

    # records without a gold response are reported, not trained on
    rows = [json.loads(x) for x in (world / "train.jsonl").read_text().splitlines()]
    rows[0].pop("response")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "images").symlink_to(world / "images")
    cfg = WarmupConfig(learning_rate=3e-3, epochs=1, batch_size=6, freeze_vision=False, logging_steps=1, max_steps=6,
                       warmup_ratio=0.0, lr_scheduler_type="constant")
    r = run_warmup(tiny_model, data, tmp_path / "out", cfg)
    assert r.skipped == {"no_gold_response": 1} and r.rows == len(rows) - 1
    assert r.last_loss < r.first_loss
    record = json.loads((tmp_path / "out" / "pebr_run.json").read_text())
    assert record["stage"] == "warmup" and record["config"]["learning_rate"] == 3e-3 and record["versions"]["trl"]
    from transformers import AutoModelForImageTextToText

    AutoModelForImageTextToText.from_pretrained(tmp_path / "out")


@pytest.mark.parametrize("stage", ["perception", "reasoning"])
def test_one_grpo_step_per_stage_with_the_real_rewards(tmp_path, tiny_model, world, stage):
    from train.grpo import run_stage

    r = run_stage(tiny_model, world / "test.jsonl", tmp_path / stage, _tiny_grpo(stage))
    assert r.steps == 2
    names = {k.split("/")[1] for k in r.rewards if k.startswith("rewards/")}
    expected = {"keyword", "format", "length", "accuracy"} if stage == "perception" else {"accuracy", "format"}
    assert names == expected
    assert r.observed_zero_adv is not None and 0.0 <= r.observed_zero_adv <= 1.0
    signal = json.loads((tmp_path / stage / "signal.json").read_text())
    assert signal["stage"] == stage and len(signal["observed_per_step"]) >= 1
    # the training reward per rollout batch, total and per function, one value per logged batch
    per_step = signal["rewards_per_step"]
    assert len(per_step["reward"]) == len(signal["observed_per_step"])
    assert {k.split("/")[1] for k in per_step if k.startswith("rewards/")} == expected
    record = json.loads((tmp_path / stage / "pebr_run.json").read_text())
    assert record["config"]["dual_clip"] == 3.0 and record["config"]["beta"] == 0.01


def test_resume_from_a_checkpoint(tmp_path, tiny_model, world):
    from train.grpo import run_stage

    out = tmp_path / "run"
    run_stage(tiny_model, world / "test.jsonl", out, _tiny_grpo("reasoning"))
    assert (out / "checkpoint-2").is_dir()
    resumed = run_stage(tiny_model, world / "test.jsonl", out, _tiny_grpo("reasoning", max_steps=3), resume=True)
    assert resumed.steps == 3
    assert (out / "checkpoint-3").is_dir()


def test_eval_on_a_hand_made_set(tmp_path, tiny_model):
    """The tiny random model answers nothing right; a set whose answers are what it says scores 1.0."""
    from PIL import Image

    from train.evaluate import evaluate

    Image.new("RGB", (56, 56), "red").save(tmp_path / "a.png")
    rows = [{"qid": f"q{i}", "problem": "<image>What colour?", "answer": "red", "images": ["a.png"],
             "capability": "perception_fine" if i % 2 else "reasoning", "source": "hand"} for i in range(4)]
    data = tmp_path / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = EvalConfig(max_new_tokens=8, batch_size=3)
    responses = tmp_path / "responses.jsonl"
    r = evaluate(tiny_model, data, cfg, responses_out=responses)
    assert r.n == 4 and set(r.by_capability) == {"perception_fine", "reasoning"}
    got = [json.loads(x) for x in responses.read_text().splitlines()]
    # grade the greedy answers back as the ground truth: accuracy must then be 1.0 everywhere
    for row, g in zip(rows, got, strict=True):
        row["answer"] = g["response"].strip() or "empty"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    again = evaluate(tiny_model, data, cfg)
    nonempty = sum(1 for g in got if g["response"].strip())
    assert again.accuracy == pytest.approx(nonempty / 4)
    assert r.accuracy == 0.0


def test_recipes_parse_and_overrides_apply():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "pipelines"
    for name in ("pebr.yaml", "demo.yaml"):
        recipe = load_recipe(root / name)
        for stage in ("warmup", "perception", "reasoning"):
            stage_config(stage, recipe)
    pebr = load_recipe(root / "pebr.yaml")
    s1, s2 = stage_config("perception", pebr), stage_config("reasoning", pebr)
    assert (s1.rollout_batch_questions, s1.update_batch_questions, s1.epochs) == (560, 112, 1.0)
    assert (s2.rollout_batch_questions, s2.update_batch_questions, s2.epochs) == (512, 128, 2.0)
    assert stage_config("reasoning", pebr, parse_overrides(["beta=0.02"])).beta == 0.02
    from schemas.errors import PebrError

    with pytest.raises(PebrError, match="unknown setting"):
        stage_config("reasoning", {}, {"betta": 1})


def test_a_missing_image_is_one_clear_error(tmp_path):
    from schemas.errors import PebrError
    from train.data import load_rl

    rec = {"problem": "<image>How many?", "answer": "3", "images": [{"bytes": None, "path": str(tmp_path / "gone.png")}]}
    (tmp_path / "d.jsonl").write_text(json.dumps(rec) + "\n")
    with pytest.raises(PebrError, match="gone.png not found"):
        load_rl(tmp_path / "d.jsonl")


def test_the_eval_command_writes_its_json_and_responses_into_new_folders(tmp_path, tiny_model, world):
    import subprocess
    import sys

    out = tmp_path / "runs" / "eval"  # neither folder exists yet
    r = subprocess.run([sys.executable, "-m", "train.cli", "eval", "--model", tiny_model, "--data", world / "test.jsonl",
                        "--limit", "3", "--max-new-tokens", "4", "--json", out / "m.json", "--responses", out / "m.jsonl"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "m.json").read_text())["n"] == 3
    got = [json.loads(x) for x in (out / "m.jsonl").read_text().splitlines()]
    assert len(got) == 3 and {"sample_id", "response", "accuracy", "capability"} <= set(got[0])
