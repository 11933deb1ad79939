"""The GRPO stage as TRL sees it: every paper knob reaches `trainer.args`, and the rollouts keep the token rules."""

from __future__ import annotations

import pytest

from schemas.errors import PebrError
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
    # The reference's KL has no importance-ratio factor and its rollouts get no IS correction (TRL defaults: True).
    assert args.use_bias_correction_kl is False and args.vllm_importance_sampling_correction is False
    # ... and its advantages divide by std + 1e-6 (TRL's literal is 1e-4: the trainer rescales).
    assert type(built.trainer).__name__ == "PebrGRPOTrainer" and built.trainer.advantage_epsilon == 1e-6
    # Sampling as scoring samples (generation.base.SamplingConfig defaults).
    assert (args.temperature, args.top_p, args.top_k, args.max_completion_length, args.num_generations) == (1.2, 0.99, 0, 24, 4)
    assert args.learning_rate == 1e-6 and args.lr_scheduler_type == "constant" and args.weight_decay == 0.01
    assert args.num_train_epochs == (1.0 if stage == "perception" else 2.0)
    # Batches counted in questions: 2 questions x 4 completions per update = 8 = micro 4 x accumulation 2;
    # a rollout batch of 6 questions feeds 3 updates.
    b = trl_batching(cfg, built.report.rows)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.steps_per_generation) == (4, 2, 6)
    assert (b.questions_per_update, b.questions_per_rollout) == (2, 6)
    assert args.world_size == built.batching.world_size == 1
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
    # Rollouts by plain generate (generation_mode auto, on a CPU): TRL's dynamic cache, nothing compiled.
    assert args.cache_implementation is None and built.trainer.generation_config.disable_compile
    assert args.seed == cfg.seed == 1 and not args.remove_unused_columns


def test_reward_settings_reach_the_reward_functions(tmp_path, tiny_model, world):
    cfg = stage_config("perception", overrides={"num_generations": 4, "micro_batch_size": 4, "update_batch_questions": 2,
                                                "rollout_batch_questions": 2, "max_completion_length": 16,
                                                "rewards": {"length_limit": 7, "perception_weights": {"keyword": 1.0, "length": 1.0}}})
    built = build_stage(tiny_model, world / "train.jsonl", tmp_path / "p", cfg)
    funcs = {f.__name__: f for f in built.trainer.reward_funcs}
    assert set(funcs) == {"keyword", "length"}
    assert funcs["length"](["a " * 14]) == [0.5]  # 14 tokens against a limit of 7


# The paper's batches (stage 1: 560 / 112 questions, stage 2: 512 / 128) with G 8 and micro-batches of 8:
# accumulation and steps per generation per process, for 1, 2, 4 and 8 processes.
PAPER_BATCHES = [(560, 112, 1, 112, 560), (560, 112, 2, 56, 280), (560, 112, 4, 28, 140), (560, 112, 8, 14, 70),
                 (512, 128, 1, 128, 512), (512, 128, 2, 64, 256), (512, 128, 4, 32, 128), (512, 128, 8, 16, 64)]


@pytest.mark.parametrize(("rollout", "update", "world", "accum", "per_generation"), PAPER_BATCHES)
def test_batches_stay_the_papers_at_any_world_size(tmp_path, monkeypatch, rollout, update, world, accum, per_generation):
    """Over all processes one update covers `update` questions and one generation round `rollout`, in TRL's own arithmetic."""
    from trl import GRPOConfig

    cfg = stage_config("perception", overrides=dict(rollout_batch_questions=rollout, update_batch_questions=update))
    b = trl_batching(cfg, 10_000, world_size=world)
    assert (b.per_device_train_batch_size, b.gradient_accumulation_steps, b.steps_per_generation) == (8, accum, per_generation)
    assert (b.questions_per_update, b.questions_per_rollout, b.world_size) == (update, rollout, world)
    # TRL reads the number of processes from its accelerator; simulate `world` of them.
    monkeypatch.setattr(GRPOConfig, "world_size", property(lambda self: world))
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=b.per_device_train_batch_size,
                      gradient_accumulation_steps=b.gradient_accumulation_steps,
                      steps_per_generation=b.steps_per_generation, num_generations=8, use_cpu=True, report_to=[])
    assert args.generation_batch_size == rollout * 8  # completions per generation round, all processes together
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size == update * 8


