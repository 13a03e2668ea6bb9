"""Model search: create a search, read its leaderboard, cancel it, and advance it.

A search is a set of ordinary jobs (its trials, `jobs.search_id`) steered by an Optuna
study (app/services/studies.py). Nothing long-lived drives it: advance() is called by
whichever worker ends a trial, by the maintenance pass, and after create and cancel.
It tells Optuna how ended trials went, then fills the free trial slots (each taken by
a conditional UPDATE of the search row, so no two trials share one), then ends the
search once its budget is spent and every trial ended. Every step can be repeated, so a
process killed anywhere leaves nothing that the next advance() does not finish.

Optuna commits on its own connections, so every Optuna call here runs outside Graft's
transactions (asks come before the transaction that stores the trial).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from app.architectures import Architecture
from app.config import get_settings
from app.db.models import Job, Model, Search, Team
from app.db.session import after_commit, in_transaction, on_rollback, read_scope
from app.errors import AppError, Conflict, InvalidInput, NotFound, found
from app.ids import new_id
from app.repositories.datasets import ACTIVE_JOB_STATUSES as ACTIVE
from app.repositories.datasets import DatasetRepository
from app.repositories.jobs import TERMINAL_STATUSES, JobRepository
from app.repositories.models import ModelRepository
from app.repositories.searches import SearchRepository
from app.repositories.teams import TeamRepository
from app.schemas.jobs import Hyperparameters, JobCreate
from app.schemas.searches import SearchCreate, SearchRead
from app.services import job_runs, quotas, studies
from app.services.idempotency import create_once
from app.services.jobs import check_spec, enqueue, ready_dataset, resolve_base_model

log = logging.getLogger(__name__)

# An Optuna trial that no job took within this many seconds was asked by a process
# that died before storing its job: it is told failed, so TPE stops counting on it.
ORPHAN_SECONDS = 300.0
# Searched hyperparameters (the rest of the space is base_model and strategy).
SEARCHED_HYPERPARAMETERS = ("learning_rate", "batch_size", "augmentation")
# How many times advance() tries again after losing a slot to another process.
SLOT_RETRIES = 5


# ---------------------------------------------------------------- creating


def create_search_idempotent(
    session: Session, team: Team, spec: SearchCreate, idempotency_key: str | None
) -> tuple[Search, bool]:
    """create_search, once per Idempotency-Key; returns the search and whether it is new."""
    return create_once(
        session,
        SearchRepository(session),
        team_id=team.id,
        scope="searches.create",
        key=idempotency_key,
        body=spec,
        create=lambda: create_search(session, team, spec),
    )


def create_search(session: Session, team: Team, spec: SearchCreate) -> Search:
    """Validate everything, then create the study and the first trials; nothing is
    stored when the request is refused."""
    settings = get_settings()
    ready_dataset(session, team, spec.dataset_id, kind="labeled", param="dataset_id")
    architectures = _check_request(session, team, spec, settings.search_max_trials)
    team_limits = quotas.limits(settings, team)
    if spec.budget.max_parallel > team_limits["running_jobs"]:
        raise InvalidInput(
            f"budget.max_parallel is {spec.budget.max_parallel}, and this team may run "
            f"{team_limits['running_jobs']} jobs at once (its running_jobs quota).",
            code="over_quota",
            param="budget.max_parallel",
        )
    first = Budget(spec).free(trials_created=0, jobs=[])
    quotas.check_can_queue(session, settings, team, count=first)
    search = Search(
        id=new_id("srch"),
        team_id=team.id,
        dataset_id=spec.dataset_id,
        spec=spec.model_dump(mode="json"),
        status="running",
        trials_created=0,
    )
    url = settings.sqlalchemy_url
    studies.create(url, search.id, spec)
    # The study is committed on Optuna's connection: remove it if this request's
    # transaction does not commit (an error here, or at the commit itself).
    on_rollback(session, lambda: studies.delete(url, search.id))
    asked = [studies.ask(url, search.id, spec, slot) for slot in range(first)]
    search.trials_created = len(asked)
    SearchRepository(session).add(search)
    for slot, trial in enumerate(asked):
        _add_trial(session, team, search, spec, slot, trial, architectures)
    return search


def _check_request(
    session: Session, team: Team, spec: SearchCreate, max_trials: int
) -> dict[str, Architecture]:
    """Refuse a request that no trial could run, naming the field; returns each
    candidate base model's architecture."""
    space, fixed = spec.space, spec.fixed
    lr = space.learning_rate
    if lr is not None and lr.low >= lr.high:
        raise InvalidInput(
            f"space.learning_rate.low ({lr.low:g}) must be below high ({lr.high:g}).",
            param="space.learning_rate",
        )
    sized = [getattr(space, n) for n in ("base_model", "strategy", "batch_size", "augmentation")]
    if lr is None and all(choices is None or len(choices) < 2 for choices in sized):
        raise InvalidInput(
            "The search space is empty: give a learning_rate range, or two or more choices "
            "of base_model, strategy, batch_size or augmentation.",
            code="empty_space",
            param="space",
        )
    limits = spec.constraints
    if limits.quantization is None:
        for name in ("max_latency_ms", "max_size_mb"):
            if getattr(limits, name) is not None:
                raise InvalidInput(
                    f"constraints.{name} is measured on the quantized ONNX artifact; set "
                    "constraints.quantization (int8 or fp16) so that every trial exports one.",
                    code="constraint_not_measurable",
                    param="constraints.quantization",
                )
    if spec.budget.max_trials > max_trials:
        raise InvalidInput(
            f"budget.max_trials is {spec.budget.max_trials}; a search may run at most "
            f"{max_trials} trials (GRAFT_SEARCH_MAX_TRIALS).",
            code="over_quota",
            param="budget.max_trials",
        )
    budget_epochs = spec.budget.max_epochs_total
    if budget_epochs is not None and budget_epochs < fixed.epochs:
        raise InvalidInput(
            f"budget.max_epochs_total ({budget_epochs}) is less than one trial's "
            f"{fixed.epochs} epochs (fixed.epochs).",
            param="budget.max_epochs_total",
        )
    if space.base_model is None and fixed.base_model is None:
        raise InvalidInput(
            "Give the architectures to try in space.base_model, or one in fixed.base_model.",
            param="space.base_model",
        )
    architectures: dict[str, Architecture] = {}
    candidates = space.base_model or [fixed.base_model or ""]
    for i, name in enumerate(candidates):
        param = f"space.base_model[{i}]" if space.base_model else "fixed.base_model"
        arch, model = _resolve(session, team, name, param)
        architectures[name] = arch
        for strategy, augmentation in itertools.product(
            space.strategy or [fixed.strategy], space.augmentation or [fixed.augmentation]
        ):
            params = {"base_model": name, "strategy": strategy, "augmentation": augmentation}
            try:
                check_spec(trial_spec(spec, params, arch), arch, model)
            except InvalidInput as exc:
                where = ", ".join(f"{k} {v}" for k, v in params.items())
                raise InvalidInput(
                    f"A trial with {where} could not run: {exc.message}",
                    code=exc.code,
                    param=_fixed_param(exc.param),
                ) from exc
    return architectures


