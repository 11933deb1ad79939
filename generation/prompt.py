"""The prompt: one user message asking for a sectioned answer, then the problem with its images.

Every place that shows a question to a model builds it here: scoring and evaluation
(`build_messages`), GRPO's stage datasets (`prompt_sql`, the same messages as a DuckDB expression,
so that an export of a million rows does not pass through Python) and the ShareGPT text of warm-up
SFT (`prompt_text`). The format reward checks the sections the template asks for.
"""

from __future__ import annotations

from pathlib import Path

PROMPT_TEMPLATE = (
    "Answer in sections that start with ###, in this order: "
    "### Image Description: (what the image shows) "
    "### Rationales: (what the question needs) "
    "### Let's think step by step. "
    "### Step 1: ... ### Step 2: ... (as many steps as needed) "
    "### The final answer is: (only the final result).\n"
    "{{ content }}"
)
"""The toolkit's own format prompt; ``{{ content }}`` is the question (with its ``<image>`` marks)."""

IMAGE_PLACEHOLDER = "<image>"
"""Where an image goes in a problem's text (the reference format's mark)."""

_SENTINEL = "\x00PEBR-PROBLEM\x00"
_WHITESPACE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
"""What Python's str.strip (Jinja's `trim`) removes; no code point above U+3000 is whitespace."""
_PROBES = ("x", "", "  two words \n", "\t<image> mark\u3000", "a <image>\nb <image>", "{{ not jinja }}")


class PromptTemplate:
    """A format prompt in EasyR1's convention (`data.format_prompt`): a Jinja template over
    ``content``, the problem text, stripped and rendered as EasyR1 renders it; the rendered text is
    then split at its ``<image>`` marks.

    The same template also gives the prompt as SQL (stage datasets): when it renders every problem
    as fixed text around the problem (optionally trimmed), as most do, the SQL concatenates; any
    other template is rendered by this object inside DuckDB (a Python function, slower).

    >>> t = PromptTemplate("Q: {{ content | trim }} A:")
    >>> t.render("  2 + 2?  "), t.mode, t.prefix, t.suffix
    ('Q: 2 + 2? A:', 'trim', 'Q: ', ' A:')
    >>> PromptTemplate("{{ content }}{{ content }}").mode
    'python'
    """

    def __init__(self, text: str, source: str | None = None):
        import jinja2
        from jinja2 import meta
        from jinja2.sandbox import SandboxedEnvironment

        env = SandboxedEnvironment()
        try:
            names = meta.find_undeclared_variables(env.parse(text.strip()))
            self._template = env.from_string(text.strip())
        except jinja2.TemplateError as exc:
            raise ValueError(f"the format prompt is not a valid Jinja template: {exc}") from None
        if "content" not in names:
            raise ValueError("the format prompt must use {{ content }} (the problem), as EasyR1's format prompts do")
        if names - {"content"}:
            raise ValueError(f"the format prompt may use only {{{{ content }}}}, not {sorted(names - {'content'})}")
        self.text = text
        self.source = source
        """The file the template came from, if any."""
        self.prefix, self.suffix, self.mode = "", "", "python"
        try:
            filled = self.render(_SENTINEL)
        except jinja2.TemplateError as exc:
            raise ValueError(f"the format prompt does not render: {exc}") from None
        if filled.count(_SENTINEL) == 1:
            prefix, _, suffix = filled.partition(_SENTINEL)
            for mode, insert in (("linear", lambda p: p), ("trim", lambda p: p.strip())):
                if all(self.render(p) == prefix + insert(p) + suffix for p in _PROBES):
                    self.prefix, self.suffix, self.mode = prefix, suffix, mode
                    break

    def render(self, problem: str) -> str:
        """The prompt text for one problem (before its ``<image>`` marks become image parts)."""
        return self._template.render(content=problem)

    def content_sql(self, problem: str) -> str:
        """SQL of the problem as the template inserts it (`linear` and `trim` templates only)."""
        return f"trim({problem}, {_literal(_WHITESPACE)})" if self.mode == "trim" else problem

    def register(self, con) -> None:
        """Make `pebr_render` available to `con` for a `python` template (a no-op otherwise)."""
        if self.mode == "python":
            con.create_function("pebr_render", self.render, ["VARCHAR"], "VARCHAR", side_effects=False)

    def __eq__(self, other) -> bool:
        return isinstance(other, PromptTemplate) and other.text.strip() == self.text.strip()

    def __hash__(self) -> int:
        return hash(self.text.strip())

    def __repr__(self) -> str:
        return f"PromptTemplate({self.source or self.text[:40]!r}, mode={self.mode})"


