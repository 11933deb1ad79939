"""The `curate` command line: a thin layer over the library; each command builds options and calls one function.

Heavy libraries (torch, transformers, vllm, datasets) are imported inside the commands that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.executors import RayOptions
from curate.score import CHUNK, ScoreOptions
from curate.select import SelectOptions
from generation import ENGINES, EngineOptions, SamplingConfig
from schemas import REWARD_STAGES, STAGE_BANDS
from schemas.cli import (
    FormatOpt,
    OutFormat,
    StoreOpt,
    console,
    esc,
    file_option,
    folder_option,
    progress_bar,
    run_app,
    status,
    visible,
)
from schemas.cli import default_option as _opt
from schemas.config import default

# Option defaults are read from the option dataclasses (one definition each); those modules import
# nothing heavy, so `--help` stays instant.

FormatPromptOpt = Annotated[Optional[Path], typer.Option(
    "--format-prompt", help="A Jinja template over `content` (EasyR1's data.format_prompt), e.g. the reference's "
    "examples/format_prompt/pebr_format.jinja (default: the toolkit's own instruction).")]


RewardOpt = Annotated[Optional[list[str]], typer.Option(
    "--reward", help="KEY=VALUE: a reward setting (rewards.config.RewardConfig), e.g. clip_model_path=/models/fg-clip "
    "or length_limit=256 (repeatable).")]


def _rewards(items: list[str] | None):
    from rewards.config import RewardConfig
    from schemas.config import build, parse_overrides

    return build(RewardConfig, parse_overrides(items or []), "--reward")

app = typer.Typer(
    name="curate",
    help="Curate VLM training data by the model's own pass rate (PeBR-R1 dataset-level sampling).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _store(path: Path):
    from curate.store import Store

    return Store(path)


@app.command()
def ingest(
    path: Annotated[Path, typer.Argument(help="JSON array, JSONL, Parquet, CSV/Arrow file, or a dataset dir saved by `datasets`.")],
    image_root: Annotated[Path, typer.Option("--image-root", help="Folder the records' image paths are relative to.")],
    source: Annotated[Optional[str], typer.Option(help="Source name for records without one (default: file stem).")] = None,
    capability: Annotated[Optional[str], typer.Option(help="perception_coarse | perception_fine | reasoning, for records without one.")] = None,
    split: Annotated[Optional[str], typer.Option(help="Split of a saved DatasetDict.")] = None,
    store: StoreOpt = Path("store"),
) -> None:
    """Read records into the store's samples; every bad record lands in rejects with a reason.

    Example: curate ingest data/train.jsonl --image-root data/ --source geoqa
    """
    from rich.table import Table

    from curate.ingest import REASONS, IngestOptions
    from curate.ingest import ingest as run_ingest

    opts = IngestOptions(path=path, image_root=image_root, source=source, capability=capability, split=split)
    with progress_bar(transient=True, unit="records") as bar:
        task = bar.add_task(f"ingest {path.name}", total=None)
        report = run_ingest(_store(store), opts, progress=lambda k: bar.advance(task, k))
    out = console()
    if report.already_ingested:
        out.print(f"{esc(path)} was already ingested by run {esc(report.already_ingested)}: nothing added")
        return
    table = Table(title=f"ingest {esc(path.name)} -> run {esc(report.run_id)}")
    table.add_column("outcome")
    table.add_column("records", justify="right")
    table.add_row("[green]accepted", str(report.accepted))
    for reason, count in sorted(report.rejected.items()):
        table.add_row(f"[red]rejected: {reason}[/red] ({REASONS[reason]})", str(count))
    table.add_row("[bold]records read", str(report.records))
    out.print(table)
    unreadable = sum(report.rejected[r] for r in ("bad_utf8", "bad_json", "not_an_object", "record_too_large"))
    if unreadable == report.records:
        out.print("[red]error:[/red] no record could be read")
        raise typer.Exit(1)


@app.command("import-rollouts")
def import_rollouts(
    file: Annotated[Path, typer.Argument(help="rollout_results.jsonl (PeBR/EasyR1), or verl's rollout_data_dir (the folder "
                                              "of <step>.jsonl files, imported as one run) or one of its files.")],
    source: Annotated[Optional[str], typer.Option(help="Match qids only against samples of this source.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="pebr | verl (default: sniffed from the first line).")] = None,
    qid_field: Annotated[Optional[str], typer.Option(help="verl: the key holding the question id, one your reward function "
                                                     "returns from extra_info (verl dumps every key of its result); "
                                                     "`curate select --format verl` puts qid in extra_info.")] = None,
    correct_threshold: Annotated[Optional[float], typer.Option(
        help="A rollout without its own correctness is correct when its score >= this (pebr: score.accuracy, default "
             "1.0; verl: the reward, required when records lack `acc`).")] = None,
    again: Annotated[bool, typer.Option("--again", help="Import the dump even when a run already imported it "
                                        "(the same content, by sha256, with the same options).")] = False,
    store: StoreOpt = Path("store"),
) -> None:
    """Import another trainer's rollout dump as a new run, joined to samples by qid.

    Example: curate import-rollouts outputs/rollout_results.jsonl --source geoqa
    """
    from curate.importer import import_rollouts as run_import

    with status(f"importing {file.name} with DuckDB"):
        r = run_import(_store(store), file, source=source, fmt=fmt, qid_field=qid_field, correct_threshold=correct_threshold,
                       again=again)
    out = console()
    if r.already_imported:
        out.print(f"{visible(file)} was already imported by run {visible(r.already_imported)} (same content and options): nothing "
                  "imported; pass --again to import it once more", markup=False, highlight=False, soft_wrap=True)
        return
    out.print(f"run [bold]{esc(r.run_id)}[/bold]: {r.rollouts:,} rollouts from {r.lines:,} lines")
    out.print("correct: " + "; ".join(f"{esc(rule)} ({n:,} rollouts)" for rule, n in (r.correct_from or {}).items()))
    if r.unreadable:
        out.print(f"[yellow]{r.unreadable:,} line(s) could not be parsed and were skipped[/yellow]")
    if r.unmatched_rollouts:
        out.print(f"[yellow]{r.unmatched_rollouts:,} rollout(s) of {r.unmatched_qids:,} qid(s) match no sample; "
                  "kept with sample_id NULL (query: select * from rollouts where sample_id is null)[/yellow]")
    if r.truncated:
        out.print(f"[yellow]{r.truncated:,} response(s) are truncated (the reference dump keeps the first and last 50 "
                  "characters): kept with truncated = true; pass rates and bands use the dump's accuracy, and "
                  "`curate regrade` refuses this run[/yellow]")


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="A read-only SQL query over samples, rejects, rollouts, runs, difficulty.")],
    fmt: FormatOpt = OutFormat.table,
    memory_limit: Annotated[str, typer.Option(help="DuckDB's memory limit for the query (past it, DuckDB spills to "
                                                   "STORE/tmp), e.g. 512MB or 8GB.")] = "2GB",
    store: StoreOpt = Path("store"),
) -> None:
    """Run read-only SQL over the store's views: one SELECT, which sees the views and macros and no
    file, URL or setting; Ctrl-C stops it.

    Example: curate sql --format csv "select band, count(*) from difficulty group by band"
    """
    from curate.sql import run_query, write_result

    try:
        result = run_query(_store(store).require(), query, memory_limit=memory_limit)
    except KeyboardInterrupt:  # the query was cancelled (typer would exit 130 without a word)
        console().print("interrupted", markup=False, highlight=False)
        raise typer.Exit(130) from None
    write_result(result, fmt.value)


@app.command()
def grade(
    file: Annotated[Path, typer.Argument(help="JSONL with `response`, `answer` (or `ground_truth`), optional `key_words`, `response_length`, `image`.")],
    stage: Annotated[str, typer.Option(help=" | ".join(REWARD_STAGES))] = REWARD_STAGES[0],
    out: Annotated[Optional[Path], typer.Option(help="Write graded lines here (default: stdout).", callback=file_option("--out"))] = None,
    reward: RewardOpt = None,
) -> None:
    """Grade responses with the paper's rewards, without generating.

    Example: curate grade responses.jsonl --stage perception --reward clip_model_path=/models/fg-clip --out graded.jsonl
    """
    import sys

    from curate.grade import grade_file

    cfg = _rewards(reward)
    handle = open(out, "w") if out else sys.stdout
    try:
        report = grade_file(file, stage, handle, cfg)
    finally:
        if out:
            handle.close()
    err = console()
    if report.note:
        err.print(f"[yellow]{esc(report.note)}[/yellow]", soft_wrap=True)
    for line in report.skipped[:20]:
        err.print(f"[yellow]skipped[/yellow] {esc(line)}", highlight=False)
    err.print(f"graded {report.graded} response(s); skipped {len(report.skipped)}")


@app.command()
def regrade(
    run: Annotated[str, typer.Option("--run", help="The run whose rollouts to grade again.")],
    reward: RewardOpt = None,
    store: StoreOpt = Path("store"),
) -> None:
    """Grade a stored run again with the current graders, into a new run (no generation).

    Example: curate regrade --run score-3f2a9c1b0d4e --reward length_limit=1024
    """
    from curate.grade import regrade as run_regrade

    cfg = _rewards(reward)
    with progress_bar(unit="rollouts") as bar:
        task = bar.add_task(f"regrade {run}", total=None)
        new_run, total = run_regrade(_store(store), run, cfg, progress=lambda k: bar.advance(task, k))
    console().print(f"regraded {total:,} rollouts of {esc(run)} into run [bold]{esc(new_run)}[/bold]")


def _parse_shard(text: str) -> tuple[int, int]:
    from schemas.errors import PebrError

    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise PebrError(f"--shard {text!r}: expected i/N, e.g. 0/4") from None
    return i, n


_S = SamplingConfig
_E = EngineOptions
_R = RayOptions
RecipeOpt = Annotated[Optional[Path], typer.Option(
    help="Recipe YAML (pipelines/pebr.yaml): this command's section gives the settings; flags override them.")]


def _settings(recipe: Path | None, section: str, flags: dict) -> dict:
    """The recipe's section, then the flags that were given (None: not given)."""
    from schemas.config import load_recipe, merge, recipe_section

    return merge(recipe_section(load_recipe(recipe), section), {k: v for k, v in flags.items() if v is not None})


