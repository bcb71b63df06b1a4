"""One command per real-data comparison: data check, cache, sweep, report (what ``tox -e celeba`` runs).

    python -m branchbench.bench_envs celeba [--smoke] [--config celeba9|celeba40|FILE] [--root DIR]
        [--methods a,b] [--seeds 0,1] [--budgets 2,3] [--work DIR] [sweep options: --device, --workers, ...]

1. **Data check.** The files must be under ``--root`` or the benchmark's
   environment variable (``CELEBA_ROOT``). Without them the command prints
   one message (where to get the data, which files go where, which variable to
   set) and exits 2, before any MLflow store or run exists. ``--smoke``
   instead writes the generated fixture into the work folder (a new temporary
   folder unless ``--work``), points the variable at it and runs the smoke
   config; its cache, MLflow store and reports go to the work folder too
   (unless ``--tracking-uri`` / ``--reports-dir`` say otherwise), never to
   ``./reports``.
2. ``branchbench prepare`` for each dataset of the config: validation and the
   decoded cache.
3. ``branchbench sweep`` of the config (every method and seed, or those given
   by ``--methods`` / ``--seeds`` / ``--budgets``): the MLflow runs, then
   ``reports/<sweep name>/``. Other options (``--device``, ``--workers``,
   ``--tracking-uri``, ``--reports-dir``, ``--quiet``, ...) pass through.

Steps 2 and 3 go through :func:`branchbench.cli.main`, so the CLI's refusals
(exit 2, one line) and output apply; the exit status is theirs. A benchmark
is one :class:`Bench` entry in :data:`BENCHES` (Taskonomy adds its own).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Bench:
    """A real-data comparison: its configs, where its data comes from, and its smoke fixture."""

    name: str
    configs: dict[str, str]  # config name -> file under configs/ (the first is the default)
    smoke_config: str  # file under configs/ that runs on the fixture
    env: str  # environment variable naming the data folder
    check: Callable[[Path], str]  # describes the files found under a root; raises DataError without them
    fixture: Callable[[Path], Path]  # writes the smoke fixture into a folder, returns its root
    help: str  # where to get the data and which files go where (ends the no-data message)


# ------------------------------------------------------------------ CelebA
def _celeba_check(root: Path) -> str:
    from branchbench.datasets.celeba import find_layout

    layout = find_layout(root)
    return f"the {layout.name} layout ({layout.attr_file})"


def _celeba_fixture(folder: Path) -> Path:
    from branchbench.datasets.fixtures import write_celeba_fixture

    return write_celeba_fixture(folder / "celeba", n=120)


CELEBA_HELP = """\
Get CelebA (free for non-commercial research) from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html:
"Align&Cropped Images" (img_align_celeba.zip), Anno/list_attr_celeba.txt and Eval/list_eval_partition.txt.
Put them in one folder, unpacking the zip there:
    <folder>/list_attr_celeba.txt
    <folder>/list_eval_partition.txt
    <folder>/img_align_celeba/000001.jpg ... 202599.jpg
