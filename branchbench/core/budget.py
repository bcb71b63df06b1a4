"""Parameter budgets: the largest allowed backbone size relative to shared-bottom's.

A budget of 1.0 admits only shared-bottom; T (the number of tasks) admits
independent networks. Heads are excluded. For a budget-aware method the
budget is a hard cap; methods that are not budget-aware ignore it and say so.
"""

from __future__ import annotations

from dataclasses import dataclass

from branchbench.core.backbones import Backbone
from branchbench.core.plan import Plan


class BudgetError(ValueError):
    """A budget that is invalid, or that no plan of a method can meet."""


@dataclass(frozen=True)
class Budget:
    """``ratio`` = max backbone params / shared-bottom's backbone params (None = no cap)."""

    ratio: float | None = None

    def __post_init__(self) -> None:
        if self.ratio is not None and not self.ratio >= 1.0:
            raise BudgetError(
                f"budget {self.ratio!r} is below 1.0; a budget is a ratio to shared-bottom's "
                "backbone parameters, from 1.0 (shared-bottom) to T (independent)"
            )

    @property
    def capped(self) -> bool:
        return self.ratio is not None

    def cap(self, backbone: Backbone) -> float:
        """Largest allowed backbone parameter count (inf when uncapped)."""
        if self.ratio is None:
            return float("inf")
        # a hair of slack so a plan exactly at the ratio is not refused by rounding
        return self.ratio * backbone.shared_bottom_params * (1 + 1e-9)

    def allows(self, plan: Plan, backbone: Backbone) -> bool:
        return plan.param_count(backbone) <= self.cap(backbone)

    def check(self, plan: Plan, backbone: Backbone, method: str) -> None:
        if not self.allows(plan, backbone):
            raise BudgetError(
                f"method {method!r} returned a plan of {plan.budget_ratio(backbone):.3f}x "
                f"shared-bottom's parameters, over the budget {self.ratio}x"
            )

    def __str__(self) -> str:
        return "none" if self.ratio is None else f"{self.ratio:g}"
