"""The `train` command line: warm-up SFT, two-stage GRPO, evaluation, and the tiny offline VLM and CLIP models.

Heavy libraries (torch, transformers, TRL) are imported inside the commands that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from schemas import TRAIN_STAGES
from schemas.cli import (
    cell,
    console,
    esc,
    file_option,
    folder_option,
    progress_bar,
    run_app,
    status,
)
from schemas.cli import default_option as _opt
from train.config import (
    EvalConfig,  # option defaults are read from it (cheap: no torch)
)

_EV = EvalConfig

app = typer.Typer(
    name="train",
    help="Train VLMs perception-first: warm-up SFT, then GRPO on perception, then on reasoning (TRL underneath).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command("init-tiny")
def init_tiny(
    out: Annotated[Path, typer.Option(help="Directory to write the model to.", callback=folder_option("--out"))],
    corpus: Annotated[Optional[Path], typer.Option(help="JSONL whose problem/response/answer texts train the tokenizer.")] = None,
    seed: Annotated[int, typer.Option(help="Weight and tokenizer seed.")] = 0,
    size: Annotated[Optional[list[str]], typer.Option(help="Override a TinyModelConfig field: key=value (repeatable).")] = None,
    arch: Annotated[str, typer.Option(help="qwen2_vl | qwen2_5_vl (the paper's family: windowed vision attention).")] = "qwen2_vl",
) -> None:
    """Build a tiny random-weight Qwen2-VL or Qwen2.5-VL (offline, seconds) that Auto classes and vLLM load.

    Example: train init-tiny --out models/tiny25 --arch qwen2_5_vl --corpus world/train.jsonl
    """
    import json

    from schemas.config import parse_overrides
    from schemas.errors import PebrError
    from train.tiny import ARCHS, build_tiny_model

    if arch not in ARCHS:
        raise PebrError(f"--arch {arch!r}: choose one of {', '.join(ARCHS)}")

    texts = None
    if corpus is not None:
        if not corpus.is_file():
            raise PebrError(f"--corpus {corpus}: no such file")
        texts = []
        for line in corpus.read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                texts += [str(rec[k]) for k in ("problem", "response", "answer") if rec.get(k) is not None]
    with status("building the tiny model"):
        try:
            path = build_tiny_model(out, corpus=texts, seed=seed, arch=arch, **parse_overrides(size or []))
        except (TypeError, ValueError) as exc:
            raise PebrError(f"--size: {exc}") from None
    name = {"qwen2_vl": "Qwen2-VL", "qwen2_5_vl": "Qwen2.5-VL"}[arch]
    console().print(f"tiny {name} written to [bold]{esc(path)}[/bold]")


@app.command("init-clip")
def init_clip(
    data: Annotated[Path, typer.Option(help="World JSONL from `curate synth` (images, gold response, scene).")],
    out: Annotated[Path, typer.Option(help="Directory to write the model to.", callback=folder_option("--out"))],
    seed: Annotated[Optional[int], typer.Option(help="Seed of the weights, the held-out split, the batches and the negatives.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the training images.")] = None,
    image_root: Annotated[Optional[Path], typer.Option(help="Folder image paths are relative to (default: the data file's).")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="Recipe YAML: its `clip` section gives the settings; flags override them.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a TinyClipConfig field: key=value (repeatable).")] = None,
) -> None:
    """Train a tiny CLIP (offline, CPU minutes) on a shapes world for the clip reward; writes pebr_clip.json.

    The run record holds held-out similarities and the reward settings to use with the model
    (``reward_config``: clip_model_path, clip_threshold, clip_image_size, clip_text_max_tokens).

    Example: train init-clip --data world/train.jsonl --out models/tiny_clip
    """
    import json

    from schemas.config import (
        build,
        load_recipe,
        merge,
        parse_overrides,
        recipe_section,
    )
    from schemas.errors import PebrError
    from train.tiny_clip import TinyClipConfig, train_tiny_clip

    if not data.is_file():
        raise PebrError(f"--data {data}: no such file")
    flags = {k: v for k, v in {"seed": seed, "epochs": epochs}.items() if v is not None}
    cfg = build(TinyClipConfig, merge(merge(recipe_section(load_recipe(recipe), "clip"), parse_overrides(set_ or [])), flags),
                "clip")
    bar = progress_bar(unit="steps")
    tasks: dict[str, int] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done)

    with bar:
        try:
            record = train_tiny_clip(data, out, cfg, image_root=image_root, progress=progress)
        except (ValueError, FileNotFoundError) as exc:
            raise PebrError(f"--data {data}: {exc}") from None
    sim = record["similarity"]
    console().print(f"tiny CLIP written to [bold]{esc(out)}[/bold] in {record['seconds']['total']:.0f} s; held-out "
                    f"similarity {sim['matching']['mean']:.2f} (shuffled {sim['shuffled']['mean']:.2f}); reward settings: "
                    + esc(json.dumps(record["reward_config"])))


@app.command()
def run(
    stage: Annotated[str, typer.Option(help=" | ".join(TRAIN_STAGES))],
    model: Annotated[Path, typer.Option(help="Model directory to start from.")],
    data: Annotated[Path, typer.Option(help="Stage dataset dir from `curate select`, or JSONL/Parquet records.")],
    out: Annotated[Path, typer.Option(help="Output directory (model, checkpoints, TensorBoard logs, run record).",
                                      callback=folder_option("--out"))],
    recipe: Annotated[Optional[Path], typer.Option(help="Recipe YAML (pipelines/pebr.yaml, pipelines/demo.yaml).")] = None,
    image_root: Annotated[Optional[Path], typer.Option(help="Folder image paths are relative to (default: the data file's).")] = None,
    resume: Annotated[bool, typer.Option(help="Resume from the last checkpoint in --out.")] = False,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config field: key=value, rewards.key=value (repeatable).")] = None,
) -> None:
    """Train one stage: warm-up SFT, or GRPO with the stage's reward (paper defaults, recipe, then --set).

    Example: train run --stage perception --model runs/warmup --data stages/perception --out runs/stage1 --recipe pipelines/pebr.yaml
    """
    from dataclasses import asdict

    from train.config import load_recipe, parse_overrides, stage_config

    cfg = stage_config(stage, load_recipe(recipe), parse_overrides(set_ or []))
    out_console = console()
    out_console.print(f"[bold]{esc(stage)}[/bold] with " + ", ".join(esc(f"{k}={v}") for k, v in asdict(cfg).items()),
                      highlight=False)
    if stage == "warmup":
        from train.warmup import run_warmup

        r = run_warmup(model, data, out, cfg, image_root=image_root, resume=resume, callbacks=[_progress_callback()])
        if r.skipped:
            out_console.print(f"[yellow]not trained on: {esc(r.skipped)}[/yellow]")
        out_console.print(f"warm-up: {r.rows} rows, {r.steps} steps, loss {r.first_loss:.3f} -> {r.last_loss:.3f} "
                          f"in {r.seconds:.0f} s; model in [bold]{esc(out)}[/bold]")
        return
    from train.grpo import run_stage

    r = run_stage(model, data, out, cfg, image_root=image_root, resume=resume, callbacks=[_progress_callback()])
    if r.skipped:
        out_console.print(f"[yellow]not trained on: {esc(r.skipped)}[/yellow]")
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    out_console.print(f"{esc(stage)}: {r.steps} steps in {r.seconds:.0f} s; model in [bold]{esc(out)}[/bold]")
    out_console.print(f"zero-advantage groups: predicted {fmt(r.predicted_zero_adv)}, observed {fmt(r.observed_zero_adv)}")


def _progress_callback():
    """A TrainerCallback showing a rich progress bar (steps, rate, ETA) over training."""
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        """Replaces transformers' printed log dicts with one progress bar (steps, rate, ETA, loss)."""

        def __init__(self):
            self.bar = None

        def on_train_begin(self, args, state, control, **kw):
            self.bar = progress_bar(unit="steps")
            self.bar.start()
            self.task = self.bar.add_task("train", total=state.max_steps)

        def on_step_end(self, args, state, control, **kw):
            self.bar.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kw):
            # Metrics go to TensorBoard; the bar shows the one a person watches.
            shown = {k: logs[k] for k in ("loss", "reward", "frac_reward_zero_std") if logs and k in logs}
            if shown:
                self.bar.update(self.task, description="train " + " ".join(f"{k} {v:.3g}" for k, v in shown.items()))

        def on_train_end(self, args, state, control, **kw):
            self.bar.stop()

    return RichProgress()


