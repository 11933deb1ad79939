"""Write a selected stage as files trainers read directly: Parquet for TRL / `datasets`, and the
reference JSON (EasyR1/verl) or ShareGPT (LLaMA-Factory warm-up SFT) next to it.

DuckDB builds every column, the chat prompt included (`generation.prompt.prompt_sql`, equal row by
row to `generation.prompt.build_messages`), and writes the Parquet file itself. Images are referenced by
their absolute path in the store's content-addressed image folder (``--images path``: nothing is
copied) or embedded as bytes (``--images embed``: a self-contained file; Arrow batches stream
through Python with a small cache of image bytes, so memory stays bounded by one batch).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from curate.store import sql_literal
from generation.prompt import (
    PROMPT_TEMPLATE,
    as_template,
    complete_marks,
    prompt_macro,
    prompt_parts_sql,
    prompt_sql,
    prompt_text,
)
from schemas.io import atomic_write

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

HF_FEATURES = json.dumps({"info": {"features": {"images": {"feature": {"_type": "Image"}, "_type": "Sequence"}}}})
"""Parquet key-value metadata under the key `huggingface`: `datasets` then loads `images` as a list
of PIL images (each stored as struct<bytes, path>, datasets.Image's storage type)."""

STAGE_COLUMNS = ("prompt", "images", "answer", "key_words", "sample_id", "source", "capability", "qid", "problem",
                 "response", "n", "k", "pass_rate", "band", "p_degenerate")
"""Columns of a stage dataset's Parquet file, in order."""


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
        from schemas.errors import PebrError

        raise PebrError(f"image {rel} is missing from the store at {root} (was the store's images/ folder changed?)") from None


def write_parquet(con, query: str, path: Path, store_root: Path, images: str = "path") -> int:
    """Write the rows of `query` (STAGE_COLUMNS, ordered; `images` from `images_sql`) as one Parquet
    file, atomically; returns the row count."""
    if images not in IMAGE_MODES:
        raise ValueError(f"images must be one of {IMAGE_MODES}")

    def write(tmp: Path) -> int:
        if images == "path":
            return con.execute(f"COPY ({query}) TO {sql_literal(tmp)} "
                               f"(FORMAT parquet, COMPRESSION {COMPRESSION}, ROW_GROUP_SIZE {ROW_GROUP_ROWS}, "
                               f"KV_METADATA {{huggingface: {sql_literal(HF_FEATURES)}}})"
                               ).fetchall()[0][0]  # COPY answers with the rows it wrote
        return _write_embedded(con.sql(query).to_arrow_reader(BATCH_ROWS), tmp, store_root)

    return atomic_write(path, write)


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
            atomic_write(dest, _read_store_file(store_root, rel))
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

    def write(tmp: Path) -> tuple[int, int]:
        written = skipped = 0
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("[")
            for row in rows:
                images = [_copy_image(store_root, rel, image_dir) for rel in row["images"]]
                if fmt == "easyr1":
                    # EasyR1 places images at the marks of the problem only: one mark per image.
                    problem = complete_marks(row["problem"], len(images), template)
                    rec = {"qid": row["qid"], "problem": problem, "answer": row["answer"], "images": images,
                           "key_words": row["key_words"], "sample_id": row["sample_id"], "source": row["source"],
                           "capability": row["capability"], "pass_rate": row["pass_rate"]}
                else:
                    if not row["response"]:
                        skipped += 1
                        continue
                    text = prompt_text(row["problem"], len(images), template)
                    rec = {"messages": [{"role": "user", "content": text},
                                        {"role": "assistant", "content": row["response"]}],
                           "images": images, "sample_id": row["sample_id"]}
                f.write(("\n" if written == 0 else ",\n") + json.dumps(rec, ensure_ascii=False))
                written += 1
            f.write("\n]\n")
        return written, skipped

    return atomic_write(path, write)


def write_verl_parquet(rows: Iterator[dict], path: Path, store_root: Path, stage: str,
                       template: str = PROMPT_TEMPLATE) -> int:
    """Write the rows as the Parquet file volcengine/verl's `RLHFDataset` reads as it is (the columns of
    its own examples/data_preprocess scripts): ``data_source``, ``prompt`` (chat messages whose text
    holds one ``<image>`` mark per image: verl splits at the marks), ``images`` (bytes embedded: verl
    opens them from the row), ``ability``, ``reward_model.ground_truth`` and ``extra_info`` (qid,
    sample_id, key_words, stage: what `rewards.verl.compute_score` reads and returns to the dump).
    Returns the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    reader = ImageReader(store_root)
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(image)),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        ("extra_info", pa.struct([("split", pa.string()), ("index", pa.int64()), ("qid", pa.string()),
                                  ("sample_id", pa.string()), ("key_words", pa.list_(pa.string())),
                                  ("stage", pa.string()), ("question", pa.string()), ("answer", pa.string()),
                                  ("pass_rate", pa.float64())])),
    ], metadata={"huggingface": HF_FEATURES})

    def write(tmp: Path) -> int:
        written = 0
        batch: list[dict] = []
        size = 0
        with pq.ParquetWriter(tmp, schema, compression=COMPRESSION) as writer:
            for row in rows:
                images = [{"bytes": reader.read(rel), "path": os.path.basename(rel)} for rel in row["images"]]
                batch.append({
                    "data_source": row["source"],
                    "prompt": [{"role": "user", "content": prompt_text(row["problem"], len(images), template)}],
                    "images": images,
                    "ability": row["capability"] or "unknown",
                    "reward_model": {"style": "rule", "ground_truth": row["answer"]},
                    "extra_info": {"split": "train", "index": written, "qid": row["qid"], "sample_id": row["sample_id"],
                                   "key_words": list(row["key_words"] or []), "stage": stage,
                                   "question": row["problem"], "answer": row["answer"], "pass_rate": row["pass_rate"]},
                })
                written += 1
                size += sum(len(i["bytes"]) for i in images) + len(row["problem"])
                if len(batch) >= BATCH_ROWS or size >= IMAGE_BATCH_BYTES:
                    writer.write_table(pa.Table.from_pylist(batch, schema))
                    batch, size = [], 0
            if batch or not written:
                writer.write_table(pa.Table.from_pylist(batch, schema))
        return written

    return atomic_write(path, write)


def usage(fmt: str, out: Path, stage: str) -> dict[str, list[str]]:
    """How each trainer reads what a selection wrote into `out`: tool -> the exact lines to use (the
    CLI prints them; the manifest keeps them under ``use_with``)."""
    out = Path(out).absolute()
    shards = (out / "train-*.parquet").as_posix()
    lines = {"pebr": [f"train run --stage {stage} --data {out} --model MODEL --out OUT"],
             "trl": [f"train_dataset = datasets.load_dataset('parquet', data_files='{shards}', split='train')",
                     "GRPOTrainer(model=MODEL, reward_funcs=..., train_dataset=train_dataset, args=GRPOConfig(...))"
                     "  # columns prompt + images; the others reach reward functions as keyword arguments"]}
    if fmt == "easyr1":
        folder = (out / "easyr1").as_posix()
        lines["easyr1"] = [f"data.train_files={folder}/train.json", f"data.image_dir={folder}",
                           f"data.format_prompt={folder}/format_prompt.jinja",
                           "data.prompt_key=problem data.answer_key=answer data.image_key=images"]
    elif fmt == "verl":
        import rewards

        reward = (Path(rewards.__file__).parent / "verl.py").as_posix()
        lines["verl"] = [f"data.train_files={(out / 'verl' / 'train.parquet').as_posix()}",
                         "data.prompt_key=prompt data.image_key=images",
                         f"custom_reward_function.path={reward} custom_reward_function.name=compute_score",
                         "trainer.rollout_data_dir=DUMPS  # then: curate import-rollouts DUMPS --qid-field qid"]
    elif fmt == "sharegpt":
        lines["llamafactory"] = [f"dataset_dir: {(out / 'sharegpt').as_posix()}",
                                 f"dataset: pebr_{stage}  # the entry of its dataset_info.json; images resolve under dataset_dir",
                                 "template: qwen2_vl"]
    return lines


def llamafactory_dataset_info(name: str, file_name: str) -> dict:
    """The dataset_info.json entry LLaMA-Factory needs to read our ShareGPT file."""
    return {name: {"file_name": file_name, "formatting": "sharegpt",
                   "columns": {"messages": "messages", "images": "images"},
                   "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}}


# -- the stage files ---------------------------------------------------------------------------

def shard_name(i: int, shards: int) -> str:
    """The Hugging Face name of shard `i` of `shards`: train-00000-of-00002.parquet, ..."""
    return f"train-{i:05d}-of-{shards:05d}.parquet"


STAGE_JOIN = "stage_joined"
"""The table `write_shards` joins the picked rows and their samples into, once, for every shard to read its range."""


def _joined_sql(picked: str, samples: str) -> str:
    """The picked rows with the samples' columns a stage file needs (one row per picked sample found)."""
    return ("SELECT s.sample_id, p.source, p.capability, s.qid, s.problem, s.answer, s.key_words, s.images AS images_rel, "
            f"s.extra, p.n, p.k, p.pass_rate, p.band, p.p_degenerate, p.rank_key FROM {picked} p JOIN {samples} s USING (sample_id)")


def _stage_sql(joined: str, store_root: Path, images: str, template: str, where: str = "true") -> str:
    """The stage rows (STAGE_COLUMNS) of `joined p` (`_joined_sql`'s rows) matching `where`, in seeded
    order, with the prompt built from the problem by `generation.prompt` (needs the `pebr_prompt` macro)."""
    cols = {
        "prompt": prompt_sql("problem", "len(images_rel)", template, parts="prompt_parts"),
        "images": images_sql("images_rel", store_root, images),
        "answer": "answer",
        "key_words": "key_words",
        "sample_id": "sample_id",
        "source": "source",
        "capability": "capability",
        "qid": "qid",
        "problem": "problem",
        "response": gold_response_sql("extra"),
        "n": "n",
        "k": "k",
        "pass_rate": "pass_rate",
        "band": "band",
        "p_degenerate": "p_degenerate",
    }
    assert tuple(cols) == STAGE_COLUMNS
    select = ", ".join(f"{expr} AS {name}" for name, expr in cols.items())
    # Sorted first, then the prompt and image columns are built over the sorted rows: a narrower sort.
    rows = f"SELECT * EXCLUDE (rank_key) FROM {joined} p WHERE {where} ORDER BY p.rank_key"
    rows = f"SELECT *, {prompt_parts_sql('problem', template)} AS prompt_parts FROM ({rows})"
    return f"SELECT {select} FROM ({rows})"


def record_rows(con, picked: str, samples: str) -> Iterator[dict]:
    """The picked samples as dicts (images as store paths), in seeded order, for the JSON formats."""
    cur = con.execute(f"SELECT s.*, {gold_response_sql('s.extra')} AS response, p.pass_rate "
                      f"FROM {picked} p JOIN {samples} s USING (sample_id) ORDER BY p.rank_key")
    names = [c[0] for c in cur.description]
    while batch := cur.fetchmany(BATCH_ROWS):
        for values in batch:
            yield dict(zip(names, values))


def write_shards(con, picked: str, samples: str, out: Path, store_root: Path, *, images: str, template: str,
                 shard_rows: int, rows: int, workers: int) -> tuple[int, list[str]]:
    """Write `picked` (rows with a `rank_key`) joined to `samples` as ceil(rows / shard_rows) Parquet
    shards of consecutive rows in seeded order (sizes differ by one at most), each by its own DuckDB
    pipeline (`con` is set to one thread), up to `workers` at once; returns the rows written and the
    shard names in order. If any shard fails, the shards not started are cancelled and those written
    are removed before the error propagates.

    One pipeline per shard uses the cores: DuckDB's own parallel sort and ordered writer were slower
    than one thread for a stage's file. The picked rows are joined to their samples once, on every
    thread, into a table of the connection (STAGE_JOIN) whose range each shard reads: a join per
    shard would read all the samples per shard, a cost that grows with the square of the store."""
    from concurrent.futures import ThreadPoolExecutor

    one_thread = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    con.execute(f"SET threads = {max(1, workers)}")
    try:
        con.execute(f"CREATE OR REPLACE TABLE {STAGE_JOIN} AS {_joined_sql(picked, samples)}")
    finally:
        con.execute(f"SET threads = {one_thread}")
    con.execute(prompt_macro())
    as_template(template).register(con)  # a template SQL cannot express renders through Python
    shards = max(1, -(-rows // shard_rows))
    names = [shard_name(i, shards) for i in range(shards)]
    # Row at position p of the order goes to shard p * shards // rows; a shard's lower bound is its
    # smallest key (keys are distinct: md5 of distinct sample ids).
    keys = [k for (k,) in con.execute(
        f"SELECT min(rank_key) FROM (SELECT rank_key, (row_number() OVER (ORDER BY rank_key) - 1) * {shards} // {rows} "
        f"AS shard FROM {picked}) GROUP BY shard HAVING shard > 0 ORDER BY shard").fetchall()] if shards > 1 else []
    edges = [None, *keys, None]
    wheres = [" AND ".join([*([f"p.rank_key >= {lo}::UHUGEINT"] if lo is not None else []),
                            *([f"p.rank_key < {hi}::UHUGEINT"] if hi is not None else [])]) or "true"
              for lo, hi in zip(edges, edges[1:])]

    def write(i: int) -> int:
        cur = con.cursor() if shards > 1 else con  # a cursor per pipeline: DuckDB runs each on its caller's thread
        try:
            return write_parquet(cur, _stage_sql(STAGE_JOIN, store_root, images, template, wheres[i]), out / names[i],
                                 store_root, images)
        finally:
            if cur is not con:
                cur.close()

    pool = ThreadPoolExecutor(max(1, min(shards, workers)))
    try:
        written = sum(f.result() for f in [pool.submit(write, i) for i in range(shards)])
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        for name in names:
            (out / name).unlink(missing_ok=True)
        raise
    pool.shutdown()
    con.execute(f"DROP TABLE {STAGE_JOIN}")
    return written, names
