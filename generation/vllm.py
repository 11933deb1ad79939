"""The vLLM engine: all rollouts of all prompts in one offline ``llm.generate`` call.

Each rollout is its own request with ``n=1`` and the rollout's seed. One request with ``n=k`` and
a single seed would draw all k samples from one stream, so rollout j's text would depend on k and
on the other rollouts; with a seed per request, rollout j is the same whether it is scored alone,
with the rest of its group, or resumed after a crash. The cost is small: prefix caching computes
the shared prompt (image included) once, and vLLM's scheduler batches the requests itself.

Parallelism: ``tensor_parallel_size`` splits one model over GPUs. Offline data parallelism needs
one process per replica: ``curate score --ray --replicas N`` runs N engines as Ray actors (one or
more GPUs each, on one machine or several), or several ``curate score --shard i/N`` processes
(each with its own ``CUDA_VISIBLE_DEVICES``) fill the same store.
"""

from __future__ import annotations

from typing import Any

from generation.base import Completion, EngineOptions, Request, SamplingConfig
from generation.tokens import banned_token_ids, chat_prompt, image_size, stop_token_ids

DEFAULT_MAX_IMAGES = 8
"""Images per prompt vLLM reserves room for, unless ``options.extra["max_images"]`` says otherwise."""


class VLLMEngine:
    """Offline vLLM generation for any Hugging Face VLM directory vLLM supports."""

    name = "vllm"

    def __init__(self, model_dir: str, options: EngineOptions, cfg: SamplingConfig):
        from transformers import AutoConfig, AutoProcessor, GenerationConfig
        from vllm import LLM

        self.model_id = str(options.extra.get("model_id", model_dir))
        self.processor = AutoProcessor.from_pretrained(model_dir, size=image_size(cfg.min_pixels, cfg.max_pixels))
        tokenizer = self.processor.tokenizer
        llm_kwargs: dict[str, Any] = dict(
            model=str(model_dir),
            tensor_parallel_size=options.tensor_parallel_size,
            gpu_memory_utilization=options.gpu_memory_utilization,
            max_model_len=options.max_model_len,
            dtype=options.dtype,
            seed=cfg.seed,
            enable_prefix_caching=True,
            limit_mm_per_prompt={"image": int(options.extra.get("max_images", DEFAULT_MAX_IMAGES))},
            mm_processor_kwargs={"min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels},
        )
        # Any other vllm.LLM argument (enforce_eager, quantization, ...) passes through unchanged.
        llm_kwargs.update(options.extra.get("llm_kwargs", {}))
        self.llm = LLM(**llm_kwargs)
        try:
            generation_config = GenerationConfig.from_pretrained(model_dir)
        except OSError:
            generation_config = None
        # The same stop and banned tokens as the hf engine, so both write comparable rollouts.
        # Banned tokens go in as bad_words (a hard ban), not logit_bias, which vLLM caps at -100.
        self.stop_ids = stop_token_ids(tokenizer, generation_config)
        banned = banned_token_ids(tokenizer, AutoConfig.from_pretrained(model_dir))
        self.bad_words = tokenizer.convert_ids_to_tokens(banned)

    def sampling_params(self, seed: int, cfg: SamplingConfig):
        """vLLM sampling parameters for one rollout; the checkpoint's defaults (top_k, penalties) are not used."""
        from vllm import SamplingParams

        greedy = cfg.temperature <= 0
        return SamplingParams(
            n=1,
            seed=int(seed),
            temperature=0.0 if greedy else cfg.temperature,
            top_p=1.0 if greedy else cfg.top_p,
            top_k=0,
            min_p=0.0,
            repetition_penalty=1.0,
            max_tokens=cfg.max_new_tokens,
            stop_token_ids=list(self.stop_ids),
            bad_words=list(self.bad_words),
            skip_special_tokens=True,
        )

    def generate(self, requests: list[Request], cfg: SamplingConfig) -> list[list[Completion]]:
        """One completion per seed of every request, from a single ``llm.generate`` call."""
        prompts, params, where = [], [], []
        for i, req in enumerate(requests):
            if len(req.seeds) != len(req.rollout_idx):
                raise ValueError(f"request {req.key}: {len(req.seeds)} seeds for {len(req.rollout_idx)} rollouts")
            prompt: dict[str, Any] = {"prompt": chat_prompt(self.processor, req.messages)}
            if req.images:
                prompt["multi_modal_data"] = {"image": list(req.images)}
            for j, seed in enumerate(req.seeds):
                prompts.append(prompt)
                params.append(self.sampling_params(seed, cfg))
                where.append((i, j))
        out: list[list[Completion | None]] = [[None] * len(req.seeds) for req in requests]
        if not prompts:
            return out  # type: ignore[return-value]
        results = self.llm.generate(prompts, params, use_tqdm=False)
        for (i, j), result in zip(where, results):
            sample = result.outputs[0]
            if sample.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"request {requests[i].key}: vLLM ended a rollout with {sample.finish_reason!r}")
            out[i][j] = Completion(text=sample.text, n_tokens=len(sample.token_ids), finish_reason=sample.finish_reason)
        return out  # type: ignore[return-value]
