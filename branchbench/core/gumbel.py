"""Gumbel-softmax samples and temperature schedules, shared by the search methods.

Why a module of its own: Learn-to-Branch samples parents, AdaShare samples
select-or-skip and DMTG samples task-to-group assignments, all with the same
relaxation (Jang et al., 2017; Maddison et al., 2017). The noise is an explicit
argument so tests can fix it, and so "no noise" (``torch.zeros_like``) gives the
deterministic argmax architecture.

    >>> logits = torch.tensor([[0.0, 2.0, 1.0]])
    >>> hard = gumbel_softmax(logits, tau=1.0, noise=torch.zeros_like(logits), hard=True)
    >>> hard.tolist()
    [[0.0, 1.0, 0.0]]
    >>> round(TemperatureSchedule("exponential", start=5.0, end=0.05)(0.5), 6)  # geometric midpoint
    0.5

The API (``sample_gumbel``, ``gumbel_softmax``, ``TemperatureSchedule``) is stable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

SCHEDULES = ("constant", "exponential", "linear")


def sample_gumbel(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> Tensor:
    """Standard Gumbel noise ``-log(-log U)``, ``U ~ Uniform(0, 1)`` clamped away from 0 and 1."""
    u = torch.rand(shape, generator=generator, device=device)
    tiny = torch.finfo(u.dtype).tiny
    return -torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-7)))


def gumbel_softmax(
    logits: Tensor,
    tau: float,
    noise: Tensor | None = None,
    hard: bool = False,
    dim: int = -1,
) -> Tensor:
    """A relaxed one-hot sample ``softmax((logits + noise) / tau)`` along ``dim``.

    ``noise=None`` draws fresh Gumbel noise from torch's global generator; pass
    ``torch.zeros_like(logits)`` for the noiseless (argmax) sample. ``hard=True``
    returns the exact one-hot of the argmax in the forward pass with the soft
    sample's gradient (straight-through), so with equal noise the soft sample
    tends to the hard one as ``tau -> 0``.
    """
    if not tau > 0:
        raise ValueError(f"gumbel_softmax: temperature tau={tau!r} must be positive")
    if noise is None:
        noise = sample_gumbel(logits.shape, device=logits.device).to(logits.dtype)
    elif noise.shape != logits.shape:
        raise ValueError(f"gumbel_softmax: noise shape {tuple(noise.shape)} != logits shape {tuple(logits.shape)}")
    soft = torch.softmax((logits + noise) / tau, dim=dim)
    if not hard:
        return soft
    index = (logits + noise).argmax(dim=dim, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    return one_hot - soft.detach() + soft


@dataclass(frozen=True)
class TemperatureSchedule:
    """Temperature as a function of training progress in [0, 1].

    ``constant``: always ``start``; ``exponential``: ``start * (end/start)**p``
    (a fixed decay rate per step, the usual Gumbel annealing); ``linear``:
    ``start + (end - start) * p``.
    """

    kind: str = "exponential"
    start: float = 5.0
    end: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"temperature schedule {self.kind!r} is not one of {SCHEDULES}")
        if not (self.start > 0 and self.end > 0):
            raise ValueError(
                f"temperature schedule needs positive start and end, got start={self.start}, end={self.end}"
            )

    def __call__(self, progress: float) -> float:
        p = min(1.0, max(0.0, float(progress)))
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            return self.start + (self.end - self.start) * p
        return math.exp(math.log(self.start) + (math.log(self.end) - math.log(self.start)) * p)
