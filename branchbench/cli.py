"""The ``branchbench`` command line: argument parsing, and nothing else.

Each command imports what it needs when it runs, so ``--help`` and usage errors
answer at once (no torch, no MLflow). Bad input exits with status 2 and one
line naming the input and the fix, before any MLflow run exists; a stop by
Ctrl-C or SIGTERM marks the running work KILLED and exits 130 (143 for
SIGTERM). Output is flushed line by line whatever stdout is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_EXPERIMENT = "branchbench"  # the same as branchbench.tracking's (kept here so --help imports nothing)
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: printed without a traceback, exit status 2."""


# ------------------------------------------------------------------- parsing
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlruns.db)")
    parser.add_argument("--experiment", default=None,
                        help=f"MLflow experiment name (default: the config's, else {DEFAULT_EXPERIMENT!r})")


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative; seeds are integers >= 0")
    return value


def _budget(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"budget {text!r} is not a number (or 'none')") from None
    if not value >= 1.0:
        raise argparse.ArgumentTypeError(f"budget {text} is below 1.0; a budget is a ratio to shared-bottom's "
                                         "backbone parameters, from 1.0 (shared-bottom) to T (independent)")
    return value


def _workers(text: str) -> int:
    value = _seed(text)
    if value < 1:
        raise argparse.ArgumentTypeError("give at least 1 worker")
    return value


def _trials(text: str) -> int:
    value = _seed(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: give at least 1 trial")
    return value


def _amount(text: str) -> float:
    from branchbench.executors import check_amount

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    try:
        return check_amount(value, "")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).strip()) from None


