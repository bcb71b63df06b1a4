"""Dense (per-pixel) tasks: their losses, streamed metrics and the published value conventions.

:class:`~branchbench.core.tasks.TaskSpec` dispatches here for the dense kinds.
A dense prediction is ``(B, C, H, W)``; its target is stored as the loss takes
it, with invalid pixels marked *in the target itself*, so a split's targets
stay one tensor per task:

==============  ===  ==========================================  =========================
kind            C    target                                      invalid pixel
==============  ===  ==========================================  =========================
segmentation    K    ``(B, H, W)`` integer class ids 0..K-1      ``ignore_index`` (255)
normals         3    ``(B, 3, H, W)`` float, unit vectors        NaN (any channel) or 0
depth           1    ``(B, H, W)`` or ``(B, 1, H, W)`` float     NaN
keypoints       1    ``(B, H, W)`` or ``(B, 1, H, W)`` float     NaN
edges           1    ``(B, H, W)`` or ``(B, 1, H, W)`` float     NaN
==============  ===  ==========================================  =========================

A prediction whose spatial size differs from its target's is resized to the
target's (bilinear) before the loss and the metrics.

Losses: segmentation is cross-entropy over valid pixels (optionally
class-weighted); normals ``1 - cos`` between the normalised prediction and
target (AdaShare's ``get_sn_loss``), or ``l1`` (Standley et al.'s
``normal_loss_simple``); depth, keypoints and edges the L1 error over valid
pixels. Each loss is a mean over the batch's valid pixels and is 0, not NaN,
for a batch without any.

Metrics are computed from *additive statistics* of a batch
(:func:`batch_stats`): a confusion matrix for segmentation, running sums for
the rest, in float64/int64 on the prediction's device. Summing them over
batches and finishing once (:func:`finish`) gives exactly the metrics of the
whole split, so evaluation never holds a split's dense predictions in memory.

* segmentation: ``miou`` (mean over classes present in the target or the
  prediction of ``TP / (TP + FP + FN)``), ``pixel_acc`` (over valid pixels);
* normals: ``mean_angle`` (degrees), ``cosine`` (mean cosine similarity,
  AdaShare's Taskonomy metric), ``within_11_25`` / ``within_22_5`` /
  ``within_30`` (% of pixels under that angle);
* depth, keypoints, edges: ``abs_err`` (mean absolute error, the metric
  AdaShare reports for all three on Taskonomy) and ``rmse``.

Metric names never contain a dot (reports split ``<task>.<metric>`` on dots).

Taskonomy value conventions
---------------------------
The ``taskonomy_*`` functions turn Taskonomy's raw label images (as read from
their PNGs, channel-first) into the targets above, and are the one place the
dataset reader takes them from. Sources (public code):

* **segmentation** (``segment_semantic``, uint8): 0 is *unlabelled*, classes
  1..17 become 0..16 (17 classes); unlabelled pixels are ignored.
  StanfordVL/taskonomy ``code/lib/data/load_ops.py: semantic_segment_rebalanced``
  (``mask = img > 0.1; img[img == 0] = 1; img = img - 1``) and
  ``taskbank/experiments/final/segmentsemantic/config.py``
  (``target_num_channels = 17``, ``mask_by_target_func``); AdaShare
  ``dataloaders/taskonomy_dataloader.py`` (same mapping) and
  ``yamls/adashare/taskonomy_5task.yml`` (``tasks_num_class: [17, ...]``).
  AdaShare computes that mask but its loss ignores only label 255 (the crop
  padding, ``envs/base_env.py``: ``CrossEntropyLoss(weight=prior, ignore_index=255)``),
  so its unlabelled pixels train as class 0; we follow Taskonomy's mask.
  Its class weights (``semseg_prior_factor.npy``, a data file) can be given as
  ``TaskSpec.class_weights``. Standley et al. (tstandley/taskgrouping
  ``taskonomy_losses.py``) keep 18 outputs and use ``ignore_index=0`` instead.
* **normals** (``normal``, uint8 RGB, "127-centered"): ``x / 255`` rescaled
  to [-1, 1], i.e. ``x / 255 * 2 - 1`` (load_ops ``rescale_image``,
  ``rgb2sfnorm/config.py`` ``new_scale: [-1, 1]``; AdaShare ``resize_rescale_image``);
  pixels with invalid depth are masked (``rgb2sfnorm/config.py``
  ``depth_mask: True``; AdaShare ``sn_mask = np.tile(depth_mask, [1, 1, 3])``).
* **depth** (``depth_zbuffer``, uint16, units of 1/512 m, 65535 = no
  depth): ``log(1 + d) / log(2^16)``, masked where ``d >= 64500``
  ("roughly max value - 1000. This margin is for interpolation errors",
  ``rgb2depth/config.py``; AdaShare ``resize_and_rescale_image_log`` and
  ``make_depth_mask``). Units: the taskonomy sample-model README ("Units of
  1/512m with a max range of 128m").
* **keypoints** (``keypoints2d``, uint16): ``x / 2^16`` clipped to [0, 0.005]
  and rescaled to [-1, 1] (``keypoint2d/config.py`` ``current_scale: [0.0, 0.005]``;
  AdaShare ``keypoint / 2**16``, ``current_scale=(0, 0.005)``).
* **edges** (``edge_texture``, uint16): ``x / 2^16`` clipped to [0, 0.08] and
  rescaled to [-1, 1] (``edge2d/config.py`` ``current_scale: [0, 0.08]``; AdaShare).
* **loss weights** of AdaShare's 5-task Taskonomy run: seg 1, normals 3,
  depth 2, keypoints 7, edges 7 (``taskonomy_5task.yml`` ``lambdas``);
  :data:`TASKONOMY_LOSS_WEIGHTS`. Every target is resized with nearest
  neighbour there (``cv2.INTER_NEAREST``), so masks survive resizing.
* **input**: AdaShare feeds BGR images minus a per-channel mean
  (:data:`TASKONOMY_BGR_MEAN`); the Taskonomy models take RGB in [-1, 1].

Differences from AdaShare's evaluation (``test.py: eval_fix_policy``):
its mIoU averages only classes with at least one true positive (ours: every
class with a non-empty union, the usual definition), its pixel accuracy and
L1 errors are means of per-batch means (ours: per-pixel over the split), and
its segmentation "err" (the cross-entropy) is not reported here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

DENSE_KINDS: tuple[str, ...] = ("segmentation", "normals", "depth", "keypoints", "edges")
L1_KINDS: tuple[str, ...] = ("depth", "keypoints", "edges")
IGNORE_INDEX = 255
CRITERIA: dict[str, tuple[str, ...]] = {
    "segmentation": ("cross_entropy",),
    "normals": ("cosine", "l1"),
    "depth": ("l1",),
    "keypoints": ("l1",),
    "edges": ("l1",),
}
ANGLE_THRESHOLDS: tuple[tuple[str, float], ...] = (("within_11_25", 11.25), ("within_22_5", 22.5), ("within_30", 30.0))

# ------------------------------------------------------------- Taskonomy conventions
TASKONOMY_SEG_CLASSES = 17
TASKONOMY_DEPTH_INVALID_FROM = 64500  # raw z-buffer values at or above this are "no depth"
TASKONOMY_DEPTH_NORMALIZER = math.log(2.0**16)
TASKONOMY_KEYPOINTS_RANGE = (0.0, 0.005)  # of raw / 2^16
TASKONOMY_EDGES_RANGE = (0.0, 0.08)  # of raw / 2^16
TASKONOMY_LOSS_WEIGHTS: dict[str, float] = {
    "segmentation": 1.0, "normals": 3.0, "depth": 2.0, "keypoints": 7.0, "edges": 7.0,
}
TASKONOMY_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)


def _tensor(raw: Tensor | np.ndarray) -> Tensor:
    return raw if isinstance(raw, Tensor) else torch.as_tensor(np.ascontiguousarray(raw))


def taskonomy_segmentation(raw: Tensor | np.ndarray) -> Tensor:
    """uint8 labels: raw 1..17 -> 0..16, raw 0 (unlabelled) -> :data:`IGNORE_INDEX`."""
    x = _tensor(raw).to(torch.int16)
    if bool(((x < 0) | (x > TASKONOMY_SEG_CLASSES)).any()):
        bad = sorted(set(x[(x < 0) | (x > TASKONOMY_SEG_CLASSES)].unique().tolist()))[:5]
        raise ValueError(f"Taskonomy segment_semantic labels are 0..{TASKONOMY_SEG_CLASSES}; found {bad}")
    return torch.where(x == 0, torch.full_like(x, IGNORE_INDEX), x - 1).to(torch.uint8)


def taskonomy_depth_valid(raw: Tensor | np.ndarray) -> Tensor:
    """Where a raw z-buffer pixel holds a depth (``raw < 64500``)."""
    return _tensor(raw).to(torch.int32) < TASKONOMY_DEPTH_INVALID_FROM


def taskonomy_depth(raw: Tensor | np.ndarray) -> Tensor:
    """float32 ``log(1 + d) / log(2^16)``, NaN where there is no depth."""
    x = _tensor(raw).to(torch.float32)
    out = torch.log1p(x) / TASKONOMY_DEPTH_NORMALIZER
    return out.masked_fill(~taskonomy_depth_valid(raw), float("nan"))


def taskonomy_normals(raw: Tensor | np.ndarray, valid: Tensor | np.ndarray | None = None) -> Tensor:
    """float32 in [-1, 1] from uint8 ``(..., 3, H, W)``; NaN where ``valid`` (``(..., H, W)``) is False.

    ``valid`` is the depth mask of the same view (:func:`taskonomy_depth_valid`).
    """
    x = _tensor(raw).to(torch.float32) / 255.0 * 2.0 - 1.0
    if valid is not None:
        x = x.masked_fill(~_tensor(valid).bool().unsqueeze(-3), float("nan"))
    return x


def _rescale_clipped(raw: Tensor | np.ndarray, low: float, high: float) -> Tensor:
    x = _tensor(raw).to(torch.float32) / 2.0**16
    return (x.clamp(low, high) - low) / (high - low) * 2.0 - 1.0


def taskonomy_keypoints(raw: Tensor | np.ndarray) -> Tensor:
    """float32 in [-1, 1]: ``raw / 2^16`` clipped to [0, 0.005]."""
    return _rescale_clipped(raw, *TASKONOMY_KEYPOINTS_RANGE)


def taskonomy_edges(raw: Tensor | np.ndarray) -> Tensor:
    """float32 in [-1, 1]: ``raw / 2^16`` clipped to [0, 0.08]."""
    return _rescale_clipped(raw, *TASKONOMY_EDGES_RANGE)


# ------------------------------------------------------------------ shapes
def _aligned(name: str, kind: str, prediction: Tensor, target: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    """Float prediction resized to the target's size; single-channel kinds as (B, H, W) both."""
    if prediction.dim() != 4 or prediction.shape[1] != channels:
        raise ValueError(
            f"task {name!r} ({kind}): prediction has shape {tuple(prediction.shape)}, expected "
            f"(batch, {channels}, height, width); check the task's head"
        )
    if kind in L1_KINDS and target.dim() == 4 and target.shape[1] == 1:
        target = target[:, 0]
    expected = "(batch, 3, height, width)" if kind == "normals" else "(batch, height, width)"
    good = target.dim() == 4 and target.shape[1] == 3 if kind == "normals" else target.dim() == 3
    if not good or target.shape[0] != prediction.shape[0]:
        raise ValueError(
            f"task {name!r} ({kind}): target has shape {tuple(target.shape)} for a prediction of "
            f"{tuple(prediction.shape)}; give {expected}"
        )
    prediction = prediction.float()
    size = tuple(target.shape[-2:])
    if tuple(prediction.shape[-2:]) != size:
        prediction = F.interpolate(prediction, size=size, mode="bilinear", align_corners=False)
    if kind in L1_KINDS:
        prediction = prediction[:, 0]
    return prediction, target


