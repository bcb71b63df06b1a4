"""Comparison tables: pure functions from ``mlflow.search_runs`` frames to pandas tables.

The input is the frame MLflow returns (columns ``run_id``, ``status``,
``tags.bb.*``, ``metrics.*``, ``params.*``); nothing here talks to MLflow, so
the tables are tested against a committed golden fixture of runs.

A run is one (data seed, training seed) pair of a cell. Every quantity is the
mean ± sample standard deviation (ddof=1) over runs, with their number ``n``
and the number of data seeds shown (a quantity missing in some runs shows its
own n); with one run only the mean is printed. The
summary adds 95% two-stage bootstrap intervals, the paired table tests and
effect sizes (the procedures are in :mod:`branchbench.reports.stats`, named in
:func:`summary_header` / :func:`paired_header`, the lines a report prints above
each table). Each function returns numbers (for CSV) and :func:`format_summary`
/ :func:`format_paired` / :func:`format_grouping` turn them into the strings of
the Markdown and LaTeX tables.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from branchbench.core.tasks import DEFAULT_METRICS
from branchbench.reports import stats

# A task's main metric is the first metric of its kind (core.tasks); its direction signs gains.
MAIN_METRICS: dict[str, bool] = {specs[0].name: specs[0].higher_is_better for specs in DEFAULT_METRICS.values()}
BASELINES = ("shared_bottom", "independent", "oracle_tree", "random_tree")
CONTROL_KINDS = ("permuted_tree", "random_policy")  # made from a learned method's own plans (bb.control_of)
NOT_LEARNED = (*BASELINES, *CONTROL_KINDS, "fixed_plan")  # every other kind is a learned method, tested against controls
METHOD_ORDER = (*NOT_LEARNED, "learn_to_branch", "branched_affinity", "dmtg", "adashare")
DATA_SEED_TAG = "tags.bb.data_seed"  # missing (older runs): data seed 0
CONTROL_OF_TAG = "tags.bb.control_of"  # on permuted_tree runs: the learned method whose plans it permutes
KIND_TAG = "tags.bb.method_kind"  # a method's registered kind (a labelled variant's name differs from it)
AT_CAP_TAG = "tags.bb.hit_epoch_cap"  # "true" when the retrain's best validation epoch was its last
DELTA_M = "Δm (%)"

# quantity label -> (metrics column, value format)
COSTS: dict[str, tuple[str, str]] = {
    "Δm (%)": ("metrics.delta_m", "signed"),
    "params": ("metrics.params", "si"),
    "FLOPs": ("metrics.flops", "si"),
    "latency (ms)": ("metrics.latency_ms.b1", "3f"),
    "search (s)": ("metrics.search_seconds", "2f"),
    "retrain (s)": ("metrics.train_seconds", "2f"),
}


# ------------------------------------------------------------------- runs
def cell_runs(frame: pd.DataFrame, hashes: Iterable[str] | None = None) -> pd.DataFrame:
    """FINISHED cell runs, the newest per config hash, optionally only the given cells.

    Adds plain columns ``dataset, method, budget, seed`` (budget a label:
    ``"none"`` or ``"1.5"``).
    """
    if frame.empty or "tags.bb.kind" not in frame:
        return pd.DataFrame(columns=["run_id", "dataset", "method", "budget", "seed"])
    runs = frame[(frame["tags.bb.kind"] == "cell") & (frame["status"] == "FINISHED")]
    if hashes is not None:
        runs = runs[runs["tags.bb.config_hash"].isin(set(hashes))]
    if "start_time" in runs:
        runs = runs.sort_values("start_time", ascending=False)
    runs = runs.drop_duplicates("tags.bb.config_hash").copy()
    runs["dataset"] = runs["tags.bb.dataset"]
    runs["method"] = runs["tags.bb.method"]
    runs["budget"] = runs["tags.bb.budget"].astype(str)
    runs["seed"] = runs["tags.bb.seed"].astype(int)
    return _ordered(runs).reset_index(drop=True)


def _ordered(frame: pd.DataFrame) -> pd.DataFrame:
    method_rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    key = frame.assign(
        _m=frame["method"].map(lambda m: (method_rank.get(m, len(METHOD_ORDER)), m)),
        _b=frame["budget"].map(_budget_key),
    )
    sort = ["_m", "_b"] + (["seed"] if "seed" in frame else [])
    return key.sort_values(sort, kind="stable").drop(columns=["_m", "_b"])


def _budget_key(label: str) -> float:
    return -1.0 if label == "none" else float(label)


def main_metrics(runs: pd.DataFrame) -> dict[str, tuple[str, bool]]:
    """task -> (metrics column of its main test metric, higher is better), in task order.

    A task's main metric is the one its TaskSpec declares first, the one Δm is
    computed on: read from the runs' ``bb.main_metrics`` tag
    (:meth:`~branchbench.core.benchmark.Benchmark.main_metrics_tag`) where they
    carry it, else inferred from the metric names (:func:`_named_main_metrics`).
    """
    declared = declared_main_metrics(runs)
    found: dict[str, tuple[str, bool]] = {}
    for task, (metric, higher) in declared.items():
        column = f"metrics.test.{task}.{metric}"
        if column in runs and runs[column].notna().any():
            found[task] = (column, higher)
    for task, spec in _named_main_metrics(runs).items():
        if task not in declared:
            found[task] = spec
    return dict(sorted(found.items(), key=lambda kv: _natural(kv[0])))


MAIN_METRICS_TAG = "tags.bb.main_metrics"


def declared_main_metrics(runs: pd.DataFrame) -> dict[str, tuple[str, bool]]:
    """task -> (main metric, higher is better) from the runs' ``bb.main_metrics`` tags (JSON)."""
    out: dict[str, tuple[str, bool]] = {}
    if MAIN_METRICS_TAG not in runs:
        return out
    for text in runs[MAIN_METRICS_TAG].dropna().unique():
        for task, (metric, higher) in json.loads(text).items():
            out.setdefault(task, (str(metric), bool(higher)))
    return out


