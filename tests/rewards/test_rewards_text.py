"""Hand-checked cases for the text rewards (format, accuracy, keyword, length)."""

from __future__ import annotations

import pickle

import pytest

from rewards import (
    accuracy_reward,
    completion_text,
    count_tokens,
    extract_answer,
    format_reward,
    grade_answer,
    keyword_reward,
    length_reward,
    normalise,
)

FULL = (
    "### Image Description: two red circles and a blue square\n"
    "### Rationales: the question asks for the number of circles\n"
    "### Let's think step by step.\n"
    "### Step 1: count the red circles: 2\n"
    "### The final answer is: 2"
)


def final(answer: str) -> str:
    return f"### Step 1: think\n### The final answer is: {answer}"


# ---- normalisation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1 / 2", "1/2"),
        ("x  >  3", "x>3"),
        ("a <\n b", "a<b"),
        ("< / >", "</>"),
        ("no operators here", "no operators here"),
    ],
)
def test_normalise(raw, expected):
    assert normalise(raw) == expected


def test_completion_text_accepts_strings_and_conversations():
    assert completion_text("plain") == "plain"
    assert completion_text([{"role": "assistant", "content": "chat"}]) == "chat"
    parts = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]
    assert completion_text([{"role": "assistant", "content": parts}]) == "ab"
    assert completion_text(None) == ""


# ---- format --------------------------------------------------------------------------------


def test_format_full_response_scores_one():
    assert format_reward([FULL]) == [1.0]


@pytest.mark.parametrize(
    "missing",
    ["### Image Description:", "### Rationales:", "### Step 1:", "### The final answer is:"],
)
def test_format_any_missing_section_scores_zero(missing):
    assert format_reward([FULL.replace(missing, "")]) == [0.0]


def test_format_is_case_insensitive_and_allows_spaces():
    text = "###image description: a\n###   RATIONALES: b\n### step   1: c\n###The Final Answer Is: d"
    assert format_reward([text]) == [1.0]


def test_format_needs_the_hashes():
    assert format_reward([FULL.replace("### Rationales:", "Rationales:")]) == [0.0]


def test_format_requires_step_one_not_step_two():
    assert format_reward([FULL.replace("Step 1:", "Step 2:")]) == [0.0]


# ---- accuracy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "truth", "expected"),
    [
        (r"\frac{1}{2}", "0.5", 1.0),
        ("0.5", r"\frac{1}{2}", 1.0),
        (r"\boxed{3}", "3", 1.0),
        (r"\boxed{\frac{1}{2}}", "1/2", 1.0),
        (r"\dfrac{3}{4}", "3/4", 1.0),
        ("3/4", "0.75", 1.0),
        ("2/4", "1/2", 0.0),  # unreduced fractions do not count, as in mathruler
        ("1 / 2", "1/2", 1.0),
        ("x > 3", "x>3", 1.0),
        ("x < 3", "x > 3", 0.0),
        ("C", "C", 1.0),
        ("(C)", "C", 1.0),
        ("c", "C", 1.0),
        ("A", "C", 0.0),
        ("C. 5", "C", 0.0),
        ("1,000", "1000", 1.0),
        ("12", "13", 0.0),
    ],
)
def test_accuracy_hand_checked(given, truth, expected):
    assert accuracy_reward([final(given)], answer=[truth]) == [expected]


def test_accuracy_strips_ground_truth_and_stringifies_numbers():
    assert accuracy_reward([final("7")] * 3, answer=["  7 \n", 7, 7.0]) == [1.0, 1.0, 1.0]
    assert accuracy_reward([final("0.5")], answer=[0.5]) == [1.0]


def test_accuracy_falls_back_to_whole_response_without_header():
    assert accuracy_reward(["42"], answer=["42"]) == [1.0]
    assert accuracy_reward(["I think it is 42"], answer=["42"]) == [0.0]


def test_accuracy_header_is_case_sensitive_with_one_space():
    # A wrongly cased header is not found, so the whole text is graded and fails.
    assert accuracy_reward(["### the final answer is: 7"], answer=["7"]) == [0.0]
    assert accuracy_reward(["###The final answer is: 7"], answer=["7"]) == [0.0]
    assert accuracy_reward(["### The final answer is:7"], answer=["7"]) == [1.0]


def test_accuracy_reads_only_the_rest_of_the_header_line():
    assert extract_answer("### The final answer is: 7\n### Step 9: 8") == "7"
    assert accuracy_reward(["### The final answer is: 7\nsince 3+4=7"], answer=["7"]) == [1.0]


def test_accuracy_on_the_normalised_response():
    # "x  >  3" normalises to "x>3" before extraction.
    assert extract_answer(normalise("### The final answer is: x  >  3")) == "x>3"