def _port(text: str) -> int:
    value = _seed(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 .. 65535)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="branchbench",
        description="Benchmark methods that learn where a multi-task network shares and where it branches.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run one cell: search, retrain, evaluate, log to MLflow")
    run.add_argument("--dataset", help="dataset name (see `branchbench datasets`, or a name in --config)")
    run.add_argument("--method", help="method name (see `branchbench methods`, or a name in --config)")
    run.add_argument("--plan", default=None, metavar="FILE",
                     help="retrain this plan.json instead of searching (the fixed_plan method)")
    run.add_argument("--budget", type=_budget, default=None,
                     help="parameter budget: max backbone params / shared-bottom's (1.0 .. T); ignored by methods "
                          "that are not budget-aware")
    run.add_argument("--seed", type=_seed, default=None, help="training seed (default: the config's first, else 0)")
    run.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                     help="override an option: dataset.<opt>=, method.<opt>= or protocol.<opt>= (repeatable)")
    run.add_argument("--config", default=None, help="a protocol TOML file (the sweep schema); flags override it")
    run.add_argument("--finetune", action="store_true",
                     help="fine-tune the search weights instead of retraining from scratch (tagged)")
    run.add_argument("--force", action="store_true", help="run even if a finished run of this exact cell exists")
    run.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    _common(run)

    sweep = sub.add_parser("sweep", help="run every cell of a config under one MLflow parent run, then report")
    sweep.add_argument("config", help="a protocol TOML file (see configs/)")
    sweep.add_argument("--workers", type=_workers, default=None,
                       help="local: cells run at once (default: one per GPU on CUDA, else 1, in this process); "
                            "a local Ray instance: its CPUs")
    sweep.add_argument("--executor", default=None, choices=["local", "ray"],
                       help="local processes (default), or Ray (optional extra: pip install 'branchbench[ray]'); "
                            "also [executor] kind in the config")
    sweep.add_argument("--ray-address", default=None,
                       help="address of an existing Ray cluster (default: $RAY_ADDRESS, else a local Ray instance); "
                            "needs a tracking server (--tracking-uri http://...) and --checkpoint-dir")
    sweep.add_argument("--cpus-per-cell", type=_amount, default=None,
                       help="Ray: CPUs each cell asks for (default: its protocol's threads)")
    sweep.add_argument("--gpus-per-cell", type=_amount, default=None,
                       help="Ray: GPUs each cell asks for, e.g. 0.5 for two small cells per GPU (default: 1 where "
                            "the cluster has GPUs, else 0)")
    sweep.add_argument("--checkpoint-dir", default=None,
                       help="where cells keep checkpoints: a folder every node sees, for a cluster (default: "
                            "bb-checkpoints/ beside a SQLite store, else in the working directory)")
    sweep.add_argument("--dry-run", action="store_true",
                       help="list each cell as done / failed / pending and the projected time; run nothing")
    sweep.add_argument("--retry-failed", action="store_true", help="also rerun cells that failed deterministically")
    sweep.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    sweep.add_argument("--reports-dir", default="reports", help="where reports/<sweep name>/ go, one folder per dataset inside when there are several (default: %(default)s)")
    sweep.add_argument("--no-report", action="store_true", help="skip the report at the end")
    sweep.add_argument("--quiet", "-q", action="store_true", help="print only failures and the final summary")
    _common(sweep)

    report = sub.add_parser("report", help="tables and figures of a sweep, from what MLflow holds")
    report.add_argument("--config", default=None, help="the sweep's TOML file (its cells are reported)")
    report.add_argument("--parent", default=None, help="a sweep's parent run id (default: the latest sweep)")
    report.add_argument("--reports-dir", default="reports", help="where reports/<sweep name>/ go, one folder per dataset inside when there are several (default: %(default)s)")
    report.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    _common(report)

    ui = sub.add_parser("ui", help="the MLflow UI on the same store (127.0.0.1), opened on the comparison of methods")
    ui.add_argument("--port", type=_port, default=5000, help="port (default: %(default)s; 0 = any free port)")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine only)")
    _common(ui)

    server = sub.add_parser("server", help="start an MLflow tracking server for a team or a cluster "
                                            "(127.0.0.1 unless --host says otherwise)")
    server.add_argument("--backend-store-uri", default=None,
                        help="where runs are kept: sqlite:///<file> or postgresql://user@host/db "
                             "(default: sqlite:///./mlruns.db)")
    server.add_argument("--artifacts-destination", default=None,
                        help="where artifacts are kept, served through the server: a folder or s3://, gs://, ... "
                             "(default: mlartifacts/ beside the store)")
    server.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s; 0.0.0.0 for other machines)")
    server.add_argument("--port", type=_port, default=5000, help="port (default: %(default)s; 0 = any free port)")
    server.add_argument("--workers", type=_workers, default=None,
                        help="server processes (default: 1 on SQLite, 4 on another database)")
    server.add_argument("--allowed-hosts", default=None,
                        help="MLflow's --allowed-hosts: Host headers accepted, comma-separated "
                             "(default: MLflow's, localhost and private networks)")
    server.add_argument("--cors-allowed-origins", default=None,
                        help="MLflow's --cors-allowed-origins, comma-separated (default: MLflow's, localhost)")

    prepare = sub.add_parser("prepare", help="validate a dataset's files and build its cache, before any run")
    prepare.add_argument("dataset", help="dataset name (or a name in --config)")
    prepare.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                         help="dataset.<opt>=VALUE (repeatable)")
    prepare.add_argument("--config", default=None, help="a protocol TOML file naming the dataset")

    methods = sub.add_parser("methods", help="list the available methods and their options")
    methods.add_argument("--verbose", "-v", action="store_true", help="also list each method's options")
    datasets = sub.add_parser("datasets", help="list the available datasets and their options")
    datasets.add_argument("--verbose", "-v", action="store_true", help="also list each dataset's options")

    tune = sub.add_parser("tune", help="search a method's declared hyper-parameters on development data seeds "
                                       "(Optuna), select by validation, write the options as includable TOML")
    tune.add_argument("config", help="a protocol TOML file (see configs/)")
    tune.add_argument("--method", required=True, help="a method of the config (its name there)")
    tune.add_argument("--trials", type=_trials, required=True,
                      help="finished trials in the study, in all (a second call continues up to this number)")
    tune.add_argument("--dataset", default=None, help="the dataset to tune on (default: the config's only one)")
    tune.add_argument("--data-seeds", type=_seed, nargs="+", default=None, metavar="SEED",
                      help="development data seeds (default: the first two of branchbench/seeds.py's, 1000 1001); "
                           "evaluation data seeds are refused")
    tune.add_argument("--seeds", type=_seed, nargs="+", default=None, metavar="SEED",
                      help="training seeds (default: the config's)")
    tune.add_argument("--sampler-seed", type=_seed, default=0, help="seed of the TPE sampler (default: %(default)s)")
    tune.add_argument("--out", default=None, metavar="FILE",
                      help="where the chosen options go (default: tuned/<config>/<method>.toml beside the config)")
    tune.add_argument("--optuna-storage", default=None, metavar="URI",
                      help="Optuna RDB storage (default: sqlite:///<MLflow store folder>/optuna.db; required when "
                           "the MLflow store is not a SQLite file)")
    tune.add_argument("--workers", type=_workers, default=1, help="cells run at once (default 1: in this process)")
    tune.add_argument("--executor", default="local", choices=["local", "ray"], help="as for sweep")
    tune.add_argument("--ray-address", default=None, help="address of an existing Ray cluster")
    tune.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    _common(tune)

    evaluate = sub.add_parser("evaluate", help="rebuild a finished run from its plan and weights, score it again, "
                                               "and compare with the logged scores")
    evaluate.add_argument("run_id", help="the MLflow run id of a finished cell run")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--device", default=None)
    _common(evaluate)
    return parser