def test_batches_that_do_not_split_over_the_processes_are_refused():
    cfg = stage_config("perception")
    with pytest.raises(PebrError, match="micro_batch_size 8 x 3 process"):
        trl_batching(cfg, 10_000, world_size=3)  # 112 x 8 = 896 completions are not micro-steps of 8 x 3


def test_a_trainer_on_another_world_size_than_the_batches_is_refused(tmp_path, tiny_model, world, monkeypatch):
    import train.grpo

    monkeypatch.setattr(train.grpo, "world_size", lambda: 2)  # sized for 2 processes, TRL runs in this one
    cfg = stage_config("reasoning", overrides=dict(num_generations=4, micro_batch_size=4, update_batch_questions=2,
                                                   rollout_batch_questions=2, max_completion_length=8))
    with pytest.raises(PebrError, match="sized for 2 process"):
        build_stage(tiny_model, world / "train.jsonl", tmp_path / "r", cfg)


def _spread(completions, **kw):
    """Rewards 0, 1e-5, 0, 1e-5, ...: a group whose rewards barely differ (std 5.8e-6)."""
    return [1e-5 * (i % 2) for i in range(len(completions))]


@pytest.mark.parametrize("epsilon", [1e-6, 1e-4])
def test_advantages_divide_by_std_plus_the_configured_epsilon(tmp_path, tiny_model, world, monkeypatch, epsilon):
    import torch

    import rewards

    monkeypatch.setattr(rewards, "stage_reward_functions", lambda stage, cfg: ([_spread], [1.0]))
    cfg = stage_config("reasoning", overrides=dict(num_generations=4, micro_batch_size=4, update_batch_questions=2,
                                                   rollout_batch_questions=2, max_completion_length=8,
                                                   advantage_epsilon=epsilon))
    trainer = build_stage(tiny_model, world / "train.jsonl", tmp_path / "r", cfg).trainer
    trainer.model.train()
    inputs = [trainer.train_dataset[i] for i in (0, 1) for _ in range(4)]
    advantages = trainer._generate_and_score_completions(inputs)["advantages"]
    r = torch.tensor([1e-5 * (i % 2) for i in range(8)]).view(2, 4)
    expected = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + epsilon)).flatten()  # torch.std: Bessel, as verl
    assert advantages.tolist() == pytest.approx(expected.tolist(), rel=1e-3)
    assert abs(advantages[1].item()) == pytest.approx(0.738 if epsilon == 1e-6 else 0.0473, rel=1e-2)


