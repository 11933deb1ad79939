"""The difficulty view: per sample and run, how often the model was right, and what that means
for a GRPO group.

Bands follow the paper (easy: k = n, medium: 0 < k < n, hard: k = 0). The interval is Wilson's.
The degenerate-group probability p^G + (1-p)^G is taken under the Beta(k+1, n-k+1) posterior of
the pass rate rather than at the point estimate k/n: an 8/8 sample is not certain to give a
degenerate group of 8, and samples with different n (adaptive runs) are compared fairly.
"""

from __future__ import annotations

from schemas.tables import REWARD_COLUMNS

DEFAULT_GROUP_SIZE = 8

MACROS = [
    # E[p^g] under Beta(a, b) = B(a + g, b) / B(a, b), in log-gamma form.
    "CREATE OR REPLACE MACRO pebr_beta_moment(a, b, g) AS "
    "exp(lgamma(a + g) - lgamma(a) + lgamma(a + b) - lgamma(a + b + g))",
    "CREATE OR REPLACE MACRO p_degenerate(k, n, g) AS "
    "pebr_beta_moment(k + 1, n - k + 1, g) + pebr_beta_moment(n - k + 1, k + 1, g)",
    # Band with configurable thresholds on the pass rate (defaults: the paper's k = n and k = 0).
    "CREATE OR REPLACE MACRO band(k, n, easy_min := 1.0, hard_max := 0.0) AS "
    "CASE WHEN k >= easy_min * n THEN 'easy' WHEN k <= hard_max * n THEN 'hard' ELSE 'medium' END",
    "CREATE OR REPLACE MACRO wilson_low(k, n, z := 1.96) AS CASE WHEN k = 0 THEN 0.0 ELSE "
    "((k / n) + z * z / (2 * n) - z * sqrt((k / n) * (1 - k / n) / n + z * z / (4 * n * n))) / (1 + z * z / n) END",
    "CREATE OR REPLACE MACRO wilson_high(k, n, z := 1.96) AS CASE WHEN k = n THEN 1.0 ELSE "
    "((k / n) + z * z / (2 * n) + z * sqrt((k / n) * (1 - k / n) / n + z * z / (4 * n * n))) / (1 + z * z / n) END",
]

_stats = ",\n    ".join(
    f"avg({c}) AS mean_{c}, stddev_pop({c}) AS std_{c}" for c in REWARD_COLUMNS
)

DIFFICULTY_SQL = f"""CREATE OR REPLACE VIEW difficulty AS
WITH agg AS (
  SELECT run_id, sample_id, count(*) AS n, count(*) FILTER (WHERE correct) AS k,
    {_stats},
    avg(n_tokens) AS mean_tokens
  FROM rollouts WHERE sample_id IS NOT NULL
  GROUP BY run_id, sample_id
)
SELECT run_id, sample_id, n, k, k / n AS pass_rate, band(k, n) AS band,
  wilson_low(k, n) AS ci_low, wilson_high(k, n) AS ci_high,
  {", ".join(f"mean_{c}, std_{c}" for c in REWARD_COLUMNS)},
  mean_tokens, p_degenerate(k, n, {DEFAULT_GROUP_SIZE}) AS p_degenerate
FROM agg"""
