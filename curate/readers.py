"""Record readers for ingest: JSON arrays, JSONL, Parquet and Hugging Face datasets.

Each yields one `RawRecord` per input record, in order, including the ones that cannot be parsed,
so that ingest can account for every record it read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from schemas.errors import PebrError


@dataclass
class RawRecord:
    index: int
    value: dict | None
    """The parsed record, or None when it could not be read."""
    raw: str | None = None
    """The record's text when it was read as text."""
    error: tuple[str, str] | None = None
    """(reason code, message) when the record could not be read."""


def read_records(path: Path, split: str | None = None) -> Iterator[RawRecord]:
    if not path.exists():
        raise PebrError(f"{path}: no such file or directory")
    if path.is_dir():
        yield from _read_hf_dir(path, split)
        return
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _read_parquet(path)
    elif suffix in (".csv", ".arrow"):
        yield from _read_hf_files(path, split)
    else:
        yield from _read_json(path)


def _read_json(path: Path) -> Iterator[RawRecord]:
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte-order mark (Windows editors write one) is not part of the first record
    head = data.lstrip()[:1]
    if head == b"[":
        try:
            records = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise PebrError(f"{path}: not a readable JSON array ({exc}); for per-record recovery use JSONL") from None
        for i, value in enumerate(records):
            yield _record(i, value, None)
        return
    index = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield RawRecord(index, None, line.decode("utf-8", "replace"), ("bad_utf8", f"not UTF-8: {exc.reason}"))
            index += 1
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            yield RawRecord(index, None, text, ("bad_json", f"not JSON: {exc.msg} at column {exc.colno}"))
        else:
            yield _record(index, value, text)
        index += 1


def _record(index: int, value, raw: str | None) -> RawRecord:
    if not isinstance(value, dict):
        text = raw if raw is not None else json.dumps(value, default=str)[:10_000]
        return RawRecord(index, None, text, ("not_an_object", f"a record must be a JSON object, got {type(value).__name__}"))
    return RawRecord(index, value, raw)


def _read_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - any failure to open is the same user error
        raise PebrError(f"{path}: not a readable Parquet file ({exc})") from None
    index = 0
    for batch in pf.iter_batches(batch_size=4096):
        for value in batch.to_pylist():
            yield RawRecord(index, value)
            index += 1


def _iter_dataset(ds) -> Iterator[RawRecord]:
    for i, value in enumerate(ds):
        yield RawRecord(i, dict(value))


def _read_hf_dir(path: Path, split: str | None) -> Iterator[RawRecord]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001
        raise PebrError(f"{path}: not a dataset saved with save_to_disk ({exc})") from None
    yield from _iter_dataset(_pick_split(ds, split, path))


def _read_hf_files(path: Path, split: str | None) -> Iterator[RawRecord]:
    import datasets

    builder = {".csv": "csv", ".arrow": "arrow"}[path.suffix.lower()]
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as exc:  # noqa: BLE001
        raise PebrError(f"{path}: could not be read as {builder} ({exc})") from None
    yield from _iter_dataset(ds)


def _pick_split(ds, split: str | None, path: Path):
    import datasets

    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise PebrError(f"{path}: has splits {list(ds)}; choose one with --split")
            split = next(iter(ds))
        if split not in ds:
            raise PebrError(f"{path}: no split {split!r} (has {list(ds)})")
        return ds[split]
    return ds
