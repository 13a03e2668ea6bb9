"""The Optuna side of a model search: one study per search (named by the search's id)
in Optuna's RDB storage on Graft's own database, driven through ask and tell.

- ask: the sampler (TPE, seeded, or random) picks a trial's parameters;
- report: a trial's objective after each epoch, to the successive-halving pruner (ASHA),
  which answers whether the trial should stop there;
- tell: how a trial ended (its objective, pruned, or failed), with its constraint
  values (Trial.set_constraint), which TPE samples around: a trial over a limit counts
  as infeasible.

No Graft SQL here. Optuna commits on connections of its own, so no call here may run
inside a Graft transaction: on SQLite the two would wait on each other's write lock.
Graft's leases stay the source of truth for whether a trial is alive; Optuna's
heartbeat does not apply to ask and tell, and is not used.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.pruners import BasePruner, NopPruner, SuccessiveHalvingPruner
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.storages import RDBStorage
from optuna.trial import Trial, TrialState

from app.schemas.searches import SearchCreate

optuna.logging.set_verbosity(optuna.logging.WARNING)

# ASHA keeps the best third of the trials at each rung (epochs min_resource x 3^k).
REDUCTION_FACTOR = 3

Outcome = str  # "succeeded" | "pruned" | "failed" (failed, cancelled, given up)


@dataclass(frozen=True)
class Asked:
    number: int
    params: dict[str, Any]


@dataclass(frozen=True)
class StudyTrial:
    number: int
    finished: bool
    age_seconds: float  # since it was asked


@lru_cache(maxsize=4)
def storage(url: str) -> RDBStorage:
    """Optuna's storage on Graft's database; its tables come from migration 0007."""
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        # Wait for Graft's writer instead of failing at once (Graft sets WAL on the file).
        kwargs["connect_args"] = {"timeout": 30}
    return RDBStorage(
        url, engine_kwargs=kwargs, skip_table_creation=True, skip_compatibility_check=True
    )


def distributions(spec: SearchCreate) -> dict[str, BaseDistribution]:
    """The space as Optuna distributions, one per dimension the request gave."""
    space = spec.space
    found: dict[str, BaseDistribution] = {}
    for name in ("base_model", "strategy", "batch_size", "augmentation"):
        choices = getattr(space, name)
        if choices is not None:
            found[name] = CategoricalDistribution(list(choices))
    if space.learning_rate is not None:
        lr = space.learning_rate
        found["learning_rate"] = FloatDistribution(lr.low, lr.high, log=lr.log)
    return found


def startup_trials(max_trials: int) -> int:
    """TPE's random start-up trials: a quarter of the budget, from 2 to Optuna's 10."""
    return min(10, max(2, max_trials // 4))


def _sampler(spec: SearchCreate, slot: int) -> BaseSampler:
    # A sampler per trial slot, seeded from the search's seed and the slot: a fresh
    # sampler with the search's seed alone would repeat its first draw at every ask.
    seed = (spec.seed * 1_000_003 + slot) % 2**32
    if spec.sampler == "random":
        return RandomSampler(seed=seed)
    return TPESampler(
        seed=seed,
        n_startup_trials=startup_trials(spec.budget.max_trials),
        # Trials still running count as bad ones, so parallel asks spread out.
        constant_liar=True,
    )


def _pruner(spec: SearchCreate) -> BasePruner:
    if spec.pruner == "none":
        return NopPruner()
    epochs = spec.fixed.epochs
    # The first rung at a ninth of the epochs: rungs at 1, 3, 9 epochs of a 12-epoch trial.
    return SuccessiveHalvingPruner(
        min_resource=max(1, epochs // 9), reduction_factor=REDUCTION_FACTOR
    )


def _study(url: str, search_id: str, spec: SearchCreate, slot: int = 0) -> optuna.Study:
    return optuna.load_study(
        study_name=search_id,
        storage=storage(url),
        sampler=_sampler(spec, slot),
        pruner=_pruner(spec),
    )


def direction(spec: SearchCreate) -> Literal["minimize", "maximize"]:
    return "minimize" if spec.objective == "val_loss" else "maximize"


def create(url: str, search_id: str, spec: SearchCreate) -> None:
    optuna.create_study(study_name=search_id, storage=storage(url), direction=direction(spec))


def delete(url: str, search_id: str) -> None:
    """Remove a study whose search was never stored (its creation failed)."""
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=search_id, storage=storage(url))


def ask(url: str, search_id: str, spec: SearchCreate, slot: int) -> Asked:
    trial = _study(url, search_id, spec, slot).ask(distributions(spec))
    return Asked(trial.number, dict(trial.params))


def report(
    url: str, search_id: str, spec: SearchCreate, number: int, epoch: int, value: float
) -> bool:
    """The trial's objective after `epoch`; whether the pruner says stop. A resumed
    trial reporting an epoch again changes nothing (Optuna keeps the first report)."""
    if not math.isfinite(value):
        return False
    trial_id = _trial_id(url, search_id, number)
    if _finished(url, trial_id):
        return False
    trial = Trial(_study(url, search_id, spec), trial_id)
    try:
        trial.report(value, epoch)
        return bool(trial.should_prune())
    except UpdateFinishedTrialError:
        return False  # told meanwhile (its search was cancelled)


def tell(
    url: str,
    search_id: str,
    spec: SearchCreate,
    number: int,
    outcome: Outcome,
    value: float | None,
    constraints: dict[str, float] | None = None,
) -> None:
    """How the trial ended; telling a finished trial again changes nothing (two
    processes may race to tell the same trial: the second finds it finished)."""
    trial_id = _trial_id(url, search_id, number)
    with contextlib.suppress(UpdateFinishedTrialError):
        if _finished(url, trial_id):
            return
        study = _study(url, search_id, spec)
        if constraints:
            trial = Trial(study, trial_id)
            for name, over in constraints.items():
                trial.set_constraint(name, over)
        if outcome == "succeeded" and value is not None and math.isfinite(value):
            study.tell(number, value, skip_if_finished=True)
        elif outcome == "pruned":
            study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
        else:
            study.tell(number, state=TrialState.FAIL, skip_if_finished=True)


def trials(url: str, search_id: str) -> list[StudyTrial]:
    """Every trial of the study: its number, whether it ended, how long ago it was asked."""
    store = storage(url)
    study_id = store.get_study_id_from_name(search_id)
    # Optuna stamps trials with naive local time.
    now = datetime.now()
    return [
        StudyTrial(
            t.number,
            t.state.is_finished(),
            (now - t.datetime_start).total_seconds() if t.datetime_start else 0.0,
        )
        for t in store.get_all_trials(study_id, deepcopy=False)
    ]


def _trial_id(url: str, search_id: str, number: int) -> int:
    store = storage(url)
    return store.get_trial_id_from_study_id_trial_number(
        store.get_study_id_from_name(search_id), number
    )


def _finished(url: str, trial_id: int) -> bool:
    return storage(url).get_trial(trial_id).state.is_finished()
