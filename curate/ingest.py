"""Ingest: every input record becomes a sample or a reject with a stable reason, never both.

Samples get a stable id (a hash of source and content) and their images are copied into the
store by content, so the store stays valid when the source folder moves. Ingesting a file that
was ingested before (same bytes, same options) adds nothing.

Hostile input ends in rejects, not in a failed ingest: every image is decoded in full, under a
pixel and a byte bound, before it is kept; an image path (a string, or a `{"bytes": None, "path"}`
struct of a datasets Image column, Parquet or Arrow) must resolve inside the image root, whatever
the input format; text that Arrow cannot write (lone surrogates) is a `bad_field`. The input is
streamed (see `curate.readers`) and rows go to the store in parts of bounded size, so memory does
not grow with the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from curate.readers import (
    MAX_RECORD_BYTES,
    RawRecord,
    check_input,
    open_input,
    open_regular,
    read_records,
)
from curate.store import Store, new_run_id
from generation.prompt import IMAGE_PLACEHOLDER
from schemas import CAPABILITIES
from schemas.errors import PebrError

MIN_SIDE = 28
MAX_ASPECT = 200.0
MAX_PIXELS = 8192 * 8192
"""Largest image area ingest decodes (64 Mi pixels, up to 256 MiB decoded): a larger one is
`image_too_large` (PIL's own decompression-bomb limit is 89 M pixels, with a warning only)."""
MAX_IMAGE_BYTES = 128 << 20
"""Largest image file (or embedded image) ingest reads."""
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "AVIF")
"""Image formats ingest decodes (a JPEG may come out as MPO); others, such as EPS (which PIL renders
with Ghostscript), are `image_unreadable`."""
FLUSH_ROWS = 50_000
FLUSH_BYTES = 64 << 20
"""Rows are written to the store as a part whenever this many, or this much text, are pending."""
IMAGE_CACHE = 65_536
"""How many image paths' outcomes are remembered, so an image named by many records is read once."""
KNOWN_FIELDS = {"qid", "problem", "answer", "images", "image", "key_words", "source", "capability"}

