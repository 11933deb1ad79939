"""Write a selected stage as files trainers read directly: Parquet for TRL / `datasets`, and the
reference JSON (EasyR1/verl) or ShareGPT (LLaMA-Factory warm-up SFT) next to it.

DuckDB builds every column, the chat prompt included (`prompt_sql`, equal row by row to
`rewards.prompt.build_messages`), and writes the Parquet file itself. Images are referenced by
their absolute path in the store's content-addressed image folder (``--images path``: nothing is
copied) or embedded as bytes (``--images embed``: a self-contained file; Arrow batches stream
through Python with a small cache of image bytes, so memory stays bounded by one batch).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from curate.store import sql_literal
from rewards.prompt import IMAGE_PLACEHOLDER, PROMPT_TEMPLATE

BATCH_ROWS = 8192
ROW_GROUP_ROWS = 16384
"""Rows per row group of a stage dataset's Parquet file (small groups keep the writer's buffers small)."""
COMPRESSION = "snappy"
"""Codec of a stage dataset's Parquet file: the Parquet default of pyarrow and `datasets`, quick to
write and to read in every epoch (zstd gives half the size at 1.3x the export time)."""
IMAGE_CACHE_BYTES = 64 << 20
IMAGE_BATCH_BYTES = 64 << 20
IMAGE_MODES = ("path", "embed")
GOLD_RESPONSE_KEYS = ("response", "solution", "rationale")
"""Keys of samples.extra (JSON) that may hold a gold response for warm-up SFT, first one wins."""

_IMAGE_PART = "{'type': 'image', 'text': NULL::VARCHAR}"
"""An image part of a chat message, as a DuckDB struct (text parts fill `text`)."""
HF_FEATURES = json.dumps({"info": {"features": {"images": {"feature": {"_type": "Image"}, "_type": "Sequence"}}}})
"""Parquet key-value metadata under the key `huggingface`: `datasets` then loads `images` as a list
of PIL images (each stored as struct<bytes, path>, datasets.Image's storage type)."""

STAGE_COLUMNS = ("prompt", "images", "answer", "key_words", "sample_id", "source", "capability", "qid", "problem",
                 "response", "n", "k", "pass_rate", "band", "p_degenerate")
"""Columns of a stage dataset's Parquet file, in order."""


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
    """SQL splitting `template` filled with the `problem` column at its ``<image>`` marks (the
    template holds one ``{problem}``, filled as `str.format` does)."""
    prefix, suffix = _template_parts(template)
    return f"string_split({sql_literal(prefix)} || {problem} || {sql_literal(suffix)}, {sql_literal(IMAGE_PLACEHOLDER)})"


def prompt_parts_sql(problem: str) -> str:
    """SQL splitting the `problem` column at its ``<image>`` marks, for `prompt_sql(parts=...)`."""
    return f"string_split({problem}, {sql_literal(IMAGE_PLACEHOLDER)})"


def prompt_sql(problem: str, n_images: str, template: str = PROMPT_TEMPLATE, parts: str | None = None) -> str:
    """SQL for the chat prompt of `build_messages(problem, n_images, template)`, row by row.

    The common shapes (one image and no mark, or at most one image and one mark) are built from the
    problem split at its marks (`parts`, a column holding `prompt_parts_sql(problem)`, computed once
    per row by the caller; default: split here), specialised in Python to the template's fixed text;
    any other row goes through the `pebr_prompt` macro (`prompt_macro`), whose list lambdas cost
    several times more per row.
    """
    general = f"pebr_prompt({prompt_pieces_sql(problem, template)}, {n_images})"
    prefix, suffix = _template_parts(template)
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

    pre, suf = (sql_literal(t) if t else "" for t in (prefix, suffix))
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


def _template_parts(template: str) -> tuple[str, str]:
    sentinel = "\x00PEBR-PROBLEM\x00"
    prefix, _, suffix = template.format(problem=sentinel).partition(sentinel)
    return prefix, suffix


def images_sql(column: str, store_root: Path, mode: str) -> str:
    """The `images` column: struct<bytes, path> per image; bytes NULL (filled later when embedding),
    path absolute under the store for `path`, the store-relative path (replaced) for `embed`."""
    prefix = "" if mode == "embed" else Path(store_root).absolute().as_posix().rstrip("/") + "/"
    one = f"[{{'bytes': NULL::BLOB, 'path': {sql_literal(prefix)} || {column}[1]}}]"  # the common case, without a lambda
    many = f"list_transform({column}, lambda x: {{'bytes': NULL::BLOB, 'path': {sql_literal(prefix)} || x}})"
    return f"CASE WHEN len({column}) = 1 THEN {one} ELSE {many} END"


def gold_response_sql(extra: str = "extra") -> str:
    """SQL for the gold response in `extra` (the first of GOLD_RESPONSE_KEYS present), the JSON parsed once."""
    paths = ", ".join(f"'$.{k}'" for k in GOLD_RESPONSE_KEYS)
    return f"list_any_value(json_extract_string({extra}, [{paths}]))"


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
        data = _read_store_file(self.root, rel)
        self.cache[rel] = data
        self.size += len(data)
        while self.size > self.budget and len(self.cache) > 1:
            _, old = self.cache.popitem(last=False)
            self.size -= len(old)
        return data

    def embed(self, images):
        """list<struct<bytes, path>> with store-relative paths -> the same with each image's bytes
        and the file name as path. Arrow kernels do the per-row work; each distinct image is read once."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        flat = images.flatten().field("path")
        unique = pc.unique(flat)
        blobs = [self.read(p) for p in unique.to_pylist()]
        offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(b) for b in blobs])
        table = pa.Array.from_buffers(pa.large_binary(), len(blobs), [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(blobs))])
        data = table.take(pc.index_in(flat, value_set=unique)).cast(pa.binary())
        names = pc.replace_substring_regex(flat, pattern=".*/", replacement="")
        structs = pa.StructArray.from_arrays([data, names], names=["bytes", "path"])
        offsets = images.offsets
        if offsets[0].as_py() != 0:
            offsets = pc.subtract(offsets, offsets[0])
        return pa.ListArray.from_arrays(offsets, structs)


def _read_store_file(root: Path, rel: str) -> bytes:
    try:
        return (Path(root) / rel).read_bytes()
    except FileNotFoundError:
        from curate.errors import PebrError

        raise PebrError(f"image {rel} is missing from the store at {root} (was the store's images/ folder changed?)") from None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_parquet(con, query: str, path: Path, store_root: Path, images: str = "path") -> int:
    """Write the rows of `query` (STAGE_COLUMNS, ordered; `images` from `images_sql`) as one Parquet
    file, atomically; returns the row count."""
    if images not in IMAGE_MODES:
        raise ValueError(f"images must be one of {IMAGE_MODES}")
    tmp = _tmp(path)
    try:
        if images == "path":
            rows = con.execute(f"COPY ({query}) TO {sql_literal(tmp)} "
                               f"(FORMAT parquet, COMPRESSION {COMPRESSION}, ROW_GROUP_SIZE {ROW_GROUP_ROWS}, "
                               f"KV_METADATA {{huggingface: {sql_literal(HF_FEATURES)}}})"
                               ).fetchall()[0][0]  # COPY answers with the rows it wrote
        else:
            rows = _write_embedded(con.sql(query).to_arrow_reader(BATCH_ROWS), tmp, store_root)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def _write_embedded(batches, tmp: Path, store_root: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    reader = ImageReader(store_root)
    schema = batches.schema.with_metadata({"huggingface": HF_FEATURES})
    col = schema.get_field_index("images")
    rows = 0
    with pq.ParquetWriter(tmp, schema, compression=COMPRESSION) as writer:
        step = BATCH_ROWS
        for batch in batches:
            start = 0
            while start < batch.num_rows:
                part = batch.slice(start, step)
                embedded = reader.embed(part.column(col))
                # Rows per write follow the image size, so big images never pile up in memory.
                per_row = max(1, embedded.nbytes // max(1, part.num_rows))
                step = max(1, min(BATCH_ROWS, IMAGE_BATCH_BYTES // per_row))
                arrays = [*part.columns[:col], embedded.cast(schema.field(col).type), *part.columns[col + 1:]]
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                start += part.num_rows
                rows += part.num_rows
    return rows


def _copy_image(store_root: Path, rel: str, image_dir: Path) -> str:
    dest = image_dir / os.path.basename(rel)
    if not dest.exists():
        src = store_root / rel
        try:
            os.link(src, dest)
        except OSError:
            tmp = _tmp(dest)
            tmp.write_bytes(_read_store_file(store_root, rel))
            os.replace(tmp, dest)
    return f"{image_dir.name}/{dest.name}"


def write_json_records(rows: Iterator[dict], path: Path, fmt: str, store_root: Path,
                       template: str = PROMPT_TEMPLATE) -> tuple[int, int]:
    """Write the reference GRPO JSON (``easyr1``) or LLaMA-Factory ShareGPT (``sharegpt``) as one
    JSON array, images copied to ``images/`` next to it; returns (written, skipped).

    `rows` are dicts with the samples' columns (images as store-relative paths) plus pass_rate.
    ShareGPT needs an assistant turn, so samples without a gold response are skipped (counted).
    """
    image_dir = path.parent / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    written = skipped = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("[")
            for row in rows:
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