def _named_main_metrics(runs: pd.DataFrame) -> dict[str, tuple[str, bool]]:
    """Main metrics inferred from names, for runs without the tag: the first metric of each kind
    (core.tasks), except that a logged ``error`` wins over ``accuracy``: ``error`` is never a default
    metric, so a task logs it only where its dataset declares it, first (CelebA), for papers that
    report errors."""
    named = {**MAIN_METRICS, "error": False}
    found: dict[str, tuple[str, bool]] = {}
    for column in runs.columns:
        match = re.fullmatch(r"metrics\.test\.(.+)\.([^.]+)", column)
        if match and match.group(2) in named and runs[column].notna().any():
            task, metric = match.groups()
            if metric == "error" or not found.get(task, ("", True))[0].endswith(".error"):
                found[task] = (column, named[metric])
    return found


def summary_metrics(runs: pd.DataFrame) -> dict[str, str]:
    """label -> column of each benchmark-level test metric (``test.<name>`` without a task, e.g.
    CelebA's ``total_error``; :attr:`~branchbench.core.benchmark.Benchmark.summary_metrics`)."""
    out: dict[str, str] = {}
    for column in runs.columns:
        match = re.fullmatch(r"metrics\.test\.([^.]+)", column)
        if match and runs[column].notna().any():
            out[match.group(1).replace("_", " ")] = column
    return dict(sorted(out.items()))


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _metric_name(column: str) -> str:
    return column.rsplit(".", 1)[-1]


