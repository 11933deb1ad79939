"""`curate select`: the paper's dataset-level sampling, as a reproducible stage dataset.

perception <- easy, reasoning <- medium, warmup <- hard; by default every sample of the band, as
the reference does. Options narrow the band (sources, capabilities, SQL), balance it (coarse/fine
mix, per-source quotas, a cap, dedup) with a seeded order, and the manifest records what was done.
The selection is a list of steps (`curate.steps`), each recording the samples it drops with a
reason (`select_drops.parquet` next to the stage files; counts per step in the manifest); the
writer (`curate.export`) turns what is left into the stage files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from curate.difficulty import (
    DEFAULT_GROUP_SIZE,
    STAGE_BANDS,
    difficulty_query,
    load_difficulty,
    resolve_run,
)
from curate.export import (
    IMAGE_MODES,
    llamafactory_dataset_info,
    record_rows,
    sha256_file,
    shard_name,
    write_json_records,
    write_shards,
)
from curate.steps import (
    DROPS_TABLE,
    STEP_COLUMNS,
    Step,
    StepCount,
    band_step,
    cap_step,
    capability_step,
    dedup_step,
    mix_step,
    mix_targets,
    quota_step,
    response_step,
    run_steps,
    source_step,
    where_step,
)
from curate.store import Store, code_version, sql_literal
from generation.prompt import PROMPT_TEMPLATE, check_template
from schemas import REWARD_COLUMNS, STAGE_SHARDS
from schemas.errors import PebrError
from schemas.io import atomic_write

FORMATS = ("parquet", "easyr1", "sharegpt")
MANIFEST_NAME = "manifest.json"
FORMAT_PROMPT_FILE = "format_prompt.jinja"
DROPS_FILE = "select_drops.parquet"
"""Every sample of the run the selection left out: sample_id, step, reason."""
SHARD_ROWS = 65_536
"""Most rows per Parquet shard of a stage dataset (--shard-rows)."""

__all__ = ["DROPS_FILE", "FORMATS", "MANIFEST_NAME", "SHARD_ROWS", "SelectOptions", "SelectReport", "mix_targets",
           "select_options", "select_stage", "selection_steps", "shard_name"]


@dataclass
class SelectOptions:
    """What `curate select` was asked to do. Defaults reproduce the paper's split."""

    stage: str
    """perception (easy band) | reasoning (medium band) | warmup (hard band)."""
    out: Path
    """Output folder; gets the train-*-of-*.parquet shards, manifest.json and the --format extras."""
    run: str | None = None
    """Run whose rollouts define difficulty (default: the latest score/import/regrade run with rollouts)."""
    sources: list[str] | None = None
    """Keep only these sources (default: all)."""
    capabilities: list[str] | None = None
    """Keep only these capabilities (perception_coarse, perception_fine, reasoning; default: all)."""
    coarse_fine_mix: float | None = None
    """Fraction of perception_coarse among the perception_* samples kept; the larger side is
    subsampled (seeded) to reach it. Samples of other capabilities are not affected. None: keep all."""
    quota: dict[str, int] = field(default_factory=dict)
    """Most samples to keep per source (seeded choice); sources not named are unlimited."""
    cap: int | None = None
    """Most samples in the whole stage, applied last (seeded choice)."""
    seed: int = 0
    """Seed of the order: every random choice and the row order of the output derive from it."""
    dedup: bool = False
    """Keep one sample per identical problem text + image content (images are content-addressed)."""
    exclude_responses: list[str] = field(default_factory=list)
    """Warm-up only: leave out samples whose gold response contains one of these phrases
    (case-insensitive; the reference drops "Let me rethink it" reflections from its SFT data). The
    GRPO stages use no gold response, and ignore it."""
    where: str | None = None
    """Extra SQL condition over samples and difficulty columns, e.g. "n >= 8 AND source <> 'geoqa'"."""
    easy_min: float = 1.0
    """A sample is easy when k >= easy_min * n (paper: 1.0, all rollouts correct)."""
    hard_max: float = 0.0
    """A sample is hard when k <= hard_max * n (paper: 0.0, no rollout correct)."""
    group_size: int = DEFAULT_GROUP_SIZE
    """GRPO group size of the stage, for the predicted zero-advantage fraction."""
    images: str = "path"
    """How the Parquet shards hold images: path (absolute paths into the store's content-addressed image
    folder; nothing copied) | embed (the bytes, for a self-contained file to move elsewhere)."""
    format: str = "parquet"
    """parquet (always written) | easyr1 (+ reference JSON and images) | sharegpt (+ LLaMA-Factory SFT JSON)."""
    template: str = PROMPT_TEMPLATE
    """The format prompt (a Jinja template over ``content``, EasyR1's `data.format_prompt`) of the chat
    `prompt` column and the ShareGPT text; the EasyR1 export carries it as `easyr1/format_prompt.jinja`."""
    shard_rows: int = SHARD_ROWS
    """Most rows per Parquet shard. The rows, in seeded order, are split evenly into
    ceil(rows / shard_rows) shards, written in parallel (one DuckDB pipeline per core); the files
    depend only on the selection, not on the machine."""
    force: bool = False
    """Replace an existing stage dataset in `out`."""


