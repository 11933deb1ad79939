"""The toolkit's two file-system primitives: publish a file atomically, and hold a lock file.

Every file a reader may trust (a table part, an image, the catalog, a cache file, a manifest) is
published by `atomic_write`; every writer that must be alone holds a `file_lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from schemas.errors import PebrError

T = TypeVar("T")

LOCK_POLL_S = 0.05
"""How often a waiting `file_lock` tries again."""


def temp_name(path: str | Path) -> Path:
    """A unique hidden name next to `path` (``.<name>.<random>.tmp``), for a file not yet published.

    >>> temp_name("/data/part-1.parquet").name.startswith(".part-1.parquet.")
    True
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write(path: str | Path, data: bytes | str | Callable[[Path], T]) -> T | None:
    """Publish `data` at `path` all at once: readers see the old file or the whole new one, and a
    crash at any moment leaves one or the other (never a torn or empty file).

    `data` is bytes, text (UTF-8), or a callable ``write(tmp_path)`` that writes the file itself (a
    Parquet writer, a DuckDB COPY); its result is returned. The file is written under a hidden
    temporary name in the same folder, flushed to disk, renamed over `path`, and the folder is flushed
    so the rename survives a power cut. On any error the temporary file is removed and `path` is
    untouched.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> atomic_write(d / "a.txt", "hello")
    >>> atomic_write(d / "a.txt", lambda tmp: tmp.write_bytes(b"bye"))
    3
    >>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
    ('bye', ['a.txt'])
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        if callable(data):
            result = data(tmp)
        else:
            result = None
            tmp.write_bytes(data.encode() if isinstance(data, str) else bytes(data))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return result


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to disk; a no-op where the file system refuses."""
    with contextlib.suppress(OSError):  # some file systems (and platforms) cannot fsync a folder
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def process_label(what: str) -> str:
    """Who is asking, for a lock file: ``pid <pid> on <host> (<what>, since <UTC time>)``."""
    import datetime as dt
    import socket

    now = dt.datetime.now(dt.timezone.utc)
    return f"pid {os.getpid()} on {socket.gethostname()} ({what}, since {now:%Y-%m-%d %H:%M:%S} UTC)"


@contextlib.contextmanager
def file_lock(path: str | Path, holder: str, wait: float = 0.0,
              busy: Callable[[str], str] | str = "{path} is held by {holder}") -> Iterator[Path]:
    """Hold an exclusive lock (flock) on `path` for the block, with `holder` written in the file.

    When another process holds it, tries again every LOCK_POLL_S for up to `wait` seconds, then
    raises PebrError with `busy`: a callable given the holder's text, or a format string with
    ``{holder}`` and ``{path}`` (other braces doubled). The lock goes with the process, so a killed holder never leaves it stuck; the text is
    cleared on release. Yields `path`.

    >>> import tempfile
    >>> lock = Path(tempfile.mkdtemp()) / ".lock"
    >>> with file_lock(lock, "pid 1 (demo)"):
    ...     with file_lock(lock, "pid 2", busy="busy: {holder}"):
    ...         pass
    Traceback (most recent call last):
    ...
    schemas.errors.PebrError: busy: pid 1 (demo)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    current = path.read_text(errors="replace").strip() or "another process"
                    raise PebrError(busy(current) if callable(busy) else busy.format(holder=current, path=path)) from None
                time.sleep(LOCK_POLL_S)
    except BaseException:
        os.close(fd)
        raise
    try:
        os.ftruncate(fd, 0)
        os.write(fd, holder.encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's content, read in 1 MiB pieces (the GIL is released while hashing)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
