"""A sweep's report: fetch its runs from MLflow, build tables and figures, write and log them.

Only :func:`build_reports` touches the store (through :class:`Tracking`);
:func:`dataset_report` is a pure function of the runs frame and the plans, so
the same report can be rebuilt from any copy of the records. Files go to
``<reports_dir>/<sweep name>/`` (:func:`report_folder`; one folder per dataset
inside it when a sweep has several, so two sweeps over one dataset, say a
comparison and a development study, never overwrite each other): ``report.md`` (header, hyper-parameters, every
table, the figures), ``report.html`` (the same page with its figures inline,
which MLflow's artifact viewer renders), each table as ``.csv`` (numbers) and
``.tex``, and PNG figures; the same files are logged to the parent run under
``reports/<dataset>/``, with the summary's headline numbers as the parent's
metrics (:func:`summary_metrics`). Runs that follow a paper's protocol get a
"published vs this suite" section (:mod:`branchbench.reports.published`).
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from branchbench.reports import figures, published, tables, tuning
from branchbench.reports.formats import numbers_csv, to_latex, to_markdown


@dataclass
class Header:
    """What a report names so a reader can find its records and code."""

    parent_run_id: str | None
    sweep_hash: str | None
    commits: list[str]
    store: str = ""  # the store's file name or server URI: never a path of the machine that made it

    def lines(self) -> list[str]:
        return [
            f"- commit: {', '.join(self.commits) or 'unknown'}",
            f"- sweep config hash: {self.sweep_hash or 'unknown'}",
            f"- MLflow parent run: {self.parent_run_id or 'none'}" + (f" (store {self.store})" if self.store else ""),
        ]


@dataclass
class DatasetReport:
    dataset: str
    markdown: str
    tables: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = field(default_factory=dict)  # name -> (numbers, strings)
    figures: dict[str, Figure] = field(default_factory=dict)
    published_vs_ours: published.PublishedSection | None = None


def commits(runs: pd.DataFrame) -> list[str]:
    if "tags.bb.code_version" not in runs:
        return []
    dirty = runs.get("tags.bb.code_dirty", pd.Series("false", index=runs.index)) == "true"
    labels = runs["tags.bb.code_version"].astype(str) + dirty.map({True: " (with local changes)", False: ""})
    return sorted(set(labels.dropna()))


def dataset_report(
    runs: pd.DataFrame,
    dataset: str,
    header: Header,
    plans: Mapping[str, Mapping[str, Any]] | None = None,
    with_figures: bool = True,
    published_path: str | Path | None = None,
) -> DatasetReport:
    """Tables, figures and Markdown of one dataset's runs (pure: no store access).

    Everything comes from the runs frame and the plans: each cell's known task
    groups (tag ``bb.groups``, which change with the data seed) and each
    method's stated differences from its paper (``bb.method_differences``) were
    logged when the cell ran, so no method or dataset is imported here.
    """
    runs = runs[runs["dataset"] == dataset].reset_index(drop=True)
    plans = plans or {}
    report = DatasetReport(dataset, "")
    summary = tables.summary(runs)
    report.tables["summary"] = (summary, tables.format_summary(summary))
    paired = tables.paired(runs)
    report.tables["paired"] = (paired, tables.format_paired(paired))
    grouping = tables.grouping(runs, plans)
    if not grouping.empty:
        report.tables["grouping"] = (grouping, tables.format_grouping(grouping))
    report.published_vs_ours = published.section(runs, published_path)
    if report.published_vs_ours is not None and report.published_vs_ours.figures:
        numbers = report.published_vs_ours.table
        report.tables["published"] = (numbers, published.format_table(numbers))

    searched = tables.diagnostics(runs)
    if not searched.empty:
        report.tables["diagnostics"] = (searched, searched)
    compute = tables.compute(runs)
    if not compute.empty:
        report.tables["compute"] = (compute, tables.format_compute(compute))
    gains = tables.task_gains(runs)
    if with_figures and not summary.empty:
        for name, label in figures.COST_AXES.items():
            report.figures[f"pareto_{name}"] = figures.pareto_figure(summary, label, f"{dataset}: Δm vs {label}")
        if not gains.empty and gains.notna().any().any():
            report.figures["task_gains"] = figures.gains_heatmap(gains, f"{dataset}: per-task gain over independent")
        firsts = runs.sort_values("seed").drop_duplicates(["method", "budget"])
        shown = {f"{r.method} @ {r.budget} (seed {r.seed})": (plans[r.run_id], run_groups(runs, r.run_id))
                 for r in firsts.itertuples() if r.run_id in plans}
        if shown:
            report.figures["trees"] = figures.trees_figure(shown, f"{dataset}: learned trees")
    report.markdown = _markdown(runs, dataset, header, report)
    return report


def _markdown(runs: pd.DataFrame, dataset: str, header: Header, report: DatasetReport) -> str:
    parts = [f"# branchbench report: {dataset}", "", *header.lines(), f"- cells: {len(runs)} finished runs", ""]
    summary = report.tables["summary"][0]
    parts += ["## Methods and budgets", "", tables.summary_header(summary) if len(summary) else "No runs.",
              "Latency: one forward pass at batch 1. Search / retrain: wall seconds.", "",
              to_markdown(report.tables["summary"][1]), ""]
    parts += ["## Learned methods vs their controls (paired on data seed and training seed)", ""]
    numbers, paired = report.tables["paired"]
    if paired.empty:
        parts += ["No learned method with a control in this sweep.", ""]
    else:
        parts += [tables.paired_header(numbers), "", to_markdown(paired), ""]
    if "grouping" in report.tables:
        parts += ["## Grouping recovery (known task groups)", "", tables.grouping_header(), "",
                  to_markdown(report.tables["grouping"][1]), ""]
    if report.published_vs_ours is not None:
        shown = report.tables.get("published")
        parts += published.markdown(report.published_vs_ours, to_markdown(shown[1]) if shown else None)
    parts += tuning.section(runs)

    if "diagnostics" in report.tables:
        parts += ["## Search diagnostics", "", tables.DIAGNOSTICS_HEADER, "",
                  to_markdown(report.tables["diagnostics"][1]), ""]
    if "compute" in report.tables:
        parts += ["## Compute and convergence", "", tables.compute_header(), "",
                  to_markdown(report.tables["compute"][1]), ""]
    parts += ["## Hyper-parameters", ""]
    for method, options in tables.hyperparameters(runs).items():
        text = ", ".join(f"{k}={v}" for k, v in options.items()) or "(no options)"
        parts.append(f"- {method}: {text}")
    deviations = method_deviations(runs)
    if deviations:
        parts += ["", "## Differences from the papers", "",
                  "Each method's own statement (the paragraph of its module docstring, logged with its runs).", ""]
        parts += [f"- **{method}**: {text}" for method, text in deviations.items()]
    proto = tables.protocol(runs)
    if proto:
        parts += ["", "Training protocol: " + ", ".join(f"{k}={v}" for k, v in proto.items())]
    if report.figures:
        parts += ["", "## Figures", ""] + [f"![{name}]({name}.png)" for name in report.figures]
    return "\n".join(parts) + "\n"


def method_deviations(runs: pd.DataFrame) -> dict[str, str]:
    """Per method: its stated differences from its paper, as logged with its runs (none for baselines)."""
    column = "tags.bb.method_differences"
    if column not in runs or "method" not in runs:
        return {}
    out: dict[str, str] = {}
    for method, text in zip(runs["method"], runs[column], strict=True):
        if isinstance(text, str) and text and method not in out:
            out[method] = text
    return dict(sorted(out.items()))


def run_groups(runs: pd.DataFrame, run_id: str) -> dict[str, int] | None:
    """The known task groups a cell ran with (tag ``bb.groups``), or None."""
    if "tags.bb.groups" not in runs:
        return None
    value = runs.loc[runs["run_id"] == run_id, "tags.bb.groups"]
    text = value.iloc[0] if len(value) else None
    return json.loads(text) if isinstance(text, str) and text else None


def write_report(report: DatasetReport, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / "report.md"]
    written[0].write_text(report.markdown)
    for name, (numbers, strings) in report.tables.items():
        (folder / f"{name}.csv").write_text(numbers_csv(numbers))
        (folder / f"{name}.md").write_text(to_markdown(strings))
        (folder / f"{name}.tex").write_text(to_latex(strings, caption=f"{report.dataset}: {name}"))
        written += [folder / f"{name}.{ext}" for ext in ("csv", "md", "tex")]
    import matplotlib.pyplot as plt

    for name, fig in report.figures.items():
        fig.savefig(folder / f"{name}.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
        written.append(folder / f"{name}.png")
    images = {path.name: path.read_bytes() for path in written if path.suffix == ".png"}
    written.append(folder / "report.html")
    written[-1].write_text(report_html(report.markdown, images, f"branchbench report: {report.dataset}"))
    return written


# ------------------------------------------------------------------ HTML
HTML_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;max-width:80em;color:#222}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3}td{text-align:right;white-space:nowrap}td:first-child,td:nth-child(2){text-align:left}
img{max-width:100%;margin:.5em 0}code{background:#f3f3f3;padding:0 .2em}"""
IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)]+)\)")


