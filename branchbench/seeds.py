"""Development and evaluation data seeds: the one place that keeps them apart.

A cell's *data seed* draws its dataset (for datasets with a ``data_seed``
option, e.g. the synthetic tasks; a fixed split such as CelebA's has data seed
0). Two disjoint sets of draws exist:

* **development** data seeds (:data:`DEVELOPMENT`, 1000-1009): every default
  of a method or dataset, every tuned hyper-parameter (``branchbench tune``)
  and every study script chooses on these, by *validation* metrics only;
* **evaluation** data seeds (:data:`EVALUATION`, 0-99): the reported
  comparisons (``configs/*.toml``) run on these, and nothing is chosen on them.

Test metrics and the true task groups choose nothing on either set; they may
be reported. ``tune`` refuses a data seed that is not a development one;
loading a comparison config whose ``data_seeds`` include development seeds
warns (:class:`SeedWarning`), since its tables would reuse the draws the
defaults were chosen on.

    >>> check_development([1000, 1001], "--data-seeds")
    [1000, 1001]
    >>> is_evaluation(0), is_development(0)
    (True, False)
"""

from __future__ import annotations

from collections.abc import Iterable

DEVELOPMENT: range = range(1000, 1010)
EVALUATION: range = range(0, 100)
TUNING_DEFAULT = 2  # development data seeds a tuning study uses unless told otherwise


class SeedError(ValueError):
    """A data seed used where its set forbids it; the message names the seed and the fix."""


class SeedWarning(UserWarning):
    """A comparison config draws data on development seeds (its tables reuse the tuning data)."""


def is_development(seed: int) -> bool:
    return seed in DEVELOPMENT


def is_evaluation(seed: int) -> bool:
    return seed in EVALUATION


def development_seeds(n: int = TUNING_DEFAULT) -> list[int]:
    """The first ``n`` development data seeds."""
    if not 1 <= n <= len(DEVELOPMENT):
        raise SeedError(f"{n} development data seeds asked for; there are {len(DEVELOPMENT)} "
                        f"({_span(DEVELOPMENT)}), give 1 .. {len(DEVELOPMENT)}")
    return list(DEVELOPMENT[:n])


def check_development(seeds: Iterable[int], where: str) -> list[int]:
    """``seeds`` if every one is a development data seed, else :class:`SeedError` naming the first that is not."""
    seeds = list(seeds)
    for seed in seeds:
        if not is_development(seed):
            kind = "an evaluation data seed" if is_evaluation(seed) else "not a development data seed"
            raise SeedError(
                f"{where}: data seed {seed} is {kind}; defaults and tuning are chosen on development data seeds "
                f"only ({_span(DEVELOPMENT)}, declared in branchbench/seeds.py), e.g. {where} "
                f"{' '.join(map(str, development_seeds()))}")
    return seeds


def comparison_warning(data_seeds: Iterable[int] | None, source: str) -> str | None:
    """The warning a comparison config deserves when it draws data on development seeds, else None."""
    used = sorted(s for s in (data_seeds or []) if is_development(s))
    if not used:
        return None
    return (f"{source}: sweep.data_seeds {used} are development data seeds (branchbench/seeds.py), on which "
            f"defaults and tuning are chosen; a reported comparison belongs on evaluation data seeds "
            f"({_span(EVALUATION)})")


def _span(seeds: range) -> str:
    return f"{seeds.start}-{seeds.stop - 1}"
