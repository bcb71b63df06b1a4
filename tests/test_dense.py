"""Dense tasks: losses and metrics by hand, streamed = all at once, conventions, backbone, every method end to end."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from _dense import constant_predictions
from sklearn.metrics import confusion_matrix

from branchbench.context import LocalContext
from branchbench.core import dense
from branchbench.core.backbones import dense_backbone
from branchbench.core.budget import Budget
from branchbench.core.metrics import StreamingScores, delta_m, measure_latency, score_predictions
from branchbench.core.net import BranchedNet
from branchbench.core.plan import Plan
from branchbench.core.retrain import retrain, seed_everything
from branchbench.core.tasks import TaskSpec
from branchbench.core.trainer import Trainer
from branchbench.datasets.fixtures import dense_benchmark
from branchbench.plugins import get_method_class, list_methods
from branchbench.reports.tables import main_metrics

NAN = float("nan")
SEG = TaskSpec("seg", "segmentation", n_outputs=3)
NORMAL = TaskSpec("normal", "normals")
DEPTH = TaskSpec("depth", "depth")


def _logits(labels: list[list[int]], n_classes: int = 3) -> torch.Tensor:
    """(1, K, H, W) logits whose argmax is ``labels``."""
    return F.one_hot(torch.tensor([labels]), n_classes).permute(0, 3, 1, 2).float()


# ------------------------------------------------------------- metrics by hand
def test_miou_and_pixel_accuracy_skip_ignored_pixels():
    target = torch.tensor([[[0, 0, 1], [1, 2, 255]]], dtype=torch.uint8)
    prediction = _logits([[0, 1, 1], [1, 1, 2]])  # the last pixel is ignored whatever it predicts
    # valid pixels (truth, guess): (0,0) (0,1) (1,1) (1,1) (2,1)
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 2, FN 0 -> 2/4; class 2: TP 0, FN 1 -> 0
    scores = SEG.score(prediction, target)
    assert scores["miou"] == pytest.approx((1 / 2 + 2 / 4 + 0) / 3)
    assert scores["pixel_acc"] == pytest.approx(3 / 5)


def test_miou_averages_only_classes_that_occur():
    target = torch.tensor([[[0, 0], [1, 255]]], dtype=torch.uint8)
    prediction = _logits([[0, 0], [1, 2]])  # class 2 never occurs in a valid pixel
    assert SEG.score(prediction, target) == {"miou": pytest.approx(1.0), "pixel_acc": pytest.approx(1.0)}


def test_mean_angular_error_and_thresholds_skip_invalid_pixels():
    up = [0.0, 0.0, 1.0]
    target = torch.tensor([up, up, up, [NAN, NAN, NAN]]).T.reshape(1, 3, 2, 2)
    prediction = torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]).T.reshape(1, 3, 2, 2)
    scores = NORMAL.score(prediction, target)  # angles 0, 45, 90 degrees; the NaN pixel is left out
    assert scores["mean_angle"] == pytest.approx((0 + 45 + 90) / 3)
    assert scores["cosine"] == pytest.approx((1 + math.sqrt(0.5) + 0) / 3)
    assert scores["within_11_25"] == pytest.approx(100 / 3)
    assert scores["within_22_5"] == pytest.approx(100 / 3)
    assert scores["within_30"] == pytest.approx(100 / 3)


def test_masked_depth_errors():
    target = torch.tensor([[[0.5, NAN], [0.25, 1.0]]])
    prediction = torch.tensor([[[[0.75, 9.0], [0.25, 0.5]]]])  # errors 0.25, (masked), 0, 0.5
    scores = DEPTH.score(prediction, target)
    assert scores["abs_err"] == pytest.approx(0.75 / 3)
    assert scores["rmse"] == pytest.approx(math.sqrt((0.0625 + 0 + 0.25) / 3))
    assert DEPTH.score(prediction, target.unsqueeze(1)) == scores  # (B, 1, H, W) targets too


def test_losses_by_hand():
    seg_target = torch.tensor([[[0, 255], [2, 1]]], dtype=torch.uint8)
    uniform = torch.zeros(1, 3, 2, 2)
    assert SEG.loss(uniform, seg_target) == pytest.approx(math.log(3))
    weighted = dataclasses.replace(SEG, class_weights=(1.0, 2.0, 3.0))
    logits = torch.randn(1, 3, 2, 2)
    expected = F.cross_entropy(logits, seg_target.long(), weight=torch.tensor([1.0, 2.0, 3.0]), ignore_index=255)
    assert weighted.loss(logits, seg_target) == pytest.approx(float(expected))

    up = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2).clone()
    up[0, :, 0, 1] = NAN
    tilted = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    assert NORMAL.loss(tilted, up) == pytest.approx(1 - math.sqrt(0.5))
    l1_normal = TaskSpec("normal", "normals", criterion="l1")
    assert l1_normal.loss(tilted, up) == pytest.approx(1 / 3)  # |1-0| + 0 + 0 over 3 channels of 1 pixel

    depth_target = torch.tensor([[[0.5, NAN]]])
    assert DEPTH.loss(torch.tensor([[[[0.0, 5.0]]]]), depth_target) == pytest.approx(0.5)


@pytest.mark.parametrize("task", [SEG, NORMAL, DEPTH, TaskSpec("k", "keypoints"), TaskSpec("e", "edges")])
def test_a_batch_without_valid_pixels_has_zero_loss_and_gradient(task):
    prediction = torch.randn(2, task.n_outputs, 3, 3, requires_grad=True)
    if task.kind == "segmentation":
        target = torch.full((2, 3, 3), 255, dtype=torch.uint8)
    else:
        target = torch.full((2, 3, 3, 3) if task.kind == "normals" else (2, 3, 3), NAN)
    loss = task.loss(prediction, target)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.equal(prediction.grad, torch.zeros_like(prediction))


def test_low_resolution_predictions_are_upsampled_to_the_target():
    target = torch.rand(2, 8, 8)
    prediction = torch.rand(2, 1, 4, 4)
    up = F.interpolate(prediction, size=(8, 8), mode="bilinear", align_corners=False)
    assert DEPTH.score(prediction, target) == DEPTH.score(up, target)
    assert float(DEPTH.loss(prediction, target)) == pytest.approx(float(DEPTH.loss(up, target)))


def test_bad_shapes_and_labels_name_the_task():
    with pytest.raises(ValueError, match="task 'normal'.*expected \\(batch, 3"):
        NORMAL.loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 3, 2, 2))
    with pytest.raises(ValueError, match="task 'depth'.*target has shape"):
        DEPTH.loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="task 'seg'.*outside 0..n_outputs-1"):
        SEG.score(torch.zeros(1, 3, 1, 2), torch.tensor([[[1, 7]]]))


def test_taskspec_checks_dense_options():
    assert NORMAL.n_outputs == 3 and NORMAL.criterion == "cosine" and NORMAL.dense
    assert DEPTH.n_outputs == 1 and not TaskSpec("b", "binary").dense
    with pytest.raises(ValueError, match="needs n_outputs"):
        TaskSpec("s", "segmentation")
    with pytest.raises(ValueError, match="normals task has n_outputs=3"):
        TaskSpec("n", "normals", n_outputs=2)
    with pytest.raises(ValueError, match="criterion 'mse'"):
        TaskSpec("n", "normals", criterion="mse")
    with pytest.raises(ValueError, match="give 3 non-negative class_weights"):
        TaskSpec("s", "segmentation", n_outputs=3, class_weights=(1.0, 2.0))
    with pytest.raises(ValueError, match="fixed loss"):
        TaskSpec("b", "binary", criterion="l1")


# ---------------------------------------------------- streamed = all at once
def _random_dense(n: int = 7, size: int = 5, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    seg = torch.randint(0, 4, (n, size, size), generator=gen).to(torch.uint8)
    seg[torch.rand(n, size, size, generator=gen) < 0.2] = 255
    normal = F.normalize(torch.randn(n, 3, size, size, generator=gen), dim=1)
    normal[:, :, torch.rand(size, size, generator=gen) < 0.2] = NAN
    depth = torch.rand(n, size, size, generator=gen)
    depth[torch.rand(n, size, size, generator=gen) < 0.3] = NAN
    targets = {"seg": seg, "normal": normal, "depth": depth}
    predictions = {
        "seg": torch.randn(n, 4, size, size, generator=gen),
        "normal": torch.randn(n, 3, size, size, generator=gen),
        "depth": torch.rand(n, 1, size, size, generator=gen),
    }
    tasks = [TaskSpec("seg", "segmentation", n_outputs=4), NORMAL, DEPTH]
    return tasks, predictions, targets


def _reference(predictions, targets) -> dict[str, float]:
    """The metrics of whole arrays, written independently with numpy and scikit-learn."""
    y = targets["seg"].numpy().ravel().astype(int)
    guess = predictions["seg"].argmax(1).numpy().ravel()
    keep = y != 255
    matrix = confusion_matrix(y[keep], guess[keep], labels=range(4)).astype(float)
    tp = np.diag(matrix)
    union = matrix.sum(0) + matrix.sum(1) - tp
    out = {"seg.miou": float(np.mean(tp[union > 0] / union[union > 0])), "seg.pixel_acc": float(tp.sum() / keep.sum())}
    gt = targets["normal"].double().numpy().transpose(0, 2, 3, 1).reshape(-1, 3)
    pr = predictions["normal"].double().numpy().transpose(0, 2, 3, 1).reshape(-1, 3)
    ok = np.isfinite(gt).all(1)
    cos = np.sum(gt[ok] / np.linalg.norm(gt[ok], axis=1, keepdims=True)
                 * pr[ok] / np.linalg.norm(pr[ok], axis=1, keepdims=True), axis=1).clip(-1, 1)
    angle = np.degrees(np.arccos(cos))
    out.update({"normal.mean_angle": angle.mean(), "normal.cosine": cos.mean(),
                "normal.within_11_25": 100 * np.mean(angle <= 11.25), "normal.within_22_5": 100 * np.mean(angle <= 22.5),
                "normal.within_30": 100 * np.mean(angle <= 30)})
    d = targets["depth"].double().numpy().ravel()
    p = predictions["depth"].double().numpy().ravel()
    err = (p - d)[np.isfinite(d)]
    out.update({"depth.abs_err": np.abs(err).mean(), "depth.rmse": np.sqrt(np.mean(err**2))})
    return out


def test_streamed_metrics_equal_the_all_at_once_ones():
    tasks, predictions, targets = _random_dense()
    streamed = StreamingScores(tasks)
    for lo, hi in ((0, 3), (3, 4), (4, 7)):  # uneven batches
        streamed.update({t: v[lo:hi] for t, v in predictions.items()}, {t: v[lo:hi] for t, v in targets.items()})
    result = streamed.compute()
    reference = _reference(predictions, targets)
    assert list(result) == list(reference)
    for key, value in reference.items():
        assert result[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    assert score_predictions(tasks, predictions, targets) == pytest.approx(result, rel=1e-12)


def test_streamed_per_sample_metrics_are_the_old_ones_exactly(bench):
    preds = {t: torch.randn(len(bench.splits["val"]), 1) for t in bench.task_names}
    y = bench.splits["val"].y
    streamed = StreamingScores(bench.tasks)
    for lo in range(0, len(preds["t0"]), 50):
        streamed.update({t: v[lo : lo + 50] for t, v in preds.items()}, {t: v[lo : lo + 50] for t, v in y.items()})
    assert streamed.compute() == score_predictions(bench.tasks, preds, y)


def test_trainer_evaluate_streams_what_predict_would_score():
    bench = dense_benchmark(n_train=32, n_val=20, n_test=8, epochs=1, batch_size=8)
    trainer = Trainer(bench.protocol)
    seed_everything(0)
    net = BranchedNet(Plan.shared_bottom(bench.task_names, bench.backbone.block_names), bench.backbone, bench.tasks)
    split = bench.splits["val"]
    streamed = trainer.evaluate(net, bench, split)  # 3 batches of at most 8
    whole = score_predictions(bench.tasks, trainer.predict(net, bench, split), split.y)
    assert streamed == pytest.approx(whole, rel=1e-9)
    assert all(math.isfinite(v) for v in streamed.values())


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_dense_training_and_evaluation_under_bf16_autocast(amp):
    bench = dense_benchmark(n_train=32, n_val=16, n_test=8, epochs=1, batch_size=16)
    trainer = Trainer(bench.protocol.replace(amp=amp))
    result = retrain(bench, Plan.shared_bottom(bench.task_names, bench.backbone.block_names), trainer, seed=0)
    assert math.isfinite(result.fit.best_val_loss)
    assert all(math.isfinite(v) for v in result.metrics.values())


# ---------------------------------------------------------------- conventions
def test_taskonomy_conventions_on_raw_values():
    raw_depth = np.array([[0, 511, 64499, 64500, 65535]], dtype=np.uint16)
    depth = dense.taskonomy_depth(raw_depth)
    assert depth[0, :3].tolist() == pytest.approx([0.0, math.log(512) / math.log(2**16), math.log(64500) / math.log(2**16)])
    assert torch.isnan(depth[0, 3:]).all()

    seg = dense.taskonomy_segmentation(np.array([[0, 1, 17]], dtype=np.uint8))
    assert seg.tolist() == [[255, 0, 16]] and seg.dtype == torch.uint8
    with pytest.raises(ValueError, match="labels are 0..17"):
        dense.taskonomy_segmentation(np.array([[18]], dtype=np.uint8))

    raw_normals = np.array([0, 255, 128], dtype=np.uint8).reshape(3, 1, 1).repeat(2, axis=2)
    normals = dense.taskonomy_normals(raw_normals, valid=dense.taskonomy_depth_valid(np.array([[10, 65535]])))
    assert normals[:, 0, 0].tolist() == pytest.approx([-1.0, 1.0, 128 / 255 * 2 - 1], abs=1e-6)
    assert torch.isnan(normals[:, 0, 1]).all()

    # keypoints2d: raw / 2^16 clipped to [0, 0.005] (raw 327.68) -> [-1, 1]; edge_texture: to [0, 0.08] (raw 5242.88)
    raw = np.array([0, 131, 328, 2621, 5243, 65535], dtype=np.uint16)
    assert dense.taskonomy_keypoints(raw).tolist() == pytest.approx([-1.0, 131 / 163.84 - 1, 1.0, 1.0, 1.0, 1.0])
    assert dense.taskonomy_edges(raw).tolist() == pytest.approx(
        [-1.0, 131 / 2621.44 - 1, 328 / 2621.44 - 1, 2621 / 2621.44 - 1, 1.0, 1.0])


# ------------------------------------------------------------------- backbone
def test_dense_backbone_heads_costs_and_latency():
    backbone = dense_backbone(3, 16, channels=(8, 16, 16), strides=(1, 2, 1), repeats=2, decoder_width=8)
    assert backbone.block_names == ["conv0", "res1", "res2", "res3", "res4"]
    assert backbone.blocks[-1].out_shape == (16, 8, 8)
    tasks = [TaskSpec("s", "segmentation", n_outputs=5), NORMAL, DEPTH, TaskSpec("c", "binary")]
    names = [t.name for t in tasks]
    shared = Plan.shared_bottom(names, backbone.block_names)
    independent = Plan.independent(names, backbone.block_names)
    net = BranchedNet(independent, backbone, tasks)
    x = torch.randn(2, 3, 16, 16)
    out = net(x)
    assert {t: tuple(v.shape) for t, v in out.items()} == {
        "s": (2, 5, 16, 16), "normal": (2, 3, 16, 16), "depth": (2, 1, 16, 16), "c": (2, 1)}
    assert independent.param_count(backbone, heads=tasks) == net.param_count()
    decoder_flops = backbone.head_flops(tasks[0])
    assert decoder_flops >= 2 * 8 * 8 * 16 * 8 * 9  # at least the 3x3 conv at 8x8
    assert shared.flops(backbone, heads=tasks) - shared.flops(backbone) == sum(backbone.head_flops(t) for t in tasks)
    assert independent.flops(backbone) == 4 * shared.flops(backbone)
    assert measure_latency(net, x, repeats=2, warmup=1) > 0


def test_reports_and_delta_m_read_dense_main_metrics():
    tasks = [SEG, NORMAL, DEPTH]
    frame = pd.DataFrame({
        "metrics.test.seg.miou": [0.5], "metrics.test.seg.pixel_acc": [0.8],
        "metrics.test.normal.mean_angle": [20.0], "metrics.test.normal.within_11_25": [30.0],
        "metrics.test.depth.abs_err": [0.1], "metrics.test.depth.rmse": [0.2],
    })
    assert main_metrics(frame) == {
        "depth": ("metrics.test.depth.abs_err", False),
        "normal": ("metrics.test.normal.mean_angle", False),
        "seg": ("metrics.test.seg.miou", True),
    }
    ours = {"seg.miou": 0.55, "normal.mean_angle": 18.0, "depth.abs_err": 0.11}
    reference = {"seg.miou": 0.5, "normal.mean_angle": 20.0, "depth.abs_err": 0.1}
    assert delta_m(tasks, ours, reference) == pytest.approx(100 * (0.1 + 0.1 - 0.1) / 3)


# ------------------------------------------------------------ end to end
@pytest.mark.parametrize("name", [m for m in list_methods() if not {"given_plan", "control"} & get_method_class(m).tags])
def test_every_method_searches_and_retrains_on_dense_tasks(name):
    """Search (as the cell does: seeded, in a LocalContext), retrain the plan, score it and cost it."""
    bench = dense_benchmark(n_train=64, n_val=32, n_test=16, epochs=2, batch_size=32)
    cls = get_method_class(name)
    method = cls(**getattr(cls, "check_options", {}))
    seed_everything(0)
    result = method.search(bench, Budget(2.0 if cls.budget_aware else None), LocalContext(bench, seed=0))
    result.plan.check_fits(bench.task_names, len(bench.backbone.blocks))
    retrained = retrain(bench, result.plan, Trainer(bench.protocol), seed=0)
    for split in ("val", "test"):
        for task in bench.tasks:
            for metric in task.metrics:
                assert math.isfinite(retrained.metrics[f"{split}.{task.name}.{metric.name}"])
    assert result.plan.param_count(bench.backbone, heads=bench.tasks) == retrained.net.param_count()
    assert result.plan.flops(bench.backbone, heads=bench.tasks) > result.plan.flops(bench.backbone) > 0
    assert measure_latency(retrained.net, bench.prepare(bench.splits["test"].x[:1]), repeats=1, warmup=0) > 0


def test_trained_shared_bottom_beats_constant_predictors_on_val():
    bench = dense_benchmark(n_train=192, batch_size=16, epochs=16)
    plan = Plan.shared_bottom(bench.task_names, bench.backbone.block_names)
    trained = retrain(bench, plan, Trainer(bench.protocol), seed=0).metrics
    val = bench.splits["val"]
    for task, candidates in constant_predictions(bench, len(val)).items():
        spec = bench.task(task)
        main = spec.main_metric
        scores = [spec.score(c, val.y[task])[main.name] for c in candidates]
        best = max(scores) if main.higher_is_better else min(scores)
        ours = trained[f"val.{task}.{main.name}"]
        assert (ours > best) if main.higher_is_better else (ours < best), (task, main.name, ours, best)
