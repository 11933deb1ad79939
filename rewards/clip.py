"""The clip reward: how well the response's image description matches the image.

A CLIP-family model (FG-CLIP large in the paper) embeds the image and the text between
``### Image Description:`` and ``### Rationales:``; their cosine similarity becomes the reward. A
model with FG-CLIP's long text path reads up to 248 tokens through it, as the reference does. The
model loads on the first call, so the reward is cheap to build and to pickle to worker processes.
"""

from __future__ import annotations

import inspect
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rewards.text import completion_text, normalise

if TYPE_CHECKING:
    from rewards.config import RewardConfig

logger = logging.getLogger(__name__)

# The reference's pattern (examples/reward_function/pebr_1.py): any whitespace, or none, after ``###``.
_CAPTION_RE = re.compile(r"###\s*Image Description:\s*(.*?)###\s*Rationales:", re.DOTALL | re.IGNORECASE)


def extract_caption(response: str) -> str:
    """The description between ``### Image Description:`` and ``### Rationales:``, stripped; "" if absent.

    >>> extract_caption("### image description: two red circles\\n### Rationales: count them")
    'two red circles'
    >>> extract_caption("###Image Description: x ###Rationales: y")
    'x'
    >>> extract_caption("### Rationales: no description")
    ''
    """
    match = _CAPTION_RE.search(response)
    return match.group(1).strip() if match else ""


def similarity_to_reward(similarity: float, threshold: float = 0.4) -> float:
    """1.0 at or above ``threshold``, else ``similarity / threshold``.

    A negative similarity gives 0.0 rather than a negative reward (the reference does not clamp,
    but a trained CLIP rarely goes below 0 and the stage weights assume rewards in [0, 1]).

    >>> similarity_to_reward(0.5), similarity_to_reward(0.4), similarity_to_reward(0.2), similarity_to_reward(-0.1)
    (1.0, 1.0, 0.5, 0.0)
    """
    if similarity >= threshold:
        return 1.0
    return max(similarity, 0.0) / threshold


def load_image(item: Any, size: int = 336):
    """A ``size`` x ``size`` RGB PIL image from a PIL image, a path, bytes, an HF image dict or a list of these.

    A list stands for a sample's images; the first one is the image the description should match.

    >>> from PIL import Image
    >>> load_image([Image.new("L", (10, 20))], size=8).size
    (8, 8)
    """
    from PIL import Image

    if isinstance(item, (list, tuple)):
        if not item:
            raise ValueError("no image")
        item = item[0]
    if isinstance(item, dict):
        item = item.get("bytes") or item.get("path")
    if isinstance(item, (bytes, bytearray)):
        image = Image.open(io.BytesIO(item))
    elif isinstance(item, (str, Path)):
        image = Image.open(item)
    elif isinstance(item, Image.Image):
        image = item
    else:
        raise TypeError(f"cannot read an image from {type(item).__name__}")
    return image.convert("RGB").resize((size, size))