def select_options(stage: str, out: str | Path, values: dict) -> SelectOptions:
    """SelectOptions from one mapping (a recipe's `select` section merged with the command line);
    `format_prompt` names a template file (its text becomes `template`). Unknown keys and wrong types
    are one clear error."""
    from generation.prompt import load_format_prompt
    from schemas.config import build

    values = dict(values)
    if values.get("format_prompt") is not None:
        values["template"] = load_format_prompt(values.pop("format_prompt"))
    values.pop("format_prompt", None)
    return build(SelectOptions, {"stage": stage, "out": Path(out), **values}, "select")


@dataclass
class SelectReport:
    """What a selection produced."""

    out: Path
    stage: str
    band: str
    run_id: str
    rows: int
    band_total: int
    """Samples of the band in the run before any option narrowed them."""
    by_source: dict[str, int]
    by_capability: dict[str, int]
    zero_advantage: dict
    files: dict[str, str]
    """File name (relative to out) -> sha256."""
    steps: dict[str, int] = field(default_factory=dict)
    """Rows left after each selection step, in order."""
    step_counts: list[StepCount] = field(default_factory=list)
    """What each step kept and dropped, by reason (the rows are in select_drops.parquet)."""
    rule: str = ""
    """The selection in words: the band's rule, each step's, and the order."""
    manifest: Path | None = None
    skipped_no_response: int = 0


def _check(opts: SelectOptions) -> str:
    if opts.stage not in STAGE_BANDS:
        raise PebrError(f"unknown stage {opts.stage!r}; choose one of {', '.join(STAGE_BANDS)}")
    if opts.images not in IMAGE_MODES:
        raise PebrError(f"unknown images mode {opts.images!r}; choose one of {', '.join(IMAGE_MODES)}")
    if opts.format not in FORMATS:
        raise PebrError(f"unknown format {opts.format!r}; choose one of {', '.join(FORMATS)}")
    if opts.coarse_fine_mix is not None and not 0.0 <= opts.coarse_fine_mix <= 1.0:
        raise PebrError(f"coarse_fine_mix must be within [0, 1] (got {opts.coarse_fine_mix})")
    if opts.cap is not None and opts.cap < 0:
        raise PebrError(f"cap must be >= 0 (got {opts.cap})")
    if opts.shard_rows < 1:
        raise PebrError(f"shard_rows must be >= 1 (got {opts.shard_rows})")
    for src, q in opts.quota.items():
        if q < 0:
            raise PebrError(f"quota for {src!r} must be >= 0 (got {q})")
    try:
        check_template(opts.template)
    except ValueError as exc:
        raise PebrError(str(exc)) from None
    if opts.where is not None:
        import duckdb

        try:
            statements = duckdb.extract_statements(f"SELECT 1 WHERE ({opts.where})")
        except duckdb.Error as exc:
            raise PebrError(f"--where does not parse: {str(exc).splitlines()[0]}") from None
        if len(statements) != 1:
            raise PebrError("--where must be a single SQL condition")
    return STAGE_BANDS[opts.stage]