# ---------------------------------------------------------------- summary
def _keyed(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with ``data_seed`` (tag ``bb.data_seed``, 0 where missing) and ``control_of`` (tag
    ``bb.control_of``, "" where missing) columns, and ``label``: the method, or for a control made
    from a learned method's plan ``permuted_tree (learn_to_branch)``, so each gets its own row."""
    out = runs.copy()
    if "data_seed" not in out:
        tag = out[DATA_SEED_TAG] if DATA_SEED_TAG in out else pd.Series(0, index=out.index)
        out["data_seed"] = pd.to_numeric(tag, errors="coerce").fillna(0).astype(int)
    if "control_of" not in out:
        tag = out[CONTROL_OF_TAG] if CONTROL_OF_TAG in out else pd.Series("", index=out.index)
        out["control_of"] = tag.fillna("").astype(str)
    if "kind" not in out:
        kind = out[KIND_TAG] if KIND_TAG in out else pd.Series(np.nan, index=out.index)
        out["kind"] = kind.where(kind.notna() & (kind.astype(str) != ""), out["method"]).astype(str)
    if "at_cap" not in out:
        tag = out[AT_CAP_TAG] if AT_CAP_TAG in out else pd.Series("false", index=out.index)
        out["at_cap"] = tag.fillna("false").astype(str) == "true"
    out["label"] = [f"{k} ({of})" if of else m
                    for m, k, of in zip(out["method"], out["kind"], out["control_of"], strict=True)]
    return out


def summary(runs: pd.DataFrame, n_resamples: int = stats.N_RESAMPLES) -> pd.DataFrame:
    """Per (method, budget): the quality and cost of its runs, with intervals for the quality.

    Quality: Δm, the mean of each metric kind's main metric over its tasks (when
    a kind has two or more tasks; kinds are never averaged together) and each
    task's main test metric. Each gets mean, std (ddof=1) and the 95% two-stage
    bootstrap interval of the mean (:func:`stats.hierarchical_bootstrap_ci`:
    data seeds, then training seeds within them), ``ci_low`` / ``ci_high``.
    Costs get mean and std. Every quantity also gets ``n``, the runs it has a
    value in. Columns are a MultiIndex (quantity, statistic), plus
    ``("n", "")`` (runs of the row, i.e. (data seed, training seed) pairs) and
    ``("data seeds", "")``. ``attrs["n_resamples"]`` records the bootstrap's
    resample count for :func:`summary_header`.
    """
    runs = _keyed(runs)
    tasks = main_metrics(runs)
    values = pd.DataFrame({"method": runs["label"], "budget": runs["budget"],
                           "data_seed": runs["data_seed"], "seed": runs["seed"]})
    quality = [DELTA_M]
    values[DELTA_M] = runs[COSTS[DELTA_M][0]] if COSTS[DELTA_M][0] in runs else np.nan
    for label, column in summary_metrics(runs).items():
        values[label] = runs[column]
        quality.append(label)
    kinds: dict[str, list[str]] = {}
    for column, _ in tasks.values():
        kinds.setdefault(_metric_name(column), []).append(column)
    for kind, columns in kinds.items():
        if len(columns) >= 2:
            values[f"mean {kind}"] = runs[columns].mean(axis=1)
            quality.append(f"mean {kind}")
    for task, (column, _) in tasks.items():
        values[f"{task} {_metric_name(column)}"] = runs[column]
        quality.append(f"{task} {_metric_name(column)}")
    for label, (column, _) in COSTS.items():
        if label != DELTA_M:
            values[label] = runs[column] if column in runs else np.nan
    table = _aggregate(values, ["method", "budget"], quality, n_resamples)
    table[("at epoch cap", "")] = runs.assign(method=runs["label"]).groupby(["method", "budget"], sort=False)[
        "at_cap"].sum().reindex(table.index).fillna(0).astype(int)
    table.attrs["n_resamples"] = n_resamples
    return table


def _aggregate(values: pd.DataFrame, keys: list[str], with_ci: list[str] | None = None,
               n_resamples: int = stats.N_RESAMPLES) -> pd.DataFrame:
    """mean/std/n (and for ``with_ci`` the bootstrap interval) of every value column per ``keys``."""
    with_ci = with_ci or []
    grouped = values.groupby(keys, sort=False)
    quantities = [c for c in values.columns if c not in [*keys, "data_seed", "seed"]]
    parts = {}
    for q in quantities:
        part = grouped[q].agg(["mean", "std"])
        part["n"] = grouped[q].count()
        if q in with_ci:
            cis = [stats.hierarchical_bootstrap_ci(group, q, n_resamples=n_resamples) for _, group in grouped]
            part["ci_low"], part["ci_high"] = [c[0] for c in cis], [c[1] for c in cis]
        parts[q] = part
    table = pd.concat(parts, axis=1)
    table[("n", "")] = grouped.size()
    if "data_seed" in values:
        table[("data seeds", "")] = grouped["data_seed"].nunique()
    return table


def summary_header(table: pd.DataFrame) -> str:
    """The sentence above the summary table: what each cell holds, the procedures and n."""
    n, data = _span(table[("n", "")]), _span(table[("data seeds", "")])
    resamples = table.attrs.get("n_resamples", stats.N_RESAMPLES)
    return (
        f"Each row: n = {n} runs, one per (data seed, training seed) pair, over {data} data seed(s); "
        "a cell computed from fewer runs (a value missing in some) shows its own n. "
        "Quality cells: mean ± sample std (ddof=1) [95% interval of the mean: percentile two-stage "
        f"bootstrap, data seeds then training seeds within them resampled with replacement, "
        f"{resamples} resamples; Davison & Hinkley 1997, sec. 3.8]; costs: mean ± std. "
        "Δm: mean signed relative gain (%) of each task's main test metric over the independent networks of the same seeds; "
        "beside it the absolute main test metrics (per task, and their mean per metric kind where a kind has several tasks). "
        "At epoch cap: runs whose retrain's best validation epoch was its last (still improving when the protocol's "
        "epochs ran out; their scores may understate the plan). "
        + _interval_note(table[("data seeds", "")], [f"{m} @ {b}" for m, b in table.index])
    )


def _span(counts: pd.Series) -> str:
    counts = counts.dropna().astype(int)
    if counts.empty:
        return "0"
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}–{high}"


FEW_DATA_SEEDS = 10  # rows with fewer data seeds get a coverage note (simulated coverage >= 92% from 10 on)


def _interval_note(data_seeds: pd.Series, rows: list[str]) -> str:
    """What the intervals of the rows with few data seeds can claim (figures: tests/test_stats.py).

    Simulated coverage of a nominal 95% interval of a mean 0: with one data seed,
    normal training-seed noise (3 values: [min, max], which covers with
    probability 1 - 2 / 2**3 = 75%); with several, 3 training seeds each and a
    data-seed sd twice the training-seed sd. With comparable spreads coverage is
    higher (the within-seed variance is inflated, see the bootstrap's docstring).
    """
    counts = [int(c) for c in data_seeds]
    one = [r for r, c in zip(rows, counts, strict=True) if c <= 1]
    few = [r for r, c in zip(rows, counts, strict=True) if 1 < c < FEW_DATA_SEEDS]
    notes = []
    if one:
        notes.append(f"{_which(one, len(rows))} one data seed: the interval reflects training seeds only and "
                     "speaks for this data draw, not for the data distribution; from few runs it also undercovers "
                     "(in simulation a nominal 95% interval covered the mean about 75% of the time with 3 "
                     "training seeds, 85% with 5, 90% with 10).")
    if few:
        notes.append(f"{_which(few, len(rows))} 2–{FEW_DATA_SEEDS - 1} data seeds: percentile intervals over "
                     "few data seeds undercover when data-seed variation dominates: in simulation (3 training "
                     "seeds each, data-seed sd twice the training-seed sd) a nominal 95% interval covered the "
                     "mean about 65% of the time with 2 data seeds, 80% with 3, 83% with 4, 86% with 5 and 90% "
                     "with 8.")
    return " ".join(notes)


def _which(rows: list[str], total: int) -> str:
    """'Every row has' / 'Rows a, b have' / 'k of m rows have': who a note is about."""
    if len(rows) == total:
        return "Every row has" if total > 1 else "The row has"
    if len(rows) <= 4:
        return ("Row " if len(rows) == 1 else "Rows ") + ", ".join(rows) + (" has" if len(rows) == 1 else " have")
    return f"{len(rows)} of {total} rows have"