@app.command()
def score(
    model: Annotated[Optional[Path], typer.Option(help="Hugging Face VLM directory (the base model; default: the recipe's `model`).")] = None,
    engine: Annotated[Optional[str], _opt(f"{' | '.join(ENGINES)}.", default(ScoreOptions, "engine"))] = None,
    n: Annotated[Optional[int], _opt("Rollouts per sample.", _S.n)] = None,
    temperature: Annotated[Optional[float], _opt("Sampling temperature.", _S.temperature)] = None,
    top_p: Annotated[Optional[float], _opt("Nucleus sampling mass.", _S.top_p)] = None,
    max_new_tokens: Annotated[Optional[int], _opt("Longest response in tokens.", _S.max_new_tokens)] = None,
    seed: Annotated[Optional[int], _opt("Run seed; rollout seeds derive from (seed, sample, index).", _S.seed)] = None,
    source: Annotated[Optional[list[str]], typer.Option(help="Only samples of this source (repeatable).")] = None,
    shard: Annotated[str, typer.Option(help="i/N: score the i-th of N disjoint parts (for N processes).")] = "0/1",
    adaptive: Annotated[Optional[bool], _opt("Stop a sample once it has a correct and an incorrect rollout.", False)] = None,
    round_size: Annotated[Optional[int], _opt("Adaptive: rollouts per sample per round.", default(ScoreOptions, "round_size"))] = None,
    batch_size: Annotated[Optional[int], _opt("hf: sequences per forward pass.", _E.batch_size)] = None,
    hf_mode: Annotated[Optional[str], _opt("hf: generate (growing KV cache) | static (cache allocated once) | compile "
                                           "(static cache, decode step compiled; for GPUs) | auto. Same tokens for the "
                                           "same seeds in every mode.", _E.hf_mode)] = None,
    attn_implementation: Annotated[Optional[str], _opt("hf: attention kernel (sdpa, flash_attention_2, eager).",
                                                       "transformers' choice")] = None,
    chunk: Annotated[Optional[int], _opt("Samples per generate call and written part.", CHUNK)] = None,
    tensor_parallel_size: Annotated[Optional[int], _opt("vllm: GPUs per model replica.", _E.tensor_parallel_size)] = None,
    gpu_memory_utilization: Annotated[Optional[float], _opt("vllm: fraction of GPU memory to use.", _E.gpu_memory_utilization)] = None,
    max_model_len: Annotated[Optional[int], _opt("vllm: context length.", "the model's")] = None,
    dtype: Annotated[Optional[str], _opt("Model dtype (auto, bfloat16, float32).", _E.dtype)] = None,
    min_pixels: Annotated[Optional[int], _opt("Smallest image area after resizing.", _S.min_pixels)] = None,
    max_pixels: Annotated[Optional[int], _opt("Largest image area after resizing.", _S.max_pixels)] = None,
    ray: Annotated[Optional[bool], _opt("Generate on engine replicas in a Ray cluster (Ray: the `ray` extra of pebr); "
                                        "this process stays the store's only writer.", False)] = None,
    replicas: Annotated[Optional[int], _opt("--ray: engine replicas, one Ray actor each.", _R.replicas)] = None,
    gpus_per_replica: Annotated[Optional[float], _opt("--ray: GPUs per replica (vllm: tensor parallel over them).",
                                                      "1 when the cluster has GPUs, else 0")] = None,
    cpus_per_replica: Annotated[Optional[int], _opt("--ray: CPU cores per replica.", _R.cpus_per_replica)] = None,
    ray_address: Annotated[Optional[str], _opt("--ray: the cluster to join (`ray start --head` prints it); "
                                               "`local` starts a new one.", "RAY_ADDRESS, a cluster on this machine, else a new local Ray")] = None,
    reward: RewardOpt = None,
    format_prompt: FormatPromptOpt = None,
    recipe: RecipeOpt = None,
    limit: Annotated[Optional[int], typer.Option(help="Score only the first N samples (quick checks).")] = None,
    run: Annotated[Optional[str], typer.Option(help="Resume this run id.")] = None,
    new_run: Annotated[bool, typer.Option(help="Start a new run even if an identical one exists.")] = False,
    store: StoreOpt = Path("store"),
) -> None:
    """Run the base model n times on every sample; grade and keep every rollout (resumable).

    Running the same command again resumes the run where it stopped (with --ray too, whatever the replicas).

    Example: curate score --model Qwen2.5-VL-7B-Instruct --engine vllm --n 8 --temperature 1.2
    (or: curate score --recipe pipelines/pebr.yaml --model runs/warmup;
    on 8 GPUs: curate score --model M --engine vllm --ray --replicas 8)
    """
    from curate.score import score as run_score
    from curate.score import score_options
    from schemas.config import load_recipe, merge, parse_overrides

    values = _settings(recipe, "score", dict(
        engine=engine, n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed,
        sources=source, adaptive=adaptive, round_size=round_size, batch_size=batch_size, hf_mode=hf_mode,
        attn_implementation=attn_implementation, chunk=chunk,
        tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=gpu_memory_utilization,
        max_model_len=max_model_len, dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels,
        format_prompt=format_prompt, limit=limit, run=run, new_run=new_run or None, ray=ray, replicas=replicas,
        gpus_per_replica=gpus_per_replica, cpus_per_replica=cpus_per_replica, ray_address=ray_address))
    if reward:
        values = merge(values, {"rewards": parse_overrides(reward)})
    model = model or load_recipe(recipe).get("model")
    if model is None:
        from schemas.errors import PebrError

        raise PebrError("--model is required (or a recipe with a top-level `model`)")
    opts = score_options(str(model), {**values, "shard": _parse_shard(shard)})
    where = f"{opts.engine} x {opts.ray_options.replicas} on Ray" if opts.ray else opts.engine
    with progress_bar(unit="rollouts") as bar:
        task = bar.add_task(f"score ({where})", total=None)

        def progress(advance: int, total: int | None) -> None:
            if total is not None:
                bar.update(task, total=total)
            bar.advance(task, advance)

        report = run_score(_store(store), opts, progress=progress)
    out = console()
    out.print(f"run [bold]{esc(report.run_id)}[/bold]: {report.samples:,} samples, {report.generated:,} rollouts generated "
              f"({report.already_done:,} already done) in {report.seconds:.1f} s")
    if report.executor == "ray" and report.generated:
        for r in report.replicas:
            restarts = f", restarted {r['restarts']}x" if r["restarts"] else ""
            lost = f", {r['lost_chunks']} chunk(s) sent again" if r["lost_chunks"] else ""
            out.print(f"  replica {r['replica']} on {esc(r['node'])}: {r['rollouts']:,} rollouts, "
                      f"{r['rollouts_per_s']:,.1f} rollouts/s while generating{restarts}{lost}", highlight=False)
    if opts.adaptive:
        total = report.generated + report.already_done
        out.print(f"adaptive: {total:,} rollouts instead of {report.rollouts_full:,} "
                  f"({1 - total / report.rollouts_full:.0%} saved)")


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder for train.jsonl, test.jsonl and images/.", callback=folder_option("--out"))],
    n: Annotated[int, typer.Option(help="Samples in all (train + test).")] = 2000,
    seed: Annotated[int, typer.Option(help="World seed; the same seed gives byte-identical files.")] = 0,
    test_fraction: Annotated[float, typer.Option(help="Share of samples in test.jsonl.")] = 0.1,
    image_size: Annotated[int, typer.Option(help="Image side in pixels.")] = 112,
    mix: Annotated[Optional[str], typer.Option(help="Capability weights, e.g. reasoning=2,perception_coarse=1,perception_fine=1 "
                                                     "(default 0.25/0.5/0.25 reasoning/coarse/fine).")] = None,
) -> None:
    """Write the shapes world: images of simple objects with perception and reasoning questions.

    Example: curate synth --out world --n 2000 --seed 0
    """
    from curate.synth import capability_mix, generate_world
    from schemas.errors import PebrError

    weights = None
    if mix is not None:
        try:
            weights = {k.strip(): float(v) for k, v in (item.split("=", 1) for item in mix.split(",") if item.strip())}
            capability_mix(weights)
        except ValueError as e:
            raise PebrError(f"--mix {mix!r}: expected CAPABILITY=WEIGHT,... with weights >= 0 over "
                            "reasoning, perception_coarse, perception_fine") from e
    with progress_bar(unit="samples") as bar:
        task = bar.add_task("synth", total=n)
        stats = generate_world(out, n=n, seed=seed, test_fraction=test_fraction, image_size=image_size,
                               progress=lambda k: bar.advance(task, k), mix=weights)
    console().print(f"{stats['n_train']:,} train + {stats['n_test']:,} test samples in [bold]{esc(out)}[/bold] "
                    f"({stats['seconds']:.1f} s): " + ", ".join(f"{k} {v:,}" for k, v in stats["by_capability"].items()))


