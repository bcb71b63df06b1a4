"""The Learn-to-Branch study: option variants on development data seeds, selected by validation Δm.

Every cell (each learn_to_branch variant at each budget, shared_bottom,
independent, oracle_tree) runs through the sweep into one MLflow store (a
temporary one unless ``--tracking-uri`` is given; finished cells are reused,
so a second invocation only prints), one torch thread per cell, in
``--workers`` processes, on *development* data seeds (``branchbench/seeds.py``;
others are refused). The seed rule: a variant is **selected by its mean
validation Δm** (against the independent networks, from ``val.*`` metrics) per
budget; test Δm and the recovery of the true groups are *reported* beside it
and choose nothing. Tables:

* per variant, budget, data seed and training seed: validation Δm; reported:
  ARI of each block's partition against the true groups, recovered or not,
  test Δm, the smallest top-parent probability per child level at the end of
  search, the co-sharing gap per block;
* per method, variant and budget: validation Δm mean ± std (the criterion),
  then test Δm and the recovery rate (reported), and the selected variant.

The variants are named schedules (:data:`SCHEDULES`, picked with
``--schedules``) and any given as JSON (``--variants``, a name -> options
object). Selection: the highest mean validation Δm per budget, and overall
(mean over the budgets' cells), beside each schedule's paired difference to
``default`` (same data seed, training seed and budget), so a difference can be
read against its spread. ``--out`` writes the tables as markdown.

Usage::

    python scripts/ltb_study.py --seeds 1 --data-seeds 1000 1001 1002 --budgets 2.5 5.0 --workers 2 \
        --schedules default long hold sampled k2 lr03 sgd --out scripts/results/ltb_study.md
    python scripts/ltb_study.py --variants '{"holdout": {"logit_data": "holdout"}}' --tracking-uri sqlite:///s.db
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from _study import DEFAULT, Record, groups, mean_std, paired_section, run

from branchbench.config import Component, SweepConfig
from branchbench.seeds import check_development, development_seeds

BASELINES = ("shared_bottom", "independent", "oracle_tree")
EXPERIMENT = "ltb-study"

SCHEDULES: dict[str, dict] = {
    DEFAULT: {},
    "v2": {"tau_hold": 0.0},  # version 2's default (annealed from the first search step): the tables' "default (v2)"
    "hard": {"hard": True},  # straight-through hard Gumbel samples instead of soft ones
    "long": {"epoch_factor": 4.0},  # search length: 4x the protocol's epochs instead of 2.5x
    "hold": {"tau_hold": 0.4},  # tau held at tau_start for 40% of the search, then annealed
    "sampled": {"warmup": "sampled"},  # warm-up on random trees instead of the uniform mixture
    "k2": {"samples_per_step": 2},  # two Gumbel samples per logit step
    "lr003": {"logit_lr": 0.03},
    "lr03": {"logit_lr": 0.3},
    "sgd": {"logit_optimizer": "sgd", "logit_lr": 1.0},  # |grad| ~0.01-0.03: ~0.1-0.3 a step with momentum
    "holdout": {"logit_data": "holdout"},
}


def method_key(name: str) -> str:
    return f"ltb_{name}"


def study_config(variants: dict[str, dict], data_seeds: list[int], seeds: list[int],
                 budgets: list[float | None]) -> SweepConfig:
    """One sweep: the baselines and each named variant as a labelled learn_to_branch instance ``ltb_<name>``."""
    methods = {m: Component(m) for m in BASELINES}
    methods.update({method_key(n): Component("learn_to_branch", dict(v)) for n, v in variants.items()})
    return SweepConfig(name="ltb-study", seeds=seeds, budgets=budgets, protocol={"threads": 1},
                       datasets={"synthetic": Component("synthetic")}, methods=methods,
                       data_seeds=check_development(data_seeds, "--data-seeds"))


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:5.2f}" for v in values)


def tables(records: list[Record], variants: dict[str, dict]) -> list[str]:
    """The study's markdown: schedules, per cell, summary, paired differences, selection."""
    label = {method_key(n): n for n in variants}
    blocks = sorted({k[len("grouping.ari."):] for r in records for k in r.metrics if k.startswith("grouping.ari.")})
    out = ["## Schedules", "", "| schedule | learn_to_branch options (the rest default) |", "|---|---|"]
    out += [f"| {n} | `{json.dumps(v, sort_keys=True)}` |" for n, v in variants.items()]
    out += ["", "## Per cell; selection column: val Δm, the rest reported only", "",
            f"| schedule | budget | data seed | seed | val Δm | ARI per block ({', '.join(blocks)}) | recovered | "
            "test Δm | min top p (reached children) | coshare gap | search s |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r.method, r.budget or 0.0, r.data_seed, r.seed)):
        if r.method not in label:
            continue
        m = r.metrics
        aris = [m[f"grouping.ari.{b}"] for b in blocks]
        tops = [v for k, v in sorted(m.items()) if k.startswith("search/commitment.") and k.count(".") == 1
                and not k.endswith((".min", ".mean"))]
        gaps = [m[f"search/ltb/coshare_gap.{b}"] for b in blocks if f"search/ltb/coshare_gap.{b}" in m]
        secs = m.get("search_seconds", float("nan"))
        out.append(f"| {label[r.method]} | {r.budget} | {r.data_seed} | {r.seed} | {r.val_delta_m:+.2f} | "
                   f"{_fmt(aris)} | {'yes' if m.get('grouping.recovered') else 'no'} | {m['delta_m']:+.2f} | "
                   f"{_fmt(tops)} | {_fmt(gaps)} | {secs:.0f} |")
    out += ["", "## Summary over data seeds x training seeds", "",
            "| method | budget | val Δm (criterion) | test Δm (reported) | recovered (reported) | n |",
            "|---|---|---|---|---|---|"]
    summary = groups(records, "method", "budget")
    for (method, budget), rs in summary.items():
        rec = sum(r.metrics.get("grouping.recovered", 0.0) for r in rs)
        out.append(f"| {label.get(method, method)} | {budget} | {mean_std([r.val_delta_m for r in rs])} | "
                   f"{mean_std([r.metrics['delta_m'] for r in rs])} | {rec:.0f}/{len(rs)} | {len(rs)} |")
    ours = [r for r in records if r.method in label]
    budgets = sorted({r.budget for r in ours}, key=lambda b: b or 0.0)
    by_cell = {(r.method, r.budget, r.data_seed, r.seed): r.val_delta_m for r in ours}
    if DEFAULT in variants:
        out += paired_section(by_cell, method_key(DEFAULT),
                              {n: method_key(n) for n in variants if n != DEFAULT}, budgets)
    out += ["", "## Selected by mean validation Δm", ""]
    for budget in [*budgets, "all"]:
        scores = {label[m]: statistics.fmean(v for (m2, b, _, _), v in by_cell.items()
                                             if m2 == m and (budget == "all" or b == budget))
                  for m in label}
        best = max(scores, key=scores.get)
        out.append(f"- budget {budget}: **{best}** (mean val Δm {scores[best]:+.2f}; {DEFAULT}: "
                   f"{scores.get(DEFAULT, float('nan')):+.2f})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1, help="training seeds 0..N-1")
    parser.add_argument("--data-seeds", type=int, nargs="+", default=development_seeds(3),
                        help="development data seeds (default: %(default)s)")
    parser.add_argument("--schedules", nargs="*", default=[DEFAULT, "long", "hold", "sampled"],
                        choices=sorted(SCHEDULES), help="named schedules (default: %(default)s)")
    parser.add_argument("--variants", default="{}", help="more variants: JSON object name -> learn_to_branch options")
    parser.add_argument("--budgets", type=float, nargs="*", default=[2.5, 5.0],
                        help="budget ratios for learn_to_branch (default: the synthetic sweep's 2.5 5.0)")
    parser.add_argument("--workers", type=int, default=1, help="cells run at once (processes)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: a temporary SQLite file)")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables here (markdown)")
    args = parser.parse_args()
    variants = {name: SCHEDULES[name] for name in args.schedules}
    extra = json.loads(args.variants)
    if not isinstance(extra, dict):
        raise SystemExit("--variants: give a JSON object name -> options, e.g. '{\"hold\": {\"tau_hold\": 0.5}}'")
    variants.update(extra)
    cfg = study_config(variants, args.data_seeds, list(range(args.seeds)), args.budgets or [None])
    start = time.perf_counter()
    records = run(cfg, args.tracking_uri, EXPERIMENT, args.workers)
    wall = time.perf_counter() - start
    lines = [f"# Learn-to-Branch schedule study ({EXPERIMENT})", "",
             f"`python {' '.join(sys.argv)}`", "",
             f"Default synthetic data, development data seeds {args.data_seeds}, training seeds "
             f"{list(range(args.seeds))}, budgets {args.budgets}; selection by validation Δm only "
             f"(test Δm and recovery reported). Wall time of this invocation: {wall / 60:.1f} min "
             "(cells finished earlier in the store are reused, not rerun).", "", *tables(records, variants)]
    print("\n".join(lines))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
