"""curate.difficulty: the SQL macros against independent Python arithmetic, custom thresholds, the
choice of run, and the per-run cache, on stores built by hand through the Store API."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import pyarrow as pa
import pytest

from curate.difficulty import (
    DEFAULT_GROUP_SIZE,
    STAGE_BANDS,
    cache_path,
    check_thresholds,
    difficulty_query,
    load_difficulty,
    resolve_run,
    warm_cache,
)
from curate.store import Store
from schemas.errors import PebrError

# -- independent references ---------------------------------------------------------------------


def _beta_fn(x: int, y: int) -> Fraction:
    """B(x, y) for positive integers, exactly: (x-1)! (y-1)! / (x+y-1)!."""
    return Fraction(math.factorial(x - 1) * math.factorial(y - 1), math.factorial(x + y - 1))


def pdeg_exact(k: int, n: int, g: int) -> Fraction:
    """E[p^g + (1-p)^g] for p ~ Beta(k+1, n-k+1), as a ratio of Beta functions."""
    a, b = k + 1, n - k + 1
    return (_beta_fn(a + g, b) + _beta_fn(a, b + g)) / _beta_fn(a, b)


def pdeg_numeric(k: int, n: int, g: int, steps: int = 4000) -> float:
    """The same expectation by Simpson's rule over the posterior density."""
    a, b = k + 1, n - k + 1
    log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)

    def f(p: float) -> float:
        return (p ** g + (1 - p) ** g) * math.exp(log_norm) * p ** (a - 1) * (1 - p) ** (b - 1)

    h = 1 / steps
    total = f(0) + f(1) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, steps))
    return total * h / 3


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


# -- stores built by hand ------------------------------------------------------------------------

def _sample(sid: str, source: str = "toy", capability: str | None = None) -> dict:
    return {"sample_id": sid, "source": source, "capability": capability, "qid": sid, "problem": f"{sid} <image>",
            "answer": "3", "key_words": [], "images": ["images/x.png"], "extra": None, "ingest_run": "ingest-1",
            "ingest_file": "d.jsonl", "record_index": 0}


def _rollouts(run: str, sid: str | None, k: int, n: int, tokens: int = 10) -> list[dict]:
    return [{"run_id": run, "sample_id": sid, "qid": sid or "ghost", "rollout_idx": i, "response": f"r{i}",
             "correct": i < k, "accuracy": float(i < k), "format": 0.5 * (i % 2), "n_tokens": tokens + i}
            for i in range(n)]


def add_run(store: Store, run: str, kind: str, rows: list[dict] = ()) -> None:
    with store.writing("test"):
        if rows:
            store.write("rollouts", pa.Table.from_pylist(list(rows)), run)
        store.add_run(run, kind)


SPECS = {"s0": (0, 8), "s1": (1, 8), "s2": (6, 8), "s3": (8, 8), "s4": (2, 4)}


@pytest.fixture
def store(tmp_path):
    """Samples s0..s4 (two sources) and one scoring run with the k / n of SPECS."""
    s = Store(tmp_path / "store")
    with s.writing("test"):
        samples = [_sample(sid, "alpha" if sid < "s3" else "beta", "reasoning" if sid == "s2" else None) for sid in SPECS]
        s.write("samples", pa.Table.from_pylist(samples), "ingest-1")
        s.add_run("ingest-1", "ingest")
    add_run(s, "score-1", "score", [r for sid, (k, n) in SPECS.items() for r in _rollouts("score-1", sid, k, n)])
    return s


def _rows(con, sql: str, params=None) -> list[dict]:
    cur = con.execute(sql, params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    """A connection to an empty store: its views and macros."""
    s = Store(tmp_path_factory.mktemp("empty"))
    with s.writing("test"):
        pass
    return s.connect()


# -- constants and thresholds ------------------------------------------------------------------------

def test_stage_bands_and_group_size_are_the_papers():
    assert STAGE_BANDS == {"perception": "easy", "reasoning": "medium", "warmup": "hard"}
    assert DEFAULT_GROUP_SIZE == 8


@pytest.mark.parametrize("easy_min,hard_max", [(1.0, 0.0), (0.5, 0.49), (1.0, 0.99), (0.01, 0.0)])
def test_thresholds_that_separate_the_bands(easy_min, hard_max):
    assert check_thresholds(easy_min, hard_max) is None


@pytest.mark.parametrize("easy_min,hard_max", [(0.5, 0.5), (0.4, 0.6), (1.0, -0.1), (1.1, 0.0), (1.0, float("nan"))])
def test_thresholds_that_overlap_or_leave_0_1(easy_min, hard_max):
    with pytest.raises(PebrError, match=re.escape(
            f"band thresholds need 0 <= hard_max < easy_min <= 1 (got hard_max={hard_max}, easy_min={easy_min})")):
        check_thresholds(easy_min, hard_max)


# -- the SQL macros ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("k,n,g", [(0, 8, 8), (8, 8, 8), (3, 8, 8), (1, 16, 8), (5, 5, 4), (2, 3, 16), (7, 40, 8),
                                   (0, 1, 1), (0, 0, 8)])
