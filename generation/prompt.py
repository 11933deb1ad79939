"""The prompt: one user message asking for a sectioned answer, then the problem with its images.

Every place that shows a question to a model builds it here: scoring and evaluation
(`build_messages`), GRPO's stage datasets (`prompt_sql`, the same messages as a DuckDB expression,
so that an export of a million rows does not pass through Python) and the ShareGPT text of warm-up
SFT (`prompt_text`). The format reward checks the sections the template asks for.
"""

from __future__ import annotations

PROMPT_TEMPLATE = (
    "Answer in sections that start with ###, in this order: "
    "### Image Description: (what the image shows) "
    "### Rationales: (what the question needs) "
    "### Let's think step by step. "
    "### Step 1: ... ### Step 2: ... (as many steps as needed) "
    "### The final answer is: (only the final result).\n"
    "{problem}"
)
"""The instruction text; ``{problem}`` is replaced by the question (with its ``<image>`` marks)."""

IMAGE_PLACEHOLDER = "<image>"
"""Where an image goes in a problem's text (the reference format's mark)."""

_SENTINEL = "\x00PEBR-PROBLEM\x00"


def check_template(template: str) -> str:
    """`template` if it holds exactly one ``{problem}`` and nothing else to fill, else ValueError.

    >>> check_template("Q: {problem}")
    'Q: {problem}'
    >>> check_template("{problem} {problem}")
    Traceback (most recent call last):
    ...
    ValueError: the prompt template must contain {problem} exactly once (write literal braces as {{ and }})
    """
    try:
        filled = template.format(problem=_SENTINEL)
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"the prompt template does not format with only {{problem}}: {exc!r}") from None
    if filled.count(_SENTINEL) != 1:
        raise ValueError("the prompt template must contain {problem} exactly once (write literal braces as {{ and }})")
    return template


def template_parts(template: str) -> tuple[str, str]:
    """The template's text before and after ``{problem}``, as `str.format` fills it."""
    prefix, _, suffix = template.format(problem=_SENTINEL).partition(_SENTINEL)
    return prefix, suffix


def build_messages(problem: str, n_images: int = 1, template: str = PROMPT_TEMPLATE) -> list[dict]:
    """Chat messages for one question, in the multi-modal form of transformers' chat templates.

    Each ``<image>`` mark in the text becomes an image part at that place; images without a mark
    go first. ``n_images`` is the number of images the sample carries.

    >>> build_messages("How many <image> circles?", 1, template="{problem}")[0]["content"]
    [{'type': 'text', 'text': 'How many '}, {'type': 'image'}, {'type': 'text', 'text': ' circles?'}]
    """
    text = template.format(problem=problem)
    pieces = text.split(IMAGE_PLACEHOLDER)
    marks = len(pieces) - 1
    content: list[dict] = [{"type": "image"} for _ in range(max(0, n_images - marks))]
    for i, piece in enumerate(pieces):
        if piece:
            content.append({"type": "text", "text": piece})
        if i < len(pieces) - 1:
            content.append({"type": "image"})
    return [{"role": "user", "content": content}]


def prompt_text(problem: str, n_images: int = 1, template: str = PROMPT_TEMPLATE) -> str:
    """The prompt of `build_messages` as one string with an ``<image>`` mark per image part (the
    form of ShareGPT / LLaMA-Factory datasets).

    >>> prompt_text("Which colour?", 2, template="{problem}")
    '<image><image>Which colour?'
    """
    parts = build_messages(problem, n_images, template)[0]["content"]
    return "".join(IMAGE_PLACEHOLDER if part["type"] == "image" else part["text"] for part in parts)


# -- the same prompt as SQL ----------------------------------------------------------------------
# A stage dataset's `prompt` column is built by DuckDB in the export's own pipeline: building it in
# Python and handing it back as Arrow costs more than the rest of the export (BENCHMARKS.md). The
# SQL below is generated from the same template and equals `build_messages` row by row (tested).

