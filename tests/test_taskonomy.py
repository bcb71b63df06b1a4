"""Taskonomy: the three layouts parse into the tiny split, bad files are refused by name, the raw
cache is built once, targets are decoded per batch wherever the trainer uses them, data streams
from host memory with the same numbers as when resident, every method runs on the fixture, and a
trained shared-bottom beats the best constant predictor of every task."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _dense import constant_predictions
from PIL import Image

from branchbench.core import dense, streaming
from branchbench.core.backbones import mlp_backbone
from branchbench.core.benchmark import Benchmark, Split, TrainingProtocol
from branchbench.core.budget import Budget
from branchbench.core.deeplab import ASPPHead, deeplab_resnet34_backbone
from branchbench.core.options import OptionError
from branchbench.core.plan import Plan
from branchbench.core.retrain import build_net, retrain, seed_everything
from branchbench.core.streaming import StreamSplit, fits_on_device
from branchbench.core.tasks import TaskSpec
from branchbench.core.trainer import ExtraOptimizer, Trainer
from branchbench.datasets import taskonomy as taskonomy_module
from branchbench.datasets.base import DataError
from branchbench.datasets.fixtures import (
    TASKONOMY_FIXTURE_BUILDINGS,
    TASKONOMY_LAYOUTS,
    taskonomy_fixture_names,
    taskonomy_fixture_view,
    write_taskonomy_fixture,
)
from branchbench.datasets.image_cache import TMP_PREFIX
from branchbench.datasets.taskonomy import (
    TASKS,
    Taskonomy,
    decode_targets,
    nearest_index,
    read_split_file,
)

SMALL = dict(source_size=32, resolution=16, partial=True, backbone="dense", width=8, workers=1)
VIEWS = {"train": 12, "val": 6, "test": 6}
TRAIN, VAL, TEST = (TASKONOMY_FIXTURE_BUILDINGS[s][0] for s in ("train", "val", "test"))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """One small fixture per layout, written once; tests copy the one they change."""
    base = tmp_path_factory.mktemp("taskonomy")
    return {layout: write_taskonomy_fixture(base / layout, layout=layout, views=VIEWS) for layout in TASKONOMY_LAYOUTS}


@pytest.fixture
def copy(pristine, tmp_path):
    def make(layout: str = "building") -> Path:
        return Path(shutil.copytree(pristine[layout], tmp_path / f"data-{layout}"))

    return make


def dataset(root: Path, cache: Path, **options) -> Taskonomy:
    return Taskonomy(root=str(root), cache_dir=str(cache), **{**SMALL, **options})


def _complete_caches(cache: Path) -> list[Path]:
    folder = cache / "taskonomy"
    if not folder.exists():
        return []
    return [p for p in folder.iterdir() if not p.name.startswith(TMP_PREFIX) and (p / "manifest.json").exists()]


# ------------------------------------------------------------------ layouts
@pytest.mark.parametrize("layout", TASKONOMY_LAYOUTS)
def test_each_layout_parses_into_the_tiny_split_with_raw_values(pristine, tmp_path, layout):
    bench = dataset(pristine[layout], tmp_path / "cache").load()
    rows = nearest_index(32, 16)
    for split, building in (("train", TRAIN), ("val", VAL), ("test", TEST)):
        part = bench.splits[split]
        assert len(part) == VIEWS[split] and part.x.shape[1:] == (3, 16, 16) and part.x.dtype == torch.uint8
        for i, (point, view) in enumerate(taskonomy_fixture_names(VIEWS[split])):  # cache order: (point, view)
            raw = {k: v[rows][:, rows] for k, v in taskonomy_fixture_view(building, point, view).items()}
            assert np.array_equal(part.x[i].numpy(), raw["rgb"].transpose(2, 0, 1))
            assert np.array_equal(part.y["segment_semantic"][i].numpy(), raw["segment_semantic"])
            assert np.array_equal(part.y["normal"][i, :3].numpy(), raw["normal"].transpose(2, 0, 1))
            assert np.array_equal(part.y["normal"][i, 3].numpy(), (raw["depth_zbuffer"] < 64500).astype(np.uint8))
            for name in ("depth_zbuffer", "keypoints2d", "edge_texture"):  # uint16 bytes, as int16
                assert np.array_equal(part.y[name][i].numpy().view(np.uint16), raw[name]), name
    assert bench.task_names == list(TASKS)
    assert [t.loss_weight for t in bench.tasks] == [1.0, 3.0, 2.0, 7.0, 7.0]
    assert [m.name for m in bench.task("normal").metrics][:2] == ["mean_angle", "cosine"]  # AdaShare's is logged


def test_the_layouts_hold_the_same_data_and_identity(pristine, tmp_path):
    loaded = {layout: dataset(pristine[layout], tmp_path / layout) for layout in TASKONOMY_LAYOUTS}
    prints = {layout: ds.load().fingerprint() for layout, ds in loaded.items()}
    assert len(set(prints.values())) == 1
    identities = [ds.identity() for ds in loaded.values()]
    assert all(i == identities[0] for i in identities)
    assert "root" not in identities[0] and "cache_dir" not in identities[0]


def test_both_spellings_of_segmentation_file_names_are_read(tmp_path):
    root = write_taskonomy_fixture(tmp_path / "data", views=VIEWS, segment_token="segment_semantic")
    bench = dataset(root, tmp_path / "cache").load()
    assert len(bench.splits["train"]) == VIEWS["train"]


def test_the_shipped_tiny_split_lists_25_5_5_buildings():
    split = read_split_file()
    assert [len(split.buildings(s)) for s in ("train", "val", "test")] == [25, 5, 5]
    assert {"allensville", "collierville", "ihlen"} <= set(split.split_of)
    assert split.split_of["collierville"] == "val" and split.split_of["mcdade"] == "test"


@pytest.mark.parametrize("text, line, says", [
    ("id,train,val,test\na,1,0,0\nb,0,1,0\nc,0,0,1\na,0,1,0\n", 5, "lists a again (first on line 2)"),
    ("id,train,val,test\na,1,1,0\nb,0,1,0\nc,0,0,1\n", 2, "more than one split"),
    ("id,train,val,test\na,1,0,0\nb,0,2,0\nc,0,0,1\n", 3, "three 0/1 flags"),
    ("# a comment\nname,train,val,test\n", 2, "not 'id,train,val,test'"),
    ("id,train,val,test\na,1,0,0\nc,0,0,1\n", None, "puts no building in val"),
])
def test_a_malformed_split_file_is_refused_by_line(tmp_path, text, line, says):
    path = tmp_path / "split.csv"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_split_file(path)
    message = str(info.value)
    assert str(path) in message and says in message and "Fix: " in message
    if line is not None:
        assert f"line {line}:" in message


def test_the_root_comes_from_the_option_or_taskonomy_root(pristine, tmp_path, monkeypatch):
    monkeypatch.delenv("TASKONOMY_ROOT", raising=False)
    with pytest.raises(DataError, match="TASKONOMY_ROOT"):
        Taskonomy(cache_dir=str(tmp_path), **SMALL).validate()
    monkeypatch.setenv("TASKONOMY_ROOT", str(pristine["omnidata"]))
    Taskonomy(cache_dir=str(tmp_path), **SMALL).validate()


def test_options_are_checked_when_the_dataset_is_built():
    assert Taskonomy(tasks="normal, depth_zbuffer").task_names() == ["normal", "depth_zbuffer"]
    with pytest.raises(OptionError, match="normals"):
        Taskonomy(tasks="normals")
    with pytest.raises(OptionError, match="exceeds source_size"):
        Taskonomy(resolution=64, source_size=32)
    with pytest.raises(OptionError, match="data_seed"):
        Taskonomy(data_seed=1)


# ---------------------------------------------------------------- bad input
def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def _view_file(root: Path, building: str, modality: str, point: int = 1, view: int = 0) -> Path:
    token = "segmentsemantic" if modality == "segment_semantic" else modality
    return root / building / modality / f"point_{point}_view_{view}_domain_{token}.png"


BAD_AT_VALIDATE = {
    "a view lacks a modality": (lambda r: _view_file(r, TRAIN, "normal").unlink(),
                                lambda r: _view_file(r, TRAIN, "normal"), "has an rgb image but no normal file"),
    "a modality folder is missing": (lambda r: shutil.rmtree(r / VAL / "keypoints2d"),
                                     lambda r: r / VAL / "keypoints2d", "missing"),
    "an unknown building": (lambda r: shutil.copytree(r / TEST, r / "nowhere"),
                            lambda r: r / "nowhere" / "rgb", "building 'nowhere' is in none of the split"),
    "a misnamed file": (lambda r: shutil.copy(_view_file(r, TRAIN, "rgb"), r / TRAIN / "rgb" / "copy.png"),
                        lambda r: r / TRAIN / "rgb" / "copy.png", "is not named point_"),
    "a file in the wrong folder": (
        lambda r: shutil.copy(_view_file(r, TRAIN, "rgb"), r / TRAIN / "normal" / "point_9_view_0_domain_rgb.png"),
        lambda r: r / TRAIN / "normal" / "point_9_view_0_domain_rgb.png", "is a 'rgb' file in the normal folder"),
}
BAD_AT_PREPARE = {
    "not a PNG": (lambda p: p.write_bytes(b"not a png at all"), "depth_zbuffer", "is not a PNG file"),
    "a truncated PNG": (lambda p: p.write_bytes(p.read_bytes()[:60]), "rgb", "cannot be decoded"),
    "the wrong size": (lambda p: _png(p, np.zeros((24, 24), np.uint16)), "keypoints2d", "is 24x24, not 32x32"),
    "the wrong bit depth": (lambda p: _png(p, np.zeros((32, 32), np.uint8)), "depth_zbuffer",
                            "is a 8-bit greyscale PNG; Taskonomy's depth_zbuffer images are 16-bit greyscale"),
    "the wrong colour type": (lambda p: _png(p, np.zeros((32, 32, 3), np.uint8)), "segment_semantic",
                              "is a 8-bit RGB PNG"),
    "a label above 17": (lambda p: _png(p, np.full((32, 32), 40, np.uint8)), "segment_semantic", "holds label 40"),
}


@pytest.mark.parametrize("case", list(BAD_AT_VALIDATE))
def test_bad_files_are_refused_at_validation_naming_the_file(copy, tmp_path, case):
    root = copy("building")
    damage, where, says = BAD_AT_VALIDATE[case]
    damage(root)
    ds = dataset(root, tmp_path / "cache")
    for step in (ds.validate, ds.prepare, ds.load):
        with pytest.raises(DataError) as info:
            step()
        message = str(info.value)
        assert str(where(root)) in message and says in message and "Fix: " in message
    assert _complete_caches(tmp_path / "cache") == []


@pytest.mark.parametrize("case", list(BAD_AT_PREPARE))
def test_bad_files_are_refused_when_decoded_naming_the_file(copy, tmp_path, case):
    root = copy("building")
    damage, modality, says = BAD_AT_PREPARE[case]
    path = _view_file(root, VAL, modality)
    damage(path)
    ds = dataset(root, tmp_path / "cache")
    ds.validate()  # the files are in place: only decoding finds this
    for step in (ds.prepare, ds.load):
        with pytest.raises(DataError) as info:
            step()
        message = str(info.value)
        assert str(path) in message and says in message and "Fix: " in message
    assert _complete_caches(tmp_path / "cache") == []


def test_missing_buildings_are_refused_unless_partial(pristine, tmp_path):
    with pytest.raises(DataError, match=r"missing: building '\w+' of the train split \(24 of its 25") as info:
        dataset(pristine["building"], tmp_path / "cache", partial=False).validate()
    assert "partial=true" in str(info.value)


def test_incomplete_views_can_be_dropped_and_are_counted(copy, tmp_path):
    root = copy("omnidata")
    (root / "edge_texture" / "taskonomy" / TRAIN / "point_2_view_1_domain_edge_texture.png").unlink()
    with pytest.raises(DataError, match="point_2_view_1"):
        dataset(root, tmp_path / "c1").validate()
    ds = dataset(root, tmp_path / "c2", incomplete="drop")
    bench = ds.load()
    assert len(bench.splits["train"]) == VIEWS["train"] - 1
    assert ds.identity() != dataset(copy("building"), tmp_path / "c3").identity()


# -------------------------------------------------------------------- cache
def test_the_cache_is_built_once_reused_and_rebuilt_when_a_file_changes(copy, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = taskonomy_module.decode_view

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(taskonomy_module, "decode_view", counting)
    root, cache = copy("building"), tmp_path / "cache"
    total = sum(VIEWS.values())
    first = dataset(root, cache).load()
    again = dataset(root, cache, workers=2, tasks="normal").load()
    assert calls["n"] == total  # one decode per view, and a task subset reads the same cache
    assert torch.equal(first.splits["val"].y["normal"], again.splits["val"].y["normal"])
    path = _view_file(root, TEST, "depth_zbuffer")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    dataset(root, cache).load()
    assert calls["n"] == 2 * total and len(_complete_caches(cache)) == 1  # rebuilt; the stale copy removed


# ---------------------------------------------------------------- decoding
def test_nearest_resizing_follows_opencvs_rule():
    assert nearest_index(512, 256).tolist() == list(range(0, 512, 2))
    assert nearest_index(10, 4).tolist() == [0, 2, 5, 7]  # floor(i * 2.5)
    assert nearest_index(3, 5).tolist() == [0, 0, 1, 1, 2]  # floor(i * 0.6)


def test_decode_targets_applies_the_taskonomy_conventions_to_any_subset():
    depth = torch.tensor([[[64499, 511], [64500, 65535]]], dtype=torch.int32).to(torch.uint16).numpy().view(np.int16)
    normal = torch.zeros(1, 4, 2, 2, dtype=torch.uint8)
    normal[:, :3] = 255
    normal[0, 3] = torch.tensor([[1, 1], [1, 0]], dtype=torch.uint8)
    y = decode_targets({"depth_zbuffer": torch.from_numpy(depth), "normal": normal,
                        "segment_semantic": torch.tensor([[[0, 1], [17, 5]]], dtype=torch.uint8)})
    d = y["depth_zbuffer"][0]
    assert d[0, 1] == pytest.approx(math.log(512) / math.log(2**16)) and torch.isnan(d[1]).all()
    assert d[0, 0] == pytest.approx(math.log(64500) / math.log(2**16))  # 64499 still holds a depth
    assert torch.equal(y["normal"][0, :, 0, 0], torch.ones(3)) and torch.isnan(y["normal"][0, :, 1, 1]).all()
    assert y["segment_semantic"].tolist() == [[[255, 0], [16, 4]]]
    assert set(decode_targets({"normal": normal})) == {"normal"}


def test_inputs_are_bgr_minus_the_mean():
    x = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1)
    out = taskonomy_module.bgr_minus_mean(x).flatten().tolist()
    assert out == pytest.approx([30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434])


# ------------------------------------------------------ target hook, streaming
def _encoded_bench(encoded: bool, n: int = 96) -> Benchmark:
    """A regression benchmark whose targets are stored as int16 hundredths (decoded per batch) or as floats."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((n, 6)).astype(np.float32))
    y = (x[:, :2] @ torch.tensor([[1.0, -0.5], [0.5, 2.0]])).round(decimals=2)

    def store(rows):
        stored = (y[rows] * 100).round().to(torch.int16) if encoded else y[rows]
        return Split(x[rows], {"a": stored[:, 0], "b": stored[:, 1]})

    thirds = torch.arange(n).chunk(3)
    calls = []

    def decode(batch):
        calls.append({k: (v.dtype, v.shape[0]) for k, v in batch.items()})
        return {k: v.float() / 100 for k, v in batch.items()}

    bench = Benchmark(
        name="encoded", tasks=[TaskSpec("a", "regression"), TaskSpec("b", "regression")],
        splits={s: store(rows) for s, rows in zip(("train", "val", "test"), thirds, strict=True)},
        backbone=mlp_backbone(6, (16, 16)),
        protocol=TrainingProtocol(epochs=3, batch_size=16, lr=1e-2, amp="off"),
        target_transform=decode if encoded else None,
    )
    bench.options["calls"] = calls
    return bench


