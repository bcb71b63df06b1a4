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

Usage::

    python scripts/ltb_study.py --seeds 3 --budgets 2.5 5.0 --workers 2
    python scripts/ltb_study.py --variants '[{}, {"logit_data": "holdout"}]' --tracking-uri sqlite:///study.db
"""

from __future__ import annotations

import argparse
import json
import statistics

from _study import Record, groups, mean_std, run

from branchbench.config import Component, SweepConfig
from branchbench.seeds import check_development, development_seeds

BASELINES = ("shared_bottom", "independent", "oracle_tree")
EXPERIMENT = "ltb-study"


def study_config(variants: list[dict], data_seeds: list[int], seeds: list[int],
                 budgets: list[float | None]) -> SweepConfig:
    """One sweep: the baselines and each variant as a labelled learn_to_branch instance ``ltb_v<i>``."""
    methods = {m: Component(m) for m in BASELINES}
    methods.update({f"ltb_v{i}": Component("learn_to_branch", dict(v)) for i, v in enumerate(variants)})
    return SweepConfig(name="ltb-study", seeds=seeds, budgets=budgets, protocol={"threads": 1},
                       datasets={"synthetic": Component("synthetic")}, methods=methods,
                       data_seeds=check_development(data_seeds, "--data-seeds"))


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:5.2f}" for v in values)


def print_tables(records: list[Record], variants: list[dict]) -> None:
    label = {f"ltb_v{i}": json.dumps(v, sort_keys=True) for i, v in enumerate(variants)}
    blocks = sorted({k[len("grouping.ari."):] for r in records for k in r.metrics if k.startswith("grouping.ari.")})
    print("\n## Per cell (learn_to_branch variants); selection column: val Δm, the rest reported only")
    print(f"| variant | budget | data seed | seed | val Δm | ARI per block ({', '.join(blocks)}) | recovered | "
          "test Δm | min top p (reached children) | coshare gap |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        if r.method not in label:
            continue
        m = r.metrics
        aris = [m[f"grouping.ari.{b}"] for b in blocks]
        tops = [v for k, v in sorted(m.items()) if k.startswith("search/commitment.") and k.count(".") == 1
                and not k.endswith((".min", ".mean"))]
        gaps = [m[f"search/ltb/coshare_gap.{b}"] for b in blocks if f"search/ltb/coshare_gap.{b}" in m]
        print(f"| {label[r.method]} | {r.budget} | {r.data_seed} | {r.seed} | {r.val_delta_m:+.2f} | {_fmt(aris)} | "
              f"{'yes' if m.get('grouping.recovered') else 'no'} | {m['delta_m']:+.2f} | {_fmt(tops)} | {_fmt(gaps)} |")
    print("\n## Summary over data seeds x training seeds")
    print("| method | variant | budget | val Δm (criterion) | test Δm (reported) | recovered (reported) | n |")
    print("|---|---|---|---|---|---|---|")
    summary = groups(records, "method", "budget")
    for (method, budget), rs in summary.items():
        rec = sum(r.metrics.get("grouping.recovered", 0.0) for r in rs)
        print(f"| {method} | {label.get(method, '-')} | {budget} | {mean_std([r.val_delta_m for r in rs])} | "
              f"{mean_std([r.metrics['delta_m'] for r in rs])} | {rec:.0f}/{len(rs)} | {len(rs)} |")
    print("\n## Selected by validation Δm")
    for budget in sorted({r.budget for r in records if r.method in label}, key=lambda b: b or 0.0):
        scores = {m: statistics.fmean(r.val_delta_m for r in rs) for (m, b), rs in summary.items()
                  if m in label and b == budget}
        best = max(scores, key=scores.get)
        print(f"- budget {budget}: {label[best]} (mean val Δm {scores[best]:+.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    parser.add_argument("--data-seeds", type=int, nargs="+", default=development_seeds(2),
                        help="development data seeds (default: %(default)s)")
    parser.add_argument("--variants", default="[{}]", help="JSON list of learn_to_branch option dicts")
    parser.add_argument("--budgets", type=float, nargs="*", default=[2.5, 5.0],
                        help="budget ratios for learn_to_branch (default: the synthetic sweep's 2.5 5.0)")
    parser.add_argument("--workers", type=int, default=1, help="cells run at once (processes)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: a temporary SQLite file)")
    args = parser.parse_args()
    variants = json.loads(args.variants)
    cfg = study_config(variants, args.data_seeds, list(range(args.seeds)), args.budgets or [None])
    print_tables(run(cfg, args.tracking_uri, EXPERIMENT, args.workers), variants)


if __name__ == "__main__":
    main()
