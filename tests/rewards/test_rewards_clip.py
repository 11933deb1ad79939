"""The clip reward on a tiny random CLIP built offline (byte-level tokenizer, 32 px images)."""

from __future__ import annotations

import io
import pickle

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


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    from tokenizers import pre_tokenizers
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    # One token per byte (no merges): enough for CLIP's BPE pipeline, built without any download.
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    for suffix in ("", "</w>"):
        for ch in alphabet:
            vocab[ch + suffix] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
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
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return str(path)


def describe(caption: str) -> str:
    return f"### Image Description: {caption}\n### Rationales: why\n### Step 1: x\n### The final answer is: 1"


RED = Image.new("RGB", (48, 40), (220, 20, 20))
BLUE = Image.new("RGB", (40, 48), (20, 20, 220))


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
