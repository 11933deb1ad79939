"""GPU check: hf-engine scoring throughput and GRPO step time on a randomly initialised model of the
Qwen2.5-VL-3B shape (nothing is downloaded: the tokenizer is trained locally, the weights are random).

    python benchmarks/gpu_check.py --out /tmp/gpu [--shape 3b|tiny] [--samples 64] [--steps 3]

Writes results.json in --out with the device name. `--shape tiny` runs the same script on a CPU in a
minute, to check it before spending GPU time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

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


def build_model(out: Path, shape: str, corpus: list[str]) -> Path:
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
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    pixels = dict(min_pixels=576, max_pixels=802_816, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tok,
                                    video_processor=Qwen2VLVideoProcessor(**pixels), chat_template=CHAT_TEMPLATE)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main() -> None:
    import torch

    from curate.synth import generate_world
    from generation import (
        EngineOptions,
        Request,
        SamplingConfig,
        load_engine,
        rollout_seed,
    )
    from generation.prompt import build_messages
    from train.config import stage_config
    from train.grpo import run_stage

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--shape", choices=sorted(SHAPES), default="3b")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    world = args.out / "world"
    generate_world(world, n=max(args.samples, 64), seed=0, test_fraction=0.0, image_size=448)
    rows = [json.loads(line) for line in open(world / "train.jsonl")]
    t0 = time.time()
    model_dir = build_model(args.out / "model", args.shape, [r["problem"] + " " + r["response"] for r in rows])
    results = {"device": device, "shape": args.shape, "build_s": time.time() - t0}

    def save(phase: str) -> None:
        # Written after every phase, so a run stopped by a time limit still leaves the finished numbers.
        if torch.cuda.is_available():
            results.setdefault("peak_gpu_gib", {})[phase] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
        print(f"[gpu_check] {phase} done: {json.dumps(results.get(phase, results.get(phase + '_s')))}", flush=True)

    save("build")

    from PIL import Image

    cfg = SamplingConfig(n=8, temperature=1.2, top_p=0.99, max_new_tokens=args.max_new_tokens, seed=1)
    engine = load_engine("hf", str(model_dir), EngineOptions(batch_size=256, dtype="auto"), cfg)
    reqs = [Request(key=r["qid"], messages=build_messages(r["problem"]),
                    images=[Image.open(world / r["images"][0]).convert("RGB")], rollout_idx=list(range(8)),
                    seeds=[rollout_seed(1, r["qid"], j) for j in range(8)]) for r in rows[: args.samples]]
    t0 = time.time()
    out = engine.generate(reqs, cfg)
    dt = time.time() - t0
    toks = sum(c.n_tokens for o in out for c in o)
    results["hf_scoring"] = {"rollouts": sum(len(o) for o in out), "seconds": dt, "rollouts_per_s": sum(len(o) for o in out) / dt,
                             "tokens_per_s": toks / dt, "max_new_tokens": args.max_new_tokens}
    save("hf_scoring")
    del engine
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    grpo = stage_config("reasoning", overrides=dict(num_generations=8, micro_batch_size=8, update_batch_questions=8,
                                                    rollout_batch_questions=8, max_completion_length=args.max_new_tokens,
                                                    max_steps=args.steps, save_steps=10_000, gradient_checkpointing=True))
    t0 = time.time()
    r = run_stage(model_dir, world / "train.jsonl", args.out / "grpo", grpo)
    results["grpo"] = {"steps": r.steps, "seconds": r.seconds, "seconds_per_step": r.seconds / max(r.steps, 1),
                       "questions_per_step": 8, "group_size": 8, "wall_s": time.time() - t0}
    save("grpo")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
