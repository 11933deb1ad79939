"""The paper's rewards, shared by curation (grading rollouts) and training (TRL reward functions).

Importing this package loads neither torch nor transformers; the clip reward imports them on its
first call.
"""

from rewards.clip import ClipReward, extract_caption, load_image, similarity_to_reward
from rewards.config import RewardConfig
from rewards.stages import (
    COMPONENTS,
    STAGES,
    BoundReward,
    grade,
    overall_reward,
    renormalisation_note,
    reward_function,
    stage_reward_functions,
    stage_weights,
)
from rewards.text import (
    GRADER_VERSION,
    accuracy_reward,
    completion_text,
    count_tokens,
    extract_answer,
    format_reward,
    grade_answer,
    grader_version,
    keyword_reward,
    length_reward,
    normalise,
)


__all__ = [
    "COMPONENTS",
    "GRADER_VERSION",
    "STAGES",
    "BoundReward",
    "ClipReward",
    "RewardConfig",
    "accuracy_reward",
    "completion_text",
    "count_tokens",
    "extract_answer",
    "extract_caption",
    "format_reward",
    "grade",
    "grade_answer",
    "grader_version",
    "keyword_reward",
    "length_reward",
    "load_image",
    "normalise",
    "overall_reward",
    "renormalisation_note",
    "reward_function",
    "similarity_to_reward",
    "stage_reward_functions",
    "stage_weights",
]
