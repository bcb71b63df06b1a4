"""Package data: the papers' published figures (``published.toml``) and their loader.

>>> isinstance(load_published(), list)
True
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

FIGURE_KEYS = ("source", "method", "protocol", "table", "metric", "split", "value")
FIGURE_OPTIONAL = ("notes", "budget", "scale")
SOURCE_KEYS = ("id", "paper", "url", "protocol")
PROTOCOL_KEYS = ("name", "kind", "match")
PROTOCOL_OPTIONAL = ("dataset", "training", "notes", "status")


@dataclass(frozen=True)
class PublishedSource:
    id: str
    paper: str
    url: str
    protocol: str
    code: str = ""
    notes: str = ""


@dataclass(frozen=True)
class PublishedFigure:
    """One number as a paper prints it, with where it comes from.

    ``metric`` is the suite's metric name as cells log it under ``split``
    (e.g. ``total_error``, ``delta_m``, ``Blond_Hair.error``); our value is
    multiplied by ``scale`` (e.g. 100 for an error the paper prints in %)
    before the two are compared. ``budget`` picks our row of a budget-aware
    method (the budget whose cap the paper's network fits, e.g. 3.0 for 3
    groups); ``None`` is the row without a budget.
    """

    source: PublishedSource
    method: str
    protocol: str
    table: str
    metric: str
    split: str
    value: float
    notes: str = ""
    budget: float | None = None
    scale: float = 1.0


@dataclass(frozen=True)
class PublishedProtocol:
    """A paper's protocol that runs can be matched to, and the settings the papers used.

    A report's runs follow it when their dataset kind is ``kind`` and their
    dataset options include ``match``; ``dataset`` and ``training`` are the
    remaining dataset options and training-protocol keys the papers used, so
    the report can say where a sweep departs from them. ``status`` says, while
    no figure is entered, why.
    """

    name: str
    kind: str
    match: dict[str, Any]
    dataset: dict[str, Any]
    training: dict[str, Any]
    notes: str = ""
    status: str = ""


def _read(path: str | Path | None) -> tuple[str, dict[str, Any]]:
    if path is None:
        text = resources.files(__package__).joinpath("published.toml").read_text(encoding="utf-8")
        return "branchbench/data/published.toml", tomllib.loads(text)
    path = Path(path)
    return str(path), tomllib.loads(path.read_text(encoding="utf-8"))


def _missing(where: str, entry: dict[str, Any], keys: tuple[str, ...]) -> None:
    absent = [k for k in keys if k not in entry]
    if absent:
        raise ValueError(f"{where} lacks {absent}. Fix: give every entry {list(keys)}")


def published_sources(path: str | Path | None = None) -> dict[str, PublishedSource]:
    """Every ``[[source]]`` by id."""
    name, data = _read(path)
    out: dict[str, PublishedSource] = {}
    for i, entry in enumerate(data.get("source", [])):
        _missing(f"{name}: [[source]] #{i + 1}", entry, SOURCE_KEYS)
        if entry["id"] in out:
            raise ValueError(f"{name}: source id {entry['id']!r} is used twice. Fix: give each source its own id")
        out[entry["id"]] = PublishedSource(**{k: str(v) for k, v in entry.items()})
    return out


def load_published(path: str | Path | None = None, protocol: str | None = None) -> list[PublishedFigure]:
    """The published figures (optionally of one protocol, e.g. ``"celeba9"``), each with its source."""
    name, data = _read(path)
    sources = published_sources(path)
    figures: list[PublishedFigure] = []
    for i, entry in enumerate(data.get("figure", [])):
        where = f"{name}: [[figure]] #{i + 1}"
        _missing(where, entry, FIGURE_KEYS)
        if entry["source"] not in sources:
            raise ValueError(f"{where} names source {entry['source']!r}, which no [[source]] has. "
                             f"Fix: use one of {sorted(sources)}")
        if isinstance(entry["value"], bool) or not isinstance(entry["value"], int | float):
            raise ValueError(f"{where}: value {entry['value']!r} is not a number. Fix: write the number as printed")
        unknown = sorted(set(entry) - set(FIGURE_KEYS) - set(FIGURE_OPTIONAL))
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {unknown}. Fix: use {list(FIGURE_KEYS)} and "
                             f"optionally {list(FIGURE_OPTIONAL)}")
        for key in ("budget", "scale"):
            value = entry.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ValueError(f"{where}: {key} {value!r} is not a number. Fix: e.g. {key} = 3.0")
        figure = PublishedFigure(
            source=sources[entry["source"]],
            **{k: str(entry[k]) for k in FIGURE_KEYS if k not in ("source", "value")},
            value=float(entry["value"]),
            notes=str(entry.get("notes", "")),
            budget=float(entry["budget"]) if "budget" in entry else None,
            scale=float(entry.get("scale", 1.0)),
        )
        if protocol is None or figure.protocol == protocol:
            figures.append(figure)
    return figures


def published_protocols(path: str | Path | None = None) -> dict[str, PublishedProtocol]:
    """Every ``[[protocol]]`` by name."""
    name, data = _read(path)
    out: dict[str, PublishedProtocol] = {}
    for i, entry in enumerate(data.get("protocol", [])):
        where = f"{name}: [[protocol]] #{i + 1}"
        _missing(where, entry, PROTOCOL_KEYS)
        unknown = sorted(set(entry) - set(PROTOCOL_KEYS) - set(PROTOCOL_OPTIONAL))
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {unknown}. Fix: use {list(PROTOCOL_KEYS)} and "
                             f"optionally {list(PROTOCOL_OPTIONAL)}")
        for key in ("match", "dataset", "training"):
            if not isinstance(entry.get(key, {}), dict):
                raise ValueError(f"{where}: {key} must be a table, e.g. {key} = {{ attributes = \"celeba9\" }}")
        if entry["name"] in out:
            raise ValueError(f"{where}: protocol name {entry['name']!r} is used twice. Fix: give each its own name")
        out[entry["name"]] = PublishedProtocol(
            name=str(entry["name"]), kind=str(entry["kind"]), match=dict(entry["match"]),
            dataset=dict(entry.get("dataset", {})), training=dict(entry.get("training", {})),
            notes=str(entry.get("notes", "")), status=str(entry.get("status", "")),
        )
    return out