# ------------------------------------------------------------------ commands
def _overrides(assignments: list[str]) -> dict[str, dict[str, Any]]:
    from branchbench.config import parse_assignment

    out: dict[str, dict[str, Any]] = {"dataset": {}, "method": {}, "protocol": {}}
    for text in assignments:
        section, key, value = parse_assignment(text)
        out[section][key] = value
    return out


def _experiment(args: argparse.Namespace, cfg: Any = None) -> str:
    if args.experiment:
        return args.experiment
    return (cfg.experiment if cfg is not None else None) or DEFAULT_EXPERIMENT


def _tracking(args: argparse.Namespace, cfg: Any = None):
    from branchbench.tracking import Tracking

    return Tracking(args.tracking_uri, _experiment(args, cfg))


def _pick(names: list[str], given: str | None, what: str, source: str) -> str:
    if given is not None:
        return given
    if len(names) != 1:
        raise UsageError(f"{source} names {what}s {sorted(names)}; choose one with --{what}")
    return names[0]


def _plan_text(path: str) -> str:
    import json

    from branchbench.core.plan import Plan, PlanError

    try:
        text = Path(path).read_text()
        Plan.from_dict(json.loads(text))
    except OSError as err:
        raise UsageError(f"--plan {path}: cannot read it ({err.strerror or err}); give a plan.json file") from None
    except (ValueError, TypeError, KeyError, PlanError) as err:
        raise UsageError(f"--plan {path}: not a valid plan.json ({err}); see the Plan format in README.md") from None
    return text


def cmd_run(args: argparse.Namespace) -> int:
    from branchbench.config import Component, cell_configs, load_config, single_config
    from branchbench.resolve import resolve
    from branchbench.runner import prepare_data

    if args.plan is not None and args.method not in (None, "fixed_plan"):
        raise UsageError("give either --method or --plan (which retrains the plan with the fixed_plan method)")
    method = "fixed_plan" if args.plan is not None else args.method
    if args.config:
        cfg = load_config(args.config)
        dataset = _pick(list(cfg.datasets), args.dataset, "dataset", args.config)
        if method == "fixed_plan" and "fixed_plan" not in cfg.methods:
            cfg.methods["fixed_plan"] = Component("fixed_plan")
        method = _pick(list(cfg.methods), method, "method", args.config)
        if dataset not in cfg.datasets:
            cfg.datasets[dataset] = Component(dataset)
        if method not in cfg.methods:
            cfg.methods[method] = Component(method)
    else:
        if args.dataset is None or method is None:
            raise UsageError("give --dataset and --method (or --plan), or a --config naming one of each")
        dataset = args.dataset
        cfg = single_config(dataset, method)
    overrides = _overrides(args.assignments)
    if args.plan is not None:
        overrides["method"]["plan"] = _plan_text(args.plan)
    if cfg.data_seeds and "data_seed" not in overrides["dataset"]:
        overrides["dataset"]["data_seed"] = cfg.data_seeds[0]
    cfg.data_seeds = None
    budgets = [args.budget] if args.budget is not None else [cfg.budgets[0]]
    seeds = [args.seed] if args.seed is not None else [cfg.seeds[0]]
    [config] = cell_configs(cfg, datasets=[dataset], methods=[method], budgets=budgets, seeds=seeds,
                            overrides=overrides, finetune=args.finetune or None)
    cell = resolve(config)
    prepare_data([cell] + [dep for _, dep in cell.needs])
    tracking = _tracking(args, cfg)

    from branchbench.cell import run_cell

    print(f"cell {cell.name} (config {cell.hash}) -> {tracking.uri}", file=sys.stderr, flush=True)
    outcome = run_cell(cell, tracking, device=args.device, force=args.force, show_progress=sys.stderr.isatty())
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
    shown.update({k: v for k, v in m.items() if k.startswith("test.") and k.count(".") == 2
                  and k.rsplit(".", 1)[-1] in ("accuracy", "mse", "error")})
    width = max(map(len, shown), default=0)
    for k, v in shown.items():
        print(f"  {k:<{width}}  {v:.6g}")
    print(f"browse: branchbench ui --tracking-uri {tracking.uri}")


