"""CelebA: the three layouts parse, bad files are refused by file and line, the cache is
built once, atomically, and rebuilt when a source changes, and a short training run on
the fixture learns every attribute drawn in its pixels but not the noise attribute."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from branchbench.core.backbones import resnet18_backbone, tag_celeba_backbone
from branchbench.core.options import OptionError
from branchbench.core.plan import Plan
from branchbench.core.retrain import retrain
from branchbench.core.tasks import TaskSpec
from branchbench.core.trainer import Trainer
from branchbench.datasets import celeba as celeba_module
from branchbench.datasets.base import DataError
from branchbench.datasets.celeba import CELEBA9, CelebA, resize_bilinear, total_error
from branchbench.datasets.fixtures import (
    CELEBA_LAYOUTS,
    CELEBA_NOISE_ATTRIBUTE,
    celeba_fixture_labels,
    write_celeba_fixture,
)
from branchbench.datasets.image_cache import TMP_PREFIX, ArrayCache, ArraySpec

SMALL = dict(resolution=16, width=8, workers=1)
ATTR_TXT = "list_attr_celeba.txt"
PART_TXT = "list_eval_partition.txt"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> dict[str, Path]:
    """One small fixture per layout, written once; tests copy the one they change."""
    base = tmp_path_factory.mktemp("celeba")
    return {layout: write_celeba_fixture(base / layout, layout=layout, n=24) for layout in CELEBA_LAYOUTS}


@pytest.fixture
def copy(pristine, tmp_path):
    def make(layout: str = "plain") -> Path:
        return Path(shutil.copytree(pristine[layout], tmp_path / f"data-{layout}"))

    return make


def dataset(root: Path, cache: Path, **options) -> CelebA:
    return CelebA(root=str(root), cache_dir=str(cache), **{**SMALL, **options})


def expected_rows(root: Path, layout: str) -> tuple[list[str], np.ndarray]:
    """Image names in cache order (train, val, test; file order within) and their partitions."""
    base = root / "celeba" if layout == "torchvision" else root
    if layout == "csv":
        rows = [line.split(",") for line in (base / "list_eval_partition.csv").read_text().splitlines()[1:]]
    else:
        rows = [line.split() for line in (base / PART_TXT).read_text().splitlines()]
    names = [r[0] for r in rows]
    partition = np.array([int(r[1]) for r in rows])
    order = np.argsort(partition, kind="stable")
    return [names[i] for i in order], partition[order]


# ------------------------------------------------------------------ layouts
@pytest.mark.parametrize("layout", CELEBA_LAYOUTS)
def test_each_layout_parses_into_the_official_split_and_labels(pristine, tmp_path, layout):
    root = pristine[layout]
    bench = dataset(root, tmp_path / "cache", attributes="celeba40").load()
    names, partition = expected_rows(root, layout)
    labels = celeba_fixture_labels(24)
    index = np.array([int(n.split(".")[0]) - 1 for n in names])
    start = 0
    for code, split in enumerate(("train", "val", "test")):
        count = int((partition == code).sum())
        part = bench.splits[split]
        assert len(part) == count and part.x.shape[1:] == (3, 16, 16) and part.x.dtype == torch.uint8
        for attribute in ("Black_Hair", "No_Beard", CELEBA_NOISE_ATTRIBUTE):
            want = labels[attribute][index[start : start + count]].astype(np.float32)
            assert np.array_equal(part.y[attribute].numpy(), want)
        start += count
    assert bench.task_names == list(celeba_module.CELEBA_ATTRIBUTES)
    assert bench.task("Goatee").main_metric.name == "error"
    assert not bench.task("Goatee").main_metric.higher_is_better


def test_the_layouts_hold_the_same_pixels(pristine, tmp_path):
    images = [dataset(pristine[layout], tmp_path / "cache").load().splits["train"].x for layout in CELEBA_LAYOUTS]
    assert all(torch.equal(images[0], other) for other in images[1:])


def test_identity_ignores_where_the_files_are_and_follows_their_content(copy, tmp_path):
    root = copy("plain")
    moved = Path(shutil.copytree(root, tmp_path / "moved"))
    a = dataset(root, tmp_path / "c1").identity()
    b = CelebA(root=str(moved), cache_dir=str(tmp_path / "c2"), resolution=16, width=8, workers=3).identity()
    assert a == b and "root" not in a and "cache_dir" not in a and "workers" not in a
    assert a != dataset(root, tmp_path / "c1", resolution=24).identity()
    lines = (moved / ATTR_TXT).read_text().splitlines()
    lines[3] = lines[3].replace(" 1", "-1", 1) if " 1" in lines[3] else lines[3].replace("-1", " 1", 1)
    (moved / ATTR_TXT).write_text("\n".join(lines) + "\n")
    assert dataset(moved, tmp_path / "c2").identity()["content"] != a["content"]


def test_the_root_comes_from_the_option_or_celeba_root(pristine, tmp_path, monkeypatch):
    monkeypatch.delenv("CELEBA_ROOT", raising=False)
    with pytest.raises(DataError, match="CELEBA_ROOT"):
        CelebA(cache_dir=str(tmp_path)).validate()
    monkeypatch.setenv("CELEBA_ROOT", str(pristine["plain"]))
    CelebA(cache_dir=str(tmp_path)).validate()


def test_options_are_checked_when_the_dataset_is_built():
    assert CelebA().task_names() == list(CELEBA9)
    assert CelebA(attributes="Smiling, Male").task_names() == ["Smiling", "Male"]
    with pytest.raises(OptionError, match="Smilling"):
        CelebA(attributes="Smilling")
    with pytest.raises(OptionError, match="data_seed"):
        CelebA(data_seed=1)
    with pytest.raises(OptionError, match="backbone"):
        CelebA(backbone="vgg")


# ---------------------------------------------------------------- bad input
def _edit(path: Path, line: int, change) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = change(lines[line - 1])
    path.write_text("\n".join(lines) + "\n")


def _drop_line(path: Path, line: int) -> None:
    lines = path.read_text().splitlines()
    del lines[line - 1]
    path.write_text("\n".join(lines) + "\n")


BAD = {
    "missing partition file": (lambda r: (r / PART_TXT).unlink(), PART_TXT, None, "missing"),
    "missing image folder": (lambda r: shutil.rmtree(r / "img_align_celeba"), "img_align_celeba", None, "missing"),
    "count line": (lambda r: _edit(r / ATTR_TXT, 1, lambda s: "25"), ATTR_TXT, 1, "says 25 images but the file lists 24"),
    "unknown attribute": (lambda r: _edit(r / ATTR_TXT, 2, lambda s: s.replace("Goatee", "Goatees")), ATTR_TXT, 2,
                          "unknown attribute name 'Goatees'"),
    "value not -1/1": (lambda r: _edit(r / ATTR_TXT, 7, lambda s: s[:-2] + " 0"), ATTR_TXT, 7, "'0' for Young"),
    "short row": (lambda r: _edit(r / ATTR_TXT, 9, lambda s: s[:-3]), ATTR_TXT, 9, "has 40 fields"),
    "partition names another image": (lambda r: _edit(r / PART_TXT, 3, lambda s: "999999.jpg" + s[10:]), PART_TXT, 3,
                                      "names 999999.jpg"),
    "partition lacks an image": (lambda r: _drop_line(r / PART_TXT, 5), ATTR_TXT, 7, "lists 000005.jpg, which"),
    "bad partition value": (lambda r: _edit(r / PART_TXT, 4, lambda s: s[:-1] + "3"), PART_TXT, 4, "0, 1 or 2"),
    "image absent": (lambda r: (r / "img_align_celeba" / "000011.jpg").unlink(), ATTR_TXT, 13,
                     "000011.jpg, which is absent"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_are_refused_naming_the_file_and_line(copy, tmp_path, case):
    root = copy("plain")
    damage, file_name, line, says = BAD[case]
    damage(root)
    ds = dataset(root, tmp_path / "cache")
    for step in (ds.validate, ds.load):  # load() checks too when there is no cache yet
        with pytest.raises(DataError) as info:
            step()
        message = str(info.value)
        assert file_name in message and says in message and "Fix: " in message
        if line is not None:
            assert f"line {line}:" in message
    assert not (tmp_path / "cache" / "celeba").exists() or not any(
        p for p in (tmp_path / "cache" / "celeba").iterdir() if not p.name.startswith(TMP_PREFIX))


def test_a_bad_csv_value_is_named_by_its_csv_line(copy, tmp_path):
    root = copy("csv")
    _edit(root / "list_attr_celeba.csv", 6, lambda s: s.replace(",1,", ",yes,", 1))
    with pytest.raises(DataError, match=r"list_attr_celeba\.csv, line 6: value 'yes'"):
        dataset(root, tmp_path / "cache").validate()


@pytest.mark.parametrize("damage, says", [
    (lambda p: p.write_bytes(b"not a jpeg at all"), "cannot be decoded"),
    (lambda p: __import__("PIL.Image").Image.new("RGB", (100, 100)).save(p, format="JPEG"), "is 100x100"),
])
def test_prepare_names_an_unreadable_image_and_its_line(copy, tmp_path, damage, says):
    root = copy("plain")
    damage(root / "img_align_celeba" / "000004.jpg")
    ds = dataset(root, tmp_path / "cache")
    ds.validate()  # the files are in place: only decoding finds this
    with pytest.raises(DataError) as info:
        ds.prepare()
    message = str(info.value)
    assert "000004.jpg" in message and says in message and f"line 6 of {root / ATTR_TXT}" in message


# -------------------------------------------------------------------- cache
@pytest.fixture
def decodes(monkeypatch):
    """Counts calls of the image decoder (and can make the n-th one fail)."""
    calls = {"n": 0, "fail_at": None}
    real = celeba_module.decode_image

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["fail_at"] is not None and calls["n"] == calls["fail_at"]:
            raise RuntimeError("killed midway")
        return real(*args, **kwargs)

    monkeypatch.setattr(celeba_module, "decode_image", counting)
    return calls


def _cache_dirs(cache: Path) -> list[Path]:
    folder = cache / "celeba"
    return sorted(p for p in folder.iterdir()) if folder.exists() else []


def test_the_cache_is_built_once_and_reused(copy, tmp_path, decodes):
    root, cache = copy("plain"), tmp_path / "cache"
    bars = []

    class Bar:
        def __init__(self, total, desc):
            self.total, self.desc, self.done, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, n):
            self.done += n

        def close(self):
            self.closed = True

    dataset(root, cache).prepare(progress=Bar)
    assert decodes["n"] == 24 and bars[0].total == 24 and bars[0].done == 24 and bars[0].closed
    first = dataset(root, cache).load()
    again = dataset(root, cache, workers=2).load()
    assert decodes["n"] == 24  # neither load decoded anything
    assert torch.equal(first.splits["val"].x, again.splits["val"].x)
    assert len(_cache_dirs(cache)) == 1


def test_load_builds_a_missing_cache_itself(copy, tmp_path, decodes):
    bench = dataset(copy("plain"), tmp_path / "cache").load()
    assert decodes["n"] == 24 and len(bench.splits["test"]) > 0


@pytest.mark.parametrize("change", ["mtime", "size", "labels"])
def test_the_cache_is_rebuilt_when_a_source_file_changes(copy, tmp_path, decodes, change):
    from PIL import Image

    root, cache = copy("plain"), tmp_path / "cache"
    before = dataset(root, cache, attributes="Young").load()
    image = root / "img_align_celeba" / "000003.jpg"
    if change == "mtime":
        stat = image.stat()
        os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    elif change == "size":
        Image.new("RGB", (178, 218), (255, 0, 0)).save(image, quality=95)
    else:  # flip 000003.jpg's last value (Young) on line 5
        _edit(root / ATTR_TXT, 5, lambda s: s[:-2] + ("-1" if s.endswith(" 1") else " 1"))
    after = dataset(root, cache, attributes="Young").load()
    assert decodes["n"] == 48  # decoded again
    assert len(_cache_dirs(cache)) == 1  # the stale copy of this root was removed
    row = expected_rows(root, "plain")[0].index("000003.jpg")
    splits = ("train", "val", "test")
    x_before, x_after = (torch.cat([b.splits[s].x for s in splits]) for b in (before, after))
    y_before, y_after = (torch.cat([b.splits[s].y["Young"] for s in splits]) for b in (before, after))
    if change == "size":
        assert float(x_after[row, 0].float().mean()) > 200 and not torch.equal(x_before[row], x_after[row])
    else:
        assert torch.equal(x_before, x_after)
    changed = torch.nonzero(y_before != y_after).flatten().tolist()
    assert changed == ([row] if change == "labels" else [])


@pytest.mark.parametrize("workers", [1, 3])
def test_a_build_killed_midway_is_never_read_and_is_rebuilt(copy, tmp_path, decodes, workers):
    root, cache = copy("plain"), tmp_path / "cache"
    decodes["fail_at"] = 10
    with pytest.raises(RuntimeError, match="killed midway"):
        dataset(root, cache, workers=workers).prepare()
    assert _cache_dirs(cache) == []  # no final directory, and the temporary one is gone
    decodes["fail_at"] = None
    decodes["n"] = 0
    bench = dataset(root, cache).load()
    assert decodes["n"] == 24 and len(bench.splits["train"]) > 0


def test_leftovers_of_a_killed_process_are_not_read(copy, tmp_path, decodes):
    """A dead builder's temporary directory and a final directory without a manifest."""
    root, cache = copy("plain"), tmp_path / "cache"
    ds = dataset(root, cache)
    ds.prepare()
    built = ds._cache(ds.annotations())
    good = {name: np.load(built.path / f"{name}.npy") for name in built.arrays}
    manifest = json.loads((built.path / "manifest.json").read_text())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    leftover = built.path.parent / f"{TMP_PREFIX}{built.digest[:20]}-{dead}-abcd1234"
    shutil.copytree(built.path, leftover)
    (built.path / "manifest.json").unlink()  # as if the rename happened without the manifest
    np.save(built.path / "images.npy", np.zeros_like(good["images"]))
    assert not built.complete()
    decodes["n"] = 0
    bench = dataset(root, cache).load()
    assert decodes["n"] == 24
    assert not leftover.exists()
    assert json.loads((built.path / "manifest.json").read_text())["key"] == manifest["key"]
    assert int(torch.cat([bench.splits[s].x for s in ("train", "val", "test")]).sum()) == int(good["images"].sum())