def report_html(markdown: str, images: Mapping[str, bytes], title: str) -> str:
    """The report's Markdown as one self-contained HTML page (figures inline as data URIs).

    Covers what the report writes: headings, paragraphs, lists, pipe tables,
    images, **bold** and `code`. MLflow's artifact viewer shows HTML in a frame
    that cannot fetch the PNGs beside it, hence the inline figures.
    """
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{HTML_STYLE}</style></head><body>"]
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line:
            i += 1
        elif heading := re.match(r"(#{1,6}) (.*)", line):
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
            i += 1
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                    rows.append(cells)
                i += 1
            head, body = rows[0], rows[1:]
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
                       + "</table>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif image := IMAGE.fullmatch(line):
            alt, src = image.groups()
            data = images.get(src)
            source = f"data:image/png;base64,{base64.b64encode(data).decode()}" if data else html.escape(src)
            out.append(f"<p><img alt='{html.escape(alt)}' src='{source}'></p>")
            i += 1
        else:
            paragraph = [line.strip()]
            i += 1
            while i < len(lines) and lines[i].strip() and not re.match(r"(#|\||- |!\[)", lines[i]):
                paragraph.append(lines[i].strip())
                i += 1
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
    return "\n".join(out) + "\n</body></html>\n"


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", text)


