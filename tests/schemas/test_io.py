"""schemas.io: atomic publication of a file and the lock file, on real files in tmp dirs."""

from __future__ import annotations

import doctest
import threading
import time

import pytest

import schemas.io
from schemas.errors import PebrError
from schemas.io import atomic_write, file_lock


def test_docstring_examples_hold():
    result = doctest.testmod(schemas.io, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_atomic_write_bytes_text_and_writer(tmp_path):
    target = tmp_path / "f.bin"
    assert atomic_write(target, b"\x00\x01") is None
    assert target.read_bytes() == b"\x00\x01"
    atomic_write(target, "héllo")
    assert target.read_text(encoding="utf-8") == "héllo"
    assert atomic_write(target, lambda tmp: tmp.write_text("from a writer") and 42) == 42
    assert target.read_text() == "from a writer"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "part.parquet"
    target.write_text("old")
    seen = []

    def half_then_crash(tmp):
        tmp.write_text("half a fi")
        seen.append(tmp)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "old"
    assert seen and seen[0].parent == tmp_path and seen[0].name.startswith(".part.parquet.")
    assert [p.name for p in tmp_path.iterdir()] == ["part.parquet"]
    # a writer that produced nothing is an error too, not an empty file
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "new", lambda tmp: None)
    assert [p.name for p in tmp_path.iterdir()] == ["part.parquet"]


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    lock = tmp_path / "sub" / ".lock"
    with file_lock(lock, "pid 1 on host (curate ingest)"):
        assert lock.read_text() == "pid 1 on host (curate ingest)"
        # flock belongs to an open file, so a second open in this very process is refused too
        with pytest.raises(PebrError, match=r"^store busy: pid 1 on host \(curate ingest\)$"):
            with file_lock(lock, "pid 2", busy="store busy: {holder}"):
                pass
        with pytest.raises(PebrError, match=r"shard 0/2 is being scored by pid 1 on host"):
            with file_lock(lock, "pid 2", busy=lambda holder: f"shard 0/2 is being scored by {holder}"):
                pass
        with pytest.raises(PebrError, match=rf"{lock.name} is held by pid 1"):
            with file_lock(lock, "pid 2"):
                pass
    assert lock.read_text() == ""  # the holder's text goes with the lock
    with file_lock(lock, "pid 3"):
        assert lock.read_text() == "pid 3"


def test_a_waiting_lock_times_out_after_wait(tmp_path):
    lock = tmp_path / ".lock"
    with file_lock(lock, "the holder"):
        start = time.monotonic()
        with pytest.raises(PebrError, match="the holder"):
            with file_lock(lock, "waiter", wait=0.3):
                pass
        waited = time.monotonic() - start
    assert 0.3 <= waited < 2.0


def test_a_waiting_lock_gets_it_when_released(tmp_path):
    lock = tmp_path / ".lock"
    held, release = threading.Event(), threading.Event()

    def hold():
        with file_lock(lock, "first"):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(10)
    threading.Timer(0.2, release.set).start()
    with file_lock(lock, "second", wait=10):
        assert lock.read_text() == "second"
    t.join(10)
