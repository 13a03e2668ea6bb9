"""What adaptation did, measured before and after, and the guard that may refuse it.

Unlabeled target data cannot say whether a model got better, but it shows the classic
failure of entropy minimisation and self-training: predictions collapsing onto a few
classes. The guard keeps the unadapted model when any of these holds (the report names the first):

- target evaluation accuracy fell by more than MAX_TARGET_EVAL_DROP;
- collapse: the share of the most predicted class on the target rose above
  max(COLLAPSE_MIN_SHARE, before + COLLAPSE_MIN_RISE), i.e. a model that spread its
  predictions now puts most of the target in one class. Skipped when a labelled target
  evaluation set is given and its accuracy did not fall: labels beat the heuristic (a
  target that really is mostly one class would otherwise be refused).
- source validation accuracy fell by more than MAX_SOURCE_VAL_DROP (the model forgot
  the task it was trained for).

The source check measures the weights, not the normalisation: adabn and tent give the
shipped model the target's BatchNorm statistics on purpose, which no longer fit source
images (AdaBN's premise: each domain normalises with its own statistics). So both before
and after, source validation accuracy is taken with BatchNorm statistics re-estimated on
source training images; the shipped model's own source accuracy is reported beside it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from worker.adapt import adabn
from worker.adapt.common import batchnorm_layers
from worker.training import engine
from worker.training.types import ImageSet, TrainConfig

COLLAPSE_MIN_SHARE = 0.5
COLLAPSE_MIN_RISE = 0.25
MAX_TARGET_EVAL_DROP = 0.0  # any drop on labelled target data refuses
MAX_SOURCE_VAL_DROP = 0.10
# Source training images that re-estimate BatchNorm statistics for the source check.
SOURCE_STATS_IMAGES = 1024
# Small floating-point slack so an unchanged accuracy never counts as a drop.
_EPS = 1e-9


@dataclass(frozen=True)
class Snapshot:
    """A model's numbers at one moment (before or after adaptation)."""

    source_val_accuracy: float  # with source BatchNorm statistics: what the guard checks
    source_val_accuracy_as_shipped: float
    target_counts: np.ndarray  # predictions per class on the unlabeled target
    target_mean_confidence: float
    target_eval_accuracy: float | None
    # Per labelled target image: predicted right? (auto's paired test compares these)
    target_eval_correct: np.ndarray | None = None

    @property
    def top_share(self) -> float:
        return float(self.target_counts.max() / max(1, self.target_counts.sum()))


def snapshot(
    model: nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    data: tuple[ImageSet, ImageSet],
    target: np.ndarray,
    target_eval: ImageSet | None,
) -> Snapshot:
    """`data` is (source train, source val)."""
    probs = engine.predict_proba(model, target, cfg, device)
    correct = None
    if target_eval is not None:
        correct = engine.evaluate(model, target_eval, cfg, device)[2].argmax(1) == np.asarray(
            target_eval.labels
        )
    return Snapshot(
        source_val_accuracy=source_accuracy(model, cfg, device, *data),
        source_val_accuracy_as_shipped=engine.evaluate(model, data[1], cfg, device)[1],
        target_counts=np.bincount(probs.argmax(1), minlength=cfg.num_classes),
        target_mean_confidence=float(probs.max(1).mean()),
        target_eval_accuracy=None if correct is None else float(correct.mean()),
        target_eval_correct=correct,
    )


def source_accuracy(
    model: nn.Module,
    cfg: TrainConfig,
    device: torch.device,
    source_train: ImageSet,
    source_val: ImageSet,
) -> float:
    """Source val accuracy of the weights, with BatchNorm statistics of source images."""
    if not batchnorm_layers(model):
        return engine.evaluate(model, source_val, cfg, device)[1]
    probe = copy.deepcopy(model)
    rng = np.random.default_rng(cfg.seed)
    idx = np.sort(rng.permutation(len(source_train))[:SOURCE_STATS_IMAGES])
    adabn.recalibrate(probe, np.asarray(source_train.images[idx]), cfg, device)
    return engine.evaluate(probe, source_val, cfg, device)[1]


def guard(before: Snapshot, after: Snapshot) -> str | None:
    """Why the adapted model must not ship, or None when it may (first failed check)."""
    for check in (_target_eval_fell, _collapsed, source_forgotten):
        reason = check(before, after)
        if reason:
            return reason
    return None


def _target_eval_fell(before: Snapshot, after: Snapshot) -> str | None:
    b, a = before.target_eval_accuracy, after.target_eval_accuracy
    if b is None or a is None or a >= b - MAX_TARGET_EVAL_DROP - _EPS:
        return None
    return f"target evaluation accuracy fell from {b:.3f} to {a:.3f}"


def _collapsed(before: Snapshot, after: Snapshot) -> str | None:
    if after.target_eval_accuracy is not None:
        return None  # labelled target data did not fall (checked first): it outranks this
    limit = max(COLLAPSE_MIN_SHARE, before.top_share + COLLAPSE_MIN_RISE)
    if after.top_share <= limit:
        return None
    return (
        f"predictions collapsed: the most predicted class went from {before.top_share:.0%} "
        f"to {after.top_share:.0%} of the target (limit {limit:.0%})"
    )