def test_p_degenerate_is_the_posterior_expectation(con, k, n, g):
    got = con.execute("select p_degenerate(?, ?, ?)", [k, n, g]).fetchone()[0]
    exact = pdeg_exact(k, n, g)
    assert got == pytest.approx(float(exact), rel=1e-12)
    assert got == pytest.approx(pdeg_numeric(k, n, g), rel=1e-7)
    # symmetric in successes and failures
    assert con.execute("select p_degenerate(?, ?, ?)", [n - k, n, g]).fetchone()[0] == pytest.approx(got, rel=1e-12)


def test_p_degenerate_landmarks(con):
    # a group of one is always degenerate; with no rollouts (uniform prior) a group of 8 is with 2/9
    assert con.execute("select p_degenerate(3, 8, 1)").fetchone()[0] == pytest.approx(1.0, rel=1e-12)
    assert con.execute("select p_degenerate(0, 0, 8)").fetchone()[0] == pytest.approx(2 / 9, rel=1e-12)
    # 8/8 is not certain to repeat (the posterior, not the point estimate), and more evidence makes it likelier
    p8, p64 = con.execute("select p_degenerate(8, 8, 8), p_degenerate(64, 64, 8)").fetchone()
    # E[p^8] under Beta(9, 1) is 9/17; E[(1-p)^8] = B(9, 9) / B(9, 1) adds 9 (8!)^2 / 17!
    assert p8 == pytest.approx(9 / 17 + 9 * math.factorial(8) ** 2 / math.factorial(17), rel=1e-12)
    assert p8 < p64 < 1.0


@pytest.mark.parametrize("k,n,kwargs,expected", [
    (0, 8, "", "hard"), (1, 8, "", "medium"), (7, 8, "", "medium"), (8, 8, "", "easy"),
    (0, 1, "", "hard"), (1, 1, "", "easy"),
    (7, 10, ", easy_min := 0.7", "easy"), (6, 10, ", easy_min := 0.7", "medium"),
    (3, 10, ", hard_max := 0.3", "hard"), (4, 10, ", hard_max := 0.3", "medium"),
    (4, 10, ", easy_min := 0.7, hard_max := 0.3", "medium"), (10, 10, ", easy_min := 0.7, hard_max := 0.3", "easy"),
    (0, 10, ", easy_min := 0.7, hard_max := 0.3", "hard"),
])
def test_band(con, k, n, kwargs, expected):
    assert con.execute(f"select band({k}, {n}{kwargs})").fetchone()[0] == expected


@pytest.mark.parametrize("k,n", [(0, 8), (1, 8), (4, 8), (7, 8), (8, 8), (3, 10), (50, 100), (1, 1)])
def test_wilson_interval(con, k, n):
    lo, hi = con.execute("select wilson_low(?, ?), wilson_high(?, ?)", [k, n, k, n]).fetchone()
    ref_lo, ref_hi = wilson(k, n)
    assert lo == (0.0 if k == 0 else pytest.approx(ref_lo, rel=1e-12, abs=1e-15))
    assert hi == (1.0 if k == n else pytest.approx(ref_hi, rel=1e-12))
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    lo1, hi1 = con.execute("select wilson_low(?, ?, z := 1.0), wilson_high(?, ?, z := 1.0)", [k, n, k, n]).fetchone()
    ref_lo1, ref_hi1 = wilson(k, n, 1.0)
    assert lo1 == (0.0 if k == 0 else pytest.approx(ref_lo1, rel=1e-12))
    assert hi1 == (1.0 if k == n else pytest.approx(ref_hi1, rel=1e-12))
    assert lo1 >= lo and hi1 <= hi, "a smaller z gives a narrower interval"


