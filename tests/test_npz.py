"""Bring-your-own data (npz / csv): both npz layouts, every malformed file refused by validate(), identity."""

from __future__ import annotations

import logging
import re
import shutil
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from branchbench.core.options import OptionError
from branchbench.datasets.base import DataError
from branchbench.datasets.fixtures import (
    write_csv_fixture,
    write_npz_fixture,
    write_split_npz_fixture,
)
from branchbench.datasets.npz import DataFileError, NpzDataset

N = 120
LOGGER = "branchbench.datasets.npz"


# --------------------------------------------------------- one array of all rows
def test_npz_round_trip_per_task_arrays_with_split_and_groups(tmp_path):
    path = write_npz_fixture(tmp_path / "d.npz", split=True, groups=[0, 0, 1])
    ds = NpzDataset(path=str(path), standardize=False)
    assert ds.has_groups
    bench = ds.load()
    assert bench.task_names == ["a", "b", "c"] == ds.task_names()
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
    ds = NpzDataset(path=str(path), standardize=False)
    bench = ds.load()
    assert bench.task_names == ["a", "b", "c"] == ds.task_names()
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


# ------------------------------------------------------------ one pair per split
def test_per_split_layout_keeps_each_split_s_rows(tmp_path):
    path = write_split_npz_fixture(tmp_path / "s.npz", groups=[0, 0, 1])
    ds = NpzDataset(path=str(path), standardize=False)
    assert ds.has_groups and ds.task_names() == ["a", "b", "c"]
    bench = ds.load()
    assert bench.task_names == ["a", "b", "c"]
    assert [t.kind for t in bench.tasks] == ["binary", "regression", "multiclass"]
    assert bench.groups == {"a": 0, "b": 0, "c": 1}
    with np.load(path) as f:
        for s in ("train", "val", "test"):
            np.testing.assert_array_equal(bench.splits[s].x.numpy(), f[f"x_{s}"])
            np.testing.assert_array_equal(bench.splits[s].y["b"].numpy(), f[f"y_{s}"][:, 1])
            np.testing.assert_array_equal(bench.splits[s].y["c"].numpy(), f[f"y_{s}"][:, 2].astype(np.int64))


def test_per_split_layout_without_val_draws_val_from_train_by_data_seed(tmp_path):
    path = write_split_npz_fixture(tmp_path / "nv.npz", sizes={"train": 100, "test": 30},
                                   write_task_names=False, write_kinds=False)
    ds = NpzDataset(path=str(path), standardize=False, val_fraction=0.2)
    assert ds.task_names() == ["t0", "t1", "t2"]
    bench = ds.load()
    assert bench.task_names == ["t0", "t1", "t2"]
    assert {s: len(bench.splits[s]) for s in ("train", "val", "test")} == {"train": 80, "val": 20, "test": 30}
    with np.load(path) as f:
        x_train, x_test = f["x_train"], f["x_test"]
    np.testing.assert_array_equal(bench.splits["test"].x.numpy(), x_test)  # test is never touched
    pooled = np.concatenate([bench.splits["train"].x.numpy(), bench.splits["val"].x.numpy()])
    np.testing.assert_array_equal(np.sort(pooled, axis=0), np.sort(x_train, axis=0))
    same = NpzDataset(path=str(path), standardize=False, val_fraction=0.2).load()
    assert same.fingerprint() == bench.fingerprint()
    other = NpzDataset(path=str(path), standardize=False, val_fraction=0.2, data_seed=1).load()
    assert not torch.equal(other.splits["val"].x, bench.splits["val"].x)


def test_scikit_learn_spelling_x_upper_case_is_read(tmp_path):
    path = write_split_npz_fixture(tmp_path / "sk.npz", sizes={"train": 90, "test": 30})
    with np.load(path) as f:
        arrays = {k.replace("x_", "X_"): f[k] for k in f.files}
    upper = tmp_path / "upper.npz"
    np.savez(upper, **arrays, x_val_notes=np.array(["kept aside"]))
    ds = NpzDataset(path=str(upper))
    assert ds.task_names() == ["a", "b", "c"]
    assert ds.load().fingerprint() == NpzDataset(path=str(path)).load().fingerprint()
    float64 = write_split_npz_fixture(tmp_path / "f64.npz", extra={"x_val": np.zeros((20, 6))})
    assert NpzDataset(path=str(float64)).load().splits["val"].x.dtype == torch.float32  # float dtypes may differ


