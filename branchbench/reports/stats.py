"""The statistics of the comparison tables: a two-stage bootstrap interval, paired tests, Holm.

Every run of a cell has a data seed (which split / which synthetic draw) and a
training seed. Runs that share a data seed are not independent: they see the
same data, so a good or bad draw moves all of them together. The interval here
resamples at both levels; the paired tests compare a method with a control on
the same (data seed, training seed) keys. Pure numpy/scipy/pandas.

Procedures and their references:

- :func:`hierarchical_bootstrap_ci`: two-stage (cluster) bootstrap of a mean,
  percentile interval. Davison & Hinkley (1997), *Bootstrap Methods and their
  Application*, sec. 3.8 ("hierarchical data"), their strategy 1: resample the
  top-level units with replacement, then, within each drawn unit, its members
  with replacement. See also Field & Welsh (2007), "Bootstrapping clustered
  data", JRSS B 69(3), 369-390. Written by hand: ``scipy.stats.bootstrap``
  resamples one level only.
- :func:`paired_comparison`: ``scipy.stats.ttest_rel`` (two-sided) and the exact
  ``scipy.stats.wilcoxon`` signed-rank test (Wilcoxon 1945; Hollander, Wolfe &
  Chicken 2014, *Nonparametric Statistical Methods*, sec. 3.1), with Cohen's
  d_z, the mean difference over the standard deviation of the differences
  (Cohen 1988, *Statistical Power Analysis*, ch. 2; Lakens 2013, Front.
  Psychol. 4:863).
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

N_RESAMPLES = 9999  # scipy.stats.bootstrap's default
# Above this many non-zero differences, an exact Wilcoxon with tied |differences| is not
# enumerated (2**n sign patterns) and scipy's conservative rounding is used instead.
MAX_ENUMERATED = 16


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
    mean, the same statistic as the table's mean). The interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the
    replicates (Davison & Hinkley 1997, sec. 3.8, strategy 1).

    Why both stages: with one data seed the interval is the ordinary bootstrap
    over training seeds; resampling data seeds only would give an interval of
    zero width there and, with two or three data seeds, a nearly degenerate one.
    The price: resampling within drawn clusters counts the within-data-seed
    variance about twice (D&H sec. 3.8), so the interval is somewhat wider than
    needed when training-seed noise dominates; when data-seed variance dominates
    it is close to exact, and much wider than a bootstrap that pools all runs as
    independent (which is what this guards against). With few data seeds, as
    every percentile interval, it can still undercover.

    Rows with a NaN ``value`` are dropped. Fewer than two values give
    ``(nan, nan)``: one observation has no spread to resample. Identical values
    give ``(v, v)``. Deterministic for a fixed ``seed``. ``train_col`` is only
    checked: one row per (data seed, training seed).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    rows = frame[[data_col, train_col, value]].dropna(subset=[value])
    if rows.duplicated([data_col, train_col]).any():
        raise ValueError(f"hierarchical_bootstrap_ci: several rows per ({data_col}, {train_col}); "
                         "pass one value per data seed and training seed")
    if len(rows) < 2:
        return (math.nan, math.nan)
    clusters = [group[value].to_numpy(float) for _, group in rows.groupby(data_col, sort=True)]
    replicates = _two_stage_means(clusters, n_resamples, np.random.default_rng(seed))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [alpha, 1.0 - alpha])
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
    wilcoxon_n: int  # pairs left after dropping zero differences
    wilcoxon_statistic: float  # sum of ranks of the positive differences (R+)
    wilcoxon_p: float  # two-sided exact signed-rank test


def paired_comparison(a: np.ndarray | pd.Series, b: np.ndarray | pd.Series) -> PairedResult:
    """Paired comparison of ``a`` with ``b`` (equal length, element i of each from the same seeds).

    Pairs with a NaN on either side are dropped. Tests are two-sided.

    - t-test: ``scipy.stats.ttest_rel(a, b)``, n - 1 degrees of freedom.
    - Wilcoxon signed-rank, exact null distribution. Zero differences are
      dropped before ranking (``zero_method="wilcox"``, Wilcoxon 1945's rule,
      as in most textbooks; Pratt's 1959 alternative ranks them first), so its
      n is the number of non-zero differences.
      Tied |differences| get average ranks; the exact p-value is then the
      conditional one, by enumerating all 2**n sign patterns of those ranks
      (Hollander, Wolfe & Chicken 2014, sec. 3.1, comment on ties; scipy's
      ``PermutationMethod`` with every pattern). Without ties that equals
      ``method="exact"``, which is used. Past ``MAX_ENUMERATED`` tied pairs
      scipy's ``method="exact"`` is used as it is: the no-ties distribution
      with the statistic rounded toward the null (conservative; scipy gh-19872).
      With n <= 5 non-zero pairs no two-sided p-value falls below 0.0625.
    - Cohen's d_z = mean(diff) / sd(diff, ddof=1) (= t / sqrt(n)), without the
      small-sample correction: Hedges' factor 1 - 3 / (4 (n - 1) - 1) would
      shrink it by 43% at n = 3 and 9% at n = 10, so read d_z from few pairs
      as an upper-leaning estimate.

    Degenerate cases return NaN without warnings: fewer than two pairs (all
    three); all differences equal (sd 0: t and d_z undefined; the Wilcoxon p is
    still defined unless the differences are all zero).
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired_comparison needs two 1-D arrays of equal length, got {a.shape} and {b.shape}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    diff = a - b
    n = len(diff)
    nan = math.nan
    if n < 2:
        mean = float(diff.mean()) if n else nan
        return PairedResult(n, mean, nan, nan, nan, nan, int(np.count_nonzero(diff)), nan, nan)
    mean, sd = float(diff.mean()), float(diff.std(ddof=1))
    t_stat = t_p = d_z = nan
    if sd > 0:
        test = stats.ttest_rel(a, b)
        t_stat, t_p, d_z = float(test.statistic), float(test.pvalue), mean / sd
    w_n, w_stat, w_p = _wilcoxon(diff)
    return PairedResult(n, mean, sd, d_z, t_stat, t_p, w_n, w_stat, w_p)


def _wilcoxon(diff: np.ndarray) -> tuple[int, float, float]:
    """(non-zero n, R+, exact two-sided p) of the signed-rank test; NaNs when nothing is left to rank."""
    nonzero = diff[diff != 0]
    n = len(nonzero)
    if n == 0:
        return 0, math.nan, math.nan
    magnitudes = np.abs(nonzero)
    ties = len(np.unique(magnitudes)) < n
    method = stats.PermutationMethod(n_resamples=np.inf) if ties and n <= MAX_ENUMERATED else "exact"
    r_plus = float(stats.rankdata(magnitudes)[nonzero > 0].sum())
    p = float(stats.wilcoxon(nonzero, zero_method="wilcox", method=method).pvalue)
    return n, r_plus, min(p, 1.0)


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
