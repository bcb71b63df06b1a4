"""Published figures beside ours: the "published vs this suite" section of a report.

A pure function of the runs frame and the published figures
(:mod:`branchbench.data`, ``published.toml``): the runs follow a paper's
:class:`~branchbench.data.PublishedProtocol` when their dataset kind and
options match it (logged as the tag ``bb.dataset_kind`` and the params
``dataset.<option>``); each figure of that protocol is put beside our mean of
the same metric for the same method (and budget), with our 95% two-stage
bootstrap interval (:func:`~branchbench.reports.stats.hierarchical_bootstrap_ci`)
and the difference. Where this sweep's settings depart from the protocol's
(a smoke run's 2 epochs, another resolution), the section lists how, from the
runs' params ``dataset.<option>`` and ``protocol.<key>``.

While no figure is entered for the protocol, the section says so and why (the
protocol's ``status``), and names the sources to transcribe: it never prints a
published column of blanks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from branchbench.data import (
    PublishedFigure,
    PublishedProtocol,
    load_published,
    published_protocols,
    published_sources,
)
from branchbench.reports import stats, tables

KIND_TAG = "tags.bb.dataset_kind"
COLUMNS = ["method", "budget", "source", "table", "metric", "split", "published", "mean", "ci_low", "ci_high", "n",
           "difference", "notes"]


@dataclass
class PublishedSection:
    """What a report prints about one published protocol."""

    protocol: PublishedProtocol
    figures: list[PublishedFigure]
    table: pd.DataFrame  # numbers, one row per figure (COLUMNS)
    departures: list[str] = field(default_factory=list)  # "epochs=2 (published 100)", ...
    sources: dict[str, str] = field(default_factory=dict)  # id -> "paper, url"


def _param(runs: pd.DataFrame, section: str, key: str) -> list[str]:
    column = f"params.{section}.{key}"
    if column not in runs:
        return []
    return sorted({str(v) for v in runs[column].dropna()})


def _same(text: str, expected: Any) -> bool:
    """Whether a logged param (MLflow keeps them as strings) equals a value of the TOML file."""
    if isinstance(expected, bool):
        return text.strip().lower() == str(expected).lower()
    if isinstance(expected, int | float):
        try:
            return math.isclose(float(text), float(expected), rel_tol=1e-9, abs_tol=0.0)
        except ValueError:
            return False
    return text == str(expected)


def matching_protocol(runs: pd.DataFrame, protocols: dict[str, PublishedProtocol]) -> PublishedProtocol | None:
    """The published protocol every run follows (dataset kind and ``match`` options), if any."""
    if runs.empty or KIND_TAG not in runs:
        return None
    kinds = set(runs[KIND_TAG].dropna().astype(str))
    for protocol in protocols.values():
        if kinds != {protocol.kind}:
            continue
        values = {key: _param(runs, "dataset", key) for key in protocol.match}
        if all(len(v) == 1 and _same(v[0], protocol.match[k]) for k, v in values.items()):
            return protocol
    return None


def departures(runs: pd.DataFrame, protocol: PublishedProtocol) -> list[str]:
    """How the runs' dataset options and training protocol depart from the published one."""
    out = []
    for section, expected in (("dataset", protocol.dataset), ("protocol", protocol.training)):
        for key, value in expected.items():
            ours = _param(runs, section, key)
            if not ours:
                out.append(f"{key}: not logged (published {value})")
            elif not all(_same(v, value) for v in ours):
                out.append(f"{key}={' / '.join(ours)} (published {str(value).lower() if isinstance(value, bool) else value})")
    return out