@app.command("eval")
def eval_(
    model: Annotated[Path, typer.Option(help="Model directory.")],
    data: Annotated[Path, typer.Option(help="Held-out records (JSONL/Parquet) or a stage dataset dir.")],
    temperature: Annotated[Optional[float], _opt("0 = greedy; the paper validates at 0.5.", _EV.temperature)] = None,
    top_p: Annotated[Optional[float], _opt("Nucleus mass when sampling.", _EV.top_p)] = None,
    max_new_tokens: Annotated[Optional[int], _opt("Longest answer.", _EV.max_new_tokens)] = None,
    batch_size: Annotated[Optional[int], _opt("Sequences per forward pass.", _EV.batch_size)] = None,
    limit: Annotated[Optional[int], typer.Option(help="Only the first N records.")] = None,
    seed: Annotated[Optional[int], _opt("Run seed: a question's seed derives from (seed, sample id), as in curate score.", _EV.seed)] = None,
    format_prompt: Annotated[Optional[Path], typer.Option(help="Format prompt file (Jinja over `content`, EasyR1's convention) for records without a prompt; use the one the model was trained with.")] = None,
    recipe: Annotated[Optional[Path], typer.Option(help="Recipe YAML: its `eval` section gives the settings; flags override them.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override an EvalConfig field: key=value (repeatable).")] = None,
    image_root: Annotated[Optional[Path], typer.Option(help="Folder image paths are relative to.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Also write the result as JSON here.",
                                                     callback=file_option("--json"))] = None,
    responses: Annotated[Optional[Path], typer.Option(help="Write every response with its grade (JSONL).",
                                                      callback=file_option("--responses"))] = None,
) -> None:
    """Accuracy per capability and source on a held-out set, as a table and JSON.

    Example: train eval --model runs/stage2 --data world/test.jsonl --temperature 0.5 --json eval.json
    """
    import json
    from dataclasses import asdict

    from rich.table import Table

    from schemas.config import merge
    from train.config import load_recipe, parse_overrides, stage_config
    from train.evaluate import evaluate

    flags = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit,
                 seed=seed, format_prompt=str(format_prompt) if format_prompt else None)
    cfg = stage_config("eval", load_recipe(recipe),
                       merge(parse_overrides(set_ or []), {k: v for k, v in flags.items() if v is not None}))
    if responses:
        responses.parent.mkdir(parents=True, exist_ok=True)
    with progress_bar(unit="prompts") as bar:
        task = bar.add_task("eval", total=None)

        def progress(advance: int, total: int | None = None) -> None:
            if total is not None:
                bar.update(task, total=total)
            bar.advance(task, advance)

        result = evaluate(model, data, cfg, image_root=image_root, progress=progress, responses_out=responses)
    table = Table(title=f"{esc(model)} on {esc(data)}")
    for col in ("group", "n", "accuracy"):
        table.add_column(col)
    for kind, groups in (("capability", result.by_capability), ("source", result.by_source)):
        for name, v in groups.items():
            table.add_row(cell(f"{kind}: {name}"), str(v["n"]), f"{v['accuracy']:.3f}")
    table.add_row("[bold]all", str(result.n), f"[bold]{result.accuracy:.3f}")
    console().print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(asdict(result), indent=2))


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
