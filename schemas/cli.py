"""Command-line conventions shared by `curate` and `train`: the --store option, output formats, progress bars, errors.

Only typer and rich are imported at module level, so `--help` stays instant.
"""

from __future__ import annotations

import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

StoreOpt = Annotated[
    Path,
    typer.Option("--store", envvar="PEBR_STORE", help="Store directory (default $PEBR_STORE, else ./store).",
                 show_default="./store"),
]


def default_option(help: str, value):
    """An option whose default lives in an options class: None in the signature (so a recipe can set
    it, and flags given override the recipe), the class's value shown in the help."""
    return typer.Option(help=help, show_default=str(value))


class OutFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


FormatOpt = Annotated[OutFormat, typer.Option("--format", help="Output: a rich table, or CSV / JSON for scripts.")]


def progress_bar(*, transient: bool = False, unit: str = "it"):
    """A rich progress bar with count, rate and ETA, used by every long step."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="cyan")

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        transient=transient, console=console(),
    )


def console():
    from rich.console import Console

    return Console(stderr=True)


def status(message: str):
    """A rich spinner with `message` while a step runs; on a terminal only (a log has nothing to show)."""
    import contextlib

    out = console()
    return out.status(message) if out.is_terminal else contextlib.nullcontext()


def run_app(app: typer.Typer) -> None:
    """Run a typer app; our user errors end in one red line and exit code 2, not a traceback."""
    from schemas.errors import PebrError

    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except PebrError as exc:
        console().print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console().print("[yellow]interrupted[/yellow]")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except Exception as exc:  # noqa: BLE001
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        if os.environ.get("PEBR_DEBUG"):
            raise
        console().print(f"[red]error:[/red] {type(exc).__name__}: {exc} (set PEBR_DEBUG=1 for the traceback)", highlight=False,
                        soft_wrap=True)
        sys.exit(1)
