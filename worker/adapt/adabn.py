"""AdaBN (Li et al. 2016): re-estimate every BatchNorm layer's statistics on the target.

Only the running mean and variance (and the batch counter) change: no weight moves, so
the method cannot overfit and needs no labels, no learning rate and a single pass.
The target images go through the job's training augmentation, as the batches that
gave the trained statistics did (bench/RESULTS_adapt.md shows why that matters).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from worker.adapt.common import (
    AdaptJob,
    batchnorm_layers,
    even_batches,
    preserved_modes,
    unlabeled,
)
from worker.errors import AdaptationNotApplicable
from worker.training import engine
from worker.training.types import TrainConfig

# Large batches make each batch's statistics close to the target's; this is the size the
# engine already evaluates with, and without gradients it fits the same memory.
BATCH_SIZE = engine.EVAL_BATCH_SIZE


def check(model: nn.Module) -> None:
    if not batchnorm_layers(model):
        raise AdaptationNotApplicable(
            "adabn re-estimates BatchNorm statistics, and this model has no BatchNorm layer; "
            "use tent (LayerNorm/GroupNorm models), dann or pseudo_label"
        )


def run(job: AdaptJob) -> list[dict[str, Any]]:
    recalibrate(job.model, job.target, job.cfg, job.device, job.check_stop)
    layers = len(batchnorm_layers(job.model))
    job.record("step", 1, 1, {"images": len(job.target), "layers": layers})
    return job.history


def recalibrate(
    model: nn.Module,
    images: np.ndarray,
    cfg: TrainConfig,
    device: torch.device,
    check_stop: Callable[[int, int], None] = lambda epoch, step: None,
) -> None:
    """Replace the BatchNorm statistics of `model` by those of uint8 `images`."""
    layers = batchnorm_layers(model)
    check(model)
    # A trained model's statistics were gathered on its augmented training batches (crops,
    # colour jitter, random inversion), so the target's are gathered the same way: a model
    # trained with random_invert learnt under statistics of both polarities at once, and
    # one-polarity target statistics would be unlike anything it saw.
    mode = engine.train_augmentation(cfg)
    inputs = engine.ImageInputs(unlabeled(images), cfg, device, augmentation=mode)
    precision = engine.resolve_precision(cfg, device)
    momenta = [bn.momentum for bn in layers]
    with preserved_modes(model):
        model.eval()  # dropout and everything else off ...
        for bn in layers:
            bn.reset_running_stats()
            bn.momentum = None  # ... a cumulative average: every batch counts the same
            bn.train()  # ... and only BatchNorm normalises with, and records, batch statistics
        try:
            with torch.no_grad(), precision.autocast():
                for step, idx in enumerate(even_batches(len(inputs), BATCH_SIZE)):
                    check_stop(1, step)
                    model(inputs.batch(idx, 0, step)[0])
        finally:
            for bn, momentum in zip(layers, momenta, strict=True):
                bn.momentum = momentum
