"""The paper's prompt: one user message asking for a sectioned answer, then the problem.

Scoring, training and evaluation all build their prompts here, so the format reward always checks
the sections the model was asked for.
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