def test_a_truncated_array_or_foreign_manifest_is_not_complete(tmp_path):
    spec = {"rgb": ArraySpec((3, 4, 4), "uint8"), "depth": ArraySpec((4, 4), "uint16")}
    cache = ArrayCache(tmp_path, "toy", {"v": 1}, rows=10, arrays=spec)

    def row(i):
        return {"rgb": np.full((3, 4, 4), i, np.uint8), "depth": np.full((4, 4), 1000 + i, np.uint16)}

    cache.build(row, workers=3, chunk=3)
    arrays = cache.open()
    assert arrays["depth"].dtype == np.uint16 and int(arrays["depth"][7, 0, 0]) == 1007
    assert isinstance(arrays["rgb"], np.memmap)
    other = ArrayCache(tmp_path, "toy", {"v": 2}, rows=10, arrays=spec)
    assert not other.complete() and other.path != cache.path
    with open(cache.path / "depth.npy", "r+b") as handle:
        handle.truncate(100)
    assert not cache.complete()
    with pytest.raises(DataError, match="incomplete"):
        cache.open()


def test_the_free_space_check_names_the_folder_and_the_fix(tmp_path, monkeypatch):
    cache = ArrayCache(tmp_path, "toy", {"v": 1}, rows=1000, arrays={"x": ArraySpec((3, 64, 64), "uint8")})
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=1 << 30, used=1 << 30, free=1 << 20))
    with pytest.raises(DataError, match=r"needs 0\.07 GiB but only 0\.00 GiB are free.*cache_dir"):
        cache.build(lambda i: {"x": np.zeros((3, 64, 64), np.uint8)})
    assert not cache.path.exists()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/self/maps")
