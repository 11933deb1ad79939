"""GRPO for one stage of the paper, on TRL's GRPOTrainer.

Stage 1 trains perception on the easy samples with the perception reward; stage 2 trains
reasoning on the medium samples with the reasoning reward, starting from stage 1's model. How this
departs from plain GRPO, and where each piece comes from:

1. The data was curated offline (`curate select`): each stage sees the band whose groups still carry
   a signal under that stage's reward, instead of filtering degenerate groups online (DAPO).
2. Rewards are the functions of `rewards/`, the very code that graded the curation rollouts, so a
   sample's band is a prediction of the signal its group gets here.
3. The paper's dual clip (c = 3) is TRL's `delta`: TRL caps the unclipped ratio at delta, which for a
   negative advantage is exactly PPO's dual clip, and for a positive one never binds (delta > 1 + eps_high).
4. The paper's token-mean loss is TRL's `dapo` loss (normalised by the active tokens of the update batch
   over all processes; the reference's EasyR1 averaged per micro-batch, see the README's table).
5. The KL term is TRL's k3 estimator at 0.01 with `use_bias_correction_kl` off (TRL's default multiplies it
   by the importance ratio): verl's `low_var_kl`, except for verl's +-10 clamp.
6. Advantages use the reference's epsilon, (r - mean) / (std + 1e-6): TRL hard-codes 1e-4, so the trainer
   (`PebrGRPOTrainer`) rescales TRL's advantages by (std + 1e-4) / (std + eps) right after TRL computes them.
7. Rollouts are the policy's own, as in the reference: TRL's vLLM importance-sampling correction is off.
8. Batch sizes are counted in questions over all processes, as in EasyR1 (rollout batch 560 / update
   batch 112 in stage 1, whether on one GPU or eight); `trl_batching` turns them into TRL's per-device
   completions, accumulation and steps per generation for the world size the launcher started.
9. Prompts longer than `max_prompt_length` tokens as the model sees them are dropped before training and
   counted, as the reference's dataset does.
10. The signal check: the stage dataset's manifest predicts the fraction of zero-advantage groups;
    TRL logs the observed fraction (`frac_reward_zero_std`) per step; the end of the stage prints both.
11. Rollouts without vLLM can use a static KV cache and a compiled decode step (`generation_mode`, the hf
    engine's modes): TRL's ``cache_implementation``, and TRL's ``disable_compile`` lifted by the trainer, with
    the cache sized once for the stage's longest prompt so that every generation batch has the same shapes.
    TRL's continuous batching (``use_transformers_continuous_batching``) refuses multimodal models.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from schemas import GRPO_STAGES
from schemas.errors import PebrError
from train.config import GRPOStageConfig


@dataclass
class Batching:
    """TRL's batch arguments for a stage, and the question counts they make over all processes together."""

    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    questions_per_update: int
    questions_per_rollout: int
    world_size: int = 1
    """Processes training together (GPUs under `accelerate launch`); the question counts are their sum."""


