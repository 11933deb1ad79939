"""What both engines must agree on: the prompt text, the tokens that end a response, the tokens never sampled.

Keeping these in one place makes the hf and vllm engines see the same prompt and stop at the same
token, so a rollout table does not change meaning with the engine that wrote it.
"""

from __future__ import annotations

from typing import Any

VISION_TOKEN_WORDS = ("image", "video", "vision")
"""Special tokens naming one of these are placeholders for pixels; a response must never contain one."""

TURN_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
"""Chat-format end markers: the prompts are chat-formatted, so a response ends with the turn."""


def chat_prompt(processor: Any, messages: list[dict]) -> str:
    """The model's own chat template applied to ``messages``, ready for the assistant's answer.

    Each ``{"type": "image"}`` part becomes the model's image placeholder (one token per image;
    the processor or vLLM expands it to the image's patch count).
    """
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def image_size(min_pixels: int, max_pixels: int) -> dict:
    """The image processor's ``size`` for these pixel bounds (Qwen-VL reads the edges as areas).

    >>> image_size(576, 4096)
    {'shortest_edge': 576, 'longest_edge': 4096}
    """
    return {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}


def _as_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, set)):
        return [int(v) for v in value]
    return [int(value)]


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """Token ids that end a response: the model's eos ids, the tokenizer's eos and the chat turn ends."""
    ids = set(_as_list(getattr(generation_config, "eos_token_id", None)))
    ids.update(_as_list(getattr(tokenizer, "eos_token_id", None)))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in TURN_END_TOKENS if t in vocab)
    return sorted(ids)


def banned_token_ids(tokenizer: Any, model_config: Any = None) -> list[int]:
    """Ids of the image, video and vision special tokens, which generation must never produce.

    A generated ``<|image_pad|>`` would be read as an image slot on the next forward pass (and
    breaks multimodal position ids), and an untrained model does produce them.
    """
    ids: set[int] = set()
    added = getattr(tokenizer, "added_tokens_encoder", None) or {}
    for text, idx in added.items():
        if any(word in text.lower() for word in VISION_TOKEN_WORDS):
            ids.add(int(idx))
    for attr in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "vision_token_id"):
        ids.update(_as_list(getattr(model_config, attr, None)))
    return sorted(ids)