def test_cpu_batches_come_from_the_memory_map_without_a_copy(pristine, tmp_path):
    bench = dataset(pristine["plain"], tmp_path / "cache").load()
    x = bench.splits["train"].x
    address = x.data_ptr()
    mapped = False
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        low, high = (int(v, 16) for v in parts[0].split("-"))
        if low <= address < high and parts[-1].endswith("images.npy"):
            mapped = True
    assert mapped, "the train split's tensor should view the cache file's memory map"
    assert bench.splits["train"].to("cpu").x.data_ptr() == address
    prepared = bench.prepare(x[:4])
    assert prepared.dtype == torch.float32 and 0.0 <= float(prepared.min()) and float(prepared.max()) <= 1.0


# -------------------------------------------------------------- preprocessing
def test_resize_is_half_pixel_bilinear_without_antialiasing():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (218, 178, 3)).astype(np.uint8)
    ours = resize_bilinear(image, 64, 64)
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1)[None].float(), size=(64, 64), mode="bilinear",
        align_corners=False, antialias=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - theirs).max() < 1e-3


def test_the_backbones_have_the_references_shapes():
    tag = tag_celeba_backbone(64)
    assert tag.block_names == ["stem", "res1"]
    assert tag.blocks[0].out_shape == (64, 31, 31)  # TAG: conv 3x3 + max-pool 3x3/2
    head = tag.make_head(TaskSpec("a", "binary"))
    assert head[-1].in_features == 14400  # DMTG's decoder: in_channel 14400 (64*15*15)
    resnet = resnet18_backbone(64)
    assert len(resnet.blocks) == 9 and resnet.blocks[-1].out_shape == (512, 4, 4)
    assert resnet.block_params[:2] == tag.block_params  # TAG's network is its first two blocks


