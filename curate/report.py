"""`curate report`: the difficulty picture of a run, per source and capability.

Band counts, the pass-rate histogram and the predicted zero-advantage fraction of each stage, as
data (report.json), PNG plots, a self-contained HTML page embedding them, and a rich table.
The run's difficulty comes through the Python API (curate.api) and polars aggregates it to a few
rows per (source, capability, band, k, n) first, so plotting never sees per-sample data.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from curate.difficulty import DEFAULT_GROUP_SIZE, STAGE_BANDS
from curate.store import Store

BANDS = ("easy", "medium", "hard")
BAND_COLORS = {"easy": "#4caf50", "medium": "#ffb300", "hard": "#e53935"}
MAX_PANELS = 12
"""Histogram panels drawn per report (the largest groups); the data keeps every group."""


@dataclass
class GroupStats:
    """One (source, capability) group of a run, or the total over all groups."""

    source: str
    capability: str
    samples: int = 0
    bands: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BANDS, 0))
    histogram: list[int] = field(default_factory=list)
    """Sample counts per bin of ReportData.bin_labels."""
    zero_advantage: dict[str, float | None] = field(default_factory=dict)
    """Stage -> mean P(degenerate group of G) over the stage's band in this group (None: empty band)."""


@dataclass
class ReportData:
    run_id: str
    group_size: int
    bin_labels: list[str]
    groups: list[GroupStats]
    total: GroupStats
    files: dict[str, Path] = field(default_factory=dict)


def _bins(ns: set[int]) -> tuple[list[str], callable]:
    """One bin per k when every sample has the same n; else exact 0, ten deciles of (0, 1), exact 1."""
    if len(ns) == 1:
        n = next(iter(ns))
        return [f"{k}/{n}" for k in range(n + 1)], lambda k, n_: k
    labels = ["0"] + [f"{i / 10:.1f}-{(i + 1) / 10:.1f}" for i in range(10)] + ["1"]

    def index(k: int, n_: int) -> int:
        if k == 0:
            return 0
        if k == n_:
            return 11
        return 1 + min(9, int(10 * k / n_))

    return labels, index


def collect(store: Store, run: str | None = None, group_size: int = DEFAULT_GROUP_SIZE,
            easy_min: float = 1.0, hard_max: float = 0.0) -> ReportData:
    """Aggregate the run's difficulty per (source, capability); no files written.

    Reads the run's difficulty through the Python API (the per-run cache `curate select` reads too),
    only the columns the report needs, and aggregates them with polars to one row per
    (source, capability, band, k, n).
    """
    import polars as pl

    from curate.api import open_store

    view = open_store(store)
    run_id = view.resolve_run(run)
    diff = view.difficulty(run_id, easy_min=easy_min, hard_max=hard_max, group_size=group_size,
                           columns=["source", "capability", "band", "k", "n", "p_degenerate"])
    rows = (diff.filter(pl.col("source").is_not_null())  # only samples of the samples view, as a join with it
            .with_columns(pl.col("capability").fill_null("unknown"))
            .group_by("source", "capability", "band", "k", "n")
            .agg(pl.len(), pl.col("p_degenerate").sum())
            .sort("source", "capability", "band", "k", "n")
            .rows())
    labels, index = _bins({n for *_, n, _, _ in rows})
    groups: dict[tuple[str, str], GroupStats] = {}
    total = GroupStats("all", "all", histogram=[0] * len(labels))
    pdeg: dict[tuple[str, str, str], float] = {}
    for source, cap, band, k, n, count, pd_sum in rows:
        g = groups.setdefault((source, cap), GroupStats(source, cap, histogram=[0] * len(labels)))
        for target, key in ((g, (source, cap)), (total, ("all", "all"))):
            target.samples += count
            target.bands[band] += count
            target.histogram[index(k, n)] += count
            pdeg[(*key, band)] = pdeg.get((*key, band), 0.0) + pd_sum
    for (source, cap), g in [*groups.items(), (("all", "all"), total)]:
        g.zero_advantage = {stage: (pdeg[(source, cap, band)] / g.bands[band] if g.bands[band] else None)
                            for stage, band in STAGE_BANDS.items()}
    ordered = sorted(groups.values(), key=lambda g: (-g.samples, g.source, g.capability))
    return ReportData(run_id=run_id, group_size=group_size, bin_labels=labels, groups=ordered, total=total)


def _label(g: GroupStats) -> str:
    return f"{g.source} / {g.capability}"


