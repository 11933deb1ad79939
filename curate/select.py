"""`curate select`: the paper's dataset-level sampling, as a reproducible stage dataset.

perception <- easy, reasoning <- medium, warmup <- hard; by default every sample of the band, as
the reference does. Options narrow the band (sources, capabilities, SQL), balance it (coarse/fine
mix, per-source quotas, a cap, dedup) with a seeded order, and the manifest records what was done.
DuckDB does the selection and writes the export (curate.export).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from curate.difficulty import DEFAULT_GROUP_SIZE, STAGE_BANDS, difficulty_query, load_difficulty, resolve_run
from curate.errors import PebrError
from curate.export import (BATCH_ROWS, IMAGE_MODES, STAGE_COLUMNS, gold_response_sql, images_sql,
                           llamafactory_dataset_info, prompt_macro, prompt_parts_sql, prompt_sql, sha256_file,
                           write_json_records, write_parquet)
from curate.store import Store, code_version, sql_literal
from rewards.prompt import PROMPT_TEMPLATE
from schemas import REWARD_COLUMNS, STAGE_SHARDS

FORMATS = ("parquet", "easyr1", "sharegpt")
MANIFEST_NAME = "manifest.json"
SHARD_ROWS = 65_536
"""Most rows per Parquet shard of a stage dataset (--shard-rows)."""
PERCEPTION_CAPS = ("perception_coarse", "perception_fine")


def shard_name(i: int, shards: int) -> str:
    """The Hugging Face name of shard `i` of `shards`: train-00000-of-00002.parquet, ..."""
    return f"train-{i:05d}-of-{shards:05d}.parquet"


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
    """Prompt template ({problem} is replaced) for the chat `prompt` column."""
    shard_rows: int = SHARD_ROWS
    """Most rows per Parquet shard. The rows, in seeded order, are split evenly into
    ceil(rows / shard_rows) shards, written in parallel (one DuckDB pipeline per core); the files
    depend only on the selection, not on the machine."""
    force: bool = False
    """Replace an existing stage dataset in `out`."""


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
    sentinel = "\x00PEBR\x00"
    try:
        filled = opts.template.format(problem=sentinel)
    except (KeyError, IndexError, ValueError) as exc:
        raise PebrError(f"the prompt template does not format with only {{problem}}: {exc!r}") from None
    if filled.count(sentinel) != 1:
        raise PebrError("the prompt template must contain {problem} exactly once (write literal braces as {{ and }})")
    if opts.where is not None:
        import duckdb

        try:
            statements = duckdb.extract_statements(f"SELECT 1 WHERE ({opts.where})")
        except duckdb.Error as exc:
            raise PebrError(f"--where does not parse: {str(exc).splitlines()[0]}") from None
        if len(statements) != 1:
            raise PebrError("--where must be a single SQL condition")
    return STAGE_BANDS[opts.stage]


def _in_list(values: list[str]) -> str:
    return "(" + ", ".join(sql_literal(v) for v in values) + ")"


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


def _selection(store: Store, con, opts: SelectOptions, band: str, run_id: str) -> dict[str, int]:
    """Build `picked` (sample_id, source, capability, the difficulty columns of the export, rank_key)
    step by step: a table, or a view of the band's rows when no option narrows them; returns rows
    left after each step."""
    rows = load_difficulty(store, con, run_id)  # the run's cached difficulty rows, not every rollout
    diff = difficulty_query(run_id, easy_min=opts.easy_min, hard_max=opts.hard_max, group_size=opts.group_size,
                            relation=rows)
    con.execute(f"CREATE OR REPLACE TEMP VIEW d AS {diff}")
    # The band's rows, read once; every step below starts from them. Every difficulty row is a
    # sample's: rollouts are matched to samples when they are written.
    stds = ", ".join(f"std_{c}" for c in REWARD_COLUMNS)  # for the manifest's observed zero-std shares
    # --where may name any difficulty column; otherwise only those the steps and the export use.
    columns = "*" if opts.where else f"sample_id, source, capability, n, k, pass_rate, band, p_degenerate, {stds}"
    seed = str(int(opts.seed))
    con.execute(f"CREATE OR REPLACE TABLE band_rows AS SELECT {columns}, md5_number('{seed}:' || sample_id) AS rank_key "
                f"FROM d WHERE band = {sql_literal(band)}")
    steps: dict[str, int] = {"band": con.execute("SELECT count(*) FROM band_rows").fetchall()[0][0]}
    conds = ["true"]
    if opts.sources:
        conds.append(f"d.source IN {_in_list(opts.sources)}")
    if opts.capabilities:
        conds.append(f"d.capability IN {_in_list(opts.capabilities)}")
    if opts.where:
        conds.append(f"({opts.where})")
    # The difficulty rows carry source and capability; the samples are read only when --where or
    # --dedup may need their other columns.
    source = "band_rows d"
    if opts.where or opts.dedup:
        source = "stage_samples s JOIN (SELECT * EXCLUDE (source, capability) FROM band_rows) d USING (sample_id)"
        conds = [c.replace("d.source ", "s.source ").replace("d.capability ", "s.capability ") for c in conds]
    dedup = ""
    if opts.dedup:
        dedup = ("QUALIFY row_number() OVER (PARTITION BY md5(s.problem || chr(0) || array_to_string(s.images, chr(1))) "
                 "ORDER BY rank_key) = 1")
    import duckdb

    try:
        con.execute(f"""CREATE OR REPLACE VIEW cand AS
            SELECT sample_id, source, capability, n, k, pass_rate, band, p_degenerate, {stds}, rank_key
            FROM {source} WHERE {' AND '.join(conds)} {dedup}""")
        steps["filters"] = con.execute("SELECT count(*) FROM cand").fetchall()[0][0]
    except duckdb.Error as exc:
        raise PebrError(f"selection failed: {str(exc).splitlines()[0]}") from None
    if opts.dedup:
        steps["dedup"] = steps.pop("filters")

    query = "SELECT * FROM cand"
    if opts.coarse_fine_mix is not None:
        counts = dict(con.execute("SELECT capability, count(*) FROM cand WHERE capability IN "
                                  f"{_in_list(list(PERCEPTION_CAPS))} GROUP BY 1").fetchall())
        c, f = mix_targets(counts.get(PERCEPTION_CAPS[0], 0), counts.get(PERCEPTION_CAPS[1], 0), opts.coarse_fine_mix)
        query = (f"SELECT * FROM ({query}) QUALIFY row_number() OVER (PARTITION BY capability ORDER BY rank_key) <= "
                 f"CASE capability WHEN '{PERCEPTION_CAPS[0]}' THEN {c} WHEN '{PERCEPTION_CAPS[1]}' THEN {f} ELSE 9e18 END")
        steps["coarse_fine_mix"] = con.execute(f"SELECT count(*) FROM ({query})").fetchall()[0][0]
    if opts.quota:
        cases = " ".join(f"WHEN '{s.replace(chr(39), chr(39) * 2)}' THEN {int(q)}" for s, q in sorted(opts.quota.items()))
        query = (f"SELECT * FROM ({query}) QUALIFY row_number() OVER (PARTITION BY source ORDER BY rank_key) <= "
                 f"CASE source {cases} ELSE 9e18 END")
        steps["quota"] = con.execute(f"SELECT count(*) FROM ({query})").fetchall()[0][0]
    if opts.cap is not None:
        query = f"SELECT * FROM ({query}) ORDER BY rank_key LIMIT {int(opts.cap)}"
    if not _narrows(opts):
        con.execute("CREATE OR REPLACE VIEW picked AS SELECT * FROM band_rows")  # the whole band, as read
    else:
        con.execute(f"CREATE OR REPLACE TABLE picked AS {query}")
    if opts.cap is not None:
        steps["cap"] = con.execute("SELECT count(*) FROM picked").fetchall()[0][0]
    return steps


def _export_sql(store: Store, images: str, template: str, where: str = "true") -> str:
    """The stage rows (STAGE_COLUMNS) of `picked p` matching `where`, in seeded order; needs the
    `pebr_prompt` macro."""
    cols = {
        "prompt": prompt_sql("problem", "len(images_rel)", template, parts="prompt_parts"),
        "images": images_sql("images_rel", store.root, images),
        "answer": "answer",
        "key_words": "key_words",
        "sample_id": "sample_id",
        "source": "source",
        "capability": "capability",
        "qid": "qid",
        "problem": "problem",
        "response": gold_response_sql("extra"),
        "n": "n",
        "k": "k",
        "pass_rate": "pass_rate",
        "band": "band",
        "p_degenerate": "p_degenerate",
    }
    assert tuple(cols) == STAGE_COLUMNS
    select = ", ".join(f"{expr} AS {name}" for name, expr in cols.items())
    # Sorted first, then the prompt and image columns are built over the sorted rows: a narrower sort.
    rows = ("SELECT s.sample_id, p.source, p.capability, s.qid, s.problem, s.answer, s.key_words, s.images AS images_rel, "
            "s.extra, p.n, p.k, p.pass_rate, p.band, p.p_degenerate FROM picked p JOIN stage_samples s USING (sample_id) "
            f"WHERE {where} ORDER BY p.rank_key")
    rows = f"SELECT *, {prompt_parts_sql('problem')} AS prompt_parts FROM ({rows})"
    return f"SELECT {select} FROM ({rows})"


def _record_rows(con) -> Iterator[dict]:
    """The picked samples as dicts (images as store paths), in seeded order, for the JSON formats."""
    cur = con.execute(f"SELECT s.*, {gold_response_sql('s.extra')} AS response, p.pass_rate "
                      "FROM picked p JOIN stage_samples s USING (sample_id) ORDER BY p.rank_key")
    names = [c[0] for c in cur.description]
    while batch := cur.fetchmany(BATCH_ROWS):
        for values in batch:
            yield dict(zip(names, values))


def _perception_zero_std(con, run_id: str) -> float | None:
    """Share of picked samples whose sampling rollouts all got the same stage-1 reward (without clip).

    None when the run did not grade the perception components (imported dumps carry accuracy only).
    """
    from rewards import RewardConfig, stage_weights

    weights = {k: w for k, w in stage_weights("perception", RewardConfig()).items() if w}
    graded_any = " AND ".join(f"std_{name} IS NOT NULL" for name in weights)
    if not con.execute(f"SELECT count(*) FROM picked WHERE {graded_any}").fetchall()[0][0]:
        return None  # the difficulty rows say so without a pass over the rollouts
    expr = " + ".join(f"{w!r} * coalesce(r.{name}, 0)" for name, w in weights.items())
    graded = " AND ".join(f"count(r.{name}) > 0" for name in weights)
    row = con.execute(
        f"SELECT avg(CASE WHEN spread < 1e-9 THEN 1.0 ELSE 0.0 END) FROM ("
        f"  SELECT max({expr}) - min({expr}) AS spread FROM rollouts r JOIN picked p USING (sample_id)"
        f"  WHERE r.run_id = ? GROUP BY r.sample_id HAVING {graded})", [run_id]).fetchall()
    return row[0][0] if row else None


def _zero_advantage(con, group_size: int, stage: str, run_id: str) -> dict:
    stds = ", ".join(
        f"avg(CASE WHEN std_{c} = 0 THEN 1.0 ELSE 0.0 END) FILTER (WHERE std_{c} IS NOT NULL) AS {c}" for c in REWARD_COLUMNS
    )
    row = con.execute(
        f"SELECT avg(p_degenerate), avg(pow(pass_rate, {group_size}) + pow(1 - pass_rate, {group_size})), {stds} "
        "FROM picked"
    ).fetchall()[0]
    observed = {c: v for c, v in zip(REWARD_COLUMNS, row[2:]) if v is not None}
    note = ("accuracy_predicted: mean over the stage of P(all G accuracies equal) = E[p^G + (1-p)^G] under the "
            "Beta(k+1, n-k+1) posterior of each sample's pass rate; accuracy_point_estimate uses p = k/n. "
            "observed_zero_std: per reward the sampling run graded, the fraction of samples whose n rollouts "
            "all got the same value.")
    if stage == "perception":
        predicted = _perception_zero_std(con, run_id)
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


def _narrows(opts: SelectOptions) -> bool:
    """Whether an option keeps fewer than every sample of the band."""
    return bool(opts.sources or opts.capabilities or opts.where or opts.dedup or opts.quota
                or opts.coarse_fine_mix is not None or opts.cap is not None)


def _rule(opts: SelectOptions, band: str) -> str:
    rule = {"easy": f"k >= {opts.easy_min:g} * n", "medium": f"{opts.hard_max:g} * n < k < {opts.easy_min:g} * n",
            "hard": f"k <= {opts.hard_max:g} * n"}[band]
    parts = [f"stage {opts.stage} <- band {band} ({rule})"]
    if opts.sources:
        parts.append(f"sources {sorted(opts.sources)}")
    if opts.capabilities:
        parts.append(f"capabilities {sorted(opts.capabilities)}")
    if opts.where:
        parts.append(f"where {opts.where}")
    if opts.dedup:
        parts.append("one sample per problem + images")
    if opts.coarse_fine_mix is not None:
        parts.append(f"perception_coarse fraction {opts.coarse_fine_mix:g}")
    if opts.quota:
        parts.append(f"per-source quota {dict(sorted(opts.quota.items()))}")
    if opts.cap is not None:
        parts.append(f"cap {opts.cap}")
    if not _narrows(opts):
        parts.append("every sample of the band")
    return "; ".join(parts) + f"; order md5_number('{opts.seed}:' || sample_id)"


def _dataset_files(out: Path) -> list[Path]:
    """The files of a stage dataset in `out`: manifest, shards, and a single-file train.parquet."""
    return [p for p in (out / MANIFEST_NAME, out / "train.parquet") if p.exists()] + sorted(out.glob(STAGE_SHARDS))


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
        steps = _selection(store, con, opts, band, run_id)
        # Everything the manifest needs from the store is read before the output folder is touched.
        counts = con.execute("SELECT source, capability, count(*) FROM picked GROUP BY ALL ORDER BY ALL").fetchall()
        by_source: dict[str, int] = {}
        by_cap: dict[str, int] = {}
        for src, cap, n in counts:
            by_source[src] = by_source.get(src, 0) + n
            by_cap[cap or "unknown"] = by_cap.get(cap or "unknown", 0) + n
        zero = _zero_advantage(con, opts.group_size, opts.stage, run_id)
        cur = con.execute("SELECT * REPLACE (strftime(created_at, '%Y-%m-%dT%H:%M:%S%z') AS created_at) FROM runs WHERE run_id = ?", [run_id])
        run_row = dict(zip([c[0] for c in cur.description], cur.fetchall()[0]))
        _prepare_out(out)
        # One pipeline per shard, as many at once as DuckDB has threads (it counts the cores this
        # process may use); with embedded images, one: their bytes pass through Python in batches.
        workers = 1 if opts.images == "embed" else con.execute("SELECT current_setting('threads')").fetchall()[0][0]
        con.execute("SET threads = 1")
        rows, shards = _write_shards(store, con, opts, out, sum(n for *_, n in counts), workers)
        files = {name: sha256_file(out / name) for name in shards}
        skipped = 0
        if opts.format != "parquet":
            con.execute("RESET threads")  # one query over the whole stage
            name = f"{opts.format}/{'train' if opts.format == 'easyr1' else opts.stage}.json"
            (out / opts.format).mkdir(parents=True, exist_ok=True)
            _, skipped = write_json_records(_record_rows(con), out / name, opts.format, store.root, opts.template)
            files[name] = sha256_file(out / name)
            if opts.format == "sharegpt":
                info = out / "sharegpt" / "dataset_info.json"
                info.write_text(json.dumps(llamafactory_dataset_info(f"pebr_{opts.stage}", f"{opts.stage}.json"), indent=2) + "\n")
                files["sharegpt/dataset_info.json"] = sha256_file(info)
        schema = dict(con.execute("SELECT column_name, column_type FROM "
                                  f"(DESCRIBE SELECT * FROM read_parquet({sql_literal(out / shards[0])}))").fetchall())
    finally:
        con.close()
    report = SelectReport(out=out, stage=opts.stage, band=band, run_id=run_id, rows=rows, band_total=steps["band"],
                          by_source=by_source, by_capability=by_cap, zero_advantage=zero, files=files, steps=steps,
                          skipped_no_response=skipped)
    report.manifest = _write_manifest(store, opts, report, run_row, schema)
    return report


def _write_shards(store: Store, con, opts: SelectOptions, out: Path, rows: int, workers: int) -> tuple[int, list[str]]:
    """Write `picked` as ceil(rows / shard_rows) Parquet shards of consecutive rows in seeded order
    (sizes differ by one at most), each by its own DuckDB pipeline (`con` is set to one thread), up
    to `workers` at once; returns the rows written and the shard names in order. If any shard fails,
    the shards not started are cancelled and those written are removed before the error propagates.

    One pipeline per shard uses the cores: DuckDB's own parallel sort and ordered writer were slower
    than one thread for a stage's file. Each pipeline reads the samples once, so shards far smaller
    than the default cost more than they save."""
    con.execute(prompt_macro())
    shards = max(1, -(-rows // opts.shard_rows))
    names = [shard_name(i, shards) for i in range(shards)]
    # Row at position p of the order goes to shard p * shards // rows; a shard's lower bound is its
    # smallest key (keys are distinct: md5 of distinct sample ids).
    keys = [k for (k,) in con.execute(
        f"SELECT min(rank_key) FROM (SELECT rank_key, (row_number() OVER (ORDER BY rank_key) - 1) * {shards} // {rows} "
        "AS shard FROM picked) GROUP BY shard HAVING shard > 0 ORDER BY shard").fetchall()] if shards > 1 else []
    edges = [None, *keys, None]
    wheres = [" AND ".join([*([f"p.rank_key >= {lo}::UHUGEINT"] if lo is not None else []),
                            *([f"p.rank_key < {hi}::UHUGEINT"] if hi is not None else [])]) or "true"
              for lo, hi in zip(edges, edges[1:])]

    def write(i: int) -> int:
        cur = con.cursor() if shards > 1 else con  # a cursor per pipeline: DuckDB runs each on its caller's thread
        try:
            return write_parquet(cur, _export_sql(store, opts.images, opts.template, wheres[i]), out / names[i],
                                 store.root, opts.images)
        finally:
            if cur is not con:
                cur.close()

    pool = ThreadPoolExecutor(max(1, min(shards, workers)))
    try:
        written = sum(f.result() for f in [pool.submit(write, i) for i in range(shards)])
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        for name in names:
            (out / name).unlink(missing_ok=True)
        raise
    pool.shutdown()
    return written, names


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
        "rule": _rule(opts, r.band),
        "rows": r.rows,
        "counts": {"by_source": r.by_source, "by_capability": r.by_capability,
                   "by_source_band": {s: {r.band: n} for s, n in r.by_source.items()}, "by_band": {r.band: r.rows},
                   "band_total_in_run": r.band_total, "after_step": r.steps},
        "zero_advantage": r.zero_advantage,
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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)
    return path
