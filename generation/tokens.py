"""The token rules of every generation: the chat prompt, the tokens that end a response, the tokens never sampled.

Scoring (both engines), evaluation and GRPO's rollouts (TRL's `generate`) all take them from here,
so a response means the same whichever of them produced it.
"""

from __future__ import annotations

from typing import Any

VISION_TOKEN_WORDS = ("image", "video", "vision")
"""Special tokens naming one of these are placeholders for pixels; a response must never contain one."""

TURN_START_TOKENS = ("<|im_start|>",)
"""Chat-format turn openers: a response never opens a new turn (it ends its own with a turn end)."""

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
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
    ids = set(_as_list(getattr(generation_config, "eos_token_id", None)))
    ids.update(_as_list(getattr(tokenizer, "eos_token_id", None)))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in TURN_END_TOKENS if t in vocab)
    return sorted(ids)


def banned_token_ids(tokenizer: Any, model_config: Any = None) -> list[int]:
    """Ids of the tokens generation must never produce: image, video and vision specials and turn starts.

    A generated ``<|image_pad|>`` would be read as an image slot on the next forward pass (GRPO's
    log-probs, and multimodal position ids break), and an untrained model does produce them; a
    generated turn start would make the response hold a fake next turn.
    """
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
    ids: set[int] = set()
    added = getattr(tokenizer, "added_tokens_encoder", None) or {}
    for text, idx in added.items():
        if any(word in text.lower() for word in VISION_TOKEN_WORDS) or text in TURN_START_TOKENS:
            ids.add(int(idx))
    for attr in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id", "vision_token_id"):
        ids.update(_as_list(getattr(model_config, attr, None)))
    return sorted(ids)
