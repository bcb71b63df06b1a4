"""Report tables against a golden fixture of runs whose expected tables were written by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from branchbench.reports import figures, stats, tables
from branchbench.reports.build import Header, dataset_report, write_report
from branchbench.reports.formats import to_latex, to_markdown

FIXTURE = Path(__file__).parent / "fixtures" / "report"


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    frame = pd.read_csv(FIXTURE / "runs.csv", dtype={"tags.bb.budget": str, "tags.bb.seed": "Int64"})
    return tables.cell_runs(frame)


@pytest.fixture(scope="module")
def plans() -> dict:
    return json.loads((FIXTURE / "plans.json").read_text())


def expected(name: str) -> pd.DataFrame:
    return pd.read_csv(FIXTURE / f"expected_{name}.csv", dtype=str, keep_default_na=False)


def as_strings(table: pd.DataFrame) -> pd.DataFrame:
    flat = table.reset_index() if table.index.names != [None] else table
    return flat.astype(str).reset_index(drop=True)


def toy(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["dataset"] == "toy"].reset_index(drop=True)


def test_cell_runs_keep_the_newest_finished_run_of_each_cell(runs):
    assert set(runs["run_id"]) >= {"sb2", "ltb2", "other0"}
    assert not {"sb2-old", "ltb2-failed", "sweep"} & set(runs["run_id"])
    restricted = tables.cell_runs(pd.read_csv(FIXTURE / "runs.csv", dtype={"tags.bb.budget": str}), {"h-sb0"})
    assert list(restricted["run_id"]) == ["sb0"]


def test_summary_matches_golden(runs):
    got = as_strings(tables.format_summary(tables.summary(toy(runs))))
    pd.testing.assert_frame_equal(got, expected("summary"))


def test_paired_comparison_against_controls_matches_golden(runs):
    got = as_strings(tables.format_paired(tables.paired(toy(runs))))
    pd.testing.assert_frame_equal(got, expected("paired"))


def seeded_runs() -> pd.DataFrame:
    """Two data seeds x three training seeds; controls with one key missing and foreign controls to skip."""
    rows = []
    for data_seed, seed in [(d, s) for d in (0, 1) for s in (0, 1, 2)]:
        learned = 10.0 + 5 * data_seed + seed * seed
        rows += [
            ("learn_to_branch", "2", "", data_seed, seed, learned),
            ("random_tree", "2", "", data_seed, seed, learned - 1 - seed),
            ("random_tree", "3", "", data_seed, seed, 99.0),  # another budget: never paired
            ("permuted_tree", "2", "learn_to_branch", data_seed, seed, learned - 2 - data_seed),
            ("permuted_tree", "2", "dmtg", data_seed, seed, -99.0),  # another method's control
            ("adashare", "none", "", data_seed, seed, 1.0 + seed),
            ("shared_bottom", "none", "", data_seed, seed, 0.5 * seed),
        ]
    frame = pd.DataFrame(rows, columns=["method", "budget", "tags.bb.control_of", "tags.bb.data_seed", "seed",
                                        "metrics.delta_m"])
    missing = (frame["method"] == "random_tree") & (frame["tags.bb.data_seed"] == 1) & (frame["seed"] == 2)
    return frame[~missing].reset_index(drop=True)


def test_paired_matches_data_and_training_seed_and_holm_covers_the_report():
    table = tables.paired(seeded_runs()).set_index(["method", "control"])
    assert list(table.index) == [("learn_to_branch", "random_tree"), ("learn_to_branch", "permuted_tree"),
                                 ("adashare", "shared_bottom")]  # no independent or permuted runs for adashare
    random_tree = table.loc[("learn_to_branch", "random_tree")]
    # (data seed 1, seed 2) has no random_tree run; matching on the training seed alone would pair 10 runs
    assert random_tree["n"] == 5 and random_tree["data_seeds"] == 2
    assert random_tree["diff_mean"] == pytest.approx((1 + 2 + 3 + 1 + 2) / 5)
    permuted = table.loc[("learn_to_branch", "permuted_tree")]
    assert permuted["n"] == 6 and permuted["diff_mean"] == pytest.approx(2.5)  # 2 + data seed
    assert permuted["ci_low"] <= 2.5 <= permuted["ci_high"]
    np.testing.assert_allclose(table["t_p_holm"], stats.holm(table["t_p"].to_numpy()))
    assert table["t_p_holm"].min() == pytest.approx(min(1.0, 3 * table["t_p"].min()))  # m = 3


def test_summary_counts_data_seeds_and_gives_each_permuted_control_its_row():
    table = tables.summary(seeded_runs().assign(dataset="toy"))
    assert ("permuted_tree (learn_to_branch)", "2") in table.index and ("permuted_tree (dmtg)", "2") in table.index
    row = table.loc[("learn_to_branch", "2")]
    assert row[("n", "")] == 6 and row[("data seeds", "")] == 2
    assert row[("Δm (%)", "ci_low")] < row[("Δm (%)", "mean")] < row[("Δm (%)", "ci_high")]


def test_task_gains_match_the_reference_on_data_and_training_seed():
    runs = seeded_runs()
    runs = runs[runs["method"].isin(["learn_to_branch", "shared_bottom"])].copy()
    runs["metrics.test.a.accuracy"] = 0.5 + 0.1 * runs["tags.bb.data_seed"] + 0.01 * runs["seed"]
    runs.loc[runs["method"] == "learn_to_branch", "metrics.test.a.accuracy"] *= 1.1
    gains = tables.task_gains(runs, reference="shared_bottom")
    assert gains.loc[("learn_to_branch", "2"), "a"] == pytest.approx(10.0)


def test_paired_refuses_several_datasets_in_one_holm_family():
    frame = seeded_runs().assign(dataset=["a", "b"] * (len(seeded_runs()) // 2))
    with pytest.raises(ValueError, match="one Holm family"):
        tables.paired(frame)


def test_table_headers_name_the_procedures_and_n(runs):
    summary_text = tables.summary_header(tables.summary(toy(runs)))
    for needle in ("n = 2–3 runs", "1 data seed", "two-stage bootstrap", "9999 resamples", "sample std",
                   "Every row has one data seed", "about 75% of the time with 3 training seeds"):
        assert needle in summary_text
    assert "99 resamples" in tables.summary_header(tables.summary(toy(runs), n_resamples=99))
    paired_text = tables.paired_header(tables.paired(toy(runs), n_resamples=99))
    for needle in ("n = 2–3 pairs", "scipy.stats.ttest_rel", "Holm step-down over the m = 3", "exact",
                   "Wilcoxon", "Cohen's d_z", "(data seed, training seed)", "unpaired", "paired runs only",
                   "99 resamples", "this dataset's paired table", "5 or fewer non-zero differences",
                   "Read a difference as supported only when both agree"):
        assert needle in paired_text


def many_data_seeds(data_seeds: int) -> pd.DataFrame:
    """learn_to_branch and random_tree at budget 2 on ``data_seeds`` data seeds x 2 training seeds."""
    rows = [(m, "2", d, s, 1.0 * d + s + (m == "random_tree")) for m in ("learn_to_branch", "random_tree")
            for d in range(data_seeds) for s in range(2)]
    return pd.DataFrame(rows, columns=["method", "budget", "tags.bb.data_seed", "seed", "metrics.delta_m"])


def test_coverage_notes_are_printed_for_the_rows_that_need_them_only():
    many = many_data_seeds(10)
    assert "in simulation" not in tables.summary_header(tables.summary(many, n_resamples=99))
    assert "in simulation" not in tables.paired_header(tables.paired(many, n_resamples=99))
    few = many_data_seeds(3)
    mixed = pd.concat([many[many["method"] == "learn_to_branch"], few[few["method"] == "random_tree"]])
    text = tables.summary_header(tables.summary(mixed, n_resamples=99))
    assert "Row random_tree @ 2 has 2–9 data seeds" in text and "83% with 4" in text
    assert "one data seed" not in text


def test_paired_counts_unpaired_runs_and_labels_other_values():
    frame = many_data_seeds(2)
    frame.loc[(frame["method"] == "random_tree") & (frame["tags.bb.data_seed"] == 1), "metrics.delta_m"] = np.nan
    frame["metrics.params"] = 100.0 + frame["seed"]
    table = tables.paired(frame, n_resamples=99)
    assert table.loc[0, ["n", "unpaired_method", "unpaired_control"]].tolist() == [2, 2, 2]
    assert (table.loc[0, "wins"], table.loc[0, "ties"], table.loc[0, "losses"]) == (0, 0, 2)
    params = tables.format_paired(tables.paired(frame, value="metrics.params", n_resamples=99))
    assert {"method params", "control params"} <= set(params.columns) and "Δm (%)" not in " ".join(params.columns)
    assert params.loc[0, "wins/ties/losses"] == "0/4/0" and params.loc[0, "n (W)"] == 0


def test_summary_cells_from_fewer_runs_show_their_n():
    frame = many_data_seeds(2).assign(**{"metrics.params": 10.0})
    frame.loc[0, "metrics.params"] = np.nan
    formatted = tables.format_summary(tables.summary(frame, n_resamples=99))
    assert formatted.loc[("learn_to_branch", "2"), "params"].endswith("(n = 3)")
    assert "(n =" not in formatted.loc[("random_tree", "2"), "params"]
    assert "(n =" not in formatted.loc[("learn_to_branch", "2"), "Δm (%)"]


def test_grouping_recovery_matches_golden(runs, plans):
    got = as_strings(tables.format_grouping(tables.grouping(toy(runs), plans)))
    pd.testing.assert_frame_equal(got, expected("grouping"))


def test_task_gains_match_golden(runs):
    got = tables.task_gains(toy(runs)).reset_index()
    want = expected("gains")
    for column in ("a", "b"):
        assert [round(v, 6) for v in got[column]] == [float(v) for v in want[column]], column
    assert list(got["method"]) == list(want["method"])


def test_hyperparameters_are_listed_per_method(runs):
    assert tables.hyperparameters(toy(runs))["learn_to_branch"] == {"lr": "0.01"}


def test_hyperparameters_come_in_name_order_whatever_the_columns_order(runs):
    frame = toy(runs).assign(**{"params.method.zeta": "1", "params.method.alpha": "2"})
    shuffled = frame[list(reversed(frame.columns))]  # MLflow's search fixes no column order
    for table in (frame, shuffled):
        assert list(tables.hyperparameters(table)["learn_to_branch"]) == ["alpha", "lr", "zeta"]


def test_pareto_front_drops_dominated_points():
    points = pd.DataFrame({"params": [100, 150, 160, 200, 120], "Δm (%)": [2.5, 0.0, 15.0, 0.0, 0.0]},
                          index=["sb", "rt", "ltb", "ind", "ada"])
    assert list(figures.pareto_front(points, "params").index) == ["sb", "ltb"]


def test_report_files_name_commit_hash_and_parent(runs, plans, tmp_path):
    header = Header("parent123", "sweephash", ["abc123"])
    report = dataset_report(runs, "toy", header, plans)
    files = {p.name for p in write_report(report, tmp_path / "toy")}
    assert {"report.md", "summary.csv", "summary.tex", "paired.md", "grouping.csv", "pareto_params.png",
            "pareto_flops.png", "pareto_latency.png", "task_gains.png", "trees.png"} <= files
    text = (tmp_path / "toy" / "report.md").read_text()
    for needle in ("abc123", "sweephash", "parent123", "learn_to_branch: lr=0.01", "+15.00 ± 5.00",
                   tables.summary_header(report.tables["summary"][0]),
                   tables.paired_header(report.tables["paired"][0]), "## Learned methods vs their controls"):
        assert needle in text
    assert "elsewhere" not in text
    numbers = pd.read_csv(tmp_path / "toy" / "summary.csv")
    assert numbers.loc[numbers["method"] == "learn_to_branch", "Δm (%).mean"].item() == pytest.approx(15.0)
    assert r"$\pm$" in (tmp_path / "toy" / "summary.tex").read_text()


def test_markdown_and_latex_writers_escape_and_align():
    table = pd.DataFrame({"method": ["learn_to_branch"], "Δm (%)": ["+1.00 ± 0.50"]})
    assert to_markdown(table).splitlines()[2] == "| learn_to_branch | +1.00 ± 0.50 |"
    latex = to_latex(table)
    assert r"learn\_to\_branch & +1.00 $\pm$ 0.50 \\" in latex
    assert r"$\Delta_m$ (\%)" in latex


def test_no_grouping_table_for_data_without_groups_in_a_shared_store():
    """Runs of data without known groups get no recovery table, even if other runs in the store have one."""
    import numpy as np
    import pandas as pd

    from branchbench.reports import tables

    runs = pd.DataFrame({
        "method": ["shared_bottom", "independent"], "budget": ["none", "none"], "run_id": ["a", "b"],
        "metrics.grouping.ari.fc0": [np.nan, np.nan], "metrics.grouping.recovered": [np.nan, np.nan],
    })
    assert tables.grouping(runs).empty


# ------------------------------------------------------ browsing the report in MLflow
def test_report_html_is_one_page_with_its_tables_lists_and_figures_inline():
    from branchbench.reports.build import report_html

    markdown = ("# report: toy\n\n- commit: **abc**\n- store `mlruns.db`\n\nA <b> paragraph\non two lines.\n\n"
                "| method | Δm (%) |\n|---|---|\n| learn_to_branch | +1.00 ± 0.50 |\n\n![trees](trees.png)\n"
                "![missing](gone.png)\n")
    page = report_html(markdown, {"trees.png": b"\x89PNG-bytes"}, "toy")
    assert "<h1>report: toy</h1>" in page and "<li>commit: <strong>abc</strong></li>" in page
    assert "<code>mlruns.db</code>" in page and "<p>A &lt;b&gt; paragraph on two lines.</p>" in page
    assert "<th>Δm (%)</th>" in page and "<td>learn_to_branch</td><td>+1.00 ± 0.50</td>" in page
    assert "src='data:image/png;base64,iVBORy1ieXRlcw=='" in page and "src='gone.png'" in page


def test_summary_metrics_have_names_mlflow_accepts(runs):
    from mlflow.utils.validation import _validate_metric_name

    from branchbench.reports.build import summary_metrics

    metrics = summary_metrics("toy", tables.summary(toy(runs)))
    assert metrics["toy/learn_to_branch/budget_1.5/delta_m"] == pytest.approx(15.0)
    assert metrics["toy/learn_to_branch/budget_1.5/n"] == 3 and metrics["toy/adashare/budget_none/n"] == 2
    for name in metrics:
        _validate_metric_name(name)


def test_trees_figure_names_every_task_in_its_groups_colour_at_40_tasks():
    from matplotlib.colors import to_hex

    from branchbench.core.plan import Plan

    tasks = [f"attribute_{i}" for i in range(40)]
    groups = {t: i % 8 for i, t in enumerate(tasks)}
    by_group = [[t for t in tasks if groups[t] == g] for g in range(8)]
    blocks = ["layer1", "layer2", "layer3"]
    learned = Plan.from_partitions(tasks, blocks, [[tasks], [sum(by_group[:4], []), sum(by_group[4:], [])], by_group])
    assert figures.tree_order(learned)[:5] == by_group[0][:5]  # tasks of one branch sit together
    fig = figures.trees_figure({"learned": (learned.to_dict(), groups),
                                "shared_bottom": (Plan.shared_bottom(tasks, blocks).to_dict(), groups)}, "celeba")
    labels = {text.get_text(): to_hex(text.get_color()) for ax in fig.axes for text in ax.texts}
    assert set(labels) == set(tasks)
    assert len({labels[t] for t in by_group[0]}) == 1 and labels["attribute_0"] != labels["attribute_1"]
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == [f"group {g}" for g in range(8)]


def test_pareto_error_bars_have_their_methods_colour(runs):
    from matplotlib.collections import LineCollection, PathCollection
    from matplotlib.colors import to_hex

    fig = figures.pareto_figure(tables.summary(toy(runs)), "params", "toy")
    ax = fig.axes[0]
    bars = {to_hex(c.get_color()[0]) for c in ax.collections if isinstance(c, LineCollection)}
    points = {to_hex(color) for c in ax.collections if isinstance(c, PathCollection) for color in c.get_facecolor()}
    assert bars and bars <= points and len(bars) == len(set(toy(runs)["method"]))

def _grouping_runs() -> tuple[pd.DataFrame, dict]:
    """dmtg at budget 2 over two data seeds x two training seeds; one run infeasible; a permuted control."""
    same, other = {"a": [0, 0], "b": [0, 1]}, {"a": [0, 0], "b": [1, 1]}
    rows = [  # run_id, method, control_of, data seed, seed, feasible, recovered, precision, cap, nodes
        ("d00", "dmtg", "", 0, 0, 1.0, 1.0, 1.0, "true", same),
        ("d01", "dmtg", "", 0, 1, 1.0, 0.0, 0.5, "false", same),
        ("d10", "dmtg", "", 1, 0, 0.0, 0.0, 0.0, "false", other),
        ("d11", "dmtg", "", 1, 1, 1.0, 1.0, 1.0, "false", other),
        ("p00", "permuted_tree", "dmtg", 0, 0, np.nan, 0.0, 0.0, "false", other),
    ]
    frame = pd.DataFrame({
        "run_id": [r[0] for r in rows], "method": [r[1] for r in rows], "tags.bb.control_of": [r[2] for r in rows],
        "tags.bb.data_seed": [str(r[3]) for r in rows], "seed": [r[4] for r in rows], "budget": "2",
        "metrics.grouping.feasible": [r[5] for r in rows], "metrics.grouping.recovered": [r[6] for r in rows],
        "metrics.grouping.ari.b0": 0.0, "metrics.grouping.precision.b0": [r[7] for r in rows],
        "metrics.grouping.recall.b0": 1.0, "tags.bb.hit_epoch_cap": [r[8] for r in rows],
    })
    plans = {r[0]: {"tasks": ["a", "b"], "blocks": ["b0", "b1"], "nodes": r[9]} for r in rows}
    return frame, plans


def test_grouping_counts_recovery_only_where_feasible_and_stability_within_data_seeds():
    frame, plans = _grouping_runs()
    table = tables.grouping(frame, plans)
    shown = tables.format_grouping(table)
    dmtg = shown.loc[("dmtg", "2")]
    assert dmtg["feasible"] == "3/4"
    assert dmtg["recovered"] == "2/3 (1 infeasible)"  # the infeasible run is not a failure
    assert dmtg["P/R b0"] == "0.62/1.00"
    assert dmtg["at epoch cap"] == "1/4"
    # each data seed's two training seeds learned the same tree; pooled across data seeds they would not (2/3)
    assert table.loc[("dmtg", "2"), ("stability", "")] == pytest.approx(1.0)
    control = shown.loc[("permuted_tree (dmtg)", "2")]  # its own row, feasibility not applicable
    assert control["feasible"] == "–" and control["recovered"] == "0/1" and control["stability"] == "–"
    all_infeasible = frame.assign(**{"metrics.grouping.feasible": 0.0})
    assert tables.format_grouping(tables.grouping(all_infeasible, plans)).loc[("dmtg", "2"), "recovered"] == "infeasible"


def test_compute_table_shows_steps_flops_reuse_and_epoch_caps():
    frame = pd.DataFrame({
        "run_id": ["a", "b", "c"], "method": ["branched_affinity", "branched_affinity", "shared_bottom"],
        "budget": ["2", "2", "none"], "seed": [0, 1, 0], "tags.bb.data_seed": "0",
        "metrics.search.steps": [0.0, 0.0, 0.0], "metrics.search.flops": [0.0, 0.0, 0.0],
        "metrics.train.steps": [100.0, 100.0, 80.0], "metrics.train.flops": [2e9, 2e9, 1e9],
        "metrics.reused.flops": [8e9, 8e9, 0.0], "metrics.reused.seconds": [30.0, 34.0, 0.0],
        "tags.bb.hit_epoch_cap": ["true", "false", "false"], "tags.bb.search_hit_epoch_cap": "false",
    })
    shown = tables.format_compute(tables.compute(frame))
    row = shown.loc[("branched_affinity", "2")]
    assert row["reused (s)"] == "32.00 ± 2.83" and row["reused FLOPs"].startswith("8.00G")
    assert row["at epoch cap"] == "1/2" and row["search at epoch cap"] == "0/2"
    assert tables.compute(frame.drop(columns=["metrics.train.steps"])).empty  # older runs: no table


def test_search_diagnostics_count_flags_and_average_the_rest():
    frame = pd.DataFrame({
        "run_id": list("abcd"), "method": ["adashare", "adashare", "learn_to_branch", "shared_bottom"],
        "budget": ["none", "none", "2", "none"], "seed": [0, 1, 0, 0],
        "metrics.search.reproduces_shared_bottom": [1.0, 0.0, np.nan, np.nan],
        "metrics.search.commitment": [np.nan, np.nan, 0.8, np.nan],
    })
    table = tables.diagnostics(frame)
    assert list(table.columns) == ["reproduces shared-bottom", "commitment"]
    assert table.loc[("adashare", "none"), "reproduces shared-bottom"] == "1/2"
    assert table.loc[("learn_to_branch", "2"), "commitment"] == "0.80"
    assert ("shared_bottom", "none") not in table.index  # logged nothing: no row
    assert tables.diagnostics(frame.drop(columns=[c for c in frame if c.startswith("metrics.")])).empty
