"""The linear probe's feature cache reports progress and can be stopped while it runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.worker.conftest import CLASS_NAMES, tiny_config
from worker.training import checkpoint, engine, features, registry
from worker.training.types import Hooks, ImageSet, Progress, StopReason, TrainingStopped

CPU = torch.device("cpu")
FEATURE_BATCH = 16  # tiny_split: 64 train + 32 val images -> 4 + 2 feature batches
FEATURE_BATCHES = 6


def new_model() -> nn.Module:
    torch.manual_seed(0)
    return registry.build_model(
        "resnet18", 10, weights="none", cache_dir=Path("unused"), image_size=16
    )


@pytest.fixture
def extractor_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Small feature batches, and the batch size of every call of the frozen backbone."""
    monkeypatch.setattr(engine, "EVAL_BATCH_SIZE", FEATURE_BATCH)
    calls: list[int] = []
    original = registry.feature_extractor

    def counted(model: nn.Module, architecture: str) -> nn.Module:
        extractor = original(model, architecture)
        extractor.register_forward_hook(lambda m, args, out: calls.append(len(args[0])))
        return extractor

    monkeypatch.setattr(registry, "feature_extractor", counted)
    return calls


@pytest.mark.parametrize("interval", [0.0, 3600.0], ids=["every_batch", "throttled"])
def test_feature_phase_reports_progress_before_training(
    tiny_split: tuple[ImageSet, ImageSet],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extractor_calls: list[int],
    interval: float,
) -> None:
    monkeypatch.setattr(engine, "PROGRESS_INTERVAL_SECONDS", interval)
    cfg = tiny_config(strategy="linear_probe", epochs=2, learning_rate=1e-2)
    seen: list[Progress] = []
    engine.fit(
        new_model(), cfg, *tiny_split, CLASS_NAMES, Hooks(on_progress=seen.append), tmp_path, CPU
    )

    assert extractor_calls == [16, 16, 16, 16, 16, 16]
    phases = [p.phase for p in seen]
    assert "features" in phases and "training" in phases
    first_training = phases.index("training")
    assert all(p == "features" for p in phases[:first_training])
    assert "features" not in phases[first_training:]
    feats = seen[:first_training]
    steps = [p.step for p in feats]
    if interval == 0.0:
        assert steps == list(range(1, FEATURE_BATCHES + 1))
    else:  # the first report and, always, the last batch
        assert steps == [1, FEATURE_BATCHES]
    for p in feats:
        assert p.epoch == 0 and p.total_epochs == 2 and p.fraction == 0.0
        assert p.steps_per_epoch == FEATURE_BATCHES
        assert p.eta_seconds is not None and p.eta_seconds >= 0
    assert feats[-1].eta_seconds == 0.0
    # Training progress is unchanged: epochs from 1, the default phase.
    assert seen[first_training].epoch == 1 and seen[-1].step == seen[-1].steps_per_epoch


def test_cancel_during_feature_phase_stops_before_all_batches(
    tiny_split: tuple[ImageSet, ImageSet], tmp_path: Path, extractor_calls: list[int]
) -> None:
    cfg = tiny_config(strategy="linear_probe", epochs=2, learning_rate=1e-2)
    seen: list[Progress] = []

    def should_stop() -> StopReason | None:
        return "cancelled" if any(p.phase == "features" for p in seen) else None

    hooks = Hooks(on_progress=seen.append, should_stop=should_stop)
    with pytest.raises(TrainingStopped) as stopped:
        engine.fit(new_model(), cfg, *tiny_split, CLASS_NAMES, hooks, tmp_path, CPU)

    assert (stopped.value.reason, stopped.value.epoch, stopped.value.step) == ("cancelled", 0, 0)
    assert 1 <= len(extractor_calls) < FEATURE_BATCHES
    assert all(p.phase == "features" for p in seen)
    # Nothing half-done is left behind: a restart computes the features again.
    assert not (tmp_path / features.FILENAME).exists()
    assert checkpoint.load(tmp_path) is None
    extractor_calls.clear()
    result = engine.fit(new_model(), cfg, *tiny_split, CLASS_NAMES, Hooks(), tmp_path, CPU)
    assert len(extractor_calls) == FEATURE_BATCHES
    assert result.resumed_from_epoch is None and len(result.history) == 2
