from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
from pathlib import Path

import pytest

from curate.difficulty import STAGE_BANDS
from curate.report import build_report, collect, render_report

# The store builder of test_select (tests/curate is not a package, so import it by path).
_spec = importlib.util.spec_from_file_location("_select_helpers", Path(__file__).with_name("test_select.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
build_store = _helpers.build_store


@pytest.fixture
def store(tmp_path):
    specs = [{"qid": f"a{k}", "k": k, "n": 8, "source": "alpha", "capability": "perception_fine"} for k in range(9)]
    specs += [{"qid": f"b{i}", "k": 8 * (i % 2), "n": 8, "source": "beta", "capability": "reasoning"} for i in range(5)]
    return build_store(tmp_path, specs)


def test_report_counts(store):
    data = collect(store)
    assert data.bin_labels == [f"{k}/8" for k in range(9)]
    groups = {(g.source, g.capability): g for g in data.groups}
    alpha, beta = groups["alpha", "perception_fine"], groups["beta", "reasoning"]
    assert alpha.bands == {"easy": 1, "medium": 7, "hard": 1} and alpha.histogram == [1] * 9
    assert beta.bands == {"easy": 2, "medium": 0, "hard": 3} and beta.histogram == [3, 0, 0, 0, 0, 0, 0, 0, 2]
    assert data.total.samples == 14 and data.total.bands == {"easy": 3, "medium": 7, "hard": 4}
    assert beta.zero_advantage["reasoning"] is None
    easy_p0 = beta.zero_advantage["perception"]
    assert 0.5 < easy_p0 < 1.0 and beta.zero_advantage["warmup"] == pytest.approx(easy_p0)  # symmetric posterior
    assert alpha.zero_advantage["reasoning"] < easy_p0


def test_report_files(store, tmp_path):
    from PIL import Image

    data = build_report(store, tmp_path / "report")
    for name in ("bands", "pass_rate", "zero_advantage"):
        path = data.files[name]
        assert path.stat().st_size > 1000
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width > 100 and im.height > 100
            assert len(set(im.convert("L").getdata())) > 2  # something was drawn
    page = data.files["html"].read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == 3 and base64.b64decode(embedded[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "alpha" in page and "<table>" in page and "src=\"http" not in page
    saved = json.loads(data.files["json"].read_text())
    assert saved["total"]["bands"] == {"easy": 3, "medium": 7, "hard": 4}

    buf = io.StringIO()
    from rich.console import Console

    render_report(data, Console(file=buf, width=200))
    text = buf.getvalue()
    assert "alpha" in text and "perception_fine" in text and "14" in text


def test_report_mixed_n_bins(tmp_path):
    store = build_store(tmp_path, [{"qid": "x", "k": 0, "n": 4}, {"qid": "y", "k": 3, "n": 4}, {"qid": "z", "k": 5, "n": 5}])
    data = collect(store)
    assert len(data.bin_labels) == 12 and data.total.histogram[0] == 1 and data.total.histogram[-1] == 1
    assert data.total.histogram[data.bin_labels.index("0.7-0.8")] == 1


def test_report_equals_sql_over_the_views(store):
    """collect() (the API and polars) against one SQL aggregation over the samples and difficulty views."""
    run_id = store.connect().execute("select run_id from runs where kind = 'import'").fetchone()[0]
    data = collect(store, run_id, group_size=4, easy_min=0.75, hard_max=0.25)
    rows = store.connect().execute(
        "SELECT s.source, coalesce(s.capability, 'unknown'), band(k, n, easy_min := 0.75, hard_max := 0.25) AS b, "
        "count(*), sum(p_degenerate(k, n, 4)) FROM samples s JOIN difficulty d USING (sample_id) "
        "WHERE run_id = ? GROUP BY ALL", [run_id]).fetchall()
    groups = {(g.source, g.capability): g for g in data.groups}
    assert sum(g.samples for g in groups.values()) == sum(r[3] for r in rows) == data.total.samples == 14
    stage_of = {band: stage for stage, band in STAGE_BANDS.items()}
    for source, cap, band, count, pd_sum in rows:
        g = groups[source, cap]
        assert g.bands[band] == count
        assert g.zero_advantage[stage_of[band]] == pytest.approx(pd_sum / count)
    assert data.groups[0].source == "alpha" and data.total.bands == {"easy": 5, "medium": 3, "hard": 6}