def compare(runs: pd.DataFrame, figures: Sequence[PublishedFigure],
            n_resamples: int = stats.N_RESAMPLES) -> pd.DataFrame:
    """One row per figure: the published value, our mean of the same metric with its 95% interval and n
    (over (data seed, training seed) runs), and our mean minus the published value."""
    keyed = tables._keyed(runs) if not runs.empty else runs
    rows = []
    for figure in figures:
        budget = "none" if figure.budget is None else f"{figure.budget:g}"
        column = f"metrics.{figure.split}.{figure.metric}"
        row = {"method": figure.method, "budget": budget, "source": figure.source.id, "table": figure.table,
               "metric": figure.metric, "split": figure.split, "published": figure.value, "mean": math.nan,
               "ci_low": math.nan, "ci_high": math.nan, "n": 0, "difference": math.nan, "notes": figure.notes}
        if not keyed.empty and column in keyed:
            mine = keyed[(keyed["label"] == figure.method) & (keyed["budget"] == budget)]
            values = pd.DataFrame({"data_seed": mine["data_seed"], "seed": mine["seed"],
                                   "value": mine[column] * figure.scale}).dropna()
            if len(values):
                low, high = stats.hierarchical_bootstrap_ci(values, "value", n_resamples=n_resamples)
                mean = float(values["value"].mean())
                row.update(mean=mean, ci_low=low, ci_high=high, n=len(values), difference=mean - figure.value)
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def section(runs: pd.DataFrame, path: str | Path | None = None,
            n_resamples: int = stats.N_RESAMPLES) -> PublishedSection | None:
    """The section for the runs' published protocol (``None`` when they follow none)."""
    protocol = matching_protocol(runs, published_protocols(path))
    if protocol is None:
        return None
    figures = load_published(path, protocol=protocol.name)
    sources = {s.id: f"{s.paper}, {s.url}" for s in published_sources(path).values() if s.protocol == protocol.name}
    return PublishedSection(protocol, figures, compare(runs, figures, n_resamples), departures(runs, protocol),
                            sources)


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """The comparison as strings (the Markdown / LaTeX table)."""
    out = pd.DataFrame(index=table.index)
    out["method"] = [m if b == "none" else f"{m} @ {b}" for m, b in zip(table["method"], table["budget"], strict=True)]
    out["metric"] = [f"{s}.{m}" for s, m in zip(table["split"], table["metric"], strict=True)]
    out["published"] = [f"{v:.2f}" for v in table["published"]]
    out["source"] = [f"{s}, {t}" for s, t in zip(table["source"], table["table"], strict=True)]
    ours, difference = [], []
    for r in table.itertuples():
        if r.n == 0:
            ours.append("not in this sweep")
            difference.append("–")
            continue
        text = f"{r.mean:.2f}" if r.n == 1 else f"{r.mean:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"
        ours.append(f"{text} (n = {r.n})")
        difference.append(f"{r.difference:+.2f}")
    out["this suite: mean [95% CI]"] = ours
    out["this suite − published"] = difference
    out["notes"] = list(table["notes"])
    return out


def markdown(found: PublishedSection, table_markdown: str | None) -> list[str]:
    """The report's lines for the section (``table_markdown``: the formatted table, when figures exist)."""
    name = found.protocol.name
    parts = [f"## Published figures vs this suite (protocol {name})", ""]
    if found.figures:
        parts += ["Each published figure (branchbench/data/published.toml, transcribed from the paper's table) "
                  "beside our mean of the same metric for the same method and budget over this sweep's runs, "
                  "with its 95% two-stage bootstrap interval (data seeds, then training seeds), and the "
                  "difference.", "", table_markdown or "", ""]
    else:
        parts += [f"No published figure is transcribed for protocol {name}: {found.protocol.status or 'none entered'}. "
                  "So no published number is compared here (see branchbench/data/published.toml).", ""]
    if found.sources:
        parts += ["Sources: " + "; ".join(f"{key}: {text}" for key, text in sorted(found.sources.items())) + ".", ""]
    if found.protocol.notes:
        parts += [f"Protocol {name}: {found.protocol.notes}.", ""]
    if found.departures:
        parts += ["This sweep departs from the published protocol: " + "; ".join(found.departures) + ".", ""]
    elif found.protocol.dataset or found.protocol.training:
        parts += ["This sweep follows the published protocol's listed settings.", ""]
    return parts