def _perception_zero_std(con, run_id: str, picked: str) -> float | None:
    """Share of picked samples whose sampling rollouts all got the same stage-1 reward (without clip).

    None when the run did not grade the perception components (imported dumps carry accuracy only).
    """
    from rewards import RewardConfig, stage_weights

    weights = {k: w for k, w in stage_weights("perception", RewardConfig()).items() if w}
    graded_any = " AND ".join(f"std_{name} IS NOT NULL" for name in weights)
    if not con.execute(f"SELECT count(*) FROM {picked} WHERE {graded_any}").fetchall()[0][0]:
        return None  # the difficulty rows say so without a pass over the rollouts
    expr = " + ".join(f"{w!r} * coalesce(r.{name}, 0)" for name, w in weights.items())
    graded = " AND ".join(f"count(r.{name}) > 0" for name in weights)
    row = con.execute(
        f"SELECT avg(CASE WHEN spread < 1e-9 THEN 1.0 ELSE 0.0 END) FROM ("
        f"  SELECT max({expr}) - min({expr}) AS spread FROM rollouts r JOIN {picked} p USING (sample_id)"
        f"  WHERE r.run_id = ? GROUP BY r.sample_id HAVING {graded})", [run_id]).fetchall()
    return row[0][0] if row else None


def _zero_advantage(con, group_size: int, stage: str, run_id: str, picked: str) -> dict:
    stds = ", ".join(
        f"avg(CASE WHEN std_{c} = 0 THEN 1.0 ELSE 0.0 END) FILTER (WHERE std_{c} IS NOT NULL) AS {c}" for c in REWARD_COLUMNS
    )
    row = con.execute(
        f"SELECT avg(p_degenerate), avg(pow(pass_rate, {group_size}) + pow(1 - pass_rate, {group_size})), {stds} "
        f"FROM {picked}"
    ).fetchall()[0]
    observed = {c: v for c, v in zip(REWARD_COLUMNS, row[2:]) if v is not None}
    note = ("accuracy_predicted: mean over the stage of P(all G accuracies equal) = E[p^G + (1-p)^G] under the "
            "Beta(k+1, n-k+1) posterior of each sample's pass rate; accuracy_point_estimate uses p = k/n. "
            "observed_zero_std: per reward the sampling run graded, the fraction of samples whose n rollouts "
            "all got the same value.")
    if stage == "perception":
        predicted = _perception_zero_std(con, run_id, picked)
        basis = ("perception reward (keyword, format, length; clip left out) of the sampling rollouts: share of "
                 "samples whose rollouts all scored the same; with an alignment model in training it is lower still")
        note += (" Stage 1 trains on the continuous perception reward (clip, keyword, format, length), so the "
                 "accuracy prediction is an upper bound there, not the fraction training will see.")
    else:
        predicted = row[0]
        basis = ("accuracy under the pass-rate posterior (an upper bound: the stage reward also varies with format)"
                 if stage == "reasoning" else "accuracy under the pass-rate posterior")
    return {"group_size": group_size, "predicted": predicted, "predicted_basis": basis, "accuracy_predicted": row[0],
            "accuracy_point_estimate": row[1], "observed_zero_std": observed, "note": note}


def band_rule(opts: SelectOptions, band: str) -> str:
    """The band's condition on k and n with the selection's thresholds."""
    return {"easy": f"k >= {opts.easy_min:g} * n", "medium": f"{opts.hard_max:g} * n < k < {opts.easy_min:g} * n",
            "hard": f"k <= {opts.hard_max:g} * n"}[band]


def selection_steps(con, opts: SelectOptions, band: str, difficulty: str, samples: str) -> list[Step]:
    """The steps the options ask for, in their fixed order: band -> source -> capability -> where ->
    dedup -> coarse/fine mix -> quota -> cap (the row order, by the seeded key, comes last)."""
    steps = [band_step(band, band_rule(opts, band))]
    if opts.sources:
        steps.append(source_step(opts.sources))
    if opts.capabilities:
        steps.append(capability_step(opts.capabilities))
    if opts.where:
        steps.append(where_step(opts.where, difficulty, samples))
    if opts.dedup:
        steps.append(dedup_step(difficulty, samples))
    if opts.exclude_responses and opts.stage == "warmup":
        steps.append(response_step(opts.exclude_responses, difficulty, samples))
    if opts.coarse_fine_mix is not None:
        steps.append(mix_step(opts.coarse_fine_mix, con))
    if opts.quota:
        steps.append(quota_step(opts.quota))
    if opts.cap is not None:
        steps.append(cap_step(opts.cap))
    return steps