# ------------------------------------------------------------------- losses
def dense_loss(
    name: str,
    kind: str,
    prediction: Tensor,
    target: Tensor,
    *,
    channels: int,
    ignore_index: int = IGNORE_INDEX,
    class_weights: Tensor | None = None,
    criterion: str = "",
) -> Tensor:
    """Mean loss over the batch's valid pixels (0 when there are none); float32."""
    prediction, target = _aligned(name, kind, prediction, target, channels)
    if kind == "segmentation":
        labels = target.long()
        valid = labels != ignore_index
        total = F.cross_entropy(prediction, labels, weight=class_weights, ignore_index=ignore_index, reduction="sum")
        if class_weights is None:
            denominator = valid.sum()
        else:
            denominator = class_weights[labels.masked_fill(~valid, 0)].masked_fill(~valid, 0).sum()
        return total / denominator.clamp_min(1e-12)
    if kind == "normals":
        goal = torch.nan_to_num(target.float())
        valid = torch.isfinite(target).all(dim=1) & (goal.abs().sum(dim=1) > 0)
        if criterion == "l1":
            errors = (prediction - goal).abs().sum(dim=1)
            return (errors * valid).sum() / (3 * valid.sum()).clamp_min(1)
        cos = (F.normalize(prediction, dim=1) * F.normalize(goal, dim=1)).sum(dim=1)
        return ((1.0 - cos) * valid).sum() / valid.sum().clamp_min(1)
    valid = torch.isfinite(target)
    errors = (prediction - torch.nan_to_num(target.float())).abs()
    return (errors * valid).sum() / valid.sum().clamp_min(1)