(torchvision's download, the same files under <folder>/celeba/, and the CSV copy, list_attr_celeba.csv and
list_eval_partition.csv with images in <folder>/img_align_celeba/img_align_celeba/, work too.)
Then set CELEBA_ROOT=<folder> (tox passes it through), or give --root <folder>, and run again.
`tox -e celeba -- --smoke` runs the same pipeline on a small generated fixture instead."""

# --------------------------------------------------------------- Taskonomy
def _taskonomy_check(root: Path) -> str:
    from branchbench.datasets.taskonomy import find_layout

    layout = find_layout(root)
    return f"the {layout.name} layout"


def _taskonomy_fixture(folder: Path) -> Path:
    from branchbench.datasets.fixtures import write_taskonomy_fixture

    return write_taskonomy_fixture(folder / "taskonomy")


TASKONOMY_HELP = """\
Get Taskonomy's tiny split (25 train, 5 val, 5 test buildings; free for research) from the Taskonomy
project's per-building archives or with the Omnidata downloader (omnidata-tools, component "taskonomy",
subset "tiny"), with the domains rgb, normal, depth_zbuffer, segment_semantic, keypoints2d and
edge_texture. Any of these layouts is read:
    <folder>/<building>/rgb/point_<P>_view_<V>_domain_rgb.png   (and normal/, depth_zbuffer/,
        segment_semantic/, keypoints2d/, edge_texture/ beside rgb/, one file per view)
    <folder>/rgb/taskonomy/<building>/...                        (the downloader's)
    <folder>/rgb/<building>/...
Then set TASKONOMY_ROOT=<folder> (tox passes it through), or give --root <folder>, and run again.
`tox -e taskonomy -- --smoke` runs the same pipeline on a small generated fixture instead."""

BENCHES: dict[str, Bench] = {
    "celeba": Bench("celeba", {"celeba9": "celeba9.toml", "celeba40": "celeba40.toml"}, "celeba_smoke.toml",
                    "CELEBA_ROOT", _celeba_check, _celeba_fixture, CELEBA_HELP),
    "taskonomy": Bench("taskonomy", {"taskonomy5": "taskonomy.toml", "taskonomy5_small": "taskonomy_small.toml"},
                       "taskonomy_smoke.toml", "TASKONOMY_ROOT", _taskonomy_check, _taskonomy_fixture,
                       TASKONOMY_HELP),
}


# ------------------------------------------------------------------ config
class Refusal(Exception):
    """Bad input to this command: printed as one message, exit status 2."""


def _config_path(bench: Bench, given: str | None, smoke: bool) -> Path:
    if given is None:
        name = bench.smoke_config if smoke else next(iter(bench.configs.values()))
    elif given in bench.configs:
        name = bench.configs[given]
    else:
        return Path(given)
    for folder in (REPO / "configs", Path.cwd() / "configs"):
        if (folder / name).is_file():
            return folder / name
    raise Refusal(f"config {name} is not in {REPO / 'configs'} or ./configs; run from the branchbench "
                  "checkout, or give --config <file>")


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise Refusal(f"--{what} {text!r}: give comma-separated integers, e.g. --{what} 0,1") from None


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise Refusal(f"--{what} {text!r}: give comma-separated numbers, e.g. --{what} 2,3") from None


def derive_config(raw: dict[str, Any], source: Path, methods: str | None, seeds: str | None, budgets: str | None,
                  dataset_options: dict[str, Any]) -> dict[str, Any]:
    """The config with only the chosen methods, the given seeds/budgets and extra dataset options."""
    raw = json.loads(json.dumps(raw))
    if methods is not None:
        chosen = [m.strip() for m in methods.split(",") if m.strip()]
        known = raw.get("methods", {})
        unknown = [m for m in chosen if m not in known]
        if unknown or not chosen:
            raise Refusal(f"--methods {methods!r}: {source} has no method(s) {unknown}; its methods are "
                          f"{sorted(known)}")
        raw["methods"] = {m: known[m] for m in chosen}
    sweep = raw.setdefault("sweep", {})
    if seeds is not None:
        sweep["seeds"] = _ints(seeds, "seeds")
    if budgets is not None:
        sweep["budgets"] = _floats(budgets, "budgets")
    for options in raw.get("datasets", {}).values():
        options.update(dataset_options)
    return raw


_BARE = re.compile(r"[A-Za-z0-9_-]+")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_key(key: str) -> str:
    return key if _BARE.fullmatch(key) else json.dumps(key)


def to_toml(raw: dict[str, Any]) -> str:
    """A sweep config as TOML (tables of scalars, lists and inline tables; checked by reading it back)."""
    lines: list[str] = []
    for section, body in raw.items():
        named = section in ("datasets", "methods")
        for name, table in (body.items() if named else [(None, body)]):
            lines.append(f"[{section}.{_toml_key(name)}]" if named else f"[{section}]")
            lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
            lines.append("")
    text = "\n".join(lines)
    if tomllib.loads(text) != raw:  # pragma: no cover - a value this writer does not know
        raise Refusal("the chosen config cannot be written back as TOML; edit a copy of it and give --config")
    return text


# ------------------------------------------------------------------ command
def build_parser(bench_names: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m branchbench.bench_envs",
        description="Check the data, build its cache, sweep every method and seed, write the report. Options "
                    "this command does not know go to `branchbench sweep` (e.g. --device, --workers, "
                    "--tracking-uri, --reports-dir).")
    parser.add_argument("benchmark", choices=list(bench_names))
    parser.add_argument("--smoke", action="store_true", help="run on a generated fixture (no data needed)")
    parser.add_argument("--config", default=None, help="a config name (e.g. celeba40) or a TOML file")
    parser.add_argument("--root", default=None, help="the data folder (default: the benchmark's variable)")
    parser.add_argument("--methods", default=None, help="comma-separated methods of the config (default: all)")
    parser.add_argument("--seeds", default=None, help="comma-separated training seeds (default: the config's)")
    parser.add_argument("--budgets", default=None, help="comma-separated budgets (default: the config's)")
    parser.add_argument("--work", default=None,
                        help="--smoke: folder for the fixture, cache, store and reports (default: a new temp folder)")
    return parser


def _given(args: Sequence[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    parser = build_parser(list(BENCHES))
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as stop:
        return int(stop.code or 0)
    bench = BENCHES[args.benchmark]
    try:
        return _run(bench, args, rest, out)
    except Refusal as err:
        print(f"{bench.name}: {err}", file=sys.stderr)
        return EXIT_USAGE


def _run(bench: Bench, args: argparse.Namespace, rest: list[str], out: Callable[[str], None]) -> int:
    from branchbench import cli
    from branchbench.datasets.base import DataError

    config = _config_path(bench, args.config, args.smoke)
    try:
        raw = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise Refusal(f"config {config} cannot be read: {err}") from None
    dataset_options: dict[str, Any] = {}
    scratch: Path | None = None
    sweep_args = list(rest)
    if args.smoke:
        work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix=f"branchbench-{bench.name}-smoke-"))
        work.mkdir(parents=True, exist_ok=True)
        os.environ[bench.env] = str(bench.fixture(work / "data"))
        dataset_options["cache_dir"] = str(work / "cache")
        if not _given(rest, "--tracking-uri"):
            sweep_args += ["--tracking-uri", f"sqlite:///{(work / 'mlruns.db').resolve()}"]
        if not _given(rest, "--reports-dir"):
            sweep_args += ["--reports-dir", str(work / "reports")]
        out(f"{bench.name} --smoke: fixture in {os.environ[bench.env]}; store, cache and reports under {work}")
    else:
        if args.root is not None:
            os.environ[bench.env] = args.root
        root = os.environ.get(bench.env)
        if not root:
            raise Refusal(f"no {bench.name} data: {bench.env} is not set and no --root was given.\n{bench.help}")
        try:
            found = bench.check(Path(root))
        except DataError as err:
            raise Refusal(f"no {bench.name} data at {bench.env}={root}: {err}\n{bench.help}") from None
        out(f"{bench.name}: data at {root}: {found}")
    try:
        derived = derive_config(raw, config, args.methods, args.seeds, args.budgets, dataset_options)
        if derived != raw:
            scratch = Path(tempfile.mkdtemp(prefix=f"branchbench-{bench.name}-config-"))
            config = scratch / config.name
            config.write_text(to_toml(derived))
        for dataset in derived.get("datasets", {}):
            status = cli.main(["prepare", dataset, "--config", str(config)])
            if status != 0:
                return status
        return cli.main(["sweep", str(config), *sweep_args])
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
