"""Stage rewards: which reward functions a stage uses, with which weights, and grading of stored records.

``stage_reward_functions`` feeds TRL's GRPOTrainer (``reward_funcs`` and ``args.reward_weights``);
``grade`` scores curation records with the very same callables, so a sample's band predicts the
signal its GRPO group will get. The overall reward sums weight x reward over the rewards that
apply (None counts as missing), exactly as TRL combines them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rewards.clip import ClipReward
from rewards.config import RewardConfig
from rewards.text import accuracy_reward, format_reward, keyword_reward, length_reward
from schemas import REWARD_COMPONENTS as COMPONENTS
from schemas import REWARD_STAGES as STAGES  # noqa: F401  (re-exported as rewards.STAGES)


class BoundReward:
    """A module-level reward function with some of its keyword arguments fixed; picklable, keeps the name.

    >>> from rewards.text import length_reward
    >>> short = BoundReward(length_reward, "length", length_limit=2)
    >>> short.__name__, short(["one two three four"])
    ('length', [0.5])
    """

    def __init__(self, func: Callable[..., list], name: str, **params: Any) -> None:
        self.func = func
        self.params = params
        self.__name__ = name

    def __call__(self, completions: Any, **kwargs: Any) -> list:
        return self.func(completions, **kwargs, **self.params)

    def __repr__(self) -> str:
        return f"BoundReward({self.__name__}, {self.params})"


def reward_function(name: str, cfg: RewardConfig | None = None) -> Callable[..., list]:
    """The configured reward callable called ``name`` (one of ``COMPONENTS``).

    >>> reward_function("length", RewardConfig(length_limit=1))(["two words"])
    [0.5]
    """
    cfg = cfg or RewardConfig()
    if name == "accuracy":
        return BoundReward(accuracy_reward, "accuracy", accuracy_grader=cfg.accuracy_grader)
    if name == "format":
        return format_reward
    if name == "keyword":
        return keyword_reward
    if name == "length":
        return BoundReward(length_reward, "length", length_limit=cfg.length_limit)
    if name == "clip":
        return ClipReward.from_config(cfg)
    raise ValueError(f"unknown reward {name!r}; expected one of {COMPONENTS}")


def stage_weights(stage: str, cfg: RewardConfig | None = None) -> dict[str, float]:
    """The weights a stage really uses: without an alignment model the clip weight is dropped and
    the other positive weights are scaled to keep their sum.

    >>> stage_weights("perception")
    {'keyword': 0.6666666666666667, 'format': 0.16666666666666669, 'length': 0.16666666666666669, 'accuracy': 0.0}
    >>> stage_weights("perception", RewardConfig(clip_model_path="fg-clip"))["clip"]
    0.4
    """
    cfg = cfg or RewardConfig()
    weights = cfg.weights(stage)
    if cfg.clip_model_path is not None or "clip" not in weights:
        return weights
    total = sum(w for w in weights.values() if w > 0)
    dropped = weights.pop("clip")
    kept = total - max(dropped, 0.0)
    if kept <= 0:
        raise ValueError(f"stage {stage!r} has no positive weight left without an alignment model")
    return {name: (w * total / kept if w > 0 else w) for name, w in weights.items()}


def renormalisation_note(stage: str, cfg: RewardConfig | None = None) -> str | None:
    """One line for the user when a stage runs without its clip reward; None when nothing changed.

    >>> renormalisation_note("reasoning") is None
    True
    >>> print(renormalisation_note("perception"))
    no alignment model configured (clip_model_path): the perception reward leaves out clip (weight 0.4) and uses keyword 0.667, format 0.167, length 0.167, accuracy 0
    """
    cfg = cfg or RewardConfig()
    configured = cfg.weights(stage)
    if cfg.clip_model_path is not None or configured.get("clip", 0.0) == 0.0:
        return None
    used = ", ".join(f"{name} {w:.3g}" for name, w in stage_weights(stage, cfg).items())
    return (
        f"no alignment model configured (clip_model_path): the {stage} reward leaves out clip "
        f"(weight {configured['clip']:.3g}) and uses {used}"
    )


def stage_reward_functions(
    stage: str, cfg: RewardConfig | None = None
) -> tuple[list[Callable[..., list]], list[float]]:
    """The reward callables of a stage and their weights, ready for TRL's GRPOTrainer.

    Pass the first list as ``reward_funcs`` and the second as ``GRPOConfig.reward_weights``.
    Zero-weight rewards are kept so that TRL logs them (accuracy in the perception stage).

    >>> funcs, weights = stage_reward_functions("reasoning")
    >>> [f.__name__ for f in funcs], weights
    (['accuracy', 'format'], [0.9, 0.1])
    """
    weights = stage_weights(stage, cfg)
    return [reward_function(name, cfg) for name in weights], list(weights.values())


def _ground_truth(record: dict) -> Any:
    return record["answer"] if record.get("answer") is not None else record.get("ground_truth")


def grade(records: Iterable[dict], stage: str, cfg: RewardConfig | None = None) -> list[dict]:
    """Every reward of every record, the stage's weighted overall reward, and ``correct``.

    A record holds ``response`` and ``answer`` (or ``ground_truth``), optionally ``key_words``,
    ``response_length`` (tokens) and ``image``/``images``. Each output is the record plus
    ``rewards`` (accuracy, format, keyword, length, clip, overall; clip is None without an
    alignment model) and ``correct`` (accuracy == 1.0).

    >>> out = grade([{"response": "### The final answer is: 1/2", "answer": "0.5"}], "reasoning")
    >>> out[0]["rewards"]["overall"], out[0]["correct"]
    (0.9, True)
    """
    cfg = cfg or RewardConfig()
    records = list(records)
    weights = stage_weights(stage, cfg)
    completions = [r.get("response") or "" for r in records]
    columns = {
        "answer": [_ground_truth(r) for r in records],
        "key_words": [r.get("key_words") for r in records],
        "response_length": [r.get("response_length") for r in records],
    }
    images = [r["images"] if r.get("images") is not None else r.get("image") for r in records]
    scores: dict[str, list] = {}
    for name in COMPONENTS:
        if name != "clip":  # needs the images and a model: below
            scores[name] = reward_function(name, cfg)(completions, **columns)
    if cfg.clip_model_path is not None:
        scores["clip"] = reward_function("clip", cfg)(completions, images=images, **columns)
    else:
        scores["clip"] = [None] * len(records)

    out = []
    for i, record in enumerate(records):
        rewards = {name: scores[name][i] for name in COMPONENTS}
        rewards["overall"] = overall_reward(rewards, weights)
        out.append({**record, "rewards": rewards, "correct": rewards["accuracy"] == 1.0})
    return out


def overall_reward(rewards: dict[str, float | None], weights: dict[str, float]) -> float | None:
    """Sum of weight x reward over the rewards that apply; None when none of them does (TRL's nansum).

    >>> overall_reward({"accuracy": None, "format": 1.0}, {"accuracy": 0.9, "format": 0.1})
    0.1
    """
    present = [(w, rewards[name]) for name, w in weights.items() if rewards.get(name) is not None]
    if not present:
        return None
    return sum(w * r for w, r in present)
