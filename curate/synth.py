"""The shapes world: a procedural image-question dataset with exact answers and gold responses.

It lets the whole method run without downloading anything: scenes of coloured shapes on a 3x3
grid, questions in the three capabilities (coarse perception, fine perception, reasoning), each
record in the reference format plus its scene, so every answer can be recomputed and checked.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "diamond", "star"]
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 170),
}
SIZES = ["small", "large"]
GRID = 3
ROWS = ["top", "middle", "bottom"]
COLS = ["left", "middle", "right"]
MAX_OBJECTS = 4
BACKGROUND = (255, 255, 255)

SOURCES = {
    "perception_coarse": "shapes_coarse",
    "perception_fine": "shapes_fine",
    "reasoning": "shapes_reasoning",
}
"""The source name of each capability's records."""


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    row: int
    col: int

    @property
    def name(self) -> str:
        """What a description must say about the object (the key word): colour and shape."""
        return f"{self.color} {self.shape}"

    @property
    def where(self) -> str:
        return position_name(self.row, self.col)

    def item(self) -> str:
        """The object in a description: size, colour, shape and cell."""
        return f"{self.size} {self.color} {self.shape} {self.where}"

    def item_key(self) -> tuple[str, str, str, str]:
        """What `description_f1` matches: (size, colour, shape, cell name)."""
        return (self.size, self.color, self.shape, self.where)


def position_name(row: int, col: int) -> str:
    """Name of a grid cell.

    >>> position_name(0, 0), position_name(1, 1), position_name(2, 1)
    ('top left', 'center', 'bottom middle')
    """
    if row == 1 and col == 1:
        return "center"
    return f"{ROWS[row]} {COLS[col]}"


def plural(n: int, word: str) -> str:
    """A count and its noun.

    >>> plural(1, "object"), plural(2, "object")
    ('1 object', '2 objects')
    """
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def is_are(n: int) -> str:
    return "is" if n == 1 else "are"


# ---------------------------------------------------------------- scenes and drawing


def random_scene(rng: np.random.Generator) -> list[Obj]:
    """1..MAX_OBJECTS objects in distinct grid cells, listed in reading order."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    cells = sorted(int(c) for c in rng.choice(GRID * GRID, size=n, replace=False))
    colors = list(COLORS)
    return [
        Obj(
            shape=SHAPES[int(rng.integers(len(SHAPES)))],
            color=colors[int(rng.integers(len(colors)))],
            size=SIZES[int(rng.integers(len(SIZES)))],
            row=c // GRID,
            col=c % GRID,
        )
        for c in cells
    ]


def _star(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    angles = np.pi / 2 + np.arange(10) * np.pi / 5
    radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
    return [(cx + rr * np.cos(a), cy - rr * np.sin(a)) for a, rr in zip(angles, radii)]


def draw_scene(objects: list[Obj], image_size: int) -> Image.Image:
    """Render a scene; a large object fills most of its cell, a small one about half as much."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    cell = image_size / GRID
    for o in objects:
        cx, cy = (o.col + 0.5) * cell, (o.row + 0.5) * cell
        r = cell * (0.42 if o.size == "large" else 0.22)
        fill = COLORS[o.color]
        box = [cx - r, cy - r, cx + r, cy + r]
        if o.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif o.shape == "square":
            s = r * 0.85
            draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
        elif o.shape == "triangle":
            draw.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
        elif o.shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
        elif o.shape == "star":
            draw.polygon(_star(cx, cy, r), fill=fill)
    return img


# ---------------------------------------------------------------- questions

# A family turns a scene into a Question, or None when the scene does not fit it (a relation
# needs two objects that a colour and a shape name unambiguously). `answer_from_scene` recomputes
# each answer from the stored scene and question parameters, independently of the families.


@dataclass
class Question:
    problem: str
    answer: str
    rationale: str
    """The text of the ``### Rationales:`` section: what the question needs."""
    steps: list[str]
    params: dict
    """The family and its choices (a colour, a row, ...), stored with the record as ``question``."""


def _description(objects: list[Obj]) -> str:
    # Short and regular: one "size colour shape position" item per object, in reading order, so a
    # tiny model learns the format in a few minutes and every key word (colour and shape) appears.
    return f"{plural(len(objects), 'object')}: {', '.join(o.item() for o in objects)}."