def _resolve(
    session: Session, team: Team, name: str, param: str
) -> tuple[Architecture, Model | None]:
    try:
        return resolve_base_model(session, team, name)
    except (InvalidInput, NotFound) as exc:
        exc.param = param
        raise


def _fixed_param(param: str | None) -> str | None:
    """A job spec's field as the search request names it (fixed.…)."""
    if param is None:
        return "fixed"
    return "fixed." + param.removeprefix("hyperparameters.")


def trial_spec(spec: SearchCreate, params: dict[str, Any], arch: Architecture) -> JobCreate:
    """The job spec of a trial: the fixed settings with the sampled `params` over them."""
    fixed = spec.fixed.model_dump()
    hyperparameters = {name: fixed[name] for name in Hyperparameters.model_fields}
    for name in SEARCHED_HYPERPARAMETERS:
        if name in params:
            hyperparameters[name] = params[name]
    strategy = params.get("strategy", spec.fixed.strategy)
    unfreeze = spec.fixed.unfreeze_last or min(2, arch.num_blocks)
    quantization = spec.constraints.quantization
    return JobCreate(
        dataset_id=spec.dataset_id,
        base_model=params.get("base_model", spec.fixed.base_model),
        pretrained_weights=spec.fixed.pretrained_weights,
        strategy=strategy,
        unfreeze_last=unfreeze if strategy == "partial" else None,
        hyperparameters=Hyperparameters.model_validate(hyperparameters),
        export=["onnx"] if quantization else [],
        quantization=[quantization] if quantization else [],
        validation_split=spec.fixed.validation_split,
    )


