"""Held-out accuracy of a model, per capability and source (the paper validates at temperature 0.5, n 1).

Generation goes through the hf engine of `generation`, the one `curate score` uses: the same prompt,
token rules, pixel bounds and per-rollout seeds (a question's seed derives from the eval seed and its
sample id), so a model answers a question here exactly as scoring with the same seed would. The
answers are graded by the accuracy reward that curation and training use.
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


def evaluate(model_dir: Path, data: Path, cfg: EvalConfig, image_root: Path | None = None, progress=None,
             responses_out: Path | None = None, engine=None) -> EvalResult:
    """Answer every record of `data` once with the model in `model_dir` and grade the answers.

    `progress(advance, total=None)` reports prompts; `engine` replaces the hf engine (tests).
    """
    from generation import EngineOptions, Request, load_engine, rollout_seed
    from rewards import accuracy_reward, format_reward
    from schemas.errors import PebrError
    from train.data import format_prompt_text, load_rl

    if engine is None and not Path(model_dir).is_dir():
        raise PebrError(f"--model {model_dir}: not a model directory")
    ds, _ = load_rl(data, image_root, format_prompt_text(cfg.format_prompt))
    if cfg.limit:
        ds = ds.select(range(min(cfg.limit, len(ds))))
    sampling = cfg.sampling()
    engine = engine or load_engine("hf", str(model_dir), EngineOptions(batch_size=cfg.batch_size, dtype=cfg.dtype,
                                                                     hf_mode=cfg.hf_mode), sampling)
    rows = list(ds)  # iterating decodes the Image feature to PIL images
    if progress:
        progress(0, len(rows))
    texts: list[str] = []
    for start in range(0, len(rows), cfg.batch_size):
        batch = rows[start:start + cfg.batch_size]
        requests = [Request(key=r["sample_id"], messages=r["prompt"], images=[im.convert("RGB") for im in r["images"]],
                            rollout_idx=[0], seeds=[rollout_seed(sampling.seed, r["sample_id"], 0)]) for r in batch]
        texts.extend(completions[0].text for completions in engine.generate(requests, sampling))
        if progress:
            progress(len(batch))
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