def test_the_trainer_decodes_targets_per_batch_for_training_and_evaluation():
    plain, encoded = _encoded_bench(False), _encoded_bench(True)
    assert plain.prepare_targets(plain.splits["val"].y) is plain.splits["val"].y  # no hook: targets as stored
    runs = [retrain(b, Plan.shared_bottom(b.task_names, b.backbone.block_names), Trainer(b.protocol), seed=0)
            for b in (plain, encoded)]
    assert runs[0].metrics == runs[1].metrics  # decoded per batch == stored decoded
    for key, value in runs[0].net.state_dict().items():
        assert torch.equal(value, runs[1].net.state_dict()[key]), key
    calls = encoded.options["calls"]
    assert calls and all(c["a"][0] == torch.int16 and c["a"][1] <= 16 for c in calls)  # raw batches, never a split


def test_the_residency_rule():
    gib = 1 << 30
    assert fits_on_device(10 * gib, free_bytes=100 * gib, total_bytes=140 * gib)
    assert not fits_on_device(70 * gib, free_bytes=100 * gib, total_bytes=140 * gib)  # 35 GiB must stay free
    assert fits_on_device(65 * gib, free_bytes=100 * gib, total_bytes=140 * gib)
    assert not fits_on_device(1 * gib, free_bytes=4 * gib, total_bytes=8 * gib)  # at least 4 GiB stay free
    assert fits_on_device(1 * gib, free_bytes=4 * gib, total_bytes=8 * gib, reserve_min=2 * gib)