def source_forgotten(before: Snapshot, after: Snapshot) -> str | None:
    b, a = before.source_val_accuracy, after.source_val_accuracy
    if a >= b - MAX_SOURCE_VAL_DROP - _EPS:
        return None
    return (
        f"source validation accuracy fell from {b:.3f} to {a:.3f} "
        f"(more than {MAX_SOURCE_VAL_DROP:.2f})"
    )


def build(
    method: str,
    options: dict[str, Any],
    before: Snapshot,
    after: Snapshot,
    class_names: list[str],
    guard_reason: str | None,
) -> dict[str, Any]:
    """The JSON-able report that goes into AdaptResult.report."""
    report: dict[str, Any] = {
        "method": method,
        "options": options,
        "kept": "unadapted" if guard_reason else "adapted",
        "source_val_accuracy": _pair(before.source_val_accuracy, after.source_val_accuracy),
        "source_val_accuracy_as_shipped": _pair(
            before.source_val_accuracy_as_shipped, after.source_val_accuracy_as_shipped
        ),
        "target": {
            "num_images": int(before.target_counts.sum()),
            "predicted_classes": _pair(_counts(before, class_names), _counts(after, class_names)),
            "top_class_share": _pair(before.top_share, after.top_share),
            "mean_confidence": _pair(before.target_mean_confidence, after.target_mean_confidence),
        },
        "guard": {
            "collapse_min_share": COLLAPSE_MIN_SHARE,
            "collapse_min_rise": COLLAPSE_MIN_RISE,
            "max_target_eval_drop": MAX_TARGET_EVAL_DROP,
            "max_source_val_drop": MAX_SOURCE_VAL_DROP,
        },
    }
    if before.target_eval_accuracy is not None:
        report["target_eval_accuracy"] = _pair(
            before.target_eval_accuracy, after.target_eval_accuracy
        )
    if guard_reason:
        report["guard_reason"] = guard_reason
    return report


def summary(report: dict[str, Any], history: list[dict[str, Any]]) -> str:
    """What happened, in words: the method, how far it moved what it optimises, the
    guard's verdict and what it cost on the source."""
    said: list[str] = []
    method = report["method"]
    if "auto" in report:
        said.append(_auto_summary(report["auto"]))
        method = report["auto"]["chosen"]
        if method is None:
            return ". ".join(said) + ". The trained model was kept."
    ran = f"{method} ran"
    if history and "domain_accuracy" in history[0]:
        first, last = history[0]["domain_accuracy"], history[-1]["domain_accuracy"]
        ran += (
            f"; its domain classifier told source from target {first:.0%} of the time in "
            f"the first epoch and {last:.0%} in the last (50 % is chance: aligned features)"
        )
    elif history and "class_confusion" in history[0]:
        first, last = history[0]["class_confusion"], history[-1]["class_confusion"]
        ran += f"; the target's class confusion went from {first:.3f} to {last:.3f}"
    said.append(ran)
    if report["kept"] == "adapted":
        said.append("The guard kept the adapted model")
    else:
        reason = report["guard_reason"]
        said.append(f"The guard refused the adapted model ({reason}) and kept the trained one")
    src = report["source_val_accuracy"]
    cost = 100 * (src["after"] - src["before"])
    said.append(
        f"Source validation accuracy went from {src['before']:.1%} to {src['after']:.1%} "
        f"({cost:+.1f} points) with the adapted weights"
    )
    if "target_eval_accuracy" in report:
        tgt = report["target_eval_accuracy"]
        said.append(
            f"On the labelled target set, accuracy went from {tgt['before']:.1%} to "
            f"{tgt['after']:.1%}"
        )
    return ". ".join(said) + "."


def _auto_summary(auto: dict[str, Any]) -> str:
    ran = [c for c in auto["candidates"] if "target_eval_accuracy" in c]
    scores = ", ".join(f"{c['method']} {c['target_eval_accuracy']:.1%}" for c in ran)
    other = [f"{c['method']} {c['status']}" for c in auto["candidates"] if c["status"] != "ran"]
    said = (
        f"auto tried {', '.join(auto['order'])} in that order, in {auto['seconds']:.0f} s of a "
        f"{auto['time_budget_seconds']:.0f} s budget"
    )
    if scores:
        said += f"; on the labelled target set: {scores}"
    if other:
        said += f" ({'; '.join(other)})"
    test = auto["paired_test"]
    if test is not None:
        said += (
            f". Against the unadapted model, {auto['chosen']} got {test['gained']} images right "
            f"that it had wrong and {test['lost']} wrong that it had right (paired test: "
            f"p = {test['p_value']:.2g}, needs under {test['alpha']:.2g})"
        )
    return said


def _pair(before: Any, after: Any) -> dict[str, Any]:
    return {"before": before, "after": after}


def _counts(s: Snapshot, class_names: list[str]) -> dict[str, int]:
    return dict(zip(class_names, s.target_counts.tolist(), strict=True))
