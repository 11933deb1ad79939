"""A tiny Qwen2-VL or Qwen2.5-VL model built offline: a locally trained tokenizer and random weights.

The toolkit must run end to end where no model hub can be reached, so it builds a model of the
real architecture (the same classes, config keys and file names as Qwen2-VL or Qwen2.5-VL
checkpoints) that transformers' Auto classes and vLLM load like any other, and that trains in
minutes on a CPU. Qwen2.5-VL is the paper's model family; its vision tower differs from Qwen2-VL's
(window attention with a few full-attention blocks, RMSNorm and SwiGLU blocks, a merger into
``out_hidden_size``), so the tests run the method on both.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
"""Qwen2-VL's special tokens; the first one pads, ``<|im_end|>`` ends a turn."""

# Qwen2's pre-tokenizer split: digits one by one, so numbers stay learnable with a small vocabulary.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2-VL's own chat template, so prompts look exactly as they would for the real models."""

BUILTIN_CORPUS = [
    "You are a helpful assistant.",
    "system user assistant",
    "### Image Description: The image shows 3 objects: a large red circle in the top left, "
    "a small blue square in the center and a large green triangle in the bottom right.",
    "### Image Description: The image shows 1 object: a small yellow diamond in the middle left.",
    "### Rationales: The question asks how many objects are in the image.",
    "### Let's think step by step.",
    "### Step 1: Count the red objects. There are 2 red objects.",
    "### Step 2: Count the blue objects. There is 1 blue object.",
    "### Step 3: 2 - 1 = 1. 4 + 5 = 9. 6 > 3.",
    "### The final answer is: 1",
    "How many objects are in the image? Which shapes are in the image? What colour is the object "
    "in the top right? What shape is the object in the bottom middle? What size is the purple star?",
    "How many more red objects than blue objects are there? Are there more circles than squares? "
    "Is the red circle to the left of the blue square? Is it above or below? yes no",
    "red green blue yellow purple orange circle square triangle diamond star small large "
    "top middle bottom left right center 0 1 2 3 4 5 6 7 8 9",
]
"""Text for the tokenizer when no corpus is given: the shapes world's language in miniature."""

ARCHS = ("qwen2_vl", "qwen2_5_vl")
"""Architectures ``build_tiny_model`` builds; both share the tokenizer, special tokens and chat template."""

QWEN25_ONLY = ("vision_intermediate_size", "window_size", "fullatt_block_indexes")
"""TinyModelConfig fields that only Qwen2.5-VL's vision tower has."""


@dataclass
class TinyModelConfig:
    """Sizes of the tiny model; the defaults build a ~1 M parameter model in about a second."""

    vocab_size: int = 1024
    """Target tokenizer size (special tokens included); BPE stops earlier on a small corpus."""
    min_frequency: int = 2
    """A pair must occur this often in the corpus to become a merge."""
    hidden_size: int = 128
    """Width of the language model."""
    intermediate_size: int = 256
    """Width of the language model's MLP."""
    num_hidden_layers: int = 2
    """Decoder layers."""
    num_attention_heads: int = 4
    """Query heads; head_dim = hidden_size / heads must be at least 32 and divisible by 4."""
    num_key_value_heads: int = 2
    """Key/value heads (grouped-query attention as in Qwen2)."""
    mrope_section: list[int] | None = None
    """Multimodal rotary split of head_dim/2 over (time, height, width); None derives Qwen's 1:1.5:1.5."""
    max_position_embeddings: int = 4096
    """Longest sequence the rotary tables are sized for."""
    vision_depth: int | None = None
    """Vision transformer blocks; None: 1 for Qwen2-VL, 2 for Qwen2.5-VL (one windowed block and one
    full-attention block, so both attention paths run)."""
    vision_embed_dim: int = 64
    """Width of the vision transformer."""
    vision_num_heads: int = 2
    """Vision attention heads."""
    patch_size: int = 14
    """Pixels per patch side (Qwen2-VL's value)."""
    spatial_merge_size: int = 2
    """Patches merged per side into one image token (Qwen2-VL's value)."""
    min_pixels: int = 56 * 56
    """Smallest image area after resizing; 56x56 is one image token."""
    max_pixels: int = 224 * 224
    """Largest image area after resizing: at most 64 image tokens; a 112x112 image gives 16."""
    rope_theta: float = 1_000_000.0
    """Rotary base (Qwen2-VL's value)."""
    vision_intermediate_size: int = 128
    """Qwen2.5-VL only: width of the vision blocks' SwiGLU MLP (Qwen2-VL's is a 4x GELU MLP)."""
    window_size: int = 56
    """Qwen2.5-VL only: side in pixels of a vision attention window, a multiple of patch_size *
    spatial_merge_size. Real checkpoints use 112 (8x8 patches); the tiny model's images are small, so
    half that: a 112x112 image is 2x2 windows, an 84x84 one 2x2 windows of uneven sizes."""
    fullatt_block_indexes: list[int] | None = None
    """Qwen2.5-VL only: vision blocks that attend over the whole image, the others attend within their
    window; None: the last block (real checkpoints: every 8th, [7, 15, 23, 31])."""


