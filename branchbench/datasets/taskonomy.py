"""Taskonomy's five dense tasks (AdaShare's Taskonomy-5), read as distributed and fed from a raw cache.

**Files** (nothing is downloaded; the root comes from the option ``root`` or
the environment variable ``TASKONOMY_ROOT``). Every view is a set of PNGs named
``point_<P>_view_<V>_domain_<domain>.png``, one per modality folder: ``rgb``,
``segment_semantic``, ``normal``, ``depth_zbuffer``, ``keypoints2d``,
``edge_texture`` (the sample building ``alexsax/taskonomy-sample-model-1``
names its segmentation files ``..._domain_segmentsemantic.png``; both spellings
are read). Three layouts are recognised:

============  ============================================================
layout        folders
============  ============================================================
``building``  ``root/<building>/<modality>/`` (the per-building archives and
              the sample building)
``omnidata``  ``root/<modality>/taskonomy/<building>/`` (what ``omnitools.download
              ... --components taskonomy`` writes; EPFL-VILAB/omnidata
              ``omnidata_dataset.py``: "Domain / Dataset / Building")
``domain``    ``root/<modality>/<building>/`` (tstandley/taskgrouping's
              ``download_dataset.py``)
============  ============================================================

**Split**: the published "tiny" building lists (25 train, 5 val, 5 test; see
``branchbench/data/taskonomy_tiny_split.csv`` and its cited source), or any
file of the same ``id,train,val,test`` form given as ``split_file``. Every
building folder under the root must be listed there (a row of zeros lists a
building no split uses); every listed building must be present unless
``partial=true`` (then each split needs at least one). The split is fixed, so
``data_seed`` is 0.

**Checks**, each one :class:`~branchbench.datasets.base.DataError` naming the
file or folder and the fix: :meth:`Taskonomy.validate` (cheap, directory
listings only, before any run exists) refuses a missing root or layout, a
malformed split file (by line), an unknown or missing building, a PNG whose
name is not a Taskonomy view name, and a view that lacks a modality (or, with
``incomplete="drop"``, leaves such views out, as Omnidata's loader does, and
counts them); :meth:`Taskonomy.prepare` (also before any run) decodes every file
and refuses one that is not a PNG, cannot be decoded, has the wrong size
(``source_size``, 512 as distributed) or the wrong bit depth or colour type
(8-bit RGB for ``rgb`` and ``normal``, 8-bit greyscale for ``segment_semantic``,
16-bit greyscale for the rest), or holds a segmentation label above 17.

**Preprocessing and cache**: each view is resized to ``resolution`` x
``resolution`` (256) with nearest-neighbour sampling by OpenCV's
``INTER_NEAREST`` rule (source pixel ``floor(i * S / R)``), which is what
AdaShare's ``dataloaders/taskonomy_dataloader.py`` does to every modality
(``cv2.resize(..., interpolation=cv2.INTER_NEAREST)``), and stored *raw*
(uint8 RGB, labels and normals; uint16 z-buffer, keypoints and edges) in an
:class:`~branchbench.datasets.image_cache.ArrayCache` keyed on the split file,
every used file's size and modification time, the resolution and the decoder.
The normals array carries a fourth channel, the view's depth mask (raw depth
below 64500, computed after resizing, equal to AdaShare's mask resized by
nearest neighbour), so a normals-only network can mask its targets. Rows are
ordered train, val, test. Targets are decoded per batch on the training device
(``Benchmark.target_transform``, :func:`decode_targets`) by the conventions of
:mod:`branchbench.core.dense` (``taskonomy_*``); 16-bit arrays are handed to
torch as int16 views of the same bytes (torch's uint16 has few kernels) and
read back as unsigned there. Inputs are made float per batch as AdaShare feeds
them: BGR minus the per-channel mean (:func:`bgr_minus_mean`). On CUDA the
trainer keeps the cache on the GPU only when it fits with room for training;
otherwise batches stream from the memory map through pinned buffers
(:mod:`branchbench.core.streaming`).

**Protocol** (the default config ``configs/taskonomy.toml``): AdaShare's
Tiny-Taskonomy 5-task setup (Sun et al., NeurIPS 2020; ``sunxm2357/AdaShare``
at 27e6fb5):

* tasks and heads: segmentation (17 classes, unlabelled pixels ignored),
  surface normals (cosine loss), z-buffer depth, 2D keypoints and 2D texture
  edges (L1 losses), loss weights 1, 3, 2, 7, 7 (``yamls/adashare/taskonomy_5task.yml``
  ``tasks``, ``tasks_num_class``, ``lambdas``);
* network: the dilated DeepLab ResNet-34 with a DeepLab-v2 ASPP head per task
  (:func:`~branchbench.core.deeplab.deeplab_resnet34_backbone`; ``backbone: ResNet34``);
* input 256x256 (the loader resizes to 256), batch 16 (``batch_size: 16``);
* optimiser of the retraining phase: Adam, lr 1e-4 for heads and backbone,
  weight decay 1e-4 (``envs/blockdrop_env.py: define_optimizer``, not policy
  learning; ``lr``, ``backbone_lr``), 30,000 iterations (``retrain_total_iters``),
  the best validation checkpoint kept (``test: which_iter: best``);
* metrics: mIoU and pixel accuracy, the normals' mean cosine similarity
  (AdaShare's Taskonomy metric; logged as ``normal.cosine``) beside the mean
  angle (the suite's main normals metric, which Δm and the reports use), and
  the mean absolute errors of depth, keypoints and edges (AdaShare's).

Differences from AdaShare (the suite's trainer offers no other choice, or the
data file is not public): no training augmentation (AdaShare scales by
0.5-1.5, mirrors and crops 224x224 at training time; it evaluates at 256x256
as we do); Adam's betas are torch's (0.9, 0.999), AdaShare's (0.5, 0.999); the
learning rate follows a cosine over the run instead of x0.3 every 12,000
iterations; the length is in epochs, not iterations (``epochs=2`` is a
placeholder: AdaShare's 30,000 x 16 = 480,000 samples are 480,000 / N epochs
for the N train views the cache manifest records, ``meta.counts[0]``; set
``protocol.epochs`` to that, rounded), and the best weights are chosen per
epoch instead of every 1,000 iterations; AdaShare's segmentation class weights (``semseg_prior_factor.npy`` in
its data folder) are not public, so the cross-entropy is unweighted; losses
and metrics compare predictions upsampled bilinearly to the 256x256 targets
(AdaShare computes its training losses at the network's output stride, against
targets downsampled by nearest neighbour, and evaluates nearest-upsampled
predictions); AdaShare's ``taskonomy.json`` (its list of views) is not public,
so every complete view of the tiny buildings is used. See
:mod:`branchbench.core.dense` for the value conventions and the metric
differences.

``configs/taskonomy_small.toml`` (64x64, a small residual network, for CPU
checks) matches no paper.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, NoReturn

import numpy as np
import torch

from branchbench.core import dense
from branchbench.core.backbones import Backbone, dense_backbone
from branchbench.core.benchmark import SPLITS, Benchmark, Split, TrainingProtocol
from branchbench.core.deeplab import deeplab_resnet34_backbone
from branchbench.core.options import Option, OptionError
from branchbench.core.tasks import TaskSpec
from branchbench.datasets.base import DataError, Dataset
from branchbench.datasets.image_cache import ArrayCache, ArraySpec, default_cache_root

TASKS: tuple[str, ...] = ("segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture")
MODALITIES: tuple[str, ...] = ("rgb", *TASKS)
KINDS: dict[str, str] = {
    "segment_semantic": "segmentation", "normal": "normals", "depth_zbuffer": "depth",
    "keypoints2d": "keypoints", "edge_texture": "edges",
}
# (bit depth, PNG colour type) of each modality as distributed
PNG_FORMATS: dict[str, tuple[int, int]] = {
    "rgb": (8, 2), "normal": (8, 2), "segment_semantic": (8, 0),
    "depth_zbuffer": (16, 0), "keypoints2d": (16, 0), "edge_texture": (16, 0),
}
COLOUR_TYPES = {0: "greyscale", 2: "RGB", 3: "palette", 4: "greyscale+alpha", 6: "RGBA"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
VIEW_NAME = re.compile(r"point_(\d+)_view_(\d+)_domain_([A-Za-z0-9_]+)\.png")
BUILDING_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
ROOT_ENV = "TASKONOMY_ROOT"
TINY_SPLIT = "taskonomy_tiny_split.csv"
SOURCE_SIZE = 512
DECODE_VERSION = 1  # bump when decoding, resizing or the cache's arrays change
BACKBONES = ("deeplab_resnet34", "dense")
LOSS_WEIGHTS = {"adashare": dense.TASKONOMY_LOSS_WEIGHTS, "equal": dict.fromkeys(dense.DENSE_KINDS, 1.0)}


def _fail(path: str | Path, line: int | None, problem: str, fix: str) -> NoReturn:
    where = f"{path}, line {line}" if line is not None else f"{path}"
    raise DataError(f"{where}: {problem}. Fix: {fix}")


def tokens(modality: str) -> tuple[str, ...]:
    """The ``domain_<token>`` spellings of a modality's file names."""
    return (modality,) if "_" not in modality else (modality, modality.replace("_", ""))


