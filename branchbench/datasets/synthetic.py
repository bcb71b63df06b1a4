"""Synthetic multi-task regression with a known task grouping.

In the spirit of the MMoE synthetic recipe (Ma et al., KDD 2018), with tasks
generated in controlled groups:

* inputs ``x ~ N(0, I_d)`` (``d = input_dim``);
* one unit direction ``u_g`` per group. Groups' directions are orthogonal at
  ``conflict=0``; ``conflict`` in ``(0, 1]`` makes them pairwise
  anti-correlated, ``cos(u_g, u_h) = -conflict / (G - 1)`` (at 1 they form a
  regular simplex, as far apart as ``G`` directions can be);
* hierarchical data (``supergroups = S > 1``): groups of groups. Each
  supergroup ``s`` has a direction ``U_s`` (orthogonal, or anti-correlated by
  ``conflict`` as above) and a group of it takes
  ``u_g = sqrt(r) U_s + sqrt(1 - r) e_g`` with ``e_g`` orthonormal, so groups
  of one supergroup correlate by ``r = supergroup_corr``;
* per task ``i`` of group ``g``: ``w_i = c u_g + sqrt(1 - c^2) v_i``, with
  ``v_i`` a random unit vector orthogonal to ``u_g`` and ``c = within_corr``;
* targets ``y_i = w_i^T x + sum_k sin(alpha_k w_i^T x + beta_k) + noise``,
  ``alpha_k ~ U(-frequency, frequency)`` and ``beta_k ~ U(0, 2 pi)`` (shifted
  by pi where that sine's linear part would cancel the linear term) shared by
  the whole dataset (``k < n_sines``), the noise Gaussian with a standard
  deviation of ``noise`` times that of the task's noiseless target;
* every target standardised with the train split's mean and std.

Task names ``t0 .. t{T-1}`` are a seeded permutation of the groups' tasks, so a
task's index says nothing of its group; ``Benchmark.groups`` holds the truth
(task -> group id) and :meth:`Synthetic.hierarchy` the supergroups as well.
Everything derives from ``data_seed`` through independent numpy streams, so
one seed gives identical tensors and another seed different ones.

Why these defaults (version 2: 9 tasks in 3 groups, ``input_dim=64``, width
8, depth 4, ``n_train=500``, ``within_corr=0.99``, ``noise=0.75``,
``frequency=4``; protocol Adam at 2e-2 with cosine decay, 60 epochs, early
stopping after 10): the default cell is one where *where to branch matters*
for networks that are trained well. Each group's target is a wiggly ridge
function (ten sines of frequency up to 4) along its own direction in 64
dimensions; a trunk 8 wide shared by all three groups is a bottleneck, while
the tasks of a group are near copies (cosine of their ``w`` about 0.98) seen
through heavy noise (noise std 0.75 of the signal's) on only 500 samples, so
pooling a group's tasks beats one network per task. The sign rule on the
sines (below, in ``generate``) keeps every task's linear part, so no data seed
draws a function whose direction cannot be found from the data.

How they were chosen (the seed rule, ``branchbench/seeds.py``): on
development data seeds 1000-1002, training seed 0, by validation loss only
(mean over tasks of the validation MSE of the standardised targets), in two
steps (tables in ``scripts/results/``):

1. *The protocol* (``scripts/synthetic_protocol_study.py``): candidates vary
   Adam's learning rate and the epochs; criterion the mean validation loss of
   shared-bottom and the independent networks (plans that use no knowledge of
   the groups). Version 1's protocol (Adam 1e-3) was badly under-trained: on
   version 1's data (input_dim 32, width 16, n_train 1000) its criterion was
   0.723 against 0.499 at 2e-2 and 0.492 at 5e-2 (1e-1: 0.722, shared-bottom
   diverging); doubling the epochs at 1e-3 gave 0.694 (5 of 6 runs then
   stopped before the cap, against 3 of 6 at 60 epochs: more epochs helped
   little; the rate was short).
2. *The data* (``scripts/synthetic_defaults_study.py``, at Adam 2e-2, the
   lower of the two best rates, 5e-2 lying next to the rate where
   shared-bottom diverged). Criterion: grouping matters, i.e. the oracle tree
   (block 0 shared, then one branch per true group) has a validation loss
   below both shared-bottom's and the independent networks' by at least 0.02
   on every development data seed; among the points that meet it, the
   largest smallest margin. Version 1's defaults failed it once trained well
   (margins -0.018, +0.018, -0.004: the oracle tree no more than ties the
   independent networks; its advantage at Adam 1e-3 came from the
   under-training). Of 11 points (one knob at a time: noise, ``n_train``,
   ``conflict``, width; then a narrow trunk combined with less data per
   direction) three met it; ``width 8, input_dim 64, n_train 500`` had the
   largest smallest margin (+0.043; validation loss, shared-bottom /
   independent / oracle: 0.804 / 0.758 / 0.680, 0.835 / 0.748 / 0.705,
   0.877 / 0.913 / 0.760).
3. The protocol study rerun on these data selected Adam 2e-2 again (criterion
   0.822; 1e-2: 0.887, 5e-2: 0.845; 1e-3: 1.006), best validation epochs 15-30
   of 60, none at the cap.

The oracle tree is used only as the probe of step 2, a property of the data,
never to choose a method's default; test metrics chose nothing. An earlier
plain-torch prototype had measured *test* MSE on data seeds 0-7 (evaluation
seeds); those numbers chose nothing and are not quoted. One default cell of
shared-bottom trains in about a second on one CPU thread.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from branchbench.core.backbones import MLP_NORMS, mlp_backbone
from branchbench.core.benchmark import Benchmark, Split, TrainingProtocol
from branchbench.core.options import Option, OptionError
from branchbench.core.tasks import TaskSpec
from branchbench.datasets.base import Dataset


def _equicorrelated(n: int, rho: float) -> np.ndarray:
    """Coordinates (n x n) of n unit vectors with pairwise cosine ``rho``.

    ``rho`` must lie in ``[-1/(n-1), 1]``; at the lower end the vectors span
    only n-1 dimensions (a regular simplex).
    """
    gram = np.full((n, n), rho) + (1.0 - rho) * np.eye(n)
    eigval, eigvec = np.linalg.eigh(gram)
    coords = eigvec * np.sqrt(np.clip(eigval, 0.0, None))
    return coords / np.linalg.norm(coords, axis=1, keepdims=True)


def _random_orthonormal(d: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A d x k matrix with orthonormal columns, uniformly random."""
    q, r = np.linalg.qr(rng.standard_normal((d, k)))
    return q * np.sign(np.diag(r))


