"""The tiny model loads through transformers' Auto classes, takes the project's prompts and generates."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from generation.prompt import build_messages
from train.tiny import SPECIAL_TOKENS, build_tiny_model

CORPUS = [
    "### Image Description: The image shows 2 objects: a large red hexagon in the top left "
    "and a small blue circle in the center.",
    "### The final answer is: 2",
] * 20


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus=CORPUS, seed=0)


@pytest.fixture(scope="module")
def loaded(tiny):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoProcessor.from_pretrained(tiny), AutoModelForImageTextToText.from_pretrained(tiny)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_files_and_config(tiny, loaded):
    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "generation_config.json",
    ]:
        assert (tiny / name).is_file(), name
    processor, model = loaded
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen2VLProcessor"
    tok = processor.tokenizer
    assert model.config.text_config.vocab_size == len(tok) <= 2048
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.padding_side == "left"
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    for special in SPECIAL_TOKENS:
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id
        assert tok.tokenize(special) == [special]
    text = model.config.text_config
    head_dim = text.hidden_size // text.num_attention_heads
    assert head_dim >= 32
    assert sum(text.rope_parameters["mrope_section"]) == head_dim // 2
    assert model.config.vision_config.patch_size == 14
    assert model.config.vision_config.spatial_merge_size == 2
    assert model.config.vision_config.depth == 1
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    record = json.loads((tiny / "tiny_config.json").read_text())
    assert record["arch"] == "qwen2_vl" and "window_size" not in record  # the default arch, no Qwen2.5-VL fields


def test_tokenizer_learns_the_corpus(loaded):
    tok = loaded[0].tokenizer
    # A word repeated in the corpus is a single merge; the round trip is lossless.
    assert len(tok(" hexagon", add_special_tokens=False)["input_ids"]) == 1
    text = "### Step 1: 3 + 4 = 7, a ñew wörd"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_chat_template_and_image_inputs(loaded):
    processor, _ = loaded
    messages = build_messages("How many objects are in the <image>?")
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in text
    assert "### Image Description:" in text
    assert text.endswith("<|im_start|>assistant\n")
    no_prompt = processor.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    assert not no_prompt.endswith("<|im_start|>assistant\n")

    batch = processor(text=[text], images=[Image.new("RGB", (112, 112), "red")], return_tensors="pt")
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8]]
    n_image_tokens = int((batch["input_ids"] == processor.image_token_id).sum())
    assert 16 <= n_image_tokens <= 64
    assert batch["pixel_values"].shape[0] == 64


def test_batched_generation_with_left_padding(loaded):
    processor, model = loaded
    problems = ["<image>How many objects?", "<image>Which shapes are in the image? Name every one of them."]
    texts = [
        processor.apply_chat_template(build_messages(p), add_generation_prompt=True, tokenize=False) for p in problems
    ]
    images = [Image.new("RGB", (112, 112), "red"), Image.new("RGB", (84, 140), "blue")]
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0  # the shorter prompt is padded on the left
    assert batch["attention_mask"][:, -1].tolist() == [1, 1]

    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    new = out[:, batch["input_ids"].shape[1] :]
    assert new.shape[0] == 2 and 1 <= new.shape[1] <= 12
    assert all(isinstance(s, str) for s in processor.batch_decode(new, skip_special_tokens=True))

    # Left padding must not change a prompt's greedy continuation.
    single = processor(text=[texts[0]], images=[images[0]], return_tensors="pt")
    with torch.no_grad():
        alone = model.generate(**single, max_new_tokens=12, do_sample=False)
    alone_new = alone[0, single["input_ids"].shape[1] :]
    n = min(len(alone_new), new.shape[1])
    assert new[0, :n].tolist() == alone_new[:n].tolist()


def test_generation_never_emits_vision_tokens(loaded):
    processor, model = loaded
    text = processor.apply_chat_template(build_messages("<image>Describe."), add_generation_prompt=True, tokenize=False)
    batch = processor(text=[text], images=[Image.new("RGB", (112, 112), "green")], return_tensors="pt")
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=64, do_sample=True, temperature=2.0, num_return_sequences=4)
    new = out[:, batch["input_ids"].shape[1] :]
    banned = {processor.tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS[1:] if t != "<|im_end|>"}
    assert not banned & set(new.flatten().tolist())


def test_deterministic_for_a_seed(tmp_path, tiny):
    again = build_tiny_model(tmp_path / "again", corpus=CORPUS, seed=0)
    for name in ["model.safetensors", "tokenizer.json", "config.json", "preprocessor_config.json"]:
        assert _digest(again / name) == _digest(tiny / name), name
    other = build_tiny_model(tmp_path / "other", corpus=CORPUS, seed=1)
    assert _digest(other / "model.safetensors") != _digest(tiny / "model.safetensors")
    assert _digest(other / "tokenizer.json") == _digest(tiny / "tokenizer.json")


def test_builtin_corpus_and_size_options(tmp_path):
    from transformers import AutoConfig

    out = build_tiny_model(tmp_path / "m", seed=0, hidden_size=64, num_attention_heads=2, num_hidden_layers=1)
    config = AutoConfig.from_pretrained(out)
    assert config.text_config.hidden_size == 64 and config.text_config.num_hidden_layers == 1
    assert config.text_config.rope_parameters["mrope_section"] == [4, 6, 6]
    with pytest.raises(ValueError, match="mrope_section"):
        build_tiny_model(tmp_path / "bad", mrope_section=[4, 4, 4])
    with pytest.raises(ValueError, match=">= 32"):
        build_tiny_model(tmp_path / "bad", hidden_size=64, num_attention_heads=4)
    with pytest.raises(TypeError, match="unknown"):
        build_tiny_model(tmp_path / "bad", hidden=3)
    with pytest.raises(ValueError, match="only apply to arch qwen2_5_vl"):
        build_tiny_model(tmp_path / "bad", window_size=112)
    with pytest.raises(ValueError, match="unknown arch"):
        build_tiny_model(tmp_path / "bad", arch="qwen3_vl")
