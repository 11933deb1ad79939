"""Arrow schemas of the store's tables, versioned, and the check every writer runs.

A table's schema carries its name and version in the metadata of each Parquet file, so a reader
can tell which layout a file was written with.
"""

from schemas.tables import (
    DIFFICULTY_COLUMNS,
    REJECTS,
    ROLLOUTS,
    RUNS,
    SAMPLES,
    SCHEMA_VERSION,
    TABLES,
    SchemaError,
    conform,
)

__all__ = [
    "DIFFICULTY_COLUMNS",
    "REJECTS",
    "ROLLOUTS",
    "RUNS",
    "SAMPLES",
    "SCHEMA_VERSION",
    "TABLES",
    "SchemaError",
    "conform",
]