# ------------------------------------------------------------------ metrics
def batch_stats(
    name: str, kind: str, prediction: Tensor, target: Tensor, *, channels: int, ignore_index: int = IGNORE_INDEX
) -> dict[str, Tensor]:
    """Additive statistics of one batch (float64 / int64, on the prediction's device)."""
    with torch.no_grad():
        prediction, target = _aligned(name, kind, prediction.detach(), target, channels)
        if kind == "segmentation":
            labels = target.long()
            valid = labels != ignore_index
            in_range = (labels >= 0) & (labels < channels)
            keep = valid & in_range
            guess = prediction.argmax(dim=1)
            flat = labels[keep] * channels + guess[keep]
            confusion = torch.bincount(flat, minlength=channels * channels).view(channels, channels)
            return {"confusion": confusion.long(), "out_of_range": (valid & ~in_range).sum().long()}
        if kind == "normals":
            goal = target.double()
            valid = torch.isfinite(goal).all(dim=1) & (torch.nan_to_num(goal).abs().sum(dim=1) > 0)
            cos = (F.normalize(prediction.double(), dim=1) * F.normalize(torch.nan_to_num(goal), dim=1)).sum(dim=1)
            cos = cos.clamp(-1.0, 1.0)[valid]
            angle = torch.rad2deg(torch.acos(cos))
            stats = {"n": valid.sum().double(), "angle": angle.sum(), "cosine": cos.sum()}
            for key, limit in ANGLE_THRESHOLDS:
                stats[key] = (angle <= limit).sum().double()
            return stats
        goal = target.double()
        valid = torch.isfinite(goal)
        diff = (prediction.double() - torch.nan_to_num(goal))[valid]
        return {"n": valid.sum().double(), "abs": diff.abs().sum(), "sq": diff.square().sum()}


