"""Stage composites: weights, renormalisation without a clip model, and grading of records."""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import rewards
from rewards import (
    GRADER_VERSION,
    RewardConfig,
    grade,
    grader_version,
    overall_reward,
    renormalisation_note,
    stage_reward_functions,
    stage_weights,
)

FULL = (
    "### Image Description: a red circle and a blue square\n"
    "### Rationales: count the circles\n"
    "### Step 1: one circle\n"
    "### The final answer is: 1"
)


def test_default_config_matches_the_paper():
    cfg = RewardConfig()
    assert (cfg.length_limit, cfg.clip_threshold, cfg.clip_image_size, cfg.clip_text_max_tokens) == (512, 0.4, 336, 248)
    assert cfg.clip_model_path is None and cfg.allow_remote_code is False
    assert cfg.weights("perception") == {"clip": 0.4, "keyword": 0.4, "format": 0.1, "length": 0.1, "accuracy": 0.0}
    assert cfg.weights("reasoning") == {"accuracy": 0.9, "format": 0.1}
    assert cfg.weights("sampling") == {"accuracy": 1.0}
    with pytest.raises(ValueError, match="unknown reward stage"):
        cfg.weights("warmup")


def test_every_config_field_has_a_docstring():
    import inspect

    import rewards.config

    source = inspect.getsource(rewards.config.RewardConfig)
    for f in dataclasses.fields(RewardConfig):
        after = source.split(f"    {f.name}:", 1)[1].splitlines()[1].strip()
        assert after.startswith('"""'), f.name


def test_stage_functions_for_trl():
    funcs, weights = stage_reward_functions("sampling")
    assert [f.__name__ for f in funcs] == ["accuracy"] and weights == [1.0]
    funcs, weights = stage_reward_functions("reasoning")
    assert [f.__name__ for f in funcs] == ["accuracy", "format"] and weights == [0.9, 0.1]


def test_perception_without_clip_renormalises():
    funcs, weights = stage_reward_functions("perception")
    assert [f.__name__ for f in funcs] == ["keyword", "format", "length", "accuracy"]
    assert weights == pytest.approx([0.4 / 0.6, 0.1 / 0.6, 0.1 / 0.6, 0.0])
    assert sum(weights) == pytest.approx(1.0)
    note = renormalisation_note("perception")
    assert note is not None and "clip" in note and "0.667" in note


def test_perception_with_clip_keeps_paper_weights(tmp_path):
    cfg = RewardConfig(clip_model_path=str(tmp_path / "not-loaded-yet"))
    funcs, weights = stage_reward_functions("perception", cfg)
    assert [f.__name__ for f in funcs] == ["clip", "keyword", "format", "length", "accuracy"]
    assert weights == [0.4, 0.4, 0.1, 0.1, 0.0]
    assert renormalisation_note("perception", cfg) is None
    assert renormalisation_note("reasoning") is None


def test_custom_weights_renormalise_too():
    cfg = RewardConfig(perception_weights={"clip": 0.5, "keyword": 0.25, "format": 0.25})
    assert stage_weights("perception", cfg) == {"keyword": 0.5, "format": 0.5}


def test_clip_only_stage_without_model_fails_loudly():
    with pytest.raises(ValueError, match="no positive weight"):
        stage_weights("perception", RewardConfig(perception_weights={"clip": 1.0}))


def test_stage_functions_follow_config_and_pickle():
    cfg = RewardConfig(length_limit=4, reasoning_weights={"length": 1.0})
    funcs, _ = stage_reward_functions("reasoning", cfg)
    length = pickle.loads(pickle.dumps(funcs[0]))
    assert length.__name__ == "length"
    assert length(["a b c d e f g h"]) == [0.5]


def test_stage_functions_accept_trl_call():
    funcs, weights = stage_reward_functions("perception")
    completions = [[{"role": "assistant", "content": FULL}]] * 2
    kwargs = {
        "prompts": [[{"role": "user", "content": "q"}]] * 2,
        "completion_ids": [[0] * 256, [0] * 1024],
        "trainer_state": None,
        "answer": ["1", "2"],
        "key_words": [["circle", "square"], ["circle", "triangle"]],
        "images": [[None], [None]],
    }
    per_func = [f(completions=completions, **kwargs) for f in funcs]
    assert per_func == [[1.0, 0.5], [1.0, 1.0], [1.0, 0.5], [1.0, 0.0]]
    totals = [sum(w * r[i] for w, r in zip(weights, per_func)) for i in range(2)]
    assert totals == pytest.approx([1.0, (0.4 * 0.5 + 0.1 + 0.1 * 0.5) / 0.6])


def test_grade_perception_records_without_clip():
    records = [
        {"response": FULL, "answer": "1", "key_words": ["circle", "square"], "response_length": 100},
        {"response": "1", "ground_truth": 1, "key_words": ["circle"], "response_length": 1024},
    ]
    out = grade(records, "perception")
    first, second = (o["rewards"] for o in out)
    assert first == {"accuracy": 1.0, "format": 1.0, "keyword": 1.0, "length": 1.0, "clip": None,
                     "overall": pytest.approx(1.0)}
    assert second["accuracy"] == 1.0 and second["format"] == 0.0 and second["keyword"] == 0.0
    assert second["length"] == 0.5
    assert second["overall"] == pytest.approx(0.1 * 0.5 / 0.6)
    assert [o["correct"] for o in out] == [True, True]
    assert out[0]["response"] == FULL and out[1]["ground_truth"] == 1  # the record is kept


def test_grade_reasoning_and_sampling_overall():
    records = [{"response": FULL, "answer": "1"}, {"response": FULL, "answer": "2"}]
    reasoning = grade(records, "reasoning")
    assert [r["rewards"]["overall"] for r in reasoning] == pytest.approx([1.0, 0.1])
    assert [r["correct"] for r in reasoning] == [True, False]
    sampling = grade(records, "sampling")
    assert [r["rewards"]["overall"] for r in sampling] == [1.0, 0.0]


def test_grade_without_ground_truth_is_not_applicable():
    out = grade([{"response": FULL}], "reasoning")[0]
    assert out["rewards"]["accuracy"] is None
    assert out["correct"] is False
    assert out["rewards"]["overall"] == pytest.approx(0.1)  # None rewards drop out, like TRL's nansum
    assert grade([{"response": FULL}], "sampling")[0]["rewards"]["overall"] is None


def test_overall_reward_sums_present_terms():
    assert overall_reward({"a": 1.0, "b": 0.5}, {"a": 0.5, "b": 0.5}) == 0.75
    assert overall_reward({"a": None}, {"a": 1.0}) is None


def test_grader_version():
    assert GRADER_VERSION.startswith("pebr-rewards/1 mathruler-0.1")
    assert grader_version("math_verify").startswith("pebr-rewards/1 math-verify-")


def test_import_rewards_is_light():
    code = "import sys, rewards; print(sorted(m for m in ('torch', 'transformers', 'sympy') if m in sys.modules))"
    root = Path(rewards.__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"
