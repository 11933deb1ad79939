"""Ingest: every input record becomes a sample or a reject with a stable reason, never both.

Samples get a stable id (a hash of source and content) and their images are copied into the
store by content, so the store stays valid when the source folder moves. Ingesting a file that
was ingested before (same bytes, same options) adds nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from curate.readers import RawRecord, read_records
from curate.store import Store, new_run_id
from schemas import CAPABILITIES
from schemas.errors import PebrError

MIN_SIDE = 28
MAX_ASPECT = 200.0
KNOWN_FIELDS = {"qid", "problem", "answer", "images", "image", "key_words", "source", "capability"}

REASONS = {
    "bad_utf8": "line is not UTF-8",
    "bad_json": "line is not JSON",
    "not_an_object": "record is not an object",
    "missing_problem": "problem missing or empty",
    "missing_answer": "answer missing",
    "bad_field": "a field has the wrong type or value",
    "no_image": "record names no image",
    "image_outside_root": "image path leaves the image root",
    "image_missing": "image file does not exist",
    "image_not_file": "image path is not a file",
    "image_unreadable": "image cannot be read as an image",
    "image_too_small": f"image smaller than {MIN_SIDE} px on a side",
    "image_aspect": f"image aspect ratio over {MAX_ASPECT:g}",
    "duplicate": "identical to a sample already kept",
    "conflicting_duplicate": "same source and qid as a kept sample, other content",
}
"""Stable reason codes of `rejects.reason`, with what each means."""


class Rejected(Exception):
    def __init__(self, reason: str, message: str):
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass
class IngestOptions:
    """What `curate ingest` was asked to do."""

    path: Path
    """A JSON array, JSONL, Parquet, CSV/Arrow file, or a dataset directory saved by `datasets`."""
    image_root: Path
    """Relative image paths resolve under this folder; none may leave it."""
    source: str | None = None
    """Source name for records without a `source` field (default: the file's stem)."""
    capability: str | None = None
    """Capability for records without a `capability` field."""
    split: str | None = None
    """Split of a saved DatasetDict."""


@dataclass
class IngestReport:
    run_id: str | None
    records: int = 0
    accepted: int = 0
    rejected: Counter = field(default_factory=Counter)
    already_ingested: str | None = None
    """The earlier run that ingested the same file, when nothing was done."""


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(p.relative_to(path).as_posix().encode() if path.is_dir() else b"")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class _ImageCache:
    """Resolves, checks and stores each distinct image once."""

    def __init__(self, store: Store, root: Path):
        self.store = store
        self.root = Path(os.path.realpath(root))
        self.seen: dict[str, tuple[str, str] | Rejected] = {}

    def add(self, ref) -> tuple[str, str]:
        """Returns (store path, content hash) or raises Rejected."""
        if isinstance(ref, str):
            key = "p:" + ref
            if key not in self.seen:
                try:
                    self.seen[key] = self._from_path(ref)
                except Rejected as exc:
                    self.seen[key] = exc
            hit = self.seen[key]
            if isinstance(hit, Rejected):
                raise hit
            return hit
        data, name = _image_bytes(ref)
        return self._store_bytes(data, Path(name or "image.png").suffix, "embedded image")

    def _from_path(self, ref: str) -> tuple[str, str]:
        p = Path(ref)
        if not ref.strip():
            raise Rejected("no_image", "empty image path")
        if p.is_absolute() or ".." in p.parts:
            raise Rejected("image_outside_root", f"{ref}: image paths must be relative to the image root, without '..'")
        full = self.root / p
        real = Path(os.path.realpath(full))
        if not real.is_relative_to(self.root):
            raise Rejected("image_outside_root", f"{ref}: resolves to {real}, outside the image root {self.root}")
        if not os.path.lexists(full):
            raise Rejected("image_missing", f"{ref}: no such file under {self.root}")
        if not real.exists():
            raise Rejected("image_missing", f"{ref}: a broken link")
        if not real.is_file():
            raise Rejected("image_not_file", f"{ref}: not a regular file")
        try:
            data = real.read_bytes()
        except OSError as exc:
            raise Rejected("image_unreadable", f"{ref}: {exc.strerror}") from None
        return self._store_bytes(data, p.suffix, ref)

    def _store_bytes(self, data: bytes, suffix: str, label: str) -> tuple[str, str]:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
                w, h = im.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise Rejected("image_unreadable", f"{label}: not a readable image ({exc})") from None
        if min(w, h) < MIN_SIDE:
            raise Rejected("image_too_small", f"{label}: {w}x{h} px, smaller than {MIN_SIDE} px on a side")
        if max(w, h) / min(w, h) > MAX_ASPECT:
            raise Rejected("image_aspect", f"{label}: {w}x{h} px, aspect ratio over {MAX_ASPECT:g}")
        return self.store.put_image(data, suffix or ".img"), hashlib.sha256(data).hexdigest()


def _image_bytes(ref) -> tuple[bytes, str | None]:
    """Bytes of an image given as a datasets Image dict or a PIL image."""
    if isinstance(ref, dict) and ref.get("bytes") is not None:
        return bytes(ref["bytes"]), ref.get("path")
    if hasattr(ref, "save") and hasattr(ref, "size"):  # PIL image
        buf = io.BytesIO()
        ref.save(buf, format="PNG")
        return buf.getvalue(), "image.png"
    raise Rejected("bad_field", f"images: cannot read an image from {type(ref).__name__}")


def _text(value, name: str, reason: str) -> str:
    if value is None:
        raise Rejected(reason, f"{name} is missing")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Rejected("bad_field", f"{name} must be text or a number, got {type(value).__name__}")
    text = value if isinstance(value, str) else _number_text(value)
    if not text.strip():
        raise Rejected(reason, f"{name} is empty")
    return text


def _number_text(value: int | float) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _key_words(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return [v if isinstance(v, str) else _number_text(v) for v in value]
    raise Rejected("bad_field", f"key_words must be a string or a list of strings, got {type(value).__name__}")


def _image_refs(rec: dict) -> list:
    refs = rec.get("images", rec.get("image"))
    if refs is None or (isinstance(refs, (list, tuple)) and len(refs) == 0):
        raise Rejected("no_image", "the record names no image")
    return list(refs) if isinstance(refs, (list, tuple)) else [refs]


def content_id(source: str, problem: str, answer: str, key_words: list[str], image_hashes: list[str]) -> str:
    payload = json.dumps([source, problem, answer, key_words, image_hashes], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _raw_text(rec: RawRecord) -> str | None:
    if rec.raw is not None:
        return rec.raw
    if rec.value is None:
        return None
    return json.dumps(rec.value, ensure_ascii=False, default=lambda v: f"<{type(v).__name__}>")


def ingest(store: Store, opts: IngestOptions, progress: Callable[[int], None] | None = None) -> IngestReport:
    """Read `opts.path` into the store. Holds the writer lock for the whole run."""
    path = opts.path
    if not path.exists():
        raise PebrError(f"{path}: no such file or directory")
    if not opts.image_root.is_dir():
        raise PebrError(f"--image-root {opts.image_root}: not a directory")
    if opts.capability is not None and opts.capability not in CAPABILITIES:
        raise PebrError(f"--capability must be one of {', '.join(CAPABILITIES)}")
    default_source = opts.source or path.stem
    digest = _file_digest(path)
    fingerprint = {"file_sha256": digest, "source": opts.source, "capability": opts.capability, "split": opts.split}

    with store.writing(f"curate ingest {path.name}"):
        con = store.connect()
        prior = con.execute(
            "SELECT run_id FROM runs WHERE kind = 'ingest' AND json_extract_string(config, '$.fingerprint') = ?",
            [json.dumps(fingerprint, sort_keys=True)],
        ).fetchone()
        if prior:
            return IngestReport(run_id=None, already_ingested=prior[0])
        kept_ids = {sid for (sid,) in con.execute("SELECT sample_id FROM samples").fetchall()}
        kept_qids = {(s, q): sid for s, q, sid in con.execute("SELECT source, qid, sample_id FROM samples").fetchall()}
        con.close()

        run_id = new_run_id("ingest")
        report = IngestReport(run_id=run_id)
        images = _ImageCache(store, opts.image_root)
        samples: list[dict] = []
        rejects: list[dict] = []
        file_label = str(path)

        def flush() -> None:
            store.write("samples", pa.Table.from_pylist(samples), run_id)
            store.write("rejects", pa.Table.from_pylist(rejects), run_id)
            samples.clear()
            rejects.clear()

        for rec in read_records(path, opts.split):
            report.records += 1
            qid = None
            try:
                if rec.error:
                    raise Rejected(*rec.error)
                value = rec.value
                qid_value = value.get("qid")
                qid = None if qid_value is None else str(qid_value)
                problem = _text(value.get("problem"), "problem", "missing_problem")
                answer = _text(value.get("answer"), "answer", "missing_answer")
                key_words = _key_words(value.get("key_words"))
                source = value.get("source") or default_source
                capability = value.get("capability") or opts.capability
                if not isinstance(source, str):
                    raise Rejected("bad_field", f"source must be text, got {type(source).__name__}")
                if capability is not None and capability not in CAPABILITIES:
                    raise Rejected("bad_field", f"capability {capability!r} is not one of {', '.join(CAPABILITIES)}")
                stored = [images.add(ref) for ref in _image_refs(value)]
                sample_id = content_id(source, problem, answer, key_words, [h for _, h in stored])
                if qid is None:
                    qid = f"h-{sample_id}"
                if sample_id in kept_ids:
                    raise Rejected("duplicate", f"identical to sample {sample_id} already kept")
                if (source, qid) in kept_qids:
                    raise Rejected("conflicting_duplicate",
                                   f"qid {qid} of source {source} is already sample {kept_qids[(source, qid)]} with other content")
                extra = {k: v for k, v in value.items() if k not in KNOWN_FIELDS}
                samples.append({
                    "sample_id": sample_id, "source": source, "capability": capability, "qid": qid,
                    "problem": problem, "answer": answer, "key_words": key_words,
                    "images": [p for p, _ in stored],
                    "extra": json.dumps(extra, ensure_ascii=False, default=str) if extra else None,
                    "ingest_run": run_id, "ingest_file": file_label, "record_index": rec.index,
                })
                kept_ids.add(sample_id)
                kept_qids[(source, qid)] = sample_id
                report.accepted += 1
            except Rejected as exc:
                report.rejected[exc.reason] += 1
                rejects.append({
                    "ingest_run": run_id, "source_file": file_label, "record_index": rec.index, "qid": qid,
                    "reason": exc.reason, "message": exc.message, "raw": _raw_text(rec),
                })
            if len(samples) + len(rejects) >= 50_000:
                flush()
            if progress:
                progress(1)
        if report.records == 0:
            raise PebrError(f"{path}: no records found")
        flush()
        store.add_run(run_id, "ingest", config={
            "fingerprint": json.dumps(fingerprint, sort_keys=True), "path": str(path.absolute()),
            "image_root": str(opts.image_root.absolute()), "records": report.records,
            "accepted": report.accepted, "rejected": dict(report.rejected),
        })
        return report