def format_summary(table: pd.DataFrame) -> pd.DataFrame:
    """The summary as strings ``mean ± std [low, high]`` (the Markdown / LaTeX table); a cell from
    fewer runs than its row's n ends in ``(n = k)``."""
    out = pd.DataFrame(index=table.index)
    out["n"] = table[("n", "")].astype(int)
    out["data seeds"] = table[("data seeds", "")].astype(int)
    if ("at epoch cap", "") in table:  # runs whose best validation epoch was the last: still improving
        out["at epoch cap"] = [f"{k}/{n}" if k else "–" for k, n in zip(table[("at epoch cap", "")], out["n"],
                                                                        strict=True)]
    for quantity in dict.fromkeys(q for q, _ in table.columns if q not in ("n", "data seeds", "at epoch cap")):
        style = COSTS[quantity][1] if quantity in COSTS else "3f"
        cells = [_pm(m, s, style) for m, s in zip(table[(quantity, "mean")], table[(quantity, "std")], strict=True)]
        if (quantity, "ci_low") in table:
            cells = [_with_ci(c, lo, hi, style)
                     for c, lo, hi in zip(cells, table[(quantity, "ci_low")], table[(quantity, "ci_high")], strict=True)]
        if (quantity, "n") in table:
            cells = [f"{c} (n = {k})" if 0 < k < n else c
                     for c, k, n in zip(cells, table[(quantity, "n")], out["n"], strict=True)]
        out[quantity] = cells
    return out


def _with_ci(text: str, low: float, high: float, style: str) -> str:
    if math.isnan(low) or math.isnan(high):
        return text
    return f"{text} [{_fmt(low, style)}, {_fmt(high, style)}]"


def _pm(mean: float, std: float, style: str) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or math.isnan(std):
        return _fmt(mean, style)
    return f"{_fmt(mean, style)} ± {_fmt(std, 'si' if style == 'si' else style.replace('signed', '2f'))}"


def _fmt(value: float, style: str) -> str:
    if style == "signed":
        return f"{value:+.2f}"
    if style == "si":
        for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                return f"{value / scale:.2f}{suffix}"
        return f"{value:.0f}"
    return f"{value:.{style[0]}f}"


# ----------------------------------------------------------------- paired
def controls_of(method: str, budget: str) -> list[str]:
    """The controls a learned method at ``budget`` is compared with (and why).

    Budget-aware (a numeric budget): controls of the same capacity at that
    budget: ``random_tree`` (a random tree at the cap) and ``permuted_tree``
    (its own plans with task labels permuted; rows tagged ``bb.control_of`` =
    the method), so a difference is due to which tasks share, not how much.
    Not budget-aware (budget ``none``): no random tree matches its size, so its
    controls are the two fixed endpoints, ``shared_bottom`` and
    ``independent`` (against which Δm is measured at the same seeds, so that
    test is one of Δm against 0), and its own ``permuted_tree``.
    """
    if budget == "none":
        return ["shared_bottom", "independent", *CONTROL_KINDS]
    return ["random_tree", *CONTROL_KINDS]


def paired(runs: pd.DataFrame, value: str = "metrics.delta_m", n_resamples: int = stats.N_RESAMPLES) -> pd.DataFrame:
    """Each learned method against each of its controls present (:func:`controls_of`), on the same seeds.

    ``runs`` are one dataset's: its comparisons are one Holm family. Pairs
    are matched on (data seed, training seed); a run whose key is missing on
    the other side, or whose value or its partner's is missing, is left out and
    counted in ``unpaired_method`` / ``unpaired_control``. Columns: method,
    budget, control, n (pairs), data seeds, the unpaired counts, ``value`` mean
    of the method and of the control over the pairs only, the difference
    method - control (mean, std, 95% two-stage bootstrap interval of its mean),
    Cohen's d_z, wins / ties / losses (pairs where the method is higher / equal
    / lower, at :data:`stats.DIGITS` significant digits), the two-sided paired
    t-test p, its Holm-adjusted p over every row, and the exact Wilcoxon
    signed-rank p (zero differences dropped; ``wilcoxon_n`` pairs left) with
    its own Holm adjustment, a separate family (CSV only). The tests take the
    pairs as independent; the interval does not (see :func:`paired_header`).
    ``attrs`` record ``value`` and ``n_resamples`` for the header and format.
    """
    columns = ["method", "budget", "control", "n", "data_seeds", "unpaired_method", "unpaired_control", "value",
               "control_value", "diff_mean", "diff_std", "ci_low", "ci_high", "d_z", "wins", "ties", "losses",
               "t_p", "t_p_holm", "wilcoxon_n", "wilcoxon_p", "wilcoxon_p_holm"]
    attrs = {"value": value, "n_resamples": n_resamples}
    if value not in runs or runs.empty:
        table = pd.DataFrame(columns=columns)
        table.attrs.update(attrs)
        return table
    if "dataset" in runs and runs["dataset"].nunique() > 1:
        raise ValueError(f"paired: runs of one dataset form one Holm family; got {sorted(runs['dataset'].unique())}"
                         " (call it once per dataset)")
    runs = _keyed(runs)
    keys = ["data_seed", "seed"]
    rows = []
    learned = runs[~runs["kind"].isin(NOT_LEARNED) & (runs["control_of"] == "")]
    for (method, budget), group in learned.groupby(["method", "budget"], sort=False):
        for control in controls_of(method, budget):
            of = method if control in CONTROL_KINDS else ""
            other = runs[(runs["kind"] == control) & (runs["budget"] == budget) & (runs["control_of"] == of)]
            pairs = group[[*keys, value]].merge(other[[*keys, value]], on=keys, suffixes=("", "_c"))
            pairs = pairs.dropna(subset=[value, f"{value}_c"])
            if pairs.empty:
                continue
            pairs["diff"] = pairs[value] - pairs[f"{value}_c"]
            result = stats.paired_comparison(pairs[value], pairs[f"{value}_c"])
            low, high = stats.hierarchical_bootstrap_ci(pairs, "diff", n_resamples=n_resamples)
            rows.append([method, budget, control, result.n, pairs["data_seed"].nunique(), len(group) - len(pairs),
                         len(other) - len(pairs), pairs[value].mean(), pairs[f"{value}_c"].mean(), result.mean_diff,
                         result.sd_diff, low, high, result.d_z, result.wins, result.ties, result.losses, result.t_p,
                         math.nan, result.wilcoxon_n, result.wilcoxon_p, math.nan])
    table = pd.DataFrame(rows, columns=columns)
    if not table.empty:
        table["t_p_holm"] = stats.holm(table["t_p"].to_numpy(float))
        table["wilcoxon_p_holm"] = stats.holm(table["wilcoxon_p"].to_numpy(float))
    table.attrs.update(attrs)
    return table


