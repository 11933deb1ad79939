"""The whole method on the embedded shapes world, run command by command as a user would.

    python -m pipelines.demo [--recipe pipelines/demo.yaml] [--out runs/demo] [--seeds 1 2 3] [--assets-only]

1. `curate synth` draws three worlds: one for warm-up SFT, one whose train split is curated, and a
   held-out evaluation world (another seed, half reasoning questions). `train init-tiny` builds the
   tiny model; `train run --stage warmup` warms it up; `train init-clip` trains the tiny CLIP-family
   alignment model of the perception reward on the warm-up world's image/description pairs. Each is
   cached under OUT/cache/<name>-<key> (key: the recipe settings it depends on), so a second run starts at 2.
2. `curate ingest` + `curate score` (n = 8, temperature 1.2) measure every train question's pass rate.
3. `curate select` writes the perception (easy), reasoning (medium) and warm-up (hard) stage datasets.
4. Per seed: `train run --stage perception`, then `--stage reasoning` from stage 1's model; and a
   single-stage baseline, GRPO with the reasoning reward on the uncurated train split from the warm-up
   model, with as many rollouts as stages 1 and 2 together.
5. `train eval` on the evaluation world after warm-up and after every arm of every seed; accuracy
   per capability, description F1 against the stored scenes, paired-bootstrap intervals for every
   difference (pipelines/compare.py), the zero-advantage fraction and the training reward per step
   of every arm: one table, OUT/summary.json and OUT/report.md with its plots.

`just demo` runs one seed; `just experiment` the same arms over three seeds into runs/experiment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
console = Console(stderr=True)

ARMS = ("stage1", "stage2", "single_stage_baseline")
"""The models trained per seed; ``warmup`` is trained once."""
MODELS = ("warmup", *ARMS)


def _argv(tool: str, *args) -> list[str]:
    return [sys.executable, "-m", f"{tool}.cli", *[str(a) for a in args]]


def _sets(section: dict) -> list[str]:
    out = []
    for key, value in section.items():
        out += ["--set", f"{key}={json.dumps(value) if isinstance(value, (dict, list, bool)) or value is None else value}"]
    return out


def _mix(mix: dict | None) -> list[str]:
    return ["--mix", ",".join(f"{k}={v}" for k, v in mix.items())] if mix else []


class Demo:
    def __init__(self, recipe_path: Path, out: Path, seeds: list[int] | None = None, cache: Path | None = None):
        import yaml

        self.recipe = yaml.safe_load(recipe_path.read_text())
        self.recipe_path = recipe_path
        self.out = out
        self.seeds = seeds or [int(self.recipe.get("rl_seed", 1))]
        self.cache = cache or out / "cache"
        self.seconds: dict[str, float] = {}

    def step(self, name: str, argv: list[str]) -> None:
        console.rule(f"[bold]{name}[/bold]")
        console.print(f"$ {argv[2].split('.')[0]} " + " ".join(argv[3:]), highlight=False, soft_wrap=True)
        started = time.monotonic()
        r = subprocess.run(argv, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        self.seconds[name] = round(time.monotonic() - started, 1)
        if r.returncode != 0:
            console.print(f"[red]step {name!r} failed (exit {r.returncode})[/red]")
            sys.exit(r.returncode)

    def sql(self, store: Path, query: str) -> list[dict]:
        r = subprocess.run(_argv("curate", "sql", "--format", "json", "--store", store, query),
                           capture_output=True, text=True, check=True)
        return json.loads(r.stdout)

    # -- 1. assets (cached) ---------------------------------------------------------------
    def cached(self, name: str, keyed: dict, build) -> Path:
        """OUT/cache/<name>-<key>, built by ``build(folder)`` unless a complete one exists (key: the
        recipe settings it depends on, so changing one asset's settings rebuilds it and what follows it)."""
        key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
        folder = self.cache / f"{name}-{key}"
        if (folder / ".done").exists():
            console.print(f"[green]{name}: cached in {folder}[/green]")
            return folder
        shutil.rmtree(folder, ignore_errors=True)
        build(folder)
        (folder / ".done").write_text(json.dumps(keyed, indent=2, sort_keys=True))
        return folder

    def assets(self) -> dict[str, Path]:
        r = self.recipe

        def synth(name: str, section: dict, test_fraction: float = 0):
            return lambda out: self.step(name, _argv(
                "curate", "synth", "--out", out, "--n", section["n"], "--seed", section["seed"], "--test-fraction",
                section.get("test_fraction", test_fraction), "--image-size", section["image_size"], *_mix(section.get("mix"))))

        world = self.cached("world", r["world"], synth("synth", r["world"]))
        warmup_world = self.cached("warmup_world", r["warmup_world"], synth("synth_warmup", r["warmup_world"]))
        eval_world = self.cached("eval_world", r["eval_world"], synth("synth_eval", r["eval_world"]))
        corpus = warmup_world / "train.jsonl"
        tiny_args = [a for k, v in (r.get("tiny") or {}).items() for a in ("--size", f"{k}={v}")]
        tiny_key = {"seed": r.get("seed", 0), "tiny": r.get("tiny"), "corpus": r["warmup_world"]}
        tiny = self.cached("tiny", tiny_key, lambda out: self.step("init_tiny", _argv(
            "train", "init-tiny", "--out", out, "--corpus", corpus, "--seed", r.get("seed", 0), *tiny_args)))
        warmup = self.cached("warmup", {**tiny_key, "warmup": r["warmup"]}, lambda out: self.step("warmup", _argv(
            "train", "run", "--stage", "warmup", "--model", tiny, "--data", corpus, "--out", out, "--recipe", self.recipe_path)))
        clip = self.cached("clip", {"clip": r.get("clip"), "data": r["warmup_world"]}, lambda out: self.step("init_clip", _argv(
            "train", "init-clip", "--data", corpus, "--out", out, "--recipe", self.recipe_path)))
        return {"world": world, "eval_world": eval_world, "warmup": warmup, "clip": clip}

    # -- 2..5 ------------------------------------------------------------------------------
    def run(self, assets: dict[str, Path]) -> dict:
        self.assets_ = assets
        world, warm = assets["world"], assets["warmup"]
        store, stages = self.out / "store", self.out / "stages"
        for d in (store, stages, self.out / "eval", *(self.out / f"seed-{s}" for s in self.seeds)):
            shutil.rmtree(d, ignore_errors=True)
        self.step("ingest", _argv("curate", "ingest", world / "train.jsonl", "--image-root", world, "--store", store))
        self.step("score", _argv("curate", "score", "--model", warm, "--recipe", self.recipe_path, "--store", store))
        for stage in ("perception", "reasoning", "warmup"):
            self.step(f"select_{stage}", _argv("curate", "select", "--stage", stage, "--out", stages / stage,
                                               "--seed", self.recipe.get("seed", 0), "--store", store))
        self.step("eval_warmup", self._eval(warm, self.out / "eval", "warmup"))
        for seed in self.seeds:
            self.arms(seed, stages)
        return self.summary()

    def arms(self, seed: int, stages: Path) -> None:
        """Stage 1, stage 2 and the baseline with ``seed``, each evaluated."""
        warm, world, clip = self.assets_["warmup"], self.assets_["world"], self.assets_["clip"]
        models, ev, tag = self.out / f"seed-{seed}" / "models", self.out / f"seed-{seed}" / "eval", f"(seed {seed})"
        self.step(f"stage1 {tag}", _argv("train", "run", "--stage", "perception", "--model", warm, "--data",
                                         stages / "perception", "--out", models / "stage1", "--recipe", self.recipe_path,
                                         "--set", f"seed={seed}", *_sets(_clip_rewards(clip))))
        self.step(f"eval_stage1 {tag}", self._eval(models / "stage1", ev, "stage1"))
        self.step(f"stage2 {tag}", _argv("train", "run", "--stage", "reasoning", "--model", models / "stage1",
                                         "--data", stages / "reasoning", "--out", models / "stage2",
                                         "--recipe", self.recipe_path, "--set", f"seed={seed}"))
        self.step(f"eval_stage2 {tag}", self._eval(models / "stage2", ev, "stage2"))
        two_stage = _rollouts(models / "stage1") + _rollouts(models / "stage2")
        base = self.recipe["baseline"]
        per_step = base["update_batch_questions"] * base.get("num_generations", 8)
        steps = max(1, round(two_stage / per_step))
        self.step(f"baseline {tag}", _argv("train", "run", "--stage", "reasoning", "--model", warm,
                                           "--data", world / "train.jsonl", "--out", models / "single_stage_baseline",
                                           "--recipe", self.recipe_path,
                                           *_sets({**base, "max_steps": steps, "epochs": 1000, "seed": seed})))
        self.step(f"eval_baseline {tag}", self._eval(models / "single_stage_baseline", ev, "single_stage_baseline"))

    def _eval(self, model: Path, folder: Path, name: str) -> list[str]:
        return _argv("train", "eval", "--model", model, "--data", self.assets_["eval_world"] / "train.jsonl",
                     "--json", folder / f"{name}.json", "--responses", folder / f"{name}.jsonl",
                     "--recipe", self.recipe_path)

    def summary(self) -> dict:
        """OUT/summary.json and OUT/report.md from what the run left on disk (also `--report-only`)."""
        from pipelines import results

        store = self.out / "store"
        # one query for the pool: each family's bands; the summary derives the totals and the capabilities' bands
        by_family = self.sql(store, "select json_extract_string(s.extra, '$.question.family') as family, s.capability, "
                                    "count(*) as n, avg(d.pass_rate) as pass_rate, count(*) filter (where d.band = 'easy') as easy, "
                                    "count(*) filter (where d.band = 'medium') as medium, count(*) filter (where d.band = 'hard') as hard "
                                    "from difficulty d join samples s using (sample_id) group by all order by s.capability, family")
        rollouts = {}
        for s in self.seeds:
            models = self.out / f"seed-{s}" / "models"
            rollouts[s] = {"two_stage": _rollouts(models / "stage1") + _rollouts(models / "stage2"),
                           "single_stage_baseline": _rollouts(models / "single_stage_baseline")}

        scenes = results.scenes(self.assets_["eval_world"] / "train.jsonl")
        answers = {"warmup": [results.per_question(self.out / "eval" / "warmup.jsonl", scenes)]}
        signals = {}
        for arm in ARMS:
            answers[arm] = [results.per_question(self.out / f"seed-{s}" / "eval" / f"{arm}.jsonl", scenes)
                            for s in self.seeds]
            signals[arm] = [{**json.loads((self.out / f"seed-{s}" / "models" / arm / "signal.json").read_text()),
                             "updates": results.update_curves(self.out / f"seed-{s}" / "models" / arm)}
                            for s in self.seeds]
        first = rollouts[self.seeds[0]]
        summary = {
            **results.summarise(answers, signals, by_family),
            "rollouts": {"two_stage": first["two_stage"], "single_stage_baseline": first["single_stage_baseline"],
                         "by_seed": {str(k): v for k, v in rollouts.items()}},
            "seeds": self.seeds,
            "seconds": self.seconds,
            "recipe": str(self.recipe_path),
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        results.write_report(summary, self.out)
        return summary


def _clip_rewards(clip: Path) -> dict:
    """The clip reward's settings for the demo's CLIP model, from its run record (path, threshold, sizes)."""
    record = json.loads((clip / "pebr_clip.json").read_text())
    return {f"rewards.{k}": v for k, v in record["reward_config"].items()}


def _rollouts(model_dir: Path) -> int:
    rec = json.loads((model_dir / "pebr_run.json").read_text())
    return int(rec.get("rollouts", 0))


def show(summary: dict) -> None:
    from pipelines.compare import fmt_comparison

    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    seeds = summary["seeds"]
    t = Table(title=f"PeBR demo on the shapes world ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}; "
                    f"{summary['eval']['perception']} perception + {summary['eval']['reasoning']} reasoning held-out questions)")
    for col in ("model", "perception acc", "reasoning acc", "description F1", "zero-adv groups (observed)"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name in MODELS:
        a = summary["accuracy"][name]
        z = summary["zero_adv_observed"].get(name, {}).get("mean")
        t.add_row(name, fmt(a["perception"]), fmt(a["reasoning"]), fmt(summary["description_f1"][name]), fmt(z))
    console.print(t)
    c = Table(title="Differences (paired bootstrap, 95% interval)")
    for col in ("comparison", "perception acc", "reasoning acc", "description F1"):
        c.add_column(col, justify="left" if col == "comparison" else "right")
    for name, cmp in summary["comparisons"].items():
        c.add_row(name, *(fmt_comparison(cmp[m]) for m in ("perception", "reasoning", "description_f1")))
    console.print(c)
    b, share = summary["bands"], summary["pool"]
    console.print(f"bands after warm-up (n = 8, T = 1.2): easy {b['easy']}, medium {b['medium']}, hard {b['hard']} "
                  f"(easy or hard: {share['degenerate']:.0%} of the pool)")
    for s in ("perception", "reasoning"):
        console.print(f"zero-advantage groups, {s}: predicted {fmt(summary['predicted_zero_adv'][s])}, "
                      f"observed {fmt(summary['observed_zero_adv'][s])}")
    for arm, u in summary.get("updates", {}).items():
        console.print(f"{arm}: {u['updates']} updates, KL at the end {fmt(u['kl_last'])}, "
                      f"tokens clipped {fmt(u['clip_ratio_mean'])}")
    console.print(f"rollouts per seed: two-stage {summary['rollouts']['two_stage']}, "
                  f"baseline {summary['rollouts']['single_stage_baseline']}")
    console.print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["seconds"].items()) +
                  f"; total {sum(summary['seconds'].values()):.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", type=Path, default=HERE / "demo.yaml")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--seeds", type=int, nargs="+", help="RL seeds, one run of every arm each (default: the recipe's rl_seed)")
    p.add_argument("--cache", type=Path, help="where the worlds, warm-up and CLIP models are cached (default OUT/cache)")
    p.add_argument("--report-only", action="store_true",
                   help="only rewrite OUT/summary.json and OUT/report.md from a finished run's outputs")
    p.add_argument("--assets-only", action="store_true", help="only build (and cache) the worlds and the warm-up and CLIP models")
    args = p.parse_args()
    demo = Demo(args.recipe, args.out, args.seeds, args.cache)
    started = time.monotonic()
    assets = demo.assets()
    if args.assets_only:
        return
    if args.report_only:
        demo.assets_ = assets
        previous = args.out / "summary.json"
        demo.seconds = json.loads(previous.read_text()).get("seconds", {}) if previous.is_file() else {}
        summary = demo.summary()
    else:
        summary = demo.run(assets)
    show(summary)
    console.print(f"whole run: {time.monotonic() - started:.0f} s; summary in [bold]{args.out / 'summary.json'}[/bold], "
                  f"report in [bold]{args.out / 'report.md'}[/bold]")


if __name__ == "__main__":
    main()