def trl_batching(cfg: GRPOStageConfig, n_rows: int, world_size: int = 1) -> Batching:
    """TRL's batch arguments from the paper's question counts, shrunk to the dataset when it is smaller.

    The counts are global, as in EasyR1: over all `world_size` processes together, one optimizer step
    sees `update_batch_questions` x G completions and one generation round makes
    `rollout_batch_questions` x G, used for rollout/update optimizer steps (one PPO epoch). TRL counts
    per process: each takes `per_device_train_batch_size` completions per micro-step and
    `gradient_accumulation_steps` micro-steps per optimizer step, and generates for
    `steps_per_generation` micro-steps at once (TRL's generation batch: per-device x world size x
    steps per generation completions).

    >>> cfg = GRPOStageConfig(rollout_batch_questions=560, update_batch_questions=112, micro_batch_size=8)
    >>> b = trl_batching(cfg, 10_000)
    >>> b.gradient_accumulation_steps, b.steps_per_generation
    (112, 560)
    >>> b = trl_batching(cfg, 10_000, world_size=8)  # the paper's 8 GPUs: 8 x 14 x 8 = 112 questions x 8 per update
    >>> b.gradient_accumulation_steps, b.steps_per_generation
    (14, 70)
    """
    if world_size < 1:
        raise PebrError(f"world size must be at least 1, not {world_size}")
    G = cfg.num_generations
    update_q = max(1, min(cfg.update_batch_questions, n_rows))
    rollout_q = max(update_q, min(cfg.rollout_batch_questions, n_rows))
    rollout_q -= rollout_q % update_q
    micro = cfg.micro_batch_size
    per_update = update_q * G
    if per_update % (micro * world_size):
        raise PebrError(f"update batch of {update_q} questions x {G} = {per_update} completions is not a multiple of "
                        f"micro_batch_size {micro} x {world_size} process(es)")
    if micro % G and G % micro:
        raise PebrError(f"micro_batch_size {micro} and num_generations {G} must divide one another")
    accum = per_update // (micro * world_size)
    return Batching(per_device_train_batch_size=micro, gradient_accumulation_steps=accum,
                    steps_per_generation=accum * (rollout_q // update_q), questions_per_update=update_q,
                    questions_per_rollout=rollout_q, world_size=world_size)


def world_size() -> int:
    """Processes training together: the running process group's size, else what the launcher exported
    (`accelerate launch`, torchrun and DeepSpeed set WORLD_SIZE, MPI its own); 1 under a plain `python`."""
    import torch.distributed as dist
    from accelerate.utils import get_int_from_env

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)


def prompt_lengths(processor, dataset) -> list[int]:
    """Tokens of each row's prompt as the model sees it: chat template, generation prompt and each image's
    tokens at the processor's pixel bounds (what the reference's `max_prompt_length` filter measures).

    The image tokens come from the processor's count for an image size (`_get_num_multimodal_tokens`,
    vLLM's way), so no pixels are processed and only the image headers are read; a processor without
    that count tokenizes each prompt with its images, as TRL does.
    """
    import io

    import datasets
    from PIL import Image
    from trl.data_utils import prepare_multimodal_messages

    count = getattr(processor, "_get_num_multimodal_tokens", None)
    image_token = getattr(processor, "image_token", None)
    if count is None or image_token is None:
        return [len(processor.apply_chat_template([prepare_multimodal_messages(row["prompt"], images=row["images"])],
                                                  add_generation_prompt=True, tokenize=True,
                                                  return_dict=True)["input_ids"][0]) for row in dataset]
    image_token_id = processor.tokenizer.convert_tokens_to_ids(image_token)
    raw = dataset.cast_column("images", datasets.List(datasets.Image(decode=False)))
    lengths = []
    for row in raw:
        sizes = []
        for image in row["images"]:
            with Image.open(io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]) as im:
                sizes.append((im.height, im.width))
        messages = prepare_multimodal_messages(row["prompt"], images=[None] * len(sizes))
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        image_tokens = sum(count(image_sizes=sizes).num_image_tokens) if sizes else 0
        lengths.append(len(ids) - ids.count(image_token_id) + image_tokens)
    return lengths


def drop_long_prompts(dataset, processor, max_tokens: int | None, report) -> tuple[object, int]:
    """The rows whose prompt fits in `max_tokens` (all rows for None), the drops counted in `report.skipped`
    as ``prompt_too_long``; also returns the longest prompt kept, in tokens."""
    lengths = prompt_lengths(processor, dataset)
    keep = [i for i, n in enumerate(lengths) if max_tokens is None or n <= max_tokens]
    if not keep:
        raise PebrError(f"every prompt is longer than max_prompt_length {max_tokens} tokens (the shortest has "
                        f"{min(lengths)}); raise max_prompt_length or lower max_pixels")
    if len(keep) < len(lengths):
        report.skipped["prompt_too_long"] = report.skipped.get("prompt_too_long", 0) + len(lengths) - len(keep)
        report.rows = len(keep)
        dataset = dataset.select(keep)
    return dataset, max(lengths[i] for i in keep)


TRL_ADVANTAGE_EPSILON = 1e-4
"""What TRL 1.16 adds to the reward std in `GRPOTrainer._generate_and_score_completions` (a literal, no argument)."""