def test_per_split_layout_one_task_images_and_a_1d_target(tmp_path):
    path = write_split_npz_fixture(tmp_path / "one.npz", tasks=["digit"], kinds=["multiclass"],
                                   image_shape=(1, 6, 6), image_dtype="uint8", write_task_names=False)
    ds = NpzDataset(path=str(path))
    with np.load(path) as f:
        assert f["y_train"].ndim == 1
    assert ds.task_names() == ["y"]
    bench = ds.load()
    assert bench.task_names == ["y"] and bench.tasks[0].kind == "multiclass"
    assert bench.input_shape == (1, 6, 6) and bench.splits["val"].x.dtype == torch.uint8


# ------------------------------------------------------------------ extras
def test_unused_arrays_are_ignored_with_one_warning(tmp_path, caplog):
    meta = {"meta": np.array(["collected 2024", "by hand"]), "notes": np.array([{"a": 1}], dtype=object)}
    path = write_npz_fixture(tmp_path / "meta.npz", extra=meta)
    ds = NpzDataset(path=str(path))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        ds.validate()
        bench = ds.load()
    assert bench.task_names == ["a", "b", "c"]
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1, [r.getMessage() for r in records]  # once per instance, not per reading
    assert records[0].levelno == logging.WARNING
    text = records[0].getMessage()
    assert str(path) in text and "'meta'" in text and "'notes'" in text  # the object array is never read
    split_file = write_split_npz_fixture(tmp_path / "typo.npz", extra={"kind": np.array(["binary"] * 3)})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        NpzDataset(path=str(split_file)).validate()
    assert "is 'kind' a typo of 'kinds'?" in caplog.text


def test_standardize_targets_scales_regression_targets_on_train_rows(tmp_path):
    path = write_npz_fixture(tmp_path / "r.npz", split=True,
                             extra={"y_b": np.linspace(10, 50, N).astype(np.float32), "y_d": np.full(N, 3.0)},
                             kinds=["binary", "regression", "multiclass"], write_kinds=False)
    plain = NpzDataset(path=str(path), kinds="d=regression").load()
    with np.load(path) as f:
        np.testing.assert_array_equal(plain.splits["test"].y["b"].numpy(), f["y_b"][f["split"] == "test"])
    scaled = NpzDataset(path=str(path), kinds="d=regression", standardize_targets=True).load()
    train_b = scaled.splits["train"].y["b"].double()
    assert abs(float(train_b.mean())) < 1e-5 and abs(float(train_b.std(unbiased=False)) - 1) < 1e-5
    assert torch.equal(scaled.splits["test"].y["d"], torch.zeros(len(scaled.splits["test"])))  # std 0 -> 1
    for task in ("a", "c"):  # binary and multiclass targets stay as given
        assert torch.equal(scaled.splits["val"].y[task], plain.splits["val"].y[task])
    mean = float(plain.splits["train"].y["b"].double().mean())
    std = float(plain.splits["train"].y["b"].double().std(unbiased=False))
    torch.testing.assert_close(scaled.splits["test"].y["b"], (plain.splits["test"].y["b"] - mean) / std)


def test_norm_option_builds_the_mlp_without_layernorm(tmp_path):
    path = write_npz_fixture(tmp_path / "n.npz")
    default = NpzDataset(path=str(path)).load().backbone
    bare = NpzDataset(path=str(path), norm="none").load().backbone
    assert any(isinstance(m, nn.LayerNorm) for m in default.blocks[0].make().modules())
    assert not any(isinstance(m, nn.LayerNorm) for m in bare.blocks[0].make().modules())
    assert [a - b for a, b in zip(default.block_params, bare.block_params, strict=True)] == [2 * 64] * 4
    with pytest.raises(OptionError, match=r"norm='batchnorm' is not one of \['layernorm', 'none'\]"):
        NpzDataset(path=str(path), norm="batchnorm")


