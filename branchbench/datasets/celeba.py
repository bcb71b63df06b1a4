"""CelebA face attributes as binary tasks, read as distributed and fed from a uint8 cache.

**Files** (nothing is downloaded; the root comes from the option ``root`` or
the environment variable ``CELEBA_ROOT``). Three layouts are recognised:

==============  ===========================================================
layout          files
==============  ===========================================================
``plain``       ``root/list_attr_celeba.txt``, ``root/list_eval_partition.txt``,
                ``root/img_align_celeba/*.jpg``
``torchvision`` the same under ``root/celeba/`` (torchvision's layout)
``csv``         ``root/list_attr_celeba.csv``, ``root/list_eval_partition.csv``,
                images under ``root/img_align_celeba/img_align_celeba/`` (or
                ``root/img_align_celeba/``): the widely shared CSV copy
==============  ===========================================================

``list_attr_celeba.txt`` is a count line, a line of the 40 attribute names,
then one line per image: its file name and 40 values, each -1 or 1 (the CSV
has a header ``image_id,<names>`` and no count line). ``list_eval_partition``
gives each image 0 (train), 1 (val) or 2 (test): the official split, 162,770 /
19,867 / 19,962 images. The split is fixed, so ``data_seed`` is 0.

**Checks** (:meth:`CelebA.validate`, before any run exists): a missing file, a
count line that disagrees with the rows, an unknown or repeated attribute name,
a value other than -1/1, a malformed row, a partition file that names other
images than the attribute file, an image listed but absent. Each raises one
:class:`~branchbench.datasets.base.DataError` naming the file and the line.
:meth:`CelebA.prepare` decodes every image and reports an unreadable one (or
one that is not 178x218) the same way.

**Preprocessing** (TAG's and DMTG's): the whole aligned 178x218 image is
resized to ``resolution`` x ``resolution`` (64) with bilinear interpolation,
no crop, the aspect ratio not kept, and scaled to [0, 1]; no mean/std
normalisation, no augmentation. Sources:

* TAG (Fifty et al., NeurIPS 2021), ``google-research/google-research``,
  ``tag/celeba/CelebA.ipynb``, ``load_dataset`` (cell ``5yJVRK0cWaYK``):
  ``tfds.load('celeb_a', split=...)`` mapped through
  ``tf.image.resize(tf.image.convert_image_dtype(d['image'], tf.float32), [64, 64])``
  for train, validation and test alike; ``tfds``'s ``celeb_a`` is
  ``img_align_celeba`` (``Image(shape=(218, 178, 3))``) with the official
  partition (``tensorflow_datasets/image/celeba.py``).
* DMTG (Gao et al., ICML 2024), ``ethanygao/DMTG`` at 71b5eed,
  ``preprocess/preprocess_celeba.py`` lines 10-13: the same ``tfds`` load and
  the same ``tf.image.resize(..., [64, 64])``, saved once and fed from memory
  (``datasets/celeb_a.py``).

``tf.image.resize`` defaults to bilinear without antialiasing, which TensorFlow
runs as ``gen_image_ops.resize_bilinear(images, size, half_pixel_centers=True)``
(``resize_images_v2`` in ``tensorflow/python/ops/image_ops_impl.py``);
:func:`resize_bilinear` computes exactly that in NumPy (Pillow's own bilinear
resize antialiases when shrinking, which would blur differently).
Differences: images are decoded by Pillow (libjpeg-turbo), not TensorFlow's
decoder, and stored rounded to uint8 (TF keeps floats): both change a pixel
by at most a few levels of 255.

**Cache**: decoded once (:meth:`CelebA.prepare`, ``workers`` threads, a
progress bar) into an :class:`~branchbench.datasets.image_cache.ArrayCache`
under ``cache_dir`` (default ``$XDG_CACHE_HOME/branchbench`` or
``~/.cache/branchbench``), keyed on the attribute and partition files' hashes,
each listed image's size and modification time, the resolution and the
decoder's version; rows are ordered train, val, test, so each split is a slice
of the memory map. :meth:`CelebA.load` builds it when missing. On CPU a batch
is gathered from the memory map (no copy of a split); on CUDA the trainer moves
the uint8 split to the GPU once and :func:`to_unit` scales each batch there.

**Protocols** (one dataset, its options): ``attributes="celeba9"`` (default)
is the 9-attribute set of TAG and DMTG (``FLAGS.tasks`` in TAG's parameter
cell ``cImVvSUgcGhD``; ``run.tasks`` in DMTG's
``configs/train_celeb_a/base_celeb_a_100_epoches_9_tasks.yaml`` line 26) with
``backbone="tag"`` (:func:`~branchbench.core.backbones.tag_celeba_backbone`,
branch points after the stem and the residual block); ``attributes="celeba40"``
is all 40 with ``backbone="resnet18"``
(:func:`~branchbench.core.backbones.resnet18_backbone`, nine branch points).
Metrics: per-attribute ``error`` (1 - accuracy, the main metric; lower is
better), accuracy and AUC; :func:`total_error` sums the errors in percent,
the "Total Error" DMTG's ``test.py`` reports (``utils/metric_utils.py`` lines
3-5: ``100 * (n_task - sum(acc))``); DMTG's "Normalized Gain" (lines 7-13) is
Δm with ``error`` as the main metric. Every evaluation adds ``total_error``
(:func:`summary_metrics`), so cells log ``test.total_error`` and the reports
show it.

**Training protocol** (:meth:`CelebA.protocol`), from the reference code:

* optimiser: SGD, momentum 0.9, lr 5e-4, no weight decay (TAG ``train``, cell
  ``jSJ7yW8HX8IU``: ``tf.keras.optimizers.SGD(params.lr, momentum=0.9)``;
  ``Params(lr=0.0005, ...)`` in cell ``cImVvSUgcGhD``; DMTG's shared-bottom
  config ``train_celeb_a_100_epoches_mtl.yaml`` lines 14-18: sgd, lr 5e-4,
  momentum 0.9). DMTG's grouping search uses Adam at 8e-4
  (``train_celeb_a_100_epoches_3_groups_9_tasks.yaml`` lines 21-24); that is
  the DMTG method's own setting, not the retraining protocol;
* batch 256 (TAG ``FLAGS.batch_size = 256``; DMTG base config line 6);
* 100 epochs (TAG ``FLAGS.steps = 100`` "train for 100 epochs"; DMTG
  ``epoch_max: 100``, line 23);
* learning rate halved every 15 epochs (TAG ``decay_lr``: ``if (step + 1) % 15
  == 0: lr / 2``; DMTG ``multi_step_lr`` milestones 15, 30, ..., 90, gamma 0.5,
  base config lines 29-33);
* early stopping on the summed validation loss of all tasks with patience 10,
  the best weights restored (TAG ``EARLY_STOP = 11``: stop when the epoch 10
  epochs back beats each later one, reload it). DMTG trains all 100 epochs and
  keeps the checkpoint whose validation loss (the hard-assignment loss, not
  the error: its CelebA configs set ``is_classify`` False) and training loss
  both improved (``train.py`` lines 241, 304-307).

These are the protocol's keys: ``optimizer="sgd", lr=5e-4, momentum=0.9,
nesterov=False`` (TAG: "DO NOT apply Nesterov"), ``batch_size=256,
epochs=100, lr_schedule="step", lr_step_epochs=15, lr_gamma=0.5,
early_stopping=10``. Difference from the references: the suite's patience
counts epochs since the best so far, so it stops no earlier than TAG's rule.
The trainer steps the schedule at epoch boundaries, as both references do.
For ``celeba40`` neither Learn-to-Branch's nor Vandenhende et al.'s CelebA
training code or protocol could be read, so the same protocol is used, and the
ResNet-18 (at 64x64, TAG's stem) is our choice of "a ResNet-18-style network".
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import numpy as np
import torch

from branchbench.core.backbones import Backbone, resnet18_backbone, tag_celeba_backbone
from branchbench.core.benchmark import SPLITS, Benchmark, Split, TrainingProtocol
from branchbench.core.options import Option, OptionError
from branchbench.core.tasks import MetricSpec, TaskSpec
from branchbench.datasets.base import DataError, Dataset
from branchbench.datasets.image_cache import ArrayCache, ArraySpec, default_cache_root

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)
CELEBA9: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Black_Hair", "Blond_Hair", "Brown_Hair", "Goatee", "Mustache", "No_Beard",
    "Rosy_Cheeks", "Wearing_Hat",
)
ATTRIBUTE_SETS: dict[str, tuple[str, ...]] = {"celeba9": CELEBA9, "celeba40": CELEBA_ATTRIBUTES}
OFFICIAL_SPLIT_SIZES = {"train": 162_770, "val": 19_867, "test": 19_962}
IMAGE_SIZE = (178, 218)  # width, height of img_align_celeba
CELEBA_METRICS = (MetricSpec("error", False), MetricSpec("accuracy", True), MetricSpec("auc", True))
RESIZE_VERSION = 1  # bump when the decoding or resizing below changes
ROOT_ENV = "CELEBA_ROOT"
BACKBONES: dict[str, Callable[..., Backbone]] = {"tag": tag_celeba_backbone, "resnet18": resnet18_backbone}


def _fail(path: Path, line: int | None, problem: str, fix: str) -> NoReturn:
    where = f"{path}, line {line}" if line is not None else f"{path}"
    raise DataError(f"{where}: {problem}. Fix: {fix}")


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """A uint8 image batch as float in [0, 1] (TAG: ``convert_image_dtype(..., tf.float32)``)."""
    return x.float().div_(255.0)


def total_error(metrics: Mapping[str, float], tasks: Sequence[str], split: str | None = None) -> float:
    """Sum of the tasks' errors in percent (TAG's and DMTG's "total error").

    ``metrics`` holds ``"<task>.error"`` (or ``"<split>.<task>.error"`` with ``split``).
    """
    prefix = f"{split}." if split else ""
    return 100.0 * sum(metrics[f"{prefix}{task}.error"] for task in tasks)


def summary_metrics(tasks: Sequence[TaskSpec], metrics: Mapping[str, float]) -> dict[str, float]:
    """The benchmark-level metrics of a split: ``total_error`` over the tasks evaluated."""
    return {"total_error": total_error(metrics, [t.name for t in tasks])}


# ------------------------------------------------------------------ layout
@dataclass(frozen=True)
class Layout:
    """Where one copy of CelebA keeps its files."""

    name: str  # "plain", "torchvision" or "csv"
    attr_file: Path
    partition_file: Path
    images: Path

    @property
    def csv(self) -> bool:
        return self.name == "csv"


def find_layout(root: str | Path) -> Layout:
    """The layout of the copy under ``root``; a missing file is a DataError naming it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        _fail(root, None, "no such directory" if not root.exists() else "is not a directory",
              f"give the dataset option root= (or {ROOT_ENV}) the folder holding CelebA")
    candidates = [
        Layout("plain", root / "list_attr_celeba.txt", root / "list_eval_partition.txt", root / "img_align_celeba"),
        Layout("torchvision", root / "celeba" / "list_attr_celeba.txt", root / "celeba" / "list_eval_partition.txt",
               root / "celeba" / "img_align_celeba"),
        Layout("csv", root / "list_attr_celeba.csv", root / "list_eval_partition.csv",
               root / "img_align_celeba" / "img_align_celeba"),
    ]
    for layout in candidates:
        if not layout.attr_file.is_file():
            continue
        if layout.csv and not layout.images.is_dir() and (root / "img_align_celeba").is_dir():
            layout = Layout("csv", layout.attr_file, layout.partition_file, root / "img_align_celeba")
        if not layout.partition_file.is_file():
            _fail(layout.partition_file, None, f"missing (the {layout.name} layout's partition file, beside "
                  f"{layout.attr_file.name})", "put CelebA's list_eval_partition file there")
        if not layout.images.is_dir():
            _fail(layout.images, None, f"missing (the {layout.name} layout's image folder)",
                  "unpack img_align_celeba.zip there")
        return layout
    looked = ", ".join(str(c.attr_file) for c in candidates)
    _fail(root, None, f"holds no CelebA attribute file (looked for {looked})",
          "point root at the folder holding list_attr_celeba.txt (or celeba/ or the CSV copy)")