def _plot_bands(data: ReportData, path: Path) -> None:
    import matplotlib.pyplot as plt

    groups = [*data.groups, data.total]
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(groups) + 1.5))
    left = [0] * len(groups)
    y = list(range(len(groups)))[::-1]
    for band in BANDS:
        widths = [g.bands[band] for g in groups]
        ax.barh(y, widths, left=left, color=BAND_COLORS[band], label=band)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(y, [_label(g) for g in groups])
    ax.set_xlabel("samples")
    ax.set_title(f"bands, run {data.run_id}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_histograms(data: ReportData, path: Path) -> None:
    import matplotlib.pyplot as plt

    panels = [data.total, *data.groups[: MAX_PANELS - 1]]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    x = list(range(len(data.bin_labels)))
    for ax, g in zip(axes.flat, panels):
        ax.bar(x, g.histogram, color="#5c6bc0")
        ax.set_xticks(x, data.bin_labels, rotation=60 if len(x) > 9 else 0, fontsize=7)
        ax.set_title(_label(g), fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("pass rate (correct / rollouts)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_zero_advantage(data: ReportData, path: Path) -> None:
    import matplotlib.pyplot as plt

    groups = [*data.groups, data.total]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(groups) + 2), 4))
    width = 0.8 / len(STAGE_BANDS)
    for i, (stage, band) in enumerate(STAGE_BANDS.items()):
        xs = [j + (i - 1) * width for j in range(len(groups))]
        ax.bar(xs, [g.zero_advantage[stage] or 0.0 for g in groups], width, color=BAND_COLORS[band], label=f"{stage} ({band})")
    ax.set_xticks(range(len(groups)), [_label(g) for g in groups], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"P(zero advantage), G = {data.group_size}")
    ax.set_title("predicted zero-advantage fraction (accuracy reward)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def _html(data: ReportData, images: dict[str, Path]) -> str:
    head = ["source", "capability", "samples", *BANDS, *(f"P0 {s}" for s in STAGE_BANDS)]
    body = []
    for g in [*data.groups, data.total]:
        cells = [g.source, g.capability, g.samples, *(g.bands[b] for b in BANDS), *(_fmt(g.zero_advantage[s]) for s in STAGE_BANDS)]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    figures = "".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}"></figure>'
        for name, p in images.items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>pebr report: {html.escape(data.run_id)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:nth-child(-n+2){{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>Difficulty report</h1>
<p>Run <code>{html.escape(data.run_id)}</code>. P0 = mean probability that a GRPO group of {data.group_size} rollouts
on the stage's band has zero advantage under the accuracy reward (Beta posterior of each pass rate).</p>
<table><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr>{"".join(body)}</table>
{figures}
</body></html>
"""


def build_report(store: Store, out_dir: Path, run: str | None = None, group_size: int = DEFAULT_GROUP_SIZE,
                 easy_min: float = 1.0, hard_max: float = 0.0) -> ReportData:
    """Write report.json, bands.png, pass_rate.png, zero_advantage.png and index.html to `out_dir`."""
    import matplotlib

    matplotlib.use("Agg")
    data = collect(store, run, group_size, easy_min, hard_max)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = {"bands": out / "bands.png", "pass_rate": out / "pass_rate.png", "zero_advantage": out / "zero_advantage.png"}
    _plot_bands(data, images["bands"])
    _plot_histograms(data, images["pass_rate"])
    _plot_zero_advantage(data, images["zero_advantage"])
    (out / "index.html").write_text(_html(data, images), encoding="utf-8")
    data.files = {**images, "html": out / "index.html", "json": out / "report.json"}
    payload = asdict(data)
    payload["files"] = {k: str(v) for k, v in data.files.items()}
    (out / "report.json").write_text(json.dumps(payload, indent=2) + "\n")
    return data


def render_report(data: ReportData, console=None) -> None:
    """Print the report as a rich table (bands, and the zero-advantage prediction per stage)."""
    from rich.console import Console
    from rich.table import Table

    from schemas.cli import cell, esc

    console = console or Console()
    t = Table(title=f"difficulty of run {esc(data.run_id)} (P0: predicted zero-advantage fraction, G = {data.group_size})")
    for col in ("source", "capability"):
        t.add_column(col)
    for col in ("samples", *BANDS, *(f"P0 {s}" for s in STAGE_BANDS)):
        t.add_column(col, justify="right")
    for g in [*data.groups, data.total]:
        style = "bold" if g is data.total else None
        t.add_row(cell(g.source), cell(g.capability), f"{g.samples:,}", *(f"{g.bands[b]:,}" for b in BANDS),
                  *(_fmt(g.zero_advantage[s]) for s in STAGE_BANDS), style=style)
    console.print(t)