def _value_label(value: str) -> tuple[str, str]:
    """(label, format style) of a paired ``value`` column: ``Δm (%)`` for metrics.delta_m."""
    for label, (column, style) in COSTS.items():
        if column == value:
            return label, style
    return value.removeprefix("metrics."), "3f"


def paired_header(table: pd.DataFrame) -> str:
    """The sentence above the paired table: the pairing, the procedures, m and n."""
    tested = int(table["t_p"].notna().sum()) if "t_p" in table else 0
    label = _value_label(table.attrs.get("value", "metrics.delta_m"))[0]
    resamples = table.attrs.get("n_resamples", stats.N_RESAMPLES)
    rows = [f"{m} vs {c} @ {b}" for m, c, b in zip(table["method"], table["control"], table["budget"], strict=True)]
    return (
        "Each learned method against its controls (random_tree and its own permuted_tree at its budget; "
        "shared_bottom, independent and its permuted_tree for a method without a budget), paired on "
        f"(data seed, training seed): n = {_span(table['n']) if len(table) else '0'} pairs over "
        f"{_span(table['data_seeds']) if len(table) else '0'} data seed(s) per row. "
        "unpaired: method / control runs without a partner (a key on one side only, or a missing value), "
        f"left out of every column. method {label} / control {label}: means over the paired runs only. "
        f"difference: method − control {label}, mean ± std [95% percentile two-stage bootstrap interval, "
        f"data seeds then training seeds, {resamples} resamples]; d_z: Cohen's d_z (mean / std of the "
        "differences); wins/ties/losses: pairs where the method is higher / equal / lower (at 12 significant "
        "digits); p (t): two-sided paired t-test (scipy.stats.ttest_rel); "
        f"p (t, Holm): Holm step-down over the m = {tested} t-tests of this dataset's paired table; "
        "n (W), p (Wilcoxon): non-zero differences and the exact two-sided signed-rank test, zero differences "
        "dropped, ties by the exact conditional distribution, not adjusted here (a robustness check; the CSV "
        "holds its Holm adjustment over this table's Wilcoxon tests, a separate family); it cannot fall below "
        "0.0625 with 5 or fewer non-zero differences and is not computed below 2. "
        "The interval accounts for shared data seeds but undercovers with few of them; the tests treat pairs "
        "as independent. Read a difference as supported only when both agree. "
        + _interval_note(table["data_seeds"], rows)
    ).strip()


def format_paired(table: pd.DataFrame) -> pd.DataFrame:
    label, style = _value_label(table.attrs.get("value", "metrics.delta_m"))
    out = pd.DataFrame({
        "method": table["method"],
        "budget": table["budget"],
        "control": table["control"],
        "n": table["n"].astype(int),
        "data seeds": table["data_seeds"].astype(int),
        "unpaired": [f"{u}/{v}" for u, v in zip(table["unpaired_method"], table["unpaired_control"], strict=True)],
        f"method {label}": [_fmt(v, style) for v in table["value"]],
        f"control {label}": [_fmt(v, style) for v in table["control_value"]],
        "difference": [_with_ci(_pm(m, s, style), lo, hi, style) for m, s, lo, hi in
                       zip(table["diff_mean"], table["diff_std"], table["ci_low"], table["ci_high"], strict=True)],
        "d_z": [_number(v, "{:+.2f}") for v in table["d_z"]],
        "wins/ties/losses": [f"{w}/{t}/{lo}" for w, t, lo in
                             zip(table["wins"], table["ties"], table["losses"], strict=True)],
        "p (t)": [_p(p) for p in table["t_p"]],
        "p (t, Holm)": [_p(p) for p in table["t_p_holm"]],
        "n (W)": table["wilcoxon_n"].astype(int),
        "p (Wilcoxon)": [_p(p) for p in table["wilcoxon_p"]],
    })
    return out.reset_index(drop=True)


