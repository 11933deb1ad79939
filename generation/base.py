"""What every generation engine offers: many prompts, several seeded samples each, in one call.

An engine never decides which rollouts to make; the scorer hands it (sample, rollout index, seed)
triples and stores what comes back, so the results depend on the seeds and not on batching.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.errors import PebrError


@dataclass
class SamplingConfig:
    """Sampling parameters shared by the engines (the paper's values are the defaults)."""

    n: int = 8
    """Rollouts per sample."""
    temperature: float = 1.2
    """Softmax temperature; 0 means greedy."""
    top_p: float = 0.99
    """Nucleus sampling mass."""
    max_new_tokens: int = 2048
    """Longest response in tokens."""
    seed: int = 1
    """Run seed; each rollout's seed derives from (seed, sample_id, rollout_idx)."""
    min_pixels: int = 576
    """Smallest image area the processor resizes to."""
    max_pixels: int = 4_194_304
    """Largest image area the processor resizes to."""


@dataclass
class Request:
    """One prompt and the rollouts wanted from it."""

    key: str
    """The sample id."""
    messages: list[dict]
    """Chat messages with ``{"type": "image"}`` parts."""
    images: list[Any]
    """PIL images, in the order of the image parts; or their files' bytes (PNG, JPEG, ...), which is
    how a request travels to another process (`decoded` turns them into images there)."""
    rollout_idx: list[int]
    """Which rollouts of the sample to produce."""
    seeds: list[int]
    """One seed per rollout index."""


@dataclass
class Completion:
    text: str
    n_tokens: int
    finish_reason: str
    """``stop`` (end of sequence) or ``length`` (hit max_new_tokens)."""


class Engine(Protocol):
    name: str
    model_id: str

    def generate(self, requests: list[Request], cfg: SamplingConfig) -> list[list[Completion]]:
        """One list of completions per request, aligned with ``request.seeds``."""
        ...


@dataclass
class EngineOptions:
    """Engine-specific knobs; each engine reads the ones it knows."""

    dtype: str = "auto"
    """Model dtype: auto (the checkpoint's), bfloat16, float16 or float32."""
    tensor_parallel_size: int = 1
    """vllm: GPUs one model replica is split over."""
    gpu_memory_utilization: float = 0.85
    """vllm: share of GPU memory the engine may take."""
    max_model_len: int | None = None
    """vllm: context length (default: the model's)."""
    batch_size: int = 64
    """Sequences per forward pass (hf engine)."""
    hf_mode: str = "auto"
    """hf: how `generate` keeps its KV cache. ``generate``: a cache that grows by one token a step (transformers'
    default); ``static``: one cache allocated per batch at its final length, nothing re-allocated while decoding;
    ``compile``: the static cache with the decode step compiled by torch.compile (CUDA graphs on GPUs; a first
    batch of each size pays the compilation); ``auto``: ``AUTO_HF_MODE`` for the device. All give the same
    tokens for the same seeds (see `generation.hf`)."""
    attn_implementation: str | None = None
    """hf: the attention kernel (``sdpa``, ``flash_attention_2``, ``eager``, ...); None: transformers' choice
    (``sdpa``, which the ``compile`` mode needs to capture the decode step whole)."""
    extra: dict = field(default_factory=dict)
    """Anything else: model_id, device (hf), max_images and llm_kwargs (vllm)."""


def decoded(requests: list[Request]) -> list[Request]:
    """The requests with every image given as bytes decoded to an RGB PIL image, as the engines take them.

    Scoring sends a file's encoded bytes rather than pixels: a PNG is a fraction of its decoded size,
    and the receiver (an engine replica on another machine) needs no access to the store's files.

    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("L", (4, 3)).save(buf, "PNG")
    >>> (r,) = decoded([Request("s", [], [buf.getvalue()], [0], [1])])
    >>> r.images[0].mode, r.images[0].size
    ('RGB', (4, 3))
    """
    import dataclasses
    import io

    from PIL import Image

    def rgb(image: Any) -> Any:
        if not isinstance(image, (bytes, bytearray, memoryview)):
            return image
        with Image.open(io.BytesIO(image)) as im:
            return im.convert("RGB")

    return [dataclasses.replace(r, images=[rgb(i) for i in r.images]) if any(isinstance(i, (bytes, bytearray, memoryview))
            for i in r.images) else r for r in requests]


def rollout_seed(run_seed: int, sample_id: str, rollout_idx: int) -> int:
    """A 63-bit seed that depends only on the run seed, the sample and the rollout index.

    >>> rollout_seed(1, "abc", 0) == rollout_seed(1, "abc", 0) != rollout_seed(1, "abc", 1)
    True
    """
    import hashlib

    digest = hashlib.blake2b(f"{run_seed}:{sample_id}:{rollout_idx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


HF_MODES = ("generate", "static", "compile")
"""Ways the hf engine, and GRPO's transformers rollouts, run `generate` (`EngineOptions.hf_mode`)."""

AUTO_HF_MODE = {"cpu": "generate", "cuda": "generate"}
"""What ``auto`` means per device type: ``generate``, measured fastest on a CPU (BENCHMARKS.md), and on GPUs
until a run of benchmarks/gpu_check.py shows another mode faster there."""


def resolve_hf_mode(mode: str, device_type: str) -> str:
    """The mode to run: ``mode`` itself, or for ``auto`` the device's entry of AUTO_HF_MODE.

    >>> resolve_hf_mode("auto", "cpu"), resolve_hf_mode("compile", "cpu")
    ('generate', 'compile')
    >>> resolve_hf_mode("paged", "cuda")
    Traceback (most recent call last):
    ...
    schemas.errors.PebrError: hf mode 'paged': transformers' continuous batching takes token ids only, no images (the vllm engine pages its cache); choose one of auto, generate, static, compile
    """
    if mode == "auto":
        return AUTO_HF_MODE.get(device_type, "generate")
    if mode in HF_MODES:
        return mode
    why = ("transformers' continuous batching takes token ids only, no images (the vllm engine pages its cache); "
           if mode == "paged" else "")
    raise PebrError(f"hf mode {mode!r}: {why}choose one of auto, {', '.join(HF_MODES)}")