# ------------------------------------------------------------------ per batch
def bgr_minus_mean(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB batch -> float BGR minus AdaShare's per-channel mean (``IMG_MEAN``, BGR order)."""
    mean = torch.tensor(dense.TASKONOMY_BGR_MEAN, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return x.flip(1).float() - mean


def _unsigned(raw: torch.Tensor) -> torch.Tensor:
    """A 16-bit target stored as int16 (the uint16 file's bytes) as its unsigned values."""
    return raw.to(torch.int32) & 0xFFFF if raw.dtype == torch.int16 else raw


def decode_targets(y: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Stored Taskonomy targets of a batch -> the targets the losses take (any subset of :data:`TASKS`)."""
    out = dict(y)
    if "segment_semantic" in y:
        out["segment_semantic"] = dense.taskonomy_segmentation(y["segment_semantic"])
    if "normal" in y:
        raw = y["normal"]
        out["normal"] = dense.taskonomy_normals(raw[:, :3], raw[:, 3] > 0)
    if "depth_zbuffer" in y:
        out["depth_zbuffer"] = dense.taskonomy_depth(_unsigned(y["depth_zbuffer"]))
    if "keypoints2d" in y:
        out["keypoints2d"] = dense.taskonomy_keypoints(_unsigned(y["keypoints2d"]))
    if "edge_texture" in y:
        out["edge_texture"] = dense.taskonomy_edges(_unsigned(y["edge_texture"]))
    return out


# ---------------------------------------------------------------- split file
@dataclass(frozen=True)
class BuildingSplit:
    """A building list: each building's split (None: listed, used by none) and its line."""

    source: str
    split_of: dict[str, str | None]
    lines: dict[str, int]
    text: str

    def buildings(self, split: str) -> list[str]:
        return [b for b, s in self.split_of.items() if s == split]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def read_split_file(path: str | Path | None = None) -> BuildingSplit:
    """Parse an ``id,train,val,test`` building list (default: the shipped tiny split)."""
    if path is None:
        source = f"branchbench/data/{TINY_SPLIT}"
        text = resources.files("branchbench.data").joinpath(TINY_SPLIT).read_text(encoding="utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            _fail(path, None, f"cannot be read ({type(err).__name__}: {err})",
                  "give split_file= a readable CSV of id,train,val,test")
    split_of: dict[str, str | None] = {}
    lines: dict[str, int] = {}
    header_seen = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if not header_seen:
            if fields != ["id", "train", "val", "test"]:
                _fail(source, number, f"the header is {line[:60]!r}, not 'id,train,val,test'",
                      "start the file with the header id,train,val,test")
            header_seen = True
            continue
        if len(fields) != 4 or any(f not in ("0", "1") for f in fields[1:]):
            _fail(source, number, f"{line[:60]!r} is not a building and three 0/1 flags",
                  "write each row as <building>,<train>,<val>,<test> with 0 or 1")
        name, flags = fields[0], [f == "1" for f in fields[1:]]
        if not BUILDING_NAME.fullmatch(name):
            _fail(source, number, f"{name!r} is not a building name", "name the building as its folder is named")
        if sum(flags) > 1:
            _fail(source, number, f"puts {name} in more than one split", "give each building at most one 1")
        if name in split_of:
            _fail(source, number, f"lists {name} again (first on line {lines[name]})", "list each building once")
        split_of[name] = SPLITS[flags.index(True)] if any(flags) else None
        lines[name] = number
    if not header_seen:
        _fail(source, None, "is empty", "give a CSV with the header id,train,val,test and one row per building")
    for split in SPLITS:
        if split not in split_of.values():
            _fail(source, None, f"puts no building in {split}", f"mark at least one building for {split}")
    return BuildingSplit(source, split_of, lines, text)


# -------------------------------------------------------------------- layout
@dataclass(frozen=True)
class Layout:
    """Where one copy of Taskonomy keeps a modality of a building."""

    name: str  # "building", "omnidata" or "domain"
    root: Path

    def folder(self, modality: str, building: str) -> Path:
        if self.name == "building":
            return self.root / building / modality
        if self.name == "omnidata":
            return self.root / modality / "taskonomy" / building
        return self.root / modality / building

    def buildings_found(self) -> dict[str, Path]:
        """Each building folder that has an ``rgb`` folder, by name (the folder holding it)."""
        if self.name == "building":
            base = self.root
            return {e.name: Path(e.path) for e in _subdirs(base) if (Path(e.path) / "rgb").is_dir()}
        base = self.root / "rgb" / "taskonomy" if self.name == "omnidata" else self.root / "rgb"
        return {e.name: Path(e.path) for e in _subdirs(base)}


def _subdirs(folder: Path) -> list[os.DirEntry]:
    return sorted((e for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)


def find_layout(root: str | Path) -> Layout:
    root = Path(root).expanduser()
    if not root.is_dir():
        _fail(root, None, "no such directory" if not root.exists() else "is not a directory",
              f"give the dataset option root= (or {ROOT_ENV}) the folder holding Taskonomy")
    if (root / "rgb" / "taskonomy").is_dir():
        return Layout("omnidata", root)
    if (root / "rgb").is_dir():
        return Layout("domain", root)
    if any((Path(e.path) / "rgb").is_dir() for e in _subdirs(root)):
        return Layout("building", root)
    _fail(root, None, "holds no Taskonomy layout (looked for rgb/taskonomy/<building>/, rgb/<building>/ "
          "and <building>/rgb/)", "point root at the folder holding the buildings or the modality folders")


# --------------------------------------------------------------------- views
@dataclass
class Inventory:
    """The views used, in cache order (train, val, test; split-file building order; point, view)."""

    layout: Layout
    buildings: list[str]  # the buildings used, in cache order
    split_codes: np.ndarray  # (N,) 0 train, 1 val, 2 test
    building_index: np.ndarray  # (N,) into buildings
    points: np.ndarray  # (N,)
    views: np.ndarray  # (N,)
    tokens: dict[tuple[str, str], str]  # (building, modality) -> the file names' domain token
    dropped: int = 0
    counts: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.points)

    def path(self, i: int, modality: str) -> Path:
        building = self.buildings[int(self.building_index[i])]
        token = self.tokens[(building, modality)]
        return self.layout.folder(modality, building) / (
            f"point_{int(self.points[i])}_view_{int(self.views[i])}_domain_{token}.png")

    def listing_digest(self) -> str:
        """A hash of which views are used and where they belong (not of where the files are)."""
        digest = hashlib.sha256()
        for b, p, v, s in zip(self.building_index, self.points, self.views, self.split_codes, strict=True):
            digest.update(f"{self.buildings[int(b)]} {int(p)} {int(v)} {int(s)}\n".encode())
        return digest.hexdigest()


def _list_views(folder: Path, modality: str, building: str) -> tuple[set[tuple[int, int]], str]:
    """The (point, view) pairs of one modality folder and the domain token its names use."""
    if not folder.is_dir():
        _fail(folder, None, f"missing (building {building}'s {modality} images)",
              f"put the {modality} PNGs of {building} there (every view needs all six modalities)")
    accepted = tokens(modality)
    found: set[tuple[int, int]] = set()
    used: set[str] = set()
    for entry in os.scandir(folder):
        if not entry.name.lower().endswith(".png") or entry.name.startswith("."):
            continue
        match = VIEW_NAME.fullmatch(entry.name)
        if match is None:
            _fail(folder / entry.name, None, "is not named point_<P>_view_<V>_domain_<domain>.png",
                  "keep Taskonomy's file names, or move the file out of the folder")
        if match.group(3) not in accepted:
            _fail(folder / entry.name, None, f"is a {match.group(3)!r} file in the {modality} folder",
                  f"move it to its own folder; files here end in _domain_{accepted[0]}.png")
        used.add(match.group(3))
        found.add((int(match.group(1)), int(match.group(2))))
    if len(used) > 1:
        _fail(folder, None, f"mixes the file-name spellings {sorted(used)}", f"name all files _domain_{accepted[0]}.png")
    return found, (used.pop() if used else accepted[0])


def scan(layout: Layout, split: BuildingSplit, *, partial: bool, incomplete: str) -> Inventory:
    """Check buildings and views against the split (DataError naming the file or folder); list the views."""
    found = layout.buildings_found()
    for name, folder in found.items():
        if name not in split.split_of:
            where = folder / "rgb" if layout.name == "building" else folder
            _fail(where, None, f"building {name!r} is in none of the split file's lists ({split.source})",
                  "remove or move that building, or give split_file= a list that names it "
                  "(a row of zeros lists a building no split uses)")
    buildings: list[str] = []
    for split_name in SPLITS:
        listed = split.buildings(split_name)
        present = [b for b in listed if b in found]
        missing = [b for b in listed if b not in found]
        if missing and not partial:
            _fail(layout.folder("rgb", missing[0]), None,
                  f"missing: building {missing[0]!r} of the {split_name} split ({len(missing)} of its "
                  f"{len(listed)} buildings are absent, listed in {split.source}, line {split.lines[missing[0]]})",
                  "add the missing buildings, or give partial=true to use the buildings present")
        if not present:
            _fail(layout.root, None, f"holds no building of the {split_name} split (listed in {split.source}: "
                  f"{', '.join(listed[:6])}{', ...' if len(listed) > 6 else ''})",
                  "add at least one of them, or give split_file= the list your copy follows")
        buildings.extend(present)
    codes, b_index, points, views = [], [], [], []
    token_of: dict[tuple[str, str], str] = {}
    dropped = 0
    counts = [0, 0, 0]
    for bi, building in enumerate(buildings):
        code = SPLITS.index(split.split_of[building])
        listing: dict[str, set[tuple[int, int]]] = {}
        for modality in MODALITIES:
            listing[modality], token_of[(building, modality)] = _list_views(
                layout.folder(modality, building), modality, building)
        complete = set(listing["rgb"])
        for modality in TASKS:
            lacking = complete - listing[modality]
            if lacking and incomplete == "error":
                p, v = min(lacking)
                expected = layout.folder(modality, building) / f"point_{p}_view_{v}_domain_{token_of[(building, modality)]}.png"
                _fail(expected, None, f"missing: view point_{p}_view_{v} of {building} has an rgb image but no "
                      f"{modality} file ({len(lacking)} such views in this folder)",
                      "restore the file, or give incomplete=\"drop\" to leave out views lacking a modality")
            complete -= lacking
        dropped += len(listing["rgb"]) - len(complete)
        for p, v in sorted(complete):
            codes.append(code)
            b_index.append(bi)
            points.append(p)
            views.append(v)
        counts[code] += len(complete)
    for code, split_name in enumerate(SPLITS):
        if counts[code] == 0:
            _fail(layout.root, None, f"the {split_name} split has no complete view", "add its images")
    return Inventory(layout, buildings, np.asarray(codes, np.uint8), np.asarray(b_index, np.uint16),
                     np.asarray(points, np.int64), np.asarray(views, np.int64), token_of, dropped, counts)


# ------------------------------------------------------------------ decoding
def png_header(path: Path) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk; DataError if it is no PNG."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(29)
    except OSError as err:
        _fail(path, None, f"cannot be read ({err.strerror})", "check the file and its permissions")
    if len(head) < 29 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        _fail(path, None, "is not a PNG file", "restore the file from the Taskonomy download")
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    return width, height, head[24], head[25]


@functools.lru_cache(maxsize=16)
def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output pixel under OpenCV's ``INTER_NEAREST``: ``floor(i * (1 / (n_out / n_in)))``."""
    scale = 1.0 / (n_out / n_in)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float64) * scale).astype(np.int64), n_in - 1)