def _count_step(objects: list[Obj], noun: str, pred, qualifier: str = "") -> tuple[int, str]:
    """Count the objects that match ``pred`` and name each one, for a step of the gold response."""
    hits = [o for o in objects if pred(o)]
    what = f"{noun}s{qualifier}"
    named = ", ".join(f"{o.size} {o.name}" for o in hits) if hits else "none"
    return len(hits), f"{what}: {named}. Count: {len(hits)}."


def _pick(rng: np.random.Generator, items: list):
    return items[int(rng.integers(len(items)))]


def _present_or_any(rng: np.random.Generator, present: set[str], everything: list[str]) -> str:
    """Mostly a value the scene has, so that "0" does not dominate the answers of count questions."""
    return _pick(rng, sorted(present) if rng.random() < 0.75 else everything)


def q_count_objects(objects, rng) -> Question:
    n = len(objects)
    return Question(
        "How many objects are in the image?",
        str(n),
        "The number of objects.",
        [f"Objects: {', '.join(o.name for o in objects)}.", f"Count: {n}."],
        {"family": "count_objects"},
    )


def q_list_shapes(objects, rng) -> Question:
    answer = ", ".join(sorted({o.shape for o in objects}))
    return Question(
        "Which shapes are in the image? Answer with the shape names in alphabetical order, separated by commas.",
        answer,
        "The different shapes.",
        [f"Shapes: {', '.join(o.shape for o in objects)}.", f"Once each, sorted: {answer}."],
        {"family": "list_shapes"},
    )


def q_count_colors(objects, rng) -> Question:
    colors = sorted({o.color for o in objects})
    return Question(
        "How many different colours are in the image?",
        str(len(colors)),
        "The number of different colours.",
        [f"Colours: {', '.join(o.color for o in objects)}.", f"Different: {', '.join(colors)}. Count: {len(colors)}."],
        {"family": "count_colors"},
    )


def q_has_color(objects, rng) -> Question:
    color = _pick(rng, sorted({o.color for o in objects}) if rng.random() < 0.5 else list(COLORS))
    n, step = _count_step(objects, f"{color} object", lambda o: o.color == color)
    answer = "yes" if n else "no"
    return Question(
        f"Is there a {color} object in the image? Answer yes or no.",
        answer,
        f"Whether any object is {color}.",
        [step, f"So the answer is {answer}."],
        {"family": "has_color", "color": color},
    )


def q_attribute_at(objects, rng) -> Question:
    o = _pick(rng, objects)
    attr = _pick(rng, ["colour", "shape", "size"])
    value = {"colour": o.color, "shape": o.shape, "size": o.size}[attr]
    return Question(
        f"What is the {attr} of the object in the {o.where}?",
        value,
        f"The {attr} of one object.",
        [f"{o.where}: {o.size} {o.name}.", f"Its {attr}: {value}."],
        {"family": "attribute_at", "row": o.row, "col": o.col, "attr": attr},
    )


def q_count_color(objects, rng) -> Question:
    color = _present_or_any(rng, {o.color for o in objects}, list(COLORS))
    n, step = _count_step(objects, f"{color} object", lambda o: o.color == color)
    return Question(
        f"How many {color} objects are in the image?",
        str(n),
        f"The number of {color} objects.",
        [step, f"The answer is {n}."],
        {"family": "count_color", "color": color},
    )


def q_count_shape(objects, rng) -> Question:
    shape = _present_or_any(rng, {o.shape for o in objects}, SHAPES)
    n, step = _count_step(objects, shape, lambda o: o.shape == shape)
    return Question(
        f"How many {shape}s are in the image?",
        str(n),
        f"The number of {shape}s.",
        [step, f"The answer is {n}."],
        {"family": "count_shape", "shape": shape},
    )


