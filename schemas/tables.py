"""One Arrow schema per table of the store (see DESIGN.md), and `conform`, which writers call."""

from __future__ import annotations

import pyarrow as pa

from schemas import REWARD_COLUMNS, SCHEMA_VERSION


def _schema(name: str, fields: list[pa.Field]) -> pa.Schema:
    return pa.schema(fields, metadata={"pebr.table": name, "pebr.schema_version": str(SCHEMA_VERSION)})


SAMPLES = _schema(
    "samples",
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("capability", pa.string()),
        pa.field("qid", pa.string(), nullable=False),
        pa.field("problem", pa.string(), nullable=False),
        pa.field("answer", pa.string(), nullable=False),
        pa.field("key_words", pa.list_(pa.string()), nullable=False),
        # Paths relative to the store root (content-addressed copies under images/).
        pa.field("images", pa.list_(pa.string()), nullable=False),
        pa.field("extra", pa.string()),  # JSON object of the record's other fields
        pa.field("ingest_run", pa.string(), nullable=False),
        pa.field("ingest_file", pa.string(), nullable=False),
        pa.field("record_index", pa.int64(), nullable=False),
    ],
)

REJECTS = _schema(
    "rejects",
    [
        pa.field("ingest_run", pa.string(), nullable=False),
        pa.field("source_file", pa.string(), nullable=False),
        pa.field("record_index", pa.int64(), nullable=False),
        pa.field("qid", pa.string()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("message", pa.string(), nullable=False),
        pa.field("raw", pa.string()),  # the record as read, when it could be read
    ],
)

ROLLOUTS = _schema(
    "rollouts",
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("sample_id", pa.string()),  # null when an imported rollout's qid matched no sample
        pa.field("qid", pa.string()),
        pa.field("rollout_idx", pa.int32(), nullable=False),
        pa.field("seed", pa.int64()),
        pa.field("response", pa.string(), nullable=False),
        pa.field("n_tokens", pa.int32()),
        pa.field("finish_reason", pa.string()),
        *[pa.field(c, pa.float32()) for c in REWARD_COLUMNS],
        pa.field("correct", pa.bool_(), nullable=False),
        pa.field("truncated", pa.bool_()),  # an imported response the dump cut short (first...last); null: whole
    ],
)

RUNS = _schema(
    "runs",
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # ingest | score | import | regrade
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("model", pa.string()),
        pa.field("engine", pa.string()),
        pa.field("sampling", pa.string()),  # JSON: n, temperature, top_p, max_new_tokens, seed, ...
        pa.field("grader_version", pa.string()),
        pa.field("config", pa.string()),  # JSON: everything else the command was given
        pa.field("parent_run", pa.string()),
        pa.field("command", pa.string()),
        pa.field("code_version", pa.string()),
    ],
)

TABLES: dict[str, pa.Schema] = {"samples": SAMPLES, "rejects": REJECTS, "rollouts": ROLLOUTS, "runs": RUNS}

DIFFICULTY_COLUMNS: dict[str, str] = {
    "run_id": "VARCHAR",
    "sample_id": "VARCHAR",
    "n": "BIGINT",
    "k": "BIGINT",
    "pass_rate": "DOUBLE",
    "band": "VARCHAR",
    "ci_low": "DOUBLE",
    "ci_high": "DOUBLE",
    **{f"{stat}_{c}": "DOUBLE" for c in REWARD_COLUMNS for stat in ("mean", "std")},
    "mean_tokens": "DOUBLE",
    "p_degenerate": "DOUBLE",
}
"""Columns of the `difficulty` view, with their DuckDB types (a view, so no Arrow schema)."""


class SchemaError(ValueError):
    """A table handed to a writer does not fit its schema."""


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return `table` with exactly the schema's columns, order and types, or raise SchemaError.

    Missing nullable columns are filled with nulls; a missing required column, an extra column, a
    null in a required column or a type that cannot be cast safely is an error.

    >>> t = conform(pa.table({"run_id": ["r"], "kind": ["score"],
    ...     "created_at": pa.array([0], pa.timestamp("us", tz="UTC"))}), RUNS)
    >>> t.schema.names[:3], t.column("model").null_count
    (['run_id', 'kind', 'created_at'], 1)
    """
    name = (schema.metadata or {}).get(b"pebr.table", b"?").decode()
    extra = set(table.schema.names) - set(schema.names)
    if extra:
        raise SchemaError(f"{name}: unknown columns {sorted(extra)}")
    columns = []
    for field in schema:
        if field.name not in table.schema.names:
            if not field.nullable:
                raise SchemaError(f"{name}: required column {field.name!r} is missing")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        try:
            col = col.cast(field.type, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(f"{name}.{field.name}: cannot store {col.type} as {field.type}: {exc}") from None
        if not field.nullable and col.null_count:
            raise SchemaError(f"{name}.{field.name}: {col.null_count} null value(s) in a required column")
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=schema)