class Synthetic(Dataset):
    """Grouped synthetic regression tasks (see the module docstring)."""

    name: ClassVar[str] = "synthetic"
    version: ClassVar[int] = 2  # v2: input_dim 64, width 8, n_train 500, protocol lr 2e-2 (the module docstring)
    has_groups: ClassVar[bool] = True
    options: ClassVar[dict[str, Option]] = {
        "tasks": Option(9, "number of tasks (a multiple of groups)", low=1, high=1024),
        "groups": Option(3, "number of true task groups", low=1, high=256),
        "input_dim": Option(64, "input dimension d (at least groups + supergroups)", low=1, high=4096),
        "within_corr": Option(0.99, "c: weight of the group direction in each task's w", low=0.0, high=1.0),
        "conflict": Option(
            0.0, "0 = orthogonal group directions, 1 = maximally anti-correlated", low=0.0, high=1.0
        ),
        "noise": Option(0.75, "noise std relative to the noiseless target's std", low=0.0, high=100.0),
        "supergroups": Option(1, "1 = flat; S > 1 = groups of groups (groups divisible by S)", low=1, high=256),
        "supergroup_corr": Option(
            0.5, "cosine of two group directions of one supergroup (supergroups > 1)", low=0.0, high=1.0
        ),
        "n_sines": Option(10, "number of sine terms in each target (MMoE uses 10)", low=0, high=100),
        "frequency": Option(4.0, "sine frequencies alpha_k are drawn from U(-frequency, frequency)", low=0.0, high=100.0),
        "n_train": Option(500, "training samples", low=2, high=10_000_000),
        "n_val": Option(1000, "validation samples (early stopping, selection)", low=1, high=10_000_000),
        "n_test": Option(5000, "test samples", low=1, high=10_000_000),
        "data_seed": Option(0, "seed of everything about the data", low=0),
        "width": Option(8, "width of each block of the default MLP backbone", low=1, high=65536),
        "depth": Option(4, "number of blocks of the default MLP backbone", low=1, high=64),
        "norm": Option("layernorm", "normalisation in each block of the default MLP backbone", choices=MLP_NORMS),
    }

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._validate()

    def _validate(self) -> None:
        p = self.params
        owner = f"dataset {self.name!r}"
        if p["tasks"] % p["groups"]:
            raise OptionError(
                f"{owner}: tasks={p['tasks']} is not divisible by groups={p['groups']}; every "
                f"group has the same number of tasks, so choose tasks as a multiple of groups"
            )
        if p["groups"] % p["supergroups"]:
            raise OptionError(
                f"{owner}: groups={p['groups']} is not divisible by supergroups={p['supergroups']}; "
                f"every supergroup has the same number of groups"
            )
        needed = p["groups"] + (p["supergroups"] if p["supergroups"] > 1 else 0)
        if p["input_dim"] < needed:
            raise OptionError(
                f"{owner}: input_dim={p['input_dim']} is too small for {p['groups']} group "
                f"direction(s){' and ' + str(p['supergroups']) + ' supergroup direction(s)' if p['supergroups'] > 1 else ''}; "
                f"use input_dim >= {needed}"
            )

    def identity(self) -> dict[str, Any]:
        """Every option, less ``norm`` at its default: it came after results existed, and at
        ``layernorm`` the backbone is the one they used, so their cells keep their identity."""
        params = self.get_params()
        if params["norm"] == self.options["norm"].default:
            del params["norm"]
        return params

    # ------------------------------------------------------------------ truth
    def _streams(self) -> list[np.random.Generator]:
        seq = np.random.SeedSequence([int(self.params["data_seed"]), 0x5EED])
        return [np.random.default_rng(s) for s in seq.spawn(4)]

    def _task_groups(self, rng: np.random.Generator) -> np.ndarray:
        """Group id of each task index, a seeded permutation of equal-size blocks."""
        tasks, groups = self.params["tasks"], self.params["groups"]
        return np.repeat(np.arange(groups), tasks // groups)[rng.permutation(tasks)]

    def hierarchy(self) -> dict[str, tuple[int, int]]:
        """task name -> (supergroup id, group id); cheap (generates no data)."""
        group_of = self._task_groups(self._streams()[0])
        per_super = self.params["groups"] // self.params["supergroups"]
        return {f"t{i}": (int(g) // per_super, int(g)) for i, g in enumerate(group_of)}

    def _task_weights(self, group_of: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Unit weight vectors w_i (tasks x d)."""
        p = self.params
        d, groups, supers = p["input_dim"], p["groups"], p["supergroups"]
        c, conflict = p["within_corr"], p["conflict"]
        if supers == 1:
            rho = -conflict / (groups - 1) if groups > 1 else 0.0
            coords = _equicorrelated(groups, rho)  # groups x groups
        else:
            rho = -conflict / (supers - 1)
            r = p["supergroup_corr"]
            sup = _equicorrelated(supers, rho)  # supers x supers
            per_super = groups // supers
            coords = np.zeros((groups, supers + groups))
            for g in range(groups):
                coords[g, :supers] = np.sqrt(r) * sup[g // per_super]
                coords[g, supers + g] = np.sqrt(1.0 - r)
        basis = _random_orthonormal(d, coords.shape[1], rng)
        u = coords @ basis.T  # groups x d, unit rows
        ug = u[group_of]  # tasks x d
        v = rng.standard_normal((len(group_of), d))
        v -= np.sum(v * ug, axis=1, keepdims=True) * ug
        norm = np.linalg.norm(v, axis=1, keepdims=True)
        v = np.divide(v, norm, out=np.zeros_like(v), where=norm > 1e-12)
        w = c * ug + np.sqrt(max(0.0, 1.0 - c * c)) * v
        return w / np.linalg.norm(w, axis=1, keepdims=True)

    # ------------------------------------------------------------------- load
    def protocol(self) -> TrainingProtocol:
        """Fast CPU training: a default cell of shared-bottom trains in seconds."""
        return TrainingProtocol(
            epochs=60,
            batch_size=128,
            optimizer="adam",
            lr=2e-2,
            lr_schedule="cosine",
            early_stopping=10,
            threads=1,
        )

    def generate(self) -> dict[str, Any]:
        """The raw arrays: x and standardised y per split, w, group ids, alpha, beta."""
        p = self.params
        perm_rng, dir_rng, fn_rng, data_rng = self._streams()
        group_of = self._task_groups(perm_rng)
        w = self._task_weights(group_of, dir_rng)
        alpha = fn_rng.uniform(-p["frequency"], p["frequency"], p["n_sines"])
        beta = fn_rng.uniform(0.0, 2.0 * np.pi, p["n_sines"])
        # E[z sin(a z + b)] = a cos(b) exp(-a^2 / 2) for z ~ N(0, 1): flip (b -> b + pi)
        # each sine whose linear part would cancel the linear term, so every task keeps
        # a clear linear component and its direction stays learnable from few samples.
        beta = np.where(alpha * np.cos(beta) < 0, beta + np.pi, beta)

        sizes = {"train": p["n_train"], "val": p["n_val"], "test": p["n_test"]}
        n = sum(sizes.values())
        x = data_rng.standard_normal((n, p["input_dim"]))
        z = x @ w.T  # n x tasks
        f = z.copy()
        for a, b in zip(alpha, beta, strict=True):
            f += np.sin(a * z + b)
        n_train = sizes["train"]
        signal_std = f[:n_train].std(axis=0)
        signal_std = np.where(signal_std > 0, signal_std, 1.0)
        y = f + data_rng.standard_normal(f.shape) * (p["noise"] * signal_std)
        mean = y[:n_train].mean(axis=0)
        std = y[:n_train].std(axis=0)
        y = (y - mean) / np.where(std > 0, std, 1.0)

        out: dict[str, Any] = {"w": w, "group_of": group_of, "alpha": alpha, "beta": beta}
        start = 0
        for split, size in sizes.items():
            out[split] = (
                x[start : start + size].astype(np.float32),
                y[start : start + size].astype(np.float32),
            )
            start += size
        return out

    def load(self) -> Benchmark:
        p = self.params
        raw = self.generate()
        names = [f"t{i}" for i in range(p["tasks"])]
        splits = {}
        for split in ("train", "val", "test"):
            x, y = raw[split]
            splits[split] = Split(
                torch.from_numpy(x),
                {name: torch.from_numpy(np.ascontiguousarray(y[:, i])) for i, name in enumerate(names)},
            )
        return Benchmark(
            name=self.name,
            tasks=[TaskSpec(name, "regression") for name in names],
            splits=splits,
            backbone=mlp_backbone(p["input_dim"], [p["width"]] * p["depth"], norm=p["norm"]),
            protocol=self.protocol(),
            groups={name: int(g) for name, g in zip(names, raw["group_of"], strict=True)},
            options=dict(p),
        )
