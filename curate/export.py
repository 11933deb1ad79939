"""Write a selected stage as files trainers read directly: Parquet for TRL / `datasets`, and the
reference JSON (EasyR1/verl) or ShareGPT (LLaMA-Factory warm-up SFT) next to it.

DuckDB selects and orders the rows and hands Arrow batches over; the chat prompt and the image
bytes are added with Arrow kernels (no per-row Python), so memory stays bounded by one batch plus
a small image cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rewards.prompt import IMAGE_PLACEHOLDER, PROMPT_TEMPLATE

BATCH_ROWS = 8192
IMAGE_CACHE_BYTES = 64 << 20
IMAGE_BATCH_BYTES = 64 << 20
GOLD_RESPONSE_KEYS = ("response", "solution", "rationale")
"""Keys of samples.extra (JSON) that may hold a gold response for warm-up SFT, first one wins."""

_TEXT_PART = pa.struct([("type", pa.string()), ("text", pa.string())])
_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.list_(_TEXT_PART))])
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
"""The storage type of `datasets.Image`: loaders decode it to PIL images."""

STAGE_SCHEMA = pa.schema(
    [
        pa.field("prompt", pa.list_(_MESSAGE)),
        pa.field("images", pa.list_(IMAGE_TYPE)),
        pa.field("answer", pa.string()),
        pa.field("key_words", pa.list_(pa.string())),
        pa.field("sample_id", pa.string()),
        pa.field("source", pa.string()),
        pa.field("capability", pa.string()),
        pa.field("qid", pa.string()),
        pa.field("problem", pa.string()),
        pa.field("response", pa.string()),
        pa.field("n", pa.int64()),
        pa.field("k", pa.int64()),
        pa.field("pass_rate", pa.float64()),
        pa.field("band", pa.string()),
        pa.field("p_degenerate", pa.float64()),
    ],
    # `datasets` reads features from this key: `images` loads as a list of PIL images.
    metadata={"huggingface": json.dumps({"info": {"features": {"images": {"feature": {"_type": "Image"}, "_type": "Sequence"}}}})},
)
"""Columns of a stage dataset's Parquet file, in order."""


def _from_numpy(values: np.ndarray, type_: pa.DataType, mask: np.ndarray | None = None) -> pa.Array:
    """A primitive Arrow array over a numpy buffer (pa.array would import pandas, 0.3 s per run)."""
    values = np.ascontiguousarray(values, dtype={pa.int8(): np.int8, pa.int32(): np.int32, pa.int64(): np.int64}[type_])
    validity = None
    if mask is not None:
        validity = pa.py_buffer(np.packbits(~mask, bitorder="little"))
    return pa.Array.from_buffers(type_, len(values), [validity, pa.py_buffer(values)],
                                 null_count=-1 if mask is not None else 0)


def _to_numpy(array: pa.Array) -> np.ndarray:
    """Values of an int32/int64 array without nulls, zero-copy (to_numpy would import pandas)."""
    dtype = np.int32 if array.type == pa.int32() else np.int64
    if array.null_count:
        raise ValueError("nulls where none were expected")
    return np.frombuffer(array.buffers()[1], dtype=dtype, count=array.offset + len(array))[array.offset:]


def _scalar(text: str) -> pa.Scalar:
    data = text.encode()
    return pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(np.array([0, len(data)], np.int32)), pa.py_buffer(data)])[0]


def _constant_strings(codes: np.ndarray, words: list[str]) -> pa.Array:
    dictionary = pa.Array.from_buffers(pa.string(), len(words), [None, _offsets_buffer([len(w.encode()) for w in words]),
                                                                 pa.py_buffer("".join(words).encode())])
    return pa.DictionaryArray.from_arrays(_from_numpy(codes, pa.int8()), dictionary).cast(pa.string())


def _offsets_buffer(lengths) -> pa.Buffer:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.py_buffer(offsets)