REASONS = {
    "bad_utf8": "line is not UTF-8",
    "bad_json": "line is not JSON",
    "record_too_large": f"record over {MAX_RECORD_BYTES >> 20} MiB",
    "not_an_object": "record is not an object",
    "missing_problem": "problem missing or empty",
    "missing_answer": "answer missing",
    "bad_field": "a field has the wrong type or value",
    "no_image": "record names no image",
    "image_marks": "more <image> marks in the problem than images",
    "image_outside_root": "image path leaves the image root",
    "image_missing": "image file does not exist",
    "image_not_file": "image path is not a file",
    "image_unreadable": "image cannot be read as an image",
    "image_too_large": f"image over {MAX_PIXELS:,} pixels or {MAX_IMAGE_BYTES >> 20} MiB",
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
        with open_input(p) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


class _ImageCache:
    """Resolves, checks and stores each distinct image once."""

    def __init__(self, store: Store, root: Path):
        self.store = store
        self.root = Path(os.path.realpath(root))
        self.seen: OrderedDict[str, tuple[str, str] | tuple[None, str, str]] = OrderedDict()
        """path -> (store path, content hash), or (None, reason, message); the most recent IMAGE_CACHE."""

    def add(self, ref) -> tuple[str, str]:
        """Returns (store path, content hash) or raises Rejected."""
        path = _image_path(ref)
        if path is None:
            data, name = _image_bytes(ref)
            return self._store_bytes(data, _suffix(name) if name else None, "embedded image")
        hit = self.seen.get(path)
        if hit is None:
            try:
                hit = self._from_path(path)
            except Rejected as exc:
                hit = (None, exc.reason, exc.message)
            self.seen[path] = hit
            if len(self.seen) > IMAGE_CACHE:
                self.seen.popitem(last=False)
        else:
            self.seen.move_to_end(path)
        if hit[0] is None:
            raise Rejected(hit[1], hit[2])
        return hit

    def _from_path(self, ref: str) -> tuple[str, str]:
        if not ref.strip():
            raise Rejected("no_image", "empty image path")
        if "\x00" in ref:
            shown = _printable(ref).replace("\x00", "\\x00")
            raise Rejected("bad_field", f"{shown}: an image path cannot hold a NUL byte")
        p = Path(ref)
        if ".." in p.parts:
            raise Rejected("image_outside_root", f"{ref}: image paths may not hold '..'")
        # A relative path resolves under the root; an absolute one must lie inside it (a dataset that
        # names its images by absolute path, our own exports included, is read with the folder as root).
        full = self.root / p
        try:
            real = Path(os.path.realpath(full))
            if not real.is_relative_to(self.root):
                raise Rejected("image_outside_root", f"{ref}: resolves to {real}, outside the image root {self.root}")
            if not os.path.lexists(full):
                raise Rejected("image_missing", f"{ref}: no such file under {self.root}")
            if not real.exists():
                raise Rejected("image_missing", f"{ref}: a broken link")
            info = real.stat()
            if not stat.S_ISREG(info.st_mode):
                raise Rejected("image_not_file", f"{ref}: not a regular file")
            if info.st_size > MAX_IMAGE_BYTES:
                raise Rejected("image_too_large", f"{ref}: {info.st_size:,} bytes, over {MAX_IMAGE_BYTES:,}")
            with open_regular(real, ref) as f:  # never blocks: a file swapped for a FIFO is refused
                data = _read_at_most(f, MAX_IMAGE_BYTES)
        except PebrError:
            raise Rejected("image_not_file", f"{ref}: not a regular file") from None
        except OSError as exc:
            raise Rejected("image_unreadable", f"{ref}: {exc.strerror or exc}") from None
        if data is None:
            raise Rejected("image_too_large", f"{ref}: over {MAX_IMAGE_BYTES:,} bytes")
        return self._store_bytes(data, _suffix(ref), ref)

    def _store_bytes(self, data: bytes, suffix: str | None, label: str) -> tuple[str, str]:
        """Check `data` and copy it into the store (as `<sha256><suffix>`; without a suffix, its format's)."""
        if len(data) > MAX_IMAGE_BYTES:
            raise Rejected("image_too_large", f"{label}: {len(data):,} bytes, over {MAX_IMAGE_BYTES:,}")
        w, h, fmt = _decode(data, label)
        if min(w, h) < MIN_SIDE:
            raise Rejected("image_too_small", f"{label}: {w}x{h} px, smaller than {MIN_SIDE} px on a side")
        if max(w, h) / min(w, h) > MAX_ASPECT:
            raise Rejected("image_aspect", f"{label}: {w}x{h} px, aspect ratio over {MAX_ASPECT:g}")
        if suffix is None or suffix == ".img":
            suffix = _FORMAT_SUFFIX.get(fmt, suffix or ".img")
        return self.store.put_image(data, suffix), hashlib.sha256(data).hexdigest()


def _read_at_most(f, limit: int) -> bytes | None:
    """The file's bytes, None when it holds more than `limit` (read in pieces: `read(limit)` would
    allocate `limit` bytes up front)."""
    chunks, n = [], 0
    while chunk := f.read(1 << 20):
        n += len(chunk)
        if n > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _decode(data: bytes, label: str) -> tuple[int, int, str]:
    """The size and format of an image that decodes in full (every pixel, not only the header and checksums)
    and has at most MAX_PIXELS pixels; anything else raises Rejected."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                w, h = im.size
                fmt = im.format
                if w * h > MAX_PIXELS:
                    raise Rejected("image_too_large", f"{label}: {w}x{h} px, over {MAX_PIXELS:,} pixels")
                im.verify()  # chunk checksums (PNG), which decoding does not check
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                im.load()  # the pixels themselves: a broken stream fails here
        except Rejected:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Rejected("image_too_large", f"{label}: over {MAX_PIXELS:,} pixels ({exc})") from None
        except UnidentifiedImageError:
            raise Rejected("image_unreadable", f"{label}: not an image, or not of a format ingest reads "
                                               f"({', '.join(IMAGE_FORMATS)})") from None
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a decoder raises on hostile bytes, the image is unreadable
            raise Rejected("image_unreadable", f"{label}: not a readable image ({exc})") from None
    return w, h, fmt


_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")


_FORMAT_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp",
                  "TIFF": ".tif", "PPM": ".ppm", "AVIF": ".avif"}


def _suffix(name: str) -> str:
    """The file suffix of a stored image: the name's, when it is a plain one."""
    suffix = Path(name).suffix
    return suffix if _SUFFIX.fullmatch(suffix) else ".img"


def _image_path(ref) -> str | None:
    """The path an image reference names (a string, or an Image struct without bytes); None for
    embedded bytes or a PIL image."""
    if isinstance(ref, str):
        return ref
    if isinstance(ref, dict) and ref.get("bytes") is None:
        path = ref.get("path")
        if path is None:
            raise Rejected("no_image", "an image with neither bytes nor a path")
        if not isinstance(path, str):
            raise Rejected("bad_field", f"images: an image path must be text, got {type(path).__name__}")
        return path
    return None


def _image_bytes(ref) -> tuple[bytes, str | None]:
    """Bytes of an image given as a datasets Image dict or a PIL image."""
    if isinstance(ref, dict):
        data, name = ref.get("bytes"), ref.get("path")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise Rejected("bad_field", f"images: image bytes must be binary, got {type(data).__name__}")
        return bytes(data), name if isinstance(name, str) and "\x00" not in name else None
    if hasattr(ref, "save") and hasattr(ref, "size"):  # PIL image
        try:
            w, h = ref.size
            if w * h > MAX_PIXELS:
                raise Rejected("image_too_large", f"embedded image: {w}x{h} px, over {MAX_PIXELS:,} pixels")
            buf = io.BytesIO()
            ref.save(buf, format="PNG")
        except Rejected:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise Rejected("image_unreadable", f"embedded image: not a readable image ({exc})") from None
        return buf.getvalue(), "image.png"
    raise Rejected("bad_field", f"images: cannot read an image from {type(ref).__name__}")


def _printable(text: str) -> str:
    """`text` as Arrow can write it: lone surrogates become backslash escapes (a file name's bytes that
    are not UTF-8, which Python holds as surrogates, come out as `\\xe9`)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _unicode(text: str, name: str) -> str:
    """`text`, which must be writable as UTF-8 (JSON can escape a lone surrogate; Arrow cannot write one)."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise Rejected("bad_field", f"{name} holds {text[exc.start]!r}, a lone surrogate, which is not text") from None
    return text


def _text(value, name: str, reason: str) -> str:
    if value is None:
        raise Rejected(reason, f"{name} is missing")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise Rejected("bad_field", f"{name} must be text or a number, got {type(value).__name__}")
    text = value if isinstance(value, str) else _number_text(value, name)
    if not text.strip():
        raise Rejected(reason, f"{name} is empty")
    return _unicode(text, name)


def _number_text(value: float, name: str = "a number") -> str:
    try:
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    except ValueError as exc:  # more digits than Python writes (sys.get_int_max_str_digits)
        raise Rejected("bad_field", f"{name}: a number too long to write ({str(exc).split(';')[0]})") from None


def _key_words(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [_unicode(value, "key_words")]
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, int, float)) for v in value):
        return [_unicode(v, "key_words") if isinstance(v, str) else _number_text(v, "key_words") for v in value]
    raise Rejected("bad_field", f"key_words must be a string or a list of strings, got {type(value).__name__}")