_CACHE: dict[str, PromptTemplate] = {}


def as_template(template: str | PromptTemplate | None = None) -> PromptTemplate:
    """`template` as a PromptTemplate (text is parsed once and cached); None is the default prompt."""
    if isinstance(template, PromptTemplate):
        return template
    text = PROMPT_TEMPLATE if template is None else template
    if text not in _CACHE:
        _CACHE[text] = PromptTemplate(text)
    return _CACHE[text]


def check_template(template: str) -> str:
    """`template` if it is a usable format prompt (Jinja over ``content`` only), else ValueError.

    >>> check_template("Q: {{ content }}")
    'Q: {{ content }}'
    >>> check_template("Q: {problem}")
    Traceback (most recent call last):
    ...
    ValueError: the format prompt must use {{ content }} (the problem), as EasyR1's format prompts do
    """
    as_template(template)
    return template


def load_format_prompt(path: str | Path) -> str:
    """The text of a format prompt file (a Jinja template over ``content``, e.g. the reference's
    ``examples/format_prompt/pebr_format.jinja``), checked."""
    from schemas.errors import PebrError

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PebrError(f"--format-prompt {path}: cannot read it ({exc.__class__.__name__})") from None
    try:
        check_template(text)
    except ValueError as exc:
        raise PebrError(f"--format-prompt {path}: {exc}") from None
    return text


def build_messages(problem: str, n_images: int = 1, template: str | PromptTemplate | None = None) -> list[dict]:
    """Chat messages for one question, in the multi-modal form of transformers' chat templates.

    The format prompt renders the problem; each ``<image>`` mark in the text becomes an image part
    at that place. ``n_images`` is the number of images the sample carries; images without a mark
    get one at the start of the problem (`complete_marks`), as the reference's data writes them, so
    that EasyR1 and verl, which only split the text at its marks, build the same message.

    >>> build_messages("How many <image> circles?", 1, template="{{ content }}")[0]["content"]
    [{'type': 'text', 'text': 'How many '}, {'type': 'image'}, {'type': 'text', 'text': ' circles?'}]
    >>> build_messages("Which colour?", 1, template="Q: {{ content }}")[0]["content"]
    [{'type': 'text', 'text': 'Q: '}, {'type': 'image'}, {'type': 'text', 'text': 'Which colour?'}]
    """
    t = as_template(template)
    text = t.render(complete_marks(problem, n_images, t))
    pieces = text.split(IMAGE_PLACEHOLDER)
    marks = len(pieces) - 1
    # Only a template that rewrites its content (a `python` one) can lose the added marks: the
    # images still missing go first.
    content: list[dict] = [{"type": "image"} for _ in range(max(0, n_images - marks))]
    for i, piece in enumerate(pieces):
        if piece:
            content.append({"type": "text", "text": piece})
        if i < len(pieces) - 1:
            content.append({"type": "image"})
    return [{"role": "user", "content": content}]


def complete_marks(problem: str, n_images: int, template: str | PromptTemplate | None = None) -> str:
    """`problem` with one ``<image>`` mark added at its start for every image the rendered prompt
    has no mark for: the problem text an exporter writes for tools that place images by marks only.

    >>> complete_marks("Which colour?", 2)
    '<image><image>Which colour?'
    >>> complete_marks("Left <image>, right?", 2)
    '<image>Left <image>, right?'
    """
    t = as_template(template)
    missing = n_images - t.render(problem).count(IMAGE_PLACEHOLDER)
    if missing <= 0:
        return problem
    completed = IMAGE_PLACEHOLDER * missing + problem
    # A template that rewrites its content may drop or repeat the added marks: then the problem stays.
    return completed if t.render(completed).count(IMAGE_PLACEHOLDER) == n_images else problem