def test_total_error_sums_errors_in_percent():
    metrics = {"test.a.error": 0.1, "test.b.error": 0.25}
    assert total_error(metrics, ["a", "b"], split="test") == pytest.approx(35.0)


# ------------------------------------------------------------------ learning
def test_a_short_run_learns_the_drawn_attributes_and_not_the_noise(tmp_path):
    root = write_celeba_fixture(tmp_path / "data", n=300)
    attributes = ",".join([*CELEBA9, CELEBA_NOISE_ATTRIBUTE])
    bench = CelebA(root=str(root), cache_dir=str(tmp_path / "cache"), attributes=attributes,
                   resolution=32, width=16, workers=2).load()
    protocol = bench.protocol.replace(epochs=15, batch_size=32, optimizer="adam", lr=3e-3, early_stopping=0)
    bench = dataclasses.replace(bench, protocol=protocol)
    result = retrain(bench, Plan.shared_bottom(bench.task_names, bench.backbone.block_names),
                     Trainer(protocol, seed=0), seed=0)
    for task in bench.task_names:
        y = bench.splits["val"].y[task]
        majority = max(float(y.mean()), 1.0 - float(y.mean()))
        accuracy = result.metrics[f"val.{task}.accuracy"]
        assert result.metrics[f"val.{task}.error"] == pytest.approx(1.0 - accuracy)
        if task == CELEBA_NOISE_ATTRIBUTE:
            assert abs(accuracy - majority) < 0.15 and accuracy < majority + 0.1, (task, accuracy, majority)
        else:
            assert accuracy >= majority + 0.15, (task, accuracy, majority)


