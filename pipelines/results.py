"""The demo's and the experiment's results: per-question scores, comparisons, curves and the report page.

Every model answers the same held-out questions (the evaluation world). A question's scores are its
answer's accuracy and the description F1 of its response against the stored scene
(`curate.synth.description_f1`). Comparisons between models are paired per question
(`pipelines.compare.paired_bootstrap`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from pipelines.compare import fmt_comparison, paired_bootstrap
from schemas import CAPABILITIES

PERCEPTION = tuple(c for c in CAPABILITIES if c.startswith("perception"))
COMPARISONS = {
    "stage1_vs_warmup": ("stage1", "warmup"),
    "stage2_vs_warmup": ("stage2", "warmup"),
    "stage2_vs_stage1": ("stage2", "stage1"),
    "two_stage_vs_baseline": ("stage2", "single_stage_baseline"),
    "baseline_vs_warmup": ("single_stage_baseline", "warmup"),
}
"""Each comparison: (model, minus this model)."""
VS_WARMUP = {model: key for key, (model, minus) in COMPARISONS.items() if minus == "warmup"}
"""The comparison of each trained model with the warm-up model (the report's error bars)."""
METRICS = ("perception", "reasoning", "description_f1")
BANDS = ("easy", "medium", "hard")


def scenes(world_jsonl: Path) -> dict[str, dict]:
    """qid -> the record's scene and capability, from a shapes-world JSONL."""
    out = {}
    with open(world_jsonl, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            out[r["qid"]] = {"scene": r["scene"], "capability": r["capability"]}
    return out


def per_question(responses_jsonl: Path, world: dict[str, dict]) -> dict[str, np.ndarray]:
    """A model's scores per held-out question, in qid order: ``qid``, ``capability``, ``accuracy``, ``f1``.

    Every question of ``world`` must have exactly one response: a comparison pairs questions.
    """
    from curate.synth import (
        ATTRIBUTES,
        SHAPES,
        described_items,
        description_attributes,
        description_f1,
    )
    from rewards.clip import extract_caption

    rows = {}
    with open(responses_jsonl, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["sample_id"] in rows:
                raise ValueError(f"{responses_jsonl}: question {r['sample_id']} answered twice")
            rows[r["sample_id"]] = r
    if set(rows) != set(world):
        raise ValueError(f"{responses_jsonl}: {len(set(world) - set(rows))} questions unanswered, "
                         f"{len(set(rows) - set(world))} not in the evaluation world")
    qids = sorted(rows)
    attrs = [description_attributes(rows[q]["response"], world[q]["scene"]) for q in qids]
    named = Counter(shape for q in qids for _, _, shape, _ in described_items(extract_caption(rows[q]["response"])))
    return {
        "qid": np.array(qids),
        "capability": np.array([world[q]["capability"] for q in qids]),
        "accuracy": np.array([float(rows[q]["accuracy"]) for q in qids]),
        "f1": np.array([description_f1(rows[q]["response"], world[q]["scene"]) for q in qids]),
        "attributes": {k: np.array([a[k] for a in attrs]) for k in ATTRIBUTES},
        "shapes_named": {shape: named[shape] for shape in SHAPES},
    }


def metric(runs: list[dict[str, np.ndarray]], name: str) -> np.ndarray:
    """(seeds, questions) scores of one metric: perception or reasoning accuracy, or description F1."""
    first = runs[0]
    if name == "description_f1":
        return np.stack([r["f1"] for r in runs])
    mask = np.isin(first["capability"], PERCEPTION) if name == "perception" else first["capability"] == "reasoning"
    return np.stack([r["accuracy"][mask] for r in runs])


def summarise(answers: dict[str, list[dict]], signals: dict[str, list[dict]], by_family: list[dict]) -> dict:
    """Everything the summary reports, from each model's per-question scores (one entry per seed; the
    warm-up model has one), each trained arm's signal.json per seed, and the pool's bands per question
    family (rows of ``family``, ``capability``, ``n``, ``pass_rate``, ``easy``, ``medium``, ``hard``)."""
    for name, runs in answers.items():
        for r in runs:
            if not np.array_equal(r["qid"], answers["warmup"][0]["qid"]):
                raise ValueError(f"{name}: answered other questions than the warm-up model")
    means = {name: {m: float(metric(runs, m).mean()) for m in METRICS} for name, runs in answers.items()}
    comparisons = {
        key: {m: paired_bootstrap(metric(answers[a], m), metric(answers[b], m)) for m in METRICS}
        for key, (a, b) in COMPARISONS.items() if a in answers and b in answers
    }

    def observed(runs: list[dict]) -> list[list[float]]:
        return [s.get("observed_per_step") or [] for s in runs]

    zero_adv = {
        arm: {"mean": _mean([x for steps in observed(runs) for x in steps]), "per_step": observed(runs),
              "predicted": runs[0].get("predicted_zero_adv")}
        for arm, runs in signals.items()
    }
    first = answers["warmup"][0]
    bands = {b: sum(row[b] for row in by_family) for b in BANDS}
    total = sum(bands.values())
    by_capability = Counter()
    for row in by_family:
        by_capability.update({(row["capability"], b): row[b] for b in BANDS})
    return {
        "bands": bands,
        "pool": {**{b: n / total if total else None for b, n in bands.items()},
                 "degenerate": (bands["easy"] + bands["hard"]) / total if total else None},
        "bands_by_capability": [{"capability": c, "band": b, "n": n} for (c, b), n in sorted(by_capability.items()) if n],
        # where the pool's shape comes from: each family's mean pass rate and bands after warm-up
        "pool_by_family": [{**row, "degenerate": (row["easy"] + row["hard"]) / row["n"]} for row in by_family],
        "eval": {"n": int(first["qid"].size), "perception": int(np.isin(first["capability"], PERCEPTION).sum()),
                 "reasoning": int((first["capability"] == "reasoning").sum())},
        "accuracy": {name: {"perception": v["perception"], "reasoning": v["reasoning"],
                            "by_seed": {m: metric(answers[name], m).mean(axis=1).tolist() for m in ("perception", "reasoning")}}
                     for name, v in means.items()},
        "description_f1": {name: v["description_f1"] for name, v in means.items()},
        # what each model's descriptions get right attribute by attribute (curate.synth.description_attributes)
        "description_attributes": {name: {k: float(np.mean([r["attributes"][k] for r in runs])) for k in runs[0]["attributes"]}
                                   for name, runs in answers.items()},
        # the share of each shape among the objects a model's descriptions name (pooled over seeds): a model that
        # cannot see shapes guesses them, and RL on a reward it cannot tie to them drifts that guess
        "shapes_named": {name: _shares(sum((Counter(r["shapes_named"]) for r in runs), Counter()), runs[0]["shapes_named"])
                         for name, runs in answers.items()},
        "comparisons": comparisons,
        "zero_adv_observed": zero_adv,
        "reward_per_step": {arm: [(s.get("rewards_per_step") or {}).get("reward", []) for s in runs]
                            for arm, runs in signals.items()},
        # per optimizer update (several per rollout batch): is the policy moving, and do the clips act?
        "updates": {arm: {"updates": sum(len(s.get("updates", {}).get("kl", [])) for s in runs),
                          "kl_last": _mean([s["updates"]["kl"][-1] for s in runs if s.get("updates", {}).get("kl")]),
                          "clip_ratio_mean": _mean([x for s in runs for x in s.get("updates", {}).get("clip_ratio", [])])}
                    for arm, runs in signals.items()},
        # the keys of the one-seed demo: stage 1 is the perception stage, stage 2 the reasoning stage
        "predicted_zero_adv": {"perception": zero_adv.get("stage1", {}).get("predicted"),
                               "reasoning": zero_adv.get("stage2", {}).get("predicted")},
        "observed_zero_adv": {"perception": zero_adv.get("stage1", {}).get("mean"),
                              "reasoning": zero_adv.get("stage2", {}).get("mean")},
    }


def update_curves(model_dir: Path) -> dict[str, list[float]]:
    """What TRL logged per optimizer update of a GRPO run (its TensorBoard events): the KL to the
    reference, and the share of tokens whose ratio the clip (``region``: either side) or the dual clip cut."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = {"kl": "train/kl", "clip_ratio": "train/clip_ratio/region_mean", "clip_low": "train/clip_ratio/low_mean",
            "clip_high": "train/clip_ratio/high_mean"}
    out: dict[str, list[float]] = {k: [] for k in tags}
    for events in sorted(Path(model_dir).glob("runs/*")):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        have = set(acc.Tags().get("scalars", []))
        for key, tag in tags.items():
            if tag in have:
                out[key] += [e.value for e in acc.Scalars(tag)]
    return out


def _fmt(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _shares(counts: Counter, keys) -> dict[str, float | None]:
    total = sum(counts.values())
    return {k: counts[k] / total if total else None for k in keys}


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def write_report(summary: dict, out: Path) -> Path:
    """OUT/report.md with three plots under OUT/plots: training reward and observed zero-advantage
    fraction per rollout batch for every arm and seed, and every model's scores with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    colours = {"stage1": "tab:blue", "stage2": "tab:green", "single_stage_baseline": "tab:red", "warmup": "tab:gray"}
    for key, title, fname in (("reward_per_step", "training reward (weighted total) per rollout batch", "reward.png"),
                              ("zero_adv_observed", "zero-advantage groups per rollout batch (observed)", "zero_adv.png")):
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for arm, per_seed in summary[key].items():
            series = per_seed["per_step"] if key == "zero_adv_observed" else per_seed
            for i, ys in enumerate(series):
                ax.plot(range(1, len(ys) + 1), ys, color=colours.get(arm), alpha=0.8, marker="o", markersize=3,
                        label=arm if i == 0 else None)
        ax.set_xlabel("rollout batch")
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plots / fname, dpi=110)
        plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
    models = list(summary["accuracy"])
    for ax, m in zip(axes, ("perception", "reasoning", "description_f1")):
        values = [summary["description_f1"][n] if m == "description_f1" else summary["accuracy"][n][m] for n in models]
        # the interval of each trained model's difference from warm-up, drawn around its mean
        errs = [[0, 0]]
        for n in models[1:]:
            c = summary["comparisons"].get(VS_WARMUP.get(n, ""), {}).get(m)
            errs.append([c["diff"] - c["ci_low"], c["ci_high"] - c["diff"]] if c else [0, 0])
        ax.bar(range(len(models)), values, yerr=np.array(errs).T, color=[colours.get(n) for n in models], capsize=4)
        ax.set_xticks(range(len(models)), [n.replace("single_stage_", "") for n in models], fontsize=8)
        ax.set_title(m.replace("_", " "))
        ax.set_ylim(0, 1)
    fig.suptitle("held-out scores (bars: 95% interval of the difference from warm-up)", fontsize=9)
    fig.tight_layout()
    fig.savefig(plots / "scores.png", dpi=110)
    plt.close(fig)

    lines = [f"# PeBR on the shapes world: {len(summary['seeds'])} seed(s)", "",
             f"Held-out questions: {summary['eval']['perception']} perception, {summary['eval']['reasoning']} reasoning "
             f"(evaluation world). Pool after warm-up: easy {summary['bands']['easy']}, medium {summary['bands']['medium']}, "
             f"hard {summary['bands']['hard']} ({summary['pool']['degenerate']:.0%} easy or hard).", "",
             "| model | perception acc | reasoning acc | description F1 | zero-adv groups (observed) |",
             "|---|---:|---:|---:|---:|"]
    for n in models:
        z = summary["zero_adv_observed"].get(n, {}).get("mean")
        a = summary["accuracy"][n]
        lines.append(f"| {n} | {a['perception']:.3f} | {a['reasoning']:.3f} | {summary['description_f1'][n]:.3f} | "
                     f"{'' if z is None else f'{z:.3f}'} |")
    lines += ["", "The pool per question family after warm-up (mean pass rate over n = 8 rollouts at T = 1.2; "
              "easy: all right, hard: none right):", "",
              "| family | capability | questions | mean pass rate | easy | medium | hard | easy or hard |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['family']} | {r['capability']} | {r['n']} | {r['pass_rate']:.2f} | {r['easy']} | {r['medium']} | "
              f"{r['hard']} | {r['degenerate']:.0%} |" for r in summary["pool_by_family"]]
    attrs, shapes = summary["description_attributes"], summary["shapes_named"]
    names = list(next(iter(attrs.values())))
    lines += ["", "What the descriptions get right (`curate.synth.description_attributes`: the number of objects, "
                  "and per object in reading order its size, colour, shape and cell; chance 1/2 for size, 1/5 for "
              "colour and shape):", "", "| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {n} | " + " | ".join(f"{a[k]:.3f}" for k in names) + " |" for n, a in attrs.items()]
    names = list(next(iter(shapes.values())))
    lines += ["", "Shapes the descriptions name (share of the objects named; the world draws each shape 1/5 of the time):",
              "", "| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    lines += [f"| {n} | " + " | ".join(_fmt(a[k], 2) for k in names) + " |" for n, a in shapes.items()]
    lines += ["", "Differences, mean over seeds and questions, with paired-bootstrap 95% intervals:", "",
              "| comparison | perception acc | reasoning acc | description F1 |", "|---|---:|---:|---:|"]
    for key, c in summary["comparisons"].items():
        lines.append(f"| {key} | " + " | ".join(fmt_comparison(c[m]) for m in METRICS) + " |")
    lines += ["", "GRPO updates per arm (all seeds): how far the policy moved and how often the clips acted:", "",
              "| arm | updates | KL at the end | tokens clipped (mean share) |", "|---|---:|---:|---:|"]
    for arm, u in summary.get("updates", {}).items():
        lines.append(f"| {arm} | {u['updates']} | {_fmt(u['kl_last'])} | {_fmt(u['clip_ratio_mean'], 4)} |")
    lines += ["", "![scores](plots/scores.png)", "", "![training reward](plots/reward.png)", "",
              "![zero-advantage groups](plots/zero_adv.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
