"""The report statistics (branchbench.reports.stats) against scipy, hand examples and simulation."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from branchbench.reports import stats


# -------------------------------------------------------------- bootstrap
def two_level(rng: np.random.Generator, data_seeds: int, train_seeds: int, sd_data: float, sd_train: float):
    """Runs of a true mean 0: a shift per data seed plus training-seed noise."""
    data = np.repeat(np.arange(data_seeds), train_seeds)
    values = rng.normal(0, sd_data, data_seeds)[data] + rng.normal(0, sd_train, data.size)
    return pd.DataFrame({"data_seed": data, "seed": np.tile(np.arange(train_seeds), data_seeds), "v": values})


def coverage(data_seeds: int, train_seeds: int, sd_data: float, sd_train: float, reps: int = 200,
             naive: bool = True):
    """(coverage, mean width) of the two-stage interval and of a pooled bootstrap that ignores data seeds."""
    rng = np.random.default_rng(1)
    hits, naive_hits, widths, naive_widths = 0, 0, [], []
    for rep in range(reps):
        runs = two_level(rng, data_seeds, train_seeds, sd_data, sd_train)
        low, high = stats.hierarchical_bootstrap_ci(runs, "v", n_resamples=999, seed=rep)
        n_low, n_high = math.nan, math.nan
        if naive:
            pooled = sps.bootstrap((runs["v"].to_numpy(),), np.mean, n_resamples=999, method="percentile", rng=rep)
            n_low, n_high = pooled.confidence_interval
        hits += low <= 0 <= high
        naive_hits += n_low <= 0 <= n_high
        widths.append(high - low)
        naive_widths.append(n_high - n_low)
    return hits / reps, float(np.mean(widths)), naive_hits / reps, float(np.mean(naive_widths))


def test_two_stage_interval_covers_the_mean_at_about_the_nominal_rate_where_pooling_does_not():
    # data-seed variance dominates: 16 data seeds x 3 training seeds
    cover, width, naive_cover, naive_width = coverage(16, 3, sd_data=1.0, sd_train=0.5)
    assert abs(cover - 0.95) <= 0.05, cover
    assert naive_cover < 0.85, naive_cover  # runs of one data draw taken as independent
    assert width > 1.3 * naive_width


@pytest.mark.parametrize(("data_seeds", "train_seeds", "sd_data", "quoted"), [
    (1, 3, 0.0, 0.75), (1, 5, 0.0, 0.85), (1, 10, 0.0, 0.90),  # one data seed: training-seed noise only
    (2, 3, 1.0, 0.65), (3, 3, 1.0, 0.80), (4, 3, 1.0, 0.83), (5, 3, 1.0, 0.86), (8, 3, 1.0, 0.90),
])
def test_interval_undercovers_with_few_data_seeds_as_the_report_says(data_seeds, train_seeds, sd_data, quoted):
    """The figures quoted by tables._interval_note (data-seed sd twice the training-seed sd where there
    are several data seeds). 3 values give [min, max], which covers with probability 1 - 2/8 = 0.75.
    The quoted figures come from 2000 repetitions; 200 here (standard error about 0.03)."""
    cover = coverage(data_seeds, train_seeds, sd_data=sd_data, sd_train=1.0 if sd_data == 0 else 0.5, naive=False)[0]
    assert abs(cover - quoted) <= 0.08, cover  # 2.4 standard errors


def test_interval_is_conservative_when_data_seeds_do_not_matter():
    """Resampling within drawn data seeds inflates training-seed noise by (a-1)/a + (b-1)/b, about 1.6 here."""
    cover, *_ = coverage(10, 3, sd_data=0.0, sd_train=1.0, naive=False)
    assert cover >= 0.95, cover


@pytest.mark.parametrize("layout", ["one data seed", "one training seed per data seed"])
def test_one_level_is_the_ordinary_percentile_bootstrap(layout):
    values = np.random.default_rng(3).normal(size=12)
    ids = np.arange(12)
    runs = pd.DataFrame({"data_seed": 0 if layout == "one data seed" else ids,
                         "seed": ids if layout == "one data seed" else 0, "v": values})
    low, high = stats.hierarchical_bootstrap_ci(runs, "v", n_resamples=40000)
    ref = sps.bootstrap((values,), np.mean, n_resamples=40000, method="percentile", rng=0).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.02)
    assert high == pytest.approx(ref.high, abs=0.02)


def test_two_stage_replicates_match_the_exact_bootstrap_distribution_of_unbalanced_data():
    """Every (data seed draw, training seed draw) enumerated: pooled means weighted by the drawn sizes."""
    clusters = [np.array([0.0]), np.array([1.0, 5.0])]
    outcomes, weights = [], []
    for picked in itertools.product(range(2), repeat=2):  # stage 1: each pair of data seeds, 1/4
        members = [list(itertools.product(clusters[c], repeat=len(clusters[c]))) for c in picked]
        draws = list(itertools.product(*members))  # stage 2: equally likely within that pick
        outcomes += [np.mean(np.concatenate(draw)) for draw in draws]
        weights += [1 / 4 / len(draws)] * len(draws)
    mean = np.average(outcomes, weights=weights)
    sd = math.sqrt(np.average((np.array(outcomes) - mean) ** 2, weights=weights))
    replicates = stats._two_stage_means(clusters, 200_000, np.random.default_rng(0))
    assert replicates.mean() == pytest.approx(mean, rel=0.01)
    assert replicates.std() == pytest.approx(sd, rel=0.01)


def test_two_stage_variance_is_davison_hinkley_strategy_1():
    """Balanced a x b data: the replicates' variance is (1/a) [mean_i (ybar_i - ybar)^2 + mean_i s_i^2 / b],
    s_i^2 the within-data-seed variance with divisor b (D&H 1997, sec. 3.8, strategy 1)."""
    values = np.random.default_rng(5).normal(size=(4, 3)) + np.arange(4)[:, None]
    a, b = values.shape
    between = ((values.mean(axis=1) - values.mean()) ** 2).mean()
    within = values.var(axis=1, ddof=0).mean() / b
    replicates = stats._two_stage_means(list(values), 200_000, np.random.default_rng(1))
    assert replicates.var() == pytest.approx((between + within) / a, rel=0.02)


def test_expected_two_stage_variance_inflates_within_and_shrinks_between_as_documented():
    """Averaged over data drawn with between / within variances s_b^2, s_w^2, the strategy-1 variance above
    is (a-1)/a s_b^2/a + [(a-1)/a + (b-1)/b] s_w^2/(ab): the figures of the bootstrap's docstring."""
    a, b, s_b, s_w = 4, 3, 1.5, 0.7
    rng = np.random.default_rng(2)
    values = rng.normal(0, s_b, (200_000, a, 1)) + rng.normal(0, s_w, (200_000, a, b))
    means = values.mean(axis=2)
    between = ((means - means.mean(axis=1, keepdims=True)) ** 2).mean(axis=1)
    within = values.var(axis=2, ddof=0).mean(axis=1) / b
    expected = (a - 1) / a * s_b**2 / a + ((a - 1) / a + (b - 1) / b) * s_w**2 / (a * b)
    assert ((between + within) / a).mean() == pytest.approx(expected, rel=0.01)


