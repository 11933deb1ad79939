"""Record readers for ingest: JSON arrays, JSONL, Parquet and Hugging Face datasets.

Each yields one `RawRecord` per input record, in order, including the ones that cannot be parsed,
so that ingest can account for every record it read. Readers stream: JSONL line by line, a JSON
array element by element, Parquet and datasets in batches of bounded size, so memory holds about
one record (or one batch), whatever the size of the input. A record the parser cannot take (nested
too deep, an integer too long for Python, a line over `MAX_RECORD_BYTES`) is a record with an
error, never an exception. Image columns are handed over undecoded (`{"bytes", "path"}` structs):
ingest decodes every image itself, under its pixel bound, and checks every path against the image
root.
"""

from __future__ import annotations

import io
import json
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from schemas.errors import PebrError

MAX_RECORD_BYTES = 64 << 20
"""A JSONL line longer than this is a `record_too_large` reject (read past, never held whole): one
record's text, parsed and written, takes several times its size in memory."""
MAX_RECORD_CHARS = MAX_RECORD_BYTES
"""An element of a JSON array longer than this stops the read with a clear error."""
CHUNK_CHARS = 1 << 20
"""A JSON array is read this many characters at a time (more while one element is longer)."""
BATCH_BYTES = 32 << 20
"""Parquet and datasets rows are read in batches of about this many bytes (at most 4096 rows)."""
RAW_CUT = 10_000
"""The raw text kept for a record that is not text of its own (an array element), in characters."""
_TAIL = 64
"""A JSON value that ends or fails this close to the end of what was read is tried again with more."""


