"""The vision probe reads each object's cell token from a real (tiny) Qwen2-VL tower and fits linear probes."""

from __future__ import annotations

import json

import pytest

from curate.synth import generate_world
from pipelines.probe_vision import PROBED, cell_tokens, linear_probe


def test_cell_tokens_and_probes_on_the_tiny_model(tiny_model, tmp_path):
    world = tmp_path / "world"
    generate_world(world, n=150, seed=4, test_fraction=0, image_size=84)
    x, labels = cell_tokens(tiny_model, world, n_images=150, batch=64)
    objects = sum(len(json.loads(line)["scene"]["objects"]) for line in (world / "train.jsonl").open())
    assert x.shape[0] == objects and all(len(labels[a]) == objects for a in PROBED)
    colour, shape = linear_probe(x, labels["color"], seed=0), linear_probe(x, labels["shape"], seed=0)
    # even a random tower keeps an object's colour and shape in its cell's token: the probes read them far above chance
    assert colour["held_out"] == objects - int(0.8 * objects) and colour["accuracy"] > colour["chance"] + 0.3
    assert shape["accuracy"] > shape["chance"] + 0.3
    assert linear_probe(x, labels["color"], seed=0) == colour  # seeded


def test_a_world_not_rendered_one_token_per_cell_is_refused(tiny_model, tmp_path):
    world = tmp_path / "world"
    generate_world(world, n=3, seed=4, test_fraction=0, image_size=112)
    with pytest.raises(ValueError, match="not one per cell"):
        cell_tokens(tiny_model, world)