def _add_trial(
    session: Session,
    team: Team,
    search: Search,
    spec: SearchCreate,
    slot: int,
    trial: studies.Asked,
    architectures: dict[str, Architecture] | None = None,
) -> Job:
    name = trial.params.get("base_model", spec.fixed.base_model) or ""
    arch = (architectures or {}).get(name) or resolve_base_model(session, team, name)[0]
    job_spec = trial_spec(spec, trial.params, arch)
    return enqueue(
        session,
        team,
        kind="training",
        dataset_id=spec.dataset_id,
        spec=job_spec.model_dump(mode="json"),
        queued={
            "architecture": arch.name,
            "search_id": search.id,
            "trial": trial.number,
            "slot": slot,
            "params": trial.params,
        },
        search_id=search.id,
        trial_number=trial.number,
    )


# ---------------------------------------------------------------- the budget


@dataclass(frozen=True)
class Budget:
    spec: SearchCreate

    @property
    def trial_epochs(self) -> int:
        return self.spec.fixed.epochs

    @property
    def total_epochs(self) -> int:
        given = self.spec.budget.max_epochs_total
        return given if given is not None else self.spec.budget.max_trials * self.trial_epochs

    def spent(self, jobs: Iterable[Job]) -> int:
        """Epochs the trials ran, each once (a resumed trial replaces its epochs)."""
        return sum(len(j.metrics or []) for j in jobs)

    def free(self, *, trials_created: int, jobs: list[Job]) -> int:
        """How many trials may start now: within max_trials and max_parallel, and with
        every active trial's remaining epochs reserved out of the epoch budget."""
        active = [j for j in jobs if j.status in ACTIVE]
        reserved = self.spent(j for j in jobs if j.status not in ACTIVE) + sum(
            max(self.trial_epochs, len(j.metrics or [])) for j in active
        )
        by_epochs = max(0, self.total_epochs - reserved) // self.trial_epochs
        by_trials = self.spec.budget.max_trials - trials_created
        by_parallel = self.spec.budget.max_parallel - len(active)
        return max(0, min(by_epochs, by_trials, by_parallel))


# ---------------------------------------------------------------- advancing


def advance_quietly(search_id: str) -> None:
    """advance(), logging instead of raising: the maintenance pass will try again."""
    try:
        advance(search_id)
    except Exception:
        log.exception("search %s: advancing failed; the maintenance pass tries again", search_id)


def advance_all() -> list[str]:
    """Advance every running search (the maintenance pass); returns their ids."""
    with read_scope() as session:
        running = SearchRepository(session).running_ids()
    for search_id in running:
        advance_quietly(search_id)
    return running


@dataclass(frozen=True)
class _Snapshot:
    search: Search
    spec: SearchCreate
    jobs: list[Job]
    models: dict[str, Model]


def _snapshot(search_id: str) -> _Snapshot | None:
    with read_scope() as session:
        search = SearchRepository(session).get(search_id)
        if search is None:
            return None
        jobs = JobRepository(session).for_search(search_id)
        models = _models_of(session, jobs)
    return _Snapshot(search, SearchCreate.model_validate(search.spec), jobs, models)


def _models_of(session: Session, jobs: list[Job]) -> dict[str, Model]:
    """The models the trials produced, by id."""
    ids = [j.result_model_id for j in jobs if j.result_model_id]
    return {m.id: m for m in ModelRepository(session).get_many(ids)}


