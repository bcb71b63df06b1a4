"""The statistics of the comparison tables: a two-stage bootstrap interval, paired tests, Holm.

Every run of a cell has a data seed (which split / which synthetic draw) and a
training seed. Runs that share a data seed are not independent: they see the
same data, so a good or bad draw moves all of them together. The interval here
resamples at both levels; the paired tests compare a method with a control on
the same (data seed, training seed) keys. Pure numpy/scipy/pandas.

Procedures and their references:

- :func:`hierarchical_bootstrap_ci`: two-stage bootstrap of a mean, percentile
  interval: resample the data seeds with replacement, then, within each drawn
  data seed, its runs with replacement (Davison & Hinkley 1997, *Bootstrap
  Methods and their Application*, sec. 3.8, "strategy 1"). This is not the
  scheme the references prefer: D&H (sec. 3.8) and Ren et al. (2010),
  "Nonparametric bootstrapping for hierarchical data", J. Appl. Statist.
  37(9), 1487-1498, prefer resampling data seeds only and keeping each one's
  runs as they are (strategy 2, the cluster bootstrap), and Field & Welsh
  (2007), "Bootstrapping clustered data", JRSS B 69(3), 369-390, prove
  consistency for that scheme, not for this one. We resample both levels
  because strategy 2 is degenerate with 1-3 data seeds (zero width with one),
  at the cost of an inflated within-seed variance (see the function).
  Written by hand: ``scipy.stats.bootstrap`` resamples one level only.
- :func:`paired_comparison`: ``scipy.stats.ttest_rel`` (two-sided) and the exact
  Wilcoxon signed-rank test (Wilcoxon 1945; Hollander, Wolfe & Chicken 2014,
  *Nonparametric Statistical Methods*, sec. 3.1), its null distribution
  conditional on tied ranks counted here (scipy's ``method="exact"`` ignores
  ties), with Cohen's d_z, the mean difference over the standard deviation of
  the differences (Cohen 1988, *Statistical Power Analysis*, ch. 2; Lakens
  2013, Front. Psychol. 4:863).
- :func:`holm`: Holm (1979), "A simple sequentially rejective multiple test
  procedure", Scand. J. Statist. 6, 65-70, as adjusted p-values (Wright 1992,
  "Adjusted P-values for simultaneous inference", Biometrics 48, 1005-1013).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

N_RESAMPLES = 9999  # scipy.stats.bootstrap's default; (R + 1) * 0.025 = 250 is a whole order statistic
DIGITS = 12  # paired differences are compared at this many significant digits of the paired values
MAX_EXACT = 500  # above this many non-zero differences the Wilcoxon p is the normal approximation


# -------------------------------------------------------------- bootstrap
def hierarchical_bootstrap_ci(
    frame: pd.DataFrame,
    value: str,
    data_col: str = "data_seed",
    train_col: str = "seed",
    confidence: float = 0.95,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the mean of ``value`` from a two-stage bootstrap.

    One replicate: draw as many data seeds as there are, with replacement; for
    each drawn data seed draw as many of its training-seed values as it has,
    with replacement; the replicate is the mean of all drawn values (the pooled
    mean, the same statistic as the table's mean). With unequal runs per data
    seed the target is the run-weighted mean; a data seed that lost runs weighs
    less. The interval is the (R + 1) alpha-th and (R + 1)(1 - alpha)-th of the
    R sorted replicates, alpha = (1 - confidence) / 2 (Davison & Hinkley 1997's
    rule for bootstrap quantiles; ``np.quantile(method="weibull")``): the 250th
    and 9750th of 9999.

    Why both stages (D&H sec. 3.8, strategy 1, where they and Ren et al. 2010
    prefer strategy 2, data seeds only; see the module docstring): with one data
    seed the interval is the ordinary bootstrap over training seeds, where
    strategy 2 has zero width, and with two or three data seeds strategy 2 is
    nearly degenerate. The price, for a data seeds of b runs each with
    between-seed variance s_b^2 and within-seed variance s_w^2: the replicates'
    expected variance is (a-1)/a * s_b^2/a + [(a-1)/a + (b-1)/b] * s_w^2/(ab),
    against the mean's s_b^2/a + s_w^2/(ab). The within-seed part is inflated
    by up to 1 + (b-1)/b (about 1.6 with 3 training seeds), the between-seed
    part shrunk by (a-1)/a. So the interval is wider than needed when
    training-seed noise dominates and many data seeds are drawn, and narrower
    when data-seed variance dominates and they are few; in every case much wider
    than a bootstrap that pools all runs as independent (what this guards
    against). With few data seeds, as every percentile interval, it undercovers
    (figures: tables._interval_note, checked in tests/test_stats.py).

    Rows with a NaN in ``value``, ``data_col`` or ``train_col`` are dropped.
    Fewer than two values give ``(nan, nan)``: one observation has no spread to
    resample. Values that are all equal give ``(v, v)`` exactly. Rows are sorted
    by (data seed, training seed) first, so the interval does not depend on row
    order; it is deterministic for a fixed ``seed``, and all intervals of a
    report share seed 0. ``train_col`` is also checked: one row per (data seed,
    training seed).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    rows = frame[[data_col, train_col, value]].dropna().sort_values([data_col, train_col], kind="stable")
    if rows.duplicated([data_col, train_col]).any():
        raise ValueError(f"hierarchical_bootstrap_ci: several rows per ({data_col}, {train_col}); "
                         "pass one value per data seed and training seed")
    if len(rows) < 2:
        return (math.nan, math.nan)
    values = rows[value].to_numpy(float)
    if np.ptp(values) == 0:
        return (float(values[0]), float(values[0]))
    clusters = [group[value].to_numpy(float) for _, group in rows.groupby(data_col, sort=True)]
    replicates = _two_stage_means(clusters, n_resamples, np.random.default_rng(seed))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha], method="weibull")
    return (float(low), float(high))


def _two_stage_means(clusters: list[np.ndarray], n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_resamples`` pooled means of two-stage resamples of ``clusters`` (vectorised, unbalanced ok)."""
    sizes = np.array([len(c) for c in clusters])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    flat = np.concatenate(clusters)
    picked = rng.integers(0, len(clusters), size=(n_resamples, len(clusters)))  # stage 1: data seeds
    size = sizes[picked][..., None]  # (B, D, 1): how many members the drawn data seed has
    slots = np.arange(sizes.max())  # stage 2: as many draws as the drawn data seed has members
    within = np.minimum((rng.random((n_resamples, len(clusters), sizes.max())) * size).astype(int), size - 1)
    drawn = flat[starts[picked][..., None] + within]
    used = slots < size
    return (drawn * used).sum(axis=(1, 2)) / used.sum(axis=(1, 2))