def _sweep_settings(args: argparse.Namespace, cfg: Any):
    """The config's [executor] table, overridden by flags; refusals that need no cluster come first."""
    import os

    from branchbench.executors import settings_from_config
    from branchbench.tracking import check_uri, default_uri, sqlite_path

    settings = settings_from_config(cfg.raw.get("executor"), cfg.source).replace(
        kind=args.executor, workers=args.workers, cpus_per_cell=args.cpus_per_cell,
        gpus_per_cell=args.gpus_per_cell, checkpoint_dir=args.checkpoint_dir)
    if settings.kind != "ray":
        given = [flag for flag, value in (("--ray-address", args.ray_address), ("--cpus-per-cell", args.cpus_per_cell),
                                          ("--gpus-per-cell", args.gpus_per_cell)) if value is not None]
        if given:
            raise UsageError(f"{', '.join(given)} applies to --executor ray; the local executor runs --workers "
                             "cells at once (one per GPU by default)")
        return settings
    address = args.ray_address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        return settings
    label = f"--ray-address {args.ray_address}" if args.ray_address else f"RAY_ADDRESS={address}"
    uri = args.tracking_uri or default_uri()
    check_uri(uri)
    if sqlite_path(uri) is not None:
        raise UsageError(f"{label} with the SQLite store {uri}: cells on other machines cannot write a local file; "
                         "start a tracking server (`branchbench server`) and give its http:// URI with "
                         "--tracking-uri")
    if args.workers is not None:
        raise UsageError(f"--workers with {label}: a cluster runs as many cells as its resources allow; ask for "
                         "resources per cell with --cpus-per-cell / --gpus-per-cell")
    if settings.checkpoint_dir is None:
        raise UsageError(f"{label}: give --checkpoint-dir (or [executor] checkpoint_dir) on storage every node "
                         "sees, so a cell whose node dies resumes from its checkpoint on another")
    return settings.replace(address=address)


def cmd_sweep(args: argparse.Namespace) -> int:
    from branchbench.config import load_config
    from branchbench.executors import make_executor
    from branchbench.runner import dry_run, plan_sweep, prepare_data, run_sweep
    from branchbench.tracking import Tracking

    cfg = load_config(args.config)
    cells = plan_sweep(cfg)  # every cell resolved and checked before the store is touched
    settings = _sweep_settings(args, cfg)
    try:
        pool = None if args.dry_run else make_executor(settings, device=args.device)
    except (RuntimeError, ValueError) as err:
        raise UsageError(str(err)) from None
    try:
        tracking = Tracking(args.tracking_uri, _experiment(args, cfg), settings.checkpoint_dir)
        if pool is None:
            from branchbench.executors import gpu_count, local_devices

            workers = settings.workers or (len(local_devices(args.device, gpu_count())) if settings.kind == "local"
                                           else 1)
            dry_run(cfg, tracking, args.retry_failed, workers=workers, cells=cells)
            return 0
        prepare_data(cells)
        result = run_sweep(cfg, tracking, executor=pool, retry_failed=args.retry_failed, device=args.device,
                           quiet=args.quiet, cells=cells)
    finally:
        if pool is not None:
            pool.close()
    if not args.no_report:
        _report(tracking, result.parent_run_id, args.reports_dir, log=True, sweep_name=cfg.name)
    from branchbench.ui import save_view

    save_view(tracking)  # the UI's comparison view now shows this sweep's metrics
    for item in result.failed:
        print(f"FAILED {item.cell.name} ({item.failure_kind}): {item.error}", file=sys.stderr)
    done = sum(r.status in ("finished", "skipped") for r in result.results)
    print(f"sweep {cfg.name}: {done} done, {len(result.failed)} failed; parent run {result.parent_run_id}")
    return result.exit_status