def advance(search_id: str) -> None:
    """Tell Optuna about ended trials, fill free slots, end the search when done."""
    url = get_settings().sqlalchemy_url
    snap = _snapshot(search_id)
    if snap is None:
        return
    _tell_ended(url, snap)
    for _ in range(SLOT_RETRIES):
        if snap.search.status != "running":
            return
        free = Budget(snap.spec).free(trials_created=snap.search.trials_created, jobs=snap.jobs)
        if free == 0:
            if not any(j.status in ACTIVE for j in snap.jobs):
                in_transaction(_finish, search_id)
            return
        if not _fill_one(url, snap):
            slot = snap.search.trials_created
            log.info("search %s: slot %d taken by another process", search_id, slot)
        next_snap = _snapshot(search_id)
        if next_snap is None:
            return
        snap = next_snap


def _tell_ended(url: str, snap: _Snapshot) -> None:
    known = {t.number: t for t in studies.trials(url, snap.search.id)}
    for job in snap.jobs:
        trial = known.get(job.trial_number) if job.trial_number is not None else None
        if trial is None or trial.finished or job.status not in TERMINAL_STATUSES:
            continue
        row = describe_trial(snap.spec, job, snap.models.get(job.result_model_id or ""))
        outcome = job.status if job.status in ("succeeded", "pruned") else "failed"
        studies.tell(
            url,
            snap.search.id,
            snap.spec,
            trial.number,
            outcome,
            row.value,
            _constraint_values(snap.spec, row) if outcome == "succeeded" else None,
        )
    taken = {j.trial_number for j in snap.jobs}
    for trial in known.values():
        if not trial.finished and trial.number not in taken and trial.age_seconds > ORPHAN_SECONDS:
            studies.tell(url, snap.search.id, snap.spec, trial.number, "failed", None)


def _fill_one(url: str, snap: _Snapshot) -> bool:
    """Ask for one trial and store it in the next slot; False if another process took
    the slot first (the trial Optuna gave is then told failed)."""
    slot = snap.search.trials_created
    asked = studies.ask(url, snap.search.id, snap.spec, slot)
    try:
        stored = in_transaction(_store_trial, snap.search.id, slot, asked)
    except BaseException:
        studies.tell(url, snap.search.id, snap.spec, asked.number, "failed", None)
        raise
    if not stored:
        studies.tell(url, snap.search.id, snap.spec, asked.number, "failed", None)
    return stored


def _store_trial(session: Session, search_id: str, slot: int, asked: studies.Asked) -> bool:
    repo = SearchRepository(session)
    search = repo.get(search_id)
    if search is None or not repo.claim_slot(search_id, slot):
        return False
    spec = SearchCreate.model_validate(search.spec)
    team = TeamRepository(session).get(search.team_id)
    dataset = DatasetRepository(session).get(spec.dataset_id)
    if team is None or dataset is None:
        repo.finish(
            search_id,
            "failed",
            {
                "code": "dataset_not_found",
                "message": f"The dataset {spec.dataset_id} was deleted during the search.",
            },
        )
        return True
    _add_trial(session, team, search, spec, slot, asked)
    return True


def _finish(session: Session, search_id: str) -> None:
    jobs = JobRepository(session).for_search(search_id)
    if any(j.status == "succeeded" for j in jobs):
        SearchRepository(session).finish(search_id, "succeeded")
        return
    counts = Counter(j.status for j in jobs)
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    SearchRepository(session).finish(
        search_id,
        "failed",
        {
            "code": "no_trial_succeeded",
            "message": f"No trial succeeded ({summary or 'none ran'}); see each trial's job "
            "for its error.",
        },
    )


# ---------------------------------------------------------------- workers' calls


def report_epoch(search_id: str, trial_number: int, metrics: dict[str, Any]) -> bool:
    """A trial ended an epoch: report its objective; whether the pruner stops it."""
    with read_scope() as session:
        search = SearchRepository(session).get(search_id)
    if search is None or search.status != "running":
        return False
    spec = SearchCreate.model_validate(search.spec)
    value = metrics.get(spec.objective)
    if not isinstance(value, int | float):
        return False
    url = get_settings().sqlalchemy_url
    return studies.report(url, search_id, spec, trial_number, int(metrics["epoch"]), value)


