"""The paper's text rewards (format, accuracy, keyword, length) as TRL-style batch callables.

Each takes ``completions`` (plain strings or chat messages) plus dataset columns as keyword
arguments and returns one float per completion, or None where the reward does not apply. Every
reward first applies the reference normalisation, so ``"1 / 2"`` and ``"1/2"`` grade alike.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from importlib import metadata
from typing import Any


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


GRADER_VERSION = f"pebr-rewards/1 mathruler-{_version('mathruler')}"
"""Names the grading code; scoring runs store it so rollouts graded by other code can be told apart."""

ACCURACY_GRADERS = ("mathruler", "math_verify")

_NORMALISE_RE = re.compile(r"\s*(<|>|/)\s*")
# Case-sensitive with exactly one space after ###, as in the reference.
_ANSWER_RE = re.compile(r"### The final answer is:\s*([^\n]*)")
_FORMAT_RES = tuple(
    re.compile(p, re.IGNORECASE)
    for p in (
        r"###\s*Image Description:",
        r"###\s*Rationales:",
        r"###\s*Step\s*1:",
        r"###\s*The final answer is:",
    )
)


def grader_version(accuracy_grader: str = "mathruler") -> str:
    """The version string of the grading code for a chosen accuracy grader.

    >>> grader_version() == GRADER_VERSION
    True
    """
    if accuracy_grader == "mathruler":
        return GRADER_VERSION
    return f"pebr-rewards/1 math-verify-{_version('math-verify')}"


def normalise(response: str) -> str:
    """Drop the whitespace around ``<``, ``>`` and ``/``, as every reference reward does first.

    >>> normalise("x  >  3 and 1 / 2")
    'x>3 and 1/2'
    """
    return _NORMALISE_RE.sub(r"\1", response)


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or the last message of a conversational completion.

    >>> completion_text([{"role": "assistant", "content": "hi"}])
    'hi'
    >>> parts = [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}]
    >>> completion_text([{"role": "assistant", "content": parts}])
    'ab'
    """
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if not completion:
        return ""
    content = completion[-1].get("content", "")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def _texts(completions: Sequence[Any]) -> list[str]:
    return [normalise(completion_text(c)) for c in completions]


def _column(values: Any, n: int) -> list[Any]:
    """A per-completion column, or n Nones when the dataset has no such column."""
    if values is None:
        return [None] * n
    values = list(values)
    if len(values) != n:
        raise ValueError(f"column has {len(values)} values for {n} completions")
    return values


def extract_answer(response: str) -> str:
    """The text after ``### The final answer is:`` on its line, stripped; the whole response if absent.

    >>> extract_answer("### Step 1: add\\n### The final answer is: 7 \\nthanks")
    '7'
    >>> extract_answer("the answer is 7")
    'the answer is 7'
    """
    match = _ANSWER_RE.search(response)
    return match.group(1).strip() if match else response


def _ground_truth_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN from a dataframe
        return None
    return str(value).strip()


def grade_answer(given: str, ground_truth: str, accuracy_grader: str = "mathruler") -> bool:
    """Whether ``given`` is the same answer as ``ground_truth`` under the chosen checker.

    >>> grade_answer("\\\\frac{1}{2}", "0.5")
    True
    """
    if accuracy_grader == "mathruler":
        from mathruler.grader import grade_answer as mathruler_grade

        try:
            return bool(mathruler_grade(given, ground_truth))
        except Exception:  # mathruler lets some sympy errors through; an unparsable answer is wrong
            return False
    if accuracy_grader == "math_verify":
        return _math_verify_grade(given, ground_truth)
    raise ValueError(f"unknown accuracy grader {accuracy_grader!r}; expected one of {ACCURACY_GRADERS}")


def _math_verify_grade(given: str, ground_truth: str) -> bool:
    try:
        from math_verify import parse, verify
    except ImportError as err:
        raise ImportError("accuracy_grader='math_verify' needs the math-verify package") from err
    # math-verify does not parse bare option letters or words, so an exact match counts first.
    if given.strip().casefold() == ground_truth.strip().casefold():
        return True
    # Its timeouts use SIGALRM, which only the main thread may set.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        gold = parse(ground_truth, parsing_timeout=timeout)
        pred = parse(given, parsing_timeout=timeout)
        return bool(verify(gold, pred, timeout_seconds=timeout))
    except Exception:
        return False


