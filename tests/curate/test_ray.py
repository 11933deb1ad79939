"""`curate score --ray`: engine replicas on a local Ray give a single process's rollouts, survive a killed
worker, and never touch the store; scoring without --ray never loads Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import REPO, small_store
from typer.testing import CliRunner

from curate.cli import app
from curate.executors import RayExecutor, RayOptions
from curate.score import ScoreOptions, score
from generation.base import SamplingConfig
from schemas import REWARD_COLUMNS
from schemas.errors import PebrError

pytestmark = pytest.mark.slow

COLUMNS = ("sample_id", "rollout_idx", "seed", "response", "n_tokens", "finish_reason", *REWARD_COLUMNS, "correct")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (it takes ~3 s to start); `local` so that a cluster someone else
    started on this machine is never joined."""
    try:
        import ray
    except ImportError:
        pytest.fail("Ray is not installed: pip install -e '.[ray]' (just setup installs it)")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def _rollouts(store) -> tuple[str, list[tuple]]:
    con = store.connect()
    (run_id,) = con.execute("select run_id from runs where kind = 'score'").fetchone()
    rows = con.execute(f"select {', '.join(COLUMNS)} from rollouts where run_id = ? order by sample_id, rollout_idx",
                       [run_id]).fetchall()
    return run_id, rows


def _session(store) -> dict:
    import json

    (config,) = store.connect().execute("select config from runs where kind = 'score-session'").fetchone()
    return json.loads(config)


def test_two_replicas_give_the_rollouts_of_one_process(local_ray, tiny_model, tmp_path):
    n, tokens = 3, 8
    single = small_store(tmp_path / "single", n=4)
    score(single, ScoreOptions(model=str(tiny_model), sampling=SamplingConfig(n=n, max_new_tokens=tokens), chunk=1))
    run_id, expected = _rollouts(single)

    store = small_store(tmp_path / "ray", n=4)
    holders: set[str] = set()
    done = threading.Event()

    def watch_lock() -> None:  # who holds the store's writer lock, sampled all through the run
        lock = store.root / ".lock"
        while not done.is_set():
            text = lock.read_text() if lock.exists() else ""
            if text:
                holders.add(text)
            time.sleep(0.001)  # a write holds the lock for tens of milliseconds

    watcher = threading.Thread(target=watch_lock, daemon=True)
    watcher.start()
    args = ["score", "--model", str(tiny_model), "--n", str(n), "--max-new-tokens", str(tokens), "--chunk", "1",
            "--store", str(store.root)]
    try:
        r = CliRunner().invoke(app, [*args, "--ray", "--replicas", "2"])
    finally:
        done.set()
        watcher.join()
    assert r.exit_code == 0, r.output
    assert "replica 0 on" in r.output and "replica 1 on" in r.output

    ray_run, got = _rollouts(store)
    assert ray_run == run_id  # replicas and addresses are not part of the run's fingerprint
    assert len(got) == 4 * n and got == expected
    # The driver (this process) was the only writer; the replicas are other processes that did the work.
    assert holders and all(h.startswith(f"pid {os.getpid()} ") for h in holders), holders
    session = _session(store)
    assert session["executor"] == "ray" and [x["replica"] for x in session["replicas"]] == [0, 1]
    assert sum(x["rollouts"] for x in session["replicas"]) == 4 * n
    assert all(x["rollouts"] > 0 and x["rollouts_per_s"] > 0 and os.getpid() not in x["pids"] for x in session["replicas"])
    # The same command resumes the same run, with any replica count or none: nothing is left to do.
    for again in ([*args, "--ray", "--replicas", "1"], args):
        r = CliRunner().invoke(app, again)
        assert r.exit_code == 0 and "0 rollouts generated (12 already done)" in " ".join(r.output.split()), r.output
    # Adaptive rounds on the replicas: a new run whose every rollout is the full run's, and the same bands.
    r = CliRunner().invoke(app, [*args, "--ray", "--replicas", "2", "--adaptive", "--round-size", "2"])
    assert r.exit_code == 0, r.output
    con = store.connect()
    adaptive = con.execute("select run_id from runs where kind = 'score' and run_id != ?", [run_id]).fetchone()[0]
    rows = con.execute(f"select {', '.join(COLUMNS)} from rollouts where run_id = ?", [adaptive]).fetchall()
    assert rows and set(rows) <= set(expected)
    bands = "select sample_id, band from difficulty where run_id = ? order by 1"
    assert con.execute(bands, [adaptive]).fetchall() == con.execute(bands, [run_id]).fetchall()


def test_a_killed_replica_worker_loses_and_doubles_nothing(local_ray, tiny_model, tmp_path):
    import psutil

    n = 4
    store = small_store(tmp_path, n=6)
    executor = RayExecutor(RayOptions(replicas=2))
    killed: list[int] = []

    def kill_after_first_chunk(advance: int, _total) -> None:
        if advance and not killed:  # the replica that answered first holds two more chunks by now
            (busy,) = [s for s in executor.stats if s.chunks]
            killed.append(busy.pids[-1])
            os.kill(busy.pids[-1], signal.SIGKILL)

    try:
        report = score(store, ScoreOptions(model=str(tiny_model), sampling=SamplingConfig(n=n, max_new_tokens=64), chunk=1),
                       progress=kill_after_first_chunk, executor=executor)
        # Workers hold no file of the store (they were sent bytes, never a path).
        live = [s.pids[-1] for s in executor.stats if s.pids and s.pids[-1] not in killed]
        assert live
        for pid in live:
            opened = [f.path for f in psutil.Process(pid).open_files()]
            assert not [p for p in opened if p.startswith(str(store.root))], opened
    finally:
        executor.close()
    assert killed and report.generated == 6 * n
    assert sum(s.lost_chunks for s in executor.stats) >= 1, "the kill should land while the replica held a chunk"
    counts = store.connect().execute(
        "select count(*), count(distinct rollout_idx), min(rollout_idx), max(rollout_idx) from rollouts "
        "where run_id = ? group by sample_id", [report.run_id]).fetchall()
    assert len(counts) == 6 and set(counts) == {(n, n, 0, n - 1)}
    assert _session(store)["replicas"] == report.replicas


def test_replica_layouts_the_cluster_cannot_hold_are_one_clear_error(local_ray, tiny_model, tmp_path):
    store = small_store(tmp_path, n=1)
    opts = ScoreOptions(model=str(tiny_model), sampling=SamplingConfig(n=1, max_new_tokens=2))
    with pytest.raises(PebrError, match="need 3 CPUs"):
        score(store, opts, executor=RayExecutor(RayOptions(replicas=3)))
    with pytest.raises(PebrError, match="needs --engine vllm"):
        score(store, opts, executor=RayExecutor(RayOptions(gpus_per_replica=2)))
    r = CliRunner().invoke(app, ["score", "--model", str(tiny_model), "--replicas", "2", "--store", str(store.root)])
    assert isinstance(r.exception, PebrError) and "apply with --ray" in str(r.exception)


def test_scoring_without_ray_never_imports_it(tiny_model, tmp_path):
    store = small_store(tmp_path, n=1)
    code = ("import sys\nfrom curate.cli import main\nsys.argv = ['curate', *sys.argv[1:]]\ntry:\n    main()\n"
            "except SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print('RAY LOADED' if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 'NO RAY')\n")
    r = subprocess.run([sys.executable, "-c", code, "score", "--model", str(tiny_model), "--n", "1", "--max-new-tokens",
                        "2", "--store", str(store.root)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("NO RAY"), r.stdout
