"""The whole method on the embedded shapes world, run command by command as a user would.

    python -m pipelines.demo [--recipe pipelines/demo.yaml] [--out runs/demo] [--assets-only]

1. `curate synth` draws two worlds: one for warm-up SFT, one whose train split is curated and whose
   test split is held out. `train init-tiny` builds the tiny model; `train run --stage warmup` warms it
   up. These three are cached under OUT/cache/<key> (key: the recipe's sections for them), so a
   second demo starts at step 2.
2. `curate ingest` + `curate score` (n = 8, temperature 1.2) measure every train question's pass rate.
3. `curate select` writes the perception (easy), reasoning (medium) and warm-up (hard) stage datasets.
4. `train run --stage perception`, then `--stage reasoning` from stage 1's model.
5. A single-stage baseline: GRPO with the reasoning reward on the uncurated train split, from the
   warm-up model, with as many rollouts as stages 1 and 2 together.
6. `train eval` on the test split after warm-up, stage 1, stage 2 and the baseline; one table, and
   OUT/summary.json.
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


def _argv(tool: str, *args) -> list[str]:
    return [sys.executable, "-m", f"{tool}.cli", *[str(a) for a in args]]


def _sets(section: dict) -> list[str]:
    out = []
    for key, value in section.items():
        out += ["--set", f"{key}={json.dumps(value) if isinstance(value, (dict, list, bool)) or value is None else value}"]
    return out


class Demo:
    def __init__(self, recipe_path: Path, out: Path):
        import yaml

        self.recipe = yaml.safe_load(recipe_path.read_text())
        self.recipe_path = recipe_path
        self.out = out
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
    def assets(self) -> tuple[Path, Path]:
        keyed = {k: self.recipe.get(k) for k in ("world", "warmup_world", "tiny", "warmup")}
        key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
        cache = self.out / "cache" / key
        world, model = cache / "world", cache / "warmup"
        if (cache / "done").exists():
            console.print(f"[green]using cached world and warm-up model in {cache}[/green]")
            return world, model
        shutil.rmtree(cache, ignore_errors=True)
        w, ww = self.recipe["world"], self.recipe["warmup_world"]
        self.step("synth", _argv("curate", "synth", "--out", world, "--n", w["n"], "--seed", w["seed"],
                                 "--test-fraction", w["test_fraction"], "--image-size", w["image_size"]))
        self.step("synth_warmup", _argv("curate", "synth", "--out", cache / "warmup_world", "--n", ww["n"],
                                        "--seed", ww["seed"], "--test-fraction", 0, "--image-size", ww["image_size"]))
        tiny_args = [a for k, v in (self.recipe.get("tiny") or {}).items() for a in ("--size", f"{k}={v}")]
        self.step("init_tiny", _argv("train", "init-tiny", "--out", cache / "tiny", "--corpus",
                                     cache / "warmup_world" / "train.jsonl", "--seed", self.recipe.get("seed", 0), *tiny_args))
        self.step("warmup", _argv("train", "run", "--stage", "warmup", "--model", cache / "tiny", "--data",
                                  cache / "warmup_world" / "train.jsonl", "--out", model, "--recipe", self.recipe_path))
        (cache / "done").write_text(json.dumps(keyed, indent=2))
        return world, model

    # -- 2..6 ------------------------------------------------------------------------------
    def run(self, world: Path, warm: Path) -> dict:
        self.world = world
        store, stages, models = self.out / "store", self.out / "stages", self.out / "models"
        for d in (store, stages, models, self.out / "eval"):
            shutil.rmtree(d, ignore_errors=True)
        self.step("ingest", _argv("curate", "ingest", world / "train.jsonl", "--image-root", world, "--store", store))
        self.step("score", _argv("curate", "score", "--model", warm, "--recipe", self.recipe_path, "--store", store))
        bands = {r["band"]: r["n"] for r in self.sql(store, "select band, count(*) as n from difficulty group by band")}
        by_cap = self.sql(store, "select s.capability, d.band, count(*) as n from difficulty d join samples s "
                                 "using (sample_id) group by all order by all")
        for stage in ("perception", "reasoning", "warmup"):
            self.step(f"select_{stage}", _argv("curate", "select", "--stage", stage, "--out", stages / stage,
                                               "--seed", self.recipe.get("seed", 0), "--store", store))
        self.step("eval_warmup", self._eval(warm, "warmup"))
        self.step("stage1", _argv("train", "run", "--stage", "perception", "--model", warm, "--data", stages / "perception",
                                  "--out", models / "stage1", "--recipe", self.recipe_path))
        self.step("eval_stage1", self._eval(models / "stage1", "stage1"))
        self.step("stage2", _argv("train", "run", "--stage", "reasoning", "--model", models / "stage1",
                                  "--data", stages / "reasoning", "--out", models / "stage2", "--recipe", self.recipe_path))
        self.step("eval_stage2", self._eval(models / "stage2", "stage2"))
        rollouts = self._rollouts(models / "stage1") + self._rollouts(models / "stage2")
        base = self.recipe["baseline"]
        per_step = base["update_batch_questions"] * base.get("num_generations", 8)
        steps = max(1, round(rollouts / per_step))
        self.step("baseline", _argv("train", "run", "--stage", "reasoning", "--model", warm, "--data", world / "train.jsonl",
                                    "--out", models / "baseline", "--recipe", self.recipe_path,
                                    *_sets({**base, "max_steps": steps, "epochs": 1000})))
        self.step("eval_baseline", self._eval(models / "baseline", "single_stage_baseline"))
        return self.summary(bands, by_cap, rollouts, steps * per_step)

    def _eval(self, model: Path, name: str) -> list[str]:
        return _argv("train", "eval", "--model", model, "--data", self._world_test(), "--json",
                     self.out / "eval" / f"{name}.json", "--recipe", self.recipe_path)

    def _world_test(self) -> Path:
        return self.world / "test.jsonl"

    @staticmethod
    def _rollouts(model_dir: Path) -> int:
        rec = json.loads((model_dir / "pebr_run.json").read_text())
        return int(rec.get("rollouts", 0))

    def summary(self, bands: dict, by_cap: list[dict], rollouts: int, baseline_rollouts: int) -> dict:
        models = self.out / "models"
        acc = {}
        for name in ("warmup", "stage1", "stage2", "single_stage_baseline"):
            ev = json.loads((self.out / "eval" / f"{name}.json").read_text())
            caps = ev["by_capability"]
            per = [caps[c] for c in ("perception_coarse", "perception_fine") if c in caps]
            n_p = sum(c["n"] for c in per)
            acc[name] = {
                "perception": sum(c["n"] * c["accuracy"] for c in per) / n_p if n_p else None,
                "reasoning": caps.get("reasoning", {}).get("accuracy"),
            }
        signal = {s: json.loads((models / m / "signal.json").read_text()) for s, m in
                  (("perception", "stage1"), ("reasoning", "stage2"))}
        summary = {
            "bands": {b: bands.get(b, 0) for b in ("easy", "medium", "hard")},
            "bands_by_capability": by_cap,
            "accuracy": acc,
            "predicted_zero_adv": {s: signal[s]["predicted_zero_adv"] for s in signal},
            "observed_zero_adv": {s: signal[s]["observed_zero_adv"] for s in signal},
            "rollouts": {"two_stage": rollouts, "single_stage_baseline": baseline_rollouts},
            "seconds": self.seconds,
            "recipe": str(self.recipe_path),
        }
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def show(summary: dict) -> None:
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    t = Table(title="PeBR demo on the shapes world")
    t.add_column("model")
    t.add_column("perception acc", justify="right")
    t.add_column("reasoning acc", justify="right")
    for name, a in summary["accuracy"].items():
        t.add_row(name, fmt(a["perception"]), fmt(a["reasoning"]))
    console.print(t)
    b = summary["bands"]
    console.print(f"bands after warm-up (n = 8, T = 1.2): easy {b['easy']}, medium {b['medium']}, hard {b['hard']}")
    for s in ("perception", "reasoning"):
        console.print(f"zero-advantage groups, {s}: predicted {fmt(summary['predicted_zero_adv'][s])}, "
                      f"observed {fmt(summary['observed_zero_adv'][s])}")
    console.print(f"rollouts: two-stage {summary['rollouts']['two_stage']}, baseline {summary['rollouts']['single_stage_baseline']}")
    console.print("seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in summary["seconds"].items()) +
                  f"; total {sum(summary['seconds'].values()):.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", type=Path, default=HERE / "demo.yaml")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--assets-only", action="store_true", help="only build (and cache) the worlds and the warm-up model")
    args = p.parse_args()
    demo = Demo(args.recipe, args.out)
    started = time.monotonic()
    world, warm = demo.assets()
    if args.assets_only:
        return
    summary = demo.run(world, warm)
    show(summary)
    console.print(f"whole demo: {time.monotonic() - started:.0f} s; summary in [bold]{args.out / 'summary.json'}[/bold]")


if __name__ == "__main__":
    main()
