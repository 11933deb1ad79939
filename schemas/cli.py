"""Command-line conventions shared by `curate` and `train`: the --store option, output formats, progress bars, errors,
and safe printing.

Safe printing: text that comes from data, files or the user (problems, sources, file names, run ids, error
messages quoting them) is never read as rich markup and never reaches the terminal as control sequences.
Interpolate it into markup with `esc(value)`, put it in a table as `cell(value)`, or print it with `markup=False`;
`visible(value)` alone writes control characters as escapes. CSV and JSON outputs are exact and use none of these.

Only typer and rich are imported at module level, so `--help` stays instant.
"""

from __future__ import annotations

import os
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""C0 controls but tab and newline, DEL, C1 controls, and the bidi embeddings, overrides and isolates."""


def visible(value) -> str:
    r"""`value` as text with its control characters written as escapes (ESC as `\x1b`, CR as `\r`, U+202E as
    `\u202e`), so data shown on a terminal cannot recolour, move the cursor, link, overwrite or reorder it.
    Newlines and tabs stay (a multi-line problem is still multi-line in a table cell).

    >>> visible("a\x1b[31mb\rc\u202e")
    'a\\x1b[31mb\\rc\\u202e'
    """
    return _CONTROLS.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(value))


def esc(value) -> str:
    r"""`value` for an f-string of rich markup: shown literally (brackets escaped, control characters visible).

    >>> esc("[/bold] in w[/i].jsonl")
    '\\[/bold] in w\\[/i].jsonl'
    """
    from rich.markup import escape

    text = escape(visible(value))
    # rich doubles a trailing backslash so that it cannot escape a tag that follows; an empty span takes that
    # place when nothing does, so the backslash shows once either way
    return text + "[dim][/dim]" if text.endswith("\\") else text


def cell(value, style: str = ""):
    """`value` as a rich table cell shown literally: a `Text`, so no markup or emoji codes, control characters visible."""
    from rich.text import Text

    return Text(visible(value), style=style)


def _in_the_way(path: Path) -> Path | None:
    """The first of `path` and its parents that exists and is not a folder, or None when `path` can be a folder."""
    for p in (path, *path.parents):
        if p.is_dir():
            return None
        if p.exists() or p.is_symlink():
            return p
    return None


def _blocked(flag: str, path: Path, blocker: Path):
    from schemas.errors import PebrError

    where = "" if blocker == path else f"{blocker} "
    return PebrError(f"{flag} {path}: {where}{'is a file, not a folder' if blocker.is_file() else 'is not a folder'}")


def folder_option(flag: str):
    """A typer callback for an option naming a folder to read or create: a file there (or where a folder above it
    should be) is one clear error at parse time, before any work, instead of an OS error from deep inside."""

    def check(value):
        if value is None:
            return None
        path = Path(value)
        blocker = _in_the_way(path)
        if blocker is not None:
            raise _blocked(flag, path, blocker)
        return path

    return check


def file_option(flag: str):
    """A typer callback for an option naming a file to write: a folder there, or a file where its folder should
    be, is one clear error at parse time."""

    def check(value):
        from schemas.errors import PebrError

        if value is None:
            return None
        path = Path(value)
        if path.is_dir():
            raise PebrError(f"{flag} {path}: is a folder, not a file")
        blocker = _in_the_way(path.parent)
        if blocker is not None:
            raise _blocked(flag, path, blocker)
        return path

    return check


StoreOpt = Annotated[
    Path,
    typer.Option("--store", envvar="PEBR_STORE", help="Store directory (default $PEBR_STORE, else ./store).",
                 show_default="./store", callback=folder_option("--store")),
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

    class DescriptionColumn(ProgressColumn):
        """The task's description as plain text (it names files and runs): no markup."""

        def render(self, task):
            return cell(task.description, style="bold")

    return Progress(
        DescriptionColumn(), BarColumn(), MofNCompleteColumn(), RateColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        transient=transient, console=console(),
    )


def console(**kwargs):
    """The console our commands report on: stderr, no emoji codes (`:warning:` in data stays text)."""
    from rich.console import Console

    return Console(**{"stderr": True, "emoji": False, **kwargs})


def status(message: str):
    """A rich spinner with `message` (plain text, no markup) while a step runs; on a terminal only (a log has nothing
    to show)."""
    import contextlib

    out = console()
    return out.status(cell(message)) if out.is_terminal else contextlib.nullcontext()


def run_app(app: typer.Typer) -> None:
    """Run a typer app; our user errors end in one red line and exit code 2, not a traceback."""
    from schemas.errors import PebrError

    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except PebrError as exc:
        console().print(f"[red]error:[/red] {esc(exc)}", highlight=False, soft_wrap=True)
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
        console().print(f"[red]error:[/red] {type(exc).__name__}: {esc(exc)} (set PEBR_DEBUG=1 for the traceback)",
                        highlight=False, soft_wrap=True)
        sys.exit(1)
