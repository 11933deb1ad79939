"""`curate check [--repair]`: verify a store, and bring a damaged one back to a consistent state.

Checked, with the writer lock held (no writer changes the store meanwhile; readers go on):

- every file of ``tables/``: a readable Parquet part (every page decodes) named
  ``part-<run>-<n>.parquet``, carrying its table's name and schema version and the schema's columns,
  whose rows all belong to the run its name carries, and whose run has committed (its row in `runs`);
- every committed run: no part missing (a run's parts are numbered from 0 without a gap; an ingest's
  samples and rejects add up to the records it read, an import's rollouts to what it imported);
- every image a committed sample references: present, and its content hashes to its name;
- ``catalog.duckdb``: opens and has the views; every file of the difficulty cache reads;
- leftovers: stale temporary files (``.*.tmp``, a writer's spill folder under ``tmp/``) and images no
  committed sample references. They are listed, and removed by ``--repair``, but do not fail the check.

``--repair`` (each action one line of `CheckReport.repairs`):

- moves broken parts, parts of uncommitted runs and foreign files to ``quarantine/<UTC time>/`` under
  their store paths, with ``note.json`` and ``note.txt`` saying what moved and why (move a file back to
  undo);
- a run that lost rows: a scoring run keeps its other rollouts and its runs row (running its command
  again regenerates what is missing, and the lost part is acknowledged in the note so that it is not
  reported again); an ingest, import or regrade counts whole or not at all, so its runs row and
  remaining parts go to quarantine too, and running its command again (the line says which) restores it
  (an ingest's sample ids are content hashes: rollouts find their samples again);
- an image that is missing, or whose content does not match its name (moved to quarantine), is copied
  back from the image root of the run that ingested it when a file there has its content; otherwise the
  samples that need it become rejects of their run (reason ``image_missing``), so every record is still
  accounted for;
- rebuilds the catalog and clears the difficulty cache (derived: rebuilt on use); removes stale
  temporary files and unreferenced images (images only samples in quarantine use go there with them).

After a repair the store is checked again; `CheckReport.remaining` is what is still wrong (a part of
another schema version is reported, never moved).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from curate.difficulty import CACHE_DIR, STALE_CACHE_S
from curate.store import (
    CATALOG,
    CATALOG_MISSING,
    CATALOG_OUT_OF_DATE,
    RUN_COLUMN,
    Store,
)
from schemas import SCHEMA_VERSION, TABLE_NAMES
from schemas.io import atomic_write, file_lock, process_label, sha256_file

__all__ = ["QUARANTINE", "CheckReport", "Finding", "check_store"]

QUARANTINE = "quarantine"
"""Folder of the store where `--repair` moves what it takes out, one subfolder per repair."""
_EMPTY_PART = "part-empty.parquet"
_PART_NAME = re.compile(r"part-(?P<run>.+)-(?P<n>\d{5,})\.parquet")
_DIGEST = re.compile(r"[0-9a-f]{64}")
_WHOLE_RUNS = ("ingest", "import", "regrade")
"""Run kinds that commit after all their parts: such a run is whole or not at all."""
LISTED = 20
"""Leftovers of one kind listed one per line; more are counted in one line."""


@dataclass
class Finding:
    path: str
    """Store-relative path of the file (or ``run <id>``) the finding is about."""
    what: str
    leftover: bool = False
    """A stale temporary file or an unreferenced image: listed, removed by --repair, not a failure."""
    count: int = 1
    """How many things the line stands for (a line counting the leftovers not listed stands for several)."""

    def line(self) -> str:
        return f"{self.path}: {self.what}"


@dataclass
class CheckReport:
    root: Path
    findings: list[Finding]
    repairs: list[str] = field(default_factory=list)
    """What --repair did, one line each (empty without --repair, or when nothing was found)."""
    quarantine: Path | None = None
    """This repair's quarantine folder, when it moved or acknowledged anything."""
    remaining: list[Finding] | None = None
    """After a repair: what a new check finds."""

    @property
    def problems(self) -> list[Finding]:
        final = self.findings if self.remaining is None else self.remaining
        return [f for f in final if not f.leftover]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_store(store: Store, repair: bool = False) -> CheckReport:
    """Check `store` (see the module's docstring); with `repair`, fix what can be fixed."""
    store.require()
    label = "curate check --repair" if repair else "curate check"
    with file_lock(store.root / ".lock", process_label(label),
                   busy=lambda holder: f"store {store.root} is being written by {holder}; check it when that is done"):
        memo: dict = {}
        scan = _Scan(store, memo).run()
        report = CheckReport(root=store.root, findings=scan.findings)
        if repair and scan.findings:
            store._locked = True  # the writer lock is held (as in Store.writing): Store.write may write
            try:
                repairing = _Repair(store, scan)
                try:
                    repairing.run()
                finally:
                    report.repairs, report.quarantine = repairing.lines, repairing.folder
            finally:
                store._locked = False
            report.remaining = _Scan(store, memo).run().findings
        return report


