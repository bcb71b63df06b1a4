"""Datasets: synthetic (grouped, seeded), digits (scikit-learn), npz/csv (bring your own)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from branchbench.core.method import OptionError
from branchbench.datasets.digits import BINARY_TASKS, Digits
from branchbench.datasets.fixtures import make_npz, write_csv_fixture, write_npz_fixture
from branchbench.datasets.npz import DataFileError, NpzDataset
from branchbench.datasets.synthetic import Synthetic
from branchbench.plugins import create_dataset

SMALL = dict(n_train=400, n_val=100, n_test=100)


def _train_targets(bench) -> np.ndarray:
    return torch.stack([bench.splits["train"].y[t] for t in bench.task_names], 1).numpy()


def _mean_corr(corr: np.ndarray, mask: np.ndarray) -> float:
    return float(corr[mask].mean())


def _masks(labels: list[int]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    return same, labels[:, None] != labels[None, :]


# ----------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_per_data_seed():
    a, b = Synthetic(data_seed=3, **SMALL).load(), Synthetic(data_seed=3, **SMALL).load()
    for split in ("train", "val", "test"):
        assert torch.equal(a.splits[split].x, b.splits[split].x)
        for task in a.task_names:
            assert torch.equal(a.splits[split].y[task], b.splits[split].y[task])
    assert a.groups == b.groups
    assert a.fingerprint() == b.fingerprint()
    c = Synthetic(data_seed=4, **SMALL).load()
    assert c.fingerprint() != a.fingerprint()
    assert not torch.equal(a.splits["train"].x, c.splits["train"].x)


def test_synthetic_default_shapes_protocol_and_standardisation():
    ds = Synthetic()
    bench = ds.load()
    assert bench.task_names == [f"t{i}" for i in range(9)]
    assert all(t.kind == "regression" for t in bench.tasks)
    assert bench.input_shape == (32,)
    assert [len(bench.splits[s]) for s in ("train", "val", "test")] == [1000, 1000, 5000]
    assert bench.backbone.block_names == ["fc0", "fc1", "fc2", "fc3"]
    assert bench.backbone.blocks[-1].out_shape == (16,)
    assert ds.protocol() == bench.protocol
    assert bench.protocol.threads == 1 and bench.protocol.early_stopping > 0
    y = _train_targets(bench)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(0), 1.0, atol=1e-3)
    assert bench.splits["train"].x.dtype == torch.float32


def test_synthetic_task_order_is_a_seeded_permutation_of_equal_groups():
    orders = []
    for seed in range(5):
        bench = Synthetic(tasks=12, groups=3, data_seed=seed, **SMALL).load()
        labels = [bench.groups[t] for t in bench.task_names]
        assert sorted(np.bincount(labels).tolist()) == [4, 4, 4]
        assert sorted(map(sorted, bench.true_partition())) == sorted(
            sorted(t for t in bench.task_names if bench.groups[t] == g) for g in range(3)
        )
        orders.append(tuple(labels))
    contiguous = [list(o) == sorted(o) for o in orders]
    assert not all(contiguous), "group labels should not follow task index"
    assert len(set(orders)) > 1, "different data seeds should permute tasks differently"
    # the seed's own ordering: data_seed 0 does not list its groups contiguously
    labels0 = orders[0]
    changes = sum(a != b for a, b in zip(labels0, labels0[1:], strict=False))
    assert changes > 2


def test_synthetic_within_group_targets_correlate_more_than_across():
    bench = Synthetic(**{**SMALL, "n_train": 2000}).load()
    corr = np.corrcoef(_train_targets(bench).T)
    same, other = _masks([bench.groups[t] for t in bench.task_names])
    within, across = _mean_corr(corr, same), _mean_corr(corr, other)
    assert within > 0.4, (within, across)
    assert abs(across) < 0.15, (within, across)
    assert within > across + 0.3


def test_synthetic_within_corr_controls_within_group_similarity():
    def within(c):
        bench = Synthetic(within_corr=c, noise=0.0, n_train=2000).load()
        corr = np.corrcoef(_train_targets(bench).T)
        same, _ = _masks([bench.groups[t] for t in bench.task_names])
        return _mean_corr(corr, same)

    assert within(1.0) > 0.999
    assert within(0.99) > within(0.7) > within(0.0)


def test_synthetic_conflict_makes_groups_anti_correlated():
    def across(conflict):
        bench = Synthetic(conflict=conflict, noise=0.0, frequency=0.5, groups=3, n_train=2000).load()
        corr = np.corrcoef(_train_targets(bench).T)
        _, other = _masks([bench.groups[t] for t in bench.task_names])
        return _mean_corr(corr, other)

    assert abs(across(0.0)) < 0.1
    assert across(1.0) < -0.2


def test_synthetic_hierarchy_correlates_groups_within_a_supergroup():
    ds = Synthetic(tasks=8, groups=4, supergroups=2, supergroup_corr=0.8, noise=0.0, frequency=0.5, n_train=2000)
    bench = ds.load()
    hierarchy = ds.hierarchy()
    assert {t: g for t, (_, g) in hierarchy.items()} == bench.groups
    supers = {}
    for s, g in hierarchy.values():
        supers.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in supers.values()), "a group lies in one supergroup"
    assert sorted(np.bincount([s for s, _ in hierarchy.values()]).tolist()) == [4, 4]
    corr = np.corrcoef(_train_targets(bench).T)
    groups = np.array([hierarchy[t][1] for t in bench.task_names])
    sgs = np.array([hierarchy[t][0] for t in bench.task_names])
    sibling = (sgs[:, None] == sgs[None, :]) & (groups[:, None] != groups[None, :])
    far = sgs[:, None] != sgs[None, :]
    assert _mean_corr(corr, sibling) > _mean_corr(corr, far) + 0.3


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(tasks=10, groups=3), "tasks=10 is not divisible by groups=3"),
        (dict(tasks=8, groups=4, supergroups=3), "groups=4 is not divisible by supergroups=3"),
        (dict(input_dim=2, groups=3), "input_dim=2 is too small .*use input_dim >= 3"),
        (dict(input_dim=5, tasks=8, groups=4, supergroups=2), "use input_dim >= 6"),
        (dict(within_corr=1.5), r"within_corr=1.5 is outside \[0.0, 1.0\]"),
        (dict(tasks="nine"), "should be an integer"),
        (dict(tasks=2.0), "should be an integer"),
        (dict(tasks=True), "should be an integer"),
        (dict(task=9), r"unknown option\(s\) \['task'\]"),
    ],
)
def test_synthetic_rejects_bad_options_clearly(options, message):
    with pytest.raises(OptionError, match=message):
        Synthetic(**options)


def test_synthetic_large_load_is_fast():
    import time

    start = time.perf_counter()
    bench = Synthetic(n_train=100_000, n_val=10_000, n_test=10_000).load()
    assert len(bench.splits["train"]) == 100_000
    assert time.perf_counter() - start < 10.0


# -------------------------------------------------------------------- digits
def test_digits_loads_balanced_binary_tasks():
    ds = Digits()
    bench = ds.load()
    assert bench.task_names == list(BINARY_TASKS)
    assert bench.groups is None and not Digits.has_groups
    assert ds.protocol() == bench.protocol
    sizes = {s: len(bench.splits[s]) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == pytest.approx(0.25 * 1797, abs=2)
    assert sizes["val"] == pytest.approx(0.15 * 1797, abs=2)
    x = bench.splits["train"].x
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert bench.input_shape == bench.backbone.input_shape
    for task in bench.tasks:
        assert task.kind == "binary"
        for split in bench.splits.values():
            rate = float(split.y[task.name].mean())
            assert 0.2 < rate < 0.8, (task.name, rate)


def test_digits_split_is_seeded_and_stratified_and_multiclass_is_optional():
    a = Digits(multiclass=True, tasks="even,loop").load()
    assert a.task_names == ["even", "loop", "digit"]
    digit = a.task("digit")
    assert digit.kind == "multiclass" and digit.n_outputs == 10
    counts = torch.bincount(a.splits["test"].y["digit"], minlength=10)
    assert int(counts.min()) >= 40 and int(counts.max()) <= 50  # stratified: ~45 of each
    assert a.fingerprint() == Digits(multiclass=True, tasks="even,loop").load().fingerprint()
    b = Digits(multiclass=True, tasks="even,loop", data_seed=1).load()
    assert not torch.equal(a.splits["test"].x, b.splits["test"].x)
    # the labels agree with the task definitions
    d, even = a.splits["train"].y["digit"], a.splits["train"].y["even"]
    assert torch.equal(even.bool(), d % 2 == 0)


def test_digits_rejects_unknown_tasks():
    with pytest.raises(OptionError, match=r"unknown task\(s\) \['odd'\].*choose from"):
        Digits(tasks="even,odd")


# ------------------------------------------------------------------ npz / csv
def test_npz_round_trip_per_task_arrays_with_split_and_groups(tmp_path):
    path = write_npz_fixture(tmp_path / "d.npz", split=True, groups=[0, 0, 1])
    ds = NpzDataset(path=str(path), standardize=False)
    assert ds.has_groups
    bench = ds.load()
    assert bench.task_names == ["a", "b", "c"]
    assert [t.kind for t in bench.tasks] == ["binary", "regression", "multiclass"]
    assert bench.task("c").n_outputs == 3
    assert bench.groups == {"a": 0, "b": 0, "c": 1}
    with np.load(path) as f:
        split = f["split"]
        for s in ("train", "val", "test"):
            np.testing.assert_array_equal(bench.splits[s].x.numpy(), f["x"][split == s])
            np.testing.assert_array_equal(bench.splits[s].y["c"].numpy(), f["y_c"][split == s])
    assert bench.splits["train"].y["c"].dtype == torch.int64
    assert bench.splits["train"].y["a"].dtype == torch.float32
    assert ds.protocol() == bench.protocol


def test_npz_matrix_layout_and_inferred_kinds(tmp_path):
    path = write_npz_fixture(tmp_path / "m.npz", layout="matrix", write_kinds=False, n=200)
    ds = NpzDataset(path=path)  # a Path is accepted and stored as a str
    assert isinstance(ds.get_params()["path"], str)
    bench = ds.load()
    assert bench.task_names == ["a", "b", "c"]
    assert [t.kind for t in bench.tasks] == ["binary", "regression", "multiclass"]
    assert bench.groups is None and not ds.has_groups
    assert {s: len(bench.splits[s]) for s in ("train", "val", "test")} == {"train": 130, "val": 30, "test": 40}
    x = bench.splits["train"].x
    np.testing.assert_allclose(x.mean(0).numpy(), 0.0, atol=1e-5)  # standardised on train
    other = NpzDataset(path=path, data_seed=1).load()
    assert other.fingerprint() != bench.fingerprint()
    assert NpzDataset(path=path).load().fingerprint() == bench.fingerprint()


def test_npz_kinds_option_overrides_the_file(tmp_path):
    path = write_npz_fixture(tmp_path / "k.npz", kinds=["binary", "regression", "multiclass"])
    bench = NpzDataset(path=str(path), kinds="c=regression").load()
    assert [t.kind for t in bench.tasks] == ["binary", "regression", "regression"]
    all_binary = write_npz_fixture(tmp_path / "b.npz", kinds=["binary", "binary"], tasks=["p", "q"],
                                   write_kinds=False)
    assert [t.kind for t in NpzDataset(path=str(all_binary), kinds="binary").load().tasks] == ["binary"] * 2
    grouped = NpzDataset(path=str(path), groups="a=1,b=1,c=2")
    assert grouped.has_groups and grouped.load().groups == {"a": 1, "b": 1, "c": 2}


def test_npz_images_uint8_cache_and_cnn_backbone(tmp_path):
    path = write_npz_fixture(tmp_path / "img.npz", image_shape=(3, 8, 8), image_dtype="uint8")
    bench = NpzDataset(path=str(path)).load()
    assert bench.input_shape == (3, 8, 8) == bench.backbone.input_shape
    assert bench.backbone.name.startswith("rescnn")
    raw = bench.splits["train"].x
    assert raw.dtype == torch.uint8
    prepared = bench.prepare(raw)
    assert prepared.is_floating_point() and float(prepared.max()) <= 1.0
    gray = write_npz_fixture(tmp_path / "gray.npz", image_shape=(1, 6, 6), extra={"x": np.zeros((120, 6, 6))})
    assert NpzDataset(path=str(gray)).load().input_shape == (1, 6, 6)


def test_csv_round_trip(tmp_path):
    path = write_csv_fixture(tmp_path / "d.csv", split=True, extra={"id": np.arange(120)})
    bench = NpzDataset(path=str(path), standardize=False).load()
    assert bench.task_names == ["a", "b", "c"]
    assert [t.kind for t in bench.tasks] == ["binary", "regression", "multiclass"]  # inferred
    assert bench.input_shape == (5,)  # the id column is ignored
    import pandas as pd

    frame = pd.read_csv(path)
    test = frame[frame["split"] == "test"]
    np.testing.assert_allclose(bench.splits["test"].x.numpy(), test[[f"x_{i}" for i in range(5)]].to_numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(bench.splits["test"].y["b"].numpy(), test["y_b"].to_numpy(), rtol=1e-6)
    chosen = NpzDataset(path=str(path), features="x_0,x_3").load()
    assert chosen.input_shape == (2,)


def _bad_csv(tmp_path, text: str):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return path


N = 120
MALFORMED = {
    "missing x": (lambda p: write_npz_fixture(p, drop=["x"]), r"has no array 'x'.*Fix: save the inputs as x"),
    "no targets": (lambda p: write_npz_fixture(p, drop=["y_a", "y_b", "y_c", "kinds"]), "has no targets"),
    "mismatched lengths": (lambda p: write_npz_fixture(p, extra={"y_a": np.zeros(50)}),
                           "task 'a' has 50 targets but x has 120 rows"),
    "NaN targets": (lambda p: write_npz_fixture(p, extra={"y_b": np.r_[np.nan, np.ones(N - 1)]}),
                    r"task 'b' has 1 NaN or infinite target\(s\) \(first at row 0\)"),
    "NaN inputs": (lambda p: write_npz_fixture(p, extra={"x": np.full((N, 3), np.nan)}), "x has NaN"),
    "unknown kind": (lambda p: write_npz_fixture(p, extra={"kinds": np.array(["binary", "ordinal", "binary"])}),
                     r"task 'b' has unknown kind 'ordinal'.*use one of"),
    "kinds length": (lambda p: write_npz_fixture(p, extra={"kinds": np.array(["binary", "binary"])}),
                     "kinds has 2 entries for 3 tasks"),
    "binary with a 2": (lambda p: write_npz_fixture(p, extra={"y_a": np.r_[2.0, np.zeros(N - 1)]}),
                        r"task 'a' is binary \(from the file's kinds array\) but has values \[0.0, 2.0\]"),
    "object array": (lambda p: write_npz_fixture(p, extra={"kinds": np.array(["binary", "x", 1], dtype=object)}),
                     "object array.*dtype=str"),
    "typo in an array name": (lambda p: write_npz_fixture(p, extra={"kind": np.array(["binary"] * 3)}),
                              r"unknown array\(s\) \['kind'\]"),
    "y and y_task": (lambda p: write_npz_fixture(p, extra={"y": np.zeros((N, 3))}), "both a 'y' array and y_<task>"),
    "bad split value": (lambda p: write_npz_fixture(p, extra={"split": np.array(["train", "dev"] * (N // 2))}),
                        r"split has unknown value\(s\) \['dev'\]"),
    "empty split": (lambda p: write_npz_fixture(p, extra={"split": np.array(["train", "test"] * (N // 2))}),
                    r"split gives no rows to \['val'\]"),
    "groups length": (lambda p: write_npz_fixture(p, groups=[0, 1]), "groups has 2 entries for 3 tasks"),
    "non-square images": (lambda p: write_npz_fixture(p, extra={"x": np.zeros((N, 1, 8, 6), np.float32)}),
                          "not square"),
    "string targets": (lambda p: write_npz_fixture(p, extra={"y_a": np.array(["cat"] * N)}), "not numbers"),
    "not an archive": (lambda p: p.write_bytes(b"this is not a zip file") and p,
                       "could not be read as a .npz archive"),
    "csv without x_": (lambda p: write_csv_fixture(p.with_suffix(".csv"), drop=[f"x_{i}" for i in range(5)]),
                       "has no feature columns"),
    "csv without y_": (lambda p: write_csv_fixture(p.with_suffix(".csv"), drop=["y_a", "y_b", "y_c"]),
                       "has no target columns"),
    "csv NaN target": (lambda p: write_csv_fixture(p.with_suffix(".csv"), extra={"y_a": [np.nan] + [0.0] * (N - 1)}),
                       r"task 'a' has 1 NaN"),
    "csv text feature": (lambda p: write_csv_fixture(p.with_suffix(".csv"), extra={"x_0": ["a"] * N}),
                         r"column\(s\) \['x_0'\] are not numeric"),
    "csv ragged": (lambda p: _bad_csv(p.parent, "x_0,y_a\n1,0\n2,1,5,6\n"), "could not be read as a CSV table"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_files_fail_with_one_clear_error(case, tmp_path):
    make, message = MALFORMED[case]
    path = make(tmp_path / "bad.npz")
    with pytest.raises(DataFileError, match=message) as err:
        NpzDataset(path=str(path)).load()
    text = str(err.value)
    assert text.startswith(str(path)), text  # names the file
    assert "Fix: " in text, text  # and the fix


def test_npz_path_and_option_errors(tmp_path):
    with pytest.raises(DataFileError, match="option path is required"):
        NpzDataset().load()
    with pytest.raises(DataFileError, match="option path is required"):
        NpzDataset().protocol()  # a cell resolving the config fails early
    with pytest.raises(DataFileError, match=re.escape(str(tmp_path / "nope.npz")) + ": no such file"):
        NpzDataset(path=str(tmp_path / "nope.npz")).load()
    other = tmp_path / "data.txt"
    other.write_text("1,2,3")
    with pytest.raises(DataFileError, match=r"suffix '.txt'; only .npz and .csv"):
        NpzDataset(path=str(other)).load()
    good = write_npz_fixture(tmp_path / "ok.npz")
    with pytest.raises(DataFileError, match=r"kinds option names unknown task\(s\) \['z'\]"):
        NpzDataset(path=str(good), kinds="z=binary").load()
    with pytest.raises(DataFileError, match="unknown kind 'categorical'"):
        NpzDataset(path=str(good), kinds="categorical").load()
    with pytest.raises(DataFileError, match=r"groups option must name every task"):
        NpzDataset(path=str(good), groups="a=0").load()
    with pytest.raises(DataFileError, match="features option applies to .csv files only"):
        NpzDataset(path=str(good), features="x_0").load()
    with pytest.raises(DataFileError, match="too few for val_fraction"):
        NpzDataset(path=str(write_npz_fixture(tmp_path / "tiny.npz", n=3))).load()
    with pytest.raises(OptionError, match="channels="):
        NpzDataset(path=str(good), channels="32,x")
    csv = write_csv_fixture(tmp_path / "f.csv")
    with pytest.raises(DataFileError, match=r"features option names column\(s\) \['x_9'\]"):
        NpzDataset(path=str(csv), features="x_0,x_9").load()


# ------------------------------------------------------------------ registry
def test_datasets_are_reachable_through_the_registry(tmp_path):
    synth = create_dataset("synthetic", tasks=4, groups=2, **SMALL).load()
    assert synth.name == "synthetic" and len(synth.task_names) == 4 and synth.groups is not None
    digits = create_dataset("digits", tasks="even").load()
    assert digits.task_names == ["even"]
    npz = create_dataset("npz", path=str(make_npz(tmp_path))).load()
    assert npz.task_names == ["a", "b", "c"]
    csv = create_dataset("npz", path=str(write_csv_fixture(tmp_path / "r.csv"))).load()
    assert csv.task_names == ["a", "b", "c"]
