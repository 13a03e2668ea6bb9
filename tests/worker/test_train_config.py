"""The job spec's hyperparameters reach the engine: none is dropped on the way."""

from __future__ import annotations

from dataclasses import asdict, fields

from app.schemas.jobs import Hyperparameters, JobCreate
from worker.job_inputs import train_config
from worker.training.types import TrainConfig


def test_every_hyperparameter_is_a_train_config_field() -> None:
    assert set(Hyperparameters.model_fields) <= {f.name for f in fields(TrainConfig)}


def test_train_config_takes_the_spec_values() -> None:
    hp = Hyperparameters(epochs=7, augmentation="strong", random_invert=0.5, image_size=32, seed=3)
    spec = JobCreate(
        dataset_id="ds_x",
        base_model="resnet18",
        strategy="partial",
        unfreeze_last=2,
        hyperparameters=hp,
    )
    cfg = asdict(train_config(spec, "resnet18", 4))
    assert {k: cfg[k] for k in hp.model_dump()} == hp.model_dump()
    assert (cfg["strategy"], cfg["unfreeze_last"], cfg["num_classes"]) == ("partial", 2, 4)
