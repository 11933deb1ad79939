"""Warm-up SFT: teach the base model the sectioned answer format on gold responses (TRL's SFTTrainer).

The paper warms Qwen2.5-VL-7B up with LLaMA-Factory (vision tower frozen, lr 1e-5, 2 epochs, cosine,
warmup 0.1). Here the same step runs on TRL for any Hugging Face VLM: rows are prompt-completion
pairs, so the loss covers the response only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from train.config import WarmupConfig


@dataclass
class WarmupResult:
    out: Path
    rows: int
    skipped: dict[str, int]
    steps: int
    first_loss: float | None
    last_loss: float | None
    seconds: float


def run_warmup(model_dir: Path, data: Path, out: Path, cfg: WarmupConfig, image_root: Path | None = None,
               resume: bool = False, callbacks: list | None = None) -> WarmupResult:
    from transformers import TrainerCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    from train.common import (
        cuda_available,
        fit,
        freeze_vision_tower,
        load_vlm,
        use_bf16,
        write_run_record,
    )
    from train.data import format_prompt_text, load_sft

    set_seed(cfg.seed)
    dataset, report = load_sft(data, image_root, format_prompt_text(cfg.format_prompt))
    model, processor = load_vlm(model_dir, train=True)
    if cfg.freeze_vision:
        freeze_vision_tower(model)
    losses: list[float] = []

    class LossLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    args = SFTConfig(
        output_dir=str(out), learning_rate=cfg.learning_rate, num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=float(cfg.warmup_ratio),
        per_device_train_batch_size=cfg.batch_size, gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        max_length=cfg.max_length, weight_decay=cfg.weight_decay, bf16=use_bf16(cfg.bf16),
        gradient_checkpointing=cfg.gradient_checkpointing, logging_steps=cfg.logging_steps,
        save_steps=cfg.save_steps, save_total_limit=2, seed=cfg.seed, data_seed=cfg.seed,
        report_to=["tensorboard"], use_cpu=not cuda_available(),
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                         callbacks=[LossLog(), *(callbacks or [])])
    seconds = fit(trainer, processor, out, resume, quiet=bool(callbacks))
    write_run_record(out, "warmup", asdict(cfg), str(model_dir), str(data), report.manifest,
                     {"rows": report.rows, "skipped": report.skipped, "losses": losses})
    return WarmupResult(out=out, rows=report.rows, skipped=report.skipped, steps=trainer.state.global_step,
                        first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
                        seconds=seconds)
