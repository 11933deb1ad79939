"""Shared base of the toolkit: the store's versioned Arrow schemas (`schemas.tables`), the user-facing
error type (`schemas.errors`) and the command-line conventions (`schemas.cli`).

A table's schema carries its name and version in the metadata of each Parquet file, so a reader
can tell which layout a file was written with. Names are loaded lazily so that importing the CLI
helpers does not import pyarrow.
"""

from __future__ import annotations

import importlib

_TABLE_NAMES = {"DIFFICULTY_COLUMNS", "REJECTS", "REWARD_COLUMNS", "ROLLOUTS", "RUNS", "SAMPLES", "SCHEMA_VERSION",
                "TABLES", "SchemaError", "conform"}

__all__ = sorted(_TABLE_NAMES)


def __getattr__(name: str):
    if name in _TABLE_NAMES:
        return getattr(importlib.import_module("schemas.tables"), name)
    raise AttributeError(f"module 'schemas' has no attribute {name!r}")