# ------------------------------------------------------------- annotations
@dataclass
class Annotations:
    """The attribute and partition files, parsed and cross-checked (rows in attribute-file order)."""

    names: list[str]
    attributes: list[str]
    values: np.ndarray  # (N, A) uint8: 1 where the file says 1, 0 where -1
    partition: np.ndarray  # (N,) uint8: 0 train, 1 val, 2 test
    lines: np.ndarray  # (N,) the attribute file's line number of each image


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        _fail(path, path.read_bytes()[: err.start].count(b"\n") + 1, "is not UTF-8 text",
              "use the file as distributed")
    except OSError as err:
        _fail(path, None, f"cannot be read ({err.strerror})", "check the file's permissions")
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _check_name(path: Path, line: int, name: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith("."):
        _fail(path, line, f"image name {name!r} is not a plain file name",
              "list images by file name only, e.g. 000001.jpg")


def read_attributes(path: Path, csv: bool) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """(image names, attribute names, values as 0/1 uint8, line numbers)."""
    lines = _lines(path)
    if csv:
        if not lines:
            _fail(path, 1, "is empty", "use the file as distributed")
        header = [h.strip() for h in lines[0].split(",")][1:]
        header_line, first = 1, 1
    else:
        if len(lines) < 2:
            _fail(path, len(lines) + 1, "ends before the line of attribute names",
                  "use the file as distributed: a count line, a line of 40 names, one line per image")
        try:
            count = int(lines[0].strip())
        except ValueError:
            _fail(path, 1, f"the first line {lines[0].strip()[:40]!r} is not the number of images",
                  "use the file as distributed (its first line is the image count)")
        header = lines[1].split()
        header_line, first = 2, 2
    known = set(CELEBA_ATTRIBUTES)
    for name in header:
        if name not in known:
            _fail(path, header_line, f"unknown attribute name {name!r}",
                  f"the attribute names are CelebA's 40: {', '.join(CELEBA_ATTRIBUTES)}")
    if len(set(header)) != len(header):
        repeated = sorted({h for h in header if header.count(h) > 1})
        _fail(path, header_line, f"repeats attribute name(s) {repeated}", "name each attribute once")
    if not header:
        _fail(path, header_line, "names no attributes", "use the file as distributed")
    names: list[str] = []
    flags: list[list[bool]] = []
    numbers: list[int] = []
    seen: dict[str, int] = {}
    width = len(header) + 1
    valid = {"1", "-1"}
    for index in range(first, len(lines)):
        lineno = index + 1
        parts = lines[index].split(",") if csv else lines[index].split()
        if len(parts) != width:
            _fail(path, lineno, f"has {len(parts)} fields; an image's line has its name and "
                  f"{len(header)} values (one per attribute in the header)", "repair or restore that line")
        name = parts[0].strip()
        _check_name(path, lineno, name)
        if name in seen:
            _fail(path, lineno, f"lists {name} again (first on line {seen[name]})", "list each image once")
        seen[name] = lineno
        values = [t.strip() for t in parts[1:]] if csv else parts[1:]
        if not valid.issuperset(values):
            col = next(i for i, t in enumerate(values) if t not in valid)
            _fail(path, lineno, f"value {values[col]!r} for {header[col]} of {name} is not -1 or 1",
                  "attribute values are -1 (absent) or 1 (present)")
        names.append(name)
        flags.append([t == "1" for t in values])
        numbers.append(lineno)
    if not names:
        _fail(path, first + 1, "lists no images", "use the file as distributed")
    if not csv and count != len(names):
        _fail(path, 1, f"says {count} images but the file lists {len(names)}",
              "restore the file, or correct the count on its first line")
    return names, header, np.array(flags, dtype=np.uint8), np.asarray(numbers, dtype=np.int64)


def read_partition(path: Path, csv: bool) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(image names, partition 0/1/2, line numbers)."""
    lines = _lines(path)
    first = 1 if csv else 0
    names, values, numbers = [], [], []
    for index in range(first, len(lines)):
        lineno = index + 1
        parts = [p.strip() for p in lines[index].split(",")] if csv else lines[index].split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            _fail(path, lineno, f"{lines[index].strip()[:60]!r} is not an image name and 0, 1 or 2",
                  "each line names an image and its partition: 0 train, 1 val, 2 test")
        _check_name(path, lineno, parts[0])
        names.append(parts[0])
        values.append(int(parts[1]))
        numbers.append(lineno)
    if not names:
        _fail(path, first + 1, "lists no images", "use the file as distributed")
    return names, np.asarray(values, dtype=np.uint8), np.asarray(numbers, dtype=np.int64)


def read_annotations(layout: Layout) -> Annotations:
    """Parse both files and check that they describe the same images."""
    names, header, values, lines = read_attributes(layout.attr_file, layout.csv)
    p_names, p_values, p_lines = read_partition(layout.partition_file, layout.csv)
    where = {name: i for i, name in enumerate(p_names)}
    if len(where) != len(p_names):
        seen: set[str] = set()
        for name, lineno in zip(p_names, p_lines, strict=True):
            if name in seen:
                _fail(layout.partition_file, int(lineno), f"lists {name} again", "list each image once")
            seen.add(name)
    attr_names = set(names)
    for name, lineno in zip(p_names, p_lines, strict=True):
        if name not in attr_names:
            _fail(layout.partition_file, int(lineno), f"names {name}, which {layout.attr_file.name} does not list",
                  f"use the partition file that came with {layout.attr_file.name}")
    partition = np.empty(len(names), dtype=np.uint8)
    for i, name in enumerate(names):
        j = where.get(name)
        if j is None:
            _fail(layout.attr_file, int(lines[i]), f"lists {name}, which {layout.partition_file.name} does not",
                  f"use the partition file that came with {layout.attr_file.name}")
        partition[i] = p_values[j]
    for code, split in enumerate(SPLITS):
        if not (partition == code).any():
            _fail(layout.partition_file, None, f"puts no image in {split} (partition {code})",
                  "use the official partition: 0 train, 1 val, 2 test")
    return Annotations(names, header, values, partition, lines)


def check_images(layout: Layout, annotations: Annotations) -> None:
    """Every listed image exists in the image folder."""
    present = {entry.name for entry in os.scandir(layout.images)}
    for name, lineno in zip(annotations.names, annotations.lines, strict=True):
        if name not in present:
            _fail(layout.attr_file, int(lineno), f"lists {name}, which is absent from {layout.images}",
                  "restore the image (unpack img_align_celeba.zip again) or use the matching files")


# ---------------------------------------------------------------- decoding
@functools.lru_cache(maxsize=16)
def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of half-pixel bilinear resampling along one axis."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    floor = np.floor(src)
    frac = (src - floor).astype(np.float32)
    low = np.clip(floor.astype(np.int64), 0, n_in - 1)
    high = np.clip(floor.astype(np.int64) + 1, 0, n_in - 1)
    return low, high, frac


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``tf.image.resize(image, [height, width])`` (bilinear, half-pixel centres, no antialias), as float32.

    ``image`` is H x W x C. A source coordinate below 0 reads the first pixel,
    one past the end the last, as TensorFlow does.
    """
    y0, y1, fy = _axis(image.shape[0], height)
    x0, x1, fx = _axis(image.shape[1], width)
    img = image.astype(np.float32)
    rows = img[y0] * (1.0 - fy)[:, None, None] + img[y1] * fy[:, None, None]
    return rows[:, x0] * (1.0 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def decoder_version() -> str:
    import PIL
    from PIL import features

    return f"pillow-{PIL.__version__}-jpeg-{features.version('jpg')}-resize-{RESIZE_VERSION}"


def decode_image(path: Path, resolution: int, listed_in: Path | None = None, line: int | None = None) -> np.ndarray:
    """One aligned CelebA image as 3 x R x R uint8 (TAG's resize); a bad file is a DataError."""
    from PIL import Image, UnidentifiedImageError

    where = f" (listed on line {line} of {listed_in})" if listed_in is not None else ""
    try:
        with Image.open(path) as image:
            if image.size != IMAGE_SIZE:
                _fail(path, None, f"is {image.size[0]}x{image.size[1]}, not the aligned 178x218{where}",
                      "use img_align_celeba (the aligned and cropped images), not the in-the-wild ones")
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        _fail(path, None, f"cannot be decoded as an image ({type(err).__name__}: {err}){where}",
              "restore the file from img_align_celeba.zip")
    resized = resize_bilinear(pixels, resolution, resolution)
    return np.clip(np.rint(resized), 0, 255).astype(np.uint8).transpose(2, 0, 1)


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------- dataset
class CelebA(Dataset):
    """CelebA attributes (see the module docstring for files, checks, cache and protocol)."""

    name: ClassVar[str] = "celeba"
    has_groups: ClassVar[bool] = False
    version: ClassVar[int] = 1
    options: ClassVar[dict[str, Option]] = {
        "root": Option(None, f"folder holding CelebA (default: ${ROOT_ENV})", type=str),
        "attributes": Option("celeba9", "'celeba9' (TAG/DMTG's 9), 'celeba40' (all), or comma-separated names"),
        "resolution": Option(64, "images are resized to resolution x resolution", low=8, high=218),
        "backbone": Option("tag", "'tag' (TAG/DMTG's network) or 'resnet18'", choices=tuple(BACKBONES)),
        "width": Option(64, "channels of the backbone's first block (64 in the references)", low=1, high=1024),
        "cache_dir": Option(None, "where the decoded cache lives (default: the user's cache folder)", type=str),
        "workers": Option(0, "decoding threads of prepare (0: up to 8, one per CPU)", low=0, high=256),
        "data_seed": Option(0, "the official split is fixed", choices=(0,)),
    }
    # options that do not change the data a cell sees (identity leaves them out)
    LOCATION_OPTIONS: ClassVar[tuple[str, ...]] = ("root", "cache_dir", "workers")

    def __init__(self, **options: Any) -> None:
        options = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}
        super().__init__(**options)
        self._annotations_memo: tuple[tuple, Annotations] | None = None

    def check(self) -> None:
        self.task_names()

    # ------------------------------------------------------------ options
    def task_names(self) -> list[str]:
        spec = self.params["attributes"].strip()
        if spec in ATTRIBUTE_SETS:
            return list(ATTRIBUTE_SETS[spec])
        names = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in names if n not in CELEBA_ATTRIBUTES]
        if unknown or not names:
            raise OptionError(
                f"{self.owner}: attributes={spec!r} names unknown attribute(s) {unknown}; give "
                f"{sorted(ATTRIBUTE_SETS)} or comma-separated names from {list(CELEBA_ATTRIBUTES)}"
            )
        if len(set(names)) != len(names):
            raise OptionError(f"{self.owner}: attributes={spec!r} repeats an attribute")
        return names

    def protocol(self) -> TrainingProtocol:
        return TrainingProtocol(
            epochs=100,
            batch_size=256,
            optimizer="sgd",
            lr=5e-4,
            momentum=0.9,
            nesterov=False,
            weight_decay=0.0,
            lr_schedule="step",
            lr_step_epochs=15,
            lr_gamma=0.5,
            early_stopping=10,
        )

    def root(self) -> Path:
        root = self.params["root"] or os.environ.get(ROOT_ENV)
        if not root:
            raise DataError(
                f"dataset {self.name!r}: no CelebA root. Fix: give the dataset option root=<folder> "
                f"or set {ROOT_ENV}; nothing is downloaded"
            )
        return Path(root).expanduser()

    def layout(self) -> Layout:
        return find_layout(self.root())

    def cache_root(self) -> Path:
        return Path(self.params["cache_dir"]).expanduser() if self.params["cache_dir"] else default_cache_root()

    def workers(self) -> int:
        return self.params["workers"] or max(1, min(8, os.cpu_count() or 1))

    # ------------------------------------------------------------- checks
    def annotations(self) -> Annotations:
        """Both files parsed and cross-checked (memoised while the files are unchanged)."""
        layout = self.layout()
        stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                      for p in (layout.attr_file, layout.partition_file))
        if self._annotations_memo is not None and self._annotations_memo[0] == stamp:
            return self._annotations_memo[1]
        annotations = read_annotations(layout)
        missing = [a for a in self.task_names() if a not in annotations.attributes]
        if missing:
            _fail(layout.attr_file, 1 if layout.csv else 2, f"has no column for attribute(s) {missing}",
                  "use the full attribute file, or choose other attributes")
        self._annotations_memo = (stamp, annotations)
        return annotations

    def validate(self) -> None:
        annotations = self.annotations()
        check_images(self.layout(), annotations)

    def identity(self) -> dict[str, Any]:
        """The options (not where the files or cache live) plus a hash of the two label files."""
        layout = self.layout()
        params = {k: v for k, v in self.get_params().items() if k not in self.LOCATION_OPTIONS}
        params["content"] = hashlib.sha256(
            (_file_hash(layout.attr_file) + _file_hash(layout.partition_file)).encode()
        ).hexdigest()[:16]
        return params

    # -------------------------------------------------------------- cache
    def _cache(self, annotations: Annotations | None = None) -> ArrayCache:
        """The cache for the files as they are now (cheap: hashes, a stat per image)."""
        layout = self.layout()
        if annotations is not None:
            names, header = annotations.names, annotations.attributes
            counts = [int((annotations.partition == c).sum()) for c in range(3)]
        else:
            names, partition, _ = read_partition(layout.partition_file, layout.csv)
            header = _attribute_header(layout)
            counts = [int((partition == c).sum()) for c in range(3)]
        stats = hashlib.sha256()
        for name in sorted(names):
            st = os.stat(layout.images / name)
            stats.update(f"{name} {st.st_size} {st.st_mtime_ns}\n".encode())
        r = self.params["resolution"]
        key = {
            "attributes_file": _file_hash(layout.attr_file),
            "partition_file": _file_hash(layout.partition_file),
            "images": stats.hexdigest(),
            "resolution": r,
            "decoder": decoder_version(),
        }
        lineage = hashlib.sha256(f"{layout.attr_file.resolve()} {r}".encode()).hexdigest()[:16]
        return ArrayCache(
            self.cache_root(), "celeba", key, rows=len(names),
            arrays={"images": ArraySpec((3, r, r), "uint8"), "attributes": ArraySpec((len(header),), "uint8"),
                    "partition": ArraySpec((), "uint8")},
            meta={"attributes": header, "counts": counts, "root": str(layout.attr_file.parent), "layout": layout.name},
            lineage=lineage,
        )

    def prepare(self, progress: Callable[[int, str], Any] | None = None) -> None:
        """Validate, then decode every image into the cache unless it is already complete."""
        self.validate()
        layout, annotations = self.layout(), self.annotations()
        cache = self._cache(annotations)
        if cache.complete():
            return
        order = np.argsort(annotations.partition, kind="stable")
        resolution = self.params["resolution"]

        def row(i: int) -> dict[str, np.ndarray]:
            j = int(order[i])
            image = decode_image(layout.images / annotations.names[j], resolution,
                                 layout.attr_file, int(annotations.lines[j]))
            return {"images": image}

        cache.build(
            row,
            prefilled={"attributes": annotations.values[order], "partition": annotations.partition[order]},
            workers=self.workers(),
            progress=progress,
            desc=f"decoding CelebA at {resolution}x{resolution}",
        )

    def open_cache(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The cached arrays (memory-mapped) and the manifest; builds the cache when missing."""
        try:
            cache = self._cache()
        except (OSError, DataError):
            cache = None  # a missing or malformed file: prepare() says which
        if cache is None or not cache.complete():
            self.prepare()
            cache = self._cache(self.annotations())
        return cache.open(), cache.manifest() or {}

    # --------------------------------------------------------------- load
    def load(self) -> Benchmark:
        arrays, manifest = self.open_cache()
        header: list[str] = manifest["meta"]["attributes"]
        counts: list[int] = manifest["meta"]["counts"]
        names = self.task_names()
        columns = [header.index(n) for n in names]
        images, attributes = arrays["images"], arrays["attributes"]
        splits = {}
        start = 0
        for split, count in zip(SPLITS, counts, strict=True):
            stop = start + count
            y = {n: torch.from_numpy(attributes[start:stop, c].astype(np.float32)) for n, c in zip(names, columns,
                                                                                                   strict=True)}
            splits[split] = Split(torch.from_numpy(images[start:stop]), y)
            start = stop
        p = self.params
        backbone = BACKBONES[p["backbone"]](image_size=p["resolution"], width=p["width"])
        return Benchmark(
            name=self.name,
            tasks=[TaskSpec(n, "binary", metrics=CELEBA_METRICS) for n in names],
            splits=splits,
            backbone=backbone,
            protocol=self.protocol(),
            groups=None,
            input_transform=to_unit,
            options=dict(p),
            summary_metrics=summary_metrics,
            content_key=manifest.get("digest"),
        )


def _attribute_header(layout: Layout) -> list[str]:
    """The attribute names alone (the header line), without parsing the rows."""
    with open(layout.attr_file, encoding="utf-8") as handle:
        first = handle.readline()
        if layout.csv:
            return [h.strip() for h in first.split(",")][1:]
        return handle.readline().split()
