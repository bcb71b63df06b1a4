"""What a sweep prints while it runs: a line per cell, progress with an ETA, a summary table.

Every line is written and flushed as it happens, whatever stdout is (a
terminal, a pipe under tox or CI, a log file). A cell prints a line when it
starts and when it ends (name, status, key result, wall time), each end line
carrying the counts so far and an ETA; on a terminal a progress bar on stderr
shows the same. ``quiet`` keeps only failures and the final summary.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

STATUSES = ("finished", "skipped", "failed")


def emit(text: str) -> None:
    print(text, flush=True)


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def key_result(metrics: dict[str, float]) -> str:
    """The one number an end line shows: Δm, else the first main test metric."""
    if "delta_m" in metrics:
        return f"Δm {metrics['delta_m']:+.2f}%"
    for key in sorted(metrics):
        if key.startswith("test.") and key.rsplit(".", 1)[-1] in ("accuracy", "mse", "error"):
            return f"{key} {metrics[key]:.4g}"
    return ""


@dataclass
class Row:
    name: str
    group: tuple[str, str, str]  # dataset, method, budget
    status: str = "pending"
    result: str = ""
    seconds: float = 0.0
    detail: str = ""


class SweepConsole:
    """Prints a sweep's progress; ``rows`` remembers every cell for the summary."""

    def __init__(self, cells: Sequence[Any], slots: int = 1, quiet: bool = False,
                 out: Callable[[str], None] = emit, bar: bool | None = None) -> None:
        self.total = len(cells)
        self.slots = max(1, slots)
        self.quiet = quiet
        self.out = out
        self.rows = {c.hash: Row(c.name, (c.dataset, c.method, str(c.budget))) for c in cells}
        self.counts = dict.fromkeys(STATUSES, 0)
        self.ran_seconds: list[float] = []
        self.start = time.monotonic()
        use_bar = (not quiet and sys.stderr.isatty()) if bar is None else bar
        self.bar = None
        if use_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc="cells", unit="cell", file=sys.stderr, leave=False)

    # ---------------------------------------------------------------- events
    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def eta(self) -> float:
        remaining = self.total - self.done
        if remaining == 0:
            return 0.0
        if not self.ran_seconds:
            return math.nan
        return remaining * (sum(self.ran_seconds) / len(self.ran_seconds)) / self.slots

    def progress(self) -> str:
        c = self.counts
        return (f"{self.done}/{self.total} (finished {c['finished']}, skipped {c['skipped']}, "
                f"failed {c['failed']}; ETA {duration(self.eta())})")

    def started(self, cell: Any) -> None:
        if not self.quiet:
            self._line(f"start  {cell.name}")

    def ended(self, cell: Any, status: str, metrics: dict[str, float] | None = None, seconds: float = 0.0,
              detail: str = "") -> None:
        row = self.rows[cell.hash]
        row.status, row.seconds, row.detail = status, seconds, detail
        row.result = key_result(metrics or {})
        self.counts[status] += 1
        if status != "skipped":
            self.ran_seconds.append(seconds)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(finished=self.counts["finished"], skipped=self.counts["skipped"],
                                 failed=self.counts["failed"])
        if self.quiet and status != "failed":
            return
        text = f"{status:<8} {cell.name}"
        if row.result:
            text += f"  {row.result}"
        if status != "skipped":
            text += f"  {duration(seconds)}"
        if detail:
            text += f"  ({detail})"
        self._line(f"{text}  [{self.progress()}]")

    def _line(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
            sys.stdout.flush()
        else:
            self.out(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # --------------------------------------------------------------- summary
    def summary(self, interrupted: bool = False) -> None:
        """A table of what finished, per dataset, method and budget."""
        self.close()
        groups: dict[tuple[str, str, str], list[Row]] = {}
        for row in self.rows.values():
            groups.setdefault(row.group, []).append(row)
        head = "interrupted" if interrupted else "done"
        self.out(f"sweep {head} after {duration(time.monotonic() - self.start)}: {self.progress().split(' (')[0]} "
                 f"cells accounted for; finished {self.counts['finished']}, skipped {self.counts['skipped']} "
                 f"(finished earlier), failed {self.counts['failed']}, not run {self.total - self.done}")
        if self.quiet:
            return
        header = ("dataset", "method", "budget", "done", "failed", "not run", "mean Δm (%)")
        lines = [header]
        for (dataset, method, budget), rows in sorted(groups.items()):
            done = [r for r in rows if r.status in ("finished", "skipped")]
            gains = [float(r.result.split()[1].rstrip("%")) for r in done if r.result.startswith("Δm")]
            mean = f"{sum(gains) / len(gains):+.2f}" if gains else ""
            lines.append((dataset, method, budget, str(len(done)), str(sum(r.status == "failed" for r in rows)),
                          str(sum(r.status == "pending" for r in rows)), mean))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        for line in lines:
            self.out("  " + "  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)))