def prompt_column(problem: pa.Array, n_images: np.ndarray, template: str = PROMPT_TEMPLATE) -> pa.ListArray:
    """Arrow column equal, row by row, to `rewards.prompt.build_messages(problem, n_images, template)`.

    Vectorised (Arrow string kernels and numpy index arithmetic), so a million prompts cost no
    Python loop; tests check it against build_messages on every placement of image marks.
    """
    sentinel = "\x00PEBR-PROBLEM\x00"
    prefix, _, suffix = template.format(problem=sentinel).partition(sentinel)
    rows = len(problem)
    text = pc.binary_join_element_wise(_scalar(prefix), problem, _scalar(suffix), _scalar(""))
    pieces = pc.split_pattern(text, IMAGE_PLACEHOLDER)
    starts = _to_numpy(pieces.offsets).astype(np.int64)
    starts -= starts[0]
    count = np.diff(starts)  # pieces per row = image marks + 1
    flat = pieces.flatten()
    row_of = np.repeat(np.arange(rows), count)
    position = np.arange(len(flat)) - starts[:-1][row_of]
    has_text = _to_numpy(pc.binary_length(flat)) > 0 if len(flat) else np.zeros(0, bool)
    has_image = position < count[row_of] - 1  # a mark follows every piece but the last
    lead = np.maximum(0, np.asarray(n_images, dtype=np.int64) - (count - 1))  # images without a mark go first
    per_piece = has_text.astype(np.int64) + has_image
    before_piece = np.cumsum(per_piece) - per_piece  # entries of earlier pieces, over all rows
    per_row = lead + np.bincount(row_of, weights=per_piece, minlength=rows).astype(np.int64)
    row_start = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(per_row, out=row_start[1:])
    first_piece = np.minimum(starts[:-1], max(len(flat) - 1, 0))
    row_base = before_piece[first_piece] if len(flat) else np.zeros(rows, np.int64)
    piece_at = row_start[:-1][row_of] + lead[row_of] + before_piece - row_base[row_of]
    is_text = np.zeros(row_start[-1], dtype=bool)
    source = np.zeros(row_start[-1], dtype=np.int64)
    is_text[piece_at[has_text]] = True
    source[piece_at[has_text]] = np.nonzero(has_text)[0]
    texts = flat.take(_from_numpy(source, pa.int64(), mask=~is_text))
    parts = pa.StructArray.from_arrays([_constant_strings(is_text.astype(np.int8), ["image", "text"]), texts],
                                       fields=list(_TEXT_PART))
    content = pa.ListArray.from_arrays(_from_numpy(row_start.astype(np.int32), pa.int32()), parts)
    messages = pa.StructArray.from_arrays([_constant_strings(np.zeros(rows, np.int8), ["user"]), content], fields=list(_MESSAGE))
    return pa.ListArray.from_arrays(_from_numpy(np.arange(rows + 1, dtype=np.int32), pa.int32()), messages)


def gold_response_sql(extra: str = "extra") -> str:
    return "coalesce(" + ", ".join(f"json_extract_string({extra}, '$.{k}')" for k in GOLD_RESPONSE_KEYS) + ")"


