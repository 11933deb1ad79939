"""One typed config per training stage, with the paper's numbers as defaults.

Recipes (pipelines/*.yaml) and command-line overrides fill these objects; nothing is copied from
one config into another behind the reader's back. Where a TRL argument is derived (gradient
accumulation from question counts), the derivation is a named function with a docstring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from generation.base import SamplingConfig
from rewards.config import RewardConfig
from schemas import GRPO_STAGES, TRAIN_STAGES
from schemas.config import build, load_recipe, merge, parse_overrides, recipe_section
from schemas.errors import PebrError


@dataclass
class WarmupConfig:
    """Warm-up SFT (the paper used LLaMA-Factory on Qwen2.5-VL-7B)."""

    learning_rate: float = 1e-5
    """Peak learning rate."""
    epochs: float = 2.0
    """Passes over the data."""
    lr_scheduler_type: str = "cosine"
    """transformers scheduler name."""
    warmup_ratio: float = 0.1
    """Fraction of steps spent warming the learning rate up."""
    batch_size: int = 8
    """Sequences per device per step."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    max_length: int = 4096
    """Cutoff length in tokens (prompt + response)."""
    freeze_vision: bool = True
    """Keep the vision tower frozen (the paper does); a randomly initialised tower must train."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    bf16: bool | None = None
    """Use bfloat16; None means: when a GPU supports it."""
    gradient_checkpointing: bool = False
    """Trade compute for memory on big models."""
    logging_steps: int = 10
    """Log (TensorBoard and console) every this many steps."""
    save_steps: int = 500
    """Checkpoint every this many steps (resume with --resume)."""
    max_steps: int = -1
    """Stop after this many steps (-1: run all epochs)."""
    seed: int = 1
    """Seed for data order, dropout and initialisation of anything new."""
    format_prompt: str | None = None
    """A format prompt file (Jinja over ``content``, EasyR1's convention) for records without a prompt
    (default: a stage dataset's own, else the toolkit's instruction)."""


@dataclass
class GRPOStageConfig:
    """One GRPO stage (the paper's EasyR1 settings; stage 1 and stage 2 differ only in batch sizes and epochs)."""

    stage: str = "reasoning"
    """``perception`` (stage 1, easy samples) or ``reasoning`` (stage 2, medium samples)."""
    num_generations: int = 8
    """Group size G: rollouts per question."""
    temperature: float = SamplingConfig.temperature
    """Rollout temperature (scoring's: a band predicts the signal of groups sampled like this)."""
    top_p: float = SamplingConfig.top_p
    """Rollout nucleus mass (scoring's)."""
    max_completion_length: int = SamplingConfig.max_new_tokens
    """Longest rollout in tokens (scoring's)."""
    learning_rate: float = 1e-6
    """AdamW learning rate (constant)."""
    lr_scheduler_type: str = "constant"
    """transformers scheduler name."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    beta: float = 0.01
    """KL coefficient of the k3 ("low_var_kl") KL loss term against the stage's starting model."""
    epsilon_low: float = 0.2
    """Lower clip of the importance ratio (1 - eps)."""
    epsilon_high: float = 0.3
    """Upper clip of the importance ratio (1 + eps)."""
    dual_clip: float | None = 3.0
    """Dual-clip bound c: for negative advantages the ratio counts at most c (TRL's `delta`)."""
    loss_type: str = "dapo"
    """Token-mean over the update batch (TRL's ``dapo``: normalised by the batch's active tokens)."""
    scale_rewards: str = "group"
    """Advantage = (r - mean_group) / (std_group + eps), as the paper."""
    advantage_epsilon: float = 1e-6
    """The eps of the advantage's denominator: the reference's 1e-6. TRL 1.16 hard-codes 1e-4, so the stage's
    trainer rescales TRL's advantages to this value; it matters for groups whose rewards barely differ
    (a continuous perception reward): at std 1e-5, 1e-4 shrinks the advantages about tenfold."""
    use_bias_correction_kl: bool = False
    """Multiply the k3 KL term by the importance ratio pi/pi_old, the unbiased reverse-KL gradient of DeepSeek-V3.2.
    TRL's default is True; the reference's verl ``low_var_kl`` has no importance-ratio factor, so False matches the
    paper. The factor changes the KL gradient even on-policy: the ratio is 1 there, its derivative is not."""
    vllm_importance_sampling_correction: bool = False
    """With ``use_vllm``: reweight each rollout by the ratio of the trainer's to vLLM's probabilities (TRL's default
    is True: sequences whose ratio is over 3 are masked out). The reference has no such step (it takes vLLM's
    rollouts as the policy's own), so False matches the paper."""
    max_prompt_length: int | None = 2048
    """Prompts longer than this many tokens, as the model sees them (chat template and image tokens at the
    stage's pixel bounds), are dropped before training and counted in the run record as ``prompt_too_long``,
    as the reference does (EasyR1's ``filter_overlong_prompts``, ``max_prompt_length: 2048`` in its recipes).
    None keeps every prompt."""
    rollout_batch_questions: int = 512
    """Questions per rollout (generation) batch: 560 in stage 1, 512 in stage 2."""
    update_batch_questions: int = 128
    """Questions per optimizer update: 112 in stage 1, 128 in stage 2."""
    micro_batch_size: int = 8
    """Completions per device per forward/backward pass (memory knob; does not change the math)."""
    epochs: float = 2.0
    """Passes over the stage dataset: 1 in stage 1, 2 in stage 2."""
    max_steps: int = -1
    """Stop after this many optimizer steps (-1: run all epochs)."""
    min_pixels: int = SamplingConfig.min_pixels
    """Smallest image area after resizing."""
    max_pixels: int = 802_816
    """Largest image area after resizing."""
    freeze_vision: bool = False
    """The paper trains the vision tower in both stages."""
    use_vllm: bool = False
    """Generate rollouts with vLLM inside training (GPUs)."""
    vllm_mode: str = "colocate"
    """``colocate`` (same GPUs) or ``server`` (a `trl vllm-serve` process)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Share of GPU memory vLLM may take when colocated."""
    generation_mode: str = "auto"
    """How TRL's transformers rollouts (without vLLM) run `generate`, as the hf engine's `hf_mode`: ``generate`` (a
    growing KV cache, TRL's default), ``static`` (TRL's ``cache_implementation="static"``), ``compile`` (the static
    cache with the decode step compiled, which TRL turns off and the stage's trainer turns back on) or ``auto``
    (`generation.base.AUTO_HF_MODE`: ``generate`` until a GPU run shows another mode faster). The sampling is
    TRL's either way; only the cache layout and the kernels change."""
    bf16: bool | None = None
    """Use bfloat16; None means: when a GPU supports it."""
    gradient_checkpointing: bool = False
    """Trade compute for memory on big models."""
    format_prompt: str | None = None
    """A format prompt file (Jinja over ``content``, EasyR1's convention) for records without a prompt
    (default: a stage dataset's own, else the toolkit's instruction)."""
    rewards: RewardConfig = field(default_factory=RewardConfig)
    """The reward settings (thresholds, weights, the alignment model: `rewards.config.RewardConfig`);
    in a recipe a mapping, on the command line `--set rewards.clip_model_path=/models/FG-CLIP`."""
    logging_steps: int = 1
    """Log every this many optimizer steps."""
    save_steps: int = 50
    """Checkpoint every this many optimizer steps (resume with --resume)."""
    seed: int = 1
    """Seed for data order and sampling."""


@dataclass
class EvalConfig:
    """Held-out evaluation (the paper validates at temperature 0.5, n 1), sampled as `curate score` samples."""

    temperature: float = 0.0
    """0 = greedy; the paper's validation uses 0.5."""
    top_p: float = 1.0
    """Nucleus mass when sampling."""
    max_new_tokens: int = 1024
    """Longest answer."""
    batch_size: int = 16
    """Sequences per forward pass."""
    seed: int = 1
    """Run seed: a question's seed derives from (seed, sample id), as a scoring rollout's does."""
    limit: int | None = None
    """Evaluate only the first N records."""
    min_pixels: int = SamplingConfig.min_pixels
    """Smallest image area the processor resizes to (scoring's bound)."""
    max_pixels: int = SamplingConfig.max_pixels
    """Largest image area the processor resizes to (scoring's bound)."""
    dtype: str = "auto"
    """Model dtype: auto (the checkpoint's), bfloat16 or float32."""
    hf_mode: str = "auto"
    """The hf engine's ``generate`` / ``static`` / ``compile`` / ``auto`` (`generation.base.EngineOptions.hf_mode`):
    the same answers in every mode, at different speeds."""
    format_prompt: str | None = None
    """A format prompt file (Jinja over ``content``) for the questions (default: the data's own, else
    the toolkit's instruction); use the one the model was trained and scored with."""

    def sampling(self) -> SamplingConfig:
        """The engine's sampling parameters: one answer per question."""
        return SamplingConfig(n=1, temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                              seed=self.seed, min_pixels=self.min_pixels, max_pixels=self.max_pixels)


STAGE_DEFAULTS: dict[str, dict[str, Any]] = {  # keys: GRPO_STAGES
    "perception": {"stage": "perception", "rollout_batch_questions": 560, "update_batch_questions": 112, "epochs": 1.0},
    "reasoning": {"stage": "reasoning", "rollout_batch_questions": 512, "update_batch_questions": 128, "epochs": 2.0},
}
"""What stage 1 and stage 2 change from the shared GRPO defaults (PAPER.md)."""


def stage_config(stage: str, recipe: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> Any:
    """The config of a stage: paper defaults, then the recipe's section for the stage, then overrides
    (nested settings such as `rewards` are merged key by key). A recipe's top-level `format_prompt`
    applies to every stage that does not set its own."""
    section = recipe_section(recipe or {}, stage)
    if stage == "eval":
        return build(EvalConfig, merge(section, overrides or {}), "eval")
    if stage == "warmup":
        return build(WarmupConfig, merge(section, overrides or {}), "warmup")
    if stage not in GRPO_STAGES:
        raise PebrError(f"unknown stage {stage!r}; expected one of {', '.join(TRAIN_STAGES)}")
    values = merge(merge(STAGE_DEFAULTS[stage], section), overrides or {})
    return build(GRPOStageConfig, values, stage)


__all__ = ["EvalConfig", "GRPOStageConfig", "STAGE_DEFAULTS", "WarmupConfig", "build", "load_recipe", "parse_overrides",
           "stage_config"]
