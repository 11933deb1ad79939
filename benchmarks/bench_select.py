"""Benchmark: `curate import-rollouts` + three `curate select` runs against the reference split.

A deterministic dump of 250,000 questions x 8 rollouts (2,000,000 lines, responses of about 100
characters like the reference's truncated dumps) and matching samples are generated; then each
step runs as its own process, timed, with its peak RSS read from wait4. The reference and ours
run in turns, --repeats times (each of ours from the same store without rollouts); the figures are
medians. Targets: end to end at least 2x faster than `reference_split.py`, each re-selection at
least 10x faster, every process of ours under 1 GiB, and band counts identical to the reference's.

Run: python benchmarks/bench_select.py [--questions N] [--repeats R] [--dir DIR] [--results FILE]
(`just bench` runs `test_select_benchmark` below through pytest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROLLOUTS = 8
STAGES = {"perception": "easy", "reasoning": "medium", "warmup": "hard"}
GIB = 1 << 30

_WORDS = ("the circle is red so the count is three", "step one count the shapes then add them up",
          "the image shows a large blue square left", "we compare both sides and the answer follows")


def _k(rng: random.Random) -> int:
    """A realistic pass-rate mix: about 30% easy, 20% hard, the rest spread over 1..7."""
    u = rng.random()
    if u < 0.30:
        return ROLLOUTS
    if u < 0.50:
        return 0
    return rng.randint(1, ROLLOUTS - 1)


def generate(work: Path, questions: int, seed: int = 0) -> dict[str, int]:
    """Write rollout_results.jsonl and data.json (reference format); returns the expected band counts."""
    rng = random.Random(seed)
    counts = dict.fromkeys(STAGES.values(), 0)
    with open(work / "rollout_results.jsonl", "w") as dump, open(work / "data.json", "w") as data:
        data.write("[")
        for i in range(questions):
            qid = f"q{i:07d}"
            k = _k(rng)
            counts["easy" if k == ROLLOUTS else "hard" if k == 0 else "medium"] += 1
            answer = str(i % 97)
            data.write(("," if i else "") + json.dumps({"qid": qid, "problem": f"<image>Question {i}: how many shapes are there?",
                                                        "answer": answer, "images": ["shared.png"], "key_words": ["shape"]}))
            for r in range(ROLLOUTS):
                head, tail = _WORDS[(i + r) % 4], _WORDS[(i * 7 + r) % 4]
                response = f"### Image Description: {head[:30]}...### The final answer is: {answer} {tail[:40]}"
                acc = "1.0" if r < k else "0.0"
                dump.write(f'{{"qid": "{qid}", "response": "{response}", "ground_truth": "{answer}", "score": {{"accuracy": {acc}}}}}\n')
        data.write("]")
    return counts


def ingest_samples(store_dir: Path, questions: int) -> None:
    """Samples written straight as a Parquet part (one shared image), committed by an ingest run."""
    import pyarrow as pa
    from PIL import Image

    sys.path.insert(0, str(REPO))
    from curate.store import Store, new_run_id

    store = Store(store_dir)
    with store.writing("bench ingest"):
        run_id = new_run_id("ingest")
        img = store_dir.parent / "shared.png"
        Image.new("RGB", (64, 64), (200, 30, 30)).save(img)
        path = store.put_image(img.read_bytes(), ".png")
        qids = [f"q{i:07d}" for i in range(questions)]
        caps = ("perception_coarse", "perception_fine", "reasoning")
        table = pa.table({
            "sample_id": [hashlib.sha1(q.encode()).hexdigest()[:24] for q in qids],
            "source": ["bench"] * questions,
            "capability": [caps[i % 3] for i in range(questions)],
            "qid": qids,
            "problem": [f"<image>Question {i}: how many shapes are there?" for i in range(questions)],
            "answer": [str(i % 97) for i in range(questions)],
            "key_words": [["shape"]] * questions,
            "images": [[path]] * questions,
            "extra": [None] * questions,
            "ingest_run": [run_id] * questions,
            "ingest_file": ["bench"] * questions,
            "record_index": list(range(questions)),
        })
        store.write("samples", table, run_id)
        store.add_run(run_id, "ingest", config={"bench": True})


def _timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Run a command; returns (seconds, peak RSS in bytes, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=REPO)
    out = p.stdout.read().decode()
    err = p.stderr.read().decode()
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-3000:]}")
    return seconds, usage.ru_maxrss * 1024, out


def _cli_has_select() -> bool:
    exe = Path(sys.executable).with_name("curate")
    if not exe.exists():
        return False
    r = subprocess.run([str(exe), "select", "--help"], capture_output=True, text=True)
    return r.returncode == 0


def _ours(store: Path, dump: Path, out: Path, use_cli: bool) -> tuple[list[tuple[str, float, float]], dict[str, int]]:
    env = {**os.environ, "PEBR_STORE": str(store)}
    exe = str(Path(sys.executable).with_name("curate"))
    steps, counts = [], {}
    if use_cli:
        cmd = [exe, "import-rollouts", str(dump), "--store", str(store)]
    else:
        cmd = [sys.executable, "-c", "import sys; from pathlib import Path; from curate.store import Store; "
               "from curate.importer import import_rollouts; import_rollouts(Store(sys.argv[1]), Path(sys.argv[2]))",
               str(store), str(dump)]
    s, rss, _ = _timed(cmd, env)
    steps.append(("import-rollouts", s, rss))
    for stage, band in STAGES.items():
        dest = out / stage
        if use_cli:
            cmd = [exe, "select", "--stage", stage, "--out", str(dest), "--store", str(store)]
        else:
            cmd = [sys.executable, "-c", "import sys; from curate.store import Store; from curate.select import SelectOptions, "
                   "select_stage; select_stage(Store(sys.argv[1]), SelectOptions(stage=sys.argv[2], out=sys.argv[3]))",
                   str(store), stage, str(dest)]
        s, rss, _ = _timed(cmd, env)
        steps.append((f"select {stage}", s, rss))
        counts[band] = json.loads((dest / "manifest.json").read_text())["rows"]
    return steps, counts


def run(questions: int = 250_000, work: Path | None = None, results: Path | None = None, repeats: int = 3) -> dict:
    own = work is None
    work = Path(work or tempfile.mkdtemp(prefix="pebr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    marker = work / ".pebr-bench"
    if any(work.iterdir()) and not marker.exists():
        raise SystemExit(f"{work} is not empty and was not made by this benchmark; pass an empty or new --dir")
    marker.touch()
    for leftover in ("store", "pristine", "out", "ref"):  # a kept --dir starts over
        shutil.rmtree(work / leftover, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        # Set up in a child process: a child forked from a big parent would report the parent's pages
        # in its peak RSS, so this process stays small.
        prep = subprocess.run([sys.executable, __file__, "--prepare", str(work), "--questions", str(questions)],
                              capture_output=True, text=True, cwd=REPO)
        if prep.returncode:
            raise RuntimeError(f"benchmark set-up failed ({prep.returncode}):\n{prep.stderr[-3000:]}")
        expected = json.loads(prep.stdout.strip().splitlines()[-1])
        shutil.copytree(work / "store", work / "pristine")  # the store before any import, for each repeat
        setup_s = time.perf_counter() - t0
        use_cli = _cli_has_select()
        # Repeats alternate the reference and ours, so both see the same phases of a noisy machine;
        # each of ours starts from the same store, without rollouts.
        refs, runs = [], []
        for _ in range(repeats):
            ref_s, ref_rss, ref_out = _timed([sys.executable, str(REPO / "benchmarks" / "reference_split.py"),
                                              str(work / "rollout_results.jsonl"), str(work / "data.json"), str(work / "ref")],
                                             dict(os.environ))
            refs.append((ref_s, ref_rss, json.loads(ref_out)))
            for leftover in ("store", "out"):
                shutil.rmtree(work / leftover, ignore_errors=True)
            shutil.copytree(work / "pristine", work / "store")
            runs.append(_ours(work / "store", work / "rollout_results.jsonl", work / "out", use_cli))
        ref_s = statistics.median(s for s, _, _ in refs)
        names = [name for name, _, _ in runs[0][0]]
        step_s = {name: statistics.median(steps[i][1] for steps, _ in runs) for i, name in enumerate(names)}
        step_rss = {name: max(steps[i][2] for steps, _ in runs) for i, name in enumerate(names)}
        totals = [sum(s for _, s, _ in steps) for steps, _ in runs]
        total = statistics.median(totals)
        selects = [s for name, s in step_s.items() if name.startswith("select")]
        counts = runs[0][1]
        ref_counts = refs[0][2]
        report = {
            "questions": questions, "lines": questions * ROLLOUTS, "setup_s": round(setup_s, 1), "via": "cli" if use_cli else "library",
            "repeats": repeats, "statistic": "median over the repeats",
            "reference": {"seconds": round(ref_s, 2), "peak_rss_mib": round(max(r for _, r, _ in refs) / 2**20), "counts": ref_counts,
                          "all_seconds": [round(s, 2) for s, _, _ in refs]},
            "ours": {name: {"seconds": round(step_s[name], 2), "peak_rss_mib": round(step_rss[name] / 2**20),
                            "all_seconds": [round(steps[i][1], 2) for steps, _ in runs]} for i, name in enumerate(names)},
            "ours_total_s": round(total, 2), "ours_all_totals_s": [round(t, 2) for t in totals],
            "counts": counts, "expected": expected,
            "speedup_end_to_end": round(ref_s / total, 2), "speedup_min_reselect": round(ref_s / max(selects), 1),
            "peak_rss_mib_max": round(max(step_rss.values()) / 2**20),
            "cpu_count": os.cpu_count(),
        }
        same = all(c == counts for _, c in runs) and all(c == ref_counts for _, _, c in refs)
        report["targets_met"] = {
            "end_to_end_2x": report["speedup_end_to_end"] >= 2,
            "reselect_10x": report["speedup_min_reselect"] >= 10,
            "memory_under_1GiB": max(step_rss.values()) < GIB,
            "identical_band_counts": same and counts == ref_counts == expected,
        }
        _print(report)
        if results:
            Path(results).write_text(json.dumps(report, indent=2) + "\n")
        return report
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)


def _print(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"curate select vs reference split: {report['lines']:,} rollouts of {report['questions']:,} questions "
                    f"({report['cpu_count']} CPUs, via {report['via']}; medians of {report['repeats']} runs)")
    t.add_column("step")
    t.add_column("seconds", justify="right")
    t.add_column("peak RSS MiB", justify="right")
    t.add_row("reference_split.py (all three splits)", f"{report['reference']['seconds']:.2f}", str(report["reference"]["peak_rss_mib"]))
    for name, v in report["ours"].items():
        t.add_row(f"curate {name}", f"{v['seconds']:.2f}", str(v["peak_rss_mib"]))
    t.add_row("[bold]curate total", f"[bold]{report['ours_total_s']:.2f}", str(report["peak_rss_mib_max"]))
    Console().print(t)
    Console().print(f"speedup end to end {report['speedup_end_to_end']}x, slowest re-selection {report['speedup_min_reselect']}x; "
                    f"counts {report['counts']} (reference {report['reference']['counts']}); targets {report['targets_met']}")


def test_select_benchmark():
    report = run(int(os.environ.get("PEBR_BENCH_QUESTIONS", 250_000)), repeats=int(os.environ.get("PEBR_BENCH_REPEATS", 3)))
    assert all(report["targets_met"].values()), report["targets_met"]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=250_000)
    ap.add_argument("--dir", type=Path, default=None, help="work folder to keep (default: a temporary one, removed)")
    ap.add_argument("--results", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side; the figures are medians")
    ap.add_argument("--prepare", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prepare:  # the set-up step run() starts in a child process
        counts = generate(args.prepare, args.questions)
        ingest_samples(args.prepare / "store", args.questions)
        print(json.dumps(counts))
        sys.exit(0)
    rep = run(args.questions, args.dir, args.results, args.repeats)
    sys.exit(0 if all(rep["targets_met"].values()) else 1)
