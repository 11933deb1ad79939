"""benchmarks/gpu_check.py in its smoke mode: every phase of the GPU run, on a CPU with a tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_the_smoke_run_measures_every_phase_and_writes_json(tmp_path):
    # One thread: the tiny model gains nothing from more, and on a busy machine threads wait on each other.
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--work", str(tmp_path / "work")],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    results = json.loads((tmp_path / "out" / "gpu_check.json").read_text())  # $OUT/gpu_check.json when OUT is set
    phases = results["phases"]
    assert list(phases) == ["build", "scoring_generate", "scoring_static", "grpo_generate", "grpo_static"]
    assert not [name for name, phase in phases.items() if "error" in phase or "skipped" in phase]
    plain, fast = phases["scoring_generate"], phases["scoring_static"]
    assert plain["rollouts"] == fast["rollouts"] == 3 * 8 and plain["tokens_per_s"] > 0 and fast["tokens_per_s"] > 0
    assert (plain["mode"], fast["mode"]) == ("generate", "static")
    assert fast["identical_to_generate"] == 1.0  # the same seeds give the same rollouts in both modes
    for mode in ("generate", "static"):
        grpo = phases[f"grpo_{mode}"]
        assert grpo["mode"] == mode and len(grpo["step_seconds"]) == 2 and grpo["seconds_per_step_after_first"] > 0
    assert results["summary"]["scoring_tokens_per_s"]["speedup"] > 0
    assert not list((tmp_path / "work").glob("grpo-*/checkpoint-*")), "a speed check saves no checkpoint"
    assert "scoring_static" in r.stdout and "figures in" in r.stdout
