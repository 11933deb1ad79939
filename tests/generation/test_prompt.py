"""The prompt: one builder in Python, the same prompt as SQL for exports, and as text for ShareGPT."""

from __future__ import annotations

import pytest

from generation.prompt import (
    IMAGE_PLACEHOLDER,
    PROMPT_TEMPLATE,
    build_messages,
    check_template,
    prompt_macro,
    prompt_sql,
    prompt_text,
)

PROMPT_CASES = [
    ("How many <image> circles?", 1), ("<image>", 1), ("no mark at all", 2), ("<image><image> two", 2),
    ("x <image> y <image>", 1), ("end <image>", 3), ("it's {odd} 'quoted' <image>", 1), ("", 1), ("", 0), ("a<image>b", 0),
    ("<image>first", 1), ("last<image>", 0), ("plain", 1), ("plain", 0), ("<image>", 0), ("two <image><image>", 1),
    ("ge>", 1), ("<ima", 1), ("image>", 1), ("ge> x <image>", 1), ("  padded <image>\n", 1), ("\u3000wide space", 1),
    ("  lead and trail  ", 1), ("   ", 1), ("two images", 2), ("\n", 2),
]


REFERENCE_LIKE = ("Generate an image description based on the question.\n...\n"
                  "### Image Description:\n### Rationales:\n### The final answer is: \n\n{{ content | trim }}\n")
"""The shape of the reference's examples/format_prompt/pebr_format.jinja: fixed text, then the trimmed problem."""


@pytest.mark.parametrize("template", [PROMPT_TEMPLATE, "{{ content }}", "<image> first {{ content }} then",
                                      "it's {{ content }} 'q'", "{{ content }} end", "<ima{{ content }}", "{{ content }}ge>",
                                      "<{{ content }}>", REFERENCE_LIKE, "{{ content | upper }} and {{ content }}",
                                      "{% if content %}Q: {{ content }}{% else %}empty{% endif %}"])
def test_prompt_sql_matches_build_messages(template):
    import duckdb

    from generation.prompt import as_template

    con = duckdb.connect()
    con.execute(prompt_macro())
    as_template(template).register(con)
    got = con.execute(f"SELECT {prompt_sql('p', 'n', template)} "
                      "FROM (SELECT unnest(?) AS p, unnest(?) AS n, generate_subscripts(?, 1) AS i) ORDER BY i",
                      [[p for p, _ in PROMPT_CASES], [n for _, n in PROMPT_CASES], [p for p, _ in PROMPT_CASES]]).fetchall()
    for (problem, n_images), (messages,) in zip(PROMPT_CASES, got, strict=True):
        messages = [{"role": m["role"], "content": [{k: v for k, v in part.items() if v is not None} for part in m["content"]]}
                    for m in messages]
        assert messages == build_messages(problem, n_images, template)



@pytest.mark.parametrize("template", [PROMPT_TEMPLATE, "{{ content }}", "<image> first {{ content }} then", REFERENCE_LIKE])
def test_prompt_text_has_one_mark_per_image_part(template):
    for problem, n_images in PROMPT_CASES:
        parts = build_messages(problem, n_images, template)[0]["content"]
        text = prompt_text(problem, n_images, template)
        assert text.count(IMAGE_PLACEHOLDER) == sum(p["type"] == "image" for p in parts)
        assert text.replace(IMAGE_PLACEHOLDER, "") == "".join(p.get("text", "") for p in parts)


@pytest.mark.parametrize("bad", ["no content here", "{problem}", "{{ content }} {{ other }}", "{{ content ", "{% if %}"])
def test_a_format_prompt_is_jinja_over_content_only(bad):
    with pytest.raises(ValueError):
        check_template(bad)


def test_template_modes():
    from generation.prompt import as_template

    assert as_template(PROMPT_TEMPLATE).mode == "linear"
    assert as_template(REFERENCE_LIKE).mode == "trim"
    assert as_template("{{ content | upper }}").mode == "python"
    assert build_messages("  q  ", 0, REFERENCE_LIKE)[0]["content"][0]["text"].endswith("\n\nq")


def test_a_format_prompt_file_is_read_and_checked(tmp_path):
    from generation.prompt import load_format_prompt
    from schemas.errors import PebrError

    good = tmp_path / "pebr_format.jinja"
    good.write_text(REFERENCE_LIKE)
    assert load_format_prompt(good) == REFERENCE_LIKE
    bad = tmp_path / "bad.jinja"
    bad.write_text("no content")
    with pytest.raises(PebrError, match="bad.jinja: the format prompt must use"):
        load_format_prompt(bad)
    with pytest.raises(PebrError, match="cannot read"):
        load_format_prompt(tmp_path / "missing.jinja")
