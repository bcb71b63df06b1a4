"""Datasets: synthetic (grouped, seeded), digits (scikit-learn); npz/csv in tests/test_npz.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from branchbench.core.method import OptionError
from branchbench.datasets.digits import BINARY_TASKS, Digits
from branchbench.datasets.fixtures import make_npz, write_csv_fixture
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
    assert bench.input_shape == (64,)
    assert [len(bench.splits[s]) for s in ("train", "val", "test")] == [500, 1000, 5000]
    assert bench.backbone.block_names == ["fc0", "fc1", "fc2", "fc3"]
    assert bench.backbone.blocks[-1].out_shape == (8,)
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


def test_synthetic_norm_option_and_identity():
    bare = Synthetic(norm="none", **SMALL)
    assert bare.load().backbone.name.endswith("-nonorm")
    assert bare.identity()["norm"] == "none"
    default = Synthetic(**SMALL)
    assert "norm" not in default.identity()  # at its default, cells made before the option keep their identity
    assert default.identity() == {k: v for k, v in default.get_params().items() if k != "norm"}
    assert default.load().fingerprint() == bare.load().fingerprint()  # the data does not change
    with pytest.raises(OptionError, match="norm='batch' is not one of"):
        Synthetic(norm="batch")


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
