"""The per-method study scripts select by validation Δm among selectable schedules, on development seeds only."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
STUDIES = ("dmtg_study", "adashare_study", "branched_affinity_study")


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("_study")
    finally:
        sys.path.remove(str(SCRIPTS))


def _record(study, kind, name, budget, data_seed, val, test):
    metrics = {"delta_m": test, "grouping.recovered": 0.0, "grouping.ari.fc0": 0.5}
    return study.Record("synthetic", study.key_of(kind, name), budget, data_seed, 0, val, 0.1, metrics)


def test_selection_reads_validation_only_and_skips_feasibility_checks(study):
    schedules = {"default": study.Schedule({}), "other": study.Schedule({"k": 2}),
                 "check": study.Schedule({"k": 3}, budgets=(5.0,), selectable=False)}
    records = [_record(study, "dmtg", "default", b, d, val=1.0, test=9.0) for b in (2.5, 5.0) for d in (1000, 1001)]
    records += [_record(study, "dmtg", "other", b, d, val=2.0, test=-9.0) for b in (2.5, 5.0) for d in (1000, 1001)]
    records += [_record(study, "dmtg", "check", 5.0, d, val=50.0, test=50.0) for d in (1000, 1001)]
    lines = study.study_tables(records, "dmtg", schedules, [study.Column("recovered", study.recovered)])
    selected = [line for line in lines if line.startswith("- budget")]
    assert len(selected) == 3 and all("**other**" in line for line in selected), selected
    assert any("| check |" in line and "no (feasibility check)" in line for line in lines)


def test_a_winner_replaces_the_default_only_when_its_paired_gain_is_clear_of_the_noise(study):
    clear = study.adoption("other", [1.0, 1.1, 0.9, 1.05, 0.95])
    assert "adopt" in clear[-1] and "stays" not in clear[-1]
    noisy = study.adoption("other", [3.0, -2.0, 4.0, -3.0, 1.0])  # mean +0.6, sd ~3: inside the noise
    assert "the default stays" in noisy[-1]
    worse = study.adoption("other", [-1.0, -1.1, -0.9])  # significant, but the default is better
    assert "the default stays" in worse[-1]
    assert "the default stays" in study.adoption("other", [2.0])[-1]  # one cell: no test


def test_study_configs_refuse_evaluation_seeds_and_run_a_schedule_at_its_own_budgets(study):
    schedules = {"default": study.Schedule({}), "k3": study.Schedule({"k": 3}, budgets=(5.0,), selectable=False)}
    with pytest.raises(ValueError, match="data seed 0 is an evaluation data seed"):
        study.study_configs("s", "dmtg", schedules, [0], [0], [2.5, 5.0])
    cfgs = study.study_configs("s", "dmtg", schedules, [1000], [0], [2.5, 5.0])
    budgets = {tuple(c.budgets): sorted(c.methods) for c in cfgs}
    assert budgets == {(2.5, 5.0): ["dmtg__default", "independent", "shared_bottom"],
                       (5.0,): ["dmtg__k3", "independent", "shared_bottom"]}


@pytest.mark.parametrize("name", STUDIES)
def test_each_study_has_a_default_schedule_whose_options_the_method_accepts(study, name):
    from branchbench.plugins import get_method_class

    module = importlib.import_module(name)
    kind = {"dmtg_study": "dmtg", "adashare_study": "adashare", "branched_affinity_study": "branched_affinity"}[name]
    assert module.SCHEDULES["default"].options == {}
    for schedule in module.SCHEDULES.values():
        get_method_class(kind)(**schedule.options)  # refuses an unknown option or a bad value