def _number(value: float, pattern: str) -> str:
    return "–" if value is None or math.isnan(value) else pattern.format(value)


def _p(value: float) -> str:
    if value is None or math.isnan(value):
        return "–"
    return "<0.001" if value < 0.001 else f"{value:.3f}"


# --------------------------------------------------------------- grouping
FEASIBLE = "metrics.grouping.feasible"
RECOVERED = "metrics.grouping.recovered"
HIT_EPOCH_CAP_TAG = "tags.bb.hit_epoch_cap"


def grouping(runs: pd.DataFrame, plans: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Grouping recovery per (method, budget): ARI and co-sharing per block, feasibility, recovery, stability.

    Rows are :func:`_keyed` labels (a control made from a method's plans is its
    own row). Per block: ARI, and pairwise co-sharing precision and recall
    (``P/R <block>``: low precision = true groups merged, low recall = true
    groups fragmented) where the runs logged them. ``feasible``: runs whose
    method's search space holds the true grouping at this budget
    (``grouping.feasible``; NaN where the method does not say). ``recovered``
    counts only feasible runs (where a run states its feasibility), so an
    infeasible cell is marked, not counted as a failure. ``stability``: within
    each data seed, the mean over blocks of the mean pairwise ARI between the
    training seeds' partitions of tasks (1 = every seed learned the same tree),
    averaged over the data seeds with two or more runs; NaN without such a data
    seed. ``at epoch cap``: runs tagged ``bb.hit_epoch_cap`` (their retrain's
    best validation epoch was its last). ``plans`` maps run id -> ``plan.json``.
    Empty when the runs carry no grouping scores (data without known groups).
    """
    ari = _block_columns(runs, "ari")
    if not ari or RECOVERED not in runs or runs[RECOVERED].isna().all():
        return pd.DataFrame()
    runs = _keyed(runs)
    keys = ["method", "budget"]
    values = pd.DataFrame({"method": runs["label"], "budget": runs["budget"]})
    for block, column in ari.items():
        values[f"ARI {block}"] = runs[column]
    for score in ("precision", "recall"):
        for block, column in _block_columns(runs, score).items():
            values[f"{score} {block}"] = runs[column]
    table = _aggregate(values, keys)
    frame = runs.assign(method=runs["label"])
    feasible = frame[FEASIBLE] if FEASIBLE in frame else pd.Series(np.nan, index=frame.index)
    counted = feasible.isna() | (feasible == 1)
    grouped = frame.assign(_feasible=feasible, _counted=counted,
                           _recovered=frame[RECOVERED].where(counted).fillna(0),
                           _cap=_tag_true(frame, HIT_EPOCH_CAP_TAG)).groupby(keys, sort=False)
    table[("feasible", "")] = grouped["_feasible"].sum(min_count=1)
    table[("feasible known", "")] = grouped["_feasible"].count()
    table[("counted", "")] = grouped["_counted"].sum().astype(int)
    table[("recovered", "")] = grouped["_recovered"].sum().astype(int)
    table[("at epoch cap", "")] = grouped["_cap"].sum(min_count=1)
    table[("cap known", "")] = grouped["_cap"].count()
    table[("stability", "")] = [
        _stability(_plans_by_data_seed(group, plans)) if plans else float("nan") for _, group in grouped
    ]
    return table


def _block_columns(runs: pd.DataFrame, score: str) -> dict[str, str]:
    """block -> the filled ``metrics.grouping.<score>.<block>`` column, in block order."""
    prefix = f"metrics.grouping.{score}."
    # a store shared with data that has groups gives these columns to every run: keep filled ones
    columns = [c for c in runs.columns if c.startswith(prefix) and runs[c].notna().any()]
    return {c[len(prefix):]: c for c in sorted(columns, key=lambda c: _natural(c[len(prefix):]))}


def _tag_true(runs: pd.DataFrame, tag: str) -> pd.Series:
    """1.0 / 0.0 where a ``true``/``false`` tag is set, NaN where it is missing (older runs)."""
    if tag not in runs:
        return pd.Series(np.nan, index=runs.index)
    return runs[tag].map({"true": 1.0, "false": 0.0})


def _plans_by_data_seed(group: pd.DataFrame, plans: Mapping[str, Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    return [[plans[r] for r in part["run_id"] if r in plans] for _, part in group.groupby("data_seed", sort=True)]


def _stability(plans_by_data_seed: list[list[Mapping[str, Any]]]) -> float:
    """Mean over data seeds (with two or more plans) of the training seeds' agreement on that data seed.

    Agreement: the mean over blocks of the mean pairwise ARI between the plans'
    partitions of tasks at that block. Seeds of different data are never
    compared: their data (and, with a data seed, their true groups) differ.
    """
    per_data_seed = []
    for plans in plans_by_data_seed:
        if len(plans) < 2:
            continue
        tasks = list(plans[0]["tasks"])
        per_block = []
        for level in range(len(plans[0]["blocks"])):
            labels = [[str(p["nodes"][t][: level + 1]) for t in tasks] for p in plans]
            per_block.append(float(np.mean([_ari(a, b) for a, b in itertools.combinations(labels, 2)])))
        per_data_seed.append(float(np.mean(per_block)))
    return float(np.mean(per_data_seed)) if per_data_seed else float("nan")


def _ari(a: list[str], b: list[str]) -> float:
    """ARI, taking two identical trivial partitions (all one group) as perfect agreement."""
    if a == b or (len(set(a)) == 1 and len(set(b)) == 1):
        return 1.0
    return float(adjusted_rand_score(a, b))


def format_grouping(table: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=table.index)
    out["n"] = table[("n", "")].astype(int)
    out["feasible"] = [_count(f, k) for f, k in zip(table[("feasible", "")], table[("feasible known", "")], strict=True)]
    quantities = list(dict.fromkeys(q for q, _ in table.columns))
    for quantity in (q for q in quantities if q.startswith("ARI ")):
        out[quantity] = [_pm(m, s, "2f") for m, s in zip(table[(quantity, "mean")], table[(quantity, "std")], strict=True)]
    for block in (q[len("precision "):] for q in quantities if q.startswith("precision ")):
        recall = table[(f"recall {block}", "mean")] if (f"recall {block}", "mean") in table else np.nan
        out[f"P/R {block}"] = [f"{_number(p, '{:.2f}')}/{_number(r, '{:.2f}')}"
                               for p, r in zip(table[(f"precision {block}", "mean")], recall, strict=True)]
    out["recovered"] = [_recovered(r, c, n) for r, c, n in
                        zip(table[("recovered", "")], table[("counted", "")], out["n"], strict=True)]
    out["stability"] = ["–" if math.isnan(s) else f"{s:.2f}" for s in table[("stability", "")]]
    out["at epoch cap"] = [_count(c, k) for c, k in zip(table[("at epoch cap", "")], table[("cap known", "")], strict=True)]
    return out


def grouping_header() -> str:
    """The lines above the grouping table."""
    return (
        "ARI of each block's partition of tasks against the truth; P/R: pairwise co-sharing precision / recall "
        "at that block (mean over runs; low precision = true groups merged, low recall = true groups "
        "fragmented). feasible: runs whose method's search space holds the true grouping at this budget "
        "(– where the method does not say); recovered: feasible runs whose plan recovers the grouping, "
        "over the feasible runs (an infeasible run is not counted as a failure); stability: mean pairwise ARI "
        "of the training seeds' partitions, within each data seed; at epoch cap: runs whose retrain's best "
        "validation epoch was its last (still improving when training ended)."
    )


def _count(count: float, known: float) -> str:
    return "–" if not known or math.isnan(count) else f"{int(count)}/{int(known)}"


def _recovered(recovered: int, counted: int, n: int) -> str:
    if counted == 0:
        return "infeasible"
    return f"{recovered}/{counted}" + (f" ({n - counted} infeasible)" if counted < n else "")


# ------------------------------------------------------------ compute
COMPUTE: dict[str, str] = {
    "search steps": "metrics.search.steps",
    "search FLOPs": "metrics.search.flops",
    "retrain steps": "metrics.train.steps",
    "retrain FLOPs": "metrics.train.flops",
    "search (s)": "metrics.search_seconds",
    "retrain (s)": "metrics.train_seconds",
    "reused FLOPs": "metrics.reused.flops",
    "reused (s)": "metrics.reused.seconds",
}


def compute(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, budget): training compute and convergence (mean and std over runs).

    Search and retrain steps and training FLOPs (forward and backward, measured
    on each phase's first step), wall seconds, and the cost of other cells a
    method's search reads (``reused``: e.g. the single-task networks of
    branched_affinity, a control's source), charged in their own columns.
    ``at epoch cap`` / ``search at epoch cap``: runs whose retrain's (search
    supernet's) best validation epoch was its last. Empty for runs that logged
    no compute (older runs).
    """
    present = {label: column for label, column in COMPUTE.items() if column in runs and runs[column].notna().any()}
    if "metrics.train.steps" not in present.values():
        return pd.DataFrame()
    runs = _keyed(runs)
    values = pd.DataFrame({"method": runs["label"], "budget": runs["budget"]})
    for label, column in present.items():
        values[label] = runs[column]
    table = _aggregate(values, ["method", "budget"])
    grouped = runs.assign(method=runs["label"], _cap=_tag_true(runs, HIT_EPOCH_CAP_TAG),
                          _search_cap=_tag_true(runs, "tags.bb.search_hit_epoch_cap")).groupby(
        ["method", "budget"], sort=False)
    for name, column in (("at epoch cap", "_cap"), ("search at epoch cap", "_search_cap")):
        table[(name, "")] = grouped[column].sum(min_count=1)
        table[(f"{name} known", "")] = grouped[column].count()
    return table


def format_compute(table: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=table.index)
    out["n"] = table[("n", "")].astype(int)
    for label in (q for q in dict.fromkeys(q for q, _ in table.columns) if q in COMPUTE):
        style = "2f" if label.endswith("(s)") else "si"
        out[label] = [_pm(m, s, style) for m, s in zip(table[(label, "mean")], table[(label, "std")], strict=True)]
    for name in ("at epoch cap", "search at epoch cap"):
        out[name] = [_count(c, k) for c, k in zip(table[(name, "")], table[(f"{name} known", "")], strict=True)]
    return out


def compute_header() -> str:
    return (
        "Training compute per run, mean ± std: optimiser steps and training FLOPs (forward and backward; "
        "torch's FLOP counter on each phase's first step, times the samples trained on) of the search and of "
        "the retrain, wall seconds, and the cost of the other cells a method's search reads (reused: whole "
        "runs, e.g. the single-task networks branched_affinity measures affinity on, or a control's source), "
        "charged separately. at epoch cap: runs whose retrain's best validation epoch was its last (still "
        "improving at the end); search at epoch cap: the same for the search's supernet. The independent "
        "networks (the Δm reference) keep each task's own best validation epoch, as separate single-task "
        "training would."
    )


# -------------------------------------------------------------- per task
def task_gains(runs: pd.DataFrame, reference: str = "independent") -> pd.DataFrame:
    """Per (method, budget) x task: mean signed relative gain (%) over ``reference`` at the same seeds.

    Positive is better whatever the metric's direction (the per-task terms of Δm).
    Runs are matched to the reference on (data seed, training seed).
    """
    tasks = main_metrics(runs)
    runs = _keyed(runs)
    ref = runs[runs["method"] == reference].set_index(["data_seed", "seed"])
    rows = {}
    for key, group in runs.groupby(["label", "budget"], sort=False):
        gains = {}
        keys = pd.MultiIndex.from_frame(group[["data_seed", "seed"]])
        for task, (column, higher) in tasks.items():
            base = pd.Series(ref[column].reindex(keys).to_numpy(), index=group.index) if column in ref else np.nan
            sign = 1.0 if higher else -1.0
            gains[task] = float((100.0 * sign * (group[column] - base) / base.abs()).mean())
        rows[key] = gains
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["method", "budget"]) if rows else table.index
    return table


