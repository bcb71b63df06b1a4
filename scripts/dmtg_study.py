"""DMTG's grouping recovery on the default synthetic data, K = the number of true groups.

Runs ``seeds`` cells through :func:`branchbench.cell.run_cell` into a throwaway
MLflow store (or ``--store``) and prints, per seed, the adjusted Rand index of
each block's partition against the truth and whether the grouping was
recovered, then the recovery rate::

    python scripts/dmtg_study.py --seeds 5
    python scripts/dmtg_study.py --set shared_blocks=1 --set logit_lr_mult=3
"""

from __future__ import annotations

import argparse
import ast
import tempfile
from pathlib import Path

from branchbench.cell import CellConfig, run_cell
from branchbench.plugins import create_dataset
from branchbench.tracking import Tracking, default_uri


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--store", default=None, help="folder of the MLflow store (default: a temporary one)")
    parser.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="a dmtg option, e.g. shared_blocks=1")
    args = parser.parse_args()
    options = {}
    for item in args.options:
        key, _, value = item.partition("=")
        options[key] = ast.literal_eval(value)
    dataset = create_dataset("synthetic")
    options.setdefault("k", dataset.params["groups"])
    store = Path(args.store or tempfile.mkdtemp(prefix="dmtg-study-"))
    tracking = Tracking(default_uri(store), experiment="dmtg-study")
    rows = []
    for seed in range(args.seeds):
        outcome = run_cell(CellConfig("synthetic", "dmtg", method_options=dict(options), seed=seed), tracking)
        if outcome.status not in ("finished", "skipped"):
            raise SystemExit(f"seed {seed}: the cell {outcome.status}: {outcome.error}")
        m = outcome.metrics
        aris = {k[len("grouping.ari."):]: v for k, v in m.items() if k.startswith("grouping.ari.")}
        rows.append((seed, m["grouping.recovered"], aris, m.get("search.commitment"), m.get("delta_m")))
        print(f"seed {seed}: recovered={m['grouping.recovered']:.0f} ari={ {k: round(v, 3) for k, v in aris.items()} } "
              f"commitment={m.get('search.commitment', float('nan')):.3f} delta_m={m.get('delta_m', float('nan')):.2f}",
              flush=True)
    rate = sum(r[1] for r in rows)
    print(f"options {options}: recovered {rate:.0f} of {len(rows)}; store {store}")


if __name__ == "__main__":
    main()
