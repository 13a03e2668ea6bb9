"""The parts of a model search that are plain functions: the budget, a trial's job
spec, the leaderboard row read from a trial's job, the Pareto front and the
recommendation. (The search with its database, Optuna and workers:
tests/integration/test_searches_api.py and tests/e2e/test_searches.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from app.architectures import ARCHITECTURES
from app.db.models import Job, Model
from app.schemas.searches import SearchCreate
from app.services import searches, studies
from app.services.searches import Budget, TrialRow, pareto_front, recommend


def spec(**over: Any) -> SearchCreate:
    body: dict[str, Any] = {
        "dataset_id": "ds_1",
        "space": {
            "base_model": ["resnet18", "mobilenet_v3_small"],
            "strategy": ["linear_probe", "partial"],
            "learning_rate": {"low": 1e-4, "high": 1e-2},
        },
        "fixed": {"epochs": 10, "image_size": 32, "pretrained_weights": "none"},
        "constraints": {"quantization": "int8", "max_latency_ms": 2, "max_size_mb": 5},
        "budget": {"max_trials": 6, "max_parallel": 2},
    }
    body.update(over)
    return SearchCreate.model_validate(body)


def job(status: str, epochs: int, number: int = 0, **spec_over: Any) -> Job:
    metrics = [{"epoch": e, "val_accuracy": 0.5 + e / 100, "val_loss": 1.0 - e / 100}
               for e in range(1, epochs + 1)]  # fmt: skip
    return Job(
        id=f"job_{number}",
        status=status,
        metrics=metrics,
        trial_number=number,
        spec={"base_model": "resnet18", "strategy": "partial",
              "hyperparameters": {"learning_rate": 0.003, "batch_size": 32}, **spec_over},
    )  # fmt: skip


def model(size_bytes: int, latency: float, accuracy: float = 0.9) -> Model:
    return Model(
        id="mdl_1",
        metrics={"val_accuracy": accuracy, "val_loss": 0.3},
        artifacts=[
            {"format": "safetensors", "size_bytes": 40_000_000},
            {"format": "onnx-int8", "size_bytes": size_bytes,
             "report": {"latency_ms": {"batch_1": latency, "batch_32": 9.0}}},
        ],
    )  # fmt: skip


def row(number: int, value: float | None, latency: float, size: float, **kw: Any) -> TrialRow:
    fields: dict[str, Any] = {
        "number": number,
        "job_id": f"job_{number}",
        "status": "succeeded",
        "params": {"base_model": "resnet18"},
        "value": value,
        "epochs": 10,
        "pruned": False,
        "model_id": f"mdl_{number}",
        "artifact": {"format": "onnx-int8", "size_mb": size, "latency_ms": latency},
        "meets_constraints": latency <= 2 and size <= 5,
    }
    fields.update(kw)
    return TrialRow(**fields)


def test_the_budget_reserves_every_active_trials_epochs() -> None:
    budget = Budget(spec(budget={"max_trials": 6, "max_parallel": 3, "max_epochs_total": 35}))
    assert budget.free(trials_created=0, jobs=[]) == 3  # 35 epochs fit 3 trials of 10
    running = [job("running", 4, 0), job("queued", 0, 1)]
    # 20 epochs reserved for the two active trials: one more fits.
    assert budget.free(trials_created=2, jobs=running) == 1
    # A pruned trial gives back what it did not run: 1 + 20 reserved, 14 left.
    ended = [job("pruned", 1, 0), *running[:1], job("running", 0, 2)]
    assert budget.free(trials_created=3, jobs=ended) == 1
    assert budget.spent(ended) == 5
    assert budget.free(trials_created=6, jobs=[]) == 0  # max_trials reached


def test_a_trial_spec_is_the_fixed_settings_with_the_params_over_them() -> None:
    s = spec()
    params = {"base_model": "mobilenet_v3_small", "strategy": "partial", "learning_rate": 0.004}
    job_spec = searches.trial_spec(s, params, ARCHITECTURES["mobilenet_v3_small"])
    assert job_spec.base_model == "mobilenet_v3_small" and job_spec.strategy == "partial"
    assert job_spec.unfreeze_last == 2  # the default for partial trials
    assert job_spec.hyperparameters.learning_rate == 0.004
    assert job_spec.hyperparameters.epochs == 10 and job_spec.hyperparameters.image_size == 32
    assert (job_spec.export, job_spec.quantization) == (["onnx"], ["int8"])
    probe = searches.trial_spec(
        s, {**params, "strategy": "linear_probe"}, ARCHITECTURES["resnet18"]
    )
    assert probe.unfreeze_last is None


def test_a_leaderboard_row_says_what_its_job_and_model_say() -> None:
    s = spec()
    running = searches.describe_trial(s, job("running", 3, 4), None)
    assert (running.value, running.epochs, running.model_id) == (0.53, 3, None)
    assert running.params == {"base_model": "resnet18", "strategy": "partial",
                              "learning_rate": 0.003}  # fmt: skip
    assert running.meets_constraints is None and running.artifact is None
    done = searches.describe_trial(s, job("succeeded", 10, 5), model(2_500_000, 1.5))
    # A succeeded trial's value is its kept model's, not its last epoch's.
    assert done.value == 0.9 and done.artifact == {
        "format": "onnx-int8",
        "size_mb": 2.5,
        "latency_ms": 1.5,
    }
    assert done.meets_constraints is True
    slow = searches.describe_trial(s, job("succeeded", 10, 6), model(2_500_000, 2.5))
    assert slow.meets_constraints is False
    by_loss = searches.describe_trial(spec(objective="val_loss"), job("pruned", 3, 7), None)
    assert by_loss.value == 0.97 and by_loss.pruned


def test_the_pareto_front_keeps_what_no_other_trial_beats_on_all_three() -> None:
    board = [
        row(0, 0.95, latency=3.0, size=10.0),  # the most accurate
        row(1, 0.90, latency=1.0, size=2.0),  # faster and smaller
        row(2, 0.89, latency=1.5, size=3.0),  # beaten by 1 on all three
        row(3, 0.90, latency=1.0, size=2.0),  # equal to 1 on all three: 1 stays
        row(4, 0.80, latency=0.5, size=4.0),  # the fastest
        row(5, None, latency=0.1, size=0.1, status="pruned", artifact=None),
    ]
    assert [t.number for t in pareto_front(board, 1.0)] == [0, 1, 4]
    # Minimising (val_loss): the lowest value wins.
    assert [t.number for t in pareto_front(board[:2], -1.0)] == [1]


def test_the_recommendation_is_the_best_trial_that_meets_the_constraints() -> None:
    s = spec()
    board = [row(0, 0.95, latency=3.0, size=10.0), row(1, 0.90, latency=1.0, size=2.0)]
    chosen, why = recommend(board, s)
    assert chosen is not None and chosen.number == 1
    assert why.startswith("Trial 1 (resnet18) has the best val_accuracy, 0.9000, of the 1")
    assert "latency <= 2 ms, size <= 5 MB on onnx-int8" in why
    none, why_not = recommend(board[:1], s)
    assert none is None
    assert "None of the 1 succeeded trials meets the constraints" in why_not
    assert "3.00 ms and 10.00 MB" in why_not
    assert recommend([], s) == (None, "No trial has succeeded yet.")


@pytest.mark.parametrize(("trials", "startup"), [(1, 2), (8, 2), (16, 4), (40, 10), (500, 10)])
def test_tpe_starts_with_a_quarter_of_the_budget_at_random(trials: int, startup: int) -> None:
    assert studies.startup_trials(trials) == startup


def test_the_space_becomes_one_distribution_per_dimension_given() -> None:
    found = studies.distributions(spec())
    assert sorted(found) == ["base_model", "learning_rate", "strategy"]
    lr = found["learning_rate"]
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)
