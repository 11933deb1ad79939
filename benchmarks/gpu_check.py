"""GPU check: plain `generate` against the fast paths (a static KV cache, its decode step compiled) for hf-engine
scoring and for GRPO's rollouts, side by side in one run, on a randomly initialised model of the Qwen2.5-VL-3B
shape (nothing is downloaded: the tokenizer is trained locally, the weights are random).

    python benchmarks/gpu_check.py            # one H100 / H200, under 8 minutes (scripts/gpu_check.sh: no network)
    python benchmarks/gpu_check.py --smoke    # the same code paths on a CPU with a tiny model, in about a minute

Scoring: 32 questions x 8 rollouts in one batch of 256 sequences, up to 256 new tokens, per mode: rollouts/s,
generated tokens/s, peak GPU memory, the share of the bandwidth bound (each decode step reads the language
model's weights once and every row's KV cache), and how many rollouts are token for token those of plain
`generate` (same seeds). GRPO: the reasoning stage, 8 questions x G 8, 256 completion tokens, each step timed,
with TRL's plain generate and with the fast mode. The figures go to --json (default $OUT/gpu_check.json when
OUT is set, else runs/gpu_check.json), rewritten after every phase, so a run stopped by a time limit keeps what
it finished; a phase that fails is recorded with its error and the next one runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SHAPES = {
    # Qwen2.5-VL-3B-Instruct's config.json, vocabulary cut to the local tokenizer's size.
    "3b": dict(text=dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                         num_key_value_heads=2, mrope_section=[16, 24, 24]),
               vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                           window_size=112, fullatt_block_indexes=[7, 15, 23, 31])),
    "tiny": dict(text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, mrope_section=[4, 6, 6]),
                 vision=dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=2, out_hidden_size=128,
                             window_size=112, fullatt_block_indexes=[1])),
}

HBM_TBPS = [("H200", 4.8), ("H100 NVL", 3.9), ("H100 PCIe", 2.0), ("H100", 3.35), ("GH200", 4.0),
            ("A100-SXM4-80GB", 2.039), ("A100 80GB PCIe", 1.935), ("A100", 1.555), ("L40S", 0.864)]
"""Memory bandwidth (TB/s) by a substring of torch's device name, first match wins (vendor data sheets)."""


def hbm_tbps(device_name: str) -> float | None:
    """The data-sheet memory bandwidth of a GPU, or None when unknown (a CPU, an unlisted card).

    >>> hbm_tbps("NVIDIA H100 80GB HBM3"), hbm_tbps("NVIDIA H200"), hbm_tbps("cpu")
    (3.35, 4.8, None)
    """
    return next((tbps for key, tbps in HBM_TBPS if key in device_name), None)


def bandwidth_bound(rows: int, weight_bytes: int, kv_bytes_per_token: int, mean_context: float, tbps: float) -> float:
    """Generated tokens/s no engine can beat: every decode step reads the weights once and each row's KV cache
    (``mean_context`` tokens on average), and makes one token per row. Prefill and the vision tower are extra.

    >>> round(bandwidth_bound(256, 7e9, 36_864, 428, 4.8))  # 3B, batch 256, 300-token prompt, 256 new tokens
    111313
    """
    return rows * tbps * 1e12 / (weight_bytes + rows * kv_bytes_per_token * mean_context)


def build_model(out: Path, shape: str, corpus: list[str], image_pixels: int) -> Path:
    """A random Qwen2.5-VL of the given shape, saved with a locally trained tokenizer (initialised on the GPU
    when there is one: a 3B model initialises there in seconds)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    from train.tiny import CHAT_TEMPLATE, train_tokenizer

    tok = train_tokenizer(corpus, vocab_size=4096)
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>",
                                                      "<|vision_start|>", "<|vision_end|>")}
    s = SHAPES[shape]
    text = dict(s["text"])
    mrope = text.pop("mrope_section")
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), max_position_embeddings=32768, rope_parameters={
            "rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": mrope},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], **text),
        vision_config=dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, **s["vision"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    with torch.device("cuda" if cuda else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.bfloat16 if cuda else torch.float32)
    pixels = dict(min_pixels=576, max_pixels=image_pixels, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=CHAT_TEMPLATE)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    del model
    return out


class Check:
    """The run's figures, written to JSON after every phase; phases past the time limit are skipped."""

    def __init__(self, path: Path, limit_s: float, header: dict):
        self.path, self.limit_s, self.started = path, limit_s, time.monotonic()
        self.results: dict = {**header, "phases": {}}

    def run(self, name: str, fn) -> dict | None:
        import torch

        elapsed = time.monotonic() - self.started
        if elapsed > self.limit_s:
            self.results["phases"][name] = {"skipped": f"time limit: {elapsed:.0f} s > {self.limit_s:.0f} s"}
            self.save(name)
            return None
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.monotonic()
        try:
            out = fn()
        except Exception as exc:  # recorded, not fatal: the other phases still measure
            out = {"error": f"{type(exc).__name__}: {exc}"[:2000], "traceback": traceback.format_exc()[-4000:]}
        out["wall_s"] = time.monotonic() - t0
        if torch.cuda.is_available():
            out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.results["phases"][name] = out
        self.save(name)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return out

    def save(self, phase: str) -> None:
        self.results["elapsed_s"] = time.monotonic() - self.started
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=2))
        tmp.replace(self.path)
        figures = self.results["phases"].get(phase) or self.results.get(phase) or {}
        brief = {k: v for k, v in figures.items() if k not in ("traceback", "step_seconds")}
        print(f"[gpu_check] {phase}: {json.dumps(brief)}", flush=True)