def test_residency_reads_the_device_memory(monkeypatch):
    bench = _encoded_bench(False)
    size = streaming.benchmark_nbytes(bench)
    assert size == sum(s.x.nbytes + sum(v.nbytes for v in s.y.values()) for s in bench.splits.values())
    cuda = torch.device("cuda")
    monkeypatch.setattr(streaming, "device_memory", lambda device: (size + (4 << 30), 8 << 30))
    assert streaming.resident(bench, cuda)
    monkeypatch.setattr(streaming, "device_memory", lambda device: (size + (4 << 30) - 1, 8 << 30))
    assert not streaming.resident(bench, cuda)
    assert streaming.resident(bench, torch.device("cpu"))


def test_a_stream_split_yields_the_resident_batches():
    bench = _encoded_bench(True, n=50)
    split = bench.splits["train"]
    stream = StreamSplit(split).subset(torch.arange(3, len(split)))
    order = torch.randperm(len(stream), generator=torch.Generator().manual_seed(0))
    batches = list(stream.batches(order, 4, torch.device("cpu"), targets=None))
    rows = torch.arange(3, len(split))[order]
    assert len(batches) == math.ceil(len(stream) / 4)
    x = torch.cat([b[0] for b in batches])
    assert torch.equal(x, split.x[rows]) and torch.equal(torch.cat([b[1]["a"] for b in batches]), split.y["a"][rows])


