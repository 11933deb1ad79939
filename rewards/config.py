"""The numbers behind the rewards, in one typed object.

Curation and training both build their graders from a ``RewardConfig``, so a sample's band is
measured with the same thresholds and weights that later shape its GRPO signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _perception_weights() -> dict[str, float]:
    return {"clip": 0.4, "keyword": 0.4, "format": 0.1, "length": 0.1, "accuracy": 0.0}


def _reasoning_weights() -> dict[str, float]:
    return {"accuracy": 0.9, "format": 0.1}


def _sampling_weights() -> dict[str, float]:
    return {"accuracy": 1.0}


@dataclass
class RewardConfig:
    """Thresholds, weights and the alignment model of the paper's rewards (its values are the defaults)."""

    length_limit: int = 512
    """Longest response (in tokens) that still gets the full length reward; longer ones get limit / length."""
    clip_threshold: float = 0.4
    """Cosine similarity at which the description counts as fully aligned with the image (reward 1.0)."""
    clip_image_size: int = 336
    """Side (pixels) of the square RGB image handed to the alignment model's processor."""
    clip_text_max_tokens: int = 248
    """Longest description (in tokens) the alignment model reads; cut to the model's own limit when smaller."""
    clip_model_path: str | None = None
    """Local directory of a CLIP-family model (FG-CLIP large in the paper); None disables the clip reward."""
    allow_remote_code: bool = False
    """Let transformers run the model directory's own code (FG-CLIP needs it); off unless the user trusts it."""
    clip_batch_size: int = 32
    """Image/description pairs per forward pass of the alignment model."""
    clip_device: str | None = None
    """Torch device of the alignment model; None picks cuda when available, else cpu."""
    accuracy_grader: str = "mathruler"
    """Answer checker: ``mathruler`` (the reference) or ``math_verify`` (needs the math-verify package)."""
    sampling_weights: dict[str, float] = field(default_factory=_sampling_weights)
    """Reward weights when grading rollouts for difficulty sampling (accuracy only)."""
    perception_weights: dict[str, float] = field(default_factory=_perception_weights)
    """Stage 1 weights; accuracy is computed and logged but weighs 0."""
    reasoning_weights: dict[str, float] = field(default_factory=_reasoning_weights)
    """Stage 2 weights."""

    def weights(self, stage: str) -> dict[str, float]:
        """The configured weights of ``stage`` (``sampling``, ``perception`` or ``reasoning``)."""
        table = {
            "sampling": self.sampling_weights,
            "perception": self.perception_weights,
            "reasoning": self.reasoning_weights,
        }
        if stage not in table:
            raise ValueError(f"unknown reward stage {stage!r}; expected one of {sorted(table)}")
        return dict(table[stage])
