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
SOURCE_KEYS = ("id", "paper", "url", "protocol")


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
    """One number as a paper prints it, with where it comes from."""

    source: PublishedSource
    method: str
    protocol: str
    table: str
    metric: str
    split: str
    value: float
    notes: str = ""


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
        unknown = sorted(set(entry) - set(FIGURE_KEYS) - {"notes"})
        if unknown:
            raise ValueError(f"{where} has unknown key(s) {unknown}. Fix: use {list(FIGURE_KEYS)} and notes")
        figure = PublishedFigure(
            source=sources[entry["source"]],
            **{k: str(entry[k]) for k in FIGURE_KEYS if k not in ("source", "value")},
            value=float(entry["value"]),
            notes=str(entry.get("notes", "")),
        )
        if protocol is None or figure.protocol == protocol:
            figures.append(figure)
    return figures
