"""The paper's rewards as a volcengine/verl custom reward function.

verl calls ``compute_score(data_source, solution_str, ground_truth, extra_info)`` once per response
(``custom_reward_function.path=<this file> custom_reward_function.name=compute_score``). The stage
comes from ``extra_info["stage"]`` and the key words from ``extra_info["key_words"]``, as
`curate select --format verl` writes them. The result is a dict: verl trains on ``score`` and writes
every key into its rollout dump (``trainer.rollout_data_dir``), so the dump carries ``acc`` (the
correctness `curate import-rollouts` reads) and the sample's ``qid`` (``--qid-field qid``).

verl hands a reward function no image, so the perception stage's CLIP term is left out here and
the other terms renormalised, as when no alignment model is configured.

>>> out = compute_score("geoqa", "### The final answer is: 3", "3", {"qid": "q1", "stage": "reasoning"})
>>> out["acc"], out["qid"], round(out["score"], 2)
(True, 'q1', 0.9)
"""

from __future__ import annotations

from typing import Any

from rewards.stages import grade
from schemas import GRPO_STAGES


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **_: Any) -> dict:
    extra = extra_info or {}
    stage = extra.get("stage")
    if stage not in GRPO_STAGES:  # a warm-up export, or a dataset of another tool: the reasoning reward
        stage = "reasoning"
    record = {"response": solution_str, "answer": ground_truth, "key_words": list(extra.get("key_words") or [])}
    graded = grade([record], stage)[0]
    return {"score": float(graded["rewards"]["overall"] or 0.0), "acc": bool(graded["correct"]),
            "qid": extra.get("qid"), "sample_id": extra.get("sample_id")}
