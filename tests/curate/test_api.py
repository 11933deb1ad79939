"""The Python API (curate.open_store): polars frames that agree with `curate sql`, lazy scans that
see only committed parts, and select / score through the functions the CLI calls."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import curate
from curate.select import SelectOptions, select_stage
from curate.store import part_run
from schemas.errors import PebrError

# The store builder of test_select (tests/curate is not a package, so import it by path).
_spec = importlib.util.spec_from_file_location("_select_helpers", Path(__file__).with_name("test_select.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
build_store = _helpers.build_store

SPECS = [{"qid": f"a{k}", "k": k, "n": 8, "source": "alpha", "capability": "perception_fine"} for k in range(9)]
SPECS += [{"qid": f"b{i}", "k": 8 * (i % 2), "n": 4, "source": "beta", "capability": "reasoning"} for i in range(3)]
ROLLOUTS = 9 * 8 + 3 * 4


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    return tmp, build_store(tmp, SPECS)


@pytest.fixture
def view(built):
    return curate.open_store(built[1].root)


def _curate_sql(store_root: Path, query: str) -> list[dict]:
    """What `curate sql --format json QUERY` prints."""
    from typer.testing import CliRunner

    from curate.cli import app

    r = CliRunner().invoke(app, ["sql", "--format", "json", "--store", str(store_root), query])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_open_store_sql_runs_and_repr(view, tmp_path):
    counts = view.sql("select (select count(*) from samples) as samples, (select count(*) from rollouts) as rollouts")
    assert isinstance(counts, pl.DataFrame) and counts.row(0, named=True) == {"samples": 12, "rollouts": ROLLOUTS}
    runs = view.runs()
    assert runs["kind"].to_list() == ["ingest", "import"]
    text = repr(view)
    assert str(view.path) in text and "samples=12" in text and f"rollouts={ROLLOUTS}" in text
    assert runs["run_id"][-1] in text  # the latest run
    with pytest.raises(PebrError, match="no store at"):
        curate.open_store(tmp_path / "nowhere")
    with pytest.raises(PebrError, match="read-only"):
        view.sql("drop view samples")


def test_difficulty_matches_curate_sql(view):
    d = view.difficulty()
    run_id = view.resolve_run()
    assert d.height == 12 and set(d["run_id"]) == {run_id}
    assert {"source", "capability", "n", "k", "band", "p_degenerate", "ci_low", "mean_accuracy"} <= set(d.columns)
    expected = _curate_sql(view.path, "select sample_id, n, k, band from difficulty order by sample_id")
    assert d.select("sample_id", "n", "k", "band").to_dicts() == expected
    assert d["band"].value_counts().sort("band").rows() == [("easy", 2), ("hard", 3), ("medium", 7)]

    # Other thresholds and group size: as the macros compute them.
    d2 = view.difficulty(run_id, easy_min=0.75, hard_max=0.25, group_size=4)
    expected = _curate_sql(view.path, "select sample_id, band(k, n, easy_min := 0.75, hard_max := 0.25) as band, "
                                      "p_degenerate(k, n, 4) as p from difficulty order by sample_id")
    assert d2["band"].to_list() == [e["band"] for e in expected] != d["band"].to_list()
    assert d2["p_degenerate"].to_list() == pytest.approx([e["p"] for e in expected])
    assert view.difficulty(columns=["band", "k"]).columns == ["band", "k"]
    with pytest.raises(PebrError, match="nope"):
        view.difficulty(columns=["band", "nope"])
    with pytest.raises(PebrError, match="no run 'nope'"):
        view.difficulty("nope")
    with pytest.raises(PebrError, match="hard_max < easy_min"):
        view.difficulty(easy_min=0.5, hard_max=0.5)


def _stray_part(store, table: str, column: str, run: str) -> Path:
    """A copy of a committed part relabelled as `run`, which has no row in `runs`: what an
    import or ingest killed before its commit leaves behind."""
    src = next(p for p in store.parts(table) if part_run(p))
    t = pq.read_table(src)
    t = t.set_column(t.column_names.index(column), column, pa.array([run] * t.num_rows, pa.string()))
    dest = store.table_dir(table) / f"part-{run}-00000.parquet"
    pq.write_table(t, dest)
    return dest


def test_scans_see_only_committed_parts(tmp_path):
    store = build_store(tmp_path, SPECS[:4])
    view = curate.open_store(store.root)
    (committed,) = view.runs().filter(pl.col("kind") == "import")["run_id"]
    _stray_part(store, "rollouts", "run_id", "import-20000101T000000-dead00")
    _stray_part(store, "samples", "ingest_run", "ingest-20000101T000000-dead00")
    everything = pl.scan_parquet(store.table_dir("rollouts") / "*.parquet").select(pl.len()).collect().item()
    assert everything == 2 * 32  # the stray part is there to be read

    lazy = view.rollouts()
    assert isinstance(lazy, pl.LazyFrame)
    assert lazy.select(pl.len()).collect().item() == 32 == view.sql("select count(*) from rollouts").item()
    one = view.rollouts(committed).filter(pl.col("correct")).group_by("sample_id").len().collect()
    assert sorted(one["len"]) == [1, 2, 3] and one.height == 3  # k = 1, 2, 3 (k = 0 has no correct rollout)
    assert view.samples().collect().height == 4 == view.sql("select count(*) from samples").item()
    assert view.samples().collect_schema()["key_words"] == pl.List(pl.String)
    assert view.rejects().collect().height == 0
    with pytest.raises(PebrError, match="no run"):
        view.rollouts("import-20000101T000000-dead00")


def test_select_writes_what_the_cli_function_writes(view, built, tmp_path):
    store = built[1]
    for stage, options in (("reasoning", {}), ("perception", {"easy_min": 0.75, "seed": 3, "cap": 2})):
        direct = select_stage(store, SelectOptions(stage=stage, out=tmp_path / f"{stage}-direct", **options))
        api = view.select(stage, tmp_path / f"{stage}-api", **options)
        assert api.rows == direct.rows > 0 and api.files == direct.files
        for name in direct.files:
            assert (api.out / name).read_bytes() == (direct.out / name).read_bytes()
    assert api.rows == 2


def test_unknown_options_name_the_known_ones(view, tmp_path):
    with pytest.raises(PebrError, match=r"select: unknown option bogus; known: .*easy_min.*seed"):
        view.select("reasoning", tmp_path / "out", bogus=1)
    assert not (tmp_path / "out").exists()
    with pytest.raises(PebrError, match=r"score: unknown options batchsize, temprature; known: .*batch_size.*temperature"):
        view.score(tmp_path, temprature=0.7, batchsize=2)


def test_score_routes_options_to_the_configs(view, monkeypatch):
    from curate import score as scoring

    seen = {}
    monkeypatch.setattr(scoring, "score", lambda store, opts, progress=None: seen.update(store=store, opts=opts) or "report")
    assert view.score("models/m", engine="vllm", n=2, temperature=0.7, batch_size=3, limit=1) == "report"
    opts, defaults = seen["opts"], scoring.ScoreOptions(model="m")
    assert seen["store"].root == view.path and opts.model == "models/m" and opts.limit == 1
    assert (opts.sampling.n, opts.sampling.temperature, opts.sampling.top_p) == (2, 0.7, defaults.sampling.top_p)
    assert opts.engine_options.batch_size == 3 and opts.engine_options.dtype == defaults.engine_options.dtype
    assert opts.chunk is None  # score picks CHUNK[engine] itself, as `curate score` does
    view.score("m", sampling=type(defaults.sampling)(n=3, seed=9), seed=4)
    assert (seen["opts"].sampling.n, seen["opts"].sampling.seed, seen["opts"].chunk) == (3, 4, defaults.chunk)
    view.score("m", ray=True, replicas=4, gpus_per_replica=2)
    assert seen["opts"].ray and (seen["opts"].ray_options.replicas, seen["opts"].ray_options.gpus_per_replica) == (4, 2.0)


def test_import_curate_stays_light():
    import subprocess
    import sys

    code = "import sys, curate; assert 'polars' not in sys.modules and 'duckdb' not in sys.modules; print(curate.open_store)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "open_store" in r.stdout, r.stderr


def test_repr_names_the_latest_run_not_a_scoring_session(tmp_path):
    """A `score-session` row records one invocation of a run; the repr's latest run is a run."""
    store = build_store(tmp_path, SPECS[:2])
    imported = curate.open_store(store.root).runs()["run_id"][-1]
    with store.writing("test"):
        store.add_run("score-session-20991231-000000-abcd", "score-session", parent_run=imported, config={})
    text = repr(curate.open_store(store.root))
    assert f"latest_run={imported!r}" in text and "score-session" not in text