# ---------------------------------------------------------------- reading


def get_search(session: Session, team: Team, search_id: str) -> Search:
    search = SearchRepository(session).get_for_team(team.id, search_id)
    return found(search, "search", search_id, "search_id")


def cancel_search(session: Session, team: Team, search_id: str) -> Search:
    """End the search and cancel its queued and running trials."""
    search = get_search(session, team, search_id)
    repo = SearchRepository(session)
    if not repo.finish(search.id, "cancelled"):
        raise Conflict(
            f"Search {search.id} already ended ({search.status}).",
            code="search_finished",
            param="search_id",
        )
    for job in JobRepository(session).for_search(search.id):
        if job.status in ACTIVE:
            with contextlib.suppress(AppError):  # it ended meanwhile
                job_runs.cancel(session, job)
    # Optuna hears of the cancelled trials outside this transaction.
    after_commit(session, lambda: advance_quietly(search.id))
    refreshed = repo.get(search.id)
    assert refreshed is not None
    return refreshed


def read(session: Session, search: Search) -> SearchRead:
    """The search object: budget used, leaderboard, Pareto front, recommendation."""
    spec = SearchCreate.model_validate(search.spec)
    jobs = JobRepository(session).for_search(search.id)
    models = _models_of(session, jobs)
    trials = [describe_trial(spec, j, models.get(j.result_model_id or "")) for j in jobs]
    better = 1.0 if spec.objective == "val_accuracy" else -1.0
    board = sorted(
        trials,
        key=lambda t: (t.value is None, -better * (t.value or 0.0), t.number),
    )
    front = pareto_front(board, better)
    recommended, why = recommend(board, spec)
    return SearchRead.model_validate(
        {
            "id": search.id,
            "status": search.status,
            "spec": search.spec,
            "created_at": search.created_at,
            "finished_at": search.finished_at,
            "budget_used": {"trials": search.trials_created, "epochs": Budget(spec).spent(jobs)},
            "trials": dict(Counter(j.status for j in jobs)),
            "leaderboard": [vars(t) for t in board],
            "pareto_front": [
                {
                    "number": t.number,
                    "model_id": t.model_id,
                    "value": t.value,
                    "latency_ms": t.artifact["latency_ms"] if t.artifact else None,
                    "size_mb": t.artifact["size_mb"] if t.artifact else 0.0,
                }
                for t in front
            ],
            "recommended_model_id": recommended.model_id if recommended else None,
            "recommendation": why,
            "error": search.error,
        }
    )


@dataclass(frozen=True)
class TrialRow:
    number: int
    job_id: str
    status: str
    params: dict[str, Any]
    value: float | None
    epochs: int
    pruned: bool
    model_id: str | None
    artifact: dict[str, Any] | None
    meets_constraints: bool | None


def describe_trial(spec: SearchCreate, job: Job, model: Model | None) -> TrialRow:
    """A leaderboard row, from the trial's own job record (and its model's)."""
    job_spec = job.spec
    hp = job_spec.get("hyperparameters", {})
    params: dict[str, Any] = {}
    for name in studies.distributions(spec):
        params[name] = job_spec.get(name) if name in ("base_model", "strategy") else hp.get(name)
    value: float | None = None
    if model is not None:
        value = model.metrics.get(spec.objective)
    else:
        seen = [m[spec.objective] for m in job.metrics or [] if spec.objective in m]
        if seen:
            value = max(seen) if spec.objective == "val_accuracy" else min(seen)
    artifact = _artifact(spec, model)
    return TrialRow(
        number=job.trial_number or 0,
        job_id=job.id,
        status=job.status,
        params=params,
        value=value,
        epochs=len(job.metrics or []),
        pruned=job.status == "pruned",
        model_id=model.id if model else None,
        artifact=artifact,
        meets_constraints=_meets(spec, artifact) if model is not None else None,
    )


