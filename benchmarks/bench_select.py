"""Benchmark: `curate import-rollouts` + three `curate select` runs against the reference split.

A deterministic dump of 250,000 questions x 8 rollouts (2,000,000 lines, responses of about 100
characters like the reference's truncated dumps) and matching samples are generated; then each
step runs as its own process, timed, with its peak RSS read from wait4. The reference and ours
run in turns, --repeats times (each of ours from the same store without rollouts); the figures are
medians. Targets: end to end at least 2x faster than `reference_split.py`, each re-selection at
least 10x faster, every process of ours under 1 GiB, and band counts identical to the reference's.

At scale (`--scale`, or `--rollouts N`): in the same run, ours again on a dump of N rollouts
(20,000,000 with --scale: 2,500,000 questions x 8; a 4.2 GB dump, about 6 GB of free disk in
all, removed at the end), each repeat right after the 2 M one. Targets: import + three selects at most 12x the
2 M time (for 10x the rollouts), every process under 1.5 GiB, band counts as generated.

Run: python benchmarks/bench_select.py [--questions N] [--repeats R] [--scale | --rollouts N] [--dir DIR] [--results FILE]
(`just bench` runs it with --scale).
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
SCALE_ROLLOUTS = 20_000_000
SCALE_SLACK = 1.2
"""At scale, import + selects may take at most this much more than in proportion to the rollouts:
12x the 2 M time for 20 M."""
SCALE_MAX_RSS = int(1.5 * GIB)

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


def _workdir(work: Path | None) -> tuple[Path, bool]:
    """The work folder (a new temporary one unless given) and whether it is ours to remove."""
    own = work is None
    work = Path(work or tempfile.mkdtemp(prefix="pebr-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    marker = work / ".pebr-bench"
    if any(work.iterdir()) and not marker.exists():
        raise SystemExit(f"{work} is not empty and was not made by this benchmark; pass an empty or new --dir")
    marker.touch()
    for leftover in ("store", "pristine", "out", "ref", "rollout_results.jsonl", "data.json"):  # a kept --dir starts over
        shutil.rmtree(work / leftover, ignore_errors=True)
        (work / leftover).unlink(missing_ok=True)
    return work, own


def _prepare(work: Path, questions: int) -> tuple[dict[str, int], float]:
    """Generate the dump and the store's samples; returns the expected band counts and the seconds it took."""
    t0 = time.perf_counter()
    # Set up in a child process: a child forked from a big parent would report the parent's pages
    # in its peak RSS, so this process stays small.
    prep = subprocess.run([sys.executable, __file__, "--prepare", str(work), "--questions", str(questions)],
                          capture_output=True, text=True, cwd=REPO)
    if prep.returncode:
        raise RuntimeError(f"benchmark set-up failed ({prep.returncode}):\n{prep.stderr[-3000:]}")
    expected = json.loads(prep.stdout.strip().splitlines()[-1])
    shutil.copytree(work / "store", work / "pristine")  # the store before any import, for each repeat
    return expected, time.perf_counter() - t0


def _fresh_store(work: Path) -> None:
    for leftover in ("store", "out"):
        shutil.rmtree(work / leftover, ignore_errors=True)
    shutil.copytree(work / "pristine", work / "store")


def _steps(runs: list) -> tuple[dict, dict, list[float]]:
    """Median seconds and peak RSS of each step over the runs of `_ours`, and each run's total."""
    names = [name for name, _, _ in runs[0][0]]
    step_s = {name: statistics.median(steps[i][1] for steps, _ in runs) for i, name in enumerate(names)}
    step_rss = {name: max(steps[i][2] for steps, _ in runs) for i, name in enumerate(names)}
    return step_s, step_rss, [sum(s for _, s, _ in steps) for steps, _ in runs]


def run(questions: int = 250_000, work: Path | None = None, results: Path | None = None, repeats: int = 3,
        scale_rollouts: int | None = None) -> dict:
    """The 2 M comparison with the reference; with `scale_rollouts`, ours at that size too, each repeat
    right after the 2 M one (a shared machine drifts from minute to minute: in turns, both sizes see
    the same phases)."""
    work, own = _workdir(work)
    big_work = None
    try:
        expected, setup_s = _prepare(work, questions)
        if scale_rollouts:
            big_work, _ = _workdir(None)
            free, need = shutil.disk_usage(big_work).free, scale_rollouts * 300  # dump (210 B a line), samples, store, outputs
            if free < need:
                raise SystemExit(f"--rollouts {scale_rollouts:,} needs about {need / GIB:.0f} GiB free in {big_work.parent}; "
                                 f"{free / GIB:.0f} GiB are")
            big_expected, big_setup_s = _prepare(big_work, scale_rollouts // ROLLOUTS)
        use_cli = _cli_has_select()
        # Repeats alternate the reference and ours, so both see the same phases of a noisy machine;
        # each of ours starts from the same store, without rollouts.
        refs, runs, big_runs = [], [], []
        for _ in range(repeats):
            ref_s, ref_rss, ref_out = _timed([sys.executable, str(REPO / "benchmarks" / "reference_split.py"),
                                              str(work / "rollout_results.jsonl"), str(work / "data.json"), str(work / "ref")],
                                             dict(os.environ))
            refs.append((ref_s, ref_rss, json.loads(ref_out)))
            _fresh_store(work)
            runs.append(_ours(work / "store", work / "rollout_results.jsonl", work / "out", use_cli))
            if big_work is not None:
                _fresh_store(big_work)
                big_runs.append(_ours(big_work / "store", big_work / "rollout_results.jsonl", big_work / "out", use_cli))
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
        if big_work is not None:
            shutil.rmtree(big_work, ignore_errors=True)
    ref_s = statistics.median(s for s, _, _ in refs)
    step_s, step_rss, totals = _steps(runs)
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
                        "all_seconds": [round(steps[i][1], 2) for steps, _ in runs]} for i, name in enumerate(step_s)},
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
    if big_runs:
        report["scale"] = _scale_report(big_runs, big_expected, big_setup_s, report)
    _print(report)
    if results:
        Path(results).write_text(json.dumps(report, indent=2) + "\n")
    return report


