"""The Learn-to-Branch recovery study: multi-seed cells through ``run_cell``, then tables.

Every cell (learn_to_branch variants, shared_bottom, independent, oracle_tree)
is run by :func:`branchbench.cell.run_cell` into one MLflow store (a temporary
one unless ``--tracking-uri`` is given; finished cells are reused, so a second
invocation only prints). The tables are built from what MLflow holds:

* per variant and seed: ARI of each block's partition against the true groups,
  recovered or not, Δm (vs independent) beside shared-bottom's, the smallest
  top-parent probability per child block at the end of search (over the
  children some task reaches), the co-sharing gap per block;
* per method: mean ± std of Δm over the seeds, and the recovery rate.

Usage::

    python scripts/ltb_study.py --seeds 5
    python scripts/ltb_study.py --variants '[{}, {"logit_data": "holdout"}]' --tracking-uri sqlite:///study.db
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from branchbench.cell import CellConfig, run_cell
from branchbench.tracking import Tracking

BASELINES = ("shared_bottom", "independent", "oracle_tree")


def run_study(tracking: Tracking, variants: list[dict], seeds: list[int], dataset: str = "synthetic",
              budget: float | None = None) -> list[dict]:
    """Run every (variant, seed) cell and the baselines; one record per cell."""
    records = []
    cells = [(m, {}) for m in BASELINES] + [("learn_to_branch", v) for v in variants]
    for seed in seeds:
        for method, options in cells:
            config = CellConfig(dataset=dataset, method=method, method_options=options, seed=seed,
                                budget=budget if method == "learn_to_branch" else None)
            outcome = run_cell(config, tracking)
            if outcome.status not in ("finished", "skipped"):
                raise SystemExit(f"{method} {options} seed {seed} {outcome.status}: {outcome.error}")
            metrics = dict(tracking.get_run(outcome.run_id).data.metrics)
            print(f"seed {seed} {method} {json.dumps(options)}: Δm {metrics['delta_m']:+.2f} "
                  f"recovered {metrics.get('grouping.recovered', float('nan')):.0f}", flush=True)
            records.append({"method": method, "variant": json.dumps(options, sort_keys=True), "seed": seed,
                            "metrics": metrics})
    return records


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:5.2f}" for v in values)


def print_tables(records: list[dict]) -> None:
    blocks = sorted({k[len("grouping.ari."):] for r in records for k in r["metrics"] if k.startswith("grouping.ari.")})
    print("\n## Per seed (learn_to_branch variants)")
    print(f"| variant | seed | ARI per block ({', '.join(blocks)}) | recovered | Δm | Δm SB | min top p (reached children) | coshare gap |")
    print("|---|---|---|---|---|---|---|---|")
    by_seed_sb = {r["seed"]: r["metrics"]["delta_m"] for r in records if r["method"] == "shared_bottom"}
    for r in records:
        if r["method"] != "learn_to_branch":
            continue
        m = r["metrics"]
        aris = [m[f"grouping.ari.{b}"] for b in blocks]
        tops = [v for k, v in sorted(m.items()) if k.startswith("search/ltb/min_top_prob_used.")]
        gaps = [m[f"search/ltb/coshare_gap.{b}"] for b in blocks if f"search/ltb/coshare_gap.{b}" in m]
        print(f"| {r['variant']} | {r['seed']} | {_fmt(aris)} | {'yes' if m['grouping.recovered'] else 'no'} | "
              f"{m['delta_m']:+.2f} | {by_seed_sb.get(r['seed'], float('nan')):+.2f} | {_fmt(tops)} | {_fmt(gaps)} |")
    print("\n## Summary over seeds")
    print("| method | variant | Δm mean ± std | recovered | n |")
    print("|---|---|---|---|---|")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["variant"]), []).append(r["metrics"])
    for (method, variant), ms in groups.items():
        dm = [m["delta_m"] for m in ms]
        std = statistics.stdev(dm) if len(dm) > 1 else 0.0
        rec = sum(m.get("grouping.recovered", 0.0) for m in ms)
        print(f"| {method} | {variant} | {statistics.mean(dm):+.2f} ± {std:.2f} | {rec:.0f}/{len(ms)} | {len(ms)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--variants", default="[{}]", help="JSON list of learn_to_branch option dicts")
    parser.add_argument("--budget", type=float, default=None, help="budget ratio for learn_to_branch")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: a temporary SQLite file)")
    args = parser.parse_args()
    variants = json.loads(args.variants)
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.tracking_uri or f"sqlite:///{Path(tmp) / 'mlruns.db'}"
        records = run_study(Tracking(uri, experiment="ltb-study"), variants, list(range(args.seeds)),
                            budget=args.budget)
        print_tables(records)


if __name__ == "__main__":
    main()
