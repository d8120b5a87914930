"""Asynchronous successive halving (ASHA, Li et al. 2020), the decision alone.

Rungs are at ``min_steps * eta**k`` steps below ``max_steps``. When a trial first reports
the sweep's metric at or past a rung, it is compared with the values the other trials
recorded at that rung: it goes on if it is among the best ``1/eta`` of them (the cut is
the ``1/eta`` quantile, interpolated), else it is stopped. A trial judged first at a rung
always goes on, so nothing waits for a rung to fill: that is the asynchronous part.
"""

from __future__ import annotations

from dataclasses import dataclass


def rungs(min_steps: int, max_steps: int, eta: int) -> list[int]:
    """The steps at which trials are judged."""
    found, step = [], min_steps
    while step < max_steps:
        found.append(step)
        step *= eta
    return found


def cutoff(others: list[float], eta: int, goal: str) -> float | None:
    """The value a trial must reach (or beat) to go on; None when none is recorded."""
    if not others:
        return None
    ranked = sorted(others, reverse=goal == "maximize")
    position = (len(ranked) - 1) / eta
    low = int(position)
    high = min(low + 1, len(ranked) - 1)
    return ranked[low] + (ranked[high] - ranked[low]) * (position - low)


@dataclass(frozen=True)
class Decision:
    rung: int  # its index
    step: int  # the rung's steps
    keep: bool
    value: float
    cutoff: float | None
    compared: int  # other trials' values at the rung

    def why(self, metric: str) -> str:
        return (
            f"Stopped early by ASHA at rung {self.rung + 1} (step {self.step}): {metric} "
            f"{self.value:.6g} is worse than the cut {self.cutoff:.6g} of the "
            f"{self.compared} other trial(s) there."
        )


def judge(value: float, others: list[float], rung: int, step: int, eta: int, goal: str) -> Decision:
    cut = cutoff(others, eta, goal)
    if cut is None:
        keep = True
    else:
        keep = value <= cut if goal == "minimize" else value >= cut
    return Decision(rung, step, keep, value, cut, len(others))
