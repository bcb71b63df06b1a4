"""Per-cell overhead of the Ray executor against the local one, on the same tiny sweep, side by side.

Every executor runs the same sweep (``configs/smoke.toml`` by default: 8 cells,
2 epochs each on tiny synthetic data, so the overhead is most of a cell's time)
into its own experiment of one MLflow tracking server on loopback, so the store
and its claims are the same for all; rounds alternate the executors::

    python benchmarks/ray_overhead.py                 # local x1, local x2, Ray (2 CPUs), 3 rounds
    python benchmarks/ray_overhead.py --rounds 3 --config configs/smoke.toml

Columns, per executor and round: ``wall`` (the sweep's wall time, its
parent run included, the report not),
``per cell`` (wall / cells), ``in cell`` (mean time a cell spent inside
``execute_job`` on its worker: claim, training, logging), ``outside`` (per
cell, wall x slots / cells - in cell: what scheduling, worker start and
transfer cost, spread over the cells that ran at once). Ray's start
(``ray.init``, a local instance with 2 CPUs, no dashboard) is printed
separately: a sweep pays it once.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from branchbench.config import load_config
from branchbench.runner import plan_sweep, run_sweep
from branchbench.server import TrackingServer
from branchbench.tracking import Tracking, default_uri

EXECUTORS = (("local x1", "local", 1), ("local x2", "local", 2), ("ray x2", "ray", 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/smoke.toml")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import ray

    cfg = load_config(args.config)
    cells = plan_sweep(cfg)
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in EXECUTORS}
    with tempfile.TemporaryDirectory() as tmp:
        server = TrackingServer(default_uri(tmp), (Path(tmp) / "artifacts").as_uri(), workers=1).start()
        try:
            start = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20)
            print(f"ray.init (local, 2 CPUs, no dashboard): {time.perf_counter() - start:.1f} s")
            for round_ in range(args.rounds):
                for name, kind, workers in EXECUTORS:
                    tracking = Tracking(server.base_url, f"{name}-{round_}".replace(" ", ""),
                                        checkpoint_dir=Path(tmp) / "checkpoints")
                    start = time.perf_counter()
                    result = run_sweep(cfg, tracking, executor=kind, workers=workers, quiet=True,
                                       out=lambda _: None, cells=cells)
                    wall = time.perf_counter() - start
                    assert result.exit_status == 0, [r.error for r in result.failed]
                    inside = statistics.mean(r.seconds for r in result.results)
                    rows[name].append((wall, inside))
                    print(f"round {round_}: {name}: {wall:.1f} s", flush=True)
        finally:
            ray.shutdown()
            server.stop()
    n = len(cells)
    print(f"\n{args.config}: {n} cells, one tracking server on loopback; round 0 is cold (worker processes start "
          "and import torch), later rounds reuse Ray's workers (a long-lived cluster) but not the local pool's")
    print(f"{'executor':<10} {'round':>5} {'wall (s)':>9} {'per cell':>9} {'in cell':>8} {'outside':>8}")
    for name, _, workers in EXECUTORS:
        for round_, (wall, inside) in enumerate(rows[name]):
            print(f"{name:<10} {round_:>5} {wall:9.1f} {wall / n:9.2f} {inside:8.2f} {wall * workers / n - inside:8.2f}")


if __name__ == "__main__":
    main()