# ---------------------------------------------------------------- context
def hyperparameters(runs: pd.DataFrame) -> dict[str, dict[str, str]]:
    """method -> {option: value} from the runs' ``params.method.*`` (values joined if they differ).

    Options in name order: MLflow's search returns its columns in no fixed order, and a report
    rebuilt from the same runs must be the same text.
    """
    out: dict[str, dict[str, str]] = {}
    option_columns = sorted(c for c in runs.columns if c.startswith("params.method."))
    for method, group in runs.groupby("method", sort=False):
        options = {}
        for column in option_columns:
            values = sorted({str(v) for v in group[column].dropna()})
            if values:
                options[column[len("params.method."):]] = " | ".join(values)
        out[method] = options
    return out


def protocol(runs: pd.DataFrame) -> dict[str, str]:
    """The training protocol of the runs (``params.protocol.*``; values joined if they differ)."""
    columns = sorted(c for c in runs.columns if c.startswith("params.protocol."))
    return {c[len("params.protocol."):]: " | ".join(sorted({str(v) for v in runs[c].dropna()})) for c in columns}


# ---------------------------------------------------------- search diagnostics
DIAGNOSTICS: dict[str, tuple[str, str]] = {
    # label -> (metrics column, how: "count" = runs where it is 1, "mean")
    "reproduces shared-bottom": ("metrics.search.reproduces_shared_bottom", "count"),
    "fully shared": ("metrics.search.fully_shared", "count"),
    "skips per task": ("metrics.search.skip_fraction", "mean"),
    "commitment": ("metrics.search.commitment", "mean"),
    "min commitment": ("metrics.search.commitment_min", "mean"),
    "tree fixed from epoch": ("metrics.search.tree_final_epoch", "mean"),
    "true tree rank": ("metrics.search.true_tree_rank", "mean"),
    "true tree scored": ("metrics.search.true_tree_scored", "count"),
    "groups used": ("metrics.search.groups_used", "mean"),
}