# ----------------------------------------------------------------- paired
@dataclass(frozen=True)
class PairedResult:
    """One method against one control over n aligned pairs (differences a - b)."""

    n: int
    mean_diff: float
    sd_diff: float  # ddof=1
    d_z: float  # Cohen's d_z = mean_diff / sd_diff
    t_statistic: float
    t_p: float  # two-sided paired t-test
    wilcoxon_n: int  # pairs left after dropping zero differences (= wins + losses)
    wilcoxon_statistic: float  # sum of ranks of the positive differences (R+)
    wilcoxon_p: float  # two-sided exact signed-rank test, conditional on ties
    wins: int = 0  # differences > 0, at DIGITS significant digits
    ties: int = 0  # differences = 0, at DIGITS significant digits
    losses: int = 0  # differences < 0, at DIGITS significant digits


def paired_comparison(a: np.ndarray | pd.Series, b: np.ndarray | pd.Series) -> PairedResult:
    """Paired comparison of ``a`` with ``b`` (equal length, element i of each from the same seeds).

    Pairs with a NaN on either side are dropped. Tests are two-sided.
    Differences are compared (zero, equal, sign) at ``DIGITS`` = 12 significant
    digits of the largest paired value: they are rounded to multiples of
    1e-12 * max|a, b| first, so differences equal but for floating-point
    rounding count as equal, not as a spread of 1e-16 that would give t-test
    p-values of 1e-30. Means, sds and the t-test use the unrounded values.

    - t-test: ``scipy.stats.ttest_rel(a, b)``, n - 1 degrees of freedom.
    - Wilcoxon signed-rank, exact null distribution. Zero differences are
      dropped before ranking (``zero_method="wilcox"``, Wilcoxon 1945's rule,
      as in most textbooks; Pratt's 1959 alternative ranks them first), so its
      n is the number of non-zero differences. Tied |differences| get average
      ranks and the p-value is the exact conditional one (Hollander, Wolfe &
      Chicken 2014, sec. 3.1, comment on ties), counted by
      :func:`_signed_rank_p` for any n up to ``MAX_EXACT`` (above, scipy's
      normal approximation with tie correction). scipy's ``method="exact"`` is
      not used: with ties it applies the no-ties distribution, which is not
      conservative (differences (-1, 5, 2, 5, 1, 1, 3): 0.047 against the exact
      0.0625). With 5 or fewer non-zero differences no two-sided p-value falls
      below 0.0625 (2 / 2**5); with fewer than 2 it is NaN, as the t-test's with
      fewer than 2 pairs (one sign cannot be tested).
    - Cohen's d_z = mean(diff) / sd(diff, ddof=1) (= t / sqrt(n)), without the
      small-sample correction: Hedges' factor 1 - 3 / (4 (n - 1) - 1) would
      shrink it by 43% at n = 3 and 9% at n = 10, so read d_z from few pairs
      as an upper-leaning estimate.

    Degenerate cases return NaN without warnings: fewer than two pairs (t, d_z
    and Wilcoxon); all differences equal at 12 digits (sd about 0: t and d_z
    undefined; the Wilcoxon p is still defined unless the differences are zero).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_comparison needs two 1-D arrays of equal length, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    diff = a - b
    n = len(diff)
    steps = _rounded(diff, a, b)
    signs = dict(wins=int((steps > 0).sum()), ties=int((steps == 0).sum()), losses=int((steps < 0).sum()))
    nan = math.nan
    w_n, w_stat, w_p = _wilcoxon(steps)
    if n < 2:
        mean = float(diff.mean()) if n else nan
        return PairedResult(n, mean, nan, nan, nan, nan, w_n, w_stat, nan, **signs)
    mean, sd = float(diff.mean()), float(diff.std(ddof=1))
    t_stat = t_p = d_z = nan
    if np.ptp(steps) > 0:
        test = stats.ttest_rel(a, b)
        t_stat, t_p, d_z = float(test.statistic), float(test.pvalue), mean / sd
    return PairedResult(n, mean, sd, d_z, t_stat, t_p, w_n, w_stat, w_p, **signs)


def _rounded(diff: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``diff`` in whole multiples of 10**-DIGITS times the largest |a|, |b| (exact in float64)."""
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)))
    if scale == 0 or not math.isfinite(scale):
        return diff.copy()
    return np.rint(diff / (scale * 10.0**-DIGITS))