def format_reward(completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1.0 when the response has all four sections the prompt asks for, else 0.0.

    The headers are ``Image Description:``, ``Rationales:``, ``Step 1:`` and ``The final answer
    is:``, each after ``###`` and any whitespace, matched case-insensitively anywhere.

    >>> format_reward(["### Image Description: a cat ### Rationales: count ### Step 1: one "
    ...                "### The final answer is: 1", "### The final answer is: 1"])
    [1.0, 0.0]
    """
    return [1.0 if all(r.search(t) for r in _FORMAT_RES) else 0.0 for t in _texts(completions)]


format_reward.__name__ = "format"


def accuracy_reward(
    completions: Sequence[Any],
    *,
    answer: Sequence[Any] | None = None,
    ground_truth: Sequence[Any] | None = None,
    accuracy_grader: str = "mathruler",
    **kwargs: Any,
) -> list[float | None]:
    """1.0 when the final answer matches the ground truth, else 0.0; None where there is no ground truth.

    The answer is what follows ``### The final answer is:`` (case-sensitive) on its line, or the
    whole response when that header is missing. The ground truth comes from the ``answer`` column
    (or ``ground_truth``, the rollout dump's name), is stripped, and numbers become strings.

    >>> accuracy_reward(["### The final answer is: \\\\frac{1}{2}", "### The final answer is: 3"],
    ...                 answer=["0.5", 4])
    [1.0, 0.0]
    """
    texts = _texts(completions)
    truths = _column(answer if answer is not None else ground_truth, len(texts))
    rewards: list[float | None] = []
    for text, truth in zip(texts, truths):
        truth_text = _ground_truth_text(truth)
        if truth_text is None:
            rewards.append(None)
            continue
        ok = grade_answer(extract_answer(text), truth_text, accuracy_grader)
        rewards.append(1.0 if ok else 0.0)
    return rewards


accuracy_reward.__name__ = "accuracy"


def _keyword_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(k) for k in value]


def keyword_reward(
    completions: Sequence[Any], *, key_words: Sequence[Any] | None = None, **kwargs: Any
) -> list[float]:
    """The fraction of the sample's ``key_words`` found in the response, ignoring case; 0.0 when it has none.

    Key words are matched as substrings of the normalised response and are not normalised
    themselves (as in the reference), so a key word written ``"a / b"`` never matches.

    >>> keyword_reward(["A RED circle and a square"], key_words=[["red", "circle", "triangle", "blue"]])
    [0.5]
    """
    texts = _texts(completions)
    rewards = []
    for text, words in zip(texts, _column(key_words, len(texts))):
        words = _keyword_list(words)
        if not words:
            rewards.append(0.0)
            continue
        lowered = text.lower()
        rewards.append(sum(w.lower() in lowered for w in words) / len(words))
    return rewards


keyword_reward.__name__ = "keyword"


def count_tokens(text: str) -> int:
    """Whitespace-separated words: the length estimate used when no token count is given.

    It undercounts subword tokens (often by a third), so callers that know the real count pass it.

    >>> count_tokens("one two  three\\nfour")
    4
    """
    return len(text.split())


def length_reward(
    completions: Sequence[Any],
    *,
    response_length: Sequence[int | None] | None = None,
    completion_ids: Sequence[Sequence[int]] | None = None,
    length_limit: int = 512,
    **kwargs: Any,
) -> list[float]:
    """1.0 for a response of at most ``length_limit`` tokens, else ``length_limit / length``.

    The token count is, in order of preference: the ``response_length`` column (e.g. the store's
    n_tokens), the length of ``completion_ids`` (TRL passes the generated ids), or a whitespace
    word count of the normalised response (``count_tokens``).

    >>> length_reward(["short", "long"], completion_ids=[[1] * 512, [1] * 1024])
    [1.0, 0.5]
    """
    texts = _texts(completions)
    lengths = _column(response_length, len(texts))
    ids = _column(completion_ids, len(texts))
    rewards = []
    for text, n, token_ids in zip(texts, lengths, ids):
        if n is None or (isinstance(n, float) and n != n):
            n = len(token_ids) if token_ids is not None else count_tokens(text)
        n = int(n)
        rewards.append(1.0 if n <= length_limit else length_limit / n)
    return rewards


length_reward.__name__ = "length"
