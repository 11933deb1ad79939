"""Generation engines: ``hf`` (transformers, any machine) and ``vllm`` (production, GPUs).

Importing this package is cheap: torch, transformers and vLLM are imported only when an engine is
loaded, so the CLI's help and the rest of the curation code never pay for them.
"""

from __future__ import annotations

from curate.engines.base import Completion, Engine, EngineOptions, Request, SamplingConfig, rollout_seed

ENGINES = ("hf", "vllm")
"""Engine names accepted by ``load_engine``."""

__all__ = ["ENGINES", "Completion", "Engine", "EngineOptions", "Request", "SamplingConfig", "load_engine", "rollout_seed"]


def load_engine(name: str, model_dir: str, options: EngineOptions | None = None, cfg: SamplingConfig | None = None) -> Engine:
    """Load the model in ``model_dir`` (a Hugging Face VLM directory) into the engine called ``name``.

    ``cfg`` matters at load time too: the image processor's pixel bounds and vLLM's run seed come
    from it.

    >>> load_engine("tgi", "/models/x")
    Traceback (most recent call last):
    ...
    ValueError: unknown engine 'tgi'; choose one of: hf, vllm
    """
    options = options or EngineOptions()
    cfg = cfg or SamplingConfig()
    if name == "hf":
        from curate.engines.hf import HFEngine

        return HFEngine(model_dir, options, cfg)
    if name == "vllm":
        from curate.engines.vllm import VLLMEngine

        return VLLMEngine(model_dir, options, cfg)
    raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
