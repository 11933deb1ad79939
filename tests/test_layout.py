"""The README's layout section names every module of the packages, and nothing that is not there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("schemas", "rewards", "generation", "curate", "train")
LAYERS = {"schemas": 0, "rewards": 1, "generation": 2, "curate": 3, "train": 3}


def _layout_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Layout", 1)[1]
    return section.split("```", 2)[1]


def test_readme_layout_matches_the_tree():
    listed: dict[str, set[str]] = {}
    package = None
    for line in _layout_block().splitlines():
        top = re.match(r"^(\w+)/\s", line)
        if top:
            package = top.group(1)
            listed[package] = set()
            continue
        module = re.match(r"^\s+(\w+\.py)\s", line)
        if module and package:
            listed[package].add(module.group(1))
    assert set(listed) >= set(PACKAGES) | {"pipelines", "benchmarks", "scripts", "tests"}
    for name in PACKAGES:
        on_disk = {p.name for p in (REPO / name).glob("*.py") if p.name != "__init__.py"}
        assert listed[name] == on_disk, name
    for name in listed:
        assert (REPO / name).is_dir(), name


def test_packages_import_only_downwards():
    """schemas <- rewards <- generation <- curate, train; curate and train never import each other."""
    for name in PACKAGES:
        for path in (REPO / name).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                targets = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
                for target in targets:
                    other = target.split(".")[0]
                    if other in LAYERS and other != name:
                        assert LAYERS[other] < LAYERS[name], f"{path.relative_to(REPO)} imports {target}"
