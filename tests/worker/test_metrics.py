"""classification_report against scikit-learn on the same predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import classification_report as sk_report
from sklearn.metrics import confusion_matrix as sk_confusion

from worker.training.metrics import classification_report

NAMES = ["cat", "dog", "fox", "owl"]


def predictions(seed: int, n: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, n)  # "owl" never occurs: zero support
    logits = rng.normal(size=(n, 4))
    logits[np.arange(n), y_true] += 1.0
    logits[:, 2] -= 5.0  # "fox" is (almost) never predicted: zero precision denominator
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y_true, probs.argmax(1), probs


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_and_confusion_match_sklearn(seed: int) -> None:
    y_true, y_pred, probs = predictions(seed)
    paths = [f"img/{i}.jpg" for i in range(len(y_true))]
    r = classification_report(y_true, y_pred, probs, NAMES, paths)
    sk = sk_report(
        y_true, y_pred, labels=range(4), target_names=NAMES, output_dict=True, zero_division=0
    )

    assert r["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    for row in r["per_class"]:
        ref = sk[row["name"]]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (ref["precision"], ref["recall"], ref["f1-score"], ref["support"])
        )
    macro = sk["macro avg"]
    assert (r["macro_avg"]["precision"], r["macro_avg"]["recall"], r["macro_avg"]["f1"]) == (
        pytest.approx((macro["precision"], macro["recall"], macro["f1-score"]))
    )
    assert r["confusion_matrix"]["labels"] == NAMES
    assert r["confusion_matrix"]["matrix"] == sk_confusion(y_true, y_pred, labels=range(4)).tolist()


def test_misclassified_most_confident_first_and_capped() -> None:
    y_true, y_pred, probs = predictions(0)
    paths = [f"img/{i}.jpg" for i in range(len(y_true))]
    r = classification_report(y_true, y_pred, probs, NAMES, paths, max_misclassified=5)

    wrong = np.flatnonzero(y_true != y_pred)
    assert r["misclassified_total"] == len(wrong) > 5
    items = r["misclassified"]
    assert len(items) == 5
    confidences = [m["confidence"] for m in items]
    assert confidences == sorted(confidences, reverse=True)
    assert confidences[0] == pytest.approx(probs[wrong, y_pred[wrong]].max())
    top = items[0]
    i = paths.index(top["path"])
    assert (top["true_label"], top["predicted_label"]) == (NAMES[y_true[i]], NAMES[y_pred[i]])
    assert top["true_label"] != top["predicted_label"]


def test_all_correct_has_no_mistakes_and_perfect_scores() -> None:
    y = np.array([0, 1, 2, 3, 3])
    probs = np.eye(4)[y]
    r = classification_report(y, y, probs, NAMES, [str(i) for i in range(5)])
    assert r["accuracy"] == 1.0 and r["misclassified"] == [] and r["misclassified_total"] == 0
    assert r["macro_avg"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert [c["support"] for c in r["per_class"]] == [1, 1, 1, 2]
