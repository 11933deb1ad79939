"""Benchmark: `curate score` in one process vs `curate score --ray --replicas 2`, on the same cores.

One process with 2 torch threads against 2 Ray replicas with 1 core (and 1 thread) each, on the
same samples with the same seeds, hf engine, the tiny model; and, to tell Ray's own cost from the
gain of two processes, one process with 1 thread against 1 replica of 1 core. Each is the CLI as a
user runs it, in turns, --repeats times; the figures are medians of what each run records in its
`score-session` row: rollouts/s over the whole session, and after its start (the session less
loading the engine, or reaching Ray and loading every replica's: a fixed cost, whatever the run's
size), the start itself, and the engines' own rate (rollouts over their busy seconds, summed over
replicas). Targets: Ray's overhead under 25% (its rollouts/s after the start at least 0.75x the
single process's, 2 cores against 2 and 1 against 1); and the rollouts of every run equal.

Run: python benchmarks/bench_ray.py [--model DIR] [--world DIR] [--samples N] [--repeats R] [--results FILE]
`--model` / `--world` default to the demo's cached warm-up model and world (`just demo-assets`), and
fall back to a random tiny model and a fresh shapes world.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.75
"""Ray's session rollouts/s over the single process's: at least this (overhead under 25%)."""


def _latest(pattern: str) -> Path | None:
    hits = sorted((REPO / "runs" / "demo" / "cache").glob(pattern), key=lambda p: p.stat().st_mtime)
    return hits[-1] if hits else None


def _curate(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, **(env or {})})
    if r.returncode:
        raise RuntimeError(f"curate {' '.join(map(str, args[:2]))} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def _session(store: Path) -> dict:
    q = "select config from runs where kind = 'score-session' order by created_at desc limit 1"
    (row,) = json.loads(_curate("sql", "--format", "json", "--store", store, q).stdout)
    return json.loads(row["config"])


def _rollouts(store: Path) -> list:
    q = "select sample_id, rollout_idx, response from rollouts order by 1, 2"
    return [tuple(r.values()) for r in json.loads(_curate("sql", "--format", "json", "--store", store, q).stdout)]


def _assets(tmp: Path, model: Path | None, world: Path | None, samples: int) -> tuple[Path, Path]:
    if world is None:
        world = tmp / "world"
        _curate("synth", "--out", world, "--n", samples + 50, "--seed", 0)
    if model is None:
        sys.path.insert(0, str(REPO))
        from train.tiny import build_tiny_model

        model = build_tiny_model(tmp / "model", seed=0)
    return Path(model), Path(world)


def run(model: Path | None, world: Path | None, samples: int, max_new_tokens: int, repeats: int, chunk: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="pebr-bench-ray-") as tmp_dir:
        tmp = Path(tmp_dir)
        model, world = _assets(tmp, model, world, samples)
        rows = [json.loads(line) for line in open(world / "train.jsonl")][:samples]
        sub = tmp / "samples.jsonl"
        sub.write_text("".join(json.dumps(r) + "\n" for r in rows))
        common = ["--model", model, "--n", 8, "--max-new-tokens", max_new_tokens, "--batch-size", 256, "--chunk", chunk]
        ray = ["--ray", "--cpus-per-replica", 1, "--ray-address", "local", "--replicas"]
        sides = {
            "single_2t": ([], {"OMP_NUM_THREADS": "2"}),
            "ray_2x1": ([*ray, 2], {}),
            "single_1t": ([], {"OMP_NUM_THREADS": "1"}),
            "ray_1x1": ([*ray, 1], {}),
        }
        runs: dict[str, list[dict]] = {name: [] for name in sides}
        outputs: dict[str, list] = {}
        for _ in range(repeats):
            for name, (flags, env) in sides.items():  # in turns, so both see the same phases of a shared machine
                store = tmp / f"store-{name}"
                subprocess.run(["rm", "-rf", str(store)], check=True)
                _curate("ingest", sub, "--image-root", world, "--store", store)
                t0 = time.perf_counter()
                _curate("score", *common, *flags, "--store", store, env=env)
                wall = time.perf_counter() - t0
                s = _session(store)
                busy = [r["busy_s"] for r in s["replicas"]]
                runs[name].append({
                    "rollouts": s["generated"], "seconds": s["seconds"], "process_seconds": round(wall, 2),
                    "rollouts_per_s": s["rollouts_per_s"], "startup_s": s["startup_s"],
                    "after_start_rollouts_per_s": round(s["generated"] / (s["seconds"] - s["startup_s"]), 2),
                    "generating_rollouts_per_s": round(sum(r["rollouts_per_s"] for r in s["replicas"]), 2),
                    "busy_s": busy, "replicas": s["replicas"],
                })
                outputs[name] = _rollouts(store)
                print(f"  {name}: {s['generated']} rollouts in {s['seconds']:.1f} s ({s['rollouts_per_s']:.1f}/s)", flush=True)
    keys = ("seconds", "process_seconds", "startup_s", "rollouts_per_s", "after_start_rollouts_per_s", "generating_rollouts_per_s")
    med = {name: {k: statistics.median(r[k] for r in rs) for k in keys} for name, rs in runs.items()}
    rate = "after_start_rollouts_per_s"
    two, one = (med[f"ray_{r}"][rate] / med[f"single_{s}"][rate] for r, s in (("2x1", "2t"), ("1x1", "1t")))
    whole = {cores: med[f"ray_{r}"]["rollouts_per_s"] / med[f"single_{s}"]["rollouts_per_s"]
             for cores, r, s in ((2, "2x1", "2t"), (1, "1x1", "1t"))}
    base = outputs["single_2t"]
    same = min(sum(a == b for a, b in zip(base, other, strict=True)) / len(base) for other in outputs.values())
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}", "model": str(model),
        "samples": samples, "n": 8, "max_new_tokens": max_new_tokens, "chunk": chunk, "repeats": repeats,
        "statistic": "median over the repeats", "median": med, "runs": runs,
        "ray_over_single_2_cores": round(two, 3), "ray_over_single_1_core": round(one, 3),
        "whole_session_ray_over_single": {f"{k}_cores": round(v, 3) for k, v in whole.items()}, "identical_rollouts": same,
        "targets_met": {"overhead_under_25pct_2_cores": two >= TARGET, "overhead_under_25pct_1_core": one >= TARGET,
                        "identical_rollouts": same == 1.0},
    }


def _print(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"curate score, one process vs Ray: {report['samples']} samples x 8, up to {report['max_new_tokens']} "
                    f"new tokens, hf engine ({report['machine'].split(',')[1].strip()}; medians of {report['repeats']})")
    for col in ("", "rollouts/s after start", "rollouts/s whole session", "engines' rollouts/s", "start s", "session s"):
        t.add_column(col, justify="right" if col else "left")
    names = {"single_2t": "1 process, 2 torch threads", "ray_2x1": "--ray --replicas 2, 1 core each",
             "single_1t": "1 process, 1 torch thread", "ray_1x1": "--ray --replicas 1, 1 core"}
    for name, m in report["median"].items():
        t.add_row(names[name], f"{m['after_start_rollouts_per_s']:.1f}", f"{m['rollouts_per_s']:.1f}",
                  f"{m['generating_rollouts_per_s']:.1f}", f"{m['startup_s']:.1f}", f"{m['seconds']:.1f}")
    out = Console(width=max(Console().width, 120))
    out.print(t)
    w = report["whole_session_ray_over_single"]
    out.print(f"Ray / one process after the start: {report['ray_over_single_2_cores']:.2f}x on 2 cores, "
                    f"{report['ray_over_single_1_core']:.2f}x on 1 (target at least {TARGET}x: overhead under 25%); whole "
                    f"sessions: {w['2_cores']:.2f}x, {w['1_cores']:.2f}x; identical rollouts: "
                    f"{report['identical_rollouts']:.0%}; targets {report['targets_met']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=_latest("*/warmup"))
    p.add_argument("--world", type=Path, default=_latest("*/world"))
    p.add_argument("--samples", type=int, default=96)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--chunk", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "ray.json")
    args = p.parse_args()
    report = run(args.model, args.world, args.samples, args.max_new_tokens, args.repeats, args.chunk)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(report, indent=2) + "\n")
    _print(report)
    print(f"results in {args.results}")
    sys.exit(0 if all(report["targets_met"].values()) else 1)


if __name__ == "__main__":
    main()
