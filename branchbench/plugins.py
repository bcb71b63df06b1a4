"""Discovery of methods and datasets: the built-ins plus installed plugins.

Built-ins are listed here by import path (imported only when used). Plugins
are installed packages exposing entry points in the groups
``branchbench.methods`` and ``branchbench.datasets``; each entry point's name
is the method's (dataset's) name and its value a :class:`Method`
(:class:`Dataset`) subclass. Two providers of one name are an error naming
both; a plugin that fails to import is a warning, and only choosing it fails.

>>> "shared_bottom" in list_methods()
True
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from branchbench.core.method import Method
from branchbench.datasets.base import Dataset

METHOD_GROUP = "branchbench.methods"
DATASET_GROUP = "branchbench.datasets"

BUILTIN_METHODS = {
    "shared_bottom": "branchbench.baselines.shared_bottom:SharedBottom",
    "independent": "branchbench.baselines.independent:Independent",
    "random_tree": "branchbench.baselines.random_tree:RandomTree",
    "oracle_tree": "branchbench.baselines.oracle_tree:OracleTree",
    "adashare": "branchbench.baselines.adashare:AdaShare",
    "learn_to_branch": "branchbench.methods.learn_to_branch:LearnToBranch",
    "branched_affinity": "branchbench.methods.branched_affinity:BranchedAffinity",
    "dmtg": "branchbench.methods.dmtg:DMTG",
}
BUILTIN_DATASETS = {
    "synthetic": "branchbench.datasets.synthetic:Synthetic",
    "digits": "branchbench.datasets.digits:Digits",
    "npz": "branchbench.datasets.npz:NpzDataset",
}


class RegistryError(LookupError):
    """An unknown name, two providers of one name, or a plugin that cannot be loaded."""


class PluginWarning(UserWarning):
    """A plugin that could not be imported; the rest of the suite still works."""


@dataclass(frozen=True)
class Provider:
    name: str
    target: str  # "module:attr"
    package: str  # "branchbench" for built-ins, the distribution name for plugins


def _providers(group: str, builtins: dict[str, str]) -> dict[str, Provider]:
    found: dict[str, Provider] = {}
    for name, target in builtins.items():
        if _builtin_available(target):
            found[name] = Provider(name, target, "branchbench")
    for ep in entry_points(group=group):
        package = ep.dist.name if ep.dist is not None else "an unknown package"
        provider = Provider(ep.name, ep.value, package)
        if ep.name in found and found[ep.name].target != ep.value:
            raise RegistryError(
                f"two packages provide {group.rsplit('.', 1)[-1][:-1]} {ep.name!r}: "
                f"{found[ep.name].package!r} ({found[ep.name].target}) and {package!r} "
                f"({ep.value}); uninstall one or rename its entry point"
            )
        found[ep.name] = provider
    return found


def _builtin_available(target: str) -> bool:
    """Built-ins whose module is not written yet are not listed (import is still lazy)."""
    module = target.split(":")[0]
    return importlib.util.find_spec(module) is not None


def _load(provider: Provider, base: type) -> type:
    module_name, _, attr = provider.target.partition(":")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except Exception as err:  # a plugin's import error, whatever its kind
        raise RegistryError(
            f"{provider.name!r} from package {provider.package!r} failed to load "
            f"({provider.target}): {type(err).__name__}: {err}"
        ) from err
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise RegistryError(
            f"{provider.name!r} from package {provider.package!r} points at {provider.target}, "
            f"which is not a {base.__name__} subclass"
        )
    if getattr(obj, "name", None) != provider.name:
        raise RegistryError(
            f"{provider.target} is registered as {provider.name!r} but its class sets "
            f"name={getattr(obj, 'name', None)!r}; make them equal"
        )
    return obj


def _list(group: str, builtins: dict[str, str], base: type) -> list[str]:
    names = []
    for name, provider in sorted(_providers(group, builtins).items()):
        try:
            _load(provider, base)
        except RegistryError as err:
            warnings.warn(f"skipping plugin: {err}", PluginWarning, stacklevel=3)
            continue
        names.append(name)
    return names


def _get(kind: str, group: str, builtins: dict[str, str], base: type, name: str) -> type:
    providers = _providers(group, builtins)
    if name not in providers:
        raise RegistryError(
            f"unknown {kind} {name!r}; known {kind}s are {sorted(providers)}. A plugin "
            f"registers one under the entry-point group {group!r}"
        )
    return _load(providers[name], base)


def list_methods() -> list[str]:
    """Names of every method that can be created (built-in and installed)."""
    return _list(METHOD_GROUP, BUILTIN_METHODS, Method)


def get_method_class(name: str) -> type[Method]:
    return _get("method", METHOD_GROUP, BUILTIN_METHODS, Method, name)


def create_method(name: str, **options: Any) -> Method:
    """A method by name; ``None`` options fall back to the method's defaults."""
    return get_method_class(name)(**{k: v for k, v in options.items() if v is not None})


def list_datasets() -> list[str]:
    return _list(DATASET_GROUP, BUILTIN_DATASETS, Dataset)


def get_dataset_class(name: str) -> type[Dataset]:
    return _get("dataset", DATASET_GROUP, BUILTIN_DATASETS, Dataset, name)


def create_dataset(name: str, **options: Any) -> Dataset:
    return get_dataset_class(name)(**{k: v for k, v in options.items() if v is not None})
