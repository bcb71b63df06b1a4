"""Plugins: discovery by entry point, clashing and broken plugins, and the example plugin end to end.

Fake plugins are tiny distributions written into a temporary directory on
``sys.path`` (a ``*.dist-info`` folder with ``entry_points.txt`` is all
``importlib.metadata`` needs). The example plugin (examples/tag_plugin) is
installed for real, without network, into a temporary target directory that
only this module's subprocesses and in-process checks see.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import warnings
from importlib import metadata
from pathlib import Path

import pytest

from branchbench import plugins
from branchbench.cli import main as cli_main
from branchbench.plugins import (
    PluginWarning,
    RegistryError,
    create_dataset,
    create_method,
    get_method_class,
    list_datasets,
    list_methods,
    method_providers,
)
from branchbench.testing import check_method

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "tag_plugin"

GOOD_METHOD = '''
from branchbench.core.method import Method, Option, SearchResult
from branchbench.core.plan import Plan

class {cls}(Method):
    name = "{name}"
    options = {{"depth": Option(1, "an option")}}

    def search(self, bench, budget, ctx):
        return SearchResult(Plan.shared_bottom(bench.task_names, bench.backbone.block_names))
'''


def _write_dist_info(root: Path, dist: str, version: str, entry_points: dict[str, dict[str, str]]) -> None:
    """The metadata importlib.metadata reads for an installed distribution and its entry points."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{n} = {t}\n" for n, t in eps.items()) for group, eps in entry_points.items()))


