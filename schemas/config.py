"""Typed configs from mappings and `key=value` overrides, for every config dataclass of the toolkit.

Recipes (YAML), `train run --set key=value` and `curate score --reward key=value` all go through
`build`, so an unknown or mistyped setting is one clear error, and a nested config (a stage's
`rewards`) is set with a dotted key (`rewards.length_limit=256`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

from schemas.errors import PebrError


def default(cls, name: str) -> Any:
    """The default of field `name` of the dataclass `cls` (CLI options read their defaults here).

    >>> from dataclasses import dataclass, field
    >>> @dataclass
    ... class C:
    ...     n: int = 8
    ...     tags: list = field(default_factory=list)
    >>> default(C, "n"), default(C, "tags")
    (8, [])
    """
    for f in dataclasses.fields(cls):
        if f.name == name:
            if f.default is not dataclasses.MISSING:
                return f.default
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            raise KeyError(f"{cls.__name__}.{name} has no default")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _nested_types(cls) -> dict[str, type]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)
            if dataclasses.is_dataclass(hints.get(f.name)) and isinstance(hints.get(f.name), type)}


def _check_type(cls, name: str, value: Any, where: str) -> Any:
    """Coerce what YAML gives to the field's declared scalar type; a wrong type is a PebrError."""
    hint = typing.get_type_hints(cls).get(name)
    args = set(typing.get_args(hint)) if typing.get_origin(hint) in (typing.Union, types.UnionType) else {hint}
    if value is None:
        if type(None) in args:
            return None
        raise PebrError(f"{where}: {name} cannot be null")
    if bool in args and isinstance(value, bool):
        return value
    if float in args and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if int in args and isinstance(value, int) and not isinstance(value, bool):
        return value
    if str in args and isinstance(value, str):
        return value
    if not args & {bool, int, float, str}:
        return value  # containers and other types: as given
    wanted = " or ".join(sorted(t.__name__ for t in args if t in (bool, int, float, str)))
    raise PebrError(f"{where}: {name} must be {wanted}, not {value!r}")


def build(cls, values: dict[str, Any] | None = None, where: str = "config"):
    """Instantiate a config dataclass from a mapping, refusing unknown keys and wrong scalar types with
    a clear message; a field whose type is itself a config dataclass takes a mapping.

    >>> from rewards.config import RewardConfig
    >>> build(RewardConfig, {"length_limit": 256}).length_limit
    256
    >>> build(RewardConfig, {"length_limit": "long"})
    Traceback (most recent call last):
    ...
    schemas.errors.PebrError: config: length_limit must be int, not 'long'
    """
    values = dict(values or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise PebrError(f"{where}: unknown setting(s) {unknown}; known: {sorted(known)}")
    nested = _nested_types(cls)
    for name, value in list(values.items()):
        if name in nested:
            if isinstance(value, nested[name]):
                continue
            if not isinstance(value, dict):
                raise PebrError(f"{where}: {name} must be a mapping of {nested[name].__name__} settings")
            values[name] = build(nested[name], value, f"{where}.{name}")
        else:
            values[name] = _check_type(cls, name, value, where)
    return cls(**values)


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` updated by `overrides`, nested mappings merged key by key.

    >>> merge({"a": 1, "r": {"x": 1, "y": 2}}, {"r": {"y": 3}})
    {'a': 1, 'r': {'x': 1, 'y': 3}}
    """
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`key=value` pairs from the command line, values parsed as YAML scalars; `a.b=v` sets key b of a.

    >>> parse_overrides(["learning_rate=2e-5", "freeze_vision=false", "clip_model_path=null", "rewards.length_limit=256"])
    {'learning_rate': 2e-05, 'freeze_vision': False, 'clip_model_path': None, 'rewards': {'length_limit': 256}}
    """
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise PebrError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        if isinstance(parsed, str):
            try:
                parsed = float(parsed) if any(c in parsed for c in ".eE") else parsed
            except ValueError:
                pass
        *parents, leaf = [k.strip() for k in key.split(".")]
        if not leaf or not all(parents):
            raise PebrError(f"override {item!r}: empty key")
        target = out
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise PebrError(f"override {item!r}: {parent} is set as a value and as a mapping")
        target[leaf] = parsed
    return out


def load_recipe(path: str | Path | None) -> dict[str, Any]:
    """A recipe YAML (pipelines/*.yaml) as a dict; {} for None."""
    if path is None:
        return {}
    import yaml

    path = Path(path)
    if not path.is_file():
        raise PebrError(f"--recipe {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise PebrError(f"--recipe {path}: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise PebrError(f"--recipe {path}: expected a mapping at the top level")
    return data


def recipe_section(recipe: dict[str, Any], name: str) -> dict[str, Any]:
    """The recipe's section `name` (a mapping; {} when absent), with the recipe's top-level
    `format_prompt` unless the section sets its own.

    >>> recipe_section({"format_prompt": "p.jinja", "score": {"n": 4}}, "score")
    {'format_prompt': 'p.jinja', 'n': 4}
    """
    section = recipe.get(name) or {}
    if not isinstance(section, dict):
        raise PebrError(f"recipe section {name!r} must be a mapping")
    if recipe.get("format_prompt") is not None:
        section = {"format_prompt": recipe["format_prompt"], **section}
    return dict(section)
