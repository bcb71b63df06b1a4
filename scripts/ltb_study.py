"""The Learn-to-Branch recovery study: multi-seed cells through ``run_cell``, then tables.

Every cell (learn_to_branch variants at each budget, shared_bottom,
independent, oracle_tree) is run by :func:`branchbench.cell.run_cell` into one
MLflow store (a temporary one unless ``--tracking-uri`` is given; finished cells
are reused, so a second invocation only prints), with one torch thread per cell
as in the sweep (``configs/synthetic.toml``), in ``--workers`` processes. The
tables are built from what MLflow holds:

* per variant, budget and seed: ARI of each block's partition against the true
  groups, recovered or not, Δm (vs independent) beside shared-bottom's, the
  smallest top-parent probability per child level at the end of search (over
  the children some task reaches), the co-sharing gap per block;
* per method (and budget): mean ± std of Δm over the seeds, and the recovery rate.

Usage::

    python scripts/ltb_study.py --seeds 5 --budgets 2.5 5.0 --workers 2
    python scripts/ltb_study.py --variants '[{}, {"logit_data": "holdout"}]' --tracking-uri sqlite:///study.db
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from branchbench.cell import CellConfig, run_cell
from branchbench.executors import make_executor
from branchbench.tracking import Tracking

BASELINES = ("shared_bottom", "independent", "oracle_tree")
EXPERIMENT = "ltb-study"


def _run(job: tuple[str, CellConfig]) -> tuple[CellConfig, str, str | None, str | None]:
    """One cell in a worker process (module level, so it pickles): (config, status, run id, error)."""
    uri, config = job
    outcome = run_cell(config, Tracking(uri, experiment=EXPERIMENT))
    return config, outcome.status, outcome.run_id, outcome.error


def run_study(uri: str, variants: list[dict], seeds: list[int], budgets: list[float | None],
              dataset: str = "synthetic", workers: int = 1) -> list[dict]:
    """Run every (variant, budget, seed) cell and the baselines; one record per cell.

    The ``independent`` cells (every other cell's Δm reference) run first, so no
    two workers train the same reference.
    """
    def config(method: str, options: dict, seed: int, budget: float | None) -> CellConfig:
        return CellConfig(dataset=dataset, method=method, method_options=options, seed=seed, budget=budget,
                          protocol={"threads": 1})

    first = [config("independent", {}, s, None) for s in seeds]
    rest = [config(m, {}, s, None) for s in seeds for m in BASELINES if m != "independent"]
    rest += [config("learn_to_branch", v, s, b) for b in budgets for v in variants for s in seeds]
    tracking = Tracking(uri, experiment=EXPERIMENT)
    pool = make_executor("local", workers)
    records = []
    try:
        for wave in (first, rest):
            for cfg, status, run_id, error in pool.map_unordered(_run, [(uri, c) for c in wave]):
                if status not in ("finished", "skipped"):
                    raise SystemExit(f"{cfg.method} {cfg.method_options} seed {cfg.seed} {status}: {error}")
                metrics = dict(tracking.get_run(run_id).data.metrics)
                print(f"seed {cfg.seed} {cfg.method} b{cfg.budget} {json.dumps(cfg.method_options)}: "
                      f"Δm {metrics['delta_m']:+.2f} recovered {metrics.get('grouping.recovered', float('nan')):.0f}",
                      flush=True)
                records.append({"method": cfg.method, "budget": cfg.budget, "seed": cfg.seed, "metrics": metrics,
                                "variant": json.dumps(cfg.method_options, sort_keys=True)})
    finally:
        pool.close()
    return sorted(records, key=lambda r: (r["method"], r["variant"], r["budget"] or 0.0, r["seed"]))


def _fmt(values: list[float]) -> str:
    return " ".join(f"{v:5.2f}" for v in values)


def print_tables(records: list[dict]) -> None:
    blocks = sorted({k[len("grouping.ari."):] for r in records for k in r["metrics"] if k.startswith("grouping.ari.")})
    print("\n## Per seed (learn_to_branch variants)")
    print(f"| variant | budget | seed | ARI per block ({', '.join(blocks)}) | recovered | Δm | Δm SB "
          "| min top p (reached children) | coshare gap |")
    print("|---|---|---|---|---|---|---|---|---|")
    by_seed_sb = {r["seed"]: r["metrics"]["delta_m"] for r in records if r["method"] == "shared_bottom"}
    for r in records:
        if r["method"] != "learn_to_branch":
            continue
        m = r["metrics"]
        aris = [m[f"grouping.ari.{b}"] for b in blocks]
        tops = [v for k, v in sorted(m.items()) if k.startswith("search/commitment.") and k.count(".") == 1
                and not k.endswith((".min", ".mean"))]
        gaps = [m[f"search/ltb/coshare_gap.{b}"] for b in blocks if f"search/ltb/coshare_gap.{b}" in m]
        print(f"| {r['variant']} | {r['budget']} | {r['seed']} | {_fmt(aris)} | {'yes' if m['grouping.recovered'] else 'no'} | "
              f"{m['delta_m']:+.2f} | {by_seed_sb.get(r['seed'], float('nan')):+.2f} | {_fmt(tops)} | {_fmt(gaps)} |")
    print("\n## Summary over seeds")
    print("| method | variant | budget | Δm mean ± std | recovered | n |")
    print("|---|---|---|---|---|---|")
    groups: dict[tuple[str, str, float | None], list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["variant"], r["budget"]), []).append(r["metrics"])
    for (method, variant, budget), ms in groups.items():
        dm = [m["delta_m"] for m in ms]
        std = statistics.stdev(dm) if len(dm) > 1 else 0.0
        rec = sum(m.get("grouping.recovered", 0.0) for m in ms)
        print(f"| {method} | {variant} | {budget} | {statistics.mean(dm):+.2f} ± {std:.2f} | {rec:.0f}/{len(ms)} | {len(ms)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    parser.add_argument("--variants", default="[{}]", help="JSON list of learn_to_branch option dicts")
    parser.add_argument("--budgets", type=float, nargs="*", default=[2.5, 5.0],
                        help="budget ratios for learn_to_branch (default: the synthetic sweep's 2.5 5.0)")
    parser.add_argument("--workers", type=int, default=1, help="cells run at once (processes)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: a temporary SQLite file)")
    args = parser.parse_args()
    variants = json.loads(args.variants)
    with tempfile.TemporaryDirectory() as tmp:
        uri = args.tracking_uri or f"sqlite:///{Path(tmp) / 'mlruns.db'}"
        records = run_study(uri, variants, list(range(args.seeds)), args.budgets or [None], workers=args.workers)
        print_tables(records)


if __name__ == "__main__":
    main()
