"""The docstring examples outside rewards/ run and hold (rewards/ has its own)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["schemas.tables", "generation.prompt", "generation", "generation.base", "generation.tokens",
           "generation.hf", "curate.score", "curate.steps", "curate.views", "schemas.config", "schemas.io", "train.grpo",
           "curate.synth", "pipelines.compare"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