def test_interval_is_the_davison_hinkley_order_statistic_of_sorted_rows():
    """The 250th and 9750th of 9999 sorted replicates, whatever the row order of the input."""
    runs = two_level(np.random.default_rng(4), 3, 4, 1.0, 0.5)
    clusters = [runs.loc[runs["data_seed"] == d, "v"].to_numpy() for d in range(3)]
    replicates = np.sort(stats._two_stage_means(clusters, 9999, np.random.default_rng(0)))
    assert stats.hierarchical_bootstrap_ci(runs, "v") == (replicates[249], replicates[9749])
    shuffled = runs.sample(frac=1.0, random_state=1)
    assert stats.hierarchical_bootstrap_ci(shuffled, "v") == (replicates[249], replicates[9749])


def test_interval_degenerate_inputs_deterministic_and_checked():
    one = pd.DataFrame({"data_seed": [0], "seed": [0], "v": [1.0]})
    assert all(math.isnan(x) for x in stats.hierarchical_bootstrap_ci(one, "v"))
    with_nan = pd.DataFrame({"data_seed": [0, 0, 1], "seed": [0, 1, 0], "v": [1.0, np.nan, np.nan]})
    assert all(math.isnan(x) for x in stats.hierarchical_bootstrap_ci(with_nan, "v"))
    same = pd.DataFrame({"data_seed": [0, 0, 1], "seed": [0, 1, 0], "v": [0.1, 0.1, 0.1]})
    assert stats.hierarchical_bootstrap_ci(same, "v") == (0.1, 0.1)  # the mean of three 0.1 is not 0.1
    runs = two_level(np.random.default_rng(0), 4, 3, 1.0, 0.5)
    assert stats.hierarchical_bootstrap_ci(runs, "v", seed=7) == stats.hierarchical_bootstrap_ci(runs, "v", seed=7)
    low, high = stats.hierarchical_bootstrap_ci(runs, "v")
    assert low < runs["v"].mean() < high
    no_data_seed = pd.concat([runs, pd.DataFrame({"data_seed": [np.nan], "seed": [0], "v": [50.0]})])
    assert stats.hierarchical_bootstrap_ci(no_data_seed, "v") == (low, high)  # the row is dropped, not pooled
    with pytest.raises(ValueError, match="several rows per"):
        stats.hierarchical_bootstrap_ci(pd.concat([runs, runs]), "v")


