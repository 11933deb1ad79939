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
    ("ge>", 1), ("<ima", 1), ("image>", 1), ("ge> x <image>", 1),
]


@pytest.mark.parametrize("template", [PROMPT_TEMPLATE, "{problem}", "<image> first {problem} then", "it's {problem} 'q'", "{problem} end",
                                      "<ima{problem}", "{problem}ge>", "<{problem}>"])
def test_prompt_sql_matches_build_messages(template):
    import duckdb

    con = duckdb.connect()
    con.execute(prompt_macro())
    got = con.execute(f"SELECT {prompt_sql('p', 'n', template)} "
                      "FROM (SELECT unnest(?) AS p, unnest(?) AS n, generate_subscripts(?, 1) AS i) ORDER BY i",
                      [[p for p, _ in PROMPT_CASES], [n for _, n in PROMPT_CASES], [p for p, _ in PROMPT_CASES]]).fetchall()
    for (problem, n_images), (messages,) in zip(PROMPT_CASES, got, strict=True):
        messages = [{"role": m["role"], "content": [{k: v for k, v in part.items() if v is not None} for part in m["content"]]}
                    for m in messages]
        assert messages == build_messages(problem, n_images, template)



@pytest.mark.parametrize("template", [PROMPT_TEMPLATE, "{problem}", "<image> first {problem} then"])
def test_prompt_text_has_one_mark_per_image_part(template):
    for problem, n_images in PROMPT_CASES:
        parts = build_messages(problem, n_images, template)[0]["content"]
        text = prompt_text(problem, n_images, template)
        assert text.count(IMAGE_PLACEHOLDER) == sum(p["type"] == "image" for p in parts)
        assert text.replace(IMAGE_PLACEHOLDER, "") == "".join(p.get("text", "") for p in parts)


@pytest.mark.parametrize("bad", ["no problem here", "{problem} and {problem}", "{problem} {other}", "{0} {problem}", "{problem"])
def test_a_template_must_hold_problem_exactly_once(bad):
    with pytest.raises(ValueError):
        check_template(bad)