class ClipReward:
    """TRL-style reward: ``similarity_to_reward`` of the description/image cosine similarity, 0.0 on failure.

    ``model_path`` is a local directory loadable by transformers' ``AutoModel`` (or, for remote
    code registered only there, ``AutoModelForCausalLM``, as FG-CLIP) and ``AutoProcessor`` (or
    ``AutoTokenizer`` + ``AutoImageProcessor``); the model must offer ``get_image_features`` and
    ``get_text_features``. A model whose ``get_text_features`` takes FG-CLIP's ``walk_short_pos``
    reads ``text_max_tokens`` tokens through its long position table and long projection when they
    do not fit its short table (the reference: 248 tokens, ``walk_short_pos=False``); other models
    read at most their own ``max_position_embeddings``. Images come as the ``images`` column (a list
    of images per completion) or the ``image`` column. A response without a description, or whose
    image cannot be read, scores 0.0.

    >>> reward = ClipReward("/nonexistent/clip")
    >>> reward.__name__, reward(["no description here"], images=[[]])
    ('clip', [0.0])
    """

    def __init__(
        self,
        model_path: str,
        *,
        threshold: float = 0.4,
        image_size: int = 336,
        text_max_tokens: int = 248,
        allow_remote_code: bool = False,
        batch_size: int = 32,
        device: str | None = None,
    ) -> None:
        self.__name__ = "clip"
        self.model_path = str(model_path)
        self.threshold = threshold
        self.image_size = image_size
        self.text_max_tokens = text_max_tokens
        self.allow_remote_code = allow_remote_code
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None
        self._tokenizer: Any = None
        self._image_processor: Any = None
        self._text_len = text_max_tokens
        self._walk_short_pos: bool | None = None  # FG-CLIP's flag; None for models without it

    @classmethod
    def from_config(cls, cfg: RewardConfig) -> ClipReward:
        """The reward described by ``cfg`` (which must name a model)."""
        if cfg.clip_model_path is None:
            raise ValueError("the clip reward needs RewardConfig.clip_model_path")
        return cls(
            cfg.clip_model_path,
            threshold=cfg.clip_threshold,
            image_size=cfg.clip_image_size,
            text_max_tokens=cfg.clip_text_max_tokens,
            allow_remote_code=cfg.allow_remote_code,
            batch_size=cfg.clip_batch_size,
            device=cfg.clip_device,
        )

    def __getstate__(self) -> dict:
        # Workers get the recipe, not the weights; each loads the model on its first call.
        state = dict(self.__dict__)
        state.update(_model=None, _tokenizer=None, _image_processor=None)
        return state

    def __call__(
        self,
        completions: Sequence[Any],
        *,
        images: Sequence[Any] | None = None,
        image: Sequence[Any] | None = None,
        **kwargs: Any,
    ) -> list[float]:
        captions = [extract_caption(normalise(completion_text(c))) for c in completions]
        sources = images if images is not None else image
        sources = list(sources) if sources is not None else [None] * len(captions)
        if len(sources) != len(captions):
            raise ValueError(f"{len(sources)} images for {len(captions)} completions")

        rewards = [0.0] * len(captions)
        pairs = []  # (index, caption, image) of the completions that can be scored
        for i, (caption, source) in enumerate(zip(captions, sources)):
            if not caption or source is None:
                continue
            try:
                pairs.append((i, caption, load_image(source, self.image_size)))
            except Exception as err:
                logger.warning("clip reward: cannot read image of completion %d: %s", i, err)
        if not pairs:
            return rewards
        self._load()
        for start in range(0, len(pairs), self.batch_size):
            chunk = pairs[start : start + self.batch_size]
            for (i, _, _), s in zip(chunk, self._similarities_or_zero(chunk)):
                rewards[i] = similarity_to_reward(s, self.threshold)
        return rewards

    def similarities(self, captions: list[str], images: list[Any]) -> list[float]:
        """Cosine similarities of L2-normalised text and image features, pair by pair."""
        import torch

        self._load()
        text = self._tokenizer(
            captions, max_length=self._text_len, padding="max_length", truncation=True, return_tensors="pt"
        )
        pixels = self._image_processor(images=images, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            dtype = next(self._model.parameters()).dtype
            image_features = _features(self._model.get_image_features(pixel_values=pixels.to(self.device, dtype)))
            input_ids = text["input_ids"].to(self.device)
            if self._walk_short_pos is not None:
                # The reference's call: ids only; the causal mask and first-EOS pooling ignore padding.
                out = self._model.get_text_features(input_ids, walk_short_pos=self._walk_short_pos)
            else:
                mask = text.get("attention_mask")
                out = self._model.get_text_features(
                    input_ids=input_ids, attention_mask=None if mask is None else mask.to(self.device)
                )
            text_features = _features(out)
            image_features = torch.nn.functional.normalize(image_features.float(), dim=-1)
            text_features = torch.nn.functional.normalize(text_features.float(), dim=-1)
            return (image_features * text_features).sum(dim=-1).tolist()

    def _similarities_or_zero(self, chunk: list[tuple[int, str, Any]]) -> list[float]:
        try:
            return self.similarities([c for _, c, _ in chunk], [im for _, _, im in chunk])
        except Exception as err:
            if len(chunk) == 1:
                logger.warning("clip reward: scoring completion %d failed: %s", chunk[0][0], err)
                return [0.0]
            # One bad pair must not zero the batch: score the pairs one by one.
            return [s for pair in chunk for s in self._similarities_or_zero([pair])]

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

        trust = self.allow_remote_code
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        model = _load_model(self.model_path, trust)
        try:
            processor = AutoProcessor.from_pretrained(self.model_path, trust_remote_code=trust)
        except Exception:
            processor = None
        tokenizer = getattr(processor, "tokenizer", None)
        image_processor = getattr(processor, "image_processor", None)
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=trust)
        if image_processor is None:
            image_processor = AutoImageProcessor.from_pretrained(self.model_path, trust_remote_code=trust)
        self._text_len, self._walk_short_pos = _text_path(model, tokenizer, self.text_max_tokens)
        self._model = model.to(self.device).eval()
        self._tokenizer = tokenizer
        self._image_processor = image_processor


