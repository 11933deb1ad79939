"""The shapes world: exact answers, gold responses that earn full marks, reproducible files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mathruler.grader import grade_answer
from PIL import Image

from curate.synth import (
    COLORS,
    FAMILIES,
    SHAPES,
    answer_from_scene,
    generate_world,
    make_sample,
)

N = 240


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("world")
    return out, generate_world(out, n=N, seed=3, test_fraction=0.25, workers=1)


@pytest.fixture(scope="module")
def records(world) -> list[dict]:
    out, _ = world
    return _read(out / "train.jsonl") + _read(out / "test.jsonl")


def test_stats_and_splits(world, records):
    out, stats = world
    assert stats["n_train"] == 180 and stats["n_test"] == 60
    assert len(_read(out / "test.jsonl")) == 60
    assert sum(stats["by_capability"].values()) == N
    assert set(stats["by_capability"]) == set(FAMILIES)
    assert all(count > N / 6 for count in stats["by_capability"].values())
    assert stats["seconds"] > 0
    assert len({r["qid"] for r in records}) == N
    families = {r["question"]["family"] for r in records}
    assert families == {f.__name__[2:] for fs in FAMILIES.values() for f in fs}


def test_records_have_the_reference_fields(world, records):
    out, _ = world
    for r in records:
        assert "<image>" in r["problem"]
        assert isinstance(r["answer"], str) and r["answer"]
        assert isinstance(r["key_words"], list) and r["key_words"]
        assert r["source"] == "shapes_" + r["capability"].removeprefix("perception_")
        (image,) = r["images"]
        assert image.startswith("images/") and not Path(image).is_absolute()
        with Image.open(out / image) as img:
            assert img.size == (112, 112) and img.mode == "RGB"


def test_every_answer_matches_the_scene(records):
    for r in records:
        assert answer_from_scene(r["scene"], r["question"]) == r["answer"], r["qid"]
        objs = r["scene"]["objects"]
        assert 1 <= len(objs) <= 9
        assert len({(o["row"], o["col"]) for o in objs}) == len(objs)
        assert r["key_words"] == sorted({f"{o['color']} {o['shape']}" for o in objs})


def test_answers_are_short_and_varied(records):
    by_family: dict[str, set[str]] = {}
    for r in records:
        by_family.setdefault(r["question"]["family"], set()).add(r["answer"])
        assert re.fullmatch(r"\d|yes|no|small|large|[a-z]+(, [a-z]+)*", r["answer"]), r["answer"]
    for family, answers in by_family.items():
        assert len(answers) >= 2, family
    words = set(SHAPES) | set(COLORS) | {"small", "large"}
    assert by_family["attribute_at"] <= words


def test_gold_response_earns_full_marks(records):
    for r in records:
        response = r["response"]
        sections = ["### Image Description:", "### Rationales:", "### Let's think step by step."]
        sections += ["### Step 1:", "### Step 2:"]
        positions = [response.index(s) for s in sections]
        assert positions == sorted(positions)
        lines = response.split("\n")
        assert lines[-1] == f"### The final answer is: {r['answer']}"
        final = re.search(r"### The final answer is:\s*([^\n]*)", response).group(1).strip()
        assert grade_answer(final, r["answer"])
        description = re.search(r"### Image Description:(.*?)### Rationales:", response, re.S).group(1).lower()
        for word in r["key_words"]:
            assert word in description, (r["qid"], word)
        assert f"{len(r['scene']['objects'])} object" in description


def test_gold_response_scores_full_rewards(records):
    # The project's own reward functions, as curation and training apply them.
    from rewards.text import accuracy_reward, format_reward, keyword_reward

    responses = [r["response"] for r in records]
    assert format_reward(responses) == [1.0] * N
    assert accuracy_reward(responses, answer=[r["answer"] for r in records]) == [1.0] * N
    assert keyword_reward(responses, key_words=[r["key_words"] for r in records]) == [1.0] * N


def test_grader_tells_answers_apart(records):
    # A wrong answer of the same kind grades wrong: the answers are exact, not lenient.
    for r in records[:60]:
        a = r["answer"]
        wrong = {"yes": "no", "no": "yes", "small": "large", "large": "small"}.get(a)
        if wrong is None:
            wrong = str(int(a) + 1) if a.isdigit() else a + ", square" if "," in a or a in SHAPES else "orange"
        assert not grade_answer(wrong, a), (a, wrong)


def test_deterministic_and_independent_of_workers(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_world(a, n=40, seed=7, workers=1)
    generate_world(b, n=40, seed=7, workers=2)
    generate_world(c, n=40, seed=8, workers=1)
    for name in ["train.jsonl", "test.jsonl"]:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert sorted(p.name for p in (a / "images").iterdir()) == sorted(p.name for p in (b / "images").iterdir())
    for p in (a / "images").iterdir():
        assert p.read_bytes() == (b / "images" / p.name).read_bytes()
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    # A sample depends only on (seed, index): a bigger world starts with the same records.
    assert make_sample(7, 5)[0] == _read(a / "train.jsonl")[5]


def test_bad_test_fraction(tmp_path):
    with pytest.raises(ValueError, match="test_fraction"):
        generate_world(tmp_path, n=10, test_fraction=1.0)