def test_accuracy_uses_answer_or_ground_truth_and_none_when_absent():
    assert accuracy_reward([final("5")], ground_truth=["5"]) == [1.0]
    assert accuracy_reward([final("5"), final("5")], answer=[None, "5"]) == [None, 1.0]
    assert accuracy_reward([final("5")]) == [None]


def test_accuracy_conversational_completions():
    completions = [[{"role": "assistant", "content": final("4")}], [{"role": "assistant", "content": final("5")}]]
    assert accuracy_reward(completions, answer=["4", "4"]) == [1.0, 0.0]


def test_accuracy_rejects_unknown_grader():
    with pytest.raises(ValueError, match="unknown accuracy grader"):
        grade_answer("1", "1", accuracy_grader="nope")


def test_math_verify_grader_when_installed():
    pytest.importorskip("math_verify")
    assert accuracy_reward([final(r"\frac{1}{2}"), final("B"), final("3")], answer=["0.5", "b", "4"],
                           accuracy_grader="math_verify") == [1.0, 1.0, 0.0]


# ---- keyword -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words", "expected"),
    [
        ("a red circle", ["red", "circle"], 1.0),
        ("A RED circle", ["red", "Circle", "square", "blue"], 0.5),
        ("a red circle", ["green"], 0.0),
        ("a red circle", [], 0.0),
        ("a red circle", None, 0.0),
        ("a redder circle", ["red"], 1.0),  # substring, as in the reference
        ("one half is 1 / 2", ["1/2"], 1.0),  # found after normalisation
        ("x > 3 holds", ["x>3"], 1.0),
        ("x>3 holds", ["x > 3"], 0.0),  # key words themselves are not normalised
        ("a red circle", "circle", 1.0),  # a bare string is one key word, not letters
        ("a red circle", ["red", "red", "blue"], 2 / 3),  # duplicates count as listed
    ],
)
def test_keyword_hand_checked(text, words, expected):
    assert keyword_reward([text], key_words=[words]) == [pytest.approx(expected)]


def test_keyword_without_column_is_zero():
    assert keyword_reward(["anything"]) == [0.0]


# ---- length --------------------------------------------------------------------------------


def test_length_boundary_with_completion_ids():
    ids = [[0] * 511, [0] * 512, [0] * 513, [0] * 1024]
    assert length_reward(["x"] * 4, completion_ids=ids) == [1.0, 1.0, 512 / 513, 0.5]


def test_length_boundary_with_response_length_column():
    assert length_reward(["x", "x", "x"], response_length=[512, 513, 2048]) == [1.0, 512 / 513, 0.25]


def test_length_prefers_response_length_over_ids_and_falls_back():
    result = length_reward(["x", "x"], response_length=[1024, None], completion_ids=[[0], [0] * 1024])
    assert result == [0.5, 0.5]


def test_length_whitespace_estimate_without_counts():
    words_512 = " ".join(["w"] * 512)
    words_513 = " ".join(["w"] * 513)
    assert length_reward([words_512, words_513]) == [1.0, 512 / 513]
    assert count_tokens("a  b\n\tc") == 3


def test_length_limit_is_configurable():
    assert length_reward(["x"], completion_ids=[[0] * 20], length_limit=10) == [0.5]


# ---- the TRL calling convention ------------------------------------------------------------


def trl_kwargs(n: int) -> dict:
    """What GRPOTrainer passes besides the dataset columns."""
    return {
        "prompts": [[{"role": "user", "content": "q"}]] * n,
        "completion_ids": [[1, 2, 3]] * n,
        "trainer_state": object(),
        "log_extra": lambda *a, **k: None,
        "log_metric": lambda *a, **k: None,
    }


def test_text_rewards_accept_trl_call():
    completions = [[{"role": "assistant", "content": FULL}], [{"role": "assistant", "content": "nothing"}]]
    columns = {
        "answer": ["2", "2"],
        "key_words": [["red", "blue"], ["red"]],
        "images": [[None], [None]],
        "problem": ["p", "p"],
        "sample_id": ["a", "b"],
    }
    kw = {**trl_kwargs(2), **columns}
    assert format_reward(completions=completions, **kw) == [1.0, 0.0]
    assert accuracy_reward(completions=completions, **kw) == [1.0, 0.0]
    assert keyword_reward(completions=completions, **kw) == [1.0, 0.0]
    assert length_reward(completions=completions, **kw) == [1.0, 1.0]


def test_text_rewards_are_named_and_picklable():
    for func, name in [
        (format_reward, "format"),
        (accuracy_reward, "accuracy"),
        (keyword_reward, "keyword"),
        (length_reward, "length"),
    ]:
        assert func.__name__ == name
        assert pickle.loads(pickle.dumps(func)) is func
