from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, small_store, vllm_python

from curate.score import ScoreOptions, score
from generation.base import Completion, SamplingConfig
from schemas.errors import PebrError


class SeedEngine:
    """A deterministic engine for scheduling tests: rollout j is right iff its seed says so.

    Pass rates then vary across samples (some all right, some all wrong, most mixed), which a
    random-weight model cannot give.
    """

    name = "seed"
    model_id = "seed"

    def __init__(self, answers: dict[str, str], p_right: dict[str, float]):
        self.answers, self.p_right, self.calls = answers, p_right, 0

    def generate(self, requests, cfg):
        self.calls += 1
        out = []
        for r in requests:
            comps = []
            for seed in r.seeds:
                ok = (seed % 1000) / 1000 < self.p_right[r.key]
                ans = self.answers[r.key] if ok else "wrong"
                seen = "a circle" if seed % 13 else "nothing"  # the keyword reward varies within some groups
                comps.append(Completion(f"### Image Description: {seen}\n### The final answer is: {ans}", 9, "stop"))
            out.append(comps)
        return out


def _engine_for(store):
    con = store.connect()
    rows = con.execute("select sample_id, answer from samples order by sample_id").fetchall()
    p = [0.0, 1.0, 0.5, 0.3, 0.8, 0.1, 0.6, 0.95]
    return SeedEngine(dict(rows), {sid: p[i % len(p)] for i, (sid, _) in enumerate(rows)})


def _opts(model, **kw):
    kw.setdefault("sampling", SamplingConfig(n=8, max_new_tokens=8))
    return ScoreOptions(model=str(model), **kw)


def _counts(store, run_id):
    return store.connect().execute(
        "select sample_id, count(*), count(distinct rollout_idx), min(rollout_idx), max(rollout_idx) "
        "from rollouts where run_id = ? group by 1", [run_id]).fetchall()


def test_adaptive_gives_the_same_bands_with_fewer_rollouts(tmp_path):
    store = small_store(tmp_path, n=16)
    model = tmp_path / "m"
    model.mkdir()
    full = score(store, _opts(model), engine=_engine_for(store))
    adaptive = score(store, _opts(model, adaptive=True), engine=_engine_for(store))
    assert full.run_id != adaptive.run_id
    con = store.connect()
    bands = lambda run: dict(con.execute("select sample_id, band from difficulty where run_id = ?", [run]).fetchall())  # noqa: E731
    assert bands(full.run_id) == bands(adaptive.run_id)
    assert set(bands(full.run_id).values()) == {"easy", "medium", "hard"}
    assert adaptive.generated < full.generated == 16 * 8
    # every rollout the adaptive run made is the very rollout the full run made
    same = con.execute("""select count(*) from rollouts a join rollouts f using (sample_id, rollout_idx)
        where a.run_id = ? and f.run_id = ? and a.response = f.response and a.seed = f.seed""",
                       [adaptive.run_id, full.run_id]).fetchone()[0]
    assert same == adaptive.generated
    # easy and hard samples got all n
    short = con.execute("select count(*) from difficulty where run_id = ? and band != 'medium' and n != 8",
                        [adaptive.run_id]).fetchone()[0]
    assert short == 0


def test_shards_cover_every_sample_once_and_rerun_adds_nothing(tmp_path):
    store = small_store(tmp_path, n=12)
    model = tmp_path / "m"
    model.mkdir()
    reports = [score(store, _opts(model, shard=(i, 3)), engine=_engine_for(store)) for i in range(3)]
    assert len({r.run_id for r in reports}) == 1
    assert sum(r.samples for r in reports) == 12
    counts = _counts(store, reports[0].run_id)
    assert len(counts) == 12 and all(c[1:] == (8, 8, 0, 7) for c in counts)
    again = score(store, _opts(model), engine=_engine_for(store))
    assert again.generated == 0 and again.already_done == 96
    # The run's cached difficulty covers all three shards' parts (earlier shards' files are superseded).
    from curate.difficulty import cache_path, load_difficulty

    cached = list((store.root / "cache" / "difficulty").glob(f"{again.run_id}.*.parquet"))
    assert cache_path(store, again.run_id) in cached
    con = store.connect()
    rows = con.execute(f"select sample_id, n, k from {load_difficulty(store, con, again.run_id)} order by 1").fetchall()
    assert rows == con.execute("select sample_id, n, k from difficulty where run_id = ? order by 1", [again.run_id]).fetchall()
    assert len(rows) == 12
    with pytest.raises(PebrError, match="shard"):
        score(store, _opts(model, shard=(3, 3)), engine=_engine_for(store))