# ------------------------------------------------------------ configs, data
@pytest.mark.parametrize("name", ["celeba9", "celeba40", "celeba_smoke"])
def test_the_committed_configs_load(name):
    from branchbench.config import load_config

    config = load_config(Path(__file__).parent.parent / "configs" / f"{name}.toml")
    [(label, data)] = config.datasets.items()
    assert data.kind == "celeba" and "root" not in data.options
    assert label == name.replace("_smoke", "9")  # reports go to reports/celeba9/ (or celeba40/)
    assert "shared_bottom" in config.methods and "independent" in config.methods


def test_the_published_figures_load_and_are_checked(tmp_path):
    from branchbench.data import load_published, published_sources

    assert {"tag2021", "dmtg2024"} <= set(published_sources())
    assert all(f.source.id in published_sources() for f in load_published())
    path = tmp_path / "published.toml"
    path.write_text(
        '[[source]]\nid = "p"\npaper = "P"\nurl = "u"\nprotocol = "celeba9"\n'
        '[[figure]]\nsource = "p"\nmethod = "shared_bottom"\nprotocol = "celeba9"\ntable = "Table 1"\n'
        'metric = "total_error"\nsplit = "test"\nvalue = 42.5\n'
    )
    (figure,) = load_published(path, protocol="celeba9")
    assert figure.value == 42.5 and figure.source.paper == "P"
    assert load_published(path, protocol="celeba40") == []
    path.write_text(path.read_text().replace('source = "p"\nmethod', 'source = "q"\nmethod'))
    with pytest.raises(ValueError, match="names source 'q'"):
        load_published(path)