_IMAGE_PART = "{'type': 'image', 'text': NULL::VARCHAR}"
"""An image part of a chat message, as a DuckDB struct (text parts fill `text`)."""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def prompt_macro() -> str:
    """SQL defining `pebr_prompt(pieces, n_images)`: the chat prompt of `build_messages` as a DuckDB
    value (list of {role, content: list of {type, text}}; image parts have a NULL text).

    `pieces` is the templated text split at each ``<image>`` mark (`prompt_pieces_sql`): every piece
    but the last is followed by an image part, empty text parts are dropped, and images without a
    mark go first. A scalar macro (no subquery), so DuckDB evaluates it vector by vector.
    """
    return f"""CREATE OR REPLACE MACRO pebr_prompt(pieces, n_images) AS [{{'role': 'user', 'content': list_concat(
  list_transform(range(greatest(0, n_images - (len(pieces) - 1))), lambda x: {_IMAGE_PART}),
  list_filter(flatten(list_transform(pieces, lambda piece: [{{'type': 'text', 'text': piece}}, {_IMAGE_PART}]))[:-2],
              lambda part: part.text IS NULL OR part.text <> ''))}}]"""


def prompt_pieces_sql(problem: str, template: str = PROMPT_TEMPLATE) -> str:
    """SQL splitting `template` filled with the `problem` column at its ``<image>`` marks."""
    prefix, suffix = template_parts(template)
    return f"string_split({_literal(prefix)} || {problem} || {_literal(suffix)}, {_literal(IMAGE_PLACEHOLDER)})"


def prompt_parts_sql(problem: str) -> str:
    """SQL splitting the `problem` column at its ``<image>`` marks, for `prompt_sql(parts=...)`."""
    return f"string_split({problem}, {_literal(IMAGE_PLACEHOLDER)})"


def prompt_sql(problem: str, n_images: str, template: str = PROMPT_TEMPLATE, parts: str | None = None) -> str:
    """SQL for the chat prompt of `build_messages(problem, n_images, template)`, row by row.

    The common shapes (one image and no mark, or at most one image and one mark) are built from the
    problem split at its marks (`parts`, a column holding `prompt_parts_sql(problem)`, computed once
    per row by the caller; default: split here), specialised in Python to the template's fixed text;
    any other row goes through the `pebr_prompt` macro (`prompt_macro`), whose list lambdas cost
    several times more per row.
    """
    general = f"pebr_prompt({prompt_pieces_sql(problem, template)}, {n_images})"
    prefix, suffix = template_parts(template)
    mark = IMAGE_PLACEHOLDER
    # The fast shapes count marks in the problem alone: a template that holds a mark, or could
    # complete one across its border with the problem, always takes the general path.
    straddles = any(prefix.endswith(mark[:i]) or suffix.startswith(mark[i:]) for i in range(1, len(mark)))
    if mark in prefix + suffix or straddles:
        return general
    parts = parts or prompt_parts_sql(problem)

    def text(expr: str) -> str:
        return f"{{'type': 'text', 'text': {expr}}}"

    def message(*content: str) -> str:
        return f"[{{'role': 'user', 'content': [{', '.join(content)}]}}]"

    def joined(*pieces: str) -> str:
        return " || ".join(p for p in pieces if p)

    pre, suf = (_literal(t) if t else "" for t in (prefix, suffix))
    before, after = joined(pre, f"{parts}[1]"), joined(f"{parts}[2]", suf)
    # A side of the mark can only be empty when the template adds nothing there.
    if prefix and suffix:
        one_mark = message(text(before), _IMAGE_PART, text(after))
    else:
        cases = []
        if not prefix and not suffix:
            cases.append(f"WHEN {parts}[1] = '' AND {parts}[2] = '' THEN {message(_IMAGE_PART)}")
        if not prefix:
            cases.append(f"WHEN {parts}[1] = '' THEN {message(_IMAGE_PART, text(after))}")
        if not suffix:
            cases.append(f"WHEN {parts}[2] = '' THEN {message(text(before), _IMAGE_PART)}")
        one_mark = f"CASE {' '.join(cases)} ELSE {message(text(before), _IMAGE_PART, text(after))} END"
    whole = joined(pre, problem, suf)
    no_mark = f"len({parts}) = 1 AND {n_images} = 1" + ("" if prefix or suffix else f" AND {problem} <> ''")
    return f"""CASE
  WHEN {no_mark} THEN {message(_IMAGE_PART, text(whole))}
  WHEN len({parts}) = 2 AND {n_images} <= 1 THEN {one_mark}
  ELSE {general} END"""
