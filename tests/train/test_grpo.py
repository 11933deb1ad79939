"""The GRPO stage as TRL sees it: every paper knob reaches `trainer.args`, and the rollouts keep the token rules."""

from __future__ import annotations

import pytest

from train.config import stage_config
from train.grpo import build_stage, trl_batching


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from curate.synth import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, n=40, seed=5, test_fraction=0.5)
    return out


@pytest.mark.parametrize("stage", ["perception", "reasoning"])
def test_every_paper_knob_reaches_trl(tmp_path, tiny_model, world, stage):
    from generation.tokens import banned_token_ids

    cfg = stage_config(stage, overrides=dict(num_generations=4, micro_batch_size=4, update_batch_questions=2,
                                              rollout_batch_questions=6, max_completion_length=24))
    built = build_stage(tiny_model, world / "train.jsonl", tmp_path / stage, cfg)
    args = built.trainer.args
    # The paper's loss: k3 KL at 0.01, clip 0.2 / 0.3, dual clip 3 (TRL's delta), token-mean (dapo), group-scaled advantages.
    assert (args.beta, args.epsilon, args.epsilon_high, args.delta) == (0.01, 0.2, 0.3, 3.0)
    assert (args.loss_type, args.scale_rewards, args.num_iterations) == ("dapo", "group", 1)
    # Sampling as scoring samples (generation.base.SamplingConfig defaults).
    assert (args.temperature, args.top_p, args.top_k, args.max_completion_length, args.num_generations) == (1.2, 0.99, 0, 24, 4)
    assert args.learning_rate == 1e-6 and args.lr_scheduler_type == "constant" and args.weight_decay == 0.01
    assert args.num_train_epochs == (1.0 if stage == "perception" else 2.0)
    # Batches counted in questions: 2 questions x 4 completions per update = 8 = micro 4 x accumulation 2;
    # a rollout batch of 6 questions feeds 3 updates.
    b = trl_batching(cfg, built.report.rows)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (4, 2, 6)
    assert (b.questions_per_update, b.questions_per_rollout) == (2, 6)
    assert args.generation_batch_size == 6 * 4
    # Rewards: the stage's composite (no alignment model here, so perception's clip weight is renormalised away).
    names = [getattr(f, "__name__", None) for f in built.trainer.reward_funcs]
    weights = dict(zip(names, args.reward_weights, strict=True))
    if stage == "perception":
        assert weights == pytest.approx({"keyword": 2 / 3, "format": 1 / 6, "length": 1 / 6, "accuracy": 0.0})
    else:
        assert weights == pytest.approx({"accuracy": 0.9, "format": 0.1})
    # Rollouts never contain an image or turn-start token: the rule scoring follows.
    assert args.generation_kwargs["suppress_tokens"] == banned_token_ids(built.processor, built.trainer.model.config)
    assert len(args.generation_kwargs["suppress_tokens"]) == 5
    assert args.seed == cfg.seed == 1 and not args.remove_unused_columns


def test_reward_settings_reach_the_reward_functions(tmp_path, tiny_model, world):
    cfg = stage_config("perception", overrides={"num_generations": 4, "micro_batch_size": 4, "update_batch_questions": 2,
                                                "rollout_batch_questions": 2, "max_completion_length": 16,
                                                "rewards": {"length_limit": 7, "perception_weights": {"keyword": 1.0, "length": 1.0}}})
    built = build_stage(tiny_model, world / "train.jsonl", tmp_path / "p", cfg)
    funcs = {f.__name__: f for f in built.trainer.reward_funcs}
    assert set(funcs) == {"keyword", "length"}
    assert funcs["length"](["a " * 14]) == [0.5]  # 14 tokens against a limit of 7