def test_the_celeba9_config_writes_out_the_datasets_protocol():
    from branchbench.config import load_config

    config = load_config(Path(__file__).parent.parent / "configs" / "celeba9.toml")
    protocol = CelebA().protocol()
    assert protocol.replace(**config.protocol) == protocol  # the same values, so no drift between the two
    assert (protocol.nesterov, protocol.lr_schedule, protocol.lr_step_epochs, protocol.lr_gamma) == (
        False, "step", 15, 0.5)  # TAG: no Nesterov, halved every 15 epochs


def test_the_fingerprint_hashes_the_cache_key_not_the_pixels(pristine, tmp_path):
    bench = dataset(pristine["plain"], tmp_path / "cache").load()
    assert bench.content_key == bench.content_key.strip() and len(bench.content_key) == 64
    blank = dataclasses.replace(bench, splits={k: dataclasses.replace(s, x=torch.zeros_like(s.x))
                                               for k, s in bench.splits.items()})
    assert blank.fingerprint() == bench.fingerprint()  # the pixels are not read
    other = dataclasses.replace(bench, content_key="0" * 64)
    assert other.fingerprint() != bench.fingerprint()
    fewer = bench.with_tasks(bench.task_names[:2])
    assert fewer.fingerprint() != bench.fingerprint()


def test_evaluations_add_the_total_error(pristine, tmp_path):
    bench = dataset(pristine["plain"], tmp_path / "cache").load()
    protocol = bench.protocol.replace(epochs=1, batch_size=8, early_stopping=0)
    bench = dataclasses.replace(bench, protocol=protocol)
    metrics = retrain(bench, Plan.shared_bottom(bench.task_names, bench.backbone.block_names),
                      Trainer(protocol), seed=0).metrics
    for split in ("val", "test"):
        assert metrics[f"{split}.total_error"] == pytest.approx(total_error(metrics, bench.task_names, split))
    assert json.loads(bench.main_metrics_tag()) == {t: ["error", False] for t in bench.task_names}
