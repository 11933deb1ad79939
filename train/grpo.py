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
4. The paper's token-mean loss is TRL's `dapo` loss (normalised by the active tokens of the update batch).
5. The KL term is TRL's, the k3 estimator (verl's `low_var_kl` without its +-10 clamp), coefficient 0.01.
6. Batch sizes are counted in questions, as in EasyR1 (rollout batch 560 / update batch 112 in stage 1);
   `trl_batching` turns them into TRL's completions-per-device, accumulation and steps per generation.
7. The signal check: the stage dataset's manifest predicts the fraction of zero-advantage groups;
   TRL logs the observed fraction (`frac_reward_zero_std`) per step; the end of the stage prints both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from schemas import GRPO_STAGES
from schemas.errors import PebrError
from train.config import GRPOStageConfig


@dataclass
class Batching:
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    steps_per_generation: int
    questions_per_update: int
    questions_per_rollout: int


def trl_batching(cfg: GRPOStageConfig, n_rows: int, world_size: int = 1) -> Batching:
    """TRL's batch arguments from the paper's question counts, shrunk to the dataset when it is smaller.

    One optimizer step sees `update_batch_questions` x G completions; one generation round makes
    `rollout_batch_questions` x G completions, used for rollout/update optimizer steps (one PPO epoch).

    >>> b = trl_batching(GRPOStageConfig(rollout_batch_questions=560, update_batch_questions=112, micro_batch_size=8), 10_000)
    >>> b.gradient_accumulation_steps, b.steps_per_generation
    (112, 560)
    """
    G = cfg.num_generations
    update_q = max(1, min(cfg.update_batch_questions, n_rows))
    rollout_q = max(update_q, min(cfg.rollout_batch_questions, n_rows))
    rollout_q -= rollout_q % update_q
    micro = cfg.micro_batch_size
    per_update = update_q * G
    if per_update % (micro * world_size):
        raise PebrError(f"update batch of {update_q} questions x {G} = {per_update} completions is not a multiple of "
                        f"micro_batch_size {micro} x {world_size} device(s)")
    if micro % G and G % micro:
        raise PebrError(f"micro_batch_size {micro} and num_generations {G} must divide one another")
    accum = per_update // (micro * world_size)
    return Batching(per_device_train_batch_size=micro, gradient_accumulation_steps=accum,
                    steps_per_generation=accum * (rollout_q // update_q), questions_per_update=update_q,
                    questions_per_rollout=rollout_q)


@dataclass
class StageResult:
    out: Path
    steps: int
    seconds: float
    predicted_zero_adv: float | None
    observed_zero_adv: float | None
    observed_per_step: list[float] = field(default_factory=list)
    rewards: dict[str, float] = field(default_factory=dict)


def predicted_zero_adv(manifest: dict | None) -> float | None:
    """The zero-advantage fraction a stage dataset's manifest predicts (None without a manifest)."""
    value = ((manifest or {}).get("zero_advantage") or {}).get("predicted")
    return float(value) if isinstance(value, (int, float)) else None


class SignalLog:
    """Collects what TRL logs per step: the observed zero-advantage fraction and the mean rewards."""

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


def build_stage(model_dir: Path, data: Path, out: Path, cfg: GRPOStageConfig, image_root: Path | None = None,
                callbacks: list | None = None) -> Stage:
    """Load the model and the stage dataset and build TRL's GRPOTrainer for the stage (nothing trained yet)."""
    from transformers import set_seed
    from trl import GRPOConfig, GRPOTrainer

    from generation.tokens import banned_token_ids
    from rewards import renormalisation_note, stage_reward_functions
    from train.common import cuda_available, freeze_vision_tower, load_vlm, use_bf16
    from train.data import load_rl

    if cfg.stage not in GRPO_STAGES:
        raise PebrError(f"GRPO stage must be one of {', '.join(GRPO_STAGES)}, not {cfg.stage!r}")
    set_seed(cfg.seed)
    dataset, report = load_rl(data, image_root)
    model, processor = load_vlm(model_dir, cfg.min_pixels, cfg.max_pixels, train=True)
    if cfg.freeze_vision:
        freeze_vision_tower(model)
    funcs, weights = stage_reward_functions(cfg.stage, cfg.rewards)
    b = trl_batching(cfg, len(dataset))
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
        num_iterations=1, reward_weights=weights, use_vllm=cfg.use_vllm, vllm_mode=cfg.vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        # Rollouts follow the token rules scoring follows (generation.tokens).
        generation_kwargs={"suppress_tokens": banned_token_ids(processor, model.config)},
        bf16=use_bf16(cfg.bf16),
        # The frozen KL reference needs no fp32 master copy: bf16 halves its memory.
        model_init_kwargs={"dtype": "bfloat16"} if use_bf16(cfg.bf16) else None,
        gradient_checkpointing=cfg.gradient_checkpointing, use_cpu=not cuda_available(),
        logging_steps=cfg.logging_steps, save_steps=cfg.save_steps, save_total_limit=2,
        report_to=["tensorboard"], remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True,
        log_completions=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=processor,
                          callbacks=[log.callback(), *(callbacks or [])])
    return Stage(trainer=trainer, processor=processor, report=report, batching=b, weights=weights,
                 note=renormalisation_note(cfg.stage, cfg.rewards), log=log)


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
                         rewards={k: sum(v) / len(v) for k, v in stage.log.rewards.items() if v})
    atomic_write(out / "signal.json", json.dumps({
        "stage": cfg.stage, "predicted_zero_adv": predicted, "observed_zero_adv": result.observed_zero_adv,
        "observed_per_step": observed}, indent=2))
    write_run_record(out, cfg.stage, asdict(cfg), str(model_dir), str(data), report.manifest, {
        "rows": report.rows, "skipped": report.skipped, "trl_batching": asdict(b), "reward_weights": stage.weights,
        "rollouts": result.steps * b.questions_per_update * cfg.num_generations,
        "reward_note": stage.note, "signal": {"predicted_zero_adv": predicted, "observed_zero_adv": result.observed_zero_adv}})
    return result
