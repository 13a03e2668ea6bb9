"""The entry point the job runner calls between training and export."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from worker.adapt import adabn, auto, dann, mcc, pseudo_label, report, tent
from worker.adapt.common import AdaptJob, AdaptResult, option, preserved_modes
from worker.errors import AdaptationNotApplicable
from worker.training import checkpoint, engine
from worker.training.types import Hooks, ImageSet, TrainConfig

__all__ = ["AdaptResult", "AdaptationNotApplicable", "adapt"]

Method = Callable[[AdaptJob], list[dict[str, Any]]]
METHODS: dict[str, Method] = {
    "adabn": adabn.run,
    "tent": tent.run,
    "dann": dann.run,
    "mcc": mcc.run,
    "pseudo_label": pseudo_label.run,
}
# Checked before anything runs, so an inapplicable spec fails fast (auto skips the
# candidate instead).
CHECKS: dict[str, Callable[[nn.Module], None]] = {"adabn": adabn.check, "tent": tent.check}


def adapt(
    model: nn.Module,
    options: Mapping[str, Any],
    *,
    cfg: TrainConfig,
    source_val: ImageSet,
    source_train: ImageSet,
    target: np.ndarray,
    target_eval: ImageSet | None,
    device: torch.device,
    hooks: Hooks,
    class_names: Sequence[str] | None = None,
) -> AdaptResult:
    """Adapt the trained `model` (in place) to the unlabeled `target` images.

    Measures the model before and after; when report.guard() refuses the adapted model,
    the original weights go back into `model` and into the result (kept="unadapted").
    method "auto" runs the candidates of worker/adapt/auto.py instead and keeps the best.
    Raises AdaptationNotApplicable (method does not fit the model), ValueError (bad
    options or target images) and TrainingStopped (hooks.should_stop() asked).
    """
    method = options.get("method")
    if method not in METHODS and method != "auto":
        raise ValueError(
            f"unknown domain adaptation method {method!r}; one of {sorted(METHODS)} or auto"
        )
    if method == "auto" and target_eval is None:
        raise ValueError("method auto needs a labelled target evaluation set (target_eval)")
    if method != "auto":
        CHECKS.get(method, lambda m: None)(model)
    _check_target(target, cfg)
    names = (
        list(class_names) if class_names is not None else [str(i) for i in range(cfg.num_classes)]
    )
    if len(names) != cfg.num_classes:
        raise ValueError(f"num_classes is {cfg.num_classes} but {len(names)} class names")
    model.to(device)
    original = checkpoint.cpu_state(model)
    sources = (source_train, source_val)
    before = report.snapshot(model, cfg, device, sources, target, target_eval)

    def run(name: str, run_hooks: Hooks) -> auto.Attempt:
        """`name` from the trained weights; the model holds its result after."""
        CHECKS.get(name, lambda m: None)(model)
        model.load_state_dict(original)
        started = time.monotonic()
        job = AdaptJob(
            model, {**options, "method": name}, cfg, *sources, target, device, run_hooks, names
        )
        engine.seed_everything(cfg.seed)
        with preserved_modes(model):
            history = METHODS[name](job)
        after = report.snapshot(model, cfg, device, sources, target, target_eval)
        seconds = time.monotonic() - started
        return auto.Attempt(name, after, checkpoint.cpu_state(model), history, seconds)

    extra: dict[str, Any] = {}
    if method == "auto":
        budget = float(option(options, "time_budget_seconds"))
        outcome = auto.choose(before, run, hooks, budget)
        extra["auto"] = auto.section(outcome, budget)
        attempt, reason = outcome.chosen, outcome.reason
    else:
        attempt = run(method, hooks)
        reason = report.guard(before, attempt.after)
    if reason is None and attempt is not None:
        state = attempt.state_dict
        model.load_state_dict(state)
    else:
        model.load_state_dict(original)
        state = original
    after = before if attempt is None else attempt.after
    history = [] if attempt is None else attempt.history
    built = {**report.build(method, dict(options), before, after, names, reason), **extra}
    return AdaptResult(
        state_dict=state,
        kept="unadapted" if reason else "adapted",
        report={**built, "summary": report.summary(built, history)},
        history=history,
    )


def _check_target(target: np.ndarray, cfg: TrainConfig) -> None:
    size = cfg.image_size
    if target.dtype != np.uint8 or target.ndim != 4 or target.shape[1:] != (size, size, 3):
        raise ValueError(
            f"target images must be uint8 (N, {size}, {size}, 3), got {target.dtype} "
            f"{tuple(target.shape)}"
        )
    # BatchNorm in train mode (adabn, tent, dann) cannot take a batch of one image.
    if len(target) < 2:
        raise ValueError(f"domain adaptation needs at least 2 target images, got {len(target)}")