def q_relation(objects, rng) -> Question | None:
    counts = Counter(o.name for o in objects)
    named = [o for o in objects if counts[o.name] == 1]
    pairs = [(a, b) for a in named for b in named if a is not b]
    if not pairs:
        return None
    a, b = _pick(rng, pairs)
    if a.col != b.col and (a.row == b.row or rng.integers(2)):
        relation = _pick(rng, ["to the left of", "to the right of"])
        truth = a.col < b.col if relation == "to the left of" else a.col > b.col
        where = f"{a.name} column {a.col + 1}, {b.name} column {b.col + 1} (from the left)."
    else:
        relation = _pick(rng, ["above", "below"])
        truth = a.row < b.row if relation == "above" else a.row > b.row
        where = f"{a.name} row {a.row + 1}, {b.name} row {b.row + 1} (from the top)."
    return Question(
        f"Is the {a.name} {relation} the {b.name}? Answer yes or no.",
        "yes" if truth else "no",
        f"Where the {a.name} is compared with the {b.name}.",
        [where, f"So the {a.name} {'is' if truth else 'is not'} {relation} the {b.name}."],
        {"family": "relation", "a": a.name, "b": b.name, "relation": relation},
    )


def q_more_than(objects, rng) -> Question:
    first = _pick(rng, sorted({o.color for o in objects}))
    second = _pick(rng, [c for c in COLORS if c != first])
    if sum(o.color == first for o in objects) < sum(o.color == second for o in objects):
        first, second = second, first
    n1, s1 = _count_step(objects, f"{first} object", lambda o: o.color == first)
    n2, s2 = _count_step(objects, f"{second} object", lambda o: o.color == second)
    return Question(
        f"How many more {first} objects than {second} objects are in the image?",
        str(n1 - n2),
        f"The {first} objects minus the {second} objects.",
        [s1, s2, f"Subtract: {n1} - {n2} = {n1 - n2}."],
        {"family": "more_than", "first": first, "second": second},
    )


def q_sum_shapes(objects, rng) -> Question:
    s1, s2 = (str(s) for s in rng.choice(SHAPES, size=2, replace=False))
    n1, t1 = _count_step(objects, s1, lambda o: o.shape == s1)
    n2, t2 = _count_step(objects, s2, lambda o: o.shape == s2)
    return Question(
        f"How many {s1}s and {s2}s are there in total?",
        str(n1 + n2),
        f"The {s1}s plus the {s2}s.",
        [t1, t2, f"Add: {n1} + {n2} = {n1 + n2}."],
        {"family": "sum_shapes", "first": s1, "second": s2},
    )


def q_compare(objects, rng) -> Question:
    size = _pick(rng, SIZES)
    shape = _pick(rng, SHAPES)
    n1, t1 = _count_step(objects, f"{size} object", lambda o: o.size == size)
    n2, t2 = _count_step(objects, shape, lambda o: o.shape == shape)
    answer = "yes" if n1 > n2 else "no"
    return Question(
        f"Are there more {size} objects than {shape}s? Answer yes or no.",
        answer,
        f"The {size} objects compared with the {shape}s.",
        [t1, t2, f"Compare: {n1} {'>' if n1 > n2 else 'is not more than'} {n2}, so {answer}."],
        {"family": "compare", "size": size, "shape": shape},
    )


def q_not_color_in_row(objects, rng) -> Question:
    row = int(rng.integers(GRID))
    color = _pick(rng, list(COLORS))
    n_row, step = _count_step(objects, "object", lambda o: o.row == row, qualifier=f" in the {ROWS[row]} row")
    n_color = sum(o.row == row and o.color == color for o in objects)
    return Question(
        f"How many objects in the {ROWS[row]} row are not {color}?",
        str(n_row - n_color),
        f"The objects in the {ROWS[row]} row minus the {color} ones.",
        [step, f"{color} among them: {n_color}.", f"Subtract: {n_row} - {n_color} = {n_row - n_color}."],
        {"family": "not_color_in_row", "row": row, "color": color},
    )


FAMILIES = {
    "perception_coarse": [q_count_objects, q_list_shapes, q_count_colors, q_has_color],
    "perception_fine": [q_attribute_at, q_count_color, q_count_shape, q_relation],
    "reasoning": [q_more_than, q_sum_shapes, q_compare, q_not_color_in_row],
}
"""Question families per capability."""

