"""The clip reward on tiny random CLIPs built offline (byte-level tokenizer, 32 px images).

Two models: transformers' CLIPModel, and a CLIP with FG-CLIP's long text path shipped as remote
code (tests/rewards/tiny_fgclip.py).
"""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import pickle
import shutil
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from PIL import Image  # noqa: E402

from rewards import (  # noqa: E402
    ClipReward,
    RewardConfig,
    extract_caption,
    grade,
    load_image,
    similarity_to_reward,
)

TEXT_POSITIONS = 64
FGCLIP_SHORT_POSITIONS = 77  # FG-CLIP v1's max_position_embeddings; its long table has 248
HELPER = Path(__file__).with_name("tiny_fgclip.py")


def byte_processor():
    """One token per byte (no merges): enough for CLIP's BPE pipeline, built without any download."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for suffix in ("", "</w>"):
        for ch in alphabet:
            vocab[ch + suffix] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    from transformers import CLIPConfig, CLIPModel

    processor = byte_processor()
    tokenizer = processor.tokenizer
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=TEXT_POSITIONS,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-clip")
    CLIPModel(config).save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def remote_code_cache(tmp_path_factory):
    """transformers copies a model's own code into HF_MODULES_CACHE; keep that copy in a tmp dir."""
    import transformers.dynamic_module_utils as dynamic

    cache = str(tmp_path_factory.mktemp("hf-modules"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dynamic, "HF_MODULES_CACHE", cache)
        yield cache
    if cache in sys.path:
        sys.path.remove(cache)


@pytest.fixture(scope="module")
def tiny_fgclip(tmp_path_factory, remote_code_cache) -> str:
    """A tiny FG-CLIP-like model shipped as FG-CLIP is: model_type "clip", own code under AutoModelForCausalLM only."""
    from transformers import CLIPConfig

    spec = importlib.util.spec_from_file_location("tiny_fgclip", HELPER)
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    processor = byte_processor()
    tokenizer = processor.tokenizer
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, num_attention_heads=2,
            max_position_embeddings=FGCLIP_SHORT_POSITIONS, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(hidden_size=32, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-fgclip")
    helper.TinyFGCLIPModel(config).save_pretrained(path)
    processor.save_pretrained(path)
    shutil.copy(HELPER, path / "modeling_tiny_fgclip.py")
    config_file = path / "config.json"
    saved = json.loads(config_file.read_text())
    saved["auto_map"] = {"AutoModelForCausalLM": "modeling_tiny_fgclip.TinyFGCLIPModel"}
    config_file.write_text(json.dumps(saved))
    return str(path)


def describe(caption: str) -> str:
    return f"### Image Description: {caption}\n### Rationales: why\n### Step 1: x\n### The final answer is: 1"


RED = Image.new("RGB", (48, 40), (220, 20, 20))
BLUE = Image.new("RGB", (40, 48), (20, 20, 220))


def fgclip_reference_similarity(path: str, caption: str, image: Image.Image, max_length: int, walk_short: bool):
    """The similarity as the reference computes it (examples/reward_function/pebr_1.py, compute_clip_score)."""
    from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    image = image.convert("RGB").resize((336, 336))
    pixels = AutoImageProcessor.from_pretrained(path).preprocess(image, return_tensors="pt")
    ids = torch.tensor(tokenizer([caption], max_length=max_length, padding="max_length", truncation=True).input_ids)
    with torch.no_grad():
        image_feat = model.get_image_features(pixels["pixel_values"])
        text_feat = model.get_text_features(ids, walk_short_pos=walk_short)
    return float(torch.nn.functional.cosine_similarity(image_feat, text_feat).item())


def with_z_at(text: str, index: int) -> str:
    return text[:index] + "z" + text[index + 1 :]


def expected_similarity(path: str, caption: str, image: Image.Image) -> float:
    """The cosine similarity computed independently: CLIPModel.forward on an unpadded caption."""
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(path).eval()
    processor = CLIPProcessor.from_pretrained(path)
    inputs = processor(text=[caption], images=[image.convert("RGB").resize((336, 336))], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    return float((out.text_embeds * out.image_embeds).sum() / (out.text_embeds.norm() * out.image_embeds.norm()))


# ---- pure parts ----------------------------------------------------------------------------


def test_similarity_to_reward_rule():
    assert similarity_to_reward(0.4) == 1.0
    assert similarity_to_reward(0.9) == 1.0
    assert similarity_to_reward(0.3) == pytest.approx(0.75)
    assert similarity_to_reward(0.0) == 0.0
    assert similarity_to_reward(-0.2) == 0.0
    assert similarity_to_reward(0.1, threshold=0.2) == pytest.approx(0.5)


def test_extract_caption():
    assert extract_caption("### IMAGE DESCRIPTION: a\nb\n### rationales: c") == "a\nb"
    assert extract_caption("### Image Description: only this") == ""
    assert extract_caption("no sections") == ""
    assert extract_caption("### Image Description: a ### Rationales: b ### Rationales: c") == "a"
    # The reference's `###\s*`: no space, several, or a newline after the hashes.
    assert extract_caption("###Image Description: x ###Rationales: y") == "x"
    assert extract_caption("###Image Description:x###Rationales:") == "x"
    assert extract_caption("###   image description:\n x \n###\nRATIONALES: y") == "x"
    assert extract_caption("##Image Description: x ###Rationales: y") == ""


def test_load_image_variants(tmp_path):
    path = tmp_path / "red.png"
    RED.save(path)
    buffer = io.BytesIO()
    BLUE.save(buffer, format="PNG")
    for source in (RED, str(path), path, [RED, BLUE], buffer.getvalue(), {"bytes": buffer.getvalue(), "path": None}):
        image = load_image(source)
        assert image.size == (336, 336) and image.mode == "RGB"
    assert load_image([BLUE]).getpixel((0, 0)) == (20, 20, 220)
    with pytest.raises(Exception):
        load_image([])


# ---- with the tiny model -------------------------------------------------------------------


def test_clip_reward_matches_independent_similarity(tiny_clip):
    reward = ClipReward(tiny_clip, threshold=2.0)  # never saturates: reward = s / 2
    captions = ["a red box", "a blue square on the left"]
    values = reward([describe(c) for c in captions], images=[[RED], [BLUE]])
    for value, caption, image in zip(values, captions, [RED, BLUE]):
        s = expected_similarity(tiny_clip, caption, image)
        assert value == pytest.approx(max(s, 0.0) / 2.0, abs=1e-5)


def test_clip_reward_in_unit_interval_and_deterministic(tiny_clip):
    reward = ClipReward(tiny_clip)
    completions = [describe(c) for c in ("red", "blue square", "a very long " * 200, "x")]
    images = [[RED], [BLUE], [RED], [BLUE]]
    first = reward(completions, images=images)
    again = ClipReward(tiny_clip, batch_size=1)(completions, images=images)
    assert all(0.0 <= v <= 1.0 for v in first)
    assert first == pytest.approx(again, abs=1e-6)
    assert first == reward(completions, images=images)
    assert reward._text_len == TEXT_POSITIONS  # 248 cut to the model's 64 positions


def test_plain_clip_reads_at_most_its_own_positions(tiny_clip):
    reward = ClipReward(tiny_clip)  # asks for 248 tokens
    base = "a" * 100  # one token per letter, after the start token
    inside, past = with_z_at(base, 30), with_z_at(base, TEXT_POSITIONS + 6)
    sims = reward.similarities([base, inside, past], [load_image(RED)] * 3)
    assert (reward._text_len, reward._walk_short_pos) == (TEXT_POSITIONS, None)
    assert abs(sims[1] - sims[0]) > 1e-5
    assert sims[2] == pytest.approx(sims[0], abs=1e-6)


def test_fgclip_long_path_reads_248_tokens(tiny_fgclip):
    reward = ClipReward(tiny_fgclip, allow_remote_code=True)
    base = "a" * 300
    token_200, token_262 = with_z_at(base, 198), with_z_at(base, 260)  # position 0 is the start token
    sims = reward.similarities([base, token_200, token_262], [load_image(RED)] * 3)
    assert type(reward._model).__name__ == "TinyFGCLIPModel"  # not transformers' CLIPModel
    assert (reward._text_len, reward._walk_short_pos) == (248, False)
    assert abs(sims[1] - sims[0]) > 1e-5  # read: past the short table's 77
    assert sims[2] == pytest.approx(sims[0], abs=1e-6)  # cut: past 248
    assert sims[0] == pytest.approx(fgclip_reference_similarity(tiny_fgclip, base, RED, 248, False), abs=1e-5)
    assert sims[0] != pytest.approx(fgclip_reference_similarity(tiny_fgclip, base, RED, 77, True), abs=1e-4)


def test_fgclip_short_path_when_the_text_fits_the_short_table(tiny_fgclip):
    reward = ClipReward(tiny_fgclip, allow_remote_code=True, text_max_tokens=FGCLIP_SHORT_POSITIONS)
    caption = "a red box " * 20
    (s,) = reward.similarities([caption], [load_image(RED)])
    assert (reward._text_len, reward._walk_short_pos) == (FGCLIP_SHORT_POSITIONS, True)
    assert s == pytest.approx(fgclip_reference_similarity(tiny_fgclip, caption, RED, 77, True), abs=1e-5)


def test_fgclip_code_not_run_without_permission_is_reported(tiny_fgclip, caplog):
    reward = ClipReward(tiny_fgclip)  # allow_remote_code off: transformers' own CLIPModel, FG-CLIP's tables unused
    with caplog.at_level(logging.WARNING, logger="rewards.clip"):
        reward.similarities(["red"], [load_image(RED)])
    assert "allow_remote_code" in caplog.text
    assert (reward._text_len, reward._walk_short_pos) == (FGCLIP_SHORT_POSITIONS, None)


@pytest.fixture(scope="module")
def aligned(tiny_clip) -> tuple[str, float]:
    """A caption whose similarity with RED is positive under the random model, and that similarity."""
    reward = ClipReward(tiny_clip)
    candidates = ["red", "a red box", "blue", "square", "circle", "two shapes", "nothing", "a cat"]
    sims = reward.similarities(candidates, [load_image(RED)] * len(candidates))
    caption, s = max(zip(candidates, sims), key=lambda pair: pair[1])
    assert s > 0.0
    return caption, s


def test_clip_threshold_saturates(tiny_clip, aligned):
    caption, s = aligned
    at = ClipReward(tiny_clip, threshold=s * (1 - 1e-4))
    below = ClipReward(tiny_clip, threshold=s * 2)
    assert at([describe(caption)], images=[[RED]]) == [1.0]
    assert below([describe(caption)], images=[[RED]]) == [pytest.approx(0.5, abs=1e-4)]
    unspaced = f"###Image Description: {caption}\n###Rationales: why\n###Step 1: x"
    assert at([unspaced], images=[[RED]]) == [1.0]


def test_clip_reward_failures_score_zero(tiny_clip, aligned, tmp_path):
    caption, s = aligned
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    reward = ClipReward(tiny_clip, threshold=s / 2)
    values = reward(
        [
            "### Rationales: no description",  # missing caption
            "### Image Description:   ### Rationales: empty",  # empty caption
            describe(caption),  # unreadable image file
            describe(caption),  # missing file
            describe(caption),  # no image at all
            describe(caption),  # fine
        ],
        images=[[RED], [RED], [str(broken)], [str(tmp_path / "absent.png")], [], [RED]],
    )
    assert values[:5] == [0.0] * 5
    assert values[5] == 1.0


def test_clip_reward_accepts_trl_call_and_image_column(tiny_clip):
    reward = ClipReward(tiny_clip)
    completions = [[{"role": "assistant", "content": describe("red")}]] * 2
    kwargs = {
        "prompts": [[{"role": "user", "content": "q"}]] * 2,
        "completion_ids": [[1, 2]] * 2,
        "trainer_state": None,
        "log_extra": None,
        "log_metric": None,
        "answer": ["1", "1"],
        "key_words": [["red"], ["red"]],
    }
    with_images = reward(completions=completions, images=[[RED], [BLUE]], **kwargs)
    with_image = reward(completions=completions, image=[RED, BLUE], **kwargs)
    assert with_images == with_image
    assert reward(completions=completions, **kwargs) == [0.0, 0.0]


def test_clip_reward_pickles_without_weights(tiny_clip):
    reward = ClipReward(tiny_clip)
    before = reward([describe("red")], images=[[RED]])
    assert reward._model is not None
    copy = pickle.loads(pickle.dumps(reward))
    assert copy._model is None and copy.__name__ == "clip"
    assert copy([describe("red")], images=[[RED]]) == pytest.approx(before)


def test_clip_reward_is_lazy(tmp_path):
    reward = ClipReward(str(tmp_path))  # an empty directory: loading it would fail
    assert reward([describe("red")], images=[[]]) == [0.0]  # nothing to score: no load attempted
    with pytest.raises((OSError, ValueError)):
        reward([describe("red")], images=[[RED]])


def test_grade_with_clip_uses_paper_weights(tiny_clip, aligned):
    caption, s = aligned
    cfg = RewardConfig(clip_model_path=tiny_clip, clip_threshold=s / 2)
    record = {"response": describe(caption), "answer": "1", "key_words": [caption], "images": [RED]}
    out = grade([record], "perception", cfg)[0]["rewards"]
    assert out["clip"] == 1.0
    assert out["overall"] == pytest.approx(0.4 * 1.0 + 0.4 * 1.0 + 0.1 * 1.0 + 0.1 * 1.0)
    assert grade([{**record, "images": None}], "perception", cfg)[0]["rewards"]["clip"] == 0.0
