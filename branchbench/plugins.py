"""Discovery of methods and datasets: the built-ins plus installed plugins.

Built-ins are listed here by import path and imported only when used; one whose
module is not written yet is simply not listed. Plugins are installed packages
exposing entry points in the groups ``branchbench.methods`` and
``branchbench.datasets``: the entry point's name is the method's (dataset's)
name and its value a :class:`Method` (:class:`Dataset`) subclass, e.g. in the
plugin's ``pyproject.toml``::

    [project.entry-points."branchbench.methods"]
    tag = "bb_tag:TAG"

Rules, so one broken or clashing plugin never hides the rest:

* two packages providing one name make that name ambiguous: listing, and
  choosing that name, raise a :class:`RegistryError` naming both packages (other
  names can still be chosen);
* a plugin that fails to import is skipped from listings with a
  :class:`PluginWarning` naming it; choosing it raises its import error.

>>> "shared_bottom" in list_methods()
True
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from branchbench.core.method import Method
from branchbench.datasets.base import Dataset

METHOD_GROUP = "branchbench.methods"
DATASET_GROUP = "branchbench.datasets"
BUILTIN_PACKAGE = "branchbench"

BUILTIN_METHODS = {
    "shared_bottom": "branchbench.baselines.shared_bottom:SharedBottom",
    "independent": "branchbench.baselines.independent:Independent",
    "random_tree": "branchbench.baselines.random_tree:RandomTree",
    "permuted_tree": "branchbench.baselines.controls:PermutedTree",
    "random_policy": "branchbench.baselines.controls:RandomPolicy",
    "oracle_tree": "branchbench.baselines.oracle_tree:OracleTree",
    "fixed_plan": "branchbench.baselines.fixed_plan:FixedPlan",
    "adashare": "branchbench.baselines.adashare:AdaShare",
    "learn_to_branch": "branchbench.methods.learn_to_branch:LearnToBranch",
    "learn_to_branch_uncapped": "branchbench.methods.learn_to_branch:LearnToBranchUncapped",
    "branched_affinity": "branchbench.methods.branched_affinity:BranchedAffinity",
    "dmtg": "branchbench.methods.dmtg:DMTG",
}
BUILTIN_DATASETS = {
    "synthetic": "branchbench.datasets.synthetic:Synthetic",
    "digits": "branchbench.datasets.digits:Digits",
    "npz": "branchbench.datasets.npz:NpzDataset",
    "celeba": "branchbench.datasets.celeba:CelebA",
    "taskonomy": "branchbench.datasets.taskonomy:Taskonomy",
}


class RegistryError(LookupError):
    """An unknown name, two providers of one name, or a plugin that cannot be loaded."""


class PluginWarning(UserWarning):
    """A plugin that could not be imported; the rest of the suite still works."""


@dataclass(frozen=True)
class Provider:
    """Where a name comes from: ``target`` is ``"module:attr"``, ``package`` the distribution."""

    name: str
    target: str
    package: str


@dataclass(frozen=True)
class _Registry:
    kind: str  # "method" / "dataset", for messages
    group: str
    builtins: dict[str, str]
    base: type


METHODS = _Registry("method", METHOD_GROUP, BUILTIN_METHODS, Method)
DATASETS = _Registry("dataset", DATASET_GROUP, BUILTIN_DATASETS, Dataset)


def _providers(reg: _Registry) -> tuple[dict[str, Provider], dict[str, str]]:
    """Every name's provider, and the names that two packages provide (name -> message)."""
    found: dict[str, Provider] = {}
    clashes: dict[str, str] = {}
    for name, target in reg.builtins.items():
        if _builtin_available(target):
            found[name] = Provider(name, target, BUILTIN_PACKAGE)
    for ep in entry_points(group=reg.group):
        package = ep.dist.name if ep.dist is not None else "an unknown package"
        first = found.get(ep.name)
        if first is not None and first.target != ep.value:
            clashes[ep.name] = (
                f"two packages provide {reg.kind} {ep.name!r}: {first.package!r} ({first.target}) "
                f"and {package!r} ({ep.value}); uninstall one, or rename its entry point in the "
                f"group {reg.group!r}"
            )
            continue
        if first is None:  # the same target twice (one package seen twice on the path) is fine
            found[ep.name] = Provider(ep.name, ep.value, package)
    return found, clashes


@functools.cache
def _builtin_available(target: str) -> bool:
    """A built-in whose module is not written yet is not listed (its import stays lazy)."""
    try:
        return importlib.util.find_spec(target.split(":")[0]) is not None
    except ImportError:  # its parent package is missing
        return False


def _resolve(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def _load(reg: _Registry, provider: Provider) -> type:
    try:
        obj = _resolve(provider.target)
    except Exception as err:  # a plugin's import error, whatever its kind
        raise RegistryError(
            f"{reg.kind} {provider.name!r} from package {provider.package!r} failed to load "
            f"({provider.target}): {type(err).__name__}: {err}. Fix or reinstall that package, "
            "or uninstall it"
        ) from err
    if not (isinstance(obj, type) and issubclass(obj, reg.base)):
        raise RegistryError(
            f"{reg.kind} {provider.name!r} from package {provider.package!r} points at "
            f"{provider.target}, which is not a {reg.base.__name__} subclass; point the entry "
            f"point at the class"
        )
    if getattr(obj, "name", None) != provider.name:
        raise RegistryError(
            f"{provider.target} (package {provider.package!r}) is registered as {provider.name!r} "
            f"but its class sets name={getattr(obj, 'name', None)!r}; make them equal"
        )
    return obj


def _list(reg: _Registry) -> list[str]:
    found, clashes = _providers(reg)
    if clashes:
        raise RegistryError("; ".join(clashes[n] for n in sorted(clashes)))
    names = []
    for name, provider in sorted(found.items()):
        try:
            _load(reg, provider)
        except RegistryError as err:
            warnings.warn(f"skipping {err}", PluginWarning, stacklevel=3)
            continue
        names.append(name)
    return names


def _get(reg: _Registry, name: str) -> type:
    found, clashes = _providers(reg)
    if name in clashes:
        raise RegistryError(clashes[name])
    if name not in found:
        raise RegistryError(
            f"unknown {reg.kind} {name!r}; known {reg.kind}s are {sorted(found)}. A plugin "
            f"registers one under the entry-point group {reg.group!r}"
        )
    return _load(reg, found[name])


def _without_none(options: dict[str, Any]) -> dict[str, Any]:
    """``None`` means "the default", so a CLI can pass every option unset."""
    return {k: v for k, v in options.items() if v is not None}


def list_methods() -> list[str]:
    """Names of every method that can be created (built-in and installed), sorted."""
    return _list(METHODS)


def get_method_class(name: str) -> type[Method]:
    return _get(METHODS, name)


def create_method(name: str, **options: Any) -> Method:
    """A method by name; ``None`` options fall back to the method's defaults."""
    return get_method_class(name)(**_without_none(options))


def method_providers() -> dict[str, Provider]:
    """Which package provides each method name (ambiguous names left out)."""
    return _providers(METHODS)[0]


def list_datasets() -> list[str]:
    """Names of every dataset that can be created (built-in and installed), sorted."""
    return _list(DATASETS)


def get_dataset_class(name: str) -> type[Dataset]:
    return _get(DATASETS, name)


def create_dataset(name: str, **options: Any) -> Dataset:
    """A dataset by name; ``None`` options fall back to the dataset's defaults."""
    return get_dataset_class(name)(**_without_none(options))


def dataset_providers() -> dict[str, Provider]:
    """Which package provides each dataset name (ambiguous names left out)."""
    return _providers(DATASETS)[0]