# ----------------------------------------------------------------- paired
def test_paired_comparison_equals_scipy_and_the_hand_values():
    a = np.array([3.0, 5.0, 7.0, 9.0])
    b = np.array([4.0, 3.0, 4.0, 3.0])  # differences (-1, 2, 3, 6)
    result = stats.paired_comparison(a, b)
    assert result.n == 4 and result.mean_diff == 2.5
    assert result.t_p == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-12)
    assert result.wilcoxon_p == pytest.approx(sps.wilcoxon(a, b, method="exact").pvalue, rel=1e-12)
    # by hand: R+ = 2 + 3 + 4 = 9; of the 16 sign patterns, R+ >= 9 in two ({2,3,4} and all): p = 2 * 2/16
    assert result.wilcoxon_statistic == 9 and result.wilcoxon_p == pytest.approx(0.25)
    # d_z by hand: deviations (-3.5, -0.5, 0.5, 3.5), sd = sqrt(25 / 3)
    assert result.d_z == pytest.approx(2.5 / math.sqrt(25 / 3))


def brute_force_p(diff: np.ndarray) -> float:
    """Two-sided p of R+ over all 2**n signs of the midranks of the non-zero |diff|, enumerated."""
    nonzero = diff[diff != 0]
    ranks = sps.rankdata(np.abs(nonzero))
    patterns = (np.arange(2 ** len(ranks))[:, None] >> np.arange(len(ranks))) & 1  # every sign pattern
    sums = patterns @ ranks
    observed = ranks[nonzero > 0].sum()
    return min(1.0, 2 * min(np.mean(sums <= observed), np.mean(sums >= observed)))


def test_wilcoxon_drops_zero_differences_and_handles_ties_exactly():
    zeros = stats.paired_comparison([0.0, 1.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0])
    assert zeros.wilcoxon_n == 3 and zeros.wilcoxon_p == pytest.approx(2 / 8)  # all positive among 3
    assert (zeros.wins, zeros.ties, zeros.losses) == (3, 1, 0)
    # scipy's method="exact" gives 0.046875 here (the no-ties distribution); the conditional one is 0.0625
    review = np.array([-1.0, 5.0, 2.0, 5.0, 1.0, 1.0, 3.0])
    assert stats.paired_comparison(review, np.zeros(7)).wilcoxon_p == pytest.approx(0.0625)
    rng = np.random.default_rng(0)
    for n in (3, 6, 9, 12):
        diff = rng.integers(-3, 5, size=n).astype(float)  # many ties and some zeros
        assert np.count_nonzero(diff) >= 2
        assert stats.paired_comparison(diff, np.zeros(n)).wilcoxon_p == pytest.approx(brute_force_p(diff), rel=1e-12)
    many = np.array([1.0, 1.0, -2.0, -2.0, 2.0] + list(np.arange(3.0, 16.0)))  # 18 pairs with ties
    assert stats.paired_comparison(many, np.zeros_like(many)).wilcoxon_p == pytest.approx(
        brute_force_p(many), rel=1e-12)


def test_wilcoxon_without_ties_is_scipys_exact_test_and_large_n_its_normal_approximation():
    rng = np.random.default_rng(1)
    for n in (4, 15, 40):
        diff = rng.normal(0.4, 1.0, size=n)
        assert stats.paired_comparison(diff, np.zeros(n)).wilcoxon_p == pytest.approx(
            sps.wilcoxon(diff, method="exact").pvalue, rel=1e-10)
    large = rng.integers(1, 9, size=stats.MAX_EXACT + 20) * rng.choice([-1.0, 1.0], size=stats.MAX_EXACT + 20)
    result = stats.paired_comparison(large, np.zeros_like(large))
    assert result.wilcoxon_n > stats.MAX_EXACT
    assert result.wilcoxon_p == pytest.approx(sps.wilcoxon(large, method="approx").pvalue, rel=1e-12)


