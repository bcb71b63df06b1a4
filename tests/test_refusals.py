"""Bad input is refused before any run exists: exit status 2, one line naming the input, no run in the store.

One test per class of refusal: a data file, an option's type, a value's range,
what `evaluate` is given, and the tracking URI.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from _tiny import TINY

from branchbench.cli import main
from branchbench.tracking import DB_NAME, Tracking, default_uri

FAST = ["--set=protocol.epochs=1", "--set=protocol.batch_size=64"] + [f"--set=dataset.{k}={v}" for k, v in TINY.items()]


def runs_in(store: Path) -> int:
    """Runs in a store folder's SQLite file, read without MLflow (which would create the file)."""
    db = store / DB_NAME
    if not db.exists():
        return 0
    with sqlite3.connect(db) as connection:
        return connection.execute("select count(*) from runs").fetchone()[0]


def refused(capsys, args: list[str], *needles: str) -> str:
    """Run the CLI, expect exit 2 and a last stderr line naming every needle; return that line."""
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    line = err.splitlines()[-1]
    assert line.startswith("branchbench"), err
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.fixture
def store(tmp_path) -> Path:
    return tmp_path / "store"


def run_args(store: Path, *extra: str, dataset: str = "synthetic", method: str | None = "random_tree") -> list[str]:
    chosen = ["--method", method] if method is not None else []
    return ["run", "--dataset", dataset, *chosen, "--tracking-uri", default_uri(store), *extra]


# -------------------------------------------------------------------- data files
def test_malformed_data_files_are_refused_before_any_run(tmp_path, store, capsys):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00\x01 not a zip archive at all" * 10)
    header_only = tmp_path / "header.csv"
    header_only.write_text("x_0,x_1,y_a\n")
    nan = tmp_path / "nan.npz"
    x = np.random.default_rng(0).normal(size=(40, 3))
    x[5, 1] = np.nan
    np.savez(nan, x=x, y_a=np.zeros(40))
    for path, needle in ((garbage, "not a valid .npz"), (header_only, "no rows"), (nan, "NaN")):
        line = refused(capsys, run_args(store, f"--set=dataset.path={path}", dataset="npz",
                                        method="shared_bottom"), str(path), needle)
        assert "Fix:" in line
    missing = tmp_path / "missing.npz"
    refused(capsys, run_args(store, f"--set=dataset.path={missing}", dataset="npz"), str(missing), "no such file")
    # the same file in a sweep config: refused while planning, the store never created
    config = tmp_path / "sweep.toml"
    config.write_text(f"[sweep]\nseeds=[0]\n[datasets.heldout]\nkind='npz'\npath='{garbage}'\n[methods.shared_bottom]\n")
    refused(capsys, ["sweep", str(config), "--tracking-uri", default_uri(store)], str(garbage))
    assert not (store / DB_NAME).exists() and runs_in(store) == 0


# ------------------------------------------------------------------ option types
@pytest.mark.parametrize(("assignment", "needles"), [
    ("protocol.epochs=2.5", ["epochs=2.5", "should be an integer"]),
    ("protocol.epochs=true", ["epochs=True", "should be an integer"]),
    ("protocol.epochs=abc", ["epochs='abc'", "should be an integer"]),
    ("protocol.lr=fast", ["lr='fast'", "should be a number"]),
    ("dataset.tasks=4.0", ["tasks=4.0", "should be an integer"]),
    ("method.warmup_epochs=1.5", ["warmup_epochs=1.5", "should be an integer"]),
    ("method.hard=1", ["hard=1", "should be true or false"]),
    ("method.no_such_option=1", ["no_such_option", "known options"]),
    ("protocol.epoch=3", ["epoch", "known keys"]),
])
def test_wrong_option_types_and_names_are_refused(store, capsys, assignment, needles):
    refused(capsys, run_args(store, f"--set={assignment}", method="learn_to_branch"), *needles)
    assert runs_in(store) == 0


# ---------------------------------------------------------------------- ranges
@pytest.mark.parametrize(("extra", "needles"), [
    (["--budget", "99"], ["budget 99", "T=4"]),
    (["--budget", "0.5"], ["below 1.0"]),
    (["--seed", "-1"], ["--seed", "negative"]),
    (["--set=protocol.lr=-1"], ["lr=-1", "outside"]),
    (["--set=protocol.optimizer=rmsprop"], ["optimizer='rmsprop'", "not one of"]),
    (["--set=dataset.tasks=0"], ["tasks=0", "outside"]),
])
def test_out_of_range_values_are_refused(store, capsys, extra, needles):
    refused(capsys, run_args(store, *FAST, *extra), *needles)
    assert runs_in(store) == 0


def test_unknown_names_and_unmet_needs_are_refused(store, capsys):
    refused(capsys, run_args(store, method="no_such_method"), "unknown method 'no_such_method'")
    refused(capsys, run_args(store, dataset="digits", method="oracle_tree"), "known task grouping")
    conflict = run_args(store, *FAST, "--set=method.warmup_epochs=5", "--set=method.epochs=5", method="learn_to_branch")
    refused(capsys, conflict, "warmup_epochs", "epochs")
    assert runs_in(store) == 0


# ------------------------------------------------------------------- evaluate
def test_evaluate_refuses_what_it_cannot_rebuild(tmp_path, store, capsys):
    uri = default_uri(store)
    tracking = Tracking(uri)
    failed = tracking.start_run("failed", {"bb.kind": "cell"})
    tracking.end_run(failed, "FAILED", "ValueError: it broke")
    broken = tracking.start_run("broken", {"bb.kind": "cell"})
    tracking.log_object(broken, "config.json", {"dataset": {"name": "synthetic", "options": {}}})
    tracking.log_object(broken, "plan.json", {"tasks": ["a"], "blocks": ["b0"], "nodes": {"a": [0, 0]}})
    tracking.end_run(broken, "FINISHED")
    sweep = tracking.start_run("sweep", {"bb.kind": "sweep"})
    before = runs_in(store)
    refused(capsys, ["evaluate", "no-such-run", "--tracking-uri", uri], "no run 'no-such-run'")
    refused(capsys, ["evaluate", failed, "--tracking-uri", uri], failed, "FAILED", "it broke")
    refused(capsys, ["evaluate", broken, "--tracking-uri", uri], broken, "plan.json is invalid")
    refused(capsys, ["evaluate", sweep, "--tracking-uri", uri], sweep, "not a branchbench cell run")
    bad_plan = tmp_path / "plan.json"
    bad_plan.write_text(json.dumps({"tasks": ["t0"], "blocks": ["fc0"]}))
    refused(capsys, run_args(store, "--plan", str(bad_plan), method=None), str(bad_plan), "nodes")
    assert runs_in(store) == before


# --------------------------------------------------------------- tracking URIs
def test_unusable_tracking_uris_are_refused(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = [
        ("foo://bar", "unknown scheme 'foo'"),
        (str(tmp_path / "plain-folder"), "plain folder"),
        (f"sqlite:///{a_file}/mlruns.db", "cannot create the store's folder"),
    ]
    for uri, needle in cases:
        for command in (["run", "--dataset", "synthetic", "--method", "shared_bottom", *FAST], ["report"],
                        ["evaluate", "some-run"]):
            refused(capsys, [*command, "--tracking-uri", uri], uri, needle)
    assert not (tmp_path / "plain-folder").exists()