def cmd_report(args: argparse.Namespace) -> int:
    from branchbench.config import load_config

    if args.config is not None and args.parent is not None:
        raise UsageError("give at most one of --config CONFIG or --parent RUN_ID")
    cfg = load_config(args.config) if args.config else None
    cells = None
    if cfg is not None:
        from branchbench.runner import plan_sweep, sweep_hash

        cells = plan_sweep(cfg)
    tracking = _tracking(args, cfg)
    parent = args.parent
    if cells is not None:
        found = tracking.runs(f"tags.`bb.kind` = 'sweep' and tags.`bb.sweep` = '{sweep_hash(cells)}'")
        parent = found[0].info.run_id if found else None
    elif parent is None:
        found = tracking.runs("tags.`bb.kind` = 'sweep'")
        if not found:
            raise UsageError(f"no sweep in experiment {tracking.experiment_name!r} of {tracking.uri}; run "
                             "`branchbench sweep CONFIG` first, or give --experiment / --tracking-uri")
        parent = found[0].info.run_id
        print(f"reporting the latest sweep: {found[0].info.run_name} (parent run {parent})")
    else:
        try:
            run = tracking.get_run(parent)
        except Exception:
            raise UsageError(f"no run {parent!r} in {tracking.uri}; give a sweep's parent run id") from None
        if run.data.tags.get("bb.kind") != "sweep":
            raise UsageError(f"run {parent} is not a sweep's parent run; give a sweep's parent run id")
    _report(tracking, parent, args.reports_dir, log=not args.no_log,
            cells=[c.describe() for c in cells] if cells is not None else None,
            sweep_name=cfg.name if cfg is not None else None)
    return 0


def _report(tracking: Any, parent: str | None, reports_dir: str, log: bool, cells: list | None = None,
            sweep_name: str | None = None) -> None:
    from branchbench.reports.build import build_reports

    written = build_reports(tracking, parent, Path(reports_dir), cells=cells, log=log and parent is not None,
                            sweep_name=sweep_name)
    for path in written:
        print(f"wrote {path}")


def cmd_ui(args: argparse.Namespace) -> int:
    from branchbench.ui import serve

    return serve(args.tracking_uri, _experiment(args), port=args.port, host=args.host)


def cmd_server(args: argparse.Namespace) -> int:
    from branchbench.server import serve

    return serve(args.backend_store_uri, args.artifacts_destination, port=args.port, host=args.host,
                 workers=args.workers, allowed_hosts=args.allowed_hosts, cors_origins=args.cors_allowed_origins)


