from __future__ import annotations

import json
import subprocess
import sys

from conftest import small_store, write_jsonl

from curate.grade import regrade
from curate.importer import import_rollouts


def test_grade_cli_adds_rewards_and_reports_bad_lines(tmp_path):
    lines = [
        {"response": "### Image Description: a red circle\n### Rationales: r\n### Step 1: s\n### The final answer is: \\frac{1}{2}",
         "answer": "0.5", "key_words": ["red circle", "blue square"], "response_length": 600},
        {"response": "The answer is 3", "ground_truth": 3},
        "not json",
        {"answer": "1"},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    r = subprocess.run([sys.executable, "-m", "curate.cli", "grade", str(src), "--stage", "perception", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "skipped 2" in r.stderr and "no alignment model" in r.stderr
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(got) == 2
    first = got[0]["rewards"]
    assert (first["format"], first["accuracy"], first["keyword"]) == (1.0, 1.0, 0.5)
    assert abs(first["length"] - 512 / 600) < 1e-9 and first["clip"] is None
    assert abs(first["overall"] - (0.4 * 0.5 + 0.1 * 1.0 + 0.1 * 512 / 600) / 0.6) < 1e-6
    assert got[1]["rewards"]["format"] == 0.0 and got[1]["correct"] is False


def test_regrade_makes_a_new_run_with_the_same_rollouts(tmp_path):
    store = small_store(tmp_path, n=2)
    dump = [{"qid": "q0", "response": "### The final answer is: 0", "ground_truth": "0", "score": {"accuracy": 0.0}},
            {"qid": "q1", "response": "### The final answer is: 7", "ground_truth": "1", "score": {"accuracy": 1.0}}]
    imp = import_rollouts(store, write_jsonl(tmp_path / "r.jsonl", dump))
    new_run, total = regrade(store, imp.run_id)
    assert total == 2
    con = store.connect()
    got = dict(con.execute("select qid, correct from rollouts where run_id = ?", [new_run]).fetchall())
    assert got == {"q0": True, "q1": False}  # the dump's own scores were wrong; the graders fix them
    assert con.execute("select parent_run from runs where run_id = ?", [new_run]).fetchone()[0] == imp.run_id