@dataclass
class RawRecord:
    index: int
    value: dict | None
    """The parsed record, or None when it could not be read."""
    raw: str | None = None
    """The record's text when it was read as text."""
    error: tuple[str, str] | None = None
    """(reason code, message) when the record could not be read."""


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk` (the files `load_from_disk` looks for)."""
    return (path / "dataset_dict.json").is_file() or ((path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def check_input(path: Path) -> str:
    """'file' or 'dataset'; anything else (missing, a FIFO, a device, a plain folder) is one clear error."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PebrError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise PebrError(f"{path}: cannot be read ({exc.strerror})") from None
    if stat.S_ISDIR(mode):
        if not is_saved_dataset(path):
            raise PebrError(f"{path}: not a dataset saved with save_to_disk (no dataset_info.json and state.json, "
                            "nor dataset_dict.json); give a file, or the folder save_to_disk wrote")
        return "dataset"
    if not stat.S_ISREG(mode):
        raise PebrError(f"{path}: not a regular file or a dataset folder")
    return "file"


def open_regular(path: Path, what: str = "") -> BinaryIO:
    """Open a regular file for reading without ever blocking on a FIFO or reading a device.

    The file is opened non-blocking and checked on the open descriptor, so a path swapped for a
    FIFO after a check cannot hang the reader. Raises PebrError for anything but a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PebrError(f"{what or path}: not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_input(path: Path) -> BinaryIO:
    """`open_regular` for an input file: any failure is one clear error."""
    try:
        return open_regular(path)
    except OSError as exc:
        raise PebrError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def read_records(path: Path, split: str | None = None) -> Iterator[RawRecord]:
    if check_input(path) == "dataset":
        yield from _read_hf_dir(path, split)
        return
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        yield from _read_parquet(path)
    elif suffix in (".csv", ".arrow"):
        yield from _read_hf_files(path, split)
    else:
        yield from _read_json(path)


# -- JSON and JSONL --------------------------------------------------------------------------------------

_BOM = b"\xef\xbb\xbf"  # a UTF-8 byte-order mark (Windows editors write one) is not part of the first record


def _read_json(path: Path) -> Iterator[RawRecord]:
    with open_input(path) as f:
        head = _first_byte(f)
        f.seek(0)
        if head == b"[":
            yield from _JsonArray(path, io.TextIOWrapper(f, encoding="utf-8-sig", newline="")).records()
        else:
            yield from _read_jsonl(f)


def _first_byte(f: BinaryIO) -> bytes:
    """The first byte that is not white space (after a byte-order mark), b'' for an empty file."""
    first = True
    while block := f.read(1 << 16):
        if first and block.startswith(_BOM):
            block = block[3:]
        first = False
        if block := block.lstrip():
            return block[:1]
    return b""


def _read_jsonl(f: BinaryIO) -> Iterator[RawRecord]:
    """One record a line, read line by line. A line is held once as bytes and once as text, never
    split off a copy of the whole file; a line over MAX_RECORD_BYTES is read past, not held."""
    index = 0
    first = True
    limit = MAX_RECORD_BYTES
    while chunk := f.readline(limit + 1):
        if first:
            first = False
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        if len(chunk) > limit and not chunk.endswith(b"\n"):
            size = len(chunk)
            while more := f.readline(1 << 20):
                size += len(more)
                if more.endswith(b"\n"):
                    size -= 1
                    break
            raw = str(memoryview(chunk)[:min(limit, 4 * RAW_CUT)], "utf-8", "replace")[:RAW_CUT]
            del chunk
            yield RawRecord(index, None, raw, ("record_too_large", f"a record of {size:,} bytes, over the limit of {limit:,}"))
            index += 1
            continue
        # CRLF and a lone CR end a line too (as bytes.splitlines() has it); the common line is read in place
        lines = chunk.splitlines() if b"\r" in chunk else [memoryview(chunk)[:len(chunk) - chunk.endswith(b"\n")]]
        del chunk
        while lines:
            line = lines.pop(0)
            try:
                text = str(line, "utf-8")
            except UnicodeDecodeError as exc:
                yield RawRecord(index, None, str(line, "utf-8", "replace"), ("bad_utf8", f"not UTF-8: {exc.reason}"))
                index += 1
                continue
            finally:
                del line
            if not text.strip(_BLANK):
                continue
            yield _parse_line(index, text)
            index += 1


_BLANK = " \t\n\r\x0b\x0c"
"""What a blank line may hold (the white space of bytes.strip)."""


def _parse_line(index: int, text: str) -> RawRecord:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return RawRecord(index, None, text, ("bad_json", f"not JSON: {exc.msg} at column {exc.colno}"))
    except RecursionError:
        return RawRecord(index, None, text, _TOO_DEEP)
    except ValueError as exc:  # an integer over Python's digit limit (sys.get_int_max_str_digits)
        return RawRecord(index, None, text, _too_long(exc))
    return _record(index, value, text)


_TOO_DEEP = ("bad_json", "not JSON: nested deeper than the parser allows")


def _too_long(exc: ValueError) -> tuple[str, str]:
    return ("bad_field", f"a number too long to read: {str(exc).split(';')[0]}")


def _record(index: int, value, raw: str | None) -> RawRecord:
    if not isinstance(value, dict):
        try:
            text = raw if raw is not None else json.dumps(value, default=str)[:RAW_CUT]
        except (ValueError, RecursionError):
            text = f"<{type(value).__name__}>"
        return RawRecord(index, None, text, ("not_an_object", f"a record must be a JSON object, got {type(value).__name__}"))
    return RawRecord(index, value, raw)


_WS = re.compile(r"[ \t\n\r]*")
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*(")?|[\[{]|[\]}]', re.DOTALL)
_SCALAR_END = re.compile(r"[ \t\n\r,\]}]")


def _value_end(s: str, start: int) -> int | None:
    """Where the JSON value starting at `start` ends, by its brackets and strings alone (for values
    the parser gave up on); None when `s` ends first."""
    if s[start] not in "[{":
        if s[start] == '"':
            m = _TOKEN.match(s, start)
            return m.end() if m and m.group(1) else None
        m = _SCALAR_END.search(s, start)
        return m.start() if m else None
    depth = 0
    for m in _TOKEN.finditer(s, start):
        token = m.group()
        if token[0] == '"':
            if m.group(1) is None:
                return None
        elif token in "[{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return m.end()
    return None


class _JsonArray:
    """A JSON array read element by element from a text stream, holding about one element at a time."""

    def __init__(self, path: Path, stream: io.TextIOBase):
        self.path, self.stream = path, stream
        self.buf, self.pos, self.dropped, self.eof = "", 0, 0, False
        self.decoder = json.JSONDecoder()

    def _fail(self, what: str):
        raise PebrError(f"{self.path}: not a readable JSON array ({what}); for per-record recovery use JSONL")

    def _more(self) -> bool:
        """Read on; what was consumed is dropped. False at the end of the file."""
        if self.eof:
            return False
        if self.pos:
            self.buf, self.dropped, self.pos = self.buf[self.pos:], self.dropped + self.pos, 0
        try:
            chunk = self.stream.read(max(CHUNK_CHARS, len(self.buf)))
        except UnicodeDecodeError as exc:
            self._fail(f"not UTF-8: {exc.reason}")
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _grow(self, index: int) -> None:
        if len(self.buf) - self.pos > MAX_RECORD_CHARS:
            raise PebrError(f"{self.path}: record {index} is over {MAX_RECORD_CHARS:,} characters, the most one "
                            "record may have")
        self._more()

    def _peek(self) -> str | None:
        """The next character that is not white space, None at the end of the file."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return None

    def records(self) -> Iterator[RawRecord]:
        if self._peek() != "[":
            self._fail("no opening [")
        self.pos += 1
        index = 0
        if self._peek() == "]":
            self.pos += 1
        else:
            while True:
                if self._peek() is None:
                    self._fail("the file ends inside the array")
                yield self._element(index)
                index += 1
                c = self._peek()
                if c == ",":
                    self.pos += 1
                elif c == "]":
                    self.pos += 1
                    break
                else:
                    self._fail("the file ends inside the array" if c is None else
                               f"expected ',' or ']' at character {self.dropped + self.pos}, found {c!r}")
        if self._peek() is not None:
            self._fail(f"data after the closing ] at character {self.dropped + self.pos}")

    def _element(self, index: int) -> RawRecord:
        while True:
            start = self.pos
            try:
                value, end = self.decoder.raw_decode(self.buf, start)
            except json.JSONDecodeError as exc:
                if not self.eof and (exc.pos >= len(self.buf) - _TAIL or exc.msg.startswith("Unterminated string")):
                    self._grow(index)
                    continue
                self._fail(f"{exc.msg} at character {self.dropped + exc.pos}")
            except RecursionError:
                return self._skip(index, _TOO_DEEP)
            except ValueError as exc:
                return self._skip(index, _too_long(exc))
            if not self.eof and end > len(self.buf) - _TAIL:  # a number may go on in what is not read yet
                self._grow(index)
                continue
            self.pos = end
            return _record(index, value, None)

    def _skip(self, index: int, error: tuple[str, str]) -> RawRecord:
        """Read past an element the parser gave up on; it becomes a record with `error`."""
        while (end := _value_end(self.buf, self.pos)) is None:
            if self.eof:
                self._fail("the file ends inside the array")
            self._grow(index)
        raw = self.buf[self.pos:min(end, self.pos + RAW_CUT)]
        self.pos = end
        return RawRecord(index, None, raw, error)


# -- Parquet and datasets -----------------------------------------------------------------------------------

def _batch_rows(nbytes: int, rows: int) -> int:
    """Rows per batch so that a batch holds about BATCH_BYTES (images embedded in rows make them big)."""
    if rows <= 0 or nbytes <= 0:
        return 4096
    return max(1, min(4096, BATCH_BYTES * rows // nbytes))


def _read_parquet(path: Path) -> Iterator[RawRecord]:
    import pyarrow.parquet as pq

    with open_input(path) as f:
        try:
            pf = pq.ParquetFile(f)
        except Exception as exc:  # noqa: BLE001 - any failure to open is the same user error
            raise PebrError(f"{path}: not a readable Parquet file ({exc})") from None
        md = pf.metadata
        nbytes = sum(md.row_group(i).total_byte_size for i in range(md.num_row_groups))
        index = 0
        for batch in pf.iter_batches(batch_size=_batch_rows(nbytes, md.num_rows)):
            for value in batch.to_pylist():
                yield RawRecord(index, value)
                index += 1


def _iter_dataset(ds) -> Iterator[RawRecord]:
    """Rows as plain dicts, image (and audio) columns undecoded: the Arrow rows, before `datasets`
    would open the files they name."""
    index = 0
    table = ds.with_format("arrow")
    for batch in table.iter(batch_size=_batch_rows(ds.data.nbytes, ds.num_rows)):
        for value in batch.to_pylist():
            yield RawRecord(index, value)
            index += 1


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
    kwargs = {}
    if builder == "csv":
        # Every cell is text, as written: no type guessing ("007" stays "007", "0.10" stays "0.10")
        # and no NA guessing ("NA", "null" and "nan" are answers like any other).
        kwargs = {"features": datasets.Features({name: datasets.Value("string") for name in _csv_header(path)}),
                  "keep_default_na": False}
    try:
        ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise PebrError(f"{path}: could not be read as {builder} ({exc})") from None
    records = _iter_dataset(ds)
    yield from (map(_csv_record, records) if builder == "csv" else records)


def _csv_header(path: Path) -> list[str]:
    import csv

    with open_input(path) as f:
        text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
        try:
            header = next(csv.reader(text), None)
        except (csv.Error, UnicodeDecodeError) as exc:
            raise PebrError(f"{path}: no readable CSV header ({exc})") from None
    if not header:
        raise PebrError(f"{path}: empty CSV file (no header line)")
    if len(set(header)) != len(header):
        raise PebrError(f"{path}: the CSV header names a column twice ({', '.join(header)})")
    return header


CSV_LIST_FIELDS = ("images", "key_words")
"""CSV cells that may hold a JSON list (``["a.png", "b.png"]``); any other text is one item."""


def _csv_record(rec: RawRecord) -> RawRecord:
    """A CSV row as ingest reads records: an empty cell is a missing field; a list field given as a
    JSON list is that list."""
    value = {k: (None if v == "" else v) for k, v in rec.value.items()}
    for name in CSV_LIST_FIELDS:
        cell = value.get(name)
        if isinstance(cell, str) and cell.lstrip().startswith("["):
            try:
                items = json.loads(cell)
            except ValueError:
                continue
            if isinstance(items, list):
                value[name] = items
    return RawRecord(rec.index, value, rec.raw, rec.error)


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
