"""`curate select`: the paper's dataset-level sampling, as a reproducible stage dataset.

perception <- easy, reasoning <- medium, warmup <- hard; by default every sample of the band, as
the reference does. Options narrow the band (sources, capabilities, SQL), balance it (coarse/fine
mix, per-source quotas, a cap, dedup) with a seeded order, and the manifest records what was done.
The selection is a list of steps (`curate.steps`), each recording the samples it drops with a
reason (`select_drops.parquet` next to the stage files; counts per step in the manifest); the
writer (`curate.export`) turns what is left into the stage files.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
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
    shard_name,
    usage,
    write_json_records,
    write_shards,
    write_verl_parquet,
)
from curate.steps import (
    DROPS_TABLE,
    STEP_COLUMNS,
    Step,
    StepCount,
    band_step,
    cap_step,
    capability_step,
    check_condition,
    dedup_step,
    mix_step,
    mix_targets,
    quota_step,
    response_step,
    run_steps,
    source_step,
    where_step,
)
from curate.store import Store, code_version, sql_file, sql_literal
from generation.prompt import PROMPT_TEMPLATE, check_template
from schemas import REWARD_COLUMNS, STAGE_SHARDS
from schemas.errors import PebrError
from schemas.io import atomic_write, file_lock, process_label, sha256_file

FORMATS = ("parquet", "easyr1", "sharegpt", "verl")
MANIFEST_NAME = "manifest.json"
FORMAT_PROMPT_FILE = "format_prompt.jinja"
DROPS_FILE = "select_drops.parquet"
"""Every sample of the run the selection left out: sample_id, step, reason."""
SHARD_ROWS = 65_536
"""Most rows per Parquet shard of a stage dataset (--shard-rows)."""

__all__ = ["DROPS_FILE", "FORMATS", "MANIFEST_NAME", "PENDING_FILE", "SHARD_ROWS", "SelectOptions", "SelectReport", "mix_targets",
           "select_lock", "select_options", "select_stage", "selection_steps", "shard_name"]


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
    """parquet (always written) | easyr1 (+ reference JSON and images) | sharegpt (+ LLaMA-Factory SFT JSON) |
    verl (+ verl/train.parquet, the columns volcengine/verl's RLHFDataset reads)."""
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
    by_source: dict[str, int]
    by_capability: dict[str, int]
    zero_advantage: dict
    files: dict[str, str]
    """File name (relative to out) -> sha256."""
    step_counts: list[StepCount] = field(default_factory=list)
    """What each step kept and dropped, by reason (the rows are in select_drops.parquet); the band
    step comes first."""
    rule: str = ""
    """The selection in words: the band's rule, each step's, and the order."""
    manifest: Path | None = None
    skipped_no_response: int = 0

    @property
    def steps(self) -> dict[str, int]:
        """Rows left after each selection step, in order."""
        return {c.step: c.kept for c in self.step_counts}

    @property
    def band_total(self) -> int:
        """Samples of the band in the run before any option narrowed them."""
        return self.step_counts[0].kept


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
        check_condition(opts.where)  # one boolean expression; it runs on a locked connection (where_step)
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


def selection_steps(con, opts: SelectOptions, band: str, difficulty: str, samples: str, store: Store) -> list[Step]:
    """The steps the options ask for, in their fixed order: band -> source -> capability -> where ->
    dedup -> coarse/fine mix -> quota -> cap (the row order, by the seeded key, comes last)."""
    steps = [band_step(band, band_rule(opts, band))]
    if opts.sources:
        steps.append(source_step(opts.sources))
    if opts.capabilities:
        steps.append(capability_step(opts.capabilities))
    if opts.where:
        steps.append(where_step(opts.where, difficulty, con, store))
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


# -- the output folder: a selection owns only what it writes ----------------------------------------

PENDING_FILE = ".select-pending.json"
"""In the output folder while a selection writes it (removed once its manifest is in place): after a
crash it tells a later --force that the files named as a selection names them are that selection's."""
_JSON_FILES = {"easyr1": ("train.json", FORMAT_PROMPT_FILE),
               "sharegpt": (*(f"{stage}.json" for stage in STAGE_BANDS), "dataset_info.json"),
               "verl": ("train.parquet",)}
"""The files of the JSON formats, in their folder; the copied images go to `<format>/images/`."""
_SHARD = re.compile(r"train-\d+-of-\d+\.parquet")
_IMAGE = re.compile(r"([0-9a-f]{64})\.[^/]+")
"""A store image's name: the sha256 of its bytes and its suffix (`Store.put_image`)."""
_TEMP = re.compile(r"\.(.+)\.[0-9a-f]{8}\.tmp")
"""`schemas.io.temp_name`: a file not yet published."""


def select_lock(out: str | Path) -> Path:
    """The lock a selection into `out` holds while it runs: beside the folder (``.<name>.select.lock``),
    so the folder holds nothing but the dataset; the same file however `out` is spelled."""
    out = Path(out).resolve()
    return out.parent / f".{out.name}.select.lock"


def _named_as_ours(rel: str) -> bool:
    """Whether `rel` (a path relative to the output folder) has a name a selection gives what it writes,
    or the temporary name of one."""
    folder, _, name = rel.rpartition("/")
    if m := _TEMP.fullmatch(name):
        name = m[1]
    if not folder:
        return name in (MANIFEST_NAME, DROPS_FILE, PENDING_FILE) or bool(_SHARD.fullmatch(name))
    fmt, _, sub = folder.partition("/")
    if fmt not in _JSON_FILES:
        return False
    return name in _JSON_FILES[fmt] if not sub else sub == "images" and bool(_IMAGE.fullmatch(name))


def _named_files(out: Path) -> set[str]:
    """The files in `out` named as a selection names what it writes: at the top, in easyr1/ and
    sharegpt/ and their images/ (a folder that is a link is never looked into)."""
    found = set()
    for folder in ("", *_JSON_FILES, *(f"{fmt}/images" for fmt in _JSON_FILES)):
        path = out / folder
        if (folder and path.is_symlink()) or not path.is_dir():
            continue
        for entry in os.scandir(path):
            rel = f"{folder}/{entry.name}" if folder else entry.name
            if not entry.is_dir(follow_symlinks=False) and _named_as_ours(rel):
                found.add(rel)
    return found


def _inside(out: Path, rel: str) -> bool:
    """Whether `rel` names a file inside `out`, through no `..` and no link that leaves it."""
    path = Path(rel)
    if not path.parts or path.is_absolute() or ".." in path.parts:
        return False
    root, parent = out.resolve(), (out / path).parent.resolve()
    return parent == root or root in parent.parents


def _record_images(path: Path) -> set[str]:
    """The images (``images/<name>``, relative to the JSON's folder) the records of an export name."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {img for rec in (records if isinstance(records, list) else []) if isinstance(rec, dict)
            for img in (rec.get("images") if isinstance(rec.get("images"), list) else [])
            if isinstance(img, str) and img.startswith("images/") and img.count("/") == 1}


def _manifest_files(out: Path) -> set[str] | None:
    """The files the manifest in `out` lists as its selection's (itself included); None when `out`
    holds no manifest of curate select. A manifest written before the copied images were listed
    (no `files_complete`) names them through the records of its JSON export."""
    path = out / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict) and "stage" in manifest):
        return None
    files = {MANIFEST_NAME, *manifest["files"]}
    for rel in sorted(files):
        if not _inside(out, rel):
            raise PebrError(f"{path} lists {rel!r}, outside {out}: not a manifest curate select wrote; "
                            "remove the folder's files yourself")
    if manifest.get("files_complete") is not True:
        for rel in list(files):
            fmt, _, name = rel.partition("/")
            if fmt in _JSON_FILES and name in _JSON_FILES[fmt] and name.endswith(".json") and name != "dataset_info.json":
                files |= {f"{fmt}/{img}" for img in _record_images(out / rel) if _inside(out, f"{fmt}/{img}")}
    return files


@dataclass
class _Claim:
    """The output folder of one selection, locked, and what is in it."""

    out: Path
    earlier: set[str]
    """Files of the earlier selection there (relative to `out`): what --force replaces."""
    kept: set[str] = field(default_factory=set)
    """Files there under a selection's names that no selection wrote: never listed, never removed."""
    started: bool = False
    """Whether this selection has begun to write (PENDING_FILE in place)."""


def _claim_out(out: Path, force: bool) -> _Claim:
    """Check, holding the lock, that `out` may take the new stage dataset: a new or empty folder, or
    (with --force) one holding a stage dataset of curate select; anything else is refused, --force
    or not, before anything is written."""
    if out.exists() and not out.is_dir():
        raise PebrError(f"--out {out} is a file, not a folder")
    entries = sorted(os.listdir(out)) if out.is_dir() else []
    if not entries:
        return _Claim(out, set())
    listed = _manifest_files(out)
    pending = (out / PENDING_FILE).is_file()
    named = _named_files(out)
    if listed is None and not pending:
        # No manifest: a stage dataset only if every entry is one of its top-level files (a single
        # train.parquet included); nothing tells a selection's files from a user's otherwise.
        if not set(entries) <= named | ({"train.parquet"} if (out / "train.parquet").is_file() else set()):
            shown = ", ".join(entries[:6]) + (f", ... ({len(entries)} entries)" if len(entries) > 6 else "")
            raise PebrError(f"--out {out} is not empty and holds no stage dataset of curate select ({shown}); "
                            "choose a new or empty folder (curate select removes only files it wrote)")
        return _refuse_unless(force, _Claim(out, set(entries)), f"{out} already holds a stage dataset")
    earlier = {rel for rel in listed or () if os.path.lexists(out / rel)}
    if pending:  # a selection stopped before its manifest: its files are those named as ours, less what it kept
        try:
            kept = set(json.loads((out / PENDING_FILE).read_text(encoding="utf-8")).get("kept", []))
        except (OSError, ValueError, AttributeError, TypeError):
            kept = set()
        earlier |= named - kept
    what = "a stage dataset" if listed is not None else "an unfinished selection (stopped before its manifest was written)"
    return _refuse_unless(force, _Claim(out, earlier), f"{out} already holds {what}")


def _refuse_unless(force: bool, claim: _Claim, holds: str) -> _Claim:
    if not force:
        raise PebrError(f"{holds}; pass --force to replace it (only the files a selection wrote are removed)")
    return claim


def _remove(out: Path, files: set[str]) -> None:
    """Remove these files of `out` (never a folder), PENDING_FILE last; then the folders a selection
    makes, where they are left empty."""
    for rel in sorted(files - {PENDING_FILE}):
        path = out / rel
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
    for folder in (*(f"{fmt}/images" for fmt in _JSON_FILES), *_JSON_FILES):
        with contextlib.suppress(OSError):  # not empty, not there, or a link: left alone
            (out / folder).rmdir()
    if PENDING_FILE in files:
        (out / PENDING_FILE).unlink(missing_ok=True)


def _prepare_out(claim: _Claim) -> None:
    """Begin writing: create `out`, mark it as being written (PENDING_FILE, naming the files already
    there under a selection's names that are not a selection's), then remove exactly the earlier
    selection's files (and the folders it made, once empty)."""
    out = claim.out
    out.mkdir(parents=True, exist_ok=True)
    claim.kept = _named_files(out) - claim.earlier - {PENDING_FILE}
    atomic_write(out / PENDING_FILE, json.dumps({"pid": os.getpid(), "kept": sorted(claim.kept)}) + "\n")
    claim.started = True
    _remove(out, claim.earlier - {PENDING_FILE})


def _discard_partial(claim: _Claim) -> None:
    """After a failure: remove what this selection wrote (never the files it kept), so no partial
    dataset is left; the folder itself stays."""
    if claim.started:
        _remove(claim.out, _named_files(claim.out) - claim.kept)


def _noting_images(rows, names: set[str]):
    """`rows` as they are, noting the name each image gets in the export's images/ folder (its
    store name's base name, as `curate.export` copies it)."""
    for row in rows:
        names.update(os.path.basename(rel) for rel in row["images"] or ())
        yield row


def _image_files(fmt: str, names: set[str], claim: _Claim) -> dict[str, str]:
    """Manifest entries (name -> sha256) of the images an export copied; a store image's name is
    the sha256 of its bytes."""
    files = {}
    for name in sorted(names):
        rel = f"{fmt}/images/{name}"
        if rel not in claim.kept and (claim.out / rel).is_file():
            m = _IMAGE.fullmatch(name)
            files[rel] = m[1] if m else sha256_file(claim.out / rel)
    return files


def select_stage(store: Store, opts: SelectOptions) -> SelectReport:
    """Select one stage's samples from the store and write them to `opts.out` (see SelectOptions)."""
    band = _check(opts)
    store.require()
    out = Path(opts.out).absolute()
    with contextlib.ExitStack() as held:
        try:  # one selection at a time into a folder; the second is told who holds it
            held.enter_context(file_lock(
                select_lock(out), process_label(f"curate select --stage {opts.stage}"),
                busy=lambda holder: f"{out} is being written by another curate select: {holder}; "
                                    "wait for it to end, or choose another --out"))
        except OSError as exc:
            raise PebrError(f"cannot lock {select_lock(out)} for --out {out}: {exc.strerror or exc}") from None
        claim = _claim_out(out, opts.force)
        try:
            report = _select_into(store, opts, band, claim)
        except BaseException:
            _discard_partial(claim)
            raise
        (out / PENDING_FILE).unlink(missing_ok=True)
        return report


def _select_into(store: Store, opts: SelectOptions, band: str, claim: _Claim) -> SelectReport:
    """The selection of `select_stage`, into `claim.out` (locked and checked)."""
    out = claim.out
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
        steps = selection_steps(con, opts, band, "run_difficulty_rows", "stage_samples", store)
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
        _prepare_out(claim)
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
        expected = sum(n for *_, n in counts)
        if rows != expected:  # the difficulty rows name samples the store no longer holds
            raise PebrError(f"{expected - rows:,} of the {expected:,} selected samples are missing from the store "
                            "(a samples part was lost?); run `curate check --repair`, then select again")
        files = {name: sha256_file(out / name) for name in [*shards, DROPS_FILE]}
        skipped = 0
        if opts.format == "verl":
            con.execute("RESET threads")
            (out / "verl").mkdir(parents=True, exist_ok=True)
            write_verl_parquet(record_rows(con, picked, "stage_samples"), out / "verl" / "train.parquet", store.root,
                               opts.stage, opts.template)
            files["verl/train.parquet"] = sha256_file(out / "verl" / "train.parquet")
        elif opts.format != "parquet":
            con.execute("RESET threads")  # one query over the whole stage, on every thread
            name = f"{opts.format}/{'train' if opts.format == 'easyr1' else opts.stage}.json"
            (out / opts.format).mkdir(parents=True, exist_ok=True)
            copied: set[str] = set()
            _, skipped = write_json_records(_noting_images(record_rows(con, picked, "stage_samples"), copied), out / name,
                                            opts.format, store.root, opts.template)
            files[name] = sha256_file(out / name)
            if opts.format == "easyr1":  # EasyR1 applies the format prompt itself (data.format_prompt)
                atomic_write(out / "easyr1" / FORMAT_PROMPT_FILE, opts.template)
                files[f"easyr1/{FORMAT_PROMPT_FILE}"] = sha256_file(out / "easyr1" / FORMAT_PROMPT_FILE)
            if opts.format == "sharegpt":
                info = out / "sharegpt" / "dataset_info.json"
                atomic_write(info, json.dumps(llamafactory_dataset_info(f"pebr_{opts.stage}", f"{opts.stage}.json"), indent=2) + "\n")
                files["sharegpt/dataset_info.json"] = sha256_file(info)
            files.update(_image_files(opts.format, copied, claim))
        schema = dict(con.execute("SELECT column_name, column_type FROM "
                                  f"(DESCRIBE SELECT * FROM read_parquet({sql_file(out / shards[0])}))").fetchall())
    finally:
        con.close()
    report = SelectReport(out=out, stage=opts.stage, band=band, run_id=run_id, rows=rows, by_source=by_source,
                          by_capability=by_cap, zero_advantage=zero, files=files, step_counts=counts_by_step,
                          rule=_rule(opts, steps), skipped_no_response=skipped)
    report.manifest = _write_manifest(store, opts, report, run_row, schema)
    return report


def _write_drops(con, path: Path) -> None:
    cur = con.cursor()
    try:
        atomic_write(path, lambda tmp: cur.execute(f"COPY {DROPS_TABLE} TO {sql_literal(tmp)} (FORMAT parquet, COMPRESSION uncompressed)"))
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
        "files_complete": True,  # every file the selection wrote (copied images too): what --force removes
        "skipped_no_response": r.skipped_no_response,
        "schema": schema,
        "images": ("absolute paths into the store's image folder (datasets.Image decodes them from there)"
                   if opts.images == "path" else "embedded bytes"),
        "load_with": f"datasets.load_dataset('parquet', data_files='{r.out / STAGE_SHARDS}', split='train')",
        "use_with": usage(opts.format, r.out, opts.stage),
        "pebr_version": code_version(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = r.out / MANIFEST_NAME
    atomic_write(path, json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n")
    return path
