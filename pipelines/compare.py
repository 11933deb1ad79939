"""Differences between trained models on the same held-out questions, with paired-bootstrap intervals.

Every arm answers the same questions, so a difference is measured question by question (paired).
With several seeds, each seed's arm answers every question; the difference is the mean over seeds
and questions, and the bootstrap resamples questions (the same draw for every seed), so the interval
covers both the question sample and the seeds' spread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def as_matrix(scores: Sequence[float] | Sequence[Sequence[float]]) -> np.ndarray:
    """Per-question scores as a (seeds, questions) array; a single run is one row.

    >>> as_matrix([1, 0, 1]).shape, as_matrix([[1, 0], [0, 0]]).shape
    ((1, 3), (2, 2))
    """
    m = np.asarray(scores, dtype=float)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[1] == 0:
        raise ValueError(f"expected per-question scores (seeds x questions), got shape {m.shape}")
    return m


def paired_bootstrap(a, b, *, n_boot: int = 10_000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of ``a - b`` over seeds and questions and its percentile bootstrap interval.

    ``a`` and ``b`` hold per-question scores, one row per seed (or one row); a single-row arm (a
    model trained once, as the warm-up model) is compared with every seed of the other arm. Returns
    ``{diff, ci_low, ci_high, n, seeds}``: ``n`` questions, ``seeds`` rows after broadcasting.

    >>> r = paired_bootstrap([1, 1, 1, 0] * 50, [0, 1, 1, 0] * 50)
    >>> r["diff"], r["n"], r["ci_low"] > 0
    (0.25, 200, True)
    >>> paired_bootstrap([1, 0] * 50, [1, 0] * 50)["ci_low"]
    0.0
    """
    a, b = as_matrix(a), as_matrix(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"the arms answered different numbers of questions: {a.shape[1]} and {b.shape[1]}")
    if a.shape[0] != b.shape[0] and 1 not in (a.shape[0], b.shape[0]):
        raise ValueError(f"the arms have {a.shape[0]} and {b.shape[0]} seeds")
    per_question = (a - b).mean(axis=0)  # broadcasting a single-row arm over the other's seeds
    n = per_question.size
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    for start in range(0, n_boot, 1000):  # blocks of draws keep memory flat for large n
        k = min(1000, n_boot - start)
        means[start:start + k] = per_question[rng.integers(0, n, size=(k, n))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return {"diff": float(per_question.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(n),
            "seeds": int(max(a.shape[0], b.shape[0]))}


def excludes_zero(c: dict) -> bool:
    """Whether a comparison's interval lies wholly on one side of zero.

    >>> excludes_zero({"ci_low": 0.01, "ci_high": 0.2}), excludes_zero({"ci_low": -0.01, "ci_high": 0.2})
    (True, False)
    """
    return c["ci_low"] > 0 or c["ci_high"] < 0


def fmt_comparison(c: dict) -> str:
    """A difference with its interval, as in the README's tables.

    >>> fmt_comparison({"diff": 0.0312, "ci_low": 0.011, "ci_high": 0.0514, "n": 1000, "seeds": 3})
    '+0.031 [+0.011, +0.051]'
    """
    return f"{c['diff']:+.3f} [{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"
