"""The docstring examples of the rewards package run and hold."""

from __future__ import annotations

import doctest

import pytest

import rewards.clip
import rewards.config
import rewards.stages
import rewards.text


@pytest.mark.parametrize("module", [rewards.text, rewards.stages, rewards.clip, rewards.config])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if module is not rewards.config:
        assert result.attempted > 0


def test_trl_reads_our_names():
    trl_utils = pytest.importorskip("trl.trainer.utils")
    from rewards import RewardConfig, stage_reward_functions

    funcs, _ = stage_reward_functions("perception", RewardConfig(clip_model_path="unused"))
    assert [trl_utils.get_callable_name(f) for f in funcs] == ["clip", "keyword", "format", "length", "accuracy"]
    assert not any(trl_utils.is_async_callable(f) for f in funcs)