def test_a_fit_that_streams_ends_exactly_like_a_resident_one(monkeypatch):
    """The CPU stands in for the device: batches come from StreamSplit (prefetched, gathered) instead."""
    bench = _encoded_bench(True)
    plan = Plan.shared_bottom(bench.task_names, bench.backbone.block_names)

    def run() -> tuple[dict, dict]:
        net = build_net(bench, plan, seed=0)
        extra = ExtraOptimizer("heads", list(net.heads.parameters()), lambda p: torch.optim.SGD(p, lr=0.01),
                               start_epoch=1)
        trainer = Trainer(bench.protocol, seed=0)
        trainer.fit(net, bench, extra=[extra], holdout_fraction=0.25)
        return net.state_dict(), trainer.evaluate(net, bench, bench.splits["test"])

    resident_state, resident_metrics = run()
    seen = []

    def place(self, bench, split):
        seen.append(len(split))
        return StreamSplit(split)

    monkeypatch.setattr(Trainer, "place", place)
    stream_state, stream_metrics = run()
    assert seen, "the trainer placed no split"
    assert stream_metrics == resident_metrics
    for key, value in resident_state.items():
        assert torch.equal(value, stream_state[key]), key


# ---------------------------------------------------------------- backbone
def test_the_default_network_is_adashares_deeplab_resnet34():
    backbone = deeplab_resnet34_backbone(256)
    assert len(backbone.blocks) == 17 and backbone.blocks[0].out_shape == (64, 65, 65)  # ceil-mode max-pooling
    assert backbone.blocks[-1].out_shape == (512, 33, 33)  # output stride 8
    assert sum(backbone.block_params) == 21_284_672  # ResNet-34's convolutions and BatchNorms
    head = backbone.make_head(TaskSpec("s", "segmentation", n_outputs=17))
    assert isinstance(head, ASPPHead) and [b.conv1.dilation[0] for b in head.branches] == [6, 12, 18, 24]
    small = deeplab_resnet34_backbone(32, width=4, head_width=8)
    plan = Plan.shared_bottom(["n"], small.block_names)
    net = build_net(Benchmark("d", [TaskSpec("n", "normals")], {s: Split(torch.zeros(1, 3, 32, 32),
                    {"n": torch.zeros(1, 3, 32, 32)}) for s in ("train", "val", "test")}, small), plan, seed=0)
    assert net(torch.zeros(2, 3, 32, 32))["n"].shape == (2, 3, 5, 5)
    assert Taskonomy().protocol().batch_size == 16 and Taskonomy().protocol().lr == 1e-4


