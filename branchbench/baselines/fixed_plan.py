"""fixed_plan: retrain a plan the user brings (``branchbench run --plan plan.json``).

The plan's JSON text is the method's one option, so it is part of the cell's
identity (another plan is another cell) and the method reads no file: the CLI
reads ``plan.json`` and hands its text over. The plan is checked while the cell
is resolved (valid JSON, a valid Plan, exactly the dataset's tasks); its block
count is checked against the backbone when the cell runs.
"""

from __future__ import annotations

import json

from branchbench.core.method import Method, Option, OptionError, SearchResult
from branchbench.core.plan import Plan, PlanError


class FixedPlan(Method):
    """Retrains a given plan (a plan.json's text) through the same cell function as every method."""

    name = "fixed_plan"
    budget_aware = False
    tags = frozenset({"given_plan"})
    options = {"plan": Option("", "the plan as JSON text (the format of plan.json); `run --plan FILE` fills it")}

    # the conformance kit's benchmark: 4 tasks over 3 blocks, two groups branching at the last block
    check_options = {"plan": json.dumps({"tasks": ["t0", "t1", "t2", "t3"], "blocks": ["fc0", "fc1", "fc2"],
                                         "nodes": {"t0": [0, 0, 0], "t1": [0, 0, 0], "t2": [0, 0, 1],
                                                   "t3": [0, 0, 1]}})}

    def check(self) -> None:
        self.plan()

    def plan(self) -> Plan:
        text = self.params["plan"]
        if not text.strip():
            raise OptionError(f"{self.owner}: option plan is required: give a plan.json with "
                              "`branchbench run --plan FILE`")
        try:
            return Plan.from_dict(json.loads(text))
        except (ValueError, TypeError, KeyError, PlanError) as err:
            raise OptionError(f"{self.owner}: the plan is not a valid plan.json ({err}); see the Plan format "
                              "in README.md") from None

    def check_cell(self, protocol, task_names: list[str]) -> None:
        plan = self.plan()
        if sorted(plan.tasks) != sorted(task_names):
            raise OptionError(f"{self.owner}: the plan's tasks {list(plan.tasks)} differ from the dataset's "
                              f"{task_names}; give a plan over exactly these tasks")

    def search(self, bench, budget, ctx) -> SearchResult:
        return SearchResult(self.plan())