def diagnostics(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, budget): what its searches did, from the ``search.*`` metrics they logged.

    A count column is ``k/n``: runs where the flag is 1 (e.g. AdaShare's
    policy reproducing shared-bottom) over runs that logged it; a mean column
    is the mean over runs. Rows and columns with nothing logged are left out.
    """
    runs = _keyed(runs)
    present = {label: spec for label, spec in DIAGNOSTICS.items() if spec[0] in runs and runs[spec[0]].notna().any()}
    rows = []
    for (method, budget), group in runs.groupby(["label", "budget"], sort=False):
        row: dict[str, Any] = {}
        for label, (column, how) in present.items():
            values = group[column].dropna()
            if values.empty:
                continue
            row[label] = f"{int((values == 1).sum())}/{len(values)}" if how == "count" else f"{values.mean():.2f}"
        if row:
            rows.append({"method": method, "budget": budget, **row})
    if not rows:
        return pd.DataFrame()
    table = pd.DataFrame(rows).set_index(["method", "budget"])
    return table[[label for label in present if label in table]].fillna("–")


DIAGNOSTICS_HEADER = (
    "What each search did (from its logged search metrics; k/n: runs with the flag over runs that logged it): "
    "reproduces shared-bottom / fully shared: AdaShare's final policy skips nothing / every task follows one "
    "policy (then the learned plan is a shared network); skips per task: fraction of blocks skipped; "
    "commitment: mean (min) top-parent probability at the end of search (Learn-to-Branch), or the mean largest "
    "assignment probability (DMTG); tree fixed from epoch: the epoch from which Learn-to-Branch's argmax tree "
    "stopped changing; true tree rank: the rank of the true tree under Vandenhende's cost among the trees the "
    "search scored (1 = no scored tree beats it; reported, never used to choose); groups used: DMTG's branches "
    "that kept a task."
)