CAPABILITY_WEIGHTS = {"perception_coarse": 0.5, "perception_fine": 0.25, "reasoning": 0.25}
"""How often a sample asks each capability. Coarse questions hold both the easiest family (counting the
objects) and the hardest (describing the scene), so they get half the samples: with them, a warmed-up
tiny model spreads over all three bands."""

FAMILY_WEIGHTS = {"perception_coarse": [2, 1, 1, 1], "perception_fine": [1, 1, 1, 1], "reasoning": [1, 1, 1, 1]}
"""Relative weights of the families of each capability. Counting the objects is the one coarse question a
warmed-up tiny model gets right nearly always, so weighting it up gives the easy band its share; describing
the scene (list_shapes) stays the hard one."""


def answer_from_scene(scene: dict, question: dict) -> str:
    """Recompute a record's answer from its stored scene and question parameters (an independent check).

    >>> scene = {"objects": [{"shape": "circle", "color": "red", "size": "large", "row": 0, "col": 0}]}
    >>> answer_from_scene(scene, {"family": "count_color", "color": "red"})
    '1'
    """
    objs = scene["objects"]
    f = question["family"]
    name = lambda o: f"{o['color']} {o['shape']}"  # noqa: E731
    count = lambda pred: sum(1 for o in objs if pred(o))  # noqa: E731
    if f == "count_objects":
        return str(len(objs))
    if f == "list_shapes":
        return ", ".join(sorted({o["shape"] for o in objs}))
    if f == "count_colors":
        return str(len({o["color"] for o in objs}))
    if f == "has_color":
        return "yes" if count(lambda o: o["color"] == question["color"]) else "no"
    if f == "attribute_at":
        (o,) = [o for o in objs if (o["row"], o["col"]) == (question["row"], question["col"])]
        return o[{"colour": "color", "shape": "shape", "size": "size"}[question["attr"]]]
    if f == "count_color":
        return str(count(lambda o: o["color"] == question["color"]))
    if f == "count_shape":
        return str(count(lambda o: o["shape"] == question["shape"]))
    if f == "relation":
        (a,) = [o for o in objs if name(o) == question["a"]]
        (b,) = [o for o in objs if name(o) == question["b"]]
        truth = {
            "to the left of": a["col"] < b["col"],
            "to the right of": a["col"] > b["col"],
            "above": a["row"] < b["row"],
            "below": a["row"] > b["row"],
        }[question["relation"]]
        return "yes" if truth else "no"
    if f == "more_than":
        return str(count(lambda o: o["color"] == question["first"]) - count(lambda o: o["color"] == question["second"]))
    if f == "sum_shapes":
        return str(count(lambda o: o["shape"] in (question["first"], question["second"])))
    if f == "compare":
        more = count(lambda o: o["size"] == question["size"]) > count(lambda o: o["shape"] == question["shape"])
        return "yes" if more else "no"
    if f == "not_color_in_row":
        return str(count(lambda o: o["row"] == question["row"] and o["color"] != question["color"]))
    raise ValueError(f"unknown family {f!r}")


# ---------------------------------------------------------------- records


def gold_response(description: str, rationale: str, steps: list[str], answer: str) -> str:
    """The paper's sectioned answer format."""
    lines = [f"### Image Description: {description}", f"### Rationales: {rationale}", "### Let's think step by step."]
    lines += [f"### Step {i}: {s}" for i, s in enumerate(steps, 1)]
    lines.append(f"### The final answer is: {answer}")
    return "\n".join(lines)


def capability_mix(mix: dict[str, float] | None) -> dict[str, float]:
    """The capability weights of a world: ``CAPABILITY_WEIGHTS`` or the given ones, normalised.

    >>> capability_mix({"reasoning": 2, "perception_coarse": 1, "perception_fine": 1})["reasoning"]
    0.5
    """
    if mix is None:
        return dict(CAPABILITY_WEIGHTS)
    unknown = sorted(set(mix) - set(FAMILIES))
    if unknown or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"capability mix {mix}: weights >= 0 over {', '.join(FAMILIES)}, not all zero")
    total = sum(mix.values())
    return {c: mix.get(c, 0.0) / total for c in FAMILIES}