# -- checking ------------------------------------------------------------------------------------------------


@dataclass
class _Part:
    path: Path
    table: str
    run: str | None
    """The run its name carries (None: the empty part, or a name that is not a part's)."""
    index: int | None
    rows: int = 0
    broken: str | None = None
    """Why it cannot be used (--repair moves it to quarantine)."""
    version: str | None = None
    """Another schema version than this code's (reported, left alone)."""
    samples: list = field(default_factory=list)
    """samples: (sample_id, images) of each row."""
    run_rows: list = field(default_factory=list)
    """runs: (run_id, kind, config, command) of each row."""

    @property
    def ok(self) -> bool:
        return self.broken is None and self.version is None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _type_name(t) -> str:
    """An Arrow type as text, a list's item named alike whatever the writer called it (`item`, `element`)."""
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{_type_name(t.value_type)}>"
    return str(t)


def _key(path: Path) -> tuple:
    st = path.stat()
    return (str(path), st.st_size, st.st_mtime_ns)


class _Scan:
    def __init__(self, store: Store, memo: dict):
        self.store, self.root, self.memo = store, store.root, memo
        self.findings: list[Finding] = []
        self.parts: dict[str, list[_Part]] = {}
        self.runs: dict[str, dict] = {}
        """Committed runs: run id -> kind, config (dict), command, part (its runs part)."""
        self.broken_commits: dict[str, _Part] = {}
        """Run id -> its broken runs part."""
        self.orphans: list[_Part] = []
        self.damaged: dict[str, list[str]] = {}
        """Committed run -> what it lost."""
        self.lost_parts: dict[str, list[str]] = {}
        """Committed run -> store paths of its missing (or broken) parts."""
        self.bad_images: dict[str, tuple[str, list[tuple[str, str]]]] = {}
        """Image path -> (problem, [(run, sample_id) that need it])."""
        self.image_files: set[str] = set()
        self.tmp_files: list[Path] = []
        self.spill: list[Path] = []
        self.catalog_problem: str | None = None
        self.catalog_note: str | None = None
        self.broken_cache: list[Path] = []

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def add(self, path: str, what: str, leftover: bool = False, count: int = 1) -> None:
        self.findings.append(Finding(path, what, leftover, count))

    def run(self) -> _Scan:
        for table in TABLE_NAMES:
            self.parts[table] = [self._part(p, table) for p in sorted(self.store.table_dir(table).glob("*.parquet"))]
        for parts in self.parts.values():
            for p in parts:
                if p.broken:
                    self.add(self.rel(p.path), p.broken)
                elif p.version:
                    self.add(self.rel(p.path), f"written with schema version {p.version}; this code reads version "
                             f"{SCHEMA_VERSION} (left as it is: read it with the pebr that wrote it)")
        self._runs()
        self._images()
        self._catalog()
        self._cache()
        self._leftovers()
        return self

    def _part(self, path: Path, table: str) -> _Part:
        key = ("part", table, *_key(path))
        if key not in self.memo:
            self.memo[key] = self._read_part(path, table)
        return self.memo[key]

    def _read_part(self, path: Path, table: str) -> _Part:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from schemas.tables import TABLES

        name = _PART_NAME.fullmatch(path.name)
        part = _Part(path, table, name["run"] if name else None, int(name["n"]) if name else None)
        if name is None and path.name != _EMPTY_PART:
            part.broken = "not a part of the store (parts are named part-<run>-<n>.parquet), yet the views read it"
            return part
        seen: set = set()
        try:
            f = pq.ParquetFile(path)
            meta = {k.decode(): v.decode() for k, v in (f.schema_arrow.metadata or {}).items()}
            if "pebr.table" not in meta or "pebr.schema_version" not in meta:
                part.broken = "not written by pebr (no pebr.table and pebr.schema_version in its metadata)"
                return part
            if meta["pebr.table"] != table:
                part.broken = f"a part of table {meta['pebr.table']!r} in the folder of {table!r}"
                return part
            if meta["pebr.schema_version"] != str(SCHEMA_VERSION):
                part.version = meta["pebr.schema_version"]
                return part
            have = [(x.name, _type_name(x.type)) for x in f.schema_arrow]
            want = [(x.name, _type_name(x.type)) for x in TABLES[table]]
            if have != want:
                diff = [f"{n}: {t}" for n, t in have if (n, t) not in want] + [f"{n} missing" for n, _ in want
                                                                               if n not in dict(have)]
                part.broken = f"its columns are not the {table} schema's ({'; '.join(diff) or 'order differs'})"
                return part
            for batch in f.iter_batches(batch_size=65_536):  # decodes every page
                part.rows += batch.num_rows
                seen.update(pc.unique(batch.column(RUN_COLUMN[table])).to_pylist())
                if table == "samples":
                    part.samples.extend(zip(batch.column("sample_id").to_pylist(), batch.column("images").to_pylist(),
                                            strict=True))
                elif table == "runs":
                    part.run_rows.extend(zip(*(batch.column(c).to_pylist() for c in ("run_id", "kind", "config", "command")),
                                             strict=True))
        except Exception as exc:  # noqa: BLE001 - whatever pyarrow says about a file it cannot read
            part.broken = f"not readable Parquet ({_first_line(exc)})"
            part.samples, part.run_rows, part.rows = [], [], 0
            return part
        if part.run is None and part.rows:
            part.broken = f"the empty part holds {part.rows} row(s)"
        elif part.run is not None and seen - {part.run}:
            others = ", ".join(sorted(map(str, seen - {part.run}))[:3])
            part.broken = f"holds rows of run(s) {others}, not only of run {part.run} that its name carries"
        return part

    def _runs(self) -> None:
        for p in self.parts["runs"]:
            if p.run is None:
                continue
            if p.broken:
                self.broken_commits[p.run] = p
            elif p.version:
                self.runs.setdefault(p.run, {"kind": None, "config": {}, "command": None, "part": p})
            for run_id, kind, config, command in p.run_rows:
                try:
                    parsed = json.loads(config) if config else {}
                except ValueError:
                    parsed = {}
                self.runs[run_id] = {"kind": kind, "config": parsed if isinstance(parsed, dict) else {},
                                     "command": command, "part": p}
        for table in ("samples", "rejects", "rollouts"):
            for p in self.parts[table]:
                if p.broken or p.run is None or p.run in self.runs:
                    continue
                self.orphans.append(p)
                if p.run in self.broken_commits:
                    self.add(self.rel(p.path), f"a part of run {p.run}, whose commit record "
                             f"{self.rel(self.broken_commits[p.run].path)} is broken")
                else:
                    why = "which has no row in runs (its writer stopped before committing, or its runs part was lost)"
                    self.add(self.rel(p.path), f"a part of run {p.run}, {why}")
        acknowledged = self._acknowledged()
        for run_id, info in self.runs.items():
            lost, why = [], []
            rows: dict[str, int] = defaultdict(int)
            unknown = False
            for table in TABLE_NAMES:
                mine = [p for p in self.parts[table] if p.run == run_id]
                for p in mine:
                    if p.broken:
                        lost.append(self.rel(p.path))
                        why.append(f"{self.rel(p.path)} is broken")
                    unknown |= not p.ok
                    rows[table] += p.rows
                present = {p.index for p in mine}
                for i in range(max(present, default=-1)):
                    rel = f"tables/{table}/part-{run_id}-{i:05d}.parquet"
                    if i not in present and rel not in acknowledged:
                        lost.append(rel)
                        why.append(f"{rel} is missing")
            config = info["config"]
            if not unknown and info["kind"] in ("ingest", "import"):
                tables = ("samples", "rejects") if info["kind"] == "ingest" else ("rollouts",)
                expected = config.get("records" if info["kind"] == "ingest" else "rollouts")
                have = sum(rows[t] for t in tables)
                if isinstance(expected, int) and have != expected:
                    what = f"{have} of its {expected} {'records' if info['kind'] == 'ingest' else 'rollouts'} are in " \
                           f"{' and '.join(tables)}"
                    if have > expected:
                        self.add(f"run {run_id}", f"{info['kind']} run holds more rows than it recorded: {what} "
                                 "(a part was copied in twice?)")
                    elif not why:
                        why.append(what)
            if why:
                self.damaged[run_id] = why
                self.lost_parts[run_id] = lost
                self.add(f"run {run_id}", f"{info['kind'] or 'a'} run lost rows: {'; '.join(why)}")

    def _acknowledged(self) -> set[str]:
        """Store paths of parts that earlier repairs moved to quarantine or found missing (a scoring run
        that lost a part keeps the gap in its numbering)."""
        done: set[str] = set()
        for note in sorted((self.root / QUARANTINE).glob("*/note.json")):
            with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
                data = json.loads(note.read_text())
                done.update(m["path"] for m in data.get("moved", []))
                done.update(m["path"] for m in data.get("acknowledged_missing", []))
        return done

    def referenced(self, runs: set[str] | None = None, skip: set[Path] = frozenset()) -> dict[str, list[tuple[str, str]]]:
        """Image path -> (run, sample_id) of the samples of readable parts of `runs` (default: the committed runs)."""
        runs = set(self.runs) if runs is None else runs
        refs: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for p in self.parts["samples"]:
            if p.ok and p.run in runs and p.path not in skip:
                for sample_id, images in p.samples:
                    for image in images or ():
                        refs[image].append((p.run, sample_id))
        return refs

    def _images(self) -> None:
        refs = self.referenced()
        images = self.store.images_dir.resolve()
        for rel, users in sorted(refs.items()):
            path = self.root / rel
            problem = None
            if not path.resolve().is_relative_to(images):
                problem = "not a path into the store's images folder"
            elif not path.is_file():
                problem = "missing"
            else:
                key = ("sha256", *_key(path))
                if key not in self.memo:
                    self.memo[key] = sha256_file(path)
                stem = Path(rel).name.split(".")[0]
                if _DIGEST.fullmatch(stem) and self.memo[key] != stem:
                    problem = "its content does not match its name (corrupt)"
            if problem:
                runs = sorted({run for run, _ in users})
                self.bad_images[rel] = (problem, users)
                self.add(rel, f"{problem}; {len(users)} sample(s) of run {', '.join(runs)} need it")
        orphan_refs = self.referenced({p.run for p in self.orphans})
        unreferenced = []
        for folder, dirs, files in os.walk(self.store.images_dir):
            dirs.sort()
            for name in sorted(files):
                path = Path(folder) / name
                rel = self.rel(path)
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # a temporary file: _leftovers
                self.image_files.add(rel)
                if rel not in refs:
                    unreferenced.append((rel, "only a part of an uncommitted run references it" if rel in orphan_refs
                                         else "no committed sample references it"))
        self._listed(unreferenced, "unreferenced image(s)")

    def _listed(self, items: list[tuple[str, str]], kind: str) -> None:
        for rel, what in items[:LISTED]:
            self.add(rel, what, leftover=True)
        if len(items) > LISTED:
            self.add(f"{len(items) - LISTED} more", kind, leftover=True, count=len(items) - LISTED)

    def _catalog(self) -> None:
        state = self.store.catalog_state()
        if state in (CATALOG_MISSING, CATALOG_OUT_OF_DATE):
            self.catalog_note = state
            self.add(CATALOG, f"{state} (derived: the next command that writes the store rebuilds it)", leftover=True)
        elif state is not None:
            self.catalog_problem = state
            self.add(CATALOG, state)

    def _cache(self) -> None:
        import pyarrow.parquet as pq

        for path in sorted((self.root / CACHE_DIR).glob("*.parquet")):
            key = ("cache", *_key(path))
            if key not in self.memo:
                try:
                    pq.read_table(path)
                    self.memo[key] = None
                except Exception as exc:  # noqa: BLE001
                    self.memo[key] = f"not readable Parquet ({_first_line(exc)})"
            if self.memo[key]:
                self.broken_cache.append(path)
                self.add(self.rel(path), f"{self.memo[key]} (derived: --repair clears the cache)")

    def _leftovers(self) -> None:
        from curate import store as store_module

        stale = []
        now = time.time()
        reader_prefix = getattr(store_module, "READER_SPILL_PREFIX", None)
        reader_stale_s = getattr(store_module, "STALE_READER_SPILL_S", 24 * 3600)
        for folder, dirs, files in os.walk(self.root):
            here = Path(folder)
            if here == self.root:
                dirs[:] = [d for d in dirs if d not in (QUARANTINE, "tmp")]
            dirs.sort()
            for name in sorted(files):
                if not (name.startswith(".") and name.endswith((".tmp", ".tmp.wal"))):
                    continue
                path = here / name
                # A reader writes cache files without the lock: only an old temporary file there is stale.
                with contextlib.suppress(OSError):
                    if here == self.root / CACHE_DIR and now - path.stat().st_mtime < STALE_CACHE_S:
                        continue
                    self.tmp_files.append(path)
                    stale.append((self.rel(path), "stale temporary file (of a writer that stopped)"))
        spill = self.root / "tmp"
        for entry in sorted(spill.iterdir()) if spill.is_dir() else ():
            with contextlib.suppress(OSError):
                if reader_prefix and entry.name.startswith(reader_prefix) and now - entry.stat().st_mtime < reader_stale_s:
                    continue  # a reader's spill folder, in use
                self.spill.append(entry)
                stale.append((self.rel(entry), "stale spill folder (of a writer that stopped)"))
        self._listed(stale, "stale temporary file(s)")


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _again(run_id: str, info: dict) -> str | None:
    """The command that makes a run's rows again, from what its runs row recorded (absolute paths)."""
    import shlex

    config, kind = info["config"], info["kind"]
    q = shlex.quote
    if kind == "ingest" and config.get("path") and config.get("image_root"):
        try:
            options = json.loads(config.get("fingerprint") or "{}")
        except ValueError:
            options = {}
        flags = "".join(f" --{k} {q(str(options[k]))}" for k in ("source", "capability", "split") if options.get(k))
        return f"curate ingest {q(config['path'])} --image-root {q(config['image_root'])}{flags}"
    if kind == "import" and config.get("path"):
        flags = "".join(f" --{k.replace('_', '-')} {q(str(config[k]))}" for k in ("source", "format", "qid_field")
                        if config.get(k))
        if config.get("correct_threshold") is not None:  # as given: a verl dump without acc needs it
            flags += f" --correct-threshold {config['correct_threshold']}"
        return f"curate import-rollouts {q(config['path'])}{flags}"
    if kind == "regrade" and config.get("source_run"):
        return f"curate regrade --run {q(config['source_run'])} (with the --reward settings of {run_id})"
    return None