def _quota(items: list[str]) -> dict[str, int]:
    from schemas.errors import PebrError

    out = {}
    for item in items:
        source, _, count = item.rpartition("=")
        if not source or not count.isdigit():
            raise PebrError(f"--quota {item!r}: expected SOURCE=COUNT")
        out[source] = int(count)
    return out


@app.command()
def select(
    stage: Annotated[str, typer.Option(help=" | ".join(f"{s} ({b} band)" for s, b in STAGE_BANDS.items()) + ".")],
    out: Annotated[Path, typer.Option(help="Output folder: train-*-of-*.parquet shards, manifest.json, select_drops.parquet, and --format extras.", callback=folder_option("--out"))],
    run: Annotated[Optional[str], typer.Option(help="Run whose rollouts define difficulty (default: the latest).")] = None,
    source: Annotated[Optional[list[str]], typer.Option(help="Keep only this source (repeatable).")] = None,
    capability: Annotated[Optional[list[str]], typer.Option(help="Keep only this capability (repeatable).")] = None,
    coarse_fine_mix: Annotated[Optional[float], typer.Option(help="Share of perception_coarse among perception samples.")] = None,
    quota: Annotated[Optional[list[str]], typer.Option(help="SOURCE=COUNT: most samples of a source (repeatable).")] = None,
    cap: Annotated[Optional[int], typer.Option(help="Most samples in the stage.")] = None,
    seed: Annotated[Optional[int], _opt("Seed of every random choice and of the row order.", default(SelectOptions, "seed"))] = None,
    dedup: Annotated[Optional[bool], _opt("One sample per identical problem + images.", False)] = None,
    exclude_response: Annotated[Optional[list[str]], typer.Option(help="Warm-up: leave out samples whose gold response contains this phrase, e.g. 'Let me rethink it' (repeatable).")] = None,
    where: Annotated[Optional[str], typer.Option(help="Extra SQL condition over samples and difficulty columns.")] = None,
    easy_min: Annotated[Optional[float], _opt("Easy when k >= easy_min * n.", default(SelectOptions, "easy_min"))] = None,
    hard_max: Annotated[Optional[float], _opt("Hard when k <= hard_max * n.", default(SelectOptions, "hard_max"))] = None,
    group_size: Annotated[Optional[int], _opt("GRPO group size, for the zero-advantage prediction.", default(SelectOptions, "group_size"))] = None,
    images: Annotated[Optional[str], _opt("path (absolute paths into the store's image folder) | embed (bytes: a self-contained file).", default(SelectOptions, "images"))] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="parquet | easyr1 (+ reference JSON, images, format_prompt.jinja) | sharegpt (+ LLaMA-Factory) | verl (+ verl/train.parquet).", show_default=default(SelectOptions, "format"))] = None,
    shard_rows: Annotated[Optional[int], _opt("Most rows per Parquet shard; shards are written in parallel.", default(SelectOptions, "shard_rows"))] = None,
    format_prompt: FormatPromptOpt = None,
    recipe: RecipeOpt = None,
    force: Annotated[bool, typer.Option(help="Replace an existing stage dataset in --out.")] = False,
    store: StoreOpt = Path("store"),
) -> None:
    """Write a stage dataset: the band the paper feeds to that stage, as Parquet for TRL plus a manifest.

    Example: curate select --stage perception --out stages/perception --coarse-fine-mix 0.5 --seed 1
    """
    from curate.export import usage
    from curate.select import select_options, select_stage

    values = _settings(recipe, "select", dict(
        run=run, sources=source, capabilities=capability, coarse_fine_mix=coarse_fine_mix,
        quota=_quota(quota) if quota else None, cap=cap, seed=seed, dedup=dedup, exclude_responses=exclude_response,
        where=where, easy_min=easy_min,
        hard_max=hard_max, group_size=group_size, images=images, format=fmt, shard_rows=shard_rows,
        format_prompt=format_prompt, force=force or None))
    opts = select_options(stage, out, values)
    with status(f"selecting the {stage} stage"):
        r = select_stage(_store(store), opts)
    err = console()
    z = r.zero_advantage.get("predicted")
    shards = sum(name.startswith("train-") for name in r.files)
    err.print(f"{esc(stage)}: {r.rows:,} samples ({r.band} band of run {esc(r.run_id)}: {r.band_total:,}) -> [bold]{esc(r.out)}[/bold] "
              f"({shards} Parquet shard{'s' if shards > 1 else ''})")
    err.print("  by capability: " + ", ".join(f"{esc(k)} {v:,}" for k, v in r.by_capability.items()), highlight=False)
    if z is not None:
        err.print(f"  predicted zero-advantage groups at G={r.zero_advantage['group_size']}: {z:.2f} ({esc(r.zero_advantage['predicted_basis'])})",
                  highlight=False, soft_wrap=True)
    if r.skipped_no_response:
        err.print(f"[yellow]  {r.skipped_no_response} sample(s) without a gold response left out of {esc(fmt)}[/yellow]")
    for tool, lines in usage(opts.format, r.out, stage).items():
        err.print(f"  use with {tool}:", highlight=False)
        for line in lines:
            err.print(f"    {visible(line)}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def report(
    out: Annotated[Optional[Path], typer.Option(help="Also write PNG plots, report.json and index.html here.", callback=folder_option("--out"))] = None,
    run: Annotated[Optional[str], typer.Option(help="Run to report on (default: the latest).")] = None,
    group_size: Annotated[int, typer.Option(help="GRPO group size for the zero-advantage prediction.")] = default(SelectOptions, "group_size"),
    easy_min: Annotated[float, typer.Option(help="Easy when k >= easy_min * n.")] = default(SelectOptions, "easy_min"),
    hard_max: Annotated[float, typer.Option(help="Hard when k <= hard_max * n.")] = default(SelectOptions, "hard_max"),
    store: StoreOpt = Path("store"),
) -> None:
    """Band counts, pass-rate histograms and predicted zero-advantage fractions per source and capability.

    Example: curate report --out reports/ (then open reports/index.html)
    """
    from curate.report import build_report, collect, render_report

    s = _store(store)
    if out is None:
        data = collect(s, run, group_size, easy_min, hard_max)
    else:
        data = build_report(s, out, run, group_size, easy_min, hard_max)
    render_report(data, console())
    if out is not None:
        console().print(f"plots and page in [bold]{esc(out)}[/bold] (index.html)")


