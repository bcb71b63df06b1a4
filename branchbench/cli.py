"""The ``branchbench`` command line.

``run`` executes one cell, ``methods`` / ``datasets`` list what is installed,
``evaluate`` rebuilds a finished run and scores it again. Every command takes
``--tracking-uri`` (default: ``MLFLOW_TRACKING_URI``, else ``./mlruns.db``)
and ``--experiment``. Bad input exits with status 2 and one message naming
the problem and the fix.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from branchbench.tracking import DEFAULT_EXPERIMENT

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: printed without a traceback, exit status 2."""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite ./mlruns.db)")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="branchbench",
        description="Benchmark methods that learn where a multi-task network shares and where it branches.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run one cell: search, retrain, evaluate, log to MLflow")
    run.add_argument("--dataset", help="dataset name (see `branchbench datasets`)")
    run.add_argument("--method", help="method name (see `branchbench methods`)")
    run.add_argument("--budget", type=_budget, default=None, help="parameter budget: max backbone params / shared-bottom's (1.0 .. T); ignored by methods that are not budget-aware")
    run.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    run.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                     help="override an option: dataset.<opt>=, method.<opt>= or protocol.<opt>= (repeatable)")
    run.add_argument("--config", default=None, help="a protocol TOML file (the sweep schema); flags override it")
    run.add_argument("--finetune", action="store_true", help="fine-tune the search weights instead of retraining from scratch (tagged)")
    run.add_argument("--force", action="store_true", help="run even if a finished run of this exact config exists")
    run.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    _common(run)

    methods = sub.add_parser("methods", help="list the available methods and their options")
    methods.add_argument("--verbose", "-v", action="store_true", help="also list each method's options")
    datasets = sub.add_parser("datasets", help="list the available datasets and their options")
    datasets.add_argument("--verbose", "-v", action="store_true", help="also list each dataset's options")

    evaluate = sub.add_parser("evaluate", help="reload a finished run's plan and weights and evaluate it")
    evaluate.add_argument("run_id", help="the MLflow run id")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--device", default=None)
    _common(evaluate)

    _add_extra_commands(sub)
    return parser


def _add_extra_commands(sub: Any) -> None:
    """Commands of other modules (sweep, report, ui) register here when present."""
    try:
        from branchbench import runner
    except ImportError:
        return
    runner.add_commands(sub, _common)


def _budget(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget {text!r} is not a number (or 'none')") from None


# ------------------------------------------------------------------ commands
def cmd_run(args: argparse.Namespace) -> int:
    from branchbench.cell import CellConfig, resolve, run_cell
    from branchbench.config import load_config, parse_assignment
    from branchbench.tracking import Tracking

    dataset_options: dict[str, Any] = {}
    method_options: dict[str, Any] = {}
    protocol: dict[str, Any] = {}
    dataset, method, budget, seed, finetune = args.dataset, args.method, args.budget, args.seed, args.finetune
    experiment = args.experiment
    if args.config:
        cfg = load_config(args.config)
        if dataset is None:
            if len(cfg.datasets) != 1:
                raise UsageError(f"{args.config} names datasets {sorted(cfg.datasets)}; choose one with --dataset")
            dataset = next(iter(cfg.datasets))
        if method is None:
            if len(cfg.methods) != 1:
                raise UsageError(f"{args.config} names methods {sorted(cfg.methods)}; choose one with --method")
            method = next(iter(cfg.methods))
        dataset_options.update(cfg.datasets.get(dataset, {}))
        method_options.update(cfg.methods.get(method, {}))
        protocol.update(cfg.protocol)
        budget = budget if budget is not None else cfg.budgets[0]
        seed = seed if seed is not None else cfg.seeds[0]
        finetune = finetune or cfg.finetune
        if experiment == DEFAULT_EXPERIMENT and cfg.experiment:
            experiment = cfg.experiment
    if dataset is None or method is None:
        raise UsageError("give --dataset and --method (or a --config naming one of each)")
    targets = {"dataset": dataset_options, "method": method_options, "protocol": protocol}
    for text in args.assignments:
        section, key, value = parse_assignment(text)
        targets[section][key] = value
    config = CellConfig(dataset, method, dataset_options, method_options, budget, seed or 0, protocol, finetune)
    cell = resolve(config)
    tracking = Tracking(args.tracking_uri, experiment)
    print(f"cell {cell.name} (config {cell.hash}) -> {tracking.uri}", file=sys.stderr)
    outcome = run_cell(cell, tracking, device=args.device, force=args.force, show_progress=True)
    if outcome.status == "failed":
        print(f"FAILED run {outcome.run_id}: {outcome.error}", file=sys.stderr)
        return 1
    if outcome.status == "busy":
        print(f"cell {cell.hash} is being run by another process; try again when it ends", file=sys.stderr)
        return 1
    _print_summary(outcome, tracking)
    return 0


def _print_summary(outcome: Any, tracking: Any) -> None:
    m = outcome.metrics
    verb = "already finished (skipped; --force reruns it)" if outcome.status == "skipped" else "finished"
    print(f"run {outcome.run_id} {verb}")
    keys = ["delta_m", "params", "budget_ratio", "flops", "search_seconds", "train_seconds", "grouping.recovered"]
    shown = {k: m[k] for k in keys if k in m}
    shown.update({k: v for k, v in m.items() if k.startswith("test.") and k.count(".") == 2 and _is_main(k)})
    width = max(map(len, shown), default=0)
    for k, v in shown.items():
        print(f"  {k:<{width}}  {v:.6g}")
    print(f"browse: branchbench ui --tracking-uri {tracking.uri}")


def _is_main(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in ("accuracy", "mse")


def cmd_list(args: argparse.Namespace, kind: str) -> int:
    from branchbench import plugins

    names = plugins.list_methods() if kind == "methods" else plugins.list_datasets()
    get = plugins.get_method_class if kind == "methods" else plugins.get_dataset_class
    for name in names:
        cls = get(name)
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        extra = ""
        if kind == "methods":
            extra = " [budget-aware]" if cls.budget_aware else ""
        print(f"{name:<20}{extra} {doc[0] if doc else ''}")
        if args.verbose:
            for opt, spec in cls.options.items():
                allowed = f" one of {list(spec.choices)}" if spec.choices else ""
                print(f"    {opt} = {spec.default!r}{allowed}: {spec.help}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from branchbench.cell import evaluate_run
    from branchbench.tracking import Tracking

    tracking = Tracking(args.tracking_uri, args.experiment)
    try:
        tracking.get_run(args.run_id)
    except Exception as err:
        raise UsageError(f"no run {args.run_id!r} in {tracking.uri}: {err}") from None
    metrics = evaluate_run(tracking, args.run_id, args.split, args.device)
    print(json.dumps(metrics, indent=1, sort_keys=True))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", module="mlflow")
    from branchbench.cell import CellError
    from branchbench.config import ConfigError
    from branchbench.core.budget import BudgetError
    from branchbench.core.method import OptionError
    from branchbench.core.plan import PlanError
    from branchbench.plugins import RegistryError

    handlers = {"run": cmd_run, "evaluate": cmd_evaluate,
                "methods": lambda a: cmd_list(a, "methods"), "datasets": lambda a: cmd_list(a, "datasets")}
    handler = handlers.get(args.command) or getattr(args, "handler", None)
    try:
        return handler(args)
    except (UsageError, ConfigError, OptionError, RegistryError, BudgetError, PlanError, CellError) as err:
        print(f"branchbench {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