def epsilon_rescale(rewards_per_func, weights, num_generations: int, scale_rewards: str, epsilon: float):
    """Per-completion factors (std + 1e-4) / (std + epsilon) that turn TRL's advantages into
    (r - mean) / (std + epsilon), with std as TRL takes it (nan-aware, Bessel-corrected like the
    reference's torch.std) over each group of `num_generations`, or over the batch for ``batch`` scaling.

    `rewards_per_func` is TRL's gathered (completions x reward functions) table, `weights` its reward weights.

    >>> import torch
    >>> f = epsilon_rescale(torch.tensor([[0.0], [2e-5], [0.0], [2.0]]), torch.tensor([1.0]), 2, "group", 1e-6)
    >>> [round(x, 3) for x in f.tolist()]  # std 1.4e-5 in the first group, 1.4 in the second
    [7.538, 7.538, 1.0, 1.0]
    """
    import torch
    from trl.trainer.utils import nanstd

    rewards = (rewards_per_func * weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
    rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    if scale_rewards == "batch":
        std = nanstd(rewards).expand_as(rewards)
    else:
        std = nanstd(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
    return (std + TRL_ADVANTAGE_EPSILON) / (std + epsilon)


def _drop_input_grad_hooks_on_disable(model) -> None:
    """Make `gradient_checkpointing_disable` also remove the embedding hook that enabling it adds.

    TRL turns gradient checkpointing off for every generation round and on again after it; transformers
    adds an input-grad hook to the embeddings at each enabling and removes it on disabling only for PEFT
    models, so the hooks pile up, one a round. A compiled decode step guards on that hook count and would be
    compiled again every round; with the hook removed, every round generates with none.
    """
    disable = model.gradient_checkpointing_disable

    def disable_and_drop_hook(*args, **kwargs):
        disable(*args, **kwargs)
        model.disable_input_require_grads()

    model.gradient_checkpointing_disable = disable_and_drop_hook


@functools.cache
def trainer_class():
    """TRL's GRPOTrainer with the stage's advantage epsilon (built on first use: TRL is a heavy import)."""
    import torch
    from trl import GRPOTrainer

    class PebrGRPOTrainer(GRPOTrainer):
        """GRPOTrainer whose advantages divide by (std + advantage_epsilon) instead of TRL's (std + 1e-4), and
        whose transformers rollouts run in the stage's generation mode."""

        def __init__(self, *args, advantage_epsilon: float = TRL_ADVANTAGE_EPSILON, generation_mode: str = "generate",
                     rollout_cache_len: int | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self.advantage_epsilon = advantage_epsilon
            self._rewards_per_func = None
            if generation_mode in ("static", "compile"):
                from generation.hf import mode_generation_kwargs

                # TRL builds its rollout config with disable_compile=True; the mode decides instead.
                for key, value in mode_generation_kwargs(generation_mode, self.accelerator.device.type).items():
                    setattr(self.generation_config, key, value)
                # One cache length for every generation batch of the stage: one set of shapes to compile.
                self.generation_config.max_cache_len = rollout_cache_len
            if generation_mode == "compile":
                _drop_input_grad_hooks_on_disable(self.model)

        def _calculate_rewards(self, *args, **kwargs):
            # The gathered rewards TRL normalises next; kept to redo its std.
            self._rewards_per_func = super()._calculate_rewards(*args, **kwargs)
            return self._rewards_per_func

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            if (self.advantage_epsilon == TRL_ADVANTAGE_EPSILON or self.scale_rewards == "none"
                    or self.multi_objective_aggregation != "sum_then_normalize"):
                return output
            G = self.num_generations if self.model.training else self.num_generations_eval
            factor = epsilon_rescale(self._rewards_per_func, self.reward_weights, G, self.scale_rewards,
                                     self.advantage_epsilon)
            start = self.accelerator.process_index * len(inputs)  # TRL's slice of this process's completions
            local = factor[start:start + len(inputs)].to(output["advantages"].device)
            # A group TRL could not score has NaN std: its advantages stay 0, as TRL leaves them.
            output["advantages"] = torch.nan_to_num(output["advantages"] * local, nan=0.0)
            return output

    return PebrGRPOTrainer


@dataclass
class StageResult:
    out: Path
    steps: int
    seconds: float
    predicted_zero_adv: float | None
    observed_zero_adv: float | None
    observed_per_step: list[float] = field(default_factory=list)
    rewards: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    """Records not trained on, by reason (``prompt_too_long``: over `max_prompt_length`)."""


def predicted_zero_adv(manifest: dict | None) -> float | None:
    """The zero-advantage fraction a stage dataset's manifest predicts (None without a manifest)."""
    value = ((manifest or {}).get("zero_advantage") or {}).get("predicted")
    return float(value) if isinstance(value, (int, float)) else None


class SignalLog:
    """Collects what TRL logs per rollout batch: the observed zero-advantage fraction and the mean
    rewards (``reward``: the weighted total; ``rewards/<name>/mean``: each function)."""

    def __init__(self):
        self.observed: list[float] = []
        self.rewards: dict[str, list[float]] = {}

    def callback(self):
        from transformers import TrainerCallback

        log = self

        class _Callback(TrainerCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "frac_reward_zero_std" in logs:
                    log.observed.append(float(logs["frac_reward_zero_std"]))
                for k, v in (logs or {}).items():
                    if k.startswith("rewards/") and k.endswith("/mean") or k == "reward":
                        log.rewards.setdefault(k, []).append(float(v))

        return _Callback()


@dataclass
class Stage:
    """A GRPO stage ready to train: TRL's trainer and what the run record needs."""

    trainer: object
    processor: object
    report: object
    """The stage dataset's load report (rows, skipped, manifest)."""
    batching: Batching
    weights: list[float]
    note: str | None
    log: SignalLog
    longest_prompt: int = 0
    """Tokens of the longest prompt kept (chat template and image tokens included)."""
    generation_mode: str = "generate"
    """How the rollouts are generated: `GRPOStageConfig.generation_mode` with ``auto`` resolved for the device,
    or ``vllm`` with `use_vllm`."""


def build_stage(model_dir: Path, data: Path, out: Path, cfg: GRPOStageConfig, image_root: Path | None = None,
                callbacks: list | None = None) -> Stage:
    """Load the model and the stage dataset and build TRL's GRPOTrainer for the stage (nothing trained yet)."""
    from transformers import set_seed
    from trl import GRPOConfig

    from generation.base import resolve_hf_mode
    from generation.tokens import banned_token_ids
    from rewards import renormalisation_note, stage_reward_functions
    from train.common import cuda_available, freeze_vision_tower, load_vlm, use_bf16
    from train.data import format_prompt_text, load_rl

    if cfg.stage not in GRPO_STAGES:
        raise PebrError(f"GRPO stage must be one of {', '.join(GRPO_STAGES)}, not {cfg.stage!r}")
    set_seed(cfg.seed)
    generation_mode = resolve_hf_mode(cfg.generation_mode, "cuda" if cuda_available() else "cpu")
    if cfg.use_vllm:
        generation_mode = "vllm"  # vLLM pages its own cache; the transformers modes do not apply
    dataset, report = load_rl(data, image_root, format_prompt_text(cfg.format_prompt))
    model, processor = load_vlm(model_dir, cfg.min_pixels, cfg.max_pixels, train=True)
    if cfg.freeze_vision:
        freeze_vision_tower(model)
    dataset, longest = drop_long_prompts(dataset, processor, cfg.max_prompt_length, report)
    funcs, weights = stage_reward_functions(cfg.stage, cfg.rewards)
    b = trl_batching(cfg, len(dataset), world_size())
    log = SignalLog()
    args = GRPOConfig(
        output_dir=str(out), seed=cfg.seed, data_seed=cfg.seed,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=b.per_device_train_batch_size,
        gradient_accumulation_steps=b.gradient_accumulation_steps, steps_per_generation=b.steps_per_generation,
        num_generations=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
        max_completion_length=cfg.max_completion_length, beta=cfg.beta, epsilon=cfg.epsilon_low,
        epsilon_high=cfg.epsilon_high, delta=cfg.dual_clip, loss_type=cfg.loss_type, scale_rewards=cfg.scale_rewards,
        num_iterations=1, reward_weights=weights, use_bias_correction_kl=cfg.use_bias_correction_kl,
        use_vllm=cfg.use_vllm, vllm_mode=cfg.vllm_mode, vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_importance_sampling_correction=cfg.vllm_importance_sampling_correction,
        # Rollouts follow the token rules scoring follows (generation.tokens).
        generation_kwargs={"suppress_tokens": banned_token_ids(processor, model.config)},
        cache_implementation="static" if generation_mode in ("static", "compile") else None,
        bf16=use_bf16(cfg.bf16),
        # The frozen KL reference needs no fp32 master copy: bf16 halves its memory.
        model_init_kwargs={"dtype": "bfloat16"} if use_bf16(cfg.bf16) else None,
        gradient_checkpointing=cfg.gradient_checkpointing, use_cpu=not cuda_available(),
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=2,
        report_to=["tensorboard"], remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
        log_completions=False,
    )
    # TRL derives its batches from the process group it joins; they must be the ones counted above.
    if (args.world_size, args.generation_batch_size) != (b.world_size, b.questions_per_rollout * cfg.num_generations):
        raise PebrError(f"batches were sized for {b.world_size} process(es) but TRL runs {args.world_size} "
                        f"(generation batch {args.generation_batch_size} completions, expected "
                        f"{b.questions_per_rollout} x {cfg.num_generations}); start several processes with "
                        "`accelerate launch` or torchrun")
    trainer = trainer_class()(model=model, reward_funcs=funcs, args=args, train_dataset=dataset,
                              processing_class=processor, callbacks=[log.callback(), *(callbacks or [])],
                              advantage_epsilon=cfg.advantage_epsilon, generation_mode=generation_mode,
                              rollout_cache_len=longest + cfg.max_completion_length)
    return Stage(trainer=trainer, processor=processor, report=report, batching=b, weights=weights,
                 note=renormalisation_note(cfg.stage, cfg.rewards), log=log, longest_prompt=longest,
                 generation_mode=generation_mode)


def run_stage(model_dir: Path, data: Path, out: Path, cfg: GRPOStageConfig, image_root: Path | None = None,
              resume: bool = False, callbacks: list | None = None) -> StageResult:
    """Train one GRPO stage and save the model, its processor, logs and a run record in `out`."""
    from schemas.io import atomic_write
    from train.common import fit, write_run_record

    stage = build_stage(model_dir, data, out, cfg, image_root, callbacks)
    trainer, report, b, observed = stage.trainer, stage.report, stage.batching, stage.log.observed
    seconds = fit(trainer, stage.processor, out, resume, quiet=bool(callbacks))
    predicted = predicted_zero_adv(report.manifest)
    result = StageResult(out=out, steps=trainer.state.global_step, seconds=seconds, predicted_zero_adv=predicted,
                         observed_zero_adv=sum(observed) / len(observed) if observed else None,
                         observed_per_step=observed,
                         rewards={k: sum(v) / len(v) for k, v in stage.log.rewards.items() if v},
                         skipped=dict(report.skipped))
    if not trainer.accelerator.is_main_process:  # one record per run, not one per process
        return result
    atomic_write(out / "signal.json", json.dumps({
        "stage": cfg.stage, "predicted_zero_adv": predicted, "observed_zero_adv": result.observed_zero_adv,
        "observed_per_step": observed, "rewards_per_step": stage.log.rewards}, indent=2))
    write_run_record(out, cfg.stage, asdict(cfg), str(model_dir), str(data), report.manifest, {
        "rows": report.rows, "skipped": report.skipped, "longest_prompt_tokens": stage.longest_prompt,
        "trl_batching": asdict(b), "reward_weights": stage.weights, "generation_mode": stage.generation_mode,
        "rollouts": result.steps * b.questions_per_update * cfg.num_generations,
        "reward_note": stage.note, "signal": {"predicted_zero_adv": predicted, "observed_zero_adv": result.observed_zero_adv}})
    return result