def add_stats(total: dict[str, Tensor] | None, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``total + batch``, key by key (``total`` None starts a sum)."""
    if total is None:
        return {k: v.clone() for k, v in batch.items()}
    for key, value in batch.items():
        total[key] += value
    return total


def finish(name: str, kind: str, stats: Mapping[str, Tensor]) -> dict[str, float]:
    """The metrics of summed statistics; NaN where a split has no valid pixel."""
    if kind == "segmentation":
        if int(stats["out_of_range"]) > 0:
            raise ValueError(
                f"task {name!r} (segmentation): {int(stats['out_of_range'])} target pixels hold a class id "
                "outside 0..n_outputs-1 that is not the ignore index; fix the labels or n_outputs"
            )
        confusion = stats["confusion"].double().cpu()
        tp = confusion.diag()
        union = confusion.sum(dim=0) + confusion.sum(dim=1) - tp
        present = union > 0
        total = confusion.sum()
        return {
            "miou": float((tp[present] / union[present]).mean()) if bool(present.any()) else float("nan"),
            "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        }
    n = float(stats["n"])
    if kind == "normals":
        if n == 0:
            return {"mean_angle": float("nan"), "cosine": float("nan"), **{k: float("nan") for k, _ in ANGLE_THRESHOLDS}}
        out = {"mean_angle": float(stats["angle"]) / n, "cosine": float(stats["cosine"]) / n}
        out.update({key: 100.0 * float(stats[key]) / n for key, _ in ANGLE_THRESHOLDS})
        return out
    if n == 0:
        return {"abs_err": float("nan"), "rmse": float("nan")}
    return {"abs_err": float(stats["abs"]) / n, "rmse": math.sqrt(float(stats["sq"]) / n)}