# ---------------------------------------------------------------- learning
@pytest.fixture(scope="module")
def small_bench(tmp_path_factory):
    base = tmp_path_factory.mktemp("methods")
    root = write_taskonomy_fixture(base / "data", views={"train": 24, "val": 8, "test": 8})
    bench = dataset(root, base / "cache").load()
    return dataclasses.replace(bench, protocol=bench.protocol.replace(epochs=2, batch_size=8, lr=3e-3, amp="off"))


def _methods() -> list[str]:
    from branchbench.plugins import get_method_class, list_methods

    skip = {"given_plan", "needs_groups", "control"}  # a user's plan; groups Taskonomy lacks; a source cell
    return [m for m in list_methods() if not skip & set(get_method_class(m).tags)]


@pytest.mark.parametrize("name", _methods())
def test_every_method_runs_end_to_end_on_the_fixture(small_bench, name):
    from branchbench.context import LocalContext
    from branchbench.plugins import get_method_class

    bench = small_bench
    cls = get_method_class(name)
    method = cls(**getattr(cls, "check_options", {}))
    seed_everything(0)
    result = method.search(bench, Budget(2.0 if cls.budget_aware else None), LocalContext(bench, seed=0))
    retrained = retrain(bench, result.plan, Trainer(bench.protocol), seed=0)
    for split in ("val", "test"):
        for task in bench.tasks:
            for metric in task.metrics:
                assert math.isfinite(retrained.metrics[f"{split}.{task.name}.{metric.name}"]), (split, task.name)