# -- repairing -----------------------------------------------------------------------------------------------


class _Repair:
    def __init__(self, store: Store, scan: _Scan):
        self.store, self.scan, self.root = store, scan, store.root
        self.lines: list[str] = []
        self.folder: Path | None = None
        self.note: dict = {"moved": [], "acknowledged_missing": [], "restored": [], "rejected": [], "removed": [],
                           "runs": []}
        self.moved: set[Path] = set()
        self.written: dict[str, list] = defaultdict(list)
        """Images of the samples parts this repair wrote (image path -> (run, sample_id))."""

    def run(self) -> None:
        scan = self.scan
        moves: dict[Path, str] = {}
        for parts in scan.parts.values():
            for p in parts:
                if p.broken:
                    moves[p.path] = p.broken
        for p in scan.orphans:
            moves[p.path] = next(f.what for f in scan.findings if f.path == scan.rel(p.path))
        uncommitted: set[str] = set()
        for run_id, why in scan.damaged.items():
            info = scan.runs[run_id]
            command = info["command"] or "its command"
            if info["kind"] in _WHOLE_RUNS:
                uncommitted.add(run_id)
                reason = f"run {run_id} lost rows ({'; '.join(why)}): {_a(info['kind'])} run counts whole or not at all"
                for table in TABLE_NAMES:
                    for p in scan.parts[table]:
                        if p.run == run_id:
                            moves.setdefault(p.path, reason)
                again = _again(run_id, info) or command
                self.lines.append(f"run {run_id} ({info['kind']}) is no longer committed; to restore its rows: {again}")
                self.note["runs"].append({"run": run_id, "kind": info["kind"], "lost": why, "uncommitted": True,
                                          "command": info["command"], "again": again})
            else:
                for rel in scan.lost_parts[run_id]:
                    self.note["acknowledged_missing"].append({"path": rel, "run": run_id, "reason": "; ".join(why)})
                self.lines.append(f"run {run_id} ({info['kind']}) keeps its other rows; run its command again to "
                                  f"regenerate what it lost: {command}")
                self.note["runs"].append({"run": run_id, "kind": info["kind"], "lost": why, "uncommitted": False,
                                          "command": info["command"], "again": command})
        for rel, (problem, _) in scan.bad_images.items():
            if problem.startswith("its content"):
                moves[self.root / rel] = f"image {problem}"

        # A run's runs part first: its other parts stop counting at once.
        self._move(sorted(moves.items(), key=lambda item: (item[0].parent.name != "runs", str(item[0]))))
        kept_runs = set(scan.runs) - uncommitted
        self._images(kept_runs)
        self._leftovers()
        self.store.init()  # an empty part moved away comes back
        cache = self.root / CACHE_DIR
        cleared = [p for p in cache.iterdir() if p.is_file()] if cache.is_dir() else []
        for p in cleared:
            p.unlink(missing_ok=True)
        if cleared:
            self.lines.append(f"cleared the difficulty cache ({len(cleared)} file(s); rebuilt on use)")
        try:
            self.store.ensure_catalog(force=True)
            self.lines.append(f"rebuilt {CATALOG}")
        except Exception as exc:  # noqa: BLE001 - reported; the check that follows names what is wrong
            self.lines.append(f"{CATALOG} could not be rebuilt ({_first_line(exc)})")
        if self.folder is not None or self.note["acknowledged_missing"]:
            self._write_note()  # the acknowledged gaps of scoring runs live in the note

    # -- quarantine
    def _quarantine(self) -> Path:
        if self.folder is None:
            stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            folder, n = self.root / QUARANTINE / stamp, 1
            while folder.exists():
                n += 1
                folder = self.root / QUARANTINE / f"{stamp}-{n}"
            folder.mkdir(parents=True)
            self.folder = folder
            self.note["folder"] = folder.name
        return self.folder

    def _move(self, items: list[tuple[Path, str]]) -> None:
        for path, reason in items:
            if not path.exists():
                continue
            rel = path.relative_to(self.root).as_posix()
            dest = self._quarantine() / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            self.moved.add(path)
            self.note["moved"].append({"path": rel, "reason": reason})
            self.lines.append(f"moved {rel} to {QUARANTINE}/{self.folder.name}/ ({reason})")
            self._write_note()  # at every step: a repair that stops half-way leaves its note

    def _write_note(self) -> None:
        folder = self._quarantine()
        self.note.update(created_at=dt.datetime.now(dt.timezone.utc).isoformat(), store=str(self.root),
                         undo="move a file back to the same path under the store (a part of a run that is not "
                              "committed needs that run's runs part back too)")
        atomic_write(folder / "note.json", json.dumps(self.note, indent=1, sort_keys=True))
        text = [f"curate check --repair, {self.note['created_at']}: what was moved here and why.", ""]
        text += [f"moved {m['path']}: {m['reason']}" for m in self.note["moved"]]
        text += [f"missing {m['path']} (run {m['run']}): {m['reason']}" for m in self.note["acknowledged_missing"]]
        text += [f"run {r['run']} ({r['kind']}): " + ("no longer committed; " if r["uncommitted"] else "kept; ")
                 + f"run again: {r['again']} (its command was: {r['command']})" for r in self.note["runs"]]
        text += [f"restored {r['path']} from {r['from']}" for r in self.note["restored"]]
        text += [f"sample {r['sample_id']} of run {r['run']} is a reject now (image_missing): {r['image']} is lost"
                 for r in self.note["rejected"]]
        text += ["", f"To undo: {self.note['undo']}."]
        atomic_write(folder / "note.txt", "\n".join(text) + "\n")

    # -- images
    def _images(self, kept_runs: set[str]) -> None:
        scan = self.scan
        refs = scan.referenced(kept_runs, skip=self.moved)
        lost = {rel: users for rel, users in refs.items() if not (self.root / rel).is_file()
                or (rel in scan.bad_images and scan.bad_images[rel][0].startswith("not a path"))}
        if lost:
            restored = self._restore(lost)
            unrestorable = {rel: users for rel, users in lost.items() if rel not in restored}
            if unrestorable:
                self._reject(unrestorable)
            refs = scan.referenced(kept_runs, skip=self.moved)
            refs.update(self.written)
        # Images only samples in quarantine use go there with them; images nothing uses are removed.
        quarantined = {image for p in scan.parts["samples"] if p.ok and p.path in self.moved
                       for _, images in p.samples for image in images or ()}
        removed = 0
        for rel in sorted(scan.image_files - set(refs)):
            path = self.root / rel
            if not path.is_file():
                continue
            if rel in quarantined:
                self._move([(path, "an image only samples moved to quarantine use")])
            else:
                path.unlink()
                removed += 1
                self.note["removed"].append({"path": rel, "reason": "no committed sample references it"})
                with contextlib.suppress(OSError):
                    path.parent.rmdir()  # when it was the folder's last image
        if removed:
            self.lines.append(f"removed {removed} image(s) no committed sample references")

    def _restore(self, lost: dict[str, list]) -> set[str]:
        """Copy lost images back from the image roots of the runs that ingested them: a file there with the
        same content (hash) and suffix. Returns the images restored."""
        wanted: dict[str, list[str]] = defaultdict(list)  # digest -> image paths
        for rel in lost:
            stem = Path(rel).name.split(".")[0]
            if _DIGEST.fullmatch(stem) and (self.root / rel).resolve().is_relative_to(self.store.images_dir.resolve()):
                wanted[stem].append(rel)
        suffixes = {Path(rel).suffix.lower() for rels in wanted.values() for rel in rels}
        roots = []
        for users in lost.values():
            for run, _ in users:
                root = self.scan.runs.get(run, {}).get("config", {}).get("image_root")
                if root and Path(root).is_dir() and Path(root) not in roots:
                    roots.append(Path(root))
        restored: set[str] = set()
        for root in roots:
            for folder, dirs, files in os.walk(root):
                dirs.sort()
                for name in sorted(files):
                    if not wanted:
                        return restored
                    source = Path(folder) / name
                    if Path(name).suffix.lower() not in suffixes:
                        continue
                    with contextlib.suppress(OSError):
                        data = source.read_bytes()
                        for rel in wanted.pop(hashlib.sha256(data).hexdigest(), []):
                            dest = self.root / rel
                            dest.parent.mkdir(parents=True, exist_ok=True)
                            atomic_write(dest, data)
                            restored.add(rel)
                            self.note["restored"].append({"path": rel, "from": str(source)})
                            self.lines.append(f"restored {rel} from {source}")
        return restored

    def _reject(self, lost: dict[str, list]) -> None:
        """The samples that need a lost image become rejects of their run (reason image_missing): each of
        their parts is written again without them, with a rejects part holding them, and moved to quarantine."""
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        for p in list(self.scan.parts["samples"]):
            if not p.ok or p.path in self.moved or not any(set(images or ()) & lost.keys() for _, images in p.samples):
                continue
            table = pq.read_table(p.path)
            gone = pa.array([bool(set(images or ()) & lost.keys()) for images in table.column("images").to_pylist()])
            kept, dropped = table.filter(pc.invert(gone)), table.filter(gone)
            rejects = []
            for row in dropped.to_pylist():
                image = next(i for i in row["images"] if i in lost)
                raw = {k: v for k, v in row.items() if k not in ("ingest_run", "ingest_file", "record_index")}
                rejects.append({
                    "ingest_run": p.run, "source_file": row["ingest_file"], "record_index": row["record_index"],
                    "qid": row["qid"], "reason": "image_missing",
                    "message": f"image {image} was lost from the store and no file under the run's image root has "
                               f"its content (curate check --repair, {when}); the sample is in raw",
                    "raw": json.dumps(raw, ensure_ascii=False, default=str)})
                self.note["rejected"].append({"sample_id": row["sample_id"], "run": p.run, "image": image})
            # The new parts first: a repair stopped between the two shows as a run with more rows than it
            # recorded, never as lost samples.
            self.store.write("rejects", pa.Table.from_pylist(rejects), p.run)
            if kept.num_rows:
                self.store.write("samples", kept, p.run)
                for sample_id, images in zip(kept.column("sample_id").to_pylist(), kept.column("images").to_pylist(),
                                             strict=True):
                    for image in images or ():
                        self.written[image].append((p.run, sample_id))
            self._move([(p.path, f"written again without {dropped.num_rows} sample(s) whose image is lost: they "
                                 f"are rejects (image_missing) of run {p.run} now")])
            self.lines.append(f"{dropped.num_rows} sample(s) of run {p.run} became rejects (image_missing): "
                              "their image is lost and no file under the run's image root has its content")

    def _leftovers(self) -> None:
        removed = 0
        for path in self.scan.tmp_files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
        for entry in self.scan.spill:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed += 1
        spill = self.root / "tmp"
        with contextlib.suppress(OSError):
            spill.rmdir()  # when empty
        if removed:
            self.lines.append(f"removed {removed} stale temporary file(s) and spill folder(s)")
