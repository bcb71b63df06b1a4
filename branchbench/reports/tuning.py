"""Tuning budgets in a report: how many Optuna trials chose each method's options, and the "tuned" label.

A cell whose method's options came from ``branchbench tune`` (through a
sweep's ``include``) carries the tag ``bb.tuning_trials``; a cell without it
ran its config's own options (untuned, 0 trials). A comparison is labelled
**tuned** only when every learned method in it (every method that is not a
baseline or control, :data:`~branchbench.reports.tables.NOT_LEARNED`) had the
same positive number of trials; otherwise the report says which budgets
differ, so a reader never mistakes defaults against tuned options for parity.
Pure: reads the runs frame only.
"""

from __future__ import annotations

import pandas as pd

from branchbench.reports.tables import NOT_LEARNED

TRIALS_TAG = "tags.bb.tuning_trials"
STUDY_TAG = "tags.bb.tuning_study"


def trials_by_method(runs: pd.DataFrame) -> dict[str, list[int]]:
    """method -> the distinct numbers of tuning trials of its runs (0: untuned), in report order."""
    if runs.empty or "method" not in runs:
        return {}
    column = runs[TRIALS_TAG] if TRIALS_TAG in runs else pd.Series(None, index=runs.index, dtype=object)
    trials = column.map(lambda v: int(v) if isinstance(v, str) and v.isdigit() else 0)
    out: dict[str, list[int]] = {}
    for method, value in zip(runs["method"], trials, strict=True):
        out.setdefault(method, [])
        if value not in out[method]:
            out[method].append(value)
    return {m: sorted(v) for m, v in out.items()}


def tuned_label(runs: pd.DataFrame) -> tuple[bool, str]:
    """Whether the comparison is "tuned" (every learned method had the same positive number of trials), and why."""
    learned = {m: t for m, t in trials_by_method(runs).items() if m not in NOT_LEARNED}
    if not learned:
        return False, "no learned method in this comparison, so nothing was tuned"
    budgets = {tuple(t) for t in learned.values()}
    shown = ", ".join(f"{m} {' | '.join(map(str, t))}" for m, t in learned.items())
    if len(budgets) == 1 and len(next(iter(budgets))) == 1 and next(iter(budgets))[0] > 0:
        return True, f"every learned method had {next(iter(budgets))[0]} tuning trials ({shown})"
    if budgets == {(0,)}:
        return False, f"no learned method was tuned: each ran with the config's own options ({shown} trials)"
    return False, f"the learned methods' tuning budgets differ ({shown} trials; 0 = the config's own options)"


def section(runs: pd.DataFrame) -> list[str]:
    """The report's "Tuning budgets" section (Markdown lines)."""
    tuned, why = tuned_label(runs)
    lines = ["## Tuning budgets", "",
             f"Comparison: **{'tuned' if tuned else 'not tuned'}**: {why}. Tuning (`branchbench tune`) searches a "
             "method's declared options with Optuna on development data seeds and selects by validation Δm; "
             "a comparison is labelled tuned only when every learned method had the same number of trials.", ""]
    studies = runs[STUDY_TAG] if STUDY_TAG in runs else pd.Series(None, index=runs.index, dtype=object)
    for method, trials in trials_by_method(runs).items():
        names = sorted({s for m, s in zip(runs["method"], studies, strict=True) if m == method and isinstance(s, str)})
        if trials == [0]:
            text = "baseline or control, nothing tuned" if method in NOT_LEARNED else "untuned (the config's options)"
        else:
            text = f"{' | '.join(map(str, trials))} trials" + (f" (study {', '.join(names)})" if names else "")
        lines.append(f"- {method}: {text}")
    return lines + [""]