def test_wilson_textbook_value(con):
    # 8 of 10 at 95%: centre 0.99208 / 1.38416, half-width 1.41602 * sqrt(0.025604), by hand
    lo, hi = con.execute("select wilson_low(8, 10), wilson_high(8, 10)").fetchone()
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)


# -- the difficulty view and difficulty_query ----------------------------------------------------------------

def test_view_rows_per_sample(store):
    con = store.connect()
    rows = {r["sample_id"]: r for r in _rows(con, "select * from difficulty where run_id = 'score-1'")}
    assert sorted(rows) == sorted(SPECS)
    for sid, (k, n) in SPECS.items():
        r = rows[sid]
        assert (r["n"], r["k"], r["pass_rate"]) == (n, k, k / n)
        assert r["band"] == ("easy" if k == n else "hard" if k == 0 else "medium")
        assert r["p_degenerate"] == pytest.approx(float(pdeg_exact(k, n, 8)), rel=1e-12)
        assert r["mean_accuracy"] == pytest.approx(k / n) and r["mean_tokens"] == pytest.approx(10 + (n - 1) / 2)
        assert r["mean_format"] == pytest.approx(0.25) and r["std_format"] == pytest.approx(0.25)
        assert r["mean_clip"] is None, "a reward no rollout carries has no mean"


def test_difficulty_query_with_custom_thresholds_and_group_size(store):
    con = store.connect()
    view = {r["sample_id"]: r for r in _rows(con, "select * from difficulty where run_id = 'score-1'")}
    got = {r["sample_id"]: r for r in _rows(con, difficulty_query("score-1", easy_min=0.75, hard_max=0.125, group_size=4))}
    # s1 is 1/8 <= 0.125 (hard), s2 6/8 >= 0.75 (easy), s4 2/4 in between
    assert {sid: r["band"] for sid, r in got.items()} == {"s0": "hard", "s1": "hard", "s2": "easy", "s3": "easy",
                                                          "s4": "medium"}
    for sid, (k, n) in SPECS.items():
        assert got[sid]["p_degenerate"] == pytest.approx(float(pdeg_exact(k, n, 4)), rel=1e-12)
        # only band and p_degenerate are recomputed: every other column is the view's, in the view's order
        assert list(got[sid]) == list(view[sid])
        assert {c: v for c, v in got[sid].items() if c not in ("band", "p_degenerate")} == {
            c: v for c, v in view[sid].items() if c not in ("band", "p_degenerate")}
    # with the defaults it is the view itself
    assert sorted(_rows(con, difficulty_query("score-1")), key=lambda r: r["sample_id"]) == [view[s] for s in sorted(view)]
    assert _rows(con, difficulty_query("no-such-run")) == []


def test_difficulty_query_refuses_bad_arguments():
    with pytest.raises(PebrError, match="hard_max < easy_min"):
        difficulty_query("score-1", easy_min=0.5, hard_max=0.5)
    with pytest.raises(PebrError, match=re.escape("group size must be at least 1 (got 0)")):
        difficulty_query("score-1", group_size=0)


def test_difficulty_query_quotes_the_run_id(store):
    con = store.connect()
    assert _rows(con, difficulty_query("x' OR '1'='1")) == []


# -- resolve_run ------------------------------------------------------------------------------------------

def test_resolve_run_picks_the_newest_run_with_matched_rollouts(store):
    assert resolve_run(store.connect()) == "score-1"
    # newer, but nothing matched to a sample (an unrelated dump), and an ingest: neither hides score-1
    add_run(store, "import-9", "import", _rollouts("import-9", None, 2, 4))
    add_run(store, "ingest-2", "ingest")
    con = store.connect()
    assert resolve_run(con) == "score-1"
    assert resolve_run(con, "score-1") == "score-1"
    # newest wins, not the greatest name
    add_run(store, "regrade-0", "regrade", _rollouts("regrade-0", "s1", 1, 2))
    assert resolve_run(store.connect()) == "regrade-0"
    assert resolve_run(store.connect(), "score-1") == "score-1", "an explicit run is kept even when older"