def _mrope_section(head_dim: int) -> list[int]:
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def train_tokenizer(corpus: list[str], vocab_size: int = 1024, min_frequency: int = 2):
    """A byte-level BPE tokenizer (Qwen2's pre-tokenizer) trained on ``corpus``, wrapped for transformers.

    >>> tok = train_tokenizer(["a red circle and a blue square"] * 4, vocab_size=300)
    >>> tok.decode(tok("a red circle")["input_ids"])
    'a red circle'
    """
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def resolve_config(arch: str = "qwen2_vl", **size) -> TinyModelConfig:
    """The sizes ``build_tiny_model`` uses for ``arch``: ``size`` over the defaults, arch defaults filled in, checked.

    >>> resolve_config("qwen2_5_vl").vision_depth, resolve_config("qwen2_5_vl").fullatt_block_indexes
    (2, [1])
    >>> resolve_config("qwen2_vl").vision_depth
    1
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    known = {f.name for f in fields(TinyModelConfig)}
    unknown = set(size) - known
    if unknown:
        raise TypeError(f"unknown size options: {sorted(unknown)}; known: {sorted(known)}")
    if arch != "qwen2_5_vl" and set(size) & set(QWEN25_ONLY):
        raise ValueError(f"{sorted(set(size) & set(QWEN25_ONLY))} only apply to arch qwen2_5_vl")
    cfg = TinyModelConfig(**size)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    if head_dim * cfg.num_attention_heads != cfg.hidden_size or head_dim < 32 or head_dim % 4:
        raise ValueError(f"hidden_size/num_attention_heads = {head_dim}: must be an integer >= 32, divisible by 4")
    cfg.mrope_section = list(cfg.mrope_section or _mrope_section(head_dim))
    if sum(cfg.mrope_section) != head_dim // 2:
        raise ValueError(f"mrope_section {cfg.mrope_section} must sum to head_dim/2 = {head_dim // 2}")
    if cfg.vision_depth is None:
        cfg.vision_depth = 2 if arch == "qwen2_5_vl" else 1
    if cfg.vision_depth < 1:
        raise ValueError(f"vision_depth must be at least 1 (got {cfg.vision_depth})")
    if arch == "qwen2_5_vl":
        cell = cfg.patch_size * cfg.spatial_merge_size
        if cfg.window_size < cell or cfg.window_size % cell:
            raise ValueError(f"window_size {cfg.window_size} must be a positive multiple of patch_size * "
                             f"spatial_merge_size = {cell}")
        full = cfg.fullatt_block_indexes
        if full is not None and not (isinstance(full, (list, tuple)) and all(isinstance(i, int) for i in full)):
            raise ValueError(f"fullatt_block_indexes must be a list of block indexes (got {full!r})")
        cfg.fullatt_block_indexes = sorted(set(full)) if full is not None else [cfg.vision_depth - 1]
        if any(not 0 <= i < cfg.vision_depth for i in cfg.fullatt_block_indexes):
            raise ValueError(f"fullatt_block_indexes {cfg.fullatt_block_indexes} must lie in "
                             f"[0, vision_depth = {cfg.vision_depth})")
    return cfg


def _vision_config(arch: str, cfg: TinyModelConfig) -> dict:
    common = dict(depth=cfg.vision_depth, num_heads=cfg.vision_num_heads, patch_size=cfg.patch_size,
                  spatial_merge_size=cfg.spatial_merge_size, temporal_patch_size=2)
    if arch == "qwen2_vl":
        # Qwen2-VL: `embed_dim` is the tower's width, `hidden_size` the language model's it merges into.
        return dict(embed_dim=cfg.vision_embed_dim, hidden_size=cfg.hidden_size, **common)
    # Qwen2.5-VL renames them: `hidden_size` is the tower's width, `out_hidden_size` the language model's.
    return dict(hidden_size=cfg.vision_embed_dim, out_hidden_size=cfg.hidden_size,
                intermediate_size=cfg.vision_intermediate_size, hidden_act="silu", window_size=cfg.window_size,
                fullatt_block_indexes=list(cfg.fullatt_block_indexes), tokens_per_second=2, **common)


def build_tiny_model(out: Path, corpus: list[str] | None = None, seed: int = 0, arch: str = "qwen2_vl", **size) -> Path:
    """Build and save a tiny Qwen2-VL or Qwen2.5-VL model (tokenizer, processor, config, weights) in ``out``.

    ``corpus`` is the text the tokenizer learns (the dataset's problems and responses); the prompt
    template and chat roles are always added. ``arch`` is one of ``ARCHS``; both get the same
    tokenizer for the same corpus. ``size`` overrides fields of ``TinyModelConfig``.
    The same arguments give byte-identical files.
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    from generation.prompt import PROMPT_TEMPLATE
    from generation.tokens import banned_token_ids, stop_token_ids

    cfg = resolve_config(arch, **size)
    config_cls, model_cls, processor_cls = {
        "qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor),
        "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor),
    }[arch]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    texts = [PROMPT_TEMPLATE, *BUILTIN_CORPUS[:2]] + list(BUILTIN_CORPUS if corpus is None else corpus)
    tokenizer = train_tokenizer(texts, cfg.vocab_size, cfg.min_frequency)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}

    # Both families use Qwen2-VL's image and video processors (so do the real Qwen2.5-VL checkpoints).
    pixels = {"min_pixels": cfg.min_pixels, "max_pixels": cfg.max_pixels}
    merge = {"patch_size": cfg.patch_size, "merge_size": cfg.spatial_merge_size, "temporal_patch_size": 2}
    processor = processor_cls(
        image_processor=Qwen2VLImageProcessor(**pixels, **merge),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels, **merge),
        chat_template=CHAT_TEMPLATE,
    )

    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        max_window_layers=cfg.num_hidden_layers,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta, "mrope_section": cfg.mrope_section},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    if arch == "qwen2_5_vl":
        text_config["rms_norm_eps"] = 1e-6  # the Qwen2.5-VL checkpoints' value (transformers defaults to 1e-5)
    config = config_cls(
        text_config=text_config,
        vision_config=_vision_config(arch, cfg),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        tie_word_embeddings=False,
        dtype="float32",
    )
    # Seed a private generator state: the caller's global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=stop_token_ids(tokenizer),
        pad_token_id=ids["<|endoftext|>"],
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        # The toolkit's token rules, so that a plain `model.generate` of the checkpoint keeps them too.
        suppress_tokens=banned_token_ids(tokenizer, config),
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # Older readers (and vLLM's processor cache) look for the image processor on its own.
    processor.image_processor.save_pretrained(out)
    record = asdict(cfg)
    if arch != "qwen2_5_vl":
        for name in QWEN25_ONLY:
            record.pop(name)
    (out / "tiny_config.json").write_text(json.dumps({"seed": seed, "arch": arch, **record}, indent=2))
    return out