def summary_metrics(dataset: str, summary: pd.DataFrame) -> dict[str, float]:
    """The summary's headline numbers as metric names that stay the same from sweep to sweep.

    ``<dataset>/<method>/budget_<budget>/delta_m`` (and ``delta_m_std``), ``mean_<metric>``
    for each metric kind averaged over its tasks, ``params`` and ``n``; MLflow's
    charts put each dataset in its own section.
    """
    out: dict[str, float] = {}
    for (method, budget), row in summary.iterrows():
        prefix = "/".join(_metric_part(p) for p in (dataset, method, f"budget_{budget}"))
        for (quantity, statistic), value in row.items():
            name = {("Δm (%)", "mean"): "delta_m", ("Δm (%)", "std"): "delta_m_std", ("params", "mean"): "params",
                    ("n", ""): "n"}.get((quantity, statistic))
            if name is None and statistic == "mean" and quantity.startswith("mean "):
                name = "mean_" + quantity[len("mean "):]
            if name is not None and pd.notna(value):
                out[f"{prefix}/{_metric_part(name)}"] = float(value)
    return out


def _metric_part(text: str) -> str:
    """Characters MLflow accepts in a metric name (letters, digits, _ - .)."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(text)).strip("_") or "_"


def report_folder(reports_dir: Path, sweep_name: str | None, dataset: str, several: bool) -> Path:
    """``<reports_dir>/<sweep name>/``, with ``<dataset>/`` inside when the sweep has several datasets.

    Without a sweep name (cells reported on their own) the folder is ``<reports_dir>/<dataset>/``.
    """
    if not sweep_name:
        return reports_dir / dataset
    return reports_dir / sweep_name / dataset if several else reports_dir / sweep_name


def build_reports(
    tracking: Any,
    parent_run_id: str | None,
    reports_dir: Path,
    cells: list[dict[str, Any]] | None = None,
    log: bool = True,
    sweep_name: str | None = None,
) -> list[Path]:
    """Report every dataset of a sweep; ``cells`` default to the parent run's ``sweep/cells.json``.

    ``sweep_name`` defaults to the parent run's ``bb.sweep_name`` tag (see :func:`report_folder`).
    """
    if cells is None:
        if parent_run_id is None:
            raise ValueError("a report needs the sweep's cells or its parent run id")
        cells = tracking.load_json(parent_run_id, "sweep/cells.json")
    runs = tables.cell_runs(tracking.search("tags.`bb.kind` = 'cell'"), {c["hash"] for c in cells})
    sweep_hash = None
    if parent_run_id is not None:
        parent_tags = tracking.get_run(parent_run_id).data.tags
        sweep_hash = parent_tags.get("bb.sweep")
        sweep_name = sweep_name or parent_tags.get("bb.sweep_name")
    header = Header(parent_run_id, sweep_hash, commits(runs), tracking.label)
    plans = {run_id: tracking.load_json(run_id, "plan.json") for run_id in runs["run_id"]}
    written: list[Path] = []
    datasets = sorted(runs["dataset"].unique())
    for dataset in datasets:
        report = dataset_report(runs, dataset, header, plans)
        folder = report_folder(Path(reports_dir), sweep_name, dataset, several=len(datasets) > 1)
        files = write_report(report, folder)
        written += files
        if log and parent_run_id is not None:
            for path in files:
                tracking.log_file(parent_run_id, path, f"reports/{dataset}")
            tracking.log_metrics(parent_run_id, summary_metrics(dataset, report.tables["summary"][0]))
    return written