def test_resolve_run_errors(store, tmp_path):
    add_run(store, "import-9", "import", _rollouts("import-9", None, 2, 4))
    con = store.connect()
    with pytest.raises(PebrError, match=re.escape("no run 'score-x' in the store")):
        resolve_run(con, "score-x")
    with pytest.raises(PebrError, match=re.escape("run 'import-9' (import) has no rollouts matched to samples")):
        resolve_run(con, "import-9")
    with pytest.raises(PebrError, match=re.escape("run 'ingest-1' (ingest) has no rollouts matched to samples")):
        resolve_run(con, "ingest-1")
    empty = Store(tmp_path / "empty")
    add_run(empty, "import-1", "import", _rollouts("import-1", None, 1, 2))
    with pytest.raises(PebrError, match="the store has no rollouts yet: run `curate score` or `curate import-rollouts` first"):
        resolve_run(empty.connect())


# -- the per-run cache ----------------------------------------------------------------------------------

def test_cache_path_follows_the_runs_own_parts(store):
    path = cache_path(store, "score-1")
    assert path.parent == store.root / "cache" / "difficulty"
    assert re.fullmatch(r"score-1\.[0-9a-f]{16}\.parquet", path.name)
    assert cache_path(store, "score-1") == path, "the same parts give the same name"
    assert cache_path(store, "score-2") != path
    # another run's part leaves the name alone; a new part of the run changes it
    add_run(store, "score-2", "score", _rollouts("score-2", "s0", 1, 2))
    assert cache_path(store, "score-1") == path
    with store.writing("more"):
        store.write("rollouts", pa.Table.from_pylist(_rollouts("score-1", "s4", 4, 4)), "score-1")
    assert cache_path(store, "score-1") != path


def test_warm_cache_and_load_difficulty_give_the_views_rows(store):
    add_run(store, "score-2", "score", _rollouts("score-2", "s0", 1, 2) + _rollouts("score-2", "s3", 0, 3))
    path = warm_cache(store, "score-1")
    assert path == cache_path(store, "score-1") and path.is_file()
    assert not cache_path(store, "score-2").exists(), "only the run asked for"
    mtime = path.stat().st_mtime_ns
    assert warm_cache(store, "score-1") == path and path.stat().st_mtime_ns == mtime, "an existing file is kept"
    con = store.connect()
    for run in ("score-1", "score-2"):
        view = _rows(con, "select d.*, s.source, s.capability from difficulty d left join samples s using (sample_id) "
                          "where run_id = ? order by sample_id", [run])
        relation = load_difficulty(store, con, run)
        assert _rows(con, f"select * from {relation} order by sample_id") == view
        assert cache_path(store, run).is_file(), "the first use writes the run's file"
    assert [r["sample_id"] for r in view] == ["s0", "s3"] and (view[0]["n"], view[0]["k"]) == (2, 1)
    rows = {r["sample_id"]: r for r in _rows(con, f"select * from {load_difficulty(store, con, 'score-1')}")}
    assert (rows["s1"]["source"], rows["s2"]["capability"], rows["s4"]["source"]) == ("alpha", "reasoning", "beta")


def test_difficulty_query_over_the_cache_equals_the_view(store):
    con = store.connect()
    relation = load_difficulty(store, con, "score-1")
    opts = dict(easy_min=0.75, hard_max=0.125, group_size=4)
    cached = _rows(con, f"select * exclude (source, capability) from ({difficulty_query('score-1', relation=relation, **opts)}) "
                        "order by sample_id")
    direct = _rows(con, f"select * from ({difficulty_query('score-1', **opts)}) order by sample_id")
    assert cached == direct and len(direct) == len(SPECS)


def test_new_rollouts_of_a_run_are_seen_through_the_cache(store):
    con = store.connect()
    before = _rows(con, f"select n, k from {load_difficulty(store, con, 'score-1')} where sample_id = 's4'")
    assert before == [{"n": 4, "k": 2}]
    old = cache_path(store, "score-1")
    with store.writing("more"):
        store.write("rollouts", pa.Table.from_pylist(_rollouts("score-1", "s4", 4, 4)), "score-1")
    con = store.connect()
    after = _rows(con, f"select n, k, band from {load_difficulty(store, con, 'score-1')} where sample_id = 's4'")
    assert after == [{"n": 8, "k": 6, "band": "medium"}]
    assert cache_path(store, "score-1") != old and old.exists(), "the superseded file stays for readers that named it"