def _image_refs(rec: dict) -> list:
    refs = rec.get("images", rec.get("image"))
    if refs is None or (isinstance(refs, (list, tuple)) and len(refs) == 0):
        raise Rejected("no_image", "the record names no image")
    return list(refs) if isinstance(refs, (list, tuple)) else [refs]


_HEX_ID = re.compile(r"[0-9a-f]{24}")


class _Kept:
    """The samples kept so far, by id and by (source, qid), for the duplicate checks. Ids are held as
    ints and (source, qid) as a 128-bit hash: about 160 bytes a sample instead of 260 as strings,
    which is what bounds an ingest's memory once its input is streamed."""

    def __init__(self):
        self.ids: set[int | str] = set()
        self.qids: dict[int, int | str] = {}

    @staticmethod
    def _id(sample_id: str) -> int | str:
        return int(sample_id, 16) if _HEX_ID.fullmatch(sample_id) else sample_id

    @staticmethod
    def _qid(source: str, qid: str) -> int:
        key = json.dumps([source, qid]).encode()
        return int.from_bytes(hashlib.blake2b(key, digest_size=16).digest(), "big")

    def add(self, sample_id: str, source: str, qid: str) -> None:
        sid = self._id(sample_id)
        self.ids.add(sid)
        self.qids[self._qid(source, qid)] = sid

    def has_id(self, sample_id: str) -> bool:
        return self._id(sample_id) in self.ids

    def by_qid(self, source: str, qid: str) -> str | None:
        sid = self.qids.get(self._qid(source, qid))
        return sid if sid is None or isinstance(sid, str) else format(sid, "024x")


