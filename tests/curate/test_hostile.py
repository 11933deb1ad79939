"""A hostile-input corpus (issue 15): every record becomes a sample or a reject with its expected
reason, through `python -m curate.cli ingest`, with no traceback and no hang.

The corpus is built in the test's folder: images that are decompression bombs, PNGs whose
checksums are right but whose pixels do not decompress, FIFOs and links out of the image root;
records nested 200,000 deep, with 5,000-digit numbers, NUL bytes in paths, lone surrogates; and the
same hostile images as datasets Image structs (a save_to_disk folder, Parquet) with absolute paths.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_image, record
from PIL import Image

from curate.ingest import MAX_PIXELS, REASONS, IngestOptions, ingest
from curate.store import Store

_IMAGE_STRUCT = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
"""A datasets Image column (or a list of them) as Arrow and Parquet hold it."""

# -- hostile images ------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, idat: bytes, depth: int = 8) -> bytes:
    """A grayscale PNG with the given compressed pixel stream; every chunk's CRC is right."""
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def bomb_png(side: int) -> bytes:
    """A valid side x side 1-bit PNG of zeros: a few KB on disk, side**2 pixels decoded."""
    row = b"\x00" + bytes((side + 7) // 8)
    z = zlib.compressobj(9)
    return _png(side, side, b"".join(z.compress(row) for _ in range(side)) + z.flush(), depth=1)


def broken_zlib_png() -> bytes:
    """Right signature, header and CRCs (so PIL's verify() passes), but the pixel stream is garbage."""
    stream = bytearray(zlib.compress(b"".join(b"\x00" + bytes(64) for _ in range(64))))
    for i in range(2, len(stream) - 4):
        stream[i] ^= 0x5A
    return _png(64, 64, bytes(stream))


def _noise(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.frombytes("RGB", (64, 64), os.urandom(64 * 64 * 3)).save(buf, format=fmt)
    return buf.getvalue()


def truncated(fmt: str) -> bytes:
    data = _noise(fmt)
    return data[: len(data) * 2 // 3]


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n0 0 moveto 64 64 lineto stroke\n%%EOF\n"


def test_pil_alone_takes_what_ingest_must_refuse():
    """What the findings were: verify() passes a PNG whose pixels do not decompress, and a bomb over
    PIL's limit is an exception of its own (not OSError) or only a warning."""
    with Image.open(io.BytesIO(broken_zlib_png())) as im:
        im.verify()
    with pytest.raises(Image.DecompressionBombError):
        Image.open(io.BytesIO(bomb_png(20_000)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        Image.open(io.BytesIO(bomb_png(10_000))).close()
    assert any(issubclass(w.category, Image.DecompressionBombWarning) for w in caught)


HOSTILE_IMAGES = {
    "bomb.png": (lambda: bomb_png(20_000), "image_too_large"),          # over PIL's error limit
    "bomb-warn.png": (lambda: bomb_png(10_000), "image_too_large"),     # between PIL's warning and error limits
    "big.png": (lambda: bomb_png(8200), "image_too_large"),             # over MAX_PIXELS, under PIL's limits
    "broken-zlib.png": (broken_zlib_png, "image_unreadable"),
    "cut.png": (lambda: truncated("PNG"), "image_unreadable"),
    "cut.jpg": (lambda: truncated("JPEG"), "image_unreadable"),
    "ps.png": (lambda: EPS, "image_unreadable"),                        # EPS is not decoded (Ghostscript)
}


@pytest.mark.parametrize("name", sorted(HOSTILE_IMAGES))
@pytest.mark.parametrize("as_bytes", [False, True], ids=["file", "embedded"])
def test_hostile_image_is_a_reject(tmp_path, name, as_bytes):
    make_data, reason = HOSTILE_IMAGES[name]
    data = make_data()
    root = tmp_path / "imgs"
    make_image(root / "ok.png")
    (root / name).write_bytes(data)
    table = pa.table({"qid": ["bad", "ok"], "problem": ["What is <image>?", "And <image>?"], "answer": ["1", "2"],
                      "images": pa.array([[{"bytes": data, "path": name} if as_bytes else {"bytes": None, "path": name}],
                                          [{"bytes": None, "path": "ok.png"}]], _IMAGE_STRUCT)})
    pq.write_table(table, tmp_path / "rows.parquet")
    store = Store(tmp_path / "store")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning turned into an error must not escape either
        r = ingest(store, IngestOptions(path=tmp_path / "rows.parquet", image_root=root))
    assert (r.records, r.accepted, r.rejected) == (2, 1, Counter({reason: 1}))


def test_images_over_the_byte_limit_are_not_read(tmp_path, monkeypatch):
    from curate import ingest as ingest_module

    monkeypatch.setattr(ingest_module, "MAX_IMAGE_BYTES", 10_000)
    root = tmp_path / "imgs"
    (root / "noise.png").parent.mkdir(parents=True)
    (root / "noise.png").write_bytes(_noise("PNG"))  # ~12 KB of incompressible pixels
    make_image(root / "ok.png")
    table = pa.table({"qid": ["file", "bytes", "ok"], "problem": ["a <image>", "b <image>", "c <image>"], "answer": ["1"] * 3,
                      "images": pa.array([[{"bytes": None, "path": "noise.png"}],
                                          [{"bytes": (root / "noise.png").read_bytes(), "path": None}],
                                          [{"bytes": None, "path": "ok.png"}]], _IMAGE_STRUCT)})
    pq.write_table(table, tmp_path / "rows.parquet")
    r = ingest(Store(tmp_path / "store"), IngestOptions(path=tmp_path / "rows.parquet", image_root=root))
    assert (r.accepted, r.rejected) == (1, Counter({"image_too_large": 2}))


# -- the corpus -----------------------------------------------------------------------------------------------

DEEP = '{"qid": "deep", "problem": "<image>", "answer": "1", "images": ["a.png"], "x": ' + "[" * 200_000 + "]" * 200_000 + "}"
BIG_INT = '{"qid": "bigint", "problem": "How many <image>?", "answer": ' + "7" * 5000 + ', "images": ["a.png"]}'


def build_image_root(tmp_path: Path) -> tuple[Path, Path]:
    """The image root of the corpus, and a file outside it."""
    root = tmp_path / "imgs"
    for i, name in enumerate(["a", "b", "c", "d", "e"]):
        make_image(root / f"{name}.png", color=(40 * i, 200, 30))
    make_image(root / "small.png", size=(20, 64))
    make_image(root / "thin.png", size=(29, 6000))
    (root / "dir.png").mkdir()
    (root / "junk.png").write_bytes(b"not an image at all")
    for name, (make_data, _) in HOSTILE_IMAGES.items():
        (root / name).write_bytes(make_data())
    os.mkfifo(root / "fifo.png")  # opened, it would block forever
    outside = make_image(tmp_path / "outside.png", color=(1, 2, 3))
    (root / "escape.png").symlink_to(outside)
    (root / "zero.png").symlink_to("/dev/zero")  # read, it would never end
    (root / "loop.png").symlink_to(root / "loop.png")
    return root, outside


def corpus(tmp_path: Path, root: Path, outside: Path) -> tuple[list[str | bytes], list[str | None]]:
    """JSONL lines and, for each record, the reason it must be rejected with (None: a sample)."""
    def rec(qid, reason, images=("a.png",), **kw):
        kw.setdefault("problem", f"How many circles are in <image>? ({qid})")
        return json.dumps({**record(qid, **kw), "images": images if isinstance(images, str) else list(images)}), reason

    rows = [
        # samples, of every shape the README promises
        rec("q1", None),
        (json.dumps(record(7, answer=5, images=["b.png"], key_words="square")), None),
        (json.dumps(record(None, problem="Which colour is <image>?", answer="green", images=["c.png"])), None),
        rec("struct-path", None, images=[{"path": "d.png"}]),         # a datasets Image struct, as JSON
        rec("single", None, images="e.png"),                          # one image, not a list
        rec("dot-slash", None, images=["./a.png"]),
        (json.dumps(record("crlf", problem="CRLF <image>")) + "\r", None),
        rec("same-image", None, images=["a.png", "a.png"]),
        rec("no-mark", None, problem="How many circles?", images=["a.png", "b.png"]),  # fewer marks than images
        rec("abs-inside", None, images=[str(root / "c.png")]),    # an absolute path inside the root
        # every reason code of REASONS
        ('{"qid": "broken", "problem": ', "bad_json"),
        (b'{"qid": "\xff\xfe not utf8"}', "bad_utf8"),
        ("[1, 2, 3]", "not_an_object"),
        ("null", "not_an_object"),
        rec("no-problem", "missing_problem", problem=""),
        (json.dumps({"qid": "no-answer", "problem": "What is <image>?", "images": ["a.png"]}), "missing_answer"),
        rec("bad-kw", "bad_field", key_words={"a": 1}),
        rec("bad-cap", "bad_field", capability="everything"),
        rec("bad-source", "bad_field", source=5),
        rec("no-img", "no_image", images=[]),
        rec("marks", "image_marks", problem="<image> vs <image>: which is larger?"),
        rec("missing", "image_missing", images=["nope.png"]),
        rec("loop", "image_missing", images=["loop.png"]),
        rec("long-name", "image_missing", images=["x" * 300 + ".png"]),
        rec("dir", "image_not_file", images=["dir.png"]),
        rec("fifo", "image_not_file", images=["fifo.png"]),
        rec("junk", "image_unreadable", images=["junk.png"]),
        rec("small", "image_too_small", images=["small.png"]),
        rec("thin", "image_aspect", images=["thin.png"]),
        rec("dotdot", "image_outside_root", images=["../outside.png"]),
        rec("abs", "image_outside_root", images=[str(outside)]),
        rec("abs-struct", "image_outside_root", images=[{"bytes": None, "path": str(outside)}]),
        rec("link", "image_outside_root", images=["escape.png"]),
        rec("zero", "image_outside_root", images=["zero.png"]),
        rec("q1-copy", "duplicate", problem="How many circles are in <image>? (q1)"),  # q1's content
        rec("q1", "conflicting_duplicate", answer="4"),
        # the hostile records of issue 15
        (DEEP, "bad_json"),
        (BIG_INT, "bad_field"),
        rec("nul", "bad_field", images=["a\x00.png"]),
        rec("surrogate", "bad_field", problem="What is \ud800 in <image>?"),
        rec("bytes-text", "bad_field", images=[{"bytes": "not bytes"}]),
        rec("bytes-huge", "bad_field", images=[{"bytes": 10**12}]),
    ] + [rec(f"img-{name}", reason, images=[name]) for name, (_, reason) in sorted(HOSTILE_IMAGES.items())]
    lines = [line for line, _ in rows]
    return lines, [reason for _, reason in rows]


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


def outcomes(store_dir: Path) -> dict[int, str | None]:
    con = Store(store_dir).connect()
    rows = con.execute("select record_index, null from samples union all select record_index, reason from rejects").fetchall()
    assert len(rows) == len({i for i, _ in rows}), "a record is both a sample and a reject, or twice one of them"
    return dict(sorted(rows))


def assert_clean(r: subprocess.CompletedProcess, rc: int = 0) -> None:
    assert r.returncode == rc, r.stdout[-2000:] + r.stderr[-2000:]
    assert "Traceback" not in r.stdout + r.stderr, r.stderr[-3000:]


def test_corpus_through_the_cli(tmp_path):
    root, outside = build_image_root(tmp_path)
    lines, reasons = corpus(tmp_path, root, outside)
    assert len(lines) >= 30
    assert set(REASONS) - set(reasons) == {"record_too_large"}, "every reason code but one (next test) is in the corpus"
    path = write_lines(tmp_path / "hostile.jsonl", lines)
    store = tmp_path / "store"
    r = cli("ingest", str(path), "--image-root", str(root), "--store", str(store), "--source", "hostile")
    assert_clean(r)
    assert "records read" in r.stdout + r.stderr
    got = outcomes(store)
    assert list(got) == list(range(len(lines))), "every record is accounted for, once"
    assert got == dict(enumerate(reasons))
    con = Store(store).connect()
    # every image kept decodes in full, and none is the file outside the root
    for (paths,) in con.execute("select images from samples").fetchall():
        for p in paths:
            data = (store / p).read_bytes()
            assert data != outside.read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                im.load()
    # rejects name the record and say why
    messages = dict(con.execute("select qid, message from rejects where qid in ('nul', 'img-bomb.png', 'fifo')").fetchall())
    assert "NUL" in messages["nul"] and "not a regular file" in messages["fifo"]
    assert f"{MAX_PIXELS:,} pixels" in messages["img-bomb.png"]
    # ingesting it again adds nothing, and says so
    r = cli("ingest", str(path), "--image-root", str(root), "--store", str(store), "--source", "hostile")
    assert_clean(r)
    assert "already ingested" in " ".join((r.stdout + r.stderr).split())  # rich wraps long paths


def test_record_over_the_size_limit_through_the_cli(tmp_path):
    """The limit is 256 MiB; the CLI runs here with it lowered to 64 KiB, as a module constant."""
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    lines = [json.dumps(record("q1")), json.dumps(record("huge", problem="<image> " + "x" * 100_000)), json.dumps(record("q2", answer="2"))]
    path = write_lines(tmp_path / "d.jsonl", lines)
    code = ("import runpy, sys, curate.readers as r; r.MAX_RECORD_BYTES = 65536; sys.argv[0] = 'curate'; "
            "runpy.run_module('curate.cli', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", code, "ingest", str(path), "--image-root", str(root), "--store", str(tmp_path / "store")],
                       check=False, capture_output=True, text=True, timeout=120)
    assert_clean(r)
    assert outcomes(tmp_path / "store") == {0: None, 1: "record_too_large", 2: None}


def _struct_corpus(root: Path, outside: Path):
    """Image structs as datasets and Parquet hold them: (bytes, path) and the expected reason."""
    ok = (root / "a.png").read_bytes()
    cases = [
        ({"bytes": ok, "path": "a.png"}, None),
        ({"bytes": ok, "path": str(outside)}, None),  # embedded bytes are the image; the path only names it
        ({"bytes": None, "path": "b.png"}, None),     # resolved against --image-root
        ({"bytes": None, "path": str(outside)}, "image_outside_root"),
        ({"bytes": None, "path": "../outside.png"}, "image_outside_root"),
        ({"bytes": None, "path": "escape.png"}, "image_outside_root"),
        ({"bytes": None, "path": "a\x00.png"}, "bad_field"),
        ({"bytes": None, "path": "fifo.png"}, "image_not_file"),
        ({"bytes": None, "path": None}, "no_image"),
        ({"bytes": b"junk", "path": "x.png"}, "image_unreadable"),
    ]
    for name, (make_data, reason) in sorted(HOSTILE_IMAGES.items()):
        cases.append(({"bytes": make_data(), "path": name}, reason))
        cases.append(({"bytes": None, "path": name}, reason))
    n = len(cases)
    table = pa.table({"qid": [f"s{i}" for i in range(n)], "problem": [f"What is in <image>? ({i})" for i in range(n)],
                      "answer": ["x"] * n, "images": pa.array([[ref] for ref, _ in cases], _IMAGE_STRUCT)})
    return table, [reason for _, reason in cases]


@pytest.mark.parametrize("fmt", ["dataset", "parquet"])
def test_image_structs_through_the_cli(tmp_path, fmt):
    import datasets

    root, outside = build_image_root(tmp_path)
    table, reasons = _struct_corpus(root, outside)
    if fmt == "parquet":
        path = tmp_path / "rows.parquet"
        pq.write_table(table, path)
    else:  # a save_to_disk folder whose Image column keeps paths (older `datasets` did not embed them)
        path = tmp_path / "hf"
        feats = datasets.Features({"qid": datasets.Value("string"), "problem": datasets.Value("string"),
                                   "answer": datasets.Value("string"), "images": datasets.List(datasets.Image())})
        datasets.Dataset.from_list([{"qid": "x", "problem": "p", "answer": "a", "images": []}], features=feats).save_to_disk(str(path))
        schema = table.schema.with_metadata({b"huggingface": json.dumps({"info": {"features": feats.to_dict()}}).encode()})
        with pa.ipc.new_stream(str(path / "data-00000-of-00001.arrow"), schema) as w:
            w.write_table(table.cast(schema))
    store = tmp_path / "store"
    r = cli("ingest", str(path), "--image-root", str(root), "--store", str(store))
    assert_clean(r)
    assert outcomes(store) == dict(enumerate(reasons))
    stored = [p for (ps,) in Store(store).connect().execute("select images from samples").fetchall() for p in ps]
    assert outside.read_bytes() not in {(store / p).read_bytes() for p in stored}


def test_json_array_corpus_through_the_cli(tmp_path):
    """The same records as one JSON array (without the lines that are not JSON, which stop an array)."""
    root, outside = build_image_root(tmp_path)
    lines, reasons = corpus(tmp_path, root, outside)
    keep = [i for i, reason in enumerate(reasons) if reason not in ("bad_utf8",) and not lines[i].startswith('{"qid": "broken"')]
    path = tmp_path / "hostile.json"
    path.write_text("[\n" + ",\n".join(lines[i].rstrip("\r") for i in keep) + "\n]\n")
    store = tmp_path / "store"
    r = cli("ingest", str(path), "--image-root", str(root), "--store", str(store))
    assert_clean(r)
    assert outcomes(store) == {j: reasons[i] for j, i in enumerate(keep)}


@pytest.mark.parametrize("kind", ["fifo", "device", "plain folder", "folder with a fifo"])
def test_inputs_that_cannot_be_ingested_are_one_line_through_the_cli(tmp_path, kind):
    root = tmp_path / "imgs"
    make_image(root / "a.png")
    if kind == "fifo":
        path = tmp_path / "in.jsonl"
        os.mkfifo(path)
        want = "not a regular file or a dataset folder"
    elif kind == "device":
        path = Path("/dev/zero")
        want = "not a regular file or a dataset folder"
    else:
        path = tmp_path / "plain"
        make_image(path / "a.png")
        if kind == "folder with a fifo":
            os.mkfifo(path / "data.jsonl")
        want = "not a dataset saved with save_to_disk"
    r = cli("ingest", str(path), "--image-root", str(root), "--store", str(tmp_path / "store"), timeout=60)
    assert_clean(r, rc=2)
    err = [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: ") and want in err[0], err