class ImageReader:
    """Reads store images by relative path, keeping recently used bytes (many samples share images)."""

    def __init__(self, root: Path, budget: int = IMAGE_CACHE_BYTES):
        self.root, self.budget, self.size = Path(root), budget, 0
        self.cache: OrderedDict[str, bytes] = OrderedDict()

    def read(self, rel: str) -> bytes:
        hit = self.cache.get(rel)
        if hit is not None:
            self.cache.move_to_end(rel)
            return hit
        data = (self.root / rel).read_bytes()
        self.cache[rel] = data
        self.size += len(data)
        while self.size > self.budget and len(self.cache) > 1:
            _, old = self.cache.popitem(last=False)
            self.size -= len(old)
        return data

    def column(self, paths: pa.ListArray) -> pa.ListArray:
        """list<string> of store paths -> list<struct<bytes, path>> with each image's bytes.

        Arrow kernels do the per-row work (each distinct image is read once), so a batch costs no
        Python loop over its rows.
        """
        flat = paths.flatten()
        unique = pc.unique(flat)
        blobs = [self.read(p) for p in unique.to_pylist()]
        offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in blobs])
        table = pa.Array.from_buffers(pa.large_binary(), len(blobs), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(blobs))])
        data = table.take(pc.index_in(flat, value_set=unique)).cast(pa.binary())
        names = pc.replace_substring_regex(flat, pattern=".*/", replacement="")
        structs = pa.StructArray.from_arrays([data, names], fields=list(IMAGE_TYPE))
        offsets = paths.offsets
        if offsets[0].as_py() != 0:
            offsets = pc.subtract(offsets, offsets[0])
        return pa.ListArray.from_arrays(offsets, structs, type=pa.list_(IMAGE_TYPE))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_parquet(batches: Iterator[pa.RecordBatch], path: Path, store_root: Path, template: str = PROMPT_TEMPLATE) -> int:
    """Write batches holding STAGE_SCHEMA's columns but `prompt` (images as store paths) as one
    Parquet file, atomically; returns the row count."""
    reader = ImageReader(store_root)
    tmp = _tmp(path)
    rows = 0
    try:
        with pq.ParquetWriter(tmp, STAGE_SCHEMA, compression="zstd") as writer:
            step = BATCH_ROWS
            for batch in batches:
                start = 0
                while start < batch.num_rows:
                    part = batch.slice(start, step)
                    cols = []
                    for field in STAGE_SCHEMA:
                        col = None if field.name == "prompt" else part.column(field.name)
                        if field.name == "prompt":
                            counts = _to_numpy(pc.list_value_length(part.column("images")))
                            col = prompt_column(part.column("problem"), counts, template)
                        elif field.name == "images":
                            col = reader.column(col)
                            # Rows per write follow the image size, so big images never pile up in memory.
                            per_row = max(1, col.nbytes // max(1, part.num_rows))
                            step = max(1, min(BATCH_ROWS, IMAGE_BATCH_BYTES // per_row))
                        cols.append(col.cast(field.type))
                    writer.write_batch(pa.RecordBatch.from_arrays(cols, schema=STAGE_SCHEMA))
                    start += part.num_rows
                    rows += part.num_rows
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def _copy_image(store_root: Path, rel: str, image_dir: Path) -> str:
    dest = image_dir / os.path.basename(rel)
    if not dest.exists():
        src = store_root / rel
        try:
            os.link(src, dest)
        except OSError:
            tmp = _tmp(dest)
            tmp.write_bytes(src.read_bytes())
            os.replace(tmp, dest)
    return f"{image_dir.name}/{dest.name}"


def write_json_records(batches: Iterator[pa.RecordBatch], path: Path, fmt: str, store_root: Path,
                       template: str = PROMPT_TEMPLATE) -> tuple[int, int]:
    """Write the reference GRPO JSON (``easyr1``) or LLaMA-Factory ShareGPT (``sharegpt``) as one
    JSON array, images copied to ``images/`` next to it; returns (written, skipped).

    ShareGPT needs an assistant turn, so samples without a gold response are skipped (counted).
    """
    image_dir = path.parent / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    written = skipped = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("[")
            for batch in batches:
                for row in batch.to_pylist():
                    images = [_copy_image(store_root, rel, image_dir) for rel in row["images"]]
                    if fmt == "easyr1":
                        rec = {"qid": row["qid"], "problem": row["problem"], "answer": row["answer"], "images": images,
                               "key_words": row["key_words"], "sample_id": row["sample_id"], "source": row["source"],
                               "capability": row["capability"], "pass_rate": row["pass_rate"]}
                    else:
                        if not row["response"]:
                            skipped += 1
                            continue
                        text = template.format(problem=row["problem"])
                        missing = len(images) - text.count(IMAGE_PLACEHOLDER)
                        text = IMAGE_PLACEHOLDER * max(0, missing) + text
                        rec = {"messages": [{"role": "user", "content": text},
                                            {"role": "assistant", "content": row["response"]}],
                               "images": images, "sample_id": row["sample_id"]}
                    f.write(("\n" if written == 0 else ",\n") + json.dumps(rec, ensure_ascii=False))
                    written += 1
            f.write("\n]\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return written, skipped


def llamafactory_dataset_info(name: str, file_name: str) -> dict:
    """The dataset_info.json entry LLaMA-Factory needs to read our ShareGPT file."""
    return {name: {"file_name": file_name, "formatting": "sharegpt",
                   "columns": {"messages": "messages", "images": "images"},
                   "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}