def _rule(opts: SelectOptions, steps: list[Step]) -> str:
    parts = [f"stage {opts.stage} <- {steps[0].rule}", *(s.rule for s in steps[1:])]
    if len(steps) == 1:
        parts.append("every sample of the band")
    return "; ".join(parts) + f"; order md5_number('{opts.seed}:' || sample_id)"


def _dataset_files(out: Path) -> list[Path]:
    """The files of a stage dataset in `out`: manifest, drops, shards, and a single-file train.parquet."""
    return [p for p in (out / MANIFEST_NAME, out / DROPS_FILE, out / "train.parquet") if p.exists()] + sorted(out.glob(STAGE_SHARDS))


def _holds_dataset(out: Path) -> bool:
    return bool(_dataset_files(out))


def _prepare_out(out: Path) -> None:
    """Clear a stage dataset already in `out` (the caller checked --force), and create `out`."""
    for path in _dataset_files(out):
        path.unlink()
    for sub in ("easyr1", "sharegpt"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)


def select_stage(store: Store, opts: SelectOptions) -> SelectReport:
    """Select one stage's samples from the store and write them to `opts.out` (see SelectOptions)."""
    band = _check(opts)
    store.require()
    out = Path(opts.out).absolute()
    if not opts.force and _holds_dataset(out):
        raise PebrError(f"{out} already holds a stage dataset; pass --force to replace it")
    con = store.connect()
    try:
        run_id = resolve_run(con, opts.run)
        con.execute(f"CREATE VIEW stage_samples AS SELECT * FROM {store.committed_scan(con, 'samples')}")
        # The run's difficulty rows (cached: one per sample, not every rollout), with the stage's
        # thresholds and group size and each sample's seeded rank.
        diff = difficulty_query(run_id, easy_min=opts.easy_min, hard_max=opts.hard_max, group_size=opts.group_size,
                                relation=load_difficulty(store, con, run_id))
        # Views, not TEMP views: the cursors that write the files see them.
        con.execute(f"CREATE VIEW run_difficulty_rows AS {diff}")
        con.execute(f"CREATE VIEW run_rows AS SELECT {', '.join(c for c in STEP_COLUMNS if c != 'rank_key')}, "
                    f"md5_number({sql_literal(str(int(opts.seed)) + ':')} || sample_id) AS rank_key FROM run_difficulty_rows")
        steps = selection_steps(con, opts, band, "run_difficulty_rows", "stage_samples")
        picked, counts_by_step = run_steps(con, "run_rows", steps)
        # Everything the manifest needs from the store is read before the output folder is touched.
        counts = con.execute(f"SELECT source, capability, count(*) FROM {picked} GROUP BY ALL ORDER BY ALL").fetchall()
        by_source: dict[str, int] = {}
        by_cap: dict[str, int] = {}
        for src, cap, n in counts:
            by_source[src] = by_source.get(src, 0) + n
            by_cap[cap or "unknown"] = by_cap.get(cap or "unknown", 0) + n
        zero = _zero_advantage(con, opts.group_size, opts.stage, run_id, picked)
        cur = con.execute("SELECT * REPLACE (strftime(created_at, '%Y-%m-%dT%H:%M:%S%z') AS created_at) FROM runs WHERE run_id = ?", [run_id])
        run_row = dict(zip([c[0] for c in cur.description], cur.fetchall()[0]))
        _prepare_out(out)
        # One pipeline per shard, as many at once as DuckDB has threads (it counts the cores this
        # process may use); with embedded images, one: their bytes pass through Python in batches.
        workers = 1 if opts.images == "embed" else con.execute("SELECT current_setting('threads')").fetchall()[0][0]
        con.execute("SET threads = 1")
        # The drops file is written beside the shards, on its own cursor (a pipeline's single thread
        # leaves room: the drops cost about a tenth of the shards); removed if a shard fails.
        drops = ThreadPoolExecutor(1)
        drops_done = drops.submit(_write_drops, con, out / DROPS_FILE)
        try:
            rows, shards = write_shards(con, picked, "stage_samples", out, store.root, images=opts.images,
                                        template=opts.template, shard_rows=opts.shard_rows,
                                        rows=sum(n for *_, n in counts), workers=workers)
        except BaseException:
            drops.shutdown(wait=True)
            (out / DROPS_FILE).unlink(missing_ok=True)
            raise
        drops_done.result()
        drops.shutdown()
        con.execute("RESET threads")
        files = {name: sha256_file(out / name) for name in [*shards, DROPS_FILE]}
        skipped = 0
        if opts.format != "parquet":  # one query over the whole stage, on every thread
            name = f"{opts.format}/{'train' if opts.format == 'easyr1' else opts.stage}.json"
            (out / opts.format).mkdir(parents=True, exist_ok=True)
            _, skipped = write_json_records(record_rows(con, picked, "stage_samples"), out / name, opts.format, store.root,
                                            opts.template)
            files[name] = sha256_file(out / name)
            if opts.format == "easyr1":  # EasyR1 applies the format prompt itself (data.format_prompt)
                atomic_write(out / "easyr1" / FORMAT_PROMPT_FILE, opts.template)
                files[f"easyr1/{FORMAT_PROMPT_FILE}"] = sha256_file(out / "easyr1" / FORMAT_PROMPT_FILE)
            if opts.format == "sharegpt":
                info = out / "sharegpt" / "dataset_info.json"
                atomic_write(info, json.dumps(llamafactory_dataset_info(f"pebr_{opts.stage}", f"{opts.stage}.json"), indent=2) + "\n")
                files["sharegpt/dataset_info.json"] = sha256_file(info)
        schema = dict(con.execute("SELECT column_name, column_type FROM "
                                  f"(DESCRIBE SELECT * FROM read_parquet({sql_literal(out / shards[0])}))").fetchall())
    finally:
        con.close()
    report = SelectReport(out=out, stage=opts.stage, band=band, run_id=run_id, rows=rows,
                          band_total=counts_by_step[0].kept, by_source=by_source, by_capability=by_cap,
                          zero_advantage=zero, files=files, steps={c.step: c.kept for c in counts_by_step},
                          step_counts=counts_by_step, rule=_rule(opts, steps), skipped_no_response=skipped)
    report.manifest = _write_manifest(store, opts, report, run_row, schema)
    return report