def _language_model_bytes(model) -> tuple[int, int]:
    """Bytes of the weights one decode step reads (all but the vision tower) and KV-cache bytes per token."""
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if "visual" not in n)
    text = model.config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    element = next(model.parameters()).element_size()
    return weights, 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * element


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(engine, requests, cfg) -> tuple[list, float]:
    _sync()
    t = time.monotonic()
    results = engine.generate(requests, cfg)
    _sync()
    return results, time.monotonic() - t


def score_phase(model_dir: Path, mode: str, requests: list, cfg, args, texts: dict, engines: dict) -> dict:
    """Load the hf engine in `mode`, generate every rollout (twice for a compiled mode: the first call compiles),
    and measure. `texts` maps a mode to its rollouts' texts by (sample, seed): this mode's are added, and
    compared with plain generate's when those are there. With ``--repeats`` over 1 the engine is kept in
    `engines` for the interleaved phase."""
    import torch

    from generation import EngineOptions, load_engine
    from generation.tokens import chat_prompt

    t0 = time.monotonic()
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    engine = load_engine("hf", str(model_dir), EngineOptions(batch_size=args.batch_size, dtype=dtype, hf_mode=mode), cfg)
    out: dict = {"mode": engine.mode, "load_s": time.monotonic() - t0, "dtype": dtype,
                 "attention": engine.model.config._attn_implementation}
    if mode == "compile":
        _, out["first_call_s"] = _timed(engine, requests, cfg)  # compilation (and CUDA graph capture) included
    else:
        from dataclasses import replace

        engine.generate(requests[:1], replace(cfg, max_new_tokens=4))  # kernels loaded, caches warmed
    results, seconds = _timed(engine, requests, cfg)
    rollouts = sum(len(r) for r in results)
    tokens = sum(c.n_tokens for r in results for c in r)
    texts[mode] = {(req.key, seed): c.text for req, comps in zip(requests, results) for seed, c in zip(req.seeds, comps)}
    weights, kv_per_token = _language_model_bytes(engine.model)
    req = requests[0]
    prompt = len(engine.processor(text=[chat_prompt(engine.processor, req.messages)], images=req.images)["input_ids"][0])
    mean_new = tokens / rollouts
    out.update(rollouts=rollouts, seconds=seconds, rollouts_per_s=rollouts / seconds, tokens=tokens,
               tokens_per_s=tokens / seconds, mean_new_tokens=mean_new, prompt_tokens=prompt,
               batch_rows=min(args.batch_size, rollouts), language_model_gib=weights / 2**30)
    tbps = args.bandwidth_tbps or hbm_tbps(args.device)
    if tbps:
        bound = bandwidth_bound(out["batch_rows"], weights, kv_per_token, prompt + mean_new / 2, tbps)
        out.update(bandwidth_tbps=tbps, bound_tokens_per_s=bound, bound_share=out["tokens_per_s"] / bound)
    reference = texts.get("generate")
    if reference and mode != "generate":
        out["identical_to_generate"] = sum(texts[mode].get(k) == v for k, v in reference.items()) / len(reference)
    if args.repeats > 1:
        engines[mode] = engine
    return out


