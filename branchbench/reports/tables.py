"""Comparison tables: pure functions from ``mlflow.search_runs`` frames to pandas tables.

The input is the frame MLflow returns (columns ``run_id``, ``status``,
``tags.bb.*``, ``metrics.*``, ``params.*``); nothing here talks to MLflow, so
the tables are tested against a committed golden fixture of runs.

Every quantity is the mean ± sample standard deviation (ddof=1) over seeds,
with the number of seeds ``n`` shown; with one seed only the mean is printed.
Each function returns numbers (for CSV) and :func:`format_summary` /
:func:`format_paired` / :func:`format_grouping` turn them into the strings of
the Markdown and LaTeX tables.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import adjusted_rand_score

from branchbench.core.tasks import DEFAULT_METRICS

# A task's main metric is the first metric of its kind (core.tasks); its direction signs gains.
MAIN_METRICS: dict[str, bool] = {specs[0].name: specs[0].higher_is_better for specs in DEFAULT_METRICS.values()}
BASELINES = ("shared_bottom", "independent", "oracle_tree", "random_tree")
METHOD_ORDER = (*BASELINES, "learn_to_branch", "branched_affinity", "dmtg", "adashare")
CONTROL = "random_tree"

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
    """task -> (metrics column of its main test metric, higher is better), in task order."""
    found: dict[str, tuple[str, bool]] = {}
    for column in runs.columns:
        match = re.fullmatch(r"metrics\.test\.(.+)\.([^.]+)", column)
        if match and match.group(2) in MAIN_METRICS and runs[column].notna().any():
            found[match.group(1)] = (column, MAIN_METRICS[match.group(2)])
    return dict(sorted(found.items(), key=lambda kv: _natural(kv[0])))


def _natural(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _metric_name(column: str) -> str:
    return column.rsplit(".", 1)[-1]


# ---------------------------------------------------------------- summary
def summary(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, budget): mean, std and n of each task's main metric, their mean, and the costs.

    Columns are a MultiIndex (quantity, statistic) with statistics mean/std;
    plus ``("n", "")``.
    """
    tasks = main_metrics(runs)
    values = pd.DataFrame({"method": runs["method"], "budget": runs["budget"]})
    for task, (column, _) in tasks.items():
        values[f"{task} {_metric_name(column)}"] = runs[column]
    kinds = {_metric_name(c) for c, _ in tasks.values()}
    if tasks:
        label = f"mean {kinds.pop()}" if len(kinds) == 1 else "mean main metric"
        values[label] = runs[[c for c, _ in tasks.values()]].mean(axis=1)
    for label, (column, _) in COSTS.items():
        values[label] = runs[column] if column in runs else np.nan
    return _aggregate(values, ["method", "budget"])