def test_prompts_longer_than_max_prompt_length_are_dropped_and_counted(tmp_path, tiny_model, world):
    from trl.data_utils import prepare_multimodal_messages

    from train.common import load_vlm
    from train.data import load_rl
    from train.grpo import prompt_lengths

    cfg = stage_config("reasoning", overrides=dict(num_generations=4, micro_batch_size=4, update_batch_questions=2,
                                                   rollout_batch_questions=2, max_completion_length=8))
    dataset, _ = load_rl(world / "train.jsonl")
    _, processor = load_vlm(tiny_model, cfg.min_pixels, cfg.max_pixels)
    # The count without pixels is the length TRL's own tokenization gives, image tokens included.
    seen = [len(processor.apply_chat_template([prepare_multimodal_messages(row["prompt"], images=row["images"])],
                                              add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"][0])
            for row in dataset]
    assert prompt_lengths(processor, dataset) == seen
    text = processor.apply_chat_template(prepare_multimodal_messages(dataset[0]["prompt"], images=[None]),
                                         add_generation_prompt=True, tokenize=False)
    assert seen[0] == len(processor.tokenizer(text)["input_ids"]) + 15  # a 112 x 112 image: 16 tokens, not 1 placeholder
    limit = sorted(seen)[len(seen) // 2]
    too_long = sum(n > limit for n in seen)
    assert 0 < too_long < len(seen)
    cfg.max_prompt_length = limit
    built = build_stage(tiny_model, world / "train.jsonl", tmp_path / "r", cfg)
    assert built.report.skipped == {"prompt_too_long": too_long}
    assert built.report.rows == len(built.trainer.train_dataset) == len(seen) - too_long
    assert built.longest_prompt == limit
    cfg.max_prompt_length = min(seen) - 1
    with pytest.raises(PebrError, match="every prompt is longer than max_prompt_length"):
        build_stage(tiny_model, world / "train.jsonl", tmp_path / "none", cfg)


@pytest.mark.parametrize("arch", ["qwen2_vl", "qwen2_5_vl"])
def test_prompt_lengths_count_image_tokens_as_the_processor_resizes(tmp_path, arch):
    """150 x 150 images (not a multiple of 28) shrunk under a 100 x 100 pixel bound: counted without pixels, as TRL tokenizes."""
    from trl.data_utils import prepare_multimodal_messages

    from curate.synth import generate_world
    from train.common import load_vlm
    from train.data import load_rl
    from train.grpo import prompt_lengths
    from train.tiny import build_tiny_model

    generate_world(tmp_path / "w", n=6, seed=3, test_fraction=0.0, image_size=150)
    dataset, _ = load_rl(tmp_path / "w" / "train.jsonl")
    _, processor = load_vlm(build_tiny_model(tmp_path / "m", seed=0, arch=arch), 56 * 56, 100 * 100)
    seen = [len(processor.apply_chat_template([prepare_multimodal_messages(row["prompt"], images=row["images"])],
                                              add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"][0])
            for row in dataset]
    assert prompt_lengths(processor, dataset) == seen


def _rollouts(trainer, seed: int = 3) -> list[list[int]]:
    import torch

    trainer.model.train()
    torch.manual_seed(seed)
    inputs = [trainer.train_dataset[i] for i in (0, 1) for _ in range(4)]
    return trainer._generate_and_score_completions(inputs)["completion_ids"].tolist()


@pytest.mark.parametrize("mode", ["static", pytest.param("compile", marks=pytest.mark.slow)])
def test_the_generation_mode_reaches_trl_and_keeps_the_rollouts(tmp_path, tiny_model, world, mode):
    """A static cache (and its compiled decode step) changes no rollout: TRL's draws from the same seed are the
    same; a training step runs with it."""
    def stage(generation_mode):
        cfg = stage_config("reasoning", overrides=dict(num_generations=4, micro_batch_size=4, update_batch_questions=2,
                                                       rollout_batch_questions=2, max_completion_length=12,
                                                       temperature=1.0, generation_mode=generation_mode, max_steps=1,
                                                       save_steps=10, logging_steps=1))
        return build_stage(tiny_model, world / "train.jsonl", tmp_path / generation_mode, cfg)

    built = stage(mode)
    fast, plain = built.trainer, stage("generate").trainer
    assert built.generation_mode == mode
    assert (fast.args.cache_implementation, plain.args.cache_implementation) == ("static", None)
    config = fast.generation_config
    assert config.cache_implementation == "static" and config.disable_compile is (mode == "static")
    assert (config.compile_config is not None) is (mode == "compile")
    # One cache length for the stage (its longest prompt and a full completion): one set of shapes to compile.
    assert config.max_cache_len == built.longest_prompt + 12
    assert _rollouts(fast) == _rollouts(plain)
    assert (getattr(fast.model, "_compiled_call", None) is not None) is (mode == "compile")
    fast.train()
    assert fast.state.global_step == 1 and "loss" in fast.state.log_history[0]


def test_compiled_rollouts_see_the_same_embedding_hooks_every_round(tmp_path, tiny_model):
    """TRL toggles gradient checkpointing around each generation round, and each enabling adds an input-grad hook
    to the embeddings; in compile mode the trainer removes it again on disabling, so the compiled decode step
    (which guards on the hooks) is not compiled anew every round."""
    from train.common import load_vlm
    from train.grpo import _drop_input_grad_hooks_on_disable

    model, _ = load_vlm(tiny_model, 3136, 12544, train=True)
    model.gradient_checkpointing_enable()
    embed = model.get_input_embeddings()
    before = len(embed._forward_hooks)
    _drop_input_grad_hooks_on_disable(model)
    seen = []
    for _ in range(3):  # what TRL's unwrap_model_for_generation does each round
        model.gradient_checkpointing_disable()
        seen.append(len(embed._forward_hooks))
        model.gradient_checkpointing_enable()
    assert seen == [before - 1] * 3 and len(embed._forward_hooks) == before and model.is_gradient_checkpointing


def test_an_unknown_generation_mode_is_one_clear_error(tmp_path, tiny_model, world):
    cfg = stage_config("reasoning", overrides=dict(generation_mode="paged"))
    with pytest.raises(PebrError, match="token ids only"):
        build_stage(tiny_model, world / "train.jsonl", tmp_path / "r", cfg)