# ------------------------------------------------ constructor, has_groups, identity
def test_constructor_reads_no_file_and_has_groups_is_lazy(tmp_path):
    missing = NpzDataset(path=str(tmp_path / "later.npz"))  # no error: nothing is read yet
    assert not missing.has_groups and NpzDataset.has_groups is False
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(b"\x00" * 10)
    assert not NpzDataset(path=str(garbage)).has_groups
    path = write_split_npz_fixture(tmp_path / "later.npz", groups=[0, 1, 1],
                                   extra={"notes": np.array([{"a": 1}], dtype=object)})
    assert NpzDataset(path=str(path)).has_groups  # read from the member names alone
    assert not NpzDataset(path=str(write_split_npz_fixture(tmp_path / "ng.npz"))).has_groups


@pytest.mark.parametrize("maker", ["pooled", "matrix", "split", "csv"])
def test_identity_follows_the_content_not_the_path(tmp_path, maker):
    write = {
        "pooled": lambda p: write_npz_fixture(p.with_suffix(".npz")),
        "matrix": lambda p: write_npz_fixture(p.with_suffix(".npz"), layout="matrix"),
        "split": lambda p: write_split_npz_fixture(p.with_suffix(".npz")),
        "csv": lambda p: write_csv_fixture(p.with_suffix(".csv")),
    }[maker]
    path = write(tmp_path / "a" / "data")
    moved = tmp_path / "b" / ("copy" + path.suffix)
    moved.parent.mkdir()
    shutil.copy(path, moved)
    original = NpzDataset(path=str(path), width=32)
    identity = original.identity()
    assert identity == NpzDataset(path=str(moved), width=32).identity()
    assert str(path) not in str(identity) and identity["width"] == 32
    assert identity != NpzDataset(path=str(moved), width=16).identity()
    write(tmp_path / "a" / "data").write_bytes(moved.read_bytes())  # rewritten with the same bytes
    assert NpzDataset(path=str(path), width=32).identity() == identity
    edited = write_npz_fixture(path, seed=1) if path.suffix == ".npz" else write_csv_fixture(path, seed=1)
    assert NpzDataset(path=str(edited), width=32).identity() != identity
    assert original.task_names() == NpzDataset(path=str(edited)).load().task_names


def test_task_names_answer_from_headers_as_load_does(tmp_path):
    cases = [
        write_npz_fixture(tmp_path / "p.npz", tasks=["z", "y1", "m"]),
        write_npz_fixture(tmp_path / "m.npz", layout="matrix", tasks=["u", "v", "w"]),
        write_npz_fixture(tmp_path / "d.npz", layout="matrix", drop=["task_names"]),
        write_npz_fixture(tmp_path / "c.npz", layout="matrix", drop=["task_names"], compress=True),
        write_split_npz_fixture(tmp_path / "s.npz", write_task_names=False),
        write_split_npz_fixture(tmp_path / "t.npz", tasks=["q", "r", "s"]),
        write_csv_fixture(tmp_path / "c.csv", tasks=["k", "j", "i"]),
    ]
    for path in cases:
        ds = NpzDataset(path=str(path))
        assert ds.task_names() == ds.load().task_names, path
    assert NpzDataset(path=str(cases[-1]), features="x_0,y_k").task_names() == ["j", "i"]
    with pytest.raises(DataFileError, match="has no targets"):
        NpzDataset(path=str(write_npz_fixture(tmp_path / "n.npz", drop=["y_a", "y_b", "y_c"]))).task_names()


# --------------------------------------------------------------- malformed files
def _text(path, text: str, suffix: str = ".csv"):
    path = path.with_suffix(suffix)
    path.write_text(text)
    return path


