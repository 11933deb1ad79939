"""How a model is sampled, wherever it is sampled: the prompt, the token rules, per-rollout seeds and
the engines, ``hf`` (transformers, any machine) and ``vllm`` (production, GPUs).

`curate score` and `train eval` generate through `load_engine`; GRPO's rollouts (TRL's own
`generate`) take their banned tokens from `generation.tokens`; stage datasets build their prompt
column with `generation.prompt`. Importing this package is cheap: torch, transformers and vLLM are
imported only when an engine is loaded, so the CLIs' help never pays for them.
"""

from __future__ import annotations

from generation.base import (
    Completion,
    Engine,
    EngineOptions,
    Request,
    SamplingConfig,
    rollout_seed,
)
from generation.prompt import (
    IMAGE_PLACEHOLDER,
    PROMPT_TEMPLATE,
    build_messages,
    prompt_text,
)

ENGINES = ("hf", "vllm")
"""Engine names accepted by ``load_engine``."""

TOKEN_RULES = "v2: stop at eos and turn ends; never sample image/video/vision tokens or turn starts"
"""What `generation.tokens` enforces, recorded in every scoring run's fingerprint (a change of the
rules is a new run, not a resumed one)."""

PROMPT_RULES = "v2: an image without an <image> mark gets one at the start of the problem"
"""Where `generation.prompt` places images the problem's text has no mark for; in every scoring
run's fingerprint, as TOKEN_RULES."""

__all__ = ["ENGINES", "IMAGE_PLACEHOLDER", "PROMPT_RULES", "PROMPT_TEMPLATE", "TOKEN_RULES", "Completion", "Engine", "EngineOptions",
           "Request", "SamplingConfig", "build_messages", "load_engine", "prompt_text", "rollout_seed"]


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
        from generation.hf import HFEngine

        return HFEngine(model_dir, options, cfg)
    if name == "vllm":
        from generation.vllm import VLLMEngine

        return VLLMEngine(model_dir, options, cfg)
    raise ValueError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
