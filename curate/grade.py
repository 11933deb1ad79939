"""Grading without generating: a JSONL of responses (`curate grade`), or a stored run (`curate regrade`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from curate.difficulty import warm_cache
from curate.store import Store, new_run_id
from schemas import REWARD_COLUMNS
from schemas import REWARD_STAGES as STAGES
from schemas.errors import PebrError


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict | None, str | None]]:
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield i + 1, None, f"line {i + 1}: not JSON ({exc})"
                continue
            if not isinstance(value, dict) or "response" not in value or (
                    "answer" not in value and "ground_truth" not in value):
                yield i + 1, None, f"line {i + 1}: needs `response` and `answer` (or `ground_truth`)"
                continue
            yield i + 1, value, None


@dataclass
class GradeReport:
    graded: int = 0
    skipped: list[str] | None = None
    note: str | None = None


def grade_file(path: Path, stage: str, out, cfg=None, batch: int = 256) -> GradeReport:
    """Write each input line plus its `rewards` (and `correct`) to `out`; bad lines are reported, not written."""
    from rewards import RewardConfig, grade, renormalisation_note

    if stage not in STAGES:
        raise PebrError(f"--stage must be one of {', '.join(STAGES)}")
    if not path.is_file():
        raise PebrError(f"{path}: no such file")
    cfg = cfg or RewardConfig()
    report = GradeReport(skipped=[], note=renormalisation_note(stage, cfg))
    pending: list[dict] = []

    def flush() -> None:
        for rec in grade(pending, stage, cfg):
            out.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
        report.graded += len(pending)
        pending.clear()

    for _, value, error in _read_jsonl(path):
        if error:
            report.skipped.append(error)
            continue
        pending.append(value)
        if len(pending) >= batch:
            flush()
    flush()
    return report


def regrade(store: Store, run: str, cfg=None, batch: int = 4096, progress=None) -> tuple[str, int]:
    """Re-grade a stored run's rollouts with the current graders into a new run; nothing is generated."""
    from rewards import GRADER_VERSION, RewardConfig, grade

    cfg = cfg or RewardConfig()
    con = store.require().connect()
    src = con.execute("SELECT kind, model, engine, sampling FROM runs WHERE run_id = ?", [run]).fetchall()
    if not src:
        raise PebrError(f"no run {run}")
    src = src[0]
    total, truncated = con.execute("SELECT count(*), count(*) FILTER (truncated) FROM rollouts WHERE run_id = ?",
                                   [run]).fetchall()[0]
    if not total:
        raise PebrError(f"run {run} has no rollouts")
    if truncated:
        raise PebrError(f"run {run}: {truncated:,} of its {total:,} responses are truncated (the reference dump's first "
                        "and last 50 characters), so they cannot be graded again; import the full responses instead")
    reader = con.sql(
        "SELECT r.sample_id, r.qid, r.rollout_idx, r.seed, r.response, r.n_tokens, r.finish_reason, "
        "coalesce(s.answer, NULL) AS answer, s.key_words FROM rollouts r LEFT JOIN samples s USING (sample_id) "
        "WHERE r.run_id = $run ORDER BY r.sample_id, r.rollout_idx", params={"run": run}).to_arrow_reader(batch)
    new_run = new_run_id("regrade")
    with store.writing(f"curate regrade {run}"):
        for rb in reader:
            rows = rb.to_pylist()
            records = [{**r, "response_length": r["n_tokens"]} for r in rows if r["answer"] is not None]
            graded = grade(records, "sampling", cfg)
            out = [{
                "run_id": new_run, "sample_id": g["sample_id"], "qid": g["qid"], "rollout_idx": g["rollout_idx"],
                "seed": g["seed"], "response": g["response"], "n_tokens": g["n_tokens"], "finish_reason": g["finish_reason"],
                **{k: g["rewards"].get(k) for k in REWARD_COLUMNS},
                "correct": bool(g["correct"]),
            } for g in graded]
            store.write("rollouts", pa.Table.from_pylist(out), new_run)
            if progress:
                progress(len(rows))
        # The run row commits the new rollouts; parts of a regrade killed before it are dropped.
        store.add_run(new_run, "regrade", model=src[1], engine=src[2], sampling=src[3], parent_run=run,
                      grader_version=GRADER_VERSION, config={"source_run": run})
    con.close()
    warm_cache(store, new_run)
    return new_run, total