def make_sample(seed: int, index: int, image_size: int = 112,
                mix: dict[str, float] | None = None) -> tuple[dict, bytes]:
    """Record ``index`` of the world with ``seed`` and its PNG; depends on nothing else (``mix``: the
    capability weights, default ``CAPABILITY_WEIGHTS``)."""
    rng = np.random.default_rng([seed, index])
    caps = list(FAMILIES)
    weights_by_cap = capability_mix(mix)
    capability = caps[int(rng.choice(len(caps), p=[weights_by_cap[c] for c in caps]))]
    weights = np.asarray(FAMILY_WEIGHTS[capability], dtype=float)
    family = FAMILIES[capability][int(rng.choice(len(weights), p=weights / weights.sum()))]
    while True:  # a family that does not fit the scene gets a new scene
        objects = random_scene(rng)
        q = family(objects, rng)
        if q is not None:
            break
    qid = f"shapes-{seed}-{index:07d}"
    buf = io.BytesIO()
    draw_scene(objects, image_size).save(buf, format="PNG", compress_level=6)
    record = {
        "qid": qid,
        "problem": f"<image>{q.problem}",
        "answer": q.answer,
        "images": [f"images/{qid}.png"],
        "key_words": sorted({o.name for o in objects}),
        "source": SOURCES[capability],
        "capability": capability,
        "response": gold_response(_description(objects), q.rationale, q.steps, q.answer),
        "scene": {
            "image_size": image_size,
            "grid": GRID,
            "objects": [asdict(o) for o in objects],
        },
        "question": q.params,
    }
    return record, buf.getvalue()


def _write_sample(args: tuple[Path, int, int, int, dict | None]) -> tuple[str, str]:
    out, seed, index, image_size, mix = args
    record, png = make_sample(seed, index, image_size, mix)
    (out / record["images"][0]).write_bytes(png)
    return record["capability"], json.dumps(record, ensure_ascii=False, sort_keys=True)