def _wilcoxon(steps: np.ndarray) -> tuple[int, float, float]:
    """(non-zero n, R+, two-sided p) of the signed-rank test of rounded differences; NaN p below 2."""
    nonzero = steps[steps != 0]
    n = len(nonzero)
    if n == 0:
        return 0, math.nan, math.nan
    ranks = stats.rankdata(np.abs(nonzero))
    r_plus = float(ranks[nonzero > 0].sum())
    if n < 2:
        return n, r_plus, math.nan
    if n > MAX_EXACT:
        p = float(stats.wilcoxon(nonzero, zero_method="wilcox", correction=False, method="approx").pvalue)
    else:
        p = _signed_rank_p(ranks, nonzero > 0)
    return n, r_plus, p


def _signed_rank_p(ranks: np.ndarray, positive: np.ndarray) -> float:
    """Exact two-sided p of R+ given the (mid)ranks: the distribution of R+ over all 2**n equally
    likely signs, counted as subset sums of the doubled ranks (whole numbers: midranks are whole or
    half), one rank at a time, in O(n**3). Probabilities are float64 sums and halvings of
    non-negative numbers, so their relative error stays below about n * 1e-16, with no overflow."""
    doubled = np.rint(2 * ranks).astype(np.int64)
    dist = np.ones(1)  # dist[s]: probability that twice R+ equals s, over the ranks added so far
    for r in doubled:
        grown = np.zeros(len(dist) + r)
        grown[: len(dist)] += dist  # this rank negative
        grown[r:] += dist  # this rank positive
        dist = grown / 2
    observed = int(doubled[positive].sum())
    lower, upper = dist[: observed + 1].sum(), dist[observed:].sum()
    return float(min(1.0, 2 * min(lower, upper)))


# ------------------------------------------------------------------- Holm
def holm(pvalues: np.ndarray | list[float] | pd.Series) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order.

    With the m non-NaN p-values sorted, p_(1) <= ... <= p_(m), the adjusted
    value of p_(i) is ``min(1, max_{j <= i} (m - j + 1) p_(j))``: the smallest
    family-wise level at which Holm's procedure rejects that hypothesis. NaN
    entries (comparisons without a test) are passed through and not counted in m.
    """
    p = np.asarray(pvalues, float)
    if p.ndim != 1:
        raise ValueError(f"holm needs a 1-D list of p-values, got shape {p.shape}")
    present = ~np.isnan(p)
    if ((p[present] < 0) | (p[present] > 1)).any():
        raise ValueError(f"holm: p-values must lie in [0, 1], got {p[present].tolist()}")
    out = np.full_like(p, np.nan)
    q = p[present]
    m = len(q)
    order = np.argsort(q, kind="stable")
    steps = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    adjusted = np.empty(m)
    adjusted[order] = steps
    out[present] = adjusted
    return out