def cmd_prepare(args: argparse.Namespace) -> int:
    from branchbench.config import Component, load_config
    from branchbench.plugins import create_dataset
    from branchbench.resolve import CellConfig, resolve
    from branchbench.runner import prepare_data

    component = Component(args.dataset)
    if args.config:
        cfg = load_config(args.config)
        component = cfg.datasets.get(args.dataset, component)
    options = {**component.options, **_overrides(args.assignments)["dataset"]}
    create_dataset(component.kind, **options)  # options first, with their own message
    cell = resolve(CellConfig(args.dataset, "shared_bottom", options, dataset_kind=component.kind,
                              method_kind="shared_bottom"))
    prepare_data([cell])
    print(f"dataset {args.dataset}: files valid, ready (data key {cell.data_key})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from branchbench import plugins

    kind = args.command
    names = plugins.list_methods() if kind == "methods" else plugins.list_datasets()
    get = plugins.get_method_class if kind == "methods" else plugins.get_dataset_class
    for name in names:
        cls = get(name)
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip().splitlines()
        extra = " [budget-aware]" if getattr(cls, "budget_aware", False) else ""
        print(f"{name:<20}{extra} {doc[0] if doc else ''}")
        if args.verbose:
            for opt, spec in cls.options.items():
                print(f"    {opt} ({spec.describe()}): {spec.help}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    import os
    import warnings

    from branchbench.config import load_config
    from branchbench.seeds import SeedError, SeedWarning
    from branchbench.tracking import Tracking, check_uri, default_uri
    from branchbench.tune import TuneError, default_output, make_request, optuna_storage, tune

    with warnings.catch_warnings():  # tuning draws its own (development) data seeds, not the config's
        warnings.simplefilter("ignore", SeedWarning)
        cfg = load_config(args.config)
    try:
        request = make_request(cfg, args.method, args.trials, args.dataset, args.data_seeds, args.seeds,
                               args.sampler_seed)
        uri = args.tracking_uri or default_uri()
        check_uri(uri)
        storage = optuna_storage(uri, args.optuna_storage)
    except (TuneError, SeedError) as err:
        raise UsageError(str(err)) from None
    searched = sorted(set(request.space()) & set(request.component.options))
    if searched and request.component.tuning is None:
        print(f"note: {args.config} sets {args.method} options {searched} that tuning searches; remove them from "
              "the config before including the tuned file", file=sys.stderr)
    tracking = Tracking(uri, args.experiment or f"{cfg.experiment or DEFAULT_EXPERIMENT}-tune")
    output = Path(args.out) if args.out else default_output(cfg, args.method)
    result = tune(request, tracking, storage, output, executor=args.executor, workers=args.workers,
                  address=args.ray_address, device=args.device)
    if result.best_trial is None:
        print(f"tune {args.method}: none of the {result.finished} trials finished; nothing written "
              f"(study {result.study})", file=sys.stderr)
        return 1
    include = os.path.relpath(output.resolve(), Path(cfg.source).resolve().parent)
    options = ", ".join(f"{k}={v!r}" for k, v in result.best_options.items())
    print(f"tune {args.method}: best of {result.finished} trials is trial {result.best_trial} "
          f"(validation Δm {result.best_value:+.3f}%): {options}")
    print(f"wrote {output}; include it from {args.config} with [sweep] include = [\"{include}\"]")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import math

    from branchbench.cell import evaluate_run

    tracking = _tracking(args)
    scores = evaluate_run(tracking, args.run_id, args.split, args.device)
    logged = tracking.get_run(args.run_id).data.metrics
    width = max(map(len, scores), default=0)
    differing = []
    for key, value in sorted(scores.items()):
        old = logged.get(key)
        if old is None:
            note = "not logged"
        elif math.isclose(value, old, rel_tol=1e-6, abs_tol=1e-9):
            note = "matches the logged score"
        else:
            note = f"logged {old:.6g}, differs by {value - old:+.3g}"
            differing.append(key)
        print(f"  {key:<{width}}  {value:.6g}  {note}")
    if differing:
        print(f"{len(differing)} of {len(scores)} scores differ from the logged ones (beyond 1e-6 relative)")
        return 1
    print(f"all {len(scores)} {args.split} scores match the logged ones")
    return 0


HANDLERS = {"run": cmd_run, "sweep": cmd_sweep, "report": cmd_report, "ui": cmd_ui, "server": cmd_server,
            "prepare": cmd_prepare, "methods": cmd_list, "datasets": cmd_list, "evaluate": cmd_evaluate,
            "tune": cmd_tune}


def _refusals() -> tuple[type[BaseException], ...]:
    """The errors that mean bad input (exit 2, one line); imported once a command has run."""
    from branchbench.config import ConfigError
    from branchbench.core.budget import BudgetError
    from branchbench.core.options import OptionError
    from branchbench.core.plan import PlanError
    from branchbench.datasets.base import DataError
    from branchbench.plugins import RegistryError
    from branchbench.resolve import CellError
    from branchbench.tracking import TrackingError
    from branchbench.ui import UIError

    return (UsageError, ConfigError, OptionError, RegistryError, BudgetError, PlanError, CellError, DataError,
            TrackingError, UIError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2), already printed by argparse
        return int(stop.code or 0)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(line_buffering=True)

    import warnings

    from branchbench import interrupts

    warnings.filterwarnings("ignore", module="mlflow")
    try:
        with interrupts.sigterm_raises():
            return HANDLERS[args.command](args)
    except KeyboardInterrupt as err:
        print(f"branchbench {args.command}: {interrupts.reason(err)}", file=sys.stderr)
        return 143 if isinstance(err, interrupts.Terminated) else 130
    except Exception as err:
        if isinstance(err, _refusals()):
            print(f"branchbench {args.command}: error: {err}", file=sys.stderr)
            return EXIT_USAGE
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
