"""Tent (Wang et al., ICLR 2021): minimise prediction entropy on the target.

Only the normalisation layers' affine scale and shift train; BatchNorm normalises with
the batch's statistics meanwhile, as in the paper. Graft ships a model that predicts
single images, so the BatchNorm statistics it keeps are re-estimated on the target with
the adapted weights at the end (AdaBN): the shipped model normalises like Tent did.

Tent also accepts models with LayerNorm or GroupNorm and no BatchNorm (ConvNeXt, ViT),
as later test-time adaptation work does (e.g. SAR, Niu et al. ICLR 2023, which finds
them steadier than BatchNorm under small or skewed batches); their affine parameters
train the same way and no statistics need re-estimating. A model with no normalisation
layer with affine parameters (VGG16) is not applicable.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from worker.adapt import adabn
from worker.adapt.common import AdaptJob, batchnorm_layers, cycled_batches
from worker.errors import AdaptationNotApplicable
from worker.training import engine

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
# The paper's Adam rate for its CIFAR experiments (its ImageNet runs use SGD at 2.5e-4
# with batch 64); options.learning_rate overrides it.
DEFAULT_LR = 1e-3
# Progress events per run (tent has steps, not epochs).
EVENTS = 10


def norm_parameters(model: nn.Module) -> list[nn.Parameter]:
    params = [
        p
        for m in model.modules()
        if isinstance(m, NORM_TYPES)
        for p in (m.weight, m.bias)
        if isinstance(p, nn.Parameter)
    ]
    return list({id(p): p for p in params}.values())


def check(model: nn.Module) -> None:
    if not norm_parameters(model):
        raise AdaptationNotApplicable(
            "tent trains the scale and shift of normalisation layers (BatchNorm, LayerNorm, "
            "GroupNorm), and this model has none with affine parameters; use dann or "
            "pseudo_label"
        )


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy of the softmax predictions."""
    log_p = logits.float().log_softmax(1)
    return -(log_p.exp() * log_p).sum(1).mean()


def run(job: AdaptJob) -> list[dict[str, Any]]:
    model, cfg = job.model, job.cfg
    check(model)
    params = norm_parameters(model)
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.eval()  # dropout off; BatchNorm alone switches to batch statistics
    for bn in batchnorm_layers(model):
        bn.train()
    optimizer = torch.optim.Adam(params, lr=job.learning_rate(DEFAULT_LR))
    precision = engine.resolve_precision(cfg, job.device)
    inputs = job.target_inputs()
    steps = int(job.option("steps"))
    batches = cycled_batches(len(inputs), cfg.batch_size, cfg.seed, 1, steps)
    every = max(1, steps // EVENTS)
    window: list[float] = []
    for step, idx in enumerate(batches):
        job.check_stop(1, step)
        with precision.autocast():
            loss = entropy(model(inputs.batch(idx, 1, step)[0]))
        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
        window.append(loss.item())
        if (step + 1) % every == 0 or step + 1 == steps:
            job.record("step", step + 1, steps, {"entropy": sum(window) / len(window)})
            window.clear()
    if batchnorm_layers(model):
        adabn.recalibrate(model, job.target, cfg, job.device, job.check_stop)
    return job.history
