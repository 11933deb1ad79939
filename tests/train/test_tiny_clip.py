"""The tiny CLIP trains on a small shapes world, reloads through transformers and ranks descriptions for the clip reward."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from curate.synth import generate_world
from rewards.clip import ClipReward
from rewards.config import RewardConfig
from schemas.io import sha256_file
from train.tiny_clip import (
    RECORD_NAME,
    TinyClipConfig,
    corrupt,
    describe,
    load_world,
    train_tiny_clip,
)

SMALL = dict(hidden_size=64, intermediate_size=128, num_heads=2, projection_dim=32)
"""Narrower towers than the default, so the tests train in seconds."""
FAST = dict(epochs=20, batch_size=32, heldout_fraction=0.1, **SMALL)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate_world(out, n=400, seed=5, test_fraction=0.2, image_size=84)
    return out


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("clip") / "model"
    phases = []
    record = train_tiny_clip(world / "train.jsonl", out, TinyClipConfig(seed=3, **FAST),
                             progress=lambda phase, done, total: phases.append(phase))
    assert {"prepare", "train", "measure"} <= set(phases)
    return out, record


def test_loads_through_transformers(trained):
    from transformers import AutoProcessor, CLIPModel

    out, _ = trained
    model = CLIPModel.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    tok = processor.tokenizer
    assert model.config.vision_config.image_size == 84
    assert processor.image_processor.crop_size == {"height": 84, "width": 84}
    # CLIP pools the text at the first end token; an end id of 2 would switch it to the legacy argmax pooling.
    assert model.config.text_config.eos_token_id == tok.eos_token_id != 2
    ids = tok(["2 objects: small red circle top left."])["input_ids"][0]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids


def test_reward_prefers_correct_descriptions(trained, world):
    out, record = trained
    cfg = RewardConfig(clip_model_path=str(out), clip_threshold=record["suggested_threshold"],
                       clip_image_size=84, clip_text_max_tokens=64, clip_device="cpu")
    reward = ClipReward.from_config(cfg)
    rows = [json.loads(line) for line in (world / "test.jsonl").read_text().splitlines()]  # never trained on
    images = [[str(world / r["images"][0])] for r in rows]
    gold = [r["response"] for r in rows]
    shuffled = gold[1:] + gold[:1]
    right, wrong = np.mean(reward(gold, images=images)), np.mean(reward(shuffled, images=images))
    assert right > wrong + 0.1, (right, wrong)

    held, _ = load_world(world / "test.jsonl")
    pictures = [r["image"] for r in held]
    from rewards.clip import load_image

    pictures = [load_image(p, 84) for p in pictures]
    exact = np.asarray(reward.similarities([r["caption"] for r in held], pictures))
    rng = np.random.default_rng(0)
    colour = np.asarray(reward.similarities([describe(corrupt(r["objects"], "color", rng)) for r in held], pictures))
    assert exact.mean() > colour.mean(), (exact.mean(), colour.mean())


def test_run_record(trained, world):
    out, record = trained
    saved = json.loads((out / RECORD_NAME).read_text())
    assert saved == record
    assert saved["seed"] == 3 and saved["config"]["epochs"] == FAST["epochs"]
    assert saved["data_sha256"] == sha256_file(world / "train.jsonl")
    assert saved["records"] == saved["images"] == 320
    assert saved["train_images"] + saved["heldout_images"] == 320
    sim = saved["similarity"]
    assert sim["matching"]["mean"] > sim["shuffled"]["mean"]
    assert saved["suggested_threshold"] == sim["matching"]["q90"]
    assert saved["reward_config"]["clip_image_size"] == 84
    assert saved["seconds"]["total"] > 0


def test_same_seed_same_weights(world, tmp_path):
    from safetensors.torch import load_file

    cheap = dict(epochs=1, batch_size=64, **SMALL)
    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train_tiny_clip(world / "train.jsonl", runs[name], TinyClipConfig(seed=seed, **cheap))
    a, b, c = (load_file(runs[n] / "model.safetensors") for n in "abc")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_corrupt_changes_one_thing():
    from train.tiny_clip import Obj

    scene = [Obj("circle", "red", "small", 0, 0), Obj("star", "blue", "large", 1, 1)]
    rng = np.random.default_rng(1)
    assert len(corrupt(scene, "missing", rng)) == 1
    assert len(corrupt(scene, "extra", rng)) == 3
    for kind in ("color", "shape", "size", "position"):
        changed = corrupt(scene, kind, rng)
        assert len(changed) == 2 and describe(changed) != describe(scene), kind
    with pytest.raises(ValueError):
        corrupt(scene, "texture", rng)


def test_world_language_matches_curate(world):
    from curate import synth
    from train import tiny_clip

    assert (tiny_clip.SHAPES, tiny_clip.COLORS, tiny_clip.SIZES) == (synth.SHAPES, list(synth.COLORS), synth.SIZES)
    assert (tiny_clip.ROWS, tiny_clip.COLS, tiny_clip.GRID) == (synth.ROWS, synth.COLS, synth.GRID)
    rows, n = load_world(world / "train.jsonl")
    assert n == len(rows) == 320
    assert all(r["objects"] and describe(r["objects"]) == r["caption"] for r in rows)  # every scene re-described exactly


def test_the_command_reads_the_recipe_and_prints_the_reward_settings(world, tmp_path):
    import subprocess
    import sys

    recipe = tmp_path / "r.yaml"
    recipe.write_text("clip:\n  epochs: 1\n  seed: 4\n  hidden_size: 64\n  intermediate_size: 128\n  num_heads: 2\n")
    out = tmp_path / "clip"
    r = subprocess.run([sys.executable, "-m", "train.cli", "init-clip", "--data", world / "train.jsonl", "--out", out,
                        "--recipe", recipe, "--set", "projection_dim=32"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    record = json.loads((out / RECORD_NAME).read_text())
    assert (record["seed"], record["config"]["epochs"], record["config"]["projection_dim"]) == (4, 1, 32)
    assert record["reward_config"]["clip_model_path"] == str(out.resolve()) and "clip_threshold" in r.stdout + r.stderr
    bad = subprocess.run([sys.executable, "-m", "train.cli", "init-clip", "--data", world / "train.jsonl",
                          "--out", tmp_path / "bad", "--set", "epoch=1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown setting(s) ['epoch']" in bad.stderr and "Traceback" not in bad.stderr