def _write_drops(con, path: Path) -> None:
    cur = con.cursor()
    try:
        atomic_write(path, lambda tmp: cur.execute(f"COPY {DROPS_TABLE} TO {sql_literal(tmp)} (FORMAT parquet, COMPRESSION snappy)"))
    finally:
        cur.close()


def _maybe_json(value):
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _write_manifest(store: Store, opts: SelectOptions, r: SelectReport, run_row: dict, schema: dict) -> Path:
    options = asdict(opts)
    options["out"] = str(r.out)
    manifest = {
        "stage": r.stage,
        "band": r.band,
        "rule": r.rule,
        "rows": r.rows,
        "counts": {"by_source": r.by_source, "by_capability": r.by_capability,
                   "by_source_band": {s: {r.band: n} for s, n in r.by_source.items()}, "by_band": {r.band: r.rows},
                   "band_total_in_run": r.band_total, "after_step": r.steps},
        "steps": [asdict(c) for c in r.step_counts],
        "drops": {"file": DROPS_FILE, "rows": sum(c.dropped for c in r.step_counts),
                  "columns": ["sample_id", "step", "reason"]},
        "zero_advantage": r.zero_advantage,
        "format_prompt": {"text": opts.template, "sha256": hashlib.sha256(opts.template.encode()).hexdigest(),
                          "default": opts.template == PROMPT_TEMPLATE},
        "run": {k: (_maybe_json(v) if k in ("config", "sampling") else v) for k, v in run_row.items()},
        "model": run_row.get("model"),
        "store": str(store.root),
        "options": options,
        "files": {name: {"sha256": digest} for name, digest in r.files.items()},
        "skipped_no_response": r.skipped_no_response,
        "schema": schema,
        "images": ("absolute paths into the store's image folder (datasets.Image decodes them from there)"
                   if opts.images == "path" else "embedded bytes"),
        "load_with": f"datasets.load_dataset('parquet', data_files='{r.out / STAGE_SHARDS}', split='train')",
        "pebr_version": code_version(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = r.out / MANIFEST_NAME
    atomic_write(path, json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    return path
