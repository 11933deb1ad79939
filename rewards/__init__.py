"""The paper's rewards, shared by curation (grading rollouts) and training (TRL reward functions).

Importing this package loads neither torch nor transformers; the clip reward imports them on its
first call. Its names are loaded on first use.
"""

import importlib

_WHERE = {
    "rewards.clip": ("ClipReward", "extract_caption", "load_image", "similarity_to_reward"),
    "rewards.config": ("RewardConfig",),
    "rewards.stages": ("COMPONENTS", "STAGES", "BoundReward", "grade", "overall_reward", "renormalisation_note",
                       "reward_function", "stage_reward_functions", "stage_weights"),
    "rewards.text": ("GRADER_VERSION", "accuracy_reward", "completion_text", "count_tokens", "extract_answer",
                     "format_reward", "grade_answer", "grader_version", "keyword_reward", "length_reward", "normalise"),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}


def __getattr__(name: str):
    # Loaded on first use: importing one reward does not import the others (clip pulls in torch).
    if name in _MODULE:
        return getattr(importlib.import_module(_MODULE[name]), name)
    raise AttributeError(f"module 'rewards' has no attribute {name!r}")


__all__ = sorted(_MODULE)