def generate_world(
    out: Path,
    n: int = 2000,
    seed: int = 0,
    test_fraction: float = 0.1,
    image_size: int = 112,
    workers: int | None = None,
    progress=None,
    mix: dict[str, float] | None = None,
) -> dict:
    """Write ``n`` shapes-world samples to ``out/train.jsonl``, ``out/test.jsonl`` and ``out/images/``.

    Each sample depends only on (seed, index), so the files are byte-identical for a seed whatever
    the number of ``workers`` (default: the CPUs available, one for small worlds). The last
    ``round(n * test_fraction)`` samples form the test split.
    ``progress(k)`` is called as samples are written; ``mix`` weighs the capabilities (default
    ``CAPABILITY_WEIGHTS``). Returns ``{n_train, n_test, by_capability, seconds}``.
    """
    capability_mix(mix)  # a bad mix fails before anything is written
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    start = time.perf_counter()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    n_test = round(n * test_fraction)
    n_train = n - n_test
    if workers is None:
        workers = 1 if n < 1000 else len(os.sched_getaffinity(0))
    jobs = ((out, seed, i, image_size, mix) for i in range(n))
    tmp = {name: out / f".{name}.jsonl.tmp" for name in ("train", "test")}
    with open(tmp["train"], "w", encoding="utf-8") as train, open(tmp["test"], "w", encoding="utf-8") as test:
        if workers > 1:
            import multiprocessing as mp

            with mp.get_context().Pool(workers) as pool:
                lines = pool.imap(_write_sample, jobs, chunksize=256)
                by_capability = _write_lines(lines, n_train, train, test, progress)
        else:
            by_capability = _write_lines(map(_write_sample, jobs), n_train, train, test, progress)
    for name, path in tmp.items():
        path.replace(out / f"{name}.jsonl")
    return {
        "n_train": n_train,
        "n_test": n_test,
        "by_capability": dict(sorted(by_capability.items())),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _write_lines(lines, n_train: int, train, test, progress=None) -> Counter:
    by_capability: Counter = Counter()
    for i, (capability, line) in enumerate(lines):
        (train if i < n_train else test).write(line + "\n")
        by_capability[capability] += 1
        if progress and i % 256 == 255:
            progress(256)
    if progress:
        progress(sum(by_capability.values()) % 256)
    return by_capability


# ---------------------------------------------------------------- measuring descriptions

_ITEM_RE = re.compile(
    rf"\b({'|'.join(SIZES)})\s+({'|'.join(COLORS)})\s+({'|'.join(SHAPES)})\s+"
    rf"(center|(?:{'|'.join(ROWS)})\s+(?:{'|'.join(COLS)}))\b",
    re.IGNORECASE,
)


def described_items(description: str) -> list[tuple[str, str, str, str]]:
    """The ``size colour shape position`` items a description names, in its order, as ``Obj.item_key()`` tuples.

    >>> described_items("2 objects: small red circle top left, large blue star center.")
    [('small', 'red', 'circle', 'top left'), ('large', 'blue', 'star', 'center')]
    """
    return [(size.lower(), color.lower(), shape.lower(), " ".join(where.lower().split()))
            for size, color, shape, where in _ITEM_RE.findall(description)]


def described_objects(description: str) -> Counter:
    """The objects a description names as ``size colour shape position`` items (a multiset).

    >>> sorted(described_objects("2 objects: small red circle top left, large blue star center.").elements())
    [('large', 'blue', 'star', 'center'), ('small', 'red', 'circle', 'top left')]
    """
    return Counter(described_items(description))


def description_f1(response: str, scene: dict) -> float:
    """F1 of the objects a response's image description names against the scene's objects.

    An object counts as found when its size, colour, shape and cell are all right; precision is over
    the objects named, recall over the scene's. A response without a description scores 0.

    >>> scene = {"objects": [{"shape": "circle", "color": "red", "size": "small", "row": 0, "col": 0},
    ...                      {"shape": "star", "color": "blue", "size": "large", "row": 1, "col": 1}]}
    >>> description_f1("### Image Description: 2 objects: small red circle top left, large blue star center."
    ...                "\\n### Rationales: x", scene)
    1.0
    >>> round(description_f1("### Image Description: small red circle top left, small green square center."
    ...                      "\\n### Rationales: x", scene), 3)
    0.5
    >>> description_f1("no sections at all", scene)
    0.0
    """
    from rewards.clip import extract_caption

    named = described_objects(extract_caption(response))
    truth = Counter(Obj(**o).item_key() for o in scene["objects"])
    hits = sum((named & truth).values())
    if hits == 0:
        return 0.0
    precision, recall = hits / sum(named.values()), hits / sum(truth.values())
    return 2 * precision * recall / (precision + recall)


ATTRIBUTES = ("count", "size", "colour", "shape", "cell")
"""What `description_attributes` scores: the number of objects named, and each object's four attributes
(in the order of ``Obj.item_key``)."""


def description_attributes(response: str, scene: dict) -> dict[str, float]:
    """Which attributes of the scene a response's image description gets right, one by one.

    ``count``: 1.0 when the description names as many objects as the scene holds. ``size``, ``colour``,
    ``shape``, ``cell``: the share of the scene's objects (in reading order, the order descriptions use)
    whose attribute the description's object at the same place names right; an object the description
    leaves out counts as wrong. Chance, for a model that cannot see the attribute: 1/2 for size, 1/5 for
    colour and shape. Unlike `description_f1`, this says what a model perceives when it rarely gets a
    whole object right.

    >>> scene = {"objects": [{"shape": "circle", "color": "red", "size": "small", "row": 0, "col": 0},
    ...                      {"shape": "star", "color": "blue", "size": "large", "row": 1, "col": 1}]}
    >>> description_attributes("### Image Description: 2 objects: small red square top left, "
    ...                        "large blue star top right.\\n### Rationales: x", scene)
    {'count': 1.0, 'size': 1.0, 'colour': 1.0, 'shape': 0.5, 'cell': 0.5}
    >>> description_attributes("no sections at all", scene)["colour"]
    0.0
    """
    from rewards.clip import extract_caption

    named = described_items(extract_caption(response))
    truth = [Obj(**o).item_key() for o in scene["objects"]]
    right = {k: sum(said[i] == true[i] for true, said in zip(truth, named)) / len(truth)
             for i, k in enumerate(ATTRIBUTES[1:])}  # ATTRIBUTES[1:] in item_key order
    return {"count": float(len(named) == len(truth)), **right}