def prompt_text(problem: str, n_images: int = 1, template: str | PromptTemplate | None = None) -> str:
    """The prompt of `build_messages` as one string with an ``<image>`` mark per image part (the
    form of ShareGPT / LLaMA-Factory datasets).

    >>> prompt_text("Which colour?", 2, template="Q: {{ content }}")
    'Q: <image><image>Which colour?'
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

    `pieces` is the templated text split at each ``<image>`` mark (`prompt_pieces_sql` with
    `n_images`): every piece but the last is followed by an image part, empty text parts are dropped,
    and images still without a mark (a template that rewrote the added ones) go first. A scalar
    macro (no subquery), so DuckDB evaluates it vector by vector.
    """
    return f"""CREATE OR REPLACE MACRO pebr_prompt(pieces, n_images) AS [{{'role': 'user', 'content': list_concat(
  list_transform(range(greatest(0, n_images - (len(pieces) - 1))), lambda x: {_IMAGE_PART}),
  list_filter(flatten(list_transform(pieces, lambda piece: [{{'type': 'text', 'text': piece}}, {_IMAGE_PART}]))[:-2],
              lambda part: part.text IS NULL OR part.text <> ''))}}]"""


def _render_sql(problem: str, t: PromptTemplate) -> str:
    """SQL of the template rendered over the `problem` expression."""
    if t.mode == "python":
        return f"pebr_render({problem})"
    return f"{_literal(t.prefix)} || {t.content_sql(problem)} || {_literal(t.suffix)}"


def prompt_pieces_sql(problem: str, template: str | PromptTemplate | None = None, n_images: str | None = None) -> str:
    """SQL splitting the template rendered over the `problem` column at its ``<image>`` marks; with
    `n_images`, over the problem as `complete_marks` completes it."""
    t = as_template(template)
    mark = _literal(IMAGE_PLACEHOLDER)
    plain = f"string_split({_render_sql(problem, t)}, {mark})"
    if n_images is None:
        return plain
    missing = f"({n_images} - (len({plain}) - 1))"
    completed = f"string_split({_render_sql(f'repeat({mark}, {missing}) || {problem}', t)}, {mark})"
    return f"CASE WHEN {missing} > 0 AND len({completed}) - 1 = {n_images} THEN {completed} ELSE {plain} END"


def prompt_parts_sql(problem: str, template: str | PromptTemplate | None = None) -> str:
    """SQL splitting the `problem` column, as `template` inserts it, at its ``<image>`` marks, for
    `prompt_sql(parts=...)`."""
    return f"string_split({as_template(template).content_sql(problem)}, {_literal(IMAGE_PLACEHOLDER)})"


def prompt_sql(problem: str, n_images: str, template: str | PromptTemplate | None = None, parts: str | None = None) -> str:
    """SQL for the chat prompt of `build_messages(problem, n_images, template)`, row by row (a
    `python` template needs `template.register(con)` first).

    The common shapes (one image and no mark, or at most one image and one mark) are built from the
    problem split at its marks (`parts`, a column holding `prompt_parts_sql(problem, template)`,
    computed once per row by the caller; default: split here), specialised in Python to the
    template's fixed text; any other row goes through the `pebr_prompt` macro (`prompt_macro`),
    whose list lambdas cost several times more per row.
    """
    t = as_template(template)
    general = f"pebr_prompt({prompt_pieces_sql(problem, t, n_images)}, {n_images})"
    if t.mode == "python":
        return general
    prefix, suffix = t.prefix, t.suffix
    raw, problem = problem, t.content_sql(problem)
    mark = IMAGE_PLACEHOLDER
    # The fast shapes count marks in the problem alone: a template that holds a mark, or could
    # complete one across its border with the problem, always takes the general path.
    straddles = any(prefix.endswith(mark[:i]) or suffix.startswith(mark[i:]) for i in range(1, len(mark)))
    if mark in prefix + suffix or straddles:
        return general
    parts = parts or f"string_split({problem}, {_literal(IMAGE_PLACEHOLDER)})"

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
    # One image and no mark: the mark goes at the start of the problem (`complete_marks`). A trimmed
    # problem then keeps its leading white space, which now follows the mark.
    rest = f"rtrim({raw}, {_literal(_WHITESPACE)})" if t.mode == "trim" else raw
    after_mark = joined(rest, suf)
    lead = [text(pre)] if prefix else []
    no_mark = (message(*lead, _IMAGE_PART, text(after_mark)) if suffix else
               f"CASE WHEN {after_mark} = '' THEN {message(*lead, _IMAGE_PART)} "
               f"ELSE {message(*lead, _IMAGE_PART, text(after_mark))} END")
    return f"""CASE
  WHEN len({parts}) = 1 AND {n_images} = 1 THEN {no_mark}
  WHEN len({parts}) = 2 AND {n_images} <= 1 THEN {one_mark}
  ELSE {general} END"""
