"""The docstring examples outside rewards/ run and hold (rewards/ has its own)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["schemas.tables", "rewards.prompt", "curate.engines", "curate.engines.base", "curate.engines.prompting",
           "curate.engines.hf", "curate.score", "curate.select", "train.config", "train.grpo"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
