"""The `curate` command line: a thin layer over the library; each command builds options and calls one function.

Heavy libraries (torch, transformers, vllm, datasets) are imported inside the commands that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.cli_common import FormatOpt, OutFormat, StoreOpt, console, progress_bar, run_app

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

    from curate.ingest import REASONS, IngestOptions, ingest as run_ingest

    opts = IngestOptions(path=path, image_root=image_root, source=source, capability=capability, split=split)
    with progress_bar(transient=True, unit="records") as bar:
        task = bar.add_task(f"ingest {path.name}", total=None)
        report = run_ingest(_store(store), opts, progress=lambda k: bar.advance(task, k))
    out = console()
    if report.already_ingested:
        out.print(f"{path} was already ingested by run {report.already_ingested}: nothing added")
        return
    table = Table(title=f"ingest {path.name} -> run {report.run_id}")
    table.add_column("outcome")
    table.add_column("records", justify="right")
    table.add_row("[green]accepted", str(report.accepted))
    for reason, count in sorted(report.rejected.items()):
        table.add_row(f"[red]rejected: {reason}[/red] ({REASONS[reason]})", str(count))
    table.add_row("[bold]records read", str(report.records))
    out.print(table)
    unreadable = sum(report.rejected[r] for r in ("bad_utf8", "bad_json", "not_an_object"))
    if unreadable == report.records:
        out.print("[red]error:[/red] no record could be read")
        raise typer.Exit(1)


@app.command("import-rollouts")
def import_rollouts(
    file: Annotated[Path, typer.Argument(help="rollout_results.jsonl (PeBR/EasyR1) or a verl rollout_data_dir JSONL.")],
    source: Annotated[Optional[str], typer.Option(help="Match qids only against samples of this source.")] = None,
    fmt: Annotated[Optional[str], typer.Option("--format", help="pebr | verl (default: sniffed from the first line).")] = None,
    qid_field: Annotated[Optional[str], typer.Option(help="verl: the field holding the question id.")] = None,
    correct_threshold: Annotated[float, typer.Option(help="A rollout is correct when its accuracy >= this.")] = 1.0,
    store: StoreOpt = Path("store"),
) -> None:
    """Import another trainer's rollout dump as a new run, joined to samples by qid.

    Example: curate import-rollouts outputs/rollout_results.jsonl --source geoqa
    """
    from curate.importer import import_rollouts as run_import

    with console().status(f"importing {file.name} with DuckDB"):
        r = run_import(_store(store), file, source=source, fmt=fmt, qid_field=qid_field, correct_threshold=correct_threshold)
    out = console()
    out.print(f"run [bold]{r.run_id}[/bold]: {r.rollouts:,} rollouts from {r.lines:,} lines")
    if r.unreadable:
        out.print(f"[yellow]{r.unreadable:,} line(s) could not be parsed and were skipped[/yellow]")
    if r.unmatched_rollouts:
        out.print(f"[yellow]{r.unmatched_rollouts:,} rollout(s) of {r.unmatched_qids:,} qid(s) match no sample; "
                  "kept with sample_id NULL (query: select * from rollouts where sample_id is null)[/yellow]")


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="A read-only SQL query over samples, rejects, rollouts, runs, difficulty.")],
    fmt: FormatOpt = OutFormat.table,
    store: StoreOpt = Path("store"),
) -> None:
    """Run read-only SQL over the store's views.

    Example: curate sql --format csv "select band, count(*) from difficulty group by band"
    """
    from curate.sql import run_query, write_result

    result = run_query(_store(store).require(), query)
    write_result(result, fmt.value)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
