"""`branchbench tune`: a study on development seeds, selected by validation, written as TOML a sweep includes.

One tiny study (dmtg, 2 trials, 1 development data seed, 1 training seed, 1
epoch) runs once for the module with every test metric replaced by NaN, so a
study that finishes shows that test metrics never enter the objective.
"""

from __future__ import annotations

import math
import shutil
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from branchbench.cli import main
from branchbench.config import ConfigError, cell_configs, load_config
from branchbench.core.options import Option, OptionError, Space
from branchbench.plugins import get_method_class, list_methods
from branchbench.reports import tuning
from branchbench.tracking import DB_NAME, Tracking, default_uri

CONFIG = """
[sweep]
name = "tiny"
seeds = [0]
budgets = [2.0]
[protocol]
epochs = 1
batch_size = 32
early_stopping = 0
threads = 1
[datasets.synthetic]
tasks = 4
groups = 2
input_dim = 8
n_train = 64
n_val = 32
n_test = 32
width = 4
depth = 2
[methods.shared_bottom]
[methods.dmtg]
"""
TUNE = ["--method", "dmtg", "--data-seeds", "1000", "--seeds", "0"]


def _nan_test_metrics(evaluate):
    def patched(trainer, net, bench, splits=("val", "test")):
        return {k: (math.nan if k.startswith("test.") else v) for k, v in evaluate(trainer, net, bench, splits).items()}

    return patched


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The folder of a config, its store and the tuned file after `tune --trials 2`, test metrics all NaN."""
    from mlflow.tracking import MlflowClient

    import branchbench.core.retrain as retrain

    folder = tmp_path_factory.mktemp("tune")
    MlflowClient(tracking_uri=default_uri(folder)).search_experiments()  # the store, created once
    (folder / "tiny.toml").write_text(CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(retrain, "evaluate_net", _nan_test_metrics(retrain.evaluate_net))
        rc = main(["tune", str(folder / "tiny.toml"), *TUNE, "--trials", "2", "--tracking-uri", default_uri(folder)])
    assert rc == 0
    return folder


def _study(folder: Path):
    import optuna

    [summary] = optuna.get_all_study_summaries(f"sqlite:///{folder / 'optuna.db'}")
    return optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{folder / 'optuna.db'}")


def _tuned(folder: Path) -> dict:
    return tomllib.loads((folder / "tuned" / "tiny" / "dmtg.toml").read_text())


def test_tune_writes_the_best_trials_options_with_a_record(study):
    tuned = _tuned(study)
    best = _study(study).best_trial
    assert tuned["methods"]["dmtg"] == {"kind": "dmtg", **best.params}
    assert set(best.params) == set(get_method_class("dmtg").tuning_space())
    record = tuned["tuning"]
    assert record["trials"] == 2 and record["data_seeds"] == [1000] and record["seeds"] == [0]
    assert record["best_trial"] == best.number and record["best_value"] == pytest.approx(best.value)
    assert record["study"] == _study(study).study_name and record["storage"] == "optuna.db"


def test_objective_is_validation_delta_m_and_never_reads_test_metrics(study):
    """Each trial's value is recomputed here from the MLflow runs' validation scores; test scores are NaN."""
    tracking = Tracking(default_uri(study), "branchbench-tune")
    runs = tracking.search("tags.`bb.kind` = 'cell'")
    assert runs.filter(like="metrics.test.").isna().all().all()  # the patch held: no finite test metric exists
    reference = runs[runs["tags.bb.method"] == "independent"].iloc[0]
    tasks = [f"t{i}" for i in range(4)]
    for trial in _study(study).trials:
        assert math.isfinite(trial.value)
        dmtg = runs[(runs["tags.bb.method"] == "dmtg") & (runs["params.method.tau"] == str(trial.params["tau"]))]
        own = dmtg.iloc[0]
        gains = [-(own[f"metrics.val.{t}.mse"] - reference[f"metrics.val.{t}.mse"]) / reference[f"metrics.val.{t}.mse"]
                 for t in tasks]
        assert trial.value == pytest.approx(100 * sum(gains) / len(gains))
    assert set(runs["tags.bb.data_seed"]) == {"1000"}  # development data only


def test_a_sweep_includes_the_tuned_file_and_tags_its_cells(study, tmp_path):
    config = study / "compare.toml"
    config.write_text(CONFIG.replace('name = "tiny"', 'name = "compare"\ninclude = ["tuned/tiny/dmtg.toml"]'))
    cfg = load_config(config)
    tuned = _tuned(study)
    assert cfg.methods["dmtg"].options == {k: v for k, v in tuned["methods"]["dmtg"].items() if k != "kind"}
    by_method = {c.method: c for c in cell_configs(cfg)}
    assert by_method["dmtg"].tags == {"bb.tuning_trials": "2", "bb.tuning_study": tuned["tuning"]["study"]}
    assert by_method["shared_bottom"].tags == {}

    from branchbench.cell import run_cell
    from branchbench.resolve import resolve

    shutil.copy(study / DB_NAME, tmp_path / DB_NAME)
    tracking = Tracking(default_uri(tmp_path), "compare")
    outcome = run_cell(resolve(by_method["dmtg"]), tracking)
    assert outcome.status == "finished"
    tags = tracking.get_run(outcome.run_id).data.tags
    assert tags["bb.tuning_trials"] == "2" and tags["bb.data_seed"] == "0"


def test_an_included_option_that_the_config_sets_differently_is_refused(study):
    config = study / "clash.toml"
    text = CONFIG.replace('name = "tiny"', 'name = "clash"\ninclude = ["tuned/tiny/dmtg.toml"]')
    config.write_text(text.replace("[methods.dmtg]", "[methods.dmtg]\ntau = 77.0"))
    with pytest.raises(ConfigError, match="tau=77.0 here"):
        load_config(config)
    config.write_text(CONFIG.replace('name = "tiny"', 'name = "clash"\ninclude = ["tuned/none.toml"]'))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(config)


def test_a_second_tune_resumes_the_study_and_finishes_an_open_trial(study, capsys):
    from branchbench.tune import suggest

    args = ["tune", str(study / "tiny.toml"), *TUNE, "--tracking-uri", default_uri(study)]
    assert main([*args, "--trials", "2"]) == 0
    assert len(_study(study).trials) == 2  # already done: no trial beyond N
    interrupted = _study(study)
    left_open = interrupted.ask()  # as a run killed mid-trial leaves it
    suggest(left_open, get_method_class("dmtg").tuning_space())
    assert main([*args, "--trials", "3"]) == 0
    trials = _study(study).trials
    assert len(trials) == 3 and all(t.state.name == "COMPLETE" for t in trials)
    assert "left open by an interrupted run" in capsys.readouterr().out
    assert _tuned(study)["tuning"]["trials"] == 3
    assert main([*args, "--trials", "1"]) == 0  # fewer than the study holds: the first trial alone, for parity
    assert len(_study(study).trials) == 3
    record = _tuned(study)["tuning"]
    assert record["trials"] == 1 and record["best_trial"] == 0


@pytest.mark.parametrize("extra, message", [
    (["--method", "dmtg", "--trials", "2", "--data-seeds", "0"], "0 is an evaluation data seed"),
    (["--method", "dmtg", "--trials", "2", "--data-seeds", "500"], "500 is not a development data seed"),
    (["--method", "dmtg", "--trials", "0"], "at least 1 trial"),
    (["--method", "nonesuch", "--trials", "2"], "neither in"),
    (["--method", "shared_bottom", "--trials", "2"], "declares no tuning space"),
])
def test_bad_tuning_requests_are_refused_before_anything_runs(tmp_path, capsys, extra, message):
    (tmp_path / "tiny.toml").write_text(CONFIG)
    assert main(["tune", str(tmp_path / "tiny.toml"), *extra, "--tracking-uri", default_uri(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "optuna.db").exists() and not (tmp_path / DB_NAME).exists()


def test_a_server_store_needs_an_optuna_storage():
    from branchbench.tune import TuneError, optuna_storage

    with pytest.raises(TuneError, match="--optuna-storage"):
        optuna_storage("http://127.0.0.1:5000", None)
    assert optuna_storage("sqlite:////x/mlruns.db", None) == "sqlite:////x/optuna.db"


def test_every_search_method_declares_a_space_inside_its_options():
    for name in list_methods():
        cls = get_method_class(name)
        if "search" in cls.tags:
            assert cls.tuning_space(), f"{name} declares no tuning space"
        for option in cls.tuning_space().values():  # sampled values must pass the option's own checks
            for value in (option.tune.choices or (option.tune.low, option.tune.high)):
                option.validate(name, "tune", value)


@pytest.mark.parametrize("space, message", [
    (Space(0.5, 20.0), "outside"), (Space(2.0, 1.0), "low < high"), (Space(0.0, 1.0, log=True), "low > 0"),
])
def test_a_space_the_option_refuses_is_refused_where_it_is_declared(space, message):
    with pytest.raises(OptionError, match=message):
        Option(1.0, "a rate", low=0.0, high=10.0, tune=space)
    with pytest.raises(OptionError, match="choices"):
        Option("a", "a name", tune=Space(0.0, 1.0))


def _runs(trials: dict[str, str | None]) -> pd.DataFrame:
    return pd.DataFrame({"method": list(trials), "tags.bb.tuning_trials": list(trials.values())})


def test_report_states_budgets_and_labels_tuned_only_with_equal_trials():
    equal = _runs({"shared_bottom": None, "learn_to_branch": "20", "dmtg": "20"})
    assert tuning.tuned_label(equal)[0]
    text = "\n".join(tuning.section(equal))
    assert "**tuned**" in text and "- dmtg: 20 trials" in text and "- shared_bottom: baseline" in text
    for unequal in ({"learn_to_branch": "20", "dmtg": None}, {"learn_to_branch": "20", "dmtg": "10"}):
        tuned, why = tuning.tuned_label(_runs(unequal))
        assert not tuned and "differ" in why
    tuned, why = tuning.tuned_label(_runs({"learn_to_branch": None, "dmtg": None}))
    assert not tuned and "no learned method was tuned" in why
    mixed = pd.concat([_runs({"dmtg": "20"}), _runs({"dmtg": None})])
    assert not tuning.tuned_label(mixed)[0]
    assert "- dmtg: 0 | 20 trials" in "\n".join(tuning.section(mixed))