def _artifact(spec: SearchCreate, model: Model | None) -> dict[str, Any] | None:
    quantization = spec.constraints.quantization
    if model is None or quantization is None:
        return None
    fmt = f"onnx-{quantization}"
    for entry in model.artifacts:
        if entry.get("format") == fmt:
            report = entry.get("report") or {}
            latency = (report.get("latency_ms") or {}).get("batch_1")
            return {
                "format": fmt,
                "size_mb": round(int(entry["size_bytes"]) / 1e6, 4),
                "latency_ms": latency,
            }
    return None


def _meets(spec: SearchCreate, artifact: dict[str, Any] | None) -> bool:
    limits = spec.constraints
    if limits.quantization is None:
        return True
    if artifact is None:
        return False
    latency = artifact["latency_ms"]
    if limits.max_latency_ms is not None and (latency is None or latency > limits.max_latency_ms):
        return False
    return limits.max_size_mb is None or artifact["size_mb"] <= limits.max_size_mb


def _constraint_values(spec: SearchCreate, row: TrialRow) -> dict[str, float]:
    """How far the trial's artifact is over each limit (<= 0: met), for TPE."""
    limits, artifact = spec.constraints, row.artifact
    over: dict[str, float] = {}
    if artifact is None:
        return over
    if limits.max_latency_ms is not None:
        over["latency_ms"] = float((artifact["latency_ms"] or 0.0) - limits.max_latency_ms)
    if limits.max_size_mb is not None:
        over["size_mb"] = float(artifact["size_mb"] - limits.max_size_mb)
    return over


def pareto_front(board: list[TrialRow], better: float) -> list[TrialRow]:
    """The succeeded trials with an artifact that no other beats on objective, latency
    and size at once (equal on all three: the earlier trial stays)."""
    points = [t for t in board if t.value is not None and t.artifact is not None]

    def key(t: TrialRow) -> tuple[float, float, float]:
        assert t.value is not None and t.artifact is not None
        latency = t.artifact["latency_ms"]
        return (-better * t.value, latency if latency is not None else 0.0, t.artifact["size_mb"])

    front = []
    for t in points:
        a = key(t)
        dominated = any(
            all(x <= y for x, y in zip(key(o), a, strict=True))
            and (key(o) != a or o.number < t.number)
            for o in points
            if o is not t
        )
        if not dominated:
            front.append(t)
    return front


def recommend(board: list[TrialRow], spec: SearchCreate) -> tuple[TrialRow | None, str]:
    """The most accurate succeeded trial that meets every constraint, and why."""
    done = [t for t in board if t.status == "succeeded" and t.value is not None]
    if not done:
        return None, "No trial has succeeded yet."
    fitting = [t for t in done if t.meets_constraints]
    if not fitting:
        best = done[0]
        detail = f", whose {best.artifact['format']} is {_cost(best)}" if best.artifact else ""
        return None, (
            f"None of the {len(done)} succeeded trials meets the constraints "
            f"({_limits(spec)}); the best, trial {best.number}{detail}, does not."
        )
    chosen = fitting[0]
    return chosen, (
        f"Trial {chosen.number} ({chosen.params.get('base_model', spec.fixed.base_model)}) has "
        f"the best {spec.objective}, {chosen.value:.4f}, of the {len(fitting)} succeeded "
        f"trials that meet the constraints"
        + (f" ({_limits(spec)})" if spec.constraints.quantization else "")
        + "."
    )


def _cost(t: TrialRow) -> str:
    assert t.artifact is not None
    latency = t.artifact["latency_ms"]
    shown = f"{latency:.2f} ms" if latency is not None else "unmeasured"
    return f"{shown} and {t.artifact['size_mb']:.2f} MB"


def _limits(spec: SearchCreate) -> str:
    c = spec.constraints
    parts = []
    if c.max_latency_ms is not None:
        parts.append(f"latency <= {c.max_latency_ms:g} ms")
    if c.max_size_mb is not None:
        parts.append(f"size <= {c.max_size_mb:g} MB")
    return f"{', '.join(parts) or 'no limits'} on onnx-{c.quantization}"