@pytest.fixture
def site(tmp_path, monkeypatch):
    """Make fake installed distributions: site(dist, {group: {name: target}}, {module: source})."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    written: list[str] = []

    def make(dist: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str] | None = None) -> None:
        _write_dist_info(root, dist, "0.1", entry_points)
        for module, source in (modules or {}).items():
            (root / f"{module}.py").write_text(textwrap.dedent(source))
            written.append(module)

    yield make
    for name in written:  # the fake plugins' modules must not leak into other tests
        sys.modules.pop(name, None)


def _methods(**entry_points: str) -> dict[str, dict[str, str]]:
    return {plugins.METHOD_GROUP: entry_points}


# ------------------------------------------------------------------ discovery
def test_a_plugin_method_is_listed_created_and_credited(site):
    site("bb-good", _methods(good="fake_good:Good"), {"fake_good": GOOD_METHOD.format(cls="Good", name="good")})
    assert "good" in list_methods() and "shared_bottom" in list_methods()
    assert create_method("good", depth=None).get_params() == {"depth": 1}
    assert create_method("good", depth=3).get_params() == {"depth": 3}
    assert method_providers()["good"].package == "bb-good"
    check_method(get_method_class("good"))


def test_a_plugin_dataset_is_listed_and_created(site):
    site("bb-data", {plugins.DATASET_GROUP: {"tiny_synth": "fake_data:TinySynth"}}, {"fake_data": '''
        from branchbench.datasets.synthetic import Synthetic

        class TinySynth(Synthetic):
            name = "tiny_synth"
    '''})
    assert "tiny_synth" in list_datasets()
    assert create_dataset("tiny_synth", tasks=2, groups=1, n_test=10).load().task_names == ["t0", "t1"]


def test_two_packages_with_one_name_fail_naming_both(site):
    site("bb-one", _methods(dup="dup_one:Dup"), {"dup_one": GOOD_METHOD.format(cls="Dup", name="dup")})
    site("bb-two", _methods(dup="dup_two:Dup"), {"dup_two": GOOD_METHOD.format(cls="Dup", name="dup")})
    for call in (list_methods, lambda: get_method_class("dup")):
        with pytest.raises(RegistryError, match="two packages provide method 'dup'") as info:
            call()
        assert "'bb-one'" in str(info.value) and "'bb-two'" in str(info.value)
        assert "uninstall one, or rename" in str(info.value)
    assert get_method_class("shared_bottom").name == "shared_bottom"  # other names still work


def test_a_plugin_cannot_take_a_builtin_name(site):
    site("bb-shadow", _methods(shared_bottom="shadow:SharedBottom"),
         {"shadow": GOOD_METHOD.format(cls="SharedBottom", name="shared_bottom")})
    with pytest.raises(RegistryError, match="'branchbench'.*'bb-shadow'"):
        get_method_class("shared_bottom")


def test_a_failing_plugin_warns_and_only_choosing_it_fails(site):
    site("bb-broken", _methods(broken="fake_broken:Broken"), {"fake_broken": "import not_installed_dependency_xyz\n"})
    with pytest.warns(PluginWarning, match="'broken' from package 'bb-broken' failed to load"):
        names = list_methods()
    assert "broken" not in names and "shared_bottom" in names
    with pytest.raises(RegistryError, match="ModuleNotFoundError: No module named 'not_installed_dependency_xyz'"):
        create_method("broken")
    assert create_method("shared_bottom").name == "shared_bottom"


def test_bad_entry_points_say_what_to_fix(site):
    site("bb-odd", _methods(notamethod="fake_odd:helper", misnamed="fake_odd:Misnamed"), {"fake_odd": (
        "def helper():\n    pass\n" + GOOD_METHOD.format(cls="Misnamed", name="other_name"))})
    with pytest.raises(RegistryError, match="not a Method subclass; point the entry point at the class"):
        get_method_class("notamethod")
    with pytest.raises(RegistryError, match="registered as 'misnamed' but its class sets name='other_name'"):
        get_method_class("misnamed")
    with pytest.raises(RegistryError, match="unknown method 'nope'.*'branchbench.methods'"):
        get_method_class("nope")


def test_cli_lists_plugins_and_survives_a_broken_one(site, capsys):
    site("bb-good", _methods(good="fake_good:Good"), {"fake_good": GOOD_METHOD.format(cls="Good", name="good")})
    site("bb-broken", _methods(broken="fake_broken:Broken"), {"fake_broken": "raise RuntimeError('boom')\n"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli_main(["methods", "--verbose"]) == 0
    out = capsys.readouterr().out
    assert "good" in out and "depth (int, default 1)" in out and "shared_bottom" in out and "broken" not in out
    assert any("RuntimeError: boom" in str(w.message) for w in caught)
    assert cli_main(["run", "--dataset", "synthetic", "--method", "broken"]) == 2
    assert "failed to load" in capsys.readouterr().err


# ---------------------------------------------------------- the example plugin
def _can_build_offline() -> bool:
    """setuptools builds wheels by itself from 70.1 on; before that it needs the `wheel` package."""
    try:
        major, minor = (int(x) for x in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _install_by_hand(source: Path, target: Path) -> None:
    """What an install leaves for importlib.metadata: the package and a dist-info made from pyproject."""
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    shutil.copytree(source / "src" / "bb_tag", target / "bb_tag")
    _write_dist_info(target, project["name"], project["version"], project["entry-points"])


@pytest.fixture(scope="module")
def tag_site(tmp_path_factory):
    """The example plugin installed, offline, into a fresh target directory (the venv is untouched).

    pip builds it without build isolation, index or dependencies. Where the
    environment's setuptools cannot build a wheel offline (older than 70.1 and no
    `wheel` package, e.g. a fresh Python 3.11 venv), the install is done by hand
    from the same pyproject.toml.
    """
    source = tmp_path_factory.mktemp("src") / "tag_plugin"  # a copy: a build writes into its source tree
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path_factory.mktemp("site")
    if not _can_build_offline():
        _install_by_hand(source, target)
        return target
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
         "--no-cache-dir", "--disable-pip-version-check", "--quiet", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return target


def _branchbench(args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlruns.db"}
    return subprocess.run([sys.executable, "-m", "branchbench.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_example_plugin_is_listed_by_the_cli(tag_site, tmp_path):
    done = _branchbench(["methods"], tag_site, tmp_path)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("tag "))
    assert "[budget-aware]" in line and "Task-affinity grouping" in line


def test_example_plugin_passes_the_kit(tag_site, monkeypatch):
    monkeypatch.syspath_prepend(str(tag_site))
    try:
        assert "tag" in list_methods()
        assert method_providers()["tag"].package == "bb-tag"
        outcomes = {o.check: o.status for o in check_method(get_method_class("tag"))}
        assert outcomes["check_plan_within_budget"] == "passed"
    finally:
        for name in [m for m in sys.modules if m == "bb_tag" or m.startswith("bb_tag.")]:
            del sys.modules[name]


SWEEP = """
[sweep]
name = "plugin-smoke"
seeds = [0]
budgets = [2.0]

[protocol]
epochs = 2
batch_size = 32
early_stopping = 0
threads = 1

[datasets.synthetic]
tasks = 4
groups = 2
input_dim = 8
n_train = 128
n_val = 64
n_test = 64
width = 8
depth = 3

[methods.shared_bottom]
[methods.tag]
"""


def test_example_plugin_runs_in_a_sweep_and_appears_in_the_report(tag_site, tmp_path):
    config = tmp_path / "plugin.toml"
    config.write_text(SWEEP)
    done = _branchbench(["sweep", str(config), "--reports-dir", str(tmp_path / "reports")], tag_site, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    tables = list((tmp_path / "reports").rglob("*.md"))
    assert tables, f"the sweep wrote no report: {done.stdout}"
    assert any(re.search(r"^\| tag \| 2 \|", p.read_text(), re.M) for p in tables)  # its row, at budget 2


def test_example_plugin_own_tests_pass(tag_site, tmp_path):
    """Its selection tests (exact vs brute force, greedy, budget -> groups); the kit ran above."""
    env = {**os.environ, "PYTHONPATH": str(tag_site)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "not conformance",
         str(EXAMPLE / "tests")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout
