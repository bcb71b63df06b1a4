"""What the study scripts share: a sweep on development data seeds, each cell scored on validation.

The seed rule (``branchbench/seeds.py``): a study chooses defaults on
*development* data seeds by *validation* metrics only. :func:`run` refuses
other data seeds, runs the cells through the sweep (resumable, reused by
identity, ``--workers`` processes), and returns one :class:`Record` per cell
with its validation scores (what a study selects on) beside its test Δm and
grouping recovery (reported only, never a criterion). The tables end with
the adoption test (:func:`adoption`): the schedule with the best mean
validation Δm replaces the default only when a paired t-test against it clears
``ADOPT_ALPHA`` (and, judged in the method's docstring, it changes a
hyper-parameter rather than the method's objective or cost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy.stats import ttest_1samp

from branchbench.cell import load_bench
from branchbench.config import Component, SweepConfig
from branchbench.runner import cell_states, plan_sweep, prepare_data, run_sweep
from branchbench.seeds import check_development
from branchbench.tracking import Tracking, default_uri
from branchbench.tune import validation_delta_m

ADOPT_ALPHA = 0.05  # a winner replaces the default only when a paired t-test clears this (adoption())


@dataclass
class Record:
    dataset: str
    method: str
    budget: float | None
    data_seed: int
    seed: int
    val_delta_m: float  # selection: Δm (%) on the validation split vs independent
    val_loss: float  # selection: mean over tasks of the validation main metric (MSE on synthetic data)
    metrics: dict[str, float] = field(default_factory=dict)  # everything logged (test Δm, recovery: reported only)


def run(cfg: SweepConfig, uri: str | None, experiment: str, workers: int = 1) -> list[Record]:
    """Run ``cfg`` (its data seeds must be development seeds) and score every cell on validation."""
    check_development(cfg.data_seeds or [0], f"{cfg.name}: data seeds")
    store = uri or default_uri(Path(tempfile.mkdtemp(prefix=f"{cfg.name}-")))
    tracking = Tracking(store, experiment)
    cells = plan_sweep(cfg)
    prepare_data(cells)
    result = run_sweep(cfg, tracking, workers=workers, cells=cells, quiet=True)
    if result.failed:
        raise SystemExit("; ".join(f"{r.cell.name}: {r.error}" for r in result.failed))
    states = cell_states(tracking)
    records = []
    for cell in cells:
        tasks = load_bench(cell).tasks
        metrics = states[cell.hash]["metrics"]
        val_loss = statistics.fmean(metrics[f"val.{t.name}.{t.main_metric.name}"] for t in tasks)
        records.append(Record(cell.dataset, cell.method, cell.budget.ratio, cell.data_seed, cell.seed,
                              validation_delta_m(cell, states, tasks), val_loss, metrics))
    print(f"store: {store}")
    return records


def mean_std(values: list[float], fmt: str = "+.2f") -> str:
    if len(values) < 2:
        return format(values[0], fmt) if values else "-"
    return f"{statistics.fmean(values):{fmt}} ± {statistics.stdev(values):.2f}"


def groups(records: list[Record], *keys: str) -> dict[tuple[Any, ...], list[Record]]:
    out: dict[tuple[Any, ...], list[Record]] = {}
    for r in records:
        out.setdefault(tuple(getattr(r, k) for k in keys), []).append(r)
    return out


# ------------------------------------------------------------- named schedules
# What the per-method studies (dmtg_study.py, adashare_study.py,
# branched_affinity_study.py) share: named option sets of one method kind, each
# run at its budgets beside the baselines, and the tables: per cell (validation
# Δm, then the reported columns), a summary, paired differences to the default
# and the selection by mean validation Δm among the selectable schedules.

DEFAULT = "default"
BASELINES = ("shared_bottom", "independent")


@dataclass(frozen=True)
class Schedule:
    """One named option set of the studied method.

    ``budgets``: where it runs (None: the study's budgets). ``selectable``:
    False for a feasibility check (e.g. a K given from the true groups), which
    is reported and never selected.
    """

    options: dict[str, Any]
    note: str = ""
    budgets: tuple[float | None, ...] | None = None
    selectable: bool = True


@dataclass(frozen=True)
class Column:
    """A reported column of the per-cell table: its header and how a cell's metrics show in it."""

    header: str
    show: Callable[[Any], str]  # per cell: its metrics dict; in the summary: the list of the group's


def key_of(kind: str, name: str) -> str:
    return f"{kind}__{name}"


def study_configs(study: str, kind: str, schedules: dict[str, Schedule], data_seeds: list[int], seeds: list[int],
                  budgets: list[float | None], baselines: tuple[str, ...] = BASELINES) -> list[SweepConfig]:
    """One sweep per distinct budget list: the baselines and each schedule as a labelled ``kind`` instance."""
    check_development(data_seeds, "--data-seeds")
    by_budgets: dict[tuple[float | None, ...], dict[str, Component]] = {}
    for name, schedule in schedules.items():
        where = tuple(schedule.budgets if schedule.budgets is not None else budgets)
        by_budgets.setdefault(where, {m: Component(m) for m in baselines})[key_of(kind, name)] = \
            Component(kind, dict(schedule.options))
    return [SweepConfig(name=study, seeds=seeds, budgets=list(where), protocol={"threads": 1},
                        datasets={"synthetic": Component("synthetic")}, methods=methods, data_seeds=list(data_seeds))
            for where, methods in by_budgets.items()]


def run_all(cfgs: list[SweepConfig], uri: str | None, experiment: str, workers: int = 1) -> list[Record]:
    """:func:`run` each config into one store (cells shared between them run once), one record per cell."""
    store = uri or default_uri(Path(tempfile.mkdtemp(prefix=f"{cfgs[0].name}-")))
    out: dict[tuple[Any, ...], Record] = {}
    for cfg in cfgs:
        for r in run(cfg, store, experiment, workers):
            out.setdefault((r.method, r.budget, r.data_seed, r.seed), r)
    return list(out.values())


def _budget_key(budget: float | None) -> float:
    return -1.0 if budget is None else budget


def study_tables(records: list[Record], kind: str, schedules: dict[str, Schedule], columns: list[Column],
                 summaries: list[Column] | None = None) -> list[str]:
    """The study's markdown: schedules, per cell, summary, paired differences to the default, selection.

    ``columns`` are shown per cell, ``summaries`` per schedule and budget (each
    gets the list of the group's metrics dicts); both are reported only.
    """
    label = {key_of(kind, n): n for n in schedules}
    out = ["## Schedules", "", f"| schedule | {kind} options (the rest default) | budgets | selectable | note |",
           "|---|---|---|---|---|"]
    for n, s in schedules.items():
        where = "study's" if s.budgets is None else ", ".join(str(b) for b in s.budgets)
        out.append(f"| {n} | `{json.dumps(s.options, sort_keys=True)}` | {where} | "
                   f"{'yes' if s.selectable else 'no (feasibility check)'} | {s.note} |")
    out += ["", "## Per cell; selection column: val Δm, the rest reported only", "",
            "| schedule | budget | data seed | seed | val Δm | " + " | ".join(c.header for c in columns) + " |",
            "|---|---|---|---|---|" + "---|" * len(columns)]
    ours = sorted((r for r in records if r.method in label),
                  key=lambda r: (list(label).index(r.method), _budget_key(r.budget), r.data_seed, r.seed))
    for r in ours:
        out.append(f"| {label[r.method]} | {r.budget} | {r.data_seed} | {r.seed} | {r.val_delta_m:+.2f} | "
                   + " | ".join(c.show(r.metrics) for c in columns) + " |")
    summaries = summaries or []
    out += ["", "## Summary over data seeds x training seeds", "",
            "| method | budget | val Δm (criterion) | test Δm (reported) | recovered (reported) | "
            + "".join(f"{c.header} | " for c in summaries) + "n |",
            "|---|---|---|---|---|" + "---|" * len(summaries) + "---|"]
    order = {m: i for i, m in enumerate([*label, *BASELINES])}
    summary = groups(records, "method", "budget")
    for (method, budget), rs in sorted(summary.items(), key=lambda kv: (order.get(kv[0][0], 99),
                                                                        _budget_key(kv[0][1]))):
        rec = sum(r.metrics.get("grouping.recovered", 0.0) for r in rs)
        extra = "".join(f"{c.show([r.metrics for r in rs]) if method in label else '-'} | " for c in summaries)
        out.append(f"| {label.get(method, method)} | {budget} | {mean_std([r.val_delta_m for r in rs])} | "
                   f"{mean_std([r.metrics['delta_m'] for r in rs])} | {rec:.0f}/{len(rs)} | {extra}{len(rs)} |")
    budgets = sorted({r.budget for r in ours}, key=_budget_key)
    by_cell = {(r.method, r.budget, r.data_seed, r.seed): r.val_delta_m for r in ours}
    base = key_of(kind, DEFAULT)
    if DEFAULT in schedules:
        out += paired_section(by_cell, base, {n: key_of(kind, n) for n in schedules if n != DEFAULT}, budgets)
    out += ["", "## Selected by mean validation Δm (selectable schedules only)", ""]
    selectable = [key_of(kind, n) for n, s in schedules.items() if s.selectable]
    overall = None  # the winner over every budget (the last row)
    for budget in [*budgets, "all"] if len(budgets) > 1 else budgets:
        scores = {label[m]: statistics.fmean(vals) for m in selectable
                  if (vals := [v for (m2, b, _, _), v in by_cell.items()
                               if m2 == m and (budget == "all" or b == budget)])}
        if not scores:
            continue
        best = overall = max(scores, key=scores.get)
        out.append(f"- budget {budget}: **{best}** (mean val Δm {scores[best]:+.2f}; {DEFAULT}: "
                   f"{scores.get(DEFAULT, float('nan')):+.2f}; all: "
                   + ", ".join(f"{n} {v:+.2f}" for n, v in sorted(scores.items(), key=lambda kv: -kv[1])) + ")")
    if DEFAULT in schedules and overall is not None:
        diffs = paired_to_default(by_cell, base, key_of(kind, overall), budgets)
        out += ["", *adoption(overall, [x for b in budgets for x in diffs[b]])]
    return out


def paired_to_default(by_cell: dict[tuple, float], base: str, key: str,
                      budgets: list[float | None]) -> dict[float | None, list[float]]:
    """Per budget: ``key``'s validation Δm minus the default's (``base``), over the cells both ran.

    ``by_cell`` maps (method key, budget, data seed, seed) to validation Δm.
    """
    return {b: [v - by_cell[(base, b, d, s)] for (m, b2, d, s), v in by_cell.items()
                if m == key and b2 == b and (base, b, d, s) in by_cell] for b in budgets}


def paired_section(by_cell: dict[tuple, float], base: str, keys: dict[str, str],
                   budgets: list[float | None]) -> list[str]:
    """The table of each schedule's (name -> method key) paired difference to the default, per budget and all."""
    out = ["", f"## Paired val Δm difference to `{DEFAULT}` (same data seed, seed, budget)", "",
           "| schedule | " + " | ".join(f"{b}" for b in budgets) + " | all |",
           "|---|" + "---|" * (len(budgets) + 1)]
    for name, key in keys.items():
        diffs = paired_to_default(by_cell, base, key, budgets)
        every = [x for b in budgets for x in diffs[b]]
        out.append(f"| {name} | " + " | ".join(mean_std(diffs[b]) for b in budgets) + f" | {mean_std(every)} |")
    return out


def adoption(best: str, diffs: list[float], alpha: float = ADOPT_ALPHA) -> list[str]:
    """Whether the overall winner replaces the default: only when its gain is clear of the seed noise.

    The rule the method docstrings apply: a two-sided paired t-test of the winner's validation Δm
    against the default's over every cell both ran (data seeds x budgets), at ``alpha``. A winner
    that changes a method's objective or cost rather than a hyper-parameter is never adopted; that
    judgement is the method docstring's, not this table's.
    """
    head = f"## Adoption (paired t-test of `{best}` against `{DEFAULT}` over every cell, two-sided, alpha {alpha})"
    if best == DEFAULT:
        return [head, "", "- the default is the overall winner: it stays"]
    if len(diffs) < 2 or statistics.pstdev(diffs) == 0:
        return [head, "", f"- too few paired cells or no spread ({len(diffs)}): the default stays"]
    p = float(ttest_1samp(diffs, 0.0).pvalue)
    verdict = "clear of the noise: adopt (unless it changes the objective)" if p < alpha and \
        statistics.fmean(diffs) > 0 else "within the noise: the default stays"
    return [head, "", f"- `{best}` - `{DEFAULT}`: {mean_std(diffs)} over {len(diffs)} cells, p = {p:.3g}: {verdict}"]


def study_header(title: str, argv: list[str], data_seeds: list[int], seeds: list[int],
                 budgets: list[float | None], wall: float, records: list[Record]) -> list[str]:
    cell_seconds = sum(r.metrics.get("search_seconds", 0.0) + r.metrics.get("train_seconds", 0.0) for r in records)
    return [f"# {title}", "", f"`python {' '.join(argv)}`", "",
            f"Default synthetic data, development data seeds {data_seeds}, training seeds {seeds}, "
            f"budgets {budgets}; selection by mean validation Δm (against the independent networks, "
            "from val.* metrics) only; test Δm, the recovery of the true groups and the other columns "
            f"are reported and choose nothing. Wall time of this invocation: {wall / 60:.1f} min "
            "(cells finished earlier in the store are reused, not rerun); search + training time summed over "
            f"the {len(records)} cells, reused or not, one thread each: {cell_seconds / 60:.1f} min.", ""]


def fmt_list(values: list[float], fmt: str = "5.2f") -> str:
    return " ".join(format(v, fmt) for v in values)


def ari_blocks(metrics: dict[str, float]) -> list[float]:
    """The ARI of each block's partition against the true groups, in block order (reported only)."""
    keys = sorted((k for k in metrics if k.startswith("grouping.ari.")), key=_natural)
    return [metrics[k] for k in keys]


def _natural(key: str) -> tuple[str, int]:
    head = key.rstrip("0123456789")
    return head, int(key[len(head):] or -1)


def recovered(metrics: dict[str, float]) -> str:
    return "yes" if metrics.get("grouping.recovered") else "no"


def study_main(doc: str, title: str, experiment: str, kind: str, schedules: dict[str, Schedule],
               default_schedules: list[str], default_budgets: list[float] | None, data_seeds: list[int],
               columns: list[Column], summaries: list[Column] | None = None) -> None:
    """The command line of a per-method study: parse, run the schedules, print and write the tables.

    ``default_budgets`` None: the method is not budget-aware (budget none, no ``--budgets``);
    ``data_seeds``: the default development data seeds (checked again here).
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="training seeds 0..N-1 (default: %(default)s)")
    parser.add_argument("--data-seeds", type=int, nargs="+", default=check_development(data_seeds, kind),
                        help="development data seeds (default: %(default)s)")
    parser.add_argument("--schedules", nargs="*", default=default_schedules, choices=list(schedules),
                        help="named schedules (default: %(default)s)")
    parser.add_argument("--variants", default="{}", help=f"more schedules: JSON object name -> {kind} options")
    if default_budgets is not None:
        parser.add_argument("--budgets", type=float, nargs="+", default=default_budgets,
                            help="budget ratios (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="cells run at once (processes)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: a temporary SQLite file)")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here (markdown)")
    args = parser.parse_args()
    chosen = {name: schedules[name] for name in args.schedules}
    extra = json.loads(args.variants)
    if not isinstance(extra, dict) or not all(isinstance(v, dict) for v in extra.values()):
        raise SystemExit(f"--variants: give a JSON object name -> {kind} options, e.g. '{{\"mine\": {{...}}}}'")
    chosen.update({name: Schedule(dict(options), "from --variants") for name, options in extra.items()})
    budgets: list[float | None] = list(args.budgets) if default_budgets is not None else [None]
    data_seeds = check_development(args.data_seeds, "--data-seeds")
    seeds = list(range(args.seeds))
    cfgs = study_configs(experiment, kind, chosen, data_seeds, seeds, budgets)
    start = time.perf_counter()
    records = run_all(cfgs, args.tracking_uri, experiment, args.workers)
    wall = time.perf_counter() - start
    lines = [*study_header(title, sys.argv, data_seeds, seeds, budgets, wall, records),
             *study_tables(records, kind, chosen, columns, summaries)]
    print("\n".join(lines))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
