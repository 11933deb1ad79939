"""Printing is safe: data and file names are shown literally, never read as rich markup or sent to the terminal
as control sequences; paths that cannot work and bad settings end in one clear line (issue 15, findings 8, 11)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from conftest import make_image, record, write_jsonl

MARKUP = "[/bold] [link=http://x]y[/link] [bold red]loud"
ESC = "\x1b[31mred\x1b[0m \x1b]8;;http://evil\x1b\\click\x1b]8;;\x1b\\ over\rwrite \x07bell \x9bc1 \u202eevil"
RAW_CONTROLS = ("\x1b", "\r", "\x07", "\x9b", "\u202e")
"""What must never reach a terminal from data (ESC, CR, BEL, a C1 control, a bidi override)."""


def run(*args, env=None):
    env = {**os.environ, "COLUMNS": "400", **(env or {})}  # one table row per line, so texts are not wrapped
    env.pop("PEBR_DEBUG", None)
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=300)


def assert_clean(r, rc=0):
    both = r.stdout + r.stderr
    assert r.returncode == rc, both[-2000:]
    assert "Traceback" not in both and "MarkupError" not in both, both[-2000:]


def assert_no_raw_controls(text):
    for c in RAW_CONTROLS:
        assert c not in text, f"raw {c!r} reached the terminal: {text[-1000:]!r}"


def one_line(r):
    return r.stderr.strip().count("\n") == 0


@pytest.fixture(scope="module")
def hostile_text(tmp_path_factory):
    """A store ingested from `w[/[bold]i].jsonl` (markup in the path and the file name, so in the default source
    `[bold]i]`), with markup and
    control characters in problems, answers and sources, and a rollout run imported from `r[/i].jsonl`."""
    tmp = tmp_path_factory.mktemp("safety")
    root = tmp / "imgs"
    make_image(root / "a.png")
    make_image(root / "b.png", color=(0, 0, 255))
    make_image(root / "c.png", color=(0, 255, 0))
    rows = [
        record("q-markup", problem=f"What is {MARKUP} in <image>?", answer="[link=http://x]y[/link]", source="src[/bold]"),
        record("q-ctrl", problem=f"Count <image> {ESC}", answer="\x1b[2J", images=["b.png"], source="ctl\x1b[31m"),
        record("q-stem", problem="Which colour is <image>? trailing\\", answer="green", images=["c.png"]),
    ]
    (tmp / "w[").mkdir()
    (tmp / "r[").mkdir()
    data = write_jsonl(tmp / "w[/[bold]i].jsonl", rows)
    store = tmp / "store"
    ingest = run("curate.cli", "ingest", str(data), "--image-root", str(root), "--store", str(store))
    dump = tmp / "r[/i].jsonl"
    # q-markup and q-stem medium (2 of 4 correct), q-ctrl hard (0 of 4)
    dump.write_text("".join(json.dumps({"qid": q, "response": "r", "score": {"accuracy": float(i < k)}}) + "\n"
                            for q, k in (("q-markup", 2), ("q-ctrl", 0), ("q-stem", 2)) for i in range(4)))
    imported = run("curate.cli", "import-rollouts", str(dump), "--store", str(store))
    return {"tmp": tmp, "data": data, "store": store, "ingest": ingest, "import": imported}


def test_ingest_and_import_of_files_named_with_markup(hostile_text):
    r = hostile_text["ingest"]
    assert_clean(r)
    assert "[bold]i].jsonl" in r.stderr and "accepted" in r.stderr
    again = run("curate.cli", "ingest", str(hostile_text["data"]), "--image-root", str(hostile_text["tmp"] / "imgs"),
                "--store", str(hostile_text["store"]))
    assert_clean(again)
    assert f"{hostile_text['data']} was already ingested" in again.stderr
    r = hostile_text["import"]
    assert_clean(r)
    assert "12 rollouts from 12 lines" in r.stderr


def test_sql_table_shows_data_literally_with_controls_escaped(hostile_text):
    r = run("curate.cli", "sql", "select qid, source, problem, answer from samples order by qid",
            "--store", str(hostile_text["store"]))
    assert_clean(r)
    assert_no_raw_controls(r.stdout + r.stderr)
    out = r.stdout
    assert MARKUP in out and "[link=http://x]y[/link]" in out and "src[/bold]" in out and "[bold]i]" in out
    assert "trailing\\" in out
    assert "\\x1b[31mred\\x1b[0m" in out and "\\x1b]8;;http://evil" in out and "over\\rwrite" in out
    assert "\\x07bell" in out and "\\x9bc1" in out and "\\u202eevil" in out and "\\x1b[2J" in out
    assert "ctl\\x1b[31m" in out


def test_sql_csv_and_json_stay_exact(hostile_text):
    query = "select qid, source, problem, answer from samples order by qid"
    r = run("curate.cli", "sql", "--format", "json", query, "--store", str(hostile_text["store"]))
    assert_clean(r)
    got = {row["qid"]: row for row in json.loads(r.stdout)}
    assert got["q-ctrl"]["problem"] == f"Count <image> {ESC}" and got["q-ctrl"]["source"] == "ctl\x1b[31m"
    assert got["q-markup"]["problem"] == f"What is {MARKUP} in <image>?"
    assert got["q-stem"]["source"] == "[bold]i]"
    r = subprocess.run([sys.executable, "-m", "curate.cli", "sql", "--format", "csv", query, "--store",
                        str(hostile_text["store"])], capture_output=True, timeout=300)
    assert r.returncode == 0
    assert f"Count <image> {ESC}".encode() in r.stdout and b"ctl\x1b[31m" in r.stdout


def test_report_table_shows_sources_literally(hostile_text):
    r = run("curate.cli", "report", "--store", str(hostile_text["store"]))
    assert_clean(r)
    both = r.stdout + r.stderr
    assert_no_raw_controls(both)
    assert "src[/bold]" in both and "[bold]i]" in both and "ctl\\x1b[31m" in both


def test_select_summary_shows_the_out_path_literally(hostile_text):
    out = hostile_text["tmp"] / "stage[/i]\x1b[31m"
    r = run("curate.cli", "select", "--stage", "reasoning", "--out", str(out), "--store", str(hostile_text["store"]))
    assert_clean(r)
    assert_no_raw_controls(r.stdout + r.stderr)
    assert "reasoning: 2 samples" in r.stderr and "stage[/i]\\x1b[31m" in r.stderr


@pytest.mark.parametrize("argv", [
    ["score", "--model", "[/bold]x\x1b[2J"],
    ["regrade", "--run", "[/bold]x\x1b[2J"],
    ["report", "--run", "[/bold]x\x1b[2J"],
])
def test_errors_quoting_user_text_are_one_literal_line(hostile_text, argv):
    r = run("curate.cli", *argv, "--store", str(hostile_text["store"]))
    assert_clean(r, rc=2)
    assert_no_raw_controls(r.stderr)
    last = r.stderr.strip().splitlines()[-1]  # after the progress bar, if one was drawn
    assert last.startswith("error:") and "[/bold]x\\x1b[2J" in last


def test_error_with_markup_in_a_missing_file_name(tmp_path):
    r = run("curate.cli", "ingest", str(tmp_path / "[/i]missing[link=x]y[/link].jsonl"), "--image-root",
            str(tmp_path), "--store", str(tmp_path / "s"))
    assert_clean(r, rc=2)
    assert one_line(r) and "[/i]missing[link=x]y[/link].jsonl" in r.stderr and "no such file" in r.stderr


@pytest.mark.parametrize("argv", [
    ["curate.cli", "ingest", "{data}", "--image-root", "{tmp}", "--store", "{file}"],
    ["curate.cli", "ingest", "{data}", "--image-root", "{tmp}", "--store", "{file}/sub"],
    ["curate.cli", "sql", "select 1", "--store", "{file}"],
    ["curate.cli", "synth", "--out", "{file}", "--n", "4"],
    ["curate.cli", "synth", "--out", "{file}/sub", "--n", "4"],
    ["curate.cli", "select", "--stage", "reasoning", "--out", "{file}", "--store", "{tmp}/store"],
    ["curate.cli", "report", "--out", "{file}", "--store", "{tmp}/store"],
    ["curate.cli", "grade", "{data}", "--out", "{tmp}"],
    ["train.cli", "init-tiny", "--out", "{file}"],
    ["train.cli", "run", "--stage", "warmup", "--model", "m", "--data", "d", "--out", "{file}"],
])
def test_out_or_store_that_is_a_file_is_one_clear_line(tmp_path, argv):
    if argv[0] == "train.cli":
        pytest.importorskip("train.cli")
    file = tmp_path / "taken[bold]x"
    file.write_text("not a folder")
    data = write_jsonl(tmp_path / "d.jsonl", [record("q")])
    args = [a.format(tmp=tmp_path, file=file, data=data) for a in argv]
    r = run(*args, env={"PEBR_STORE": ""})
    assert_clean(r, rc=2)
    assert one_line(r), r.stderr
    assert "Error" not in r.stderr  # no FileExistsError / NotADirectoryError / IsADirectoryError
    bad = next(a for a in args if a.startswith(str(file)) or a == str(tmp_path))
    assert str(file if bad.startswith(str(file)) else tmp_path) in r.stderr
    assert file.read_text() == "not a folder"


def test_store_from_the_environment_that_is_a_file(tmp_path):
    file = tmp_path / "f"
    file.write_text("x")
    r = run("curate.cli", "sql", "select 1", env={"PEBR_STORE": str(file)})
    assert_clean(r, rc=2)
    assert one_line(r) and str(file) in r.stderr and "not a folder" in r.stderr


def test_a_bad_set_value_is_one_clear_line(tmp_path):
    pytest.importorskip("train.cli")
    r = run("train.cli", "run", "--stage", "perception", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "d"),
            "--out", str(tmp_path / "o"), "--set", "max_steps=abc")
    assert_clean(r, rc=2)
    assert one_line(r) and "max_steps" in r.stderr and "'abc'" in r.stderr and "TypeError" not in r.stderr


# The helpers, in-process.

def test_visible_escapes_controls_but_keeps_text_newlines_and_tabs():
    from schemas.cli import visible

    assert visible("a\x1b[31mb\rc\x07d\x9be\u202ef\x00g\x7fh") == "a\\x1b[31mb\\rc\\x07d\\x9be\\u202ef\\x00g\\x7fh"
    assert visible("two\nlines\tand tab, é, 中文, emoji 🙂") == "two\nlines\tand tab, é, 中文, emoji 🙂"
    assert visible(3) == "3"


@pytest.mark.parametrize("text", [MARKUP, "[link=http://x]y[/link]", "end\\", "a\\[bold]b", ":warning: [i]",
                                  "[red]" + ESC, "w[/i].jsonl"])
def test_esc_and_cell_show_text_literally(text):
    from rich.console import Console
    from rich.table import Table

    from schemas.cli import cell, console, esc, visible

    out = console(file=io.StringIO(), width=400)
    out.print(f"[bold]{esc(text)}[/bold] after", highlight=False)
    out.print(esc(text), highlight=False)
    t = Table("c")
    t.add_row(cell(text))
    Console(file=out.file, width=400).print(t)
    printed = out.file.getvalue()
    assert f"{visible(text)} after\n{visible(text)}\n" in printed
    assert f"│ {visible(text)} │" in printed
    assert_no_raw_controls(printed)


def test_write_result_table_mode_is_literal_and_csv_json_exact():
    import pyarrow as pa

    from curate.sql import write_result

    table = pa.table({"[bold]col": [f"x{ESC}", "[/bold]"], "n": [1, None]})
    buf = io.StringIO()
    write_result(table, "table", buf)
    assert_no_raw_controls(buf.getvalue())
    assert "[bold]col" in buf.getvalue() and "[/bold]" in buf.getvalue() and "x\\x1b[31mred" in buf.getvalue()
    buf = io.StringIO()
    write_result(table, "json", buf)
    assert json.loads(buf.getvalue())[0] == {"[bold]col": f"x{ESC}", "n": 1}
    buf = io.StringIO()
    write_result(table, "csv", buf)
    import csv

    assert list(csv.reader(io.StringIO(buf.getvalue(), newline=""))) == [["[bold]col", "n"], [f"x{ESC}", "1"], ["[/bold]", ""]]


def test_the_helpers_docstring_examples_hold():
    import doctest

    import schemas.cli

    result = doctest.testmod(schemas.cli)
    assert result.attempted >= 2 and result.failed == 0