def _bytes(path, data: bytes, suffix: str = ".npz"):
    path = path.with_suffix(suffix)
    path.write_bytes(data)
    return path


def _truncated(path):
    good = write_npz_fixture(path).read_bytes()
    return _bytes(path, good[: len(good) // 2])


def _npy(path):
    with path.open("wb") as handle:
        np.save(handle, np.zeros((4, 2)))
    return path


def _zipped_text(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", b"1,2,3")
        archive.writestr("y_a.npy", b"0,1,0")
    return path


def _directory(path):
    path = path.with_suffix(".npz")
    path.mkdir()
    return path


CSV_HEADER = "x_0,x_1,y_a\n"
# case -> (make the file at the given path and return its path, the message's problem, its fix)
MALFORMED = {
    "missing file": (lambda p: p.parent / "nope.npz", "no such file", "give path= an existing"),
    "directory": (_directory, "is a directory, not a file", "an existing .npz or .csv file"),
    "wrong suffix": (lambda p: _text(p, "1,2,3", ".txt"), r"suffix '.txt'; only .npz and .csv", "numpy.savez"),
    "garbage bytes": (lambda p: _bytes(p, b"this is not a zip file at all"), r"not a valid .npz \(zip\) archive",
                      "numpy.savez"),
    "truncated zip": (_truncated, "truncated or damaged", "write the file again"),
    "npy renamed npz": (_npy, r"single array \(.npy\)", "save named arrays"),
    "zip of text files": (_zipped_text, r"member 'x' of the archive is not a numpy array", "numpy.savez"),
    "empty npz": (lambda p: _bytes(p, b""), r"is empty \(0 bytes\)", "write the data again"),
    "empty csv": (lambda p: _bytes(p, b"", ".csv"), r"is empty \(0 bytes\)", "to_csv"),
    "object array": (lambda p: write_npz_fixture(p, extra={"kinds": np.array(["binary", "x", 1], dtype=object)}),
                     "array 'kinds' is an object array", "dtype=str"),
    "missing x": (lambda p: write_npz_fixture(p, drop=["x"]), "has no array 'x'", "save the inputs as x"),
    "no targets": (lambda p: write_npz_fixture(p, drop=["y_a", "y_b", "y_c", "kinds"]), "has no targets",
                   "add one array y_<task>"),
    "mismatched lengths": (lambda p: write_npz_fixture(p, extra={"y_a": np.zeros(50)}),
                           "task 'a' has 50 targets but x has 120 rows", "one target per row"),
    "per-split lengths": (lambda p: write_split_npz_fixture(p, extra={"y_val": np.zeros((7, 3))}),
                          "y_val has 7 rows but x_val has 20", "one target row per row of x_val"),
    "per-split columns": (lambda p: write_split_npz_fixture(p, extra={"y_test": np.zeros((20, 2))}),
                          "y_test has 2 columns but y_train has 3", "one column per task"),
    "per-split shapes": (lambda p: write_split_npz_fixture(p, extra={"x_test": np.zeros((20, 5), np.float32)}),
                         r"x_test rows have shape \(5,\) but x_train rows \(6,\)", "the same shape per row"),
    "per-split uint8 and float": (lambda p: write_split_npz_fixture(p, image_shape=(1, 4, 4), image_dtype="uint8",
                                                                    extra={"x_val": np.zeros((20, 1, 4, 4))}),
                                  "x_val is float64 but x_train is uint8", "every one as float"),
    "both X and x": (lambda p: write_npz_fixture(p, extra={"X": np.zeros((N, 6))}), "has both 'X' and 'x'",
                     "keep one of them"),
    "NaN targets": (lambda p: write_npz_fixture(p, extra={"y_b": np.r_[np.nan, np.ones(N - 1)]}),
                    r"task 'b' has 1 NaN or infinite target\(s\) \(first at row 0\)", "drop or fill those rows"),
    "inf inputs": (lambda p: write_npz_fixture(p, extra={"x": np.r_[np.ones((5, 3)), np.full((N - 5, 3), np.inf)]}),
                   r"x has NaN or infinite values in 115 row\(s\) \(first at row 5\)", "drop or fill"),
    "NaN in x_val": (lambda p: write_split_npz_fixture(p, extra={"x_val": np.r_[np.zeros((3, 6)), np.full((17, 6), np.nan)]
                                                                 .astype(np.float32)}),
                     r"x_train/x_val/x_test has NaN .* \(first at row 3 of x_val/y_val\)", "drop or fill"),
    "csv NaN target": (lambda p: write_csv_fixture(p.with_suffix(".csv"), extra={"y_a": [0.0] * 3 + [np.nan] * (N - 3)}),
                       r"task 'a' has 117 NaN or infinite target\(s\) \(first at line 5\)", "drop or fill"),
    "unknown kind": (lambda p: write_npz_fixture(p, extra={"kinds": np.array(["binary", "ordinal", "binary"])}),
                     "task 'b' has unknown kind 'ordinal'", "use one of"),
    "kinds length": (lambda p: write_npz_fixture(p, extra={"kinds": np.array(["binary", "binary"])}),
                     "kinds has 2 entries for 3 tasks", "one kind per task"),
    "binary with a 2": (lambda p: write_npz_fixture(p, extra={"y_a": np.r_[2.0, np.zeros(N - 1)]}),
                        r"task 'a' is binary \(from the file's kinds array\) but has values \[0.0, 2.0\]",
                        "use 0/1 targets"),
    "multiclass with a fraction": (lambda p: write_split_npz_fixture(p, extra={"kinds": np.array(["binary", "multiclass",
                                                                                                 "multiclass"])}),
                                   r"task 'b' is multiclass .* not whole numbers", "encode classes as integers"),
    "groups length": (lambda p: write_npz_fixture(p, groups=[0, 1]), "groups has 2 entries for 3 tasks",
                      "one integer group id per task"),
    "groups not integers": (lambda p: write_split_npz_fixture(p, extra={"groups": np.array([0, 0.5, 1])}),
                            r"group of task 'b' is 0.5 \(from the file's groups array\), not an integer", "integer group id"),
    "bad split value": (lambda p: write_npz_fixture(p, extra={"split": np.array(["train", "dev"] * (N // 2))}),
                        r"split has unknown value\(s\) \['dev'\]", "use only"),
    "split without val": (lambda p: write_npz_fixture(p, extra={"split": np.array(["train", "test"] * (N // 2))}),
                          r"split gives no rows to \['val'\]", "at least one row each"),
    "too few rows": (lambda p: write_npz_fixture(p, n=3), "3 rows are too few for val_fraction", "add rows"),
    "too few to draw val": (lambda p: write_split_npz_fixture(p, sizes={"train": 2, "test": 3}),
                            "x_train has 2 rows, too few to draw val_fraction", "add x_val and y_val"),
    "non-square images": (lambda p: write_npz_fixture(p, extra={"x": np.zeros((N, 1, 8, 6), np.float32)}),
                          "images in x are 8 x 6, not square", "pad or resize"),
    "string targets": (lambda p: write_npz_fixture(p, extra={"y_a": np.array(["cat"] * N)}), "not numbers",
                       "encode targets as numbers"),
    "y and y_task": (lambda p: write_npz_fixture(p, extra={"y": np.zeros((N, 3))}), "both a 'y' array and y_<task>",
                     "give targets one way"),
    "mixed layouts": (lambda p: write_split_npz_fixture(p, extra={"x": np.zeros((N, 6))}),
                      r"mixes the two layouts: .* single-array ones \['x'\]", "use one layout"),
    "per-task target beside per-split": (lambda p: write_split_npz_fixture(p, extra={"y_a": np.zeros(N)}),
                                         r"mixes the two layouts: .*\['y_a'\]", "use one layout"),
    "per-split without y_test": (lambda p: write_split_npz_fixture(p, drop=["y_test"]),
                                 r"lacks \['y_test'\]", "give x_train, y_train, x_test, y_test"),
    "x_val without y_val": (lambda p: write_split_npz_fixture(p, drop=["y_val"]), r"lacks \['y_val'\]",
                            "x_val with y_val, or neither"),
    "header-only csv": (lambda p: _text(p, CSV_HEADER), "has a header .* but no rows", "add one row per sample"),
    "csv text feature": (lambda p: _text(p, CSV_HEADER + "1,2,0\n3,4,1\n5,abc,0\n6,xyz,1\n"),
                         r"column 'x_1' has a non-numeric value 'abc' at line 4 \(2 such row\(s\)\)",
                         "encode features and targets as numbers"),
    "csv without x_": (lambda p: write_csv_fixture(p.with_suffix(".csv"), drop=[f"x_{i}" for i in range(5)]),
                       "has no feature columns", "prefix feature columns with x_"),
    "csv without y_": (lambda p: write_csv_fixture(p.with_suffix(".csv"), drop=["y_a", "y_b", "y_c"]),
                       "has no target columns", "name each task's target column y_<task>"),
    "csv ragged": (lambda p: _text(p, "x_0,y_a\n1,0\n2,1,5,6\n"), "could not be read as a CSV table", "to_csv"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_files_are_refused_by_validate_with_one_clear_line(case, tmp_path):
    make, problem, fix = MALFORMED[case]
    path = make(tmp_path / "bad.npz")
    ds = NpzDataset(path=str(path))  # the constructor reads nothing, so it cannot fail here
    with pytest.raises(DataFileError) as err:
        ds.validate()
    text = str(err.value)
    assert isinstance(err.value, DataError)
    assert "\n" not in text, text
    assert text.startswith(f"{path}: "), text  # names the file
    assert re.search(problem, text.split(". Fix: ")[0]), text  # says what is wrong
    assert re.search(re.escape(fix), text.split(". Fix: ")[1]), text  # and what to do
    assert "pickled" not in text, text
    with pytest.raises(DataFileError) as again:
        ds.load()
    assert str(again.value) == text  # load() makes no check validate() misses


def test_npz_path_and_option_errors(tmp_path):
    with pytest.raises(DataFileError, match="option path is required"):
        NpzDataset().validate()
    with pytest.raises(DataFileError, match="option path is required"):
        NpzDataset().protocol()  # a cell resolving the config fails early
    good = write_npz_fixture(tmp_path / "ok.npz")
    for options, message in [
        (dict(kinds="z=binary"), r"kinds option names unknown task\(s\) \['z'\]"),
        (dict(kinds="categorical"), "unknown kind 'categorical'"),
        (dict(groups="a=0"), "groups option must name every task"),
        (dict(features="x_0"), "features option applies to .csv files only"),
    ]:
        with pytest.raises(DataFileError, match=message):
            NpzDataset(path=str(good), **options).validate()
    with pytest.raises(OptionError, match="channels="):
        NpzDataset(path=str(good), channels="32,x")
    with pytest.raises(OptionError, match="val_fraction \\+ test_fraction"):
        NpzDataset(path=str(good), val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(OptionError, match="should be a string"):
        NpzDataset(path=3)
    csv = write_csv_fixture(tmp_path / "f.csv")
    with pytest.raises(DataFileError, match=r"features option names column\(s\) \['x_9'\]"):
        NpzDataset(path=str(csv), features="x_0,x_9").validate()


def test_a_damaged_member_names_the_array(tmp_path):
    path = write_npz_fixture(tmp_path / "crc.npz")
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: archive.read(info) for info in archive.infolist()}
    corrupt = tmp_path / "corrupt.npz"
    with zipfile.ZipFile(corrupt, "w") as archive:
        for name, data in members.items():
            if name == "y_b.npy":
                data = data[:-8]  # a short array: its header promises more bytes than it holds
            archive.writestr(name, data)
    with pytest.raises(DataFileError, match=r"corrupt.npz: array 'y_b' could not be read .*Fix: write the file again"):
        NpzDataset(path=str(corrupt)).validate()
