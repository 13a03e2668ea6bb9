"""The evaluation report of a trained model, in plain numpy (the worker ships no sklearn).

Definitions follow scikit-learn's classification_report with zero_division=0: a class
that is never predicted has precision 0, one with no support has recall 0, and the
macro averages run over every class the model knows, present in the data or not.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts with rows the true class and columns the predicted class."""
    flat = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_report(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    paths: list[str],
    max_misclassified: int = 100,
) -> dict[str, Any]:
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    cm = confusion_matrix(y_true, y_pred, len(class_names))
    precision, recall, f1 = _per_class_scores(cm)
    support = cm.sum(axis=1)
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        **_balanced(cm),
        "num_samples": len(y_true),
        "per_class": [
            {
                "name": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
        "macro_avg": {
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "f1": float(f1.mean()),
        },
        "confusion_matrix": {"labels": list(class_names), "matrix": cm.tolist()},
        **_misclassified(y_true, y_pred, probs, class_names, paths, max_misclassified),
    }


def balanced_scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """Balanced accuracy (mean recall over the classes present) and macro F1."""
    cm = confusion_matrix(np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64), num_classes)
    return _balanced(cm)


def _balanced(cm: np.ndarray) -> dict[str, float]:
    # Balanced accuracy is the mean of per-class recalls: accuracy on balanced classes.
    _, recall, f1 = _per_class_scores(cm)
    present = cm.sum(axis=1) > 0
    return {
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1.mean()),
    }


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" weights, n / (classes * count): each class weighs the
    same in the loss in all (a class absent from training gets weight 0)."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes)
    present = counts > 0
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


def _per_class_scores(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    tp = np.diag(cm).astype(np.float64)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, actual)
    # 2tp / (2tp + fp + fn) equals the harmonic mean and is 0, not NaN, when tp is 0.
    f1 = _safe_div(2 * tp, predicted + actual)
    return precision, recall, f1


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def _misclassified(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    paths: list[str],
    limit: int,
) -> dict[str, Any]:
    wrong = np.flatnonzero(y_true != y_pred)
    confidence = np.asarray(probs)[wrong, y_pred[wrong]] if len(wrong) else np.empty(0)
    # Most confident mistakes first: they point at label noise or a real blind spot.
    order = wrong[np.argsort(-confidence, kind="stable")][:limit]
    conf_of = dict(zip(wrong.tolist(), confidence.tolist(), strict=True))
    return {
        "misclassified": [
            {
                "path": paths[i],
                "true_label": class_names[y_true[i]],
                "predicted_label": class_names[y_pred[i]],
                "confidence": float(conf_of[i]),
            }
            for i in order.tolist()
        ],
        "misclassified_total": len(wrong),
    }
