"""The command lines as a user runs them: real processes, real exit codes, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=300)


def _commands(module):
    import importlib

    import typer.main

    app = importlib.import_module(module).app
    return [c.name for c in typer.main.get_command(app).commands.values()]


@pytest.mark.parametrize("module", ["curate.cli", "train.cli"])
def test_every_command_has_help_with_an_example_and_no_heavy_imports(module):
    if module == "train.cli":
        pytest.importorskip("train.cli")
    names = _commands(module)
    assert names
    probe = (
        "import sys, runpy; sys.argv = ['x', '--help']\n"
        f"try: runpy.run_module('{module}', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'vllm', 'trl', 'datasets', 'duckdb', 'pyarrow') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert "HEAVY []" in out.stdout, out.stdout[-500:]
    for name in names:
        r = run(module, name, "--help")
        assert r.returncode == 0, r.stderr
        assert "Example:" in r.stdout, f"{module} {name} has no example in its help"


def test_ingest_hostile_file_prints_summary_and_no_traceback(tmp_path, hostile):
    path, root, accepted, reasons = hostile
    store = tmp_path / "store"
    r = run("curate.cli", "ingest", str(path), "--image-root", str(root), "--store", str(store))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert "image_outside_root" in r.stderr and "accepted" in r.stderr
    r = run("curate.cli", "sql", "--format", "csv", "select count(*) from samples", env={"PEBR_STORE": str(store)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["count_star()", str(accepted)]
    r = run("curate.cli", "sql", "--format", "json", "--store", str(store),
            "select reason, count(*) as n from rejects group by reason order by reason")
    got = {row["reason"]: row["n"] for row in json.loads(r.stdout)}
    assert sum(got.values()) == len(reasons)


def test_user_errors_are_one_line(tmp_path):
    r = run("curate.cli", "ingest", str(tmp_path / "missing.jsonl"), "--image-root", str(tmp_path), "--store", str(tmp_path / "s"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "no such file" in r.stderr
    r = run("curate.cli", "sql", "select 1", "--store", str(tmp_path / "nostore"))
    assert r.returncode == 2 and "no store" in r.stderr
    (tmp_path / "s2" / "tables").mkdir(parents=True)
    r = run("curate.cli", "sql", "drop view samples", "--store", str(tmp_path / "s2"))
    assert r.returncode == 2 and "read-only" in r.stderr and "Traceback" not in r.stderr


def test_nothing_readable_exits_nonzero(tmp_path):
    (tmp_path / "junk.jsonl").write_text("{nope\n[1]\n")
    r = run("curate.cli", "ingest", str(tmp_path / "junk.jsonl"), "--image-root", str(tmp_path), "--store", str(tmp_path / "s"))
    assert r.returncode == 1 and "no record could be read" in r.stderr


def test_a_recipe_section_gives_the_settings_and_flags_override_it(tmp_path):
    from conftest import small_store

    store = small_store(tmp_path, n=4)
    dump = tmp_path / "rollouts.jsonl"
    qids = [q for (q,) in store.connect().execute("select qid from samples").fetchall()]
    dump.write_text("".join(json.dumps({"qid": q, "response": "r", "score": {"accuracy": float(i < j)}}) + "\n"
                            for j, q in enumerate(qids) for i in range(4)))
    assert run("curate.cli", "import-rollouts", str(dump), "--store", str(store.root)).returncode == 0
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("select:\n  seed: 7\n  group_size: 4\n  hard_max: 0.25\n")
    r = run("curate.cli", "select", "--stage", "reasoning", "--out", str(tmp_path / "s"), "--recipe", str(recipe),
            "--seed", "9", "--store", str(store.root))
    assert r.returncode == 0, r.stderr
    options = json.loads((tmp_path / "s" / "manifest.json").read_text())["options"]
    assert (options["seed"], options["group_size"], options["hard_max"]) == (9, 4, 0.25)  # the flag beats the recipe
    assert "predicted zero-advantage groups at G=4:" in " ".join(r.stderr.split()), "the group size used, not the flag's None"
    recipe.write_text("select:\n  seeds: 7\n")
    r = run("curate.cli", "select", "--stage", "reasoning", "--out", str(tmp_path / "t"), "--recipe", str(recipe),
            "--store", str(store.root))
    assert r.returncode == 2 and "unknown setting(s) ['seeds']" in r.stderr and "Traceback" not in r.stderr