def _load_model(path: str, trust: bool) -> Any:
    """The model via ``AutoModel``, or ``AutoModelForCausalLM`` where the directory's own code registers only that."""
    from transformers import AutoModel, AutoModelForCausalLM, PretrainedConfig

    auto_map = PretrainedConfig.get_config_dict(path)[0].get("auto_map") or {}
    own_code = sorted(key for key in auto_map if key.startswith("AutoModel"))
    if own_code and not trust:
        logger.warning("clip reward: %s ships model code %s; it runs only with allow_remote_code", path, own_code)
    if trust and "AutoModel" not in auto_map and "AutoModelForCausalLM" in auto_map:
        # FG-CLIP's config has model_type "clip", for which AutoModel can quietly build transformers'
        # CLIPModel from its weights, without the long position table and projection.
        return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    try:
        return AutoModel.from_pretrained(path, trust_remote_code=trust)
    except ValueError:
        if not trust:
            raise
        return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)


def _text_path(model: Any, tokenizer: Any, wanted: int) -> tuple[int, bool | None]:
    """Tokens to read and FG-CLIP's ``walk_short_pos`` flag (None when ``get_text_features`` has no such flag).

    FG-CLIP keeps CLIP's short position table (``max_position_embeddings``, 77) and adds a long one
    (248 positions) with its own projection, walked with ``walk_short_pos=False``. A length that
    fits the short table walks the short one, as FG-CLIP's README does for 77-token captions.
    """
    short = _text_limit(model, tokenizer)
    if "walk_short_pos" not in inspect.signature(model.get_text_features).parameters:
        return min(wanted, short), None
    if wanted <= short:
        return wanted, True
    # Without a table to measure, trust the configured length, as the reference trusts 248.
    return min(wanted, _long_text_positions(model) or wanted), False


def _long_text_positions(model: Any) -> int | None:
    """Size of the largest position table of the model's text tower, if it has one to inspect."""
    from torch import nn

    text_model = getattr(model, "text_model", None)
    if not isinstance(text_model, nn.Module):
        return None
    sizes = [
        module.num_embeddings
        for name, module in text_model.named_modules()
        if isinstance(module, nn.Embedding) and "position" in name
    ]
    return max(sizes, default=None)


def _text_limit(model: Any, tokenizer: Any) -> int:
    """The longest text the model's (short) position table holds."""
    config = model.config
    text_config = getattr(config, "text_config", None)
    for cfg in (text_config, config):
        limit = getattr(cfg, "max_position_embeddings", None) if cfg is not None else None
        if isinstance(limit, int) and limit > 0:
            return limit
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else 10**9


def _features(output: Any):
    """The embedding tensor from ``get_*_features``, which newer transformers wrap in a model output."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    for name in ("pooler_output", "text_embeds", "image_embeds"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return output[0]
