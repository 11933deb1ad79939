"""What every training stage does the same way: load a VLM, freeze its vision tower, record provenance."""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from schemas.errors import PebrError
from schemas.io import atomic_write

RUN_RECORD = "pebr_run.json"
"""Written into every output directory: what produced the model."""


def load_vlm(model_dir: str | Path, min_pixels: int | None = None, max_pixels: int | None = None, train: bool = False):
    """A Hugging Face VLM and its processor from a local directory.

    For inference: bf16 on GPUs that support it, else float32. For training (`train=True`): float32
    weights, which the Trainer runs under bf16 autocast (`bf16=True`): mixed precision keeps fp32
    master weights, since AdamW on bf16 weights loses updates as small as the paper's lr 1e-6 makes.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if not Path(model_dir).is_dir():
        raise PebrError(f"--model {model_dir}: not a model directory")
    processor = AutoProcessor.from_pretrained(model_dir)
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None and (min_pixels or max_pixels):
        # Qwen-VL processors read the pixel bounds from `size` (the min_pixels/max_pixels kwargs are deprecated).
        size = dict(getattr(image_processor, "size", None) or {})
        size.update({k: v for k, v in (("shortest_edge", min_pixels), ("longest_edge", max_pixels)) if v})
        image_processor.size = size
    dtype = torch.bfloat16 if not train and use_bf16(None) else torch.float32
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=dtype)
    return model, processor


def use_bf16(flag: bool | None) -> bool:
    import torch

    if flag is None:
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return flag


def freeze_vision_tower(model) -> int:
    """Stop gradients into the vision encoder (and its merger); returns the number of frozen tensors."""
    frozen = 0
    for name, param in model.named_parameters():
        if ".visual." in f".{name}" or name.startswith("visual."):
            param.requires_grad_(False)
            frozen += 1
    if not frozen:
        raise PebrError("could not find a vision tower (parameters named '*visual*') to freeze")
    return frozen


def write_run_record(out: Path, stage: str, config: dict[str, Any], model: str, data: str, data_manifest: dict | None,
                     extra: dict[str, Any] | None = None) -> Path:
    """Record what produced the model in `out`: stage, config, inputs, versions, command."""
    import torch
    import transformers
    import trl

    record = {
        "stage": stage, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "model": str(model), "data": str(data),
        "data_manifest": data_manifest, "config": config,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__, "trl": trl.__version__, "pebr": _pebr_version()},
        **(extra or {}),
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / RUN_RECORD
    atomic_write(path, json.dumps(record, indent=2, default=str))
    return path


def _pebr_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pebr")
    except PackageNotFoundError:
        return "not installed"


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def fit(trainer, processor, out: Path, resume: bool, quiet: bool) -> float:
    """Train (from the last checkpoint in `out` when resuming), save model and processor; returns seconds.

    `quiet` drops transformers' printed log dicts when the caller shows its own progress bar.
    """
    import time

    from transformers import PrinterCallback
    from transformers.trainer_utils import get_last_checkpoint

    checkpoint = None
    if resume:
        checkpoint = get_last_checkpoint(str(out)) if out.is_dir() else None
        if checkpoint is None:
            raise PebrError(f"--resume: no checkpoint-* folder in {out}")
    if quiet:
        trainer.remove_callback(PrinterCallback)
    started = time.monotonic()
    trainer.train(resume_from_checkpoint=checkpoint)
    seconds = time.monotonic() - started
    trainer.save_model(str(out))
    if trainer.is_world_process_zero():  # one writer of the processor files under several processes
        processor.save_pretrained(str(out))
    return seconds