def test_differences_equal_but_for_rounding_count_as_equal():
    a, b = np.array([1.1, 2.2, 3.3]), np.array([0.1, 1.2, 2.3])  # differences 1 +- 1e-16
    assert np.ptp(a - b) > 0
    result = stats.paired_comparison(a, b)
    assert math.isnan(result.t_p) and math.isnan(result.d_z)  # not t = 1e15, p = 1e-30
    assert result.wilcoxon_p == pytest.approx(0.25)
    tie = stats.paired_comparison([0.1 + 0.2, 1.0, 2.0], [0.3, 0.0, 0.0])  # 5.6e-17 is a tie
    assert (tie.wins, tie.ties, tie.losses) == (2, 1, 0) and tie.wilcoxon_n == 2
    real = stats.paired_comparison([1e6 + 0.1, 2e6 + 0.2, 3e6 + 0.3], [1e6, 2e6, 3e6])  # 1e-7 relative: real
    assert real.t_p == pytest.approx(sps.ttest_rel([0.1, 0.2, 0.3], [0, 0, 0]).pvalue, rel=1e-6)


def test_degenerate_pairs_give_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        single = stats.paired_comparison([1.0], [0.0])
        assert single.n == 1 and math.isnan(single.t_p) and math.isnan(single.wilcoxon_p) and math.isnan(single.d_z)
        equal = stats.paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
        assert math.isnan(equal.t_p) and math.isnan(equal.wilcoxon_p) and math.isnan(equal.d_z)
        one_sign = stats.paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 0.0])  # one non-zero difference
        assert one_sign.wilcoxon_n == 1 and math.isnan(one_sign.wilcoxon_p) and not math.isnan(one_sign.t_p)
        constant = stats.paired_comparison([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])  # sd 0: t undefined
        assert math.isnan(constant.t_p) and math.isnan(constant.d_z) and constant.wilcoxon_p == pytest.approx(0.25)
        empty = stats.paired_comparison([], [])
        assert empty.n == 0 and math.isnan(empty.mean_diff)
        with_nan = stats.paired_comparison([1.0, np.nan, 3.0, 6.0], [0.0, 0.0, np.nan, 1.0])
        assert with_nan.n == 2 and with_nan.mean_diff == 3.0
    with pytest.raises(ValueError, match="equal length"):
        stats.paired_comparison([1.0, 2.0], [1.0])


# ------------------------------------------------------------------- Holm
def test_holm_on_the_textbook_example():
    """Wikipedia, "Holm–Bonferroni method", Example: p = (0.01, 0.03, 0.04, 0.005) at alpha = 0.05
    rejects hypotheses one and four only (0.005 < 0.05/4, 0.01 < 0.05/3, 0.03 > 0.05/2)."""
    adjusted = stats.holm([0.01, 0.03, 0.04, 0.005])
    assert list(adjusted <= 0.05) == [True, False, False, True]
    # adjusted values: 4 * 0.005, 3 * 0.01, 2 * 0.03, then the running maximum 0.06
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])


def holm_by_rejection(p: np.ndarray) -> np.ndarray:
    """The definition: the smallest level alpha at which Holm's sequential procedure rejects H_i."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    candidates = sorted({min(1.0, (m - j) * p[i]) for j, i in enumerate(order)} | {1.0})
    out = np.ones(m)
    for alpha in reversed(candidates):  # largest first, so the smallest rejecting alpha is kept
        for j, i in enumerate(order):
            if (m - j) * p[i] > alpha:  # p_(j) > alpha / (m - j + 1), without rounding
                break
            out[i] = alpha
    return out


def test_holm_equals_the_rejection_procedure_and_keeps_nan():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.choice([rng.uniform(0, 0.2), 0.01, 0.5], size=rng.integers(1, 8)) * rng.uniform(0.5, 1)
        p = np.where(rng.random(len(p)) < 0.3, rng.uniform(0, 0.1, len(p)), p)
        adjusted = stats.holm(p)
        np.testing.assert_allclose(adjusted, holm_by_rejection(p), rtol=1e-12)
        order = np.argsort(p, kind="stable")
        assert (np.diff(adjusted[order]) >= 0).all() and (adjusted >= p).all() and (adjusted <= 1).all()
    with_nan = stats.holm([0.01, np.nan, 0.04])
    assert math.isnan(with_nan[1]) and list(with_nan[[0, 2]]) == pytest.approx([0.02, 0.04])  # m = 2
    assert stats.holm([]).size == 0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm([0.5, 1.5])