def resize_nearest(image: np.ndarray, size: int) -> np.ndarray:
    """An H x W (x C) array resized to size x size by OpenCV's nearest-neighbour rule."""
    rows, cols = nearest_index(image.shape[0], size), nearest_index(image.shape[1], size)
    return image[rows][:, cols]


def read_png(path: Path, modality: str, source_size: int) -> np.ndarray:
    """One Taskonomy PNG, checked (size, bit depth, colour type) and decoded: uint8 or uint16 array."""
    from PIL import Image, UnidentifiedImageError

    width, height, bits, colour = png_header(path)
    want_bits, want_colour = PNG_FORMATS[modality]
    if (bits, colour) != (want_bits, want_colour):
        _fail(path, None, f"is a {bits}-bit {COLOUR_TYPES.get(colour, f'colour-type-{colour}')} PNG; Taskonomy's "
              f"{modality} images are {want_bits}-bit {COLOUR_TYPES[want_colour]}",
              "restore the file as distributed (a converted copy loses the values)")
    if (width, height) != (source_size, source_size):
        _fail(path, None, f"is {width}x{height}, not {source_size}x{source_size}",
              f"restore the file, or give source_size= the side of your copy's images ({SOURCE_SIZE} as distributed)")
    try:
        with Image.open(path) as image:
            image.load()
            pixels = np.asarray(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        _fail(path, None, f"cannot be decoded as a PNG ({type(err).__name__}: {err})",
              "restore the file from the Taskonomy download")
    return pixels.astype(np.uint16) if want_bits == 16 else pixels.astype(np.uint8, copy=False)


def decode_view(files: Mapping[str, Path], resolution: int, source_size: int) -> dict[str, np.ndarray]:
    """A view's six PNGs as the cache stores them (raw values, resized by nearest neighbour)."""
    out: dict[str, np.ndarray] = {}
    rgb = read_png(files["rgb"], "rgb", source_size)
    out["rgb"] = resize_nearest(rgb, resolution).transpose(2, 0, 1)
    labels = read_png(files["segment_semantic"], "segment_semantic", source_size)
    if int(labels.max()) > dense.TASKONOMY_SEG_CLASSES:
        _fail(files["segment_semantic"], None, f"holds label {int(labels.max())}; Taskonomy's segment_semantic "
              f"labels are 0 (unlabelled) to {dense.TASKONOMY_SEG_CLASSES}",
              "restore the file as distributed (a recoloured or palette copy changes the labels)")
    out["segment_semantic"] = resize_nearest(labels, resolution)
    depth = resize_nearest(read_png(files["depth_zbuffer"], "depth_zbuffer", source_size), resolution)
    out["depth_zbuffer"] = depth
    normal = resize_nearest(read_png(files["normal"], "normal", source_size), resolution).transpose(2, 0, 1)
    valid = (depth < dense.TASKONOMY_DEPTH_INVALID_FROM).astype(np.uint8)[None]
    out["normal"] = np.concatenate([normal, valid])
    for modality in ("keypoints2d", "edge_texture"):
        out[modality] = resize_nearest(read_png(files[modality], modality, source_size), resolution)
    return out


def decoder_version() -> str:
    import PIL

    return f"pillow-{PIL.__version__}-nearest-cv2-{DECODE_VERSION}"


# ------------------------------------------------------------------- dataset
_SCANS: dict[tuple, Inventory] = {}  # a sweep builds one dataset per cell; the folders are listed once


class Taskonomy(Dataset):
    """Taskonomy-5 (see the module docstring for files, checks, cache and protocol)."""

    name: ClassVar[str] = "taskonomy"
    has_groups: ClassVar[bool] = False
    version: ClassVar[int] = 1
    options: ClassVar[dict[str, Option]] = {
        "root": Option(None, f"folder holding Taskonomy (default: ${ROOT_ENV})", type=str),
        "tasks": Option("all", f"'all' or comma-separated names from {', '.join(TASKS)}"),
        "resolution": Option(256, "views are resized to resolution x resolution (nearest neighbour)", low=8, high=1024),
        "source_size": Option(SOURCE_SIZE, "side of the PNGs as distributed; others are refused", low=8, high=4096),
        "backbone": Option("deeplab_resnet34", "'deeplab_resnet34' (AdaShare's) or 'dense' (a small residual "
                           "network for CPU checks)", choices=BACKBONES),
        "width": Option(64, "channels of the backbone's first stage (64 in AdaShare's ResNet-34)", low=1, high=1024),
        "head_width": Option(1024, "channels of the DeepLab ASPP heads (1024 in AdaShare's)", low=1, high=4096),
        "loss_weights": Option("adashare", "'adashare' (seg 1, normals 3, depth 2, keypoints 7, edges 7) or 'equal'",
                               choices=tuple(LOSS_WEIGHTS)),
        "split_file": Option(None, "CSV id,train,val,test of the buildings (default: the shipped tiny split)",
                             type=str),
        "partial": Option(False, "use the split's buildings present under root (each split needs one)"),
        "incomplete": Option("error", "a view lacking a modality: 'error', or 'drop' it (Omnidata's loader does)",
                             choices=("error", "drop")),
        "cache_dir": Option(None, "where the decoded cache lives (default: the user's cache folder)", type=str),
        "workers": Option(0, "decoding threads of prepare (0: up to 8, one per CPU)", low=0, high=256),
        "data_seed": Option(0, "the building split is fixed", choices=(0,)),
    }
    # options that do not change the data a cell sees (identity leaves them out; split_file enters as its hash)
    LOCATION_OPTIONS: ClassVar[tuple[str, ...]] = ("root", "cache_dir", "workers", "split_file")

    def __init__(self, **options: Any) -> None:
        options = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in options.items()}
        super().__init__(**options)

    def check(self) -> None:
        self.task_names()
        if self.params["resolution"] > self.params["source_size"]:
            raise OptionError(f"{self.owner}: resolution={self.params['resolution']} exceeds source_size="
                              f"{self.params['source_size']}; Taskonomy views are only downsampled")

    # ------------------------------------------------------------ options
    def task_names(self) -> list[str]:
        spec = self.params["tasks"].strip()
        if spec == "all":
            return list(TASKS)
        names = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in names if n not in TASKS]
        if unknown or not names:
            raise OptionError(f"{self.owner}: tasks={spec!r} names unknown task(s) {unknown}; give 'all' or "
                              f"comma-separated names from {list(TASKS)}")
        if len(set(names)) != len(names):
            raise OptionError(f"{self.owner}: tasks={spec!r} repeats a task")
        return names

    def protocol(self) -> TrainingProtocol:
        return TrainingProtocol(epochs=2, batch_size=16, optimizer="adam", lr=1e-4, weight_decay=1e-4,
                                lr_schedule="cosine", early_stopping=0)

    def root(self) -> Path:
        root = self.params["root"] or os.environ.get(ROOT_ENV)
        if not root:
            raise DataError(f"dataset {self.name!r}: no Taskonomy root. Fix: give the dataset option root=<folder> "
                            f"or set {ROOT_ENV}; nothing is downloaded")
        return Path(root).expanduser()

    def cache_root(self) -> Path:
        return Path(self.params["cache_dir"]).expanduser() if self.params["cache_dir"] else default_cache_root()

    def workers(self) -> int:
        return self.params["workers"] or max(1, min(8, os.cpu_count() or 1))

    def split(self) -> BuildingSplit:
        return read_split_file(self.params["split_file"])

    # ------------------------------------------------------------- checks
    def inventory(self) -> Inventory:
        """The checked list of views (memoised, across instances, while the folders and split file are unchanged)."""
        layout = find_layout(self.root())
        split = self.split()
        folders = [layout.root] + [layout.folder(m, b) for b in layout.buildings_found() for m in MODALITIES]
        stamp = (layout, split.digest, self.params["partial"], self.params["incomplete"],
                 tuple((str(f), f.stat().st_mtime_ns) for f in folders if f.is_dir()))
        if stamp in _SCANS:
            return _SCANS[stamp]
        inventory = scan(layout, split, partial=self.params["partial"], incomplete=self.params["incomplete"])
        while len(_SCANS) >= 4:
            _SCANS.pop(next(iter(_SCANS)))
        _SCANS[stamp] = inventory
        return inventory

    def validate(self) -> None:
        self.inventory()

    def identity(self) -> dict[str, Any]:
        """The options (not where files or cache live) plus hashes of the split file and of the views used."""
        inventory = self.inventory()
        params = {k: v for k, v in self.get_params().items() if k not in self.LOCATION_OPTIONS}
        params["split"] = self.split().digest[:16]
        params["content"] = inventory.listing_digest()[:16]
        return params

    # -------------------------------------------------------------- cache
    def _cache(self, inventory: Inventory) -> ArrayCache:
        """The cache for the files as they are now (a stat per file)."""
        stats = hashlib.sha256()
        for i in range(len(inventory)):
            for modality in MODALITIES:
                path = inventory.path(i, modality)
                st = os.stat(path)
                stats.update(f"{path.name} {st.st_size} {st.st_mtime_ns}\n".encode())
        r = self.params["resolution"]
        key = {
            "split_file": self.split().digest,
            "views": inventory.listing_digest(),
            "files": stats.hexdigest(),
            "resolution": r,
            "source_size": self.params["source_size"],
            "decoder": decoder_version(),
        }
        root = inventory.layout.root.resolve()
        lineage = hashlib.sha256(f"{root} {r}".encode()).hexdigest()[:16]
        arrays = {
            "rgb": ArraySpec((3, r, r), "uint8"),
            "segment_semantic": ArraySpec((r, r), "uint8"),
            "normal": ArraySpec((4, r, r), "uint8"),
            "depth_zbuffer": ArraySpec((r, r), "uint16"),
            "keypoints2d": ArraySpec((r, r), "uint16"),
            "edge_texture": ArraySpec((r, r), "uint16"),
            "split": ArraySpec((), "uint8"),
            "building": ArraySpec((), "uint16"),
            "point": ArraySpec((), "int64"),
            "view": ArraySpec((), "int64"),
        }
        meta = {"buildings": inventory.buildings, "counts": inventory.counts, "dropped": inventory.dropped,
                "root": str(root), "layout": inventory.layout.name}
        return ArrayCache(self.cache_root(), "taskonomy", key, rows=len(inventory), arrays=arrays, meta=meta,
                          lineage=lineage)

    def prepare(self, progress: Callable[[int, str], Any] | None = None) -> None:
        """Validate, then decode every view into the cache unless it is already complete."""
        self._prepared(progress)

    def _prepared(self, progress: Callable[[int, str], Any] | None = None) -> ArrayCache:
        inventory = self.inventory()
        cache = self._cache(inventory)
        if cache.complete():
            return cache
        resolution, source_size = self.params["resolution"], self.params["source_size"]

        def row(i: int) -> dict[str, np.ndarray]:
            return decode_view({m: inventory.path(i, m) for m in MODALITIES}, resolution, source_size)

        cache.build(
            row,
            prefilled={"split": inventory.split_codes, "building": inventory.building_index,
                       "point": inventory.points, "view": inventory.views},
            workers=self.workers(),
            progress=progress,
            chunk=64,
            desc=f"decoding Taskonomy at {resolution}x{resolution}",
        )
        return cache

    def open_cache(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The cached arrays (memory-mapped) and the manifest; validates and builds the cache when missing."""
        cache = self._prepared()
        return cache.open(), cache.manifest() or {}

    # --------------------------------------------------------------- load
    def backbone(self) -> Backbone:
        p = self.params
        if p["backbone"] == "deeplab_resnet34":
            return deeplab_resnet34_backbone(p["resolution"], width=p["width"], head_width=p["head_width"])
        w = p["width"]
        return dense_backbone(3, p["resolution"], channels=(w, 2 * w, 2 * w, 2 * w), strides=(1, 1, 2, 1),
                              decoder_width=w)

    def task_specs(self) -> list[TaskSpec]:
        weights = LOSS_WEIGHTS[self.params["loss_weights"]]
        specs = []
        for name in self.task_names():
            kind = KINDS[name]
            specs.append(TaskSpec(
                name, kind,
                n_outputs=dense.TASKONOMY_SEG_CLASSES if kind == "segmentation" else None,
                loss_weight=weights[kind],
            ))
        return specs

    def load(self) -> Benchmark:
        arrays, manifest = self.open_cache()
        counts: list[int] = manifest["meta"]["counts"]
        names = self.task_names()

        def tensor(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array.view(np.int16) if array.dtype == np.uint16 else array)

        splits = {}
        start = 0
        for split, count in zip(SPLITS, counts, strict=True):
            stop = start + count
            splits[split] = Split(tensor(arrays["rgb"][start:stop]),
                                  {n: tensor(arrays[n][start:stop]) for n in names})
            start = stop
        return Benchmark(
            name=self.name,
            tasks=self.task_specs(),
            splits=splits,
            backbone=self.backbone(),
            protocol=self.protocol(),
            groups=None,
            input_transform=bgr_minus_mean,
            target_transform=decode_targets,
            options=dict(self.params),
        )