def test_a_trained_shared_bottom_beats_constant_predictors_on_val(tmp_path):
    root = write_taskonomy_fixture(tmp_path / "data", views={"train": 128, "val": 48, "test": 8})
    bench = dataset(root, tmp_path / "cache", width=16).load()
    bench = dataclasses.replace(bench, protocol=bench.protocol.replace(
        epochs=14, batch_size=16, lr=3e-3, weight_decay=0.0, amp="off"))
    plan = Plan.shared_bottom(bench.task_names, bench.backbone.block_names)
    trained = retrain(bench, plan, Trainer(bench.protocol), seed=0).metrics
    val = bench.splits["val"]
    targets = bench.prepare_targets(val.y)
    for task, candidates in constant_predictions(bench, len(val)).items():
        spec = bench.task(task)
        main = spec.main_metric
        scores = [spec.score(c, targets[task])[main.name] for c in candidates]
        best = max(scores) if main.higher_is_better else min(scores)
        ours = trained[f"val.{task}.{main.name}"]
        assert (ours > best) if main.higher_is_better else (ours < best), (task, main.name, ours, best)


# ------------------------------------------------------------ configs, data
@pytest.mark.parametrize("name", ["taskonomy", "taskonomy_small", "taskonomy_smoke"])
def test_the_committed_configs_load(name):
    from branchbench.config import load_config

    config = load_config(Path(__file__).parent.parent / "configs" / f"{name}.toml")
    [(label, component)] = config.datasets.items()
    assert label.startswith("taskonomy5")  # reports/taskonomy5/ (taskonomy5_small/ for the CPU-sized one)
    assert component.kind == "taskonomy" and "root" not in component.options
    assert "shared_bottom" in config.methods and "independent" in config.methods
    Taskonomy(**component.options)  # the options are valid
    TrainingProtocol().replace(**config.protocol)  # so is the protocol


def test_the_published_sources_name_the_taskonomy_protocol():
    from branchbench.data import load_published, published_sources

    assert published_sources()["adashare2020"].protocol == "taskonomy5"
    assert all(f.source.id in published_sources() for f in load_published(protocol="taskonomy5"))


def test_dense_conventions_are_the_ones_the_reader_uses():
    assert taskonomy_module.KINDS == {
        "segment_semantic": "segmentation", "normal": "normals", "depth_zbuffer": "depth",
        "keypoints2d": "keypoints", "edge_texture": "edges",
    }
    assert dense.TASKONOMY_SEG_CLASSES == 17
