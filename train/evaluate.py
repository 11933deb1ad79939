"""Held-out accuracy of a model, per capability and source (the paper validates at temperature 0.5, n 1).

Generation is batched with transformers (many prompts per forward), then graded by the same
accuracy reward that curation and training use.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from train.config import EvalConfig


@dataclass
class EvalResult:
    model: str
    data: str
    n: int
    accuracy: float
    format: float
    by_capability: dict[str, dict] = field(default_factory=dict)
    by_source: dict[str, dict] = field(default_factory=dict)
    config: dict = field(default_factory=dict)


def generate(model, processor, prompts: list[list[dict]], images: list[list], cfg: EvalConfig, progress=None) -> list[tuple[str, int]]:
    """Batched generation: returns (text, generated token count) per prompt."""
    import torch

    from train.common import vision_token_ids

    tok = processor.tokenizer
    eos = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>") if t in tok.get_vocab()]
    eos = eos or [tok.eos_token_id]
    out: list[tuple[str, int]] = []
    torch.manual_seed(cfg.seed)
    model.eval()
    if progress:
        progress(0, len(prompts))
    for start in range(0, len(prompts), cfg.batch_size):
        batch_p = prompts[start:start + cfg.batch_size]
        batch_i = images[start:start + cfg.batch_size]
        texts = [processor.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in batch_p]
        flat = [im for ims in batch_i for im in ims] or None
        enc = processor(text=texts, images=flat, return_tensors="pt", padding=True, padding_side="left")
        enc = enc.to(model.device)
        kwargs = {"max_new_tokens": cfg.max_new_tokens, "eos_token_id": eos, "pad_token_id": tok.pad_token_id,
                  "suppress_tokens": vision_token_ids(processor)}
        if cfg.temperature > 0:
            kwargs.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.inference_mode():
            gen = model.generate(**enc, **kwargs)
        new = gen[:, enc["input_ids"].shape[1]:]
        for row in new:
            ids = row.tolist()
            n = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
            out.append((tok.decode(ids[:n], skip_special_tokens=True), n))
        if progress:
            progress(len(batch_p))
    return out


def evaluate(model_dir: Path, data: Path, cfg: EvalConfig, image_root: Path | None = None, progress=None,
             responses_out: Path | None = None) -> EvalResult:
    from rewards import accuracy_reward, format_reward
    from train.common import load_vlm
    from train.data import load_rl

    ds, _ = load_rl(data, image_root)
    if cfg.limit:
        ds = ds.select(range(min(cfg.limit, len(ds))))
    model, processor = load_vlm(model_dir)
    rows = list(ds)  # iterating decodes the Image feature to PIL images
    gens = generate(model, processor, [r["prompt"] for r in rows], [r["images"] for r in rows], cfg, progress)
    texts = [g[0] for g in gens]
    acc = accuracy_reward(texts, answer=[r["answer"] for r in rows])
    fmt = format_reward(texts)
    groups: dict[str, dict[str, list[float]]] = {"capability": defaultdict(list), "source": defaultdict(list)}
    for r, a in zip(rows, acc, strict=True):
        groups["capability"][r["capability"] or "unknown"].append(a)
        groups["source"][r["source"] or "unknown"].append(a)

    def summary(d):
        return {k: {"n": len(v), "accuracy": sum(v) / len(v)} for k, v in sorted(d.items())}

    if responses_out:
        with open(responses_out, "w") as f:
            for r, t, a in zip(rows, texts, acc, strict=True):
                f.write(json.dumps({"sample_id": r["sample_id"], "capability": r["capability"], "answer": r["answer"],
                                    "response": t, "accuracy": a}) + "\n")
    return EvalResult(model=str(model_dir), data=str(data), n=len(rows), accuracy=sum(acc) / len(acc),
                      format=sum(fmt) / len(fmt), by_capability=summary(groups["capability"]),
                      by_source=summary(groups["source"]), config=asdict(cfg))