def interleaved_phase(engines: dict, requests: list, cfg, repeats: int) -> dict:
    """The kept engines take turns, `repeats` rounds of one scoring call each, so that a machine whose speed
    drifts (a shared CPU) slows every mode alike; per mode the median call and its rates."""
    seconds: dict[str, list[float]] = {mode: [] for mode in engines}
    counts = {}
    for _ in range(repeats):
        for mode, engine in engines.items():
            results, t = _timed(engine, requests, cfg)
            seconds[mode].append(t)
            counts[mode] = (sum(len(r) for r in results), sum(c.n_tokens for r in results for c in r))
    out = {}
    for mode, ts in seconds.items():
        median = sorted(ts)[len(ts) // 2]
        out[mode] = {"seconds_each": ts, "median_s": median, "rollouts_per_s": counts[mode][0] / median,
                     "tokens_per_s": counts[mode][1] / median}
    engines.clear()
    return {"repeats": repeats, "modes": out}


def grpo_phase(model_dir: Path, world: Path, work: Path, mode: str, args) -> dict:
    """Build the reasoning stage with `mode` for its rollouts and time each optimizer step (nothing saved)."""
    from transformers import TrainerCallback

    from train.config import stage_config
    from train.grpo import build_stage

    steps: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.monotonic()

        def on_step_end(self, args, state, control, **kw):
            steps.append(time.monotonic() - self.t)
            control.should_save = False  # a speed check: no checkpoint (7 GB for the 3B shape) at the last step

    q, g = (2, 4) if args.smoke else (8, 8)
    cfg = stage_config("reasoning", overrides=dict(
        num_generations=g, micro_batch_size=g, update_batch_questions=q, rollout_batch_questions=q,
        max_completion_length=args.max_new_tokens, max_steps=args.steps, save_steps=10_000,
        gradient_checkpointing=not args.smoke, generation_mode=mode, max_pixels=args.image_pixels))
    t0 = time.monotonic()
    stage = build_stage(model_dir, world / "train.jsonl", work / f"grpo-{mode}", cfg, callbacks=[StepTimer()])
    setup = time.monotonic() - t0
    stage.trainer.train()
    later = steps[1:]
    out = {"mode": stage.generation_mode, "setup_s": setup, "step_seconds": steps, "first_step_s": steps[0] if steps else None,
           "seconds_per_step_after_first": sum(later) / len(later) if later else None, "questions_per_step": q,
           "group_size": g, "completion_tokens": args.max_new_tokens}
    del stage
    return out


def _ratio(a, b) -> float | None:
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def summary(phases: dict, fast: str) -> dict:
    """Fast path against plain generate, for the figures both runs produced."""
    s = phases.get(f"scoring_{fast}", {})
    p = phases.get("scoring_generate", {})
    gf = phases.get(f"grpo_{fast}", {})
    gp = phases.get("grpo_generate", {})
    turns = phases.get("scoring_interleaved", {}).get("modes", {})
    interleaved = {mode: r["tokens_per_s"] for mode, r in turns.items()}
    if interleaved:
        interleaved["speedup"] = _ratio(interleaved.get(fast), interleaved.get("generate"))
    return {"fast_mode": fast, "scoring_interleaved_tokens_per_s": interleaved or None,
            "scoring_tokens_per_s": {"generate": p.get("tokens_per_s"), fast: s.get("tokens_per_s"),
                                     "speedup": _ratio(s.get("tokens_per_s"), p.get("tokens_per_s"))},
            "scoring_bound_share": {"generate": p.get("bound_share"), fast: s.get("bound_share")},
            "grpo_seconds_per_step_after_first": {
                "generate": gp.get("seconds_per_step_after_first"), fast: gf.get("seconds_per_step_after_first"),
                "speedup": _ratio(gp.get("seconds_per_step_after_first"), gf.get("seconds_per_step_after_first"))}}


def _table(phases: dict) -> str:
    lines = [f"{'phase':<18} {'tokens/s':>10} {'rollouts/s':>11} {'bound':>7} {'same':>6} {'s/step':>8} {'peak GiB':>9} "
             f"{'wall s':>7}"]
    for name, r in phases.items():
        if "modes" in r:
            lines += [f"{'  in turns: ' + mode:<18} {m['tokens_per_s']:>10,.0f} {m['rollouts_per_s']:>11.1f}"
                      for mode, m in r["modes"].items()]
            continue
        if "skipped" in r or "error" in r:
            lines.append(f"{name:<18} {r.get('skipped') or r.get('error', '')[:60]}")
            continue

        def f(key, fmt):
            v = r.get(key)
            return format(v, fmt) if isinstance(v, (int, float)) else "-"
        lines.append(f"{name:<18} {f('tokens_per_s', ',.0f'):>10} {f('rollouts_per_s', '.1f'):>11} "
                     f"{f('bound_share', '.1%'):>7} {f('identical_to_generate', '.0%'):>6} "
                     f"{f('seconds_per_step_after_first', '.1f'):>8} {f('peak_gpu_gib', '.1f'):>9} {f('wall_s', '.0f'):>7}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_json = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else REPO / "runs" / "gpu_check.json"
    p.add_argument("--json", type=Path, default=default_json, help="where the figures go (default: %(default)s)")
    p.add_argument("--work", type=Path, default=None, help="model, world and checkpoints (default: a temporary folder, removed)")
    p.add_argument("--smoke", action="store_true", help="tiny model and sizes: the code paths on a CPU in about a minute")
    p.add_argument("--shape", choices=sorted(SHAPES), default=None, help="model shape (default: 3b, tiny with --smoke)")
    p.add_argument("--fast-mode", choices=("static", "compile"), default=None,
                   help="the fast path to compare (default: compile; static with --smoke, where compiling takes minutes)")
    p.add_argument("--samples", type=int, default=None, help="questions scored, 8 rollouts each (default 32; 3 with --smoke)")
    p.add_argument("--batch-size", type=int, default=256, help="hf engine sequences per forward pass")
    p.add_argument("--image-size", type=int, default=None, help="shapes-world image edge (default 448: 256 image "
                   "tokens a question; 112 with --smoke)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 256; 8 with --smoke")
    p.add_argument("--repeats", type=int, default=1, help="over 1: after the scoring phases, this many rounds in "
                   "which every mode scores once, in turns (for machines whose speed drifts)")
    p.add_argument("--steps", type=int, default=2, help="GRPO optimizer steps per mode (the first includes compiling)")
    p.add_argument("--time-limit-s", type=float, default=400, help="phases that would start later are skipped")
    p.add_argument("--bandwidth-tbps", type=float, default=None, help="memory bandwidth (default: by device name)")
    p.add_argument("--also-static", action=argparse.BooleanOptionalAction, default=None,
                   help="score with the uncompiled static cache too, last (default: on GPUs when the fast mode is compile)")
    args = p.parse_args(argv)

    import torch

    from curate.synth import generate_world
    from generation import Request, SamplingConfig, rollout_seed
    from generation.prompt import build_messages

    smoke = args.smoke
    args.shape = args.shape or ("tiny" if smoke else "3b")
    args.fast_mode = args.fast_mode or ("static" if smoke else "compile")
    args.samples = args.samples or (3 if smoke else 32)
    args.max_new_tokens = args.max_new_tokens or (8 if smoke else 256)
    args.image_size = args.image_size or (112 if smoke else 448)
    args.image_pixels = 112 * 112 if smoke else 802_816
    args.device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    also_static = args.also_static if args.also_static is not None else (
        torch.cuda.is_available() and args.fast_mode == "compile")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)

    import transformers
    import trl

    check = Check(args.json, args.time_limit_s, {
        "device": args.device, "shape": args.shape, "smoke": smoke, "fast_mode": args.fast_mode,
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
                     "trl": trl.__version__},
        "settings": {"samples": args.samples, "rollouts_per_sample": 8, "batch_size": args.batch_size,
                     "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "grpo_steps": args.steps, "image_size": args.image_size,
                     "image_pixels": args.image_pixels}})
    try:
        world = work / "world"
        model_dir = work / "model"

        def build() -> dict:
            image = args.image_size
            generate_world(world, n=max(args.samples, 16 if smoke else 64), seed=0, test_fraction=0.0, image_size=image)
            rows = [json.loads(line) for line in open(world / "train.jsonl")]
            build_model(model_dir, args.shape, [r["problem"] + " " + r["response"] for r in rows], args.image_pixels)
            return {"image_size": image}

        check.run("build", build)
        from PIL import Image

        rows = [json.loads(line) for line in open(world / "train.jsonl")][: args.samples]
        cfg = SamplingConfig(n=8, temperature=1.2, top_p=0.99, max_new_tokens=args.max_new_tokens, seed=1,
                             max_pixels=args.image_pixels)
        requests = [Request(key=r["qid"], messages=build_messages(r["problem"]),
                            images=[Image.open(world / r["images"][0]).convert("RGB")], rollout_idx=list(range(8)),
                            seeds=[rollout_seed(1, r["qid"], j) for j in range(8)]) for r in rows]
        texts: dict = {}
        engines: dict = {}
        scoring = ["generate", args.fast_mode] + (["static"] if also_static and args.fast_mode != "static" else [])
        late = scoring[2:] if args.repeats == 1 else []  # the static cache alone is the least needed figure: last
        for mode in scoring[: len(scoring) - len(late)]:
            check.run(f"scoring_{mode}", lambda: score_phase(model_dir, mode, requests, cfg, args, texts, engines))
        if args.repeats > 1:
            check.run("scoring_interleaved", lambda: interleaved_phase(engines, requests, cfg, args.repeats))
        check.run("grpo_generate", lambda: grpo_phase(model_dir, world, work, "generate", args))
        check.run(f"grpo_{args.fast_mode}", lambda: grpo_phase(model_dir, world, work, args.fast_mode, args))
        for mode in late:
            check.run(f"scoring_{mode}", lambda: score_phase(model_dir, mode, requests, cfg, args, texts, engines))
        check.results["summary"] = summary(check.results["phases"], args.fast_mode)
        check.save("summary")
        print(_table(check.results["phases"]), flush=True)
        print(f"[gpu_check] figures in {args.json}", flush=True)
        return check.results
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