def _scale_report(runs: list, expected: dict, setup_s: float, base: dict) -> dict:
    """Ours at scale against the 2 M figures of `base` (the same repeats)."""
    step_s, step_rss, totals = _steps(runs)
    total = statistics.median(totals)
    ratio = total / base["ours_total_s"]
    lines = sum(expected.values()) * ROLLOUTS
    allowed = SCALE_SLACK * lines / base["lines"]
    report = {
        "questions": lines // ROLLOUTS, "lines": lines, "setup_s": round(setup_s, 1), "repeats": len(runs),
        "ours": {name: {"seconds": round(step_s[name], 2), "peak_rss_mib": round(step_rss[name] / 2**20),
                        "all_seconds": [round(steps[i][1], 2) for steps, _ in runs],
                        "over_2m": round(step_s[name] / base["ours"][name]["seconds"], 1)} for i, name in enumerate(step_s)},
        "ours_total_s": round(total, 2), "ours_all_totals_s": [round(t, 2) for t in totals],
        "over_2m": round(ratio, 2), "allowed_over_2m": round(allowed, 2), "over_2m_per_repeat": [round(t / t2, 2) for t, t2 in zip(totals, base["ours_all_totals_s"])],
        "peak_rss_mib_max": round(max(step_rss.values()) / 2**20), "counts": runs[0][1], "expected": expected,
    }
    report["targets_met"] = {
        f"at_most_{allowed:g}x_the_2M_time": ratio <= allowed,
        "memory_under_1.5GiB": max(step_rss.values()) < SCALE_MAX_RSS,
        "band_counts_as_generated": all(c == expected for _, c in runs),
    }
    return report


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
    big = report.get("scale")
    if big:
        t = Table(title=f"curate at scale: {report['lines']:,} vs {big['lines']:,} rollouts, in turns in the same run "
                        f"(medians of {big['repeats']})")
        t.add_column("step")
        small_m, big_m = f"{report['lines'] / 1e6:g} M", f"{big['lines'] / 1e6:g} M"
        for col in (f"{small_m} s", f"{big_m} s", "ratio", f"{small_m} peak MiB", f"{big_m} peak MiB"):
            t.add_column(col, justify="right")
        for name, v in big["ours"].items():
            small = report["ours"][name]
            t.add_row(f"curate {name}", f"{small['seconds']:.2f}", f"{v['seconds']:.2f}", f"{v['over_2m']:.1f}x",
                      str(small["peak_rss_mib"]), str(v["peak_rss_mib"]))
        t.add_row("[bold]total", f"[bold]{report['ours_total_s']:.2f}", f"[bold]{big['ours_total_s']:.2f}",
                  f"[bold]{big['over_2m']:.1f}x", str(report["peak_rss_mib_max"]), str(big["peak_rss_mib_max"]))
        Console().print(t)
        Console().print(f"at scale: {big['over_2m']:.1f}x the {small_m} time for {big['lines'] / report['lines']:g}x the rollouts "
                        f"(target at most {big['allowed_over_2m']:g}x), peak {big['peak_rss_mib_max']} MiB (target under 1.5 GiB); "
                        f"counts {big['counts']}; targets {big['targets_met']}")


def test_select_benchmark():
    report = run(int(os.environ.get("PEBR_BENCH_QUESTIONS", 250_000)), repeats=int(os.environ.get("PEBR_BENCH_REPEATS", 3)))
    assert all(report["targets_met"].values()), report["targets_met"]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=250_000)
    ap.add_argument("--dir", type=Path, default=None, help="work folder to keep (default: a temporary one, removed)")
    ap.add_argument("--results", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side; the figures are medians")
    ap.add_argument("--rollouts", type=int, default=None,
                    help="also run ours on a dump of this many rollouts, in the same run (e.g. 20000000)")
    ap.add_argument("--scale", action="store_true", help=f"--rollouts {SCALE_ROLLOUTS}")
    ap.add_argument("--prepare", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.prepare:  # the set-up step run() starts in a child process
        counts = generate(args.prepare, args.questions)
        ingest_samples(args.prepare / "store", args.questions)
        print(json.dumps(counts))
        sys.exit(0)
    scale = args.rollouts or (SCALE_ROLLOUTS if args.scale else None)
    rep = run(args.questions, args.dir, args.results, args.repeats, scale)
    met = [*rep["targets_met"].values(), *rep.get("scale", {}).get("targets_met", {}).values()]
    sys.exit(0 if all(met) else 1)