def test_hf_engine_writes_exactly_n(tmp_path, tiny_model):
    store = small_store(tmp_path, n=3)
    r = score(store, _opts(tiny_model, sampling=SamplingConfig(n=3, max_new_tokens=6), chunk=2))
    counts = _counts(store, r.run_id)
    assert len(counts) == 3 and all(c[1:] == (3, 3, 0, 2) for c in counts)
    run = store.connect().execute("select model, engine, sampling, grader_version from runs where run_id = ?",
                                  [r.run_id]).fetchone()
    assert run[1] == "hf" and '"n": 3' in run[2] and run[3].startswith("pebr-rewards")


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_leaves_exactly_n(tmp_path, tiny_model):
    store = small_store(tmp_path, n=6)
    cmd = [sys.executable, "-m", "curate.cli", "score", "--model", str(tiny_model), "--n", "4", "--max-new-tokens", "12",
           "--chunk", "1", "--store", str(store.root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = store.table_dir("rollouts")
    deadline = time.time() + 240
    while time.time() < deadline and len(list(parts.glob("part-score-*.parquet"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(parts.glob("part-score-*.parquet")))
    assert 2 <= done_before < 6, "the kill should land mid-run"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    con = store.connect()
    run_id = con.execute("select run_id from runs where kind = 'score'").fetchone()[0]
    counts = _counts(store, run_id)
    assert len(counts) == 6 and all(c[1:] == (4, 4, 0, 3) for c in counts)
    assert "already done" in r.stderr


@pytest.mark.vllm
@pytest.mark.slow
def test_curate_score_with_the_vllm_engine_writes_exactly_n(tmp_path, tiny_model):
    python = vllm_python()
    store = small_store(tmp_path, n=4)
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    cmd = [str(python), "-m", "curate.cli", "score", "--engine", "vllm", "--model", str(tiny_model), "--n", "3",
           "--max-new-tokens", "8", "--store", str(store.root)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    con = store.connect()
    run_id, engine = con.execute("select run_id, engine from runs where kind = 'score'").fetchone()
    assert engine == "vllm"
    counts = _counts(store, run_id)
    assert len(counts) == 4 and all(c[1:] == (3, 3, 0, 2) for c in counts)


def test_stage_manifest_predicts_zero_advantage_from_the_rollouts(tmp_path):
    import json

    from curate.select import SelectOptions, select_stage

    store = small_store(tmp_path, n=32)
    model = tmp_path / "m"
    model.mkdir()
    run = score(store, _opts(model), engine=_engine_for(store)).run_id
    con = store.connect()
    for stage, band in (("perception", "easy"), ("reasoning", "medium")):
        r = select_stage(store, SelectOptions(stage=stage, out=tmp_path / stage))
        manifest = json.loads((tmp_path / stage / "manifest.json").read_text())
        ids = con.execute("select sample_id from difficulty where run_id = ? and band = ?", [run, band]).fetchall()
        assert r.rows == len(ids) > 0
        if stage == "perception":
            # a group is degenerate under the perception reward when every rollout found the keyword, or none did
            flat = con.execute("""select avg(case when min(keyword) = max(keyword) then 1.0 else 0.0 end) over ()
                from rollouts join difficulty d using (run_id, sample_id) where run_id = ? and d.band = 'easy'
                group by sample_id limit 1""", [run]).fetchone()[0]
        else:
            flat = con.execute("select avg(p_degenerate) from difficulty where run_id = ? and band = 'medium'", [run]).fetchone()[0]
        assert 0 < flat < 1 and manifest["zero_advantage"]["predicted"] == pytest.approx(flat)


@pytest.mark.slow
def test_the_hf_static_mode_scores_the_rollouts_of_plain_generate(tmp_path, tiny_model):
    """`curate score --hf-mode static` reaches the engine and changes no rollout: same run id, same responses."""
    def rollouts(store):
        return store.connect().execute("select run_id, sample_id, rollout_idx, response, n_tokens, finish_reason "
                                       "from rollouts order by all").fetchall()

    plain = small_store(tmp_path / "plain", n=3)
    score(plain, _opts(tiny_model, sampling=SamplingConfig(n=3, max_new_tokens=10), chunk=2))
    fast = small_store(tmp_path / "fast", n=3)
    cmd = [sys.executable, "-m", "curate.cli", "score", "--model", str(tiny_model), "--n", "3", "--max-new-tokens", "10",
           "--chunk", "2", "--hf-mode", "static", "--store", str(fast.root)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert rollouts(fast) == rollouts(plain) and len(rollouts(plain)) == 9
    config = json.loads(fast.connect().execute("select config from runs where kind = 'score'").fetchone()[0])
    assert config["engine_options"]["hf_mode"] == "static"
    r = subprocess.run([*cmd[:-2], "--hf-mode", "paged", "--new-run", "--store", str(fast.root)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and "token ids only" in r.stderr and "Traceback" not in r.stderr