@app.command()
def check(
    repair: Annotated[bool, typer.Option("--repair", help="Fix what is found: broken parts and parts of uncommitted runs "
                                         "go to <store>/quarantine/<time>/ with a note, lost images are copied back "
                                         "from their image root, the catalog is rebuilt and the cache cleared, stale "
                                         "temporary files and unreferenced images are removed.")] = False,
    store: StoreOpt = Path("store"),
) -> None:
    """Verify the store: every part, every image, the catalog and the cache; one line per thing that is wrong.

    Exits 1 when a problem is found (or is left after --repair); leftovers (stale temporary files,
    unreferenced images) are listed but do not fail the check.

    Example: curate check --store store (then: curate check --repair --store store)
    """
    from curate.check import check_store
    from schemas.cli import visible

    report = check_store(_store(store).require(), repair=repair)

    def show(findings) -> None:
        for f in findings:
            print(visible(("leftover: " if f.leftover else "") + f.line()))

    show(report.findings)
    for line in report.repairs:
        print(visible(f"repaired: {line}"))
    err = console()
    if repair and report.findings:
        if report.remaining:
            print("after the repair:")
            show(report.remaining)
        if report.quarantine is not None:
            err.print(f"what was moved and why: {report.quarantine / 'note.txt'}", markup=False, highlight=False,
                      soft_wrap=True)
    problems = len(report.problems)
    leftovers = sum(f.count for f in (report.remaining if report.remaining is not None else report.findings) if f.leftover)
    if problems:
        hint = ("" if repair else ": `curate check --repair` fixes what can be fixed (broken and orphan files go to "
                "quarantine/, with a note)")
        err.print(f"{problems} problem(s){f', {leftovers} leftover(s)' if leftovers else ''}{hint}", markup=False,
                  highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    if leftovers:
        err.print(f"the store is consistent; {leftovers} leftover(s), which `curate check --repair` removes",
                  markup=False, highlight=False, soft_wrap=True)
    else:
        err.print("the store is consistent" + (" now" if repair and report.findings else ""), markup=False, highlight=False)


class _StoreErrors(typer.core.TyperGroup):
    """Every command of `curate`: an error that a broken store file or a full disk caused ends in one line
    that says what to do (`curate.store.store_error`), not in DuckDB's text or a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            from curate.store import store_error

            error = store_error(exc)
            if error is None:
                raise
            raise error from exc


app.info.cls = _StoreErrors


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
