"""The transformers engine: many prompts and their rollouts per forward pass, each rollout with its own seed.

``model.generate`` samples a batch from one random stream, so a rollout's text would depend on the
rows it happened to share a batch with. Here a logits processor draws each row's token from that
row's own stream of uniforms (seeded by the rollout seed) and forces it; generation itself runs
greedy over the forced logits. A rollout's text is then a function of its prompt and seed, whatever
the batch size or composition (up to the float noise that left padding adds to the logits).

Speed (`EngineOptions.hf_mode`). Plain ``generate`` grows its KV cache by one token a step and runs the
decode step op by op, so on a GPU a step costs far more than reading the weights once. ``static``
allocates the cache once per batch (transformers' StaticCache, sized to the batch's prompt width plus
max_new_tokens, rounded up); ``compile`` also compiles the decode step with torch.compile (CUDA graphs
on GPUs), as transformers does for a static cache on GPUs. Both keep this module's sampler, so a
rollout's tokens stay those of its seed: only the cache layout and the kernels change, never the
draws (on a CPU the tokens are identical in all three modes, whatever the batching; a GPU run of
benchmarks/gpu_check.py counts them there). Which mode is fastest is a measurement: on a CPU plain
``generate`` is (BENCHMARKS.md), so ``auto`` picks it; on GPUs ``auto`` stays on it until measured.

Why not transformers' continuous batching (``generate_batch``, ``ContinuousBatchingManager``, paged
attention)? In transformers 5.24 a request is a list of token ids and the batch's forward gets only
``input_ids`` and one-dimensional ``position_ids``: no ``pixel_values`` or ``image_grid_thw``, and no
multimodal (3-D) rotary positions, so it cannot answer a question about an image (TRL refuses it for
multimodal models for the same reason). Its sampling is one ``torch.multinomial`` over the batch,
and its per-request logits processors see a request's sampling parameters but not the request, so a
rollout's draw would depend on its batch. The static cache with compile is therefore the fast path
for VLMs here; the vllm engine is the paged one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    CompileConfig,
    GenerationConfig,
    LogitsProcessor,
)

from generation.base import (
    Completion,
    EngineOptions,
    Request,
    SamplingConfig,
    resolve_hf_mode,
)
from generation.tokens import banned_token_ids, chat_prompt, image_size, stop_token_ids


def sample_rows(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """One token per row: temperature, then nucleus (top-p) filtering, then inverse-CDF with the row's uniform.

    Inverse-CDF sampling with a pre-drawn uniform (rather than ``torch.multinomial``) keeps a row's
    choice stable under tiny changes of the logits: it only flips if the uniform lies at a bucket edge.
    ``temperature <= 0`` is greedy.

    >>> logits = torch.tensor([[0.0, 5.0, 0.0], [5.0, 0.0, 0.0]])
    >>> sample_rows(logits, torch.tensor([0.5, 0.5]), 1.0, 0.5).tolist()  # top-p keeps only the best
    [1, 0]
    >>> sample_rows(logits, torch.tensor([0.0, 0.999]), 0.0, 1.0).tolist()
    [1, 0]
    """
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    keep = (sorted_p.cumsum(dim=-1) - sorted_p) < top_p
    cdf = (sorted_p * keep).cumsum(dim=-1)
    target = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]
    pos = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)
    return order.gather(-1, pos).squeeze(-1)


def row_uniforms(seeds: list[int], steps: int) -> torch.Tensor:
    """``steps`` uniforms per seed, from a CPU generator so they are the same on every device."""
    rows = []
    for seed in seeds:
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        rows.append(torch.rand(steps, generator=gen, dtype=torch.float64))
    return torch.stack(rows).to(torch.float32)


class SeededRowSampler(LogitsProcessor):
    """Samples each batch row from its own seeded stream and returns logits that force that token."""

    def __init__(self, uniforms: torch.Tensor, prompt_width: int, temperature: float, top_p: float, banned: list[int]):
        self.uniforms = uniforms
        self.prompt_width = prompt_width
        self.temperature = temperature
        self.top_p = top_p
        self.banned = torch.tensor(banned, dtype=torch.long, device=uniforms.device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width
        scores = scores.clone()
        if self.banned.numel():
            scores[:, self.banned] = float("-inf")
        tokens = sample_rows(scores, self.uniforms[:, step], self.temperature, self.top_p)
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, tokens.unsqueeze(-1), 0.0)
        return forced


@dataclass
class _Row:
    request: int
    slot: int
    seed: int


def _torch_dtype(name: str):
    if name in ("auto", None):
        return "auto"
    return getattr(torch, name)


CACHE_LEN_STEP = 256
"""A static cache's length is rounded up to a multiple of this many tokens, so that batches whose prompt
widths are close share one cache shape (and one compiled decode step) at the price of a little more
attention per step. transformers keeps the longest length it has seen, so the shapes settle early."""


def static_cache_len(prompt_width: int, max_new_tokens: int, step: int = CACHE_LEN_STEP) -> int:
    """The static cache length for a batch: prompt plus response, rounded up to ``step``.

    >>> static_cache_len(300, 256), static_cache_len(0, 256), static_cache_len(257, 255)
    (768, 256, 512)
    """
    return -(-(prompt_width + max_new_tokens) // step) * step


def mode_generation_kwargs(mode: str, device_type: str) -> dict:
    """GenerationConfig settings for an hf mode (one of generation.base.HF_MODES) on a device type.

    ``static`` forbids compiling, since transformers compiles a static cache's decode step on GPUs by itself;
    ``compile`` asks for it on any device (transformers' defaults, CUDA graphs included, on GPUs; plain
    inductor elsewhere, where transformers would not compile unasked).

    >>> mode_generation_kwargs("generate", "cuda")
    {}
    >>> mode_generation_kwargs("static", "cuda")
    {'cache_implementation': 'static', 'disable_compile': True}
    >>> mode_generation_kwargs("compile", "cpu")["compile_config"].mode
    'default'
    """
    if mode == "generate":
        return {}
    if mode == "static":
        return {"cache_implementation": "static", "disable_compile": True}
    config = CompileConfig() if device_type == "cuda" else CompileConfig(mode="default")
    if device_type != "cuda":
        config._compile_all_devices = True  # transformers' own switch for compiling off GPUs
    return {"cache_implementation": "static", "compile_config": config, "disable_compile": False}


class HFEngine:
    """Batched generation with transformers for any image-text-to-text model directory."""

    name = "hf"

    def __init__(self, model_dir: str, options: EngineOptions, cfg: SamplingConfig):
        self.model_id = str(options.extra.get("model_id", model_dir))
        self.batch_size = max(1, int(options.batch_size))
        self.device = torch.device(options.extra.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.mode = resolve_hf_mode(options.hf_mode, self.device.type)
        self.processor = AutoProcessor.from_pretrained(model_dir, size=image_size(cfg.min_pixels, cfg.max_pixels))
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        attention = {"attn_implementation": options.attn_implementation} if options.attn_implementation else {}
        self.model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=_torch_dtype(options.dtype), **attention)
        self.model.to(self.device).eval()
        self.stop_ids = stop_token_ids(self.tokenizer, self.model.generation_config)
        self.banned_ids = banned_token_ids(self.tokenizer, self.model.config)
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.stop_ids[0])
        # The checkpoint's own sampling defaults (repetition penalty, top_k, ...) must not leak in:
        # both engines sample with exactly the SamplingConfig.
        self.model.generation_config = GenerationConfig(eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
                                                        **mode_generation_kwargs(self.mode, self.device.type))

    def generate(self, requests: list[Request], cfg: SamplingConfig) -> list[list[Completion]]:
        """One completion per seed of every request; rollouts of many prompts share each forward pass."""
        for req in requests:
            if len(req.seeds) != len(req.rollout_idx):
                raise ValueError(f"request {req.key}: {len(req.seeds)} seeds for {len(req.rollout_idx)} rollouts")
        prompts = [chat_prompt(self.processor, req.messages) for req in requests]
        rows = [_Row(i, j, seed) for i, req in enumerate(requests) for j, seed in enumerate(req.seeds)]
        out: list[list[Completion | None]] = [[None] * len(req.seeds) for req in requests]
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            for row, completion in zip(batch, self._generate_batch(batch, requests, prompts, cfg)):
                out[row.request][row.slot] = completion
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def _generate_batch(self, batch: list[_Row], requests: list[Request], prompts: list[str], cfg: SamplingConfig) -> list[Completion]:
        # The processor takes the images of all rows flat, in the order of their placeholders.
        images = [image for r in batch for image in requests[r.request].images]
        inputs = self.processor(
            text=[prompts[r.request] for r in batch],
            images=images or None,
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        width = inputs["input_ids"].shape[1]
        sampler = SeededRowSampler(
            row_uniforms([r.seed for r in batch], cfg.max_new_tokens).to(self.device),
            prompt_width=width,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            banned=self.banned_ids,
        )
        static = {} if self.mode == "generate" else {"max_cache_len": static_cache_len(width, cfg.max_new_tokens)}
        generated = self.model.generate(
            **inputs,
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            num_beams=1,
            logits_processor=[sampler],
            **static,
        )[:, width:].tolist()
        return [self._completion(ids) for ids in generated]

    def _completion(self, ids: list[int]) -> Completion:
        stops = set(self.stop_ids)
        end = next((k for k, tok in enumerate(ids) if tok in stops), None)
        body = ids if end is None else ids[:end]
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        if end is None:
            return Completion(text=text, n_tokens=len(ids), finish_reason="length")
        return Completion(text=text, n_tokens=end + 1, finish_reason="stop")