def content_id(source: str, problem: str, answer: str, key_words: list[str], image_hashes: list[str]) -> str:
    payload = json.dumps([source, problem, answer, key_words, image_hashes], ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _raw_text(rec: RawRecord) -> str | None:
    if rec.raw is not None:
        return _printable(rec.raw)
    if rec.value is None:
        return None
    try:
        return _printable(json.dumps(rec.value, ensure_ascii=False, default=lambda v: f"<{type(v).__name__}>"))
    except (ValueError, RecursionError):
        return f"<{type(rec.value).__name__}>"


def _qid(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    try:
        return str(value)
    except ValueError as exc:  # an int with more digits than Python writes
        raise Rejected("bad_field", f"qid: a number too long to write ({str(exc).split(';')[0]})") from None


def _extra(value: dict) -> str | None:
    extra = {k: v for k, v in value.items() if k not in KNOWN_FIELDS}
    if not extra:
        return None
    try:
        text = json.dumps(extra, ensure_ascii=False, default=str)
    except (ValueError, RecursionError):
        raise Rejected("bad_field", "an extra field is nested too deep, or holds a number too long, to write") from None
    return _unicode(text, "an extra field")


def ingest(store: Store, opts: IngestOptions, progress: Callable[[int], None] | None = None) -> IngestReport:
    """Read `opts.path` into the store. Holds the writer lock for the whole run."""
    path = opts.path
    check_input(path)  # a missing path, a FIFO, a device or a folder that is no dataset: one clear error, before reading
    if not opts.image_root.is_dir():
        raise PebrError(f"--image-root {opts.image_root}: not a directory")
    if opts.capability is not None and opts.capability not in CAPABILITIES:
        raise PebrError(f"--capability must be one of {', '.join(CAPABILITIES)}")
    if opts.source is not None and _printable(opts.source) != opts.source:
        raise PebrError(f"--source {_printable(opts.source)!r}: not text (it holds bytes that are not UTF-8)")
    default_source = opts.source or _printable(path.stem)
    digest = _file_digest(path)
    fingerprint = {"file_sha256": digest, "source": opts.source, "capability": opts.capability, "split": opts.split}

    with store.writing(f"curate ingest {_printable(path.name)}"):
        con = store.connect()
        prior = con.execute(
            "SELECT run_id FROM runs WHERE kind = 'ingest' AND json_extract_string(config, '$.fingerprint') = ?",
            [json.dumps(fingerprint, sort_keys=True)],
        ).fetchone()
        if prior:
            return IngestReport(run_id=None, already_ingested=prior[0])
        kept = _Kept()
        cur = con.execute("SELECT source, qid, sample_id FROM samples")
        while rows := cur.fetchmany(65_536):
            for s, q, sid in rows:
                kept.add(sid, s, q)
        con.close()

        run_id = new_run_id("ingest")
        report = IngestReport(run_id=run_id)
        images = _ImageCache(store, opts.image_root)
        samples: list[dict] = []
        rejects: list[dict] = []
        file_label = _printable(str(path))
        pending = 0  # characters of text in `samples` and `rejects`

        def flush() -> None:
            nonlocal pending
            store.write("samples", pa.Table.from_pylist(samples), run_id)
            store.write("rejects", pa.Table.from_pylist(rejects), run_id)
            samples.clear()
            rejects.clear()
            pending = 0

        for rec in read_records(path, opts.split):
            report.records += 1
            qid = None
            try:
                if rec.error:
                    raise Rejected(*rec.error)
                value = rec.value
                qid = _qid(value.get("qid"))
                if qid is not None:
                    _unicode(qid, "qid")
                problem = _text(value.get("problem"), "problem", "missing_problem")
                answer = _text(value.get("answer"), "answer", "missing_answer")
                key_words = _key_words(value.get("key_words"))
                source = value.get("source") or default_source
                capability = value.get("capability") or opts.capability
                if not isinstance(source, str):
                    raise Rejected("bad_field", f"source must be text, got {type(source).__name__}")
                _unicode(source, "source")
                if capability is not None and capability not in CAPABILITIES:
                    raise Rejected("bad_field", f"capability {capability!r} is not one of {', '.join(CAPABILITIES)}")
                refs = _image_refs(value)
                if (marks := problem.count(IMAGE_PLACEHOLDER)) > len(refs):
                    raise Rejected("image_marks", f"the problem has {marks} {IMAGE_PLACEHOLDER} marks for {len(refs)} "
                                                  f"image{'s' if len(refs) > 1 else ''}")
                stored = [images.add(ref) for ref in refs]
                sample_id = content_id(source, problem, answer, key_words, [h for _, h in stored])
                if qid is None:
                    qid = f"h-{sample_id}"
                if kept.has_id(sample_id):
                    raise Rejected("duplicate", f"identical to sample {sample_id} already kept")
                if (other := kept.by_qid(source, qid)) is not None:
                    raise Rejected("conflicting_duplicate",
                                   f"qid {qid} of source {source} is already sample {other} with other content")
                extra = _extra(value)
                samples.append({
                    "sample_id": sample_id, "source": source, "capability": capability, "qid": qid,
                    "problem": problem, "answer": answer, "key_words": key_words,
                    "images": [p for p, _ in stored],
                    "extra": extra,
                    "ingest_run": run_id, "ingest_file": file_label, "record_index": rec.index,
                })
                kept.add(sample_id, source, qid)
                report.accepted += 1
                pending += len(problem) + len(answer) + len(extra or "") + sum(map(len, key_words)) + 100
            except Rejected as exc:
                report.rejected[exc.reason] += 1
                raw = _raw_text(rec)
                rejects.append({
                    "ingest_run": run_id, "source_file": file_label, "record_index": rec.index,
                    "qid": None if qid is None else _printable(qid),
                    "reason": exc.reason, "message": _printable(exc.message), "raw": raw,
                })
                pending += len(raw or "") + len(exc.message) + 100
            if len(samples) + len(rejects) >= FLUSH_ROWS or pending >= FLUSH_BYTES:
                flush()
            if progress:
                progress(1)
        if report.records == 0:
            raise PebrError(f"{path}: no records found")
        flush()
        store.add_run(run_id, "ingest", config={
            "fingerprint": json.dumps(fingerprint, sort_keys=True), "path": _printable(str(path.absolute())),
            "image_root": _printable(str(opts.image_root.absolute())), "records": report.records,
            "accepted": report.accepted, "rejected": dict(report.rejected),
        })
        return report