def _aggregate(values: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    grouped = values.groupby(keys, sort=False)
    quantities = [c for c in values.columns if c not in keys]
    table = pd.concat({q: grouped[q].agg(["mean", "std"]) for q in quantities}, axis=1)
    table[("n", "")] = grouped.size()
    return table


def format_summary(table: pd.DataFrame) -> pd.DataFrame:
    """The summary as strings ``mean ± std`` (the Markdown / LaTeX table)."""
    out = pd.DataFrame(index=table.index)
    out["n"] = table[("n", "")].astype(int)
    for quantity in dict.fromkeys(q for q, _ in table.columns if q != "n"):
        style = COSTS[quantity][1] if quantity in COSTS else "3f"
        out[quantity] = [
            _pm(m, s, style) for m, s in zip(table[(quantity, "mean")], table[(quantity, "std")], strict=True)
        ]
    return out


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
def paired(runs: pd.DataFrame, control: str = CONTROL) -> pd.DataFrame:
    """Each learned method against ``control`` on the same seeds, per budget.

    A budget-aware method is paired with the control at its own budget; one
    that is not (budget ``none``) with the control at every budget. Columns:
    method, budget, control budget, n (paired seeds), Δm of each, their
    per-seed difference (mean, std), wins (seeds where the method's Δm is
    higher) and the two-sided paired t-test p-value (NaN below two seeds).
    """
    columns = ["method", "budget", "control_budget", "n", "delta_m", "control_delta_m",
               "diff_mean", "diff_std", "wins", "p_value"]
    if "metrics.delta_m" not in runs:
        return pd.DataFrame(columns=columns)
    ctrl = runs[runs["method"] == control]
    rows = []
    learned = runs[~runs["method"].isin(BASELINES)]
    for (method, budget), group in learned.groupby(["method", "budget"], sort=False):
        budgets = [budget] if budget != "none" else sorted(ctrl["budget"].unique(), key=_budget_key)
        for ctrl_budget in budgets:
            other = ctrl[ctrl["budget"] == ctrl_budget][["seed", "metrics.delta_m"]]
            pairs = group[["seed", "metrics.delta_m"]].merge(other, on="seed", suffixes=("", "_c"))
            if pairs.empty:
                continue
            diff = pairs["metrics.delta_m"] - pairs["metrics.delta_m_c"]
            p_value = float("nan")
            if len(diff) >= 2 and diff.std(ddof=1) > 0:
                p_value = float(stats.ttest_rel(pairs["metrics.delta_m"], pairs["metrics.delta_m_c"]).pvalue)
            rows.append([method, budget, ctrl_budget, len(pairs), pairs["metrics.delta_m"].mean(),
                         pairs["metrics.delta_m_c"].mean(), diff.mean(), diff.std(ddof=1),
                         int((diff > 0).sum()), p_value])
    return pd.DataFrame(rows, columns=columns)


def format_paired(table: pd.DataFrame, control: str = CONTROL) -> pd.DataFrame:
    out = pd.DataFrame({
        "method": table["method"],
        "budget": table["budget"],
        f"{control} budget": table["control_budget"],
        "n": table["n"].astype(int),
        "Δm (%)": [_fmt(v, "signed") for v in table["delta_m"]],
        f"Δm {control} (%)": [_fmt(v, "signed") for v in table["control_delta_m"]],
        "difference": [_pm(m, s, "signed") for m, s in zip(table["diff_mean"], table["diff_std"], strict=True)],
        "wins": [f"{w}/{n}" for w, n in zip(table["wins"], table["n"], strict=True)],
        "p (paired t)": ["–" if math.isnan(p) else f"{p:.3f}" for p in table["p_value"]],
    })
    return out.reset_index(drop=True)


# --------------------------------------------------------------- grouping
def grouping(runs: pd.DataFrame, plans: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """Grouping recovery per (method, budget): ARI per block, recovery rate, stability.

    ``plans`` maps run id -> ``plan.json`` dict. Stability is the mean over
    blocks of the mean pairwise ARI between the seeds' partitions of tasks at
    that block (1 = every seed learned the same tree); NaN below two seeds.
    Empty when the runs carry no grouping scores (data without known groups).
    """
    ari = sorted((c for c in runs.columns if c.startswith("metrics.grouping.ari.")),
                 key=lambda c: _natural(c[len("metrics.grouping.ari."):]))
    # a store shared with data that has groups gives these columns to every run: keep filled ones
    ari = [c for c in ari if runs[c].notna().any()]
    if not ari or "metrics.grouping.recovered" not in runs or runs["metrics.grouping.recovered"].isna().all():
        return pd.DataFrame()
    values = pd.DataFrame({"method": runs["method"], "budget": runs["budget"]})
    for column in ari:
        values[f"ARI {column[len('metrics.grouping.ari.'):]}"] = runs[column]
    table = _aggregate(values, ["method", "budget"])
    recovered = runs.groupby(["method", "budget"], sort=False)["metrics.grouping.recovered"]
    table[("recovered", "")] = recovered.sum().astype(int)
    table[("stability", "")] = [
        _stability([plans[r] for r in group["run_id"] if r in plans]) if plans else float("nan")
        for _, group in runs.groupby(["method", "budget"], sort=False)
    ]
    return table


def _stability(plans: list[Mapping[str, Any]]) -> float:
    if len(plans) < 2:
        return float("nan")
    tasks = list(plans[0]["tasks"])
    n_blocks = len(plans[0]["blocks"])
    per_block = []
    for level in range(n_blocks):
        labels = [[str(p["nodes"][t][: level + 1]) for t in tasks] for p in plans]
        scores = [_ari(a, b) for a, b in itertools.combinations(labels, 2)]
        per_block.append(float(np.mean(scores)))
    return float(np.mean(per_block))


def _ari(a: list[str], b: list[str]) -> float:
    """ARI, taking two identical trivial partitions (all one group) as perfect agreement."""
    if a == b or (len(set(a)) == 1 and len(set(b)) == 1):
        return 1.0
    return float(adjusted_rand_score(a, b))


def format_grouping(table: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(index=table.index)
    out["n"] = table[("n", "")].astype(int)
    for quantity in dict.fromkeys(q for q, _ in table.columns if q.startswith("ARI ")):
        out[quantity] = [_pm(m, s, "2f") for m, s in zip(table[(quantity, "mean")], table[(quantity, "std")], strict=True)]
    out["recovered"] = [f"{r}/{n}" for r, n in zip(table[("recovered", "")], out["n"], strict=True)]
    out["stability"] = ["–" if math.isnan(s) else f"{s:.2f}" for s in table[("stability", "")]]
    return out


# -------------------------------------------------------------- per task
def task_gains(runs: pd.DataFrame, reference: str = "independent") -> pd.DataFrame:
    """Per (method, budget) x task: mean signed relative gain (%) over ``reference`` at the same seed.

    Positive is better whatever the metric's direction (the per-task terms of Δm).
    """
    tasks = main_metrics(runs)
    ref = runs[runs["method"] == reference].set_index("seed")
    rows = {}
    for key, group in runs.groupby(["method", "budget"], sort=False):
        gains = {}
        for task, (column, higher) in tasks.items():
            base = group["seed"].map(ref[column]) if column in ref else np.nan
            sign = 1.0 if higher else -1.0
            gains[task] = float((100.0 * sign * (group[column] - base) / base.abs()).mean())
        rows[key] = gains
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index = pd.MultiIndex.from_tuples(table.index, names=["method", "budget"]) if rows else table.index
    return table


# ---------------------------------------------------------------- context
def hyperparameters(runs: pd.DataFrame) -> dict[str, dict[str, str]]:
    """method -> {option: value} from the runs' ``params.method.*`` (values joined if they differ)."""
    out: dict[str, dict[str, str]] = {}
    option_columns = [c for c in runs.columns if c.startswith("params.method.")]
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
