"""Shared base of the toolkit: the store's versioned Arrow schemas (`schemas.tables`), the user-facing
error type (`schemas.errors`) and the command-line conventions (`schemas.cli`).

A table's schema carries its name and version in the metadata of each Parquet file, so a reader
can tell which layout a file was written with. Names are loaded lazily so that importing the CLI
helpers does not import pyarrow.
"""

from __future__ import annotations

import importlib

_TABLE_NAMES = {"DIFFICULTY_COLUMNS", "REJECTS", "ROLLOUTS", "RUNS", "SAMPLES", "TABLES", "SchemaError", "conform"}

SCHEMA_VERSION = 1
"""Version of the table layouts, kept in each Parquet file's metadata (`pebr.schema_version`); bumped
whenever a column is added, removed or changes type."""

TABLE_NAMES = ("samples", "rejects", "rollouts", "runs")
"""The store's tables (`schemas.tables.TABLES` has their Arrow schemas)."""

RUN_COLUMNS = ("run_id", "kind", "created_at", "model", "engine", "sampling", "grader_version", "config", "parent_run",
               "command", "code_version")
"""Columns of `runs`, in order (`schemas.tables.RUNS`): created_at is a UTC timestamp, the rest strings."""

REWARD_COMPONENTS = ("accuracy", "format", "keyword", "length", "clip")
"""The paper's reward components (`rewards` has one function per name)."""

REWARD_COLUMNS = (*REWARD_COMPONENTS, "overall")
"""One float column per reward component in `rollouts`, plus the weighted `overall` (and a mean and
std of each in `difficulty`)."""

REWARD_STAGES = ("sampling", "perception", "reasoning")
"""What a reward configuration weighs for: grading curation rollouts, GRPO stage 1, GRPO stage 2."""

BANDS = ("easy", "medium", "hard")
"""Difficulty bands: easy k = n, medium 0 < k < n, hard k = 0 (thresholds settable)."""

STAGE_BANDS = {"perception": "easy", "reasoning": "medium", "warmup": "hard"}
"""The paper's dataset-level sampling: which band feeds which training stage."""

TRAIN_STAGES = ("warmup", "perception", "reasoning")
"""Training stages, in the order the method runs them."""

GRPO_STAGES = ("perception", "reasoning")
"""The two GRPO stages: perception first, then reasoning."""

CAPABILITIES = ("perception_coarse", "perception_fine", "reasoning")
"""Capabilities a sample can train."""

STAGE_SHARDS = "train-*-of-*.parquet"
"""Glob of a stage dataset's Parquet shards (`curate select` writes them, `train run` reads them)."""

__all__ = sorted(_TABLE_NAMES | {"BANDS", "CAPABILITIES", "GRPO_STAGES", "REWARD_COLUMNS", "REWARD_COMPONENTS",
                                 "REWARD_STAGES", "RUN_COLUMNS", "SCHEMA_VERSION", "STAGE_BANDS", "STAGE_SHARDS",
                                 "TABLE_NAMES", "TRAIN_STAGES"})


def __getattr__(name: str):
    if name in _TABLE_NAMES:
        return getattr(importlib.import_module("schemas.tables"), name)
    raise AttributeError(f"module 'schemas' has no attribute {name!r}")
