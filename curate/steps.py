"""Selection as a list of small steps (datatrove's way): each narrows one relation and says what it dropped.

A step is a name, the rule it applies (for the manifest) and a function from the SQL of its input
relation to the SQL of the rows it keeps; `run_steps` materialises each step's rows, records every
dropped sample with the step's reason in the `select_drops` table, and counts what is left. The
input of the first step is the run's difficulty rows (one per sample, with the seeded `rank_key`).

Steps see the columns of `STEP_COLUMNS`; a step that needs the samples' own columns (``--where``,
``--dedup``) joins them in its own query, so the others never read the samples.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from curate.store import sql_literal
from schemas import CAPABILITIES, REWARD_COLUMNS
from schemas.errors import PebrError

if TYPE_CHECKING:
    from curate.store import Store

PERCEPTION_CAPS = CAPABILITIES[:2]
"""The two perception capabilities `--coarse-fine-mix` balances."""

STEP_COLUMNS = ("sample_id", "source", "capability", "n", "k", "pass_rate", "band", "p_degenerate",
                *(f"std_{c}" for c in REWARD_COLUMNS), "rank_key")
"""Columns every step reads and keeps (the export and the manifest need no others)."""

DROPS_TABLE = "select_drops"
"""The table of dropped samples: sample_id, step, reason (source, capability and band are a join away,
in the samples and the difficulty rows)."""


@dataclass
class Step:
    """One selection step: `keep(relation)` is the SQL of the rows of `relation` it keeps."""

    name: str
    """Short name: band, source, capability, where, dedup, coarse_fine_mix, quota, cap."""
    rule: str
    """What it keeps, in words, for the manifest."""
    keep: Callable[[str], str]
    """SQL over the input relation (a table name) selecting the kept rows, with STEP_COLUMNS."""
    reason: str
    """Reason code recorded for each sample it drops."""
    drops: Callable[[str, str], str] | None = None
    """SQL of the dropped rows (sample_id, reason) given the input and kept relations; default: the
    input rows not kept (an anti join), with `reason`."""


def _columns(prefix: str = "") -> str:
    return ", ".join(f"{prefix}{c}" for c in STEP_COLUMNS)


def _in_list(values: list[str]) -> str:
    return "(" + ", ".join(sql_literal(v) for v in values) + ")"


def band_step(band: str, rule: str) -> Step:
    """Keep the samples of `band` (the relation's `band` column is computed with the stage's thresholds)."""
    return Step("band", f"band {band} ({rule})", lambda rel: f"SELECT {_columns()} FROM {rel} WHERE band = {sql_literal(band)}",
                reason="band_<band>",
                # Whatever is not of the band is dropped, with its own band as the reason: no join needed.
                drops=lambda rel, kept: f"SELECT sample_id, 'band_' || band AS reason FROM {rel} "
                                        f"WHERE band <> {sql_literal(band)}")


def source_step(sources: list[str]) -> Step:
    return Step("source", f"sources {sorted(sources)}",
                lambda rel: f"SELECT {_columns()} FROM {rel} WHERE source IN {_in_list(sources)}", reason="source_not_selected")


def capability_step(capabilities: list[str]) -> Step:
    return Step("capability", f"capabilities {sorted(capabilities)}",
                lambda rel: f"SELECT {_columns()} FROM {rel} WHERE capability IN {_in_list(capabilities)}",
                reason="capability_not_selected")


def _full_rows(rel: str, difficulty: str, samples: str) -> str:
    """The step relation's rows with every column of the difficulty rows and of the samples (the
    names do not collide, so a condition needs no table alias)."""
    return (f"(SELECT d.*, s.* EXCLUDE (sample_id, source, capability), r.rank_key FROM {rel} r "
            f"JOIN {difficulty} d USING (sample_id) JOIN {samples} s USING (sample_id))")


def check_condition(condition: str) -> str:
    """`condition` when it is one SQL boolean expression, else a PebrError.

    It is parsed as a single expression, and the query it is pasted into (`SELECT 1 WHERE (...)`)
    must parse to exactly that query's shape: a condition that closes its parenthesis to add a
    UNION, an ORDER BY, a GROUP BY or another statement is refused. (It still runs where it can
    only read the store's views: `where_step`.)

    >>> check_condition("n >= 8 AND source <> 'geoqa' -- a comment")
    "n >= 8 AND source <> 'geoqa' -- a comment"
    >>> check_condition("1=1) UNION ALL SELECT * FROM samples WHERE (1=1")
    Traceback (most recent call last):
    schemas.errors.PebrError: --where must be a single SQL condition: Parser Error: syntax error at or near ")"
    """
    import duckdb

    def shape(con, sql: str) -> dict:
        """The parse tree of a one-statement SELECT, without its WHERE clause."""
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0])
        if tree.get("error") or len(tree["statements"]) != 1:
            raise PebrError(f"--where must be a single SQL condition: {tree.get('error_message', 'several statements')}")
        node = tree["statements"][0]["node"]
        node.pop("where_clause", None)
        return node

    try:
        duckdb.SQLExpression(condition)  # exactly one expression, or an error
        wrapped = f"SELECT 1 WHERE (\n{condition}\n)"  # own lines: a trailing -- comment ends before the ")"
        statements = duckdb.extract_statements(wrapped)
    except duckdb.Error as exc:
        raise PebrError(f"--where must be a single SQL condition: {str(exc).splitlines()[0]}") from None
    if len(statements) != 1 or statements[0].type.name != "SELECT":
        raise PebrError("--where must be a single SQL condition (it adds statements)")
    with duckdb.connect() as con:
        if shape(con, wrapped) != shape(con, "SELECT 1 WHERE (\nTRUE\n)"):
            raise PebrError("--where must be a single SQL condition (it adds clauses to the query around it)")
    return condition


def where_step(condition: str, difficulty: str, con, store: Store) -> Step:
    """Keep the rows where the user's SQL condition holds; it sees every column of samples and difficulty.

    The condition is user SQL, so it is checked to be one expression (`check_condition`) and runs on
    a locked reader connection (`curate.sql.reader`), where a subquery sees the store's views and
    nothing else: the step's rows (with their difficulty columns, from `con`) go there as Arrow, and
    the sample_ids it keeps come back. The samples it joins are that connection's view, over the
    committed parts the selection reads too."""
    condition = check_condition(condition)

    def keep(rel: str) -> str:
        from curate.sql import interruptible, reader

        rows = con.sql(f"SELECT d.*, r.rank_key FROM {rel} r JOIN {difficulty} d USING (sample_id)").to_arrow_table()
        with reader(store) as locked:
            locked.register("pebr_where_rows", rows)
            # The columns of _full_rows, in its order.
            query = (f"SELECT sample_id FROM (SELECT d.* EXCLUDE (rank_key), s.* EXCLUDE (sample_id, source, capability), "
                     f"d.rank_key FROM pebr_where_rows d JOIN samples s USING (sample_id)) WHERE (\n{condition}\n)")
            kept = interruptible(locked, lambda: locked.sql(query).to_arrow_table())
        name = f"pebr_where_kept_{rel}"
        con.register(name, kept)
        return f"SELECT {_columns()} FROM {rel} WHERE sample_id IN (SELECT sample_id FROM {name})"

    return Step("where", f"where {condition}", keep, reason="where_false")


def dedup_step(difficulty: str, samples: str) -> Step:
    """One sample per identical problem text and image content (images are content-addressed: same path, same bytes)."""
    key = "md5(problem || chr(0) || array_to_string(images, chr(1)))"
    return Step("dedup", "one sample per problem + images",
                lambda rel: f"SELECT {_columns()} FROM {_full_rows(rel, difficulty, samples)} "
                            f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY rank_key) = 1",
                reason="duplicate")


def response_step(phrases: list[str], difficulty: str, samples: str) -> Step:
    """Drop samples whose gold response contains any of `phrases` (case-insensitive): the reference
    leaves reflection turns ("Let me rethink it") out of its warm-up SFT data."""
    from curate.export import gold_response_sql

    gold = f"lower({gold_response_sql('extra')})"
    hit = " OR ".join(f"contains({gold}, {sql_literal(p.lower())})" for p in phrases)
    return Step("response", f"gold responses without {sorted(phrases)}",
                lambda rel: f"SELECT {_columns()} FROM {_full_rows(rel, difficulty, samples)} WHERE NOT coalesce({hit}, false)",
                reason="response_excluded")


def mix_targets(coarse: int, fine: int, mix: float) -> tuple[int, int]:
    """Largest (coarse, fine) counts available with coarse / (coarse + fine) as close to `mix`.

    >>> mix_targets(100, 30, 0.5), mix_targets(10, 30, 0.5), mix_targets(10, 30, 1.0)
    ((30, 30), (10, 10), (10, 0))
    """
    if mix >= 1.0:
        return coarse, 0
    if mix <= 0.0:
        return 0, fine
    total = min(coarse / mix, fine / (1.0 - mix))
    return min(coarse, math.floor(total * mix + 0.5)), min(fine, math.floor(total * (1.0 - mix) + 0.5))


def mix_step(mix: float, con) -> Step:
    """Subsample the larger perception side (seeded) so perception_coarse is `mix` of the perception rows."""
    coarse, fine = PERCEPTION_CAPS

    def keep(rel: str) -> str:
        counts = dict(con.execute(f"SELECT capability, count(*) FROM {rel} WHERE capability IN {_in_list(list(PERCEPTION_CAPS))} "
                                  "GROUP BY 1").fetchall())
        c, f = mix_targets(counts.get(coarse, 0), counts.get(fine, 0), mix)
        return (f"SELECT {_columns()} FROM {rel} QUALIFY capability IS NULL OR capability NOT IN {_in_list(list(PERCEPTION_CAPS))} "
                f"OR row_number() OVER (PARTITION BY capability ORDER BY rank_key) <= "
                f"CASE capability WHEN {sql_literal(coarse)} THEN {c} ELSE {f} END")

    return Step("coarse_fine_mix", f"perception_coarse fraction {mix:g}", keep, reason="coarse_fine_mix")


def quota_step(quota: dict[str, int]) -> Step:
    """At most quota[source] samples of each named source (seeded choice); other sources unlimited."""
    values = ", ".join(f"({sql_literal(s)}, {int(q)})" for s, q in sorted(quota.items()))

    def keep(rel: str) -> str:
        return (f"SELECT {_columns('r.')} FROM {rel} r LEFT JOIN (VALUES {values}) q(source, quota) USING (source) "
                "QUALIFY q.quota IS NULL OR row_number() OVER (PARTITION BY r.source ORDER BY r.rank_key) <= q.quota")

    return Step("quota", f"per-source quota {dict(sorted(quota.items()))}", keep, reason="over_quota")


def cap_step(cap: int) -> Step:
    return Step("cap", f"cap {cap}", lambda rel: f"SELECT {_columns()} FROM {rel} ORDER BY rank_key LIMIT {int(cap)}",
                reason="over_cap")


@dataclass
class StepCount:
    """What one step did."""

    step: str
    rule: str
    kept: int
    dropped: int
    by_reason: dict[str, int]


def run_steps(con, source: str, steps: list[Step]) -> tuple[str, list[StepCount]]:
    """Run `steps` in order from the relation `source` (STEP_COLUMNS); returns the name of the last
    relation and each step's counts. The view `select_drops` holds every dropped sample with its
    step and reason. The step relations are tables of the connection's in-memory database (not TEMP
    tables), so the export's cursors see them."""
    import duckdb

    counts: list[StepCount] = []
    drops: list[str] = []
    current = source
    for i, step in enumerate(steps):
        name = f"step_{i}_{step.name}"
        try:
            con.execute(f"CREATE OR REPLACE TABLE {name} AS {step.keep(current)}")
        except duckdb.Error as exc:
            raise PebrError(f"selection step {step.name} ({step.rule}) failed: {str(exc).splitlines()[0]}") from None
        dropped = (step.drops(current, name) if step.drops else
                   f"SELECT d.sample_id, {sql_literal(step.reason)} AS reason FROM {current} d ANTI JOIN {name} k USING (sample_id)")
        drops.append(f"SELECT sample_id, {sql_literal(step.name)} AS step, reason FROM ({dropped})")
        by_reason = dict(con.execute(f"SELECT reason, count(*) FROM ({dropped}) GROUP BY 1 ORDER BY 1").fetchall())
        kept = con.execute(f"SELECT count(*) FROM {name}").fetchall()[0][0]
        counts.append(StepCount(step.name, step.rule, kept, sum(by_reason.values()), by_reason))
        current = name
    con.execute(f"CREATE OR REPLACE VIEW {DROPS_TABLE} AS {' UNION ALL '.join(drops)}")
    return current, counts
