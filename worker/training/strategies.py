"""Which weights train under each strategy, and with what learning rate.

Frozen parts are put in eval mode as well as requires_grad=False: a frozen BatchNorm in
train mode would still update its running statistics and so change the model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from worker.training import registry
from worker.training.types import TrainConfig


def head_only(cfg: TrainConfig, epoch: int) -> bool:
    """Whether only the head trains in `epoch` (1-based)."""
    if cfg.strategy == "linear_probe":
        return True
    # `full` warms a fresh head up first, so its random gradients do not wreck the backbone.
    return cfg.strategy == "full" and epoch <= cfg.warmup_epochs


def configure_epoch(model: nn.Module, cfg: TrainConfig, epoch: int) -> None:
    """Set requires_grad and train/eval modes for `epoch`."""
    parts = _backbone_parts(model, cfg, head_only(cfg, epoch))
    if parts is None:
        model.requires_grad_(True)
        model.train()
        return
    model.requires_grad_(False)
    model.eval()
    for m in [*parts, registry.head(model, cfg.architecture)]:
        m.requires_grad_(True)
        m.train()


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Backbone weights that ever train, at the reduced rate, then the head at the full rate.

    Parameters frozen in some epochs (warm-up) still belong to a group: an optimizer
    skips a parameter whose grad is None, so they stay untouched until they train.
    """
    head_params = list(registry.head(model, cfg.architecture).parameters())
    head_ids = {id(p) for p in head_params}
    parts = _backbone_parts(model, cfg, head_only=cfg.strategy == "linear_probe")
    pool = model.parameters() if parts is None else (p for m in parts for p in m.parameters())
    backbone = list({id(p): p for p in pool if id(p) not in head_ids}.values())
    groups = [{"params": head_params, "lr": cfg.learning_rate}]
    if backbone:
        lr = cfg.learning_rate * cfg.backbone_lr_multiplier
        groups.insert(0, {"params": backbone, "lr": lr})
    return groups


def frozen_keys(model: nn.Module, cfg: TrainConfig) -> set[str]:
    """State-dict keys that no epoch of this job changes (weights and BatchNorm statistics)."""
    parts = _backbone_parts(model, cfg, head_only=cfg.strategy == "linear_probe")
    if parts is None:
        return set()
    names = {id(m): n for n, m in model.named_modules()}
    live = [registry.head(model, cfg.architecture), *parts]
    # Sequential slices (VGG, ConvNeXt stages) are not named in the model; their layers are.
    prefixes = tuple(names[id(m)] + "." for p in live for m in p.modules() if id(m) in names)
    return {k for k in model.state_dict() if not k.startswith(prefixes)}


def _backbone_parts(model: nn.Module, cfg: TrainConfig, head_only: bool) -> list[nn.Module] | None:
    """The backbone modules that train (None: the whole model)."""
    if head_only:
        return []
    if cfg.strategy == "full":
        return None
    blocks = registry.backbone_blocks(model, cfg.architecture)
    n = cfg.unfreeze_last
    if n is None or not 1 <= n <= len(blocks):
        raise ValueError(
            f"strategy partial needs unfreeze_last between 1 and {len(blocks)} for "
            f"{cfg.architecture}, got {n}"
        )
    return [*blocks[-n:], *registry.tail_modules(model, cfg.architecture)]
