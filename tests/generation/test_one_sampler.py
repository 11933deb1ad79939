"""One sampler: `curate score` and `train eval` generate through the same engine, prompt, token rules and seeds."""

from __future__ import annotations

import json

from conftest import small_store

from curate.score import ScoreOptions, score
from generation import SamplingConfig
from train.config import EvalConfig
from train.evaluate import evaluate


def test_score_and_eval_give_identical_answers_for_the_same_seeds(tmp_path, tiny_model):
    store = small_store(tmp_path, n=5)
    sampling = SamplingConfig(n=1, temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7)
    run = score(store, ScoreOptions(model=str(tiny_model), sampling=sampling, chunk=2)).run_id
    con = store.connect()
    scored = dict(con.execute("SELECT sample_id, response FROM rollouts WHERE run_id = ?", [run]).fetchall())
    samples = con.execute("SELECT sample_id, problem, answer, images FROM samples ORDER BY sample_id").fetchall()
    # The held-out file a user would write from the store: the same questions, images and sample ids.
    data = tmp_path / "held_out.jsonl"
    data.write_text("".join(json.dumps({"sample_id": sid, "problem": p, "answer": a, "images": imgs}) + "\n"
                            for sid, p, a, imgs in samples))
    responses = tmp_path / "responses.jsonl"
    # A batch size other than scoring's: answers depend on the seeds, not on the batching.
    cfg = EvalConfig(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=7, batch_size=3)
    evaluate(tiny_model, data, cfg, image_root=store.root, responses_out=responses)
    answered = {r["sample_id"]: r["response"] for r in map(json.loads, responses.read_text().splitlines())}
    assert len(answered) == len(scored) == 5
    assert answered == scored
    # ... and a different seed gives different answers: the comparison above could fail.
    evaluate(tiny_model, data, EvalConfig(temperature=1.0, top_p=0.95, max_new_tokens=12, seed=8), image_root=store.root,
             responses_out=responses)
    other = {r["sample_id"]: r["response"] for r in map(json.loads, responses.read_text().splitlines())}
    assert other != scored
