"""What the study scripts share: a sweep on development data seeds, each cell scored on validation.

The seed rule (``branchbench/seeds.py``): a study chooses defaults on
*development* data seeds by *validation* metrics only. :func:`run` refuses
other data seeds, runs the cells through the sweep (resumable, reused by
identity, ``--workers`` processes), and returns one :class:`Record` per cell
with its validation scores (what a study selects on) beside its test Δm and
grouping recovery (reported only, never a criterion).
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from branchbench.cell import load_bench
from branchbench.config import SweepConfig
from branchbench.runner import cell_states, plan_sweep, prepare_data, run_sweep
from branchbench.seeds import check_development
from branchbench.tracking import Tracking, default_uri
from branchbench.tune import validation_delta_m


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
