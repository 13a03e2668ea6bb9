"""method "auto": try the other methods within a time budget and keep the best one, if it
beats the unadapted model by more than chance on the labelled target images.

The candidates run in CANDIDATES' order, cheapest first (adabn takes seconds, tent a
minute at most, the joint methods about as long as training), each from the trained
weights and with its own default options. A candidate is eligible when it kept the
source task (report.guard's source rule); the most accurate eligible one on the
labelled target set wins, ties going to the earlier (cheaper) one.

Fifty labelled images measure accuracy to about +-7 points, so "higher" is not enough:
the winner must pass a paired test against the unadapted model on the same images.
McNemar's exact test looks only at the images the two disagree on, `gained` (now right,
wrong before) against `lost`; under "no better" each such image is a fair coin, so the
one-sided p-value is P(Binomial(gained + lost, 1/2) >= gained). Since the winner was the
best of k candidates measured on those same images, the level is Bonferroni's ALPHA / k.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from worker.adapt import report
from worker.errors import AdaptationNotApplicable
from worker.training.types import Hooks, StopReason

CANDIDATES = ("adabn", "tent", "dann", "mcc", "pseudo_label")
ALPHA = 0.05


class BudgetSpent(Exception):
    """Raised from a candidate's stop check once the time budget is spent."""


@dataclass
class Attempt:
    """One candidate's run: its weights and its measurements after."""

    method: str
    after: report.Snapshot
    state_dict: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float


# Runs one method from the trained weights with these hooks; raises
# AdaptationNotApplicable when the method does not fit the model.
Runner = Callable[[str, Hooks], Attempt]


@dataclass(frozen=True)
class PairedTest:
    gained: int  # right after, wrong before
    lost: int  # wrong after, right before
    p_value: float  # one-sided exact McNemar
    alpha: float  # the level it must be under (ALPHA / candidates compared)

    @property
    def significant(self) -> bool:
        return self.p_value < self.alpha


def paired_test(before: np.ndarray, after: np.ndarray, compared: int) -> PairedTest:
    """Is `after` (per-image correct) better than `before` on the same images?"""
    gained = int(np.sum(after & ~before))
    lost = int(np.sum(~after & before))
    n = gained + lost
    p = sum(math.comb(n, i) for i in range(gained, n + 1)) / 2**n if n else 1.0
    return PairedTest(gained, lost, p, ALPHA / max(1, compared))


@dataclass
class Outcome:
    """What auto decided: `chosen` is None when no candidate could run."""

    chosen: Attempt | None
    reason: str | None  # why nothing ships: the chosen one failed the test, or none ran
    candidates: list[dict[str, Any]] = field(default_factory=list)
    test: PairedTest | None = None
    seconds: float = 0.0


def choose(
    before: report.Snapshot,
    run: Runner,
    hooks: Hooks,
    budget_seconds: float,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Run the candidates within the budget and pick one; a real stop request (cancel,
    preemption, lease lost) propagates as TrainingStopped from the running candidate."""
    assert before.target_eval_correct is not None, "auto needs a labelled target set"
    start = clock()
    deadline = start + budget_seconds

    def should_stop() -> StopReason | None:
        reason = hooks.should_stop()
        if reason is None and clock() >= deadline:
            raise BudgetSpent
        return reason

    bounded = replace(hooks, should_stop=should_stop)
    outcome = Outcome(None, None)
    eligible: list[Attempt] = []
    for method in CANDIDATES:
        row: dict[str, Any] = {"method": method}
        outcome.candidates.append(row)
        if clock() >= deadline:
            row["status"] = "skipped: the time budget was spent"
            continue
        began = clock()
        try:
            attempt = run(method, bounded)
        except AdaptationNotApplicable as exc:
            row["status"] = f"not applicable: {exc}"
            continue
        except BudgetSpent:
            row["status"] = f"stopped after {clock() - began:.0f} s: the time budget was spent"
            continue
        row.update(_measured(attempt))
        forgot = report.source_forgotten(before, attempt.after)
        row["status"] = f"ineligible: {forgot}" if forgot else "ran"
        if not forgot:
            eligible.append(attempt)
    outcome.seconds = clock() - start
    if not eligible:
        outcome.reason = "no candidate could run: " + "; ".join(
            f"{c['method']} {c['status']}" for c in outcome.candidates
        )
        return outcome
    # max() keeps the first of equals: the cheaper candidate wins a tie.
    best = max(eligible, key=lambda a: a.after.target_eval_accuracy or 0.0)
    assert best.after.target_eval_correct is not None
    test = paired_test(before.target_eval_correct, best.after.target_eval_correct, len(eligible))
    outcome.chosen, outcome.test = best, test
    if not test.significant:
        outcome.reason = (
            f"{best.method}, the best of {len(eligible)}, is not better than the unadapted model "
            f"by more than chance on {len(before.target_eval_correct)} labelled target images "
            f"({test.gained} gained, {test.lost} lost: p = {test.p_value:.2g}, needs under "
            f"{test.alpha:.2g})"
        )
    return outcome


def _measured(a: Attempt) -> dict[str, Any]:
    return {
        "target_eval_accuracy": a.after.target_eval_accuracy,
        "source_val_accuracy": a.after.source_val_accuracy,
        "seconds": round(a.seconds, 1),
    }


def section(outcome: Outcome, budget_seconds: float) -> dict[str, Any]:
    """The report's "auto" entry."""
    t = outcome.test
    return {
        "order": list(CANDIDATES),
        "time_budget_seconds": budget_seconds,
        "seconds": round(outcome.seconds, 1),
        "chosen": None if outcome.chosen is None else outcome.chosen.method,
        "candidates": outcome.candidates,
        "paired_test": None
        if t is None
        else {"gained": t.gained, "lost": t.lost, "p_value": t.p_value, "alpha": t.alpha},
    }
