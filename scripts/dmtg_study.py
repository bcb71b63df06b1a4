"""DMTG on the default synthetic data, K = the number of true groups, on development data seeds.

Runs DMTG (with the given ``--set`` options) and the independent networks on
*development* data seeds x training seeds through the sweep into a throwaway
MLflow store (or ``--store``). The seed rule (``branchbench/seeds.py``): option
sets are compared by their **mean validation Δm** (against the independent
networks, from ``val.*`` metrics), the line this script ends with. The
adjusted Rand index of each block's partition against the true groups, the
recovery of the grouping, the commitment and the test Δm are printed per cell
as *reported* quantities; they choose nothing::

    python scripts/dmtg_study.py --seeds 3
    python scripts/dmtg_study.py --set shared_blocks=1 --set logit_lr_mult=3
"""

from __future__ import annotations

import argparse
import ast
import statistics

from _study import mean_std, run

from branchbench.config import Component, SweepConfig
from branchbench.plugins import create_dataset
from branchbench.seeds import check_development, development_seeds
from branchbench.tracking import default_uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    parser.add_argument("--data-seeds", type=int, nargs="+", default=development_seeds(2),
                        help="development data seeds (default: %(default)s)")
    parser.add_argument("--store", default=None, help="folder of the MLflow store (default: a temporary one)")
    parser.add_argument("--workers", type=int, default=1, help="cells run at once (processes)")
    parser.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="a dmtg option, e.g. shared_blocks=1")
    args = parser.parse_args()
    options = {}
    for item in args.options:
        key, _, value = item.partition("=")
        options[key] = ast.literal_eval(value)
    options.setdefault("k", create_dataset("synthetic").params["groups"])
    cfg = SweepConfig(name="dmtg-study", seeds=list(range(args.seeds)), budgets=[None], protocol={"threads": 1},
                      datasets={"synthetic": Component("synthetic")},
                      methods={"dmtg": Component("dmtg", options)},
                      data_seeds=check_development(args.data_seeds, "--data-seeds"))
    records = [r for r in run(cfg, default_uri(args.store) if args.store else None, "dmtg-study", args.workers)
               if r.method == "dmtg"]
    for r in records:
        m = r.metrics
        aris = {k[len("grouping.ari."):]: round(v, 3) for k, v in m.items() if k.startswith("grouping.ari.")}
        print(f"data seed {r.data_seed} seed {r.seed}: val Δm {r.val_delta_m:+.2f} | reported: recovered="
              f"{m['grouping.recovered']:.0f} ari={aris} commitment={m.get('search.commitment', float('nan')):.3f} "
              f"test Δm {m['delta_m']:+.2f}", flush=True)
    recovered = sum(r.metrics["grouping.recovered"] for r in records)
    print(f"options {options}: val Δm {mean_std([r.val_delta_m for r in records])} (criterion, n={len(records)}, "
          f"mean {statistics.fmean(r.val_delta_m for r in records):+.3f}); reported: recovered {recovered:.0f} "
          f"of {len(records)}, test Δm {mean_std([r.metrics['delta_m'] for r in records])}")


if __name__ == "__main__":
    main()
