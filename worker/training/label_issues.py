"""Suspected label errors among a job's training images, found with cleanlab.

Confident learning (Northcutt et al., JAIR 2021, as cleanlab's `find_label_issues`)
needs out-of-sample predicted probabilities for every training image. They come from
a cross-validated linear probe on the trained model's features: the images are split
into folds, a logistic regression fits on all folds but one and predicts that one,
so no image is judged by a probe that saw its label. It is cheap next to training
(the features of a linear probe are the job's own cache).

The probe is out of sample; the features are not always. After `linear_probe` they
come from the pretrained backbone, which never saw these labels, and the search works
(bench/bench_label_issues.py: 75 % of planted flips found on Fashion-MNIST, at 57 %
precision). After
`full` or `partial` training the features were learned from the same noisy labels
and carry them: the same benchmark finds almost none. BENCHMARKS.md has the table.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

# cleanlab and scikit-learn are imported where they are used: together they cost a
# worker process 2.5 s at start-up, and only a finishing job needs them.

FOLDS = 5
# The probe's inverse regularisation (scikit-learn's C) on standardised features. A
# weak one (C=1) fits the folds' label noise and class overlap with confident wrong
# probabilities; on Fashion-MNIST with the ImageNet backbone, 3-fold CV on log loss
# over 1e-3..1 picks 0.01 and costs 12x the fits, so it is fixed here.
PROBE_C = 0.01
# A suspect must also be one whose given label the probe finds unlikely: confident
# learning counts overlap between classes (shirt and T-shirt) as noise, and without
# this bound it flagged 4 images per planted flip (BENCHMARKS.md).
MAX_GIVEN_PROBABILITY = 0.05
# Suspects listed in a report (the total counts them all).
MAX_LISTED = 100
# Past this many training images the search is skipped: their features are held in
# memory (up to 4096 floats each) and each fold fits a probe on them.
MAX_IMAGES = 20_000
METHOD = (
    f"cleanlab find_label_issues (prune_by_noise_rate) on {FOLDS}-fold out-of-sample "
    f"probabilities of a logistic regression (C={PROBE_C}) on the trained model's "
    f"features, keeping those whose given label has a probability under "
    f"{MAX_GIVEN_PROBABILITY}"
)


def out_of_sample_probs(features: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    """Each image's class probabilities from a probe fitted without it (labels 0..K-1,
    every class present at least twice)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = int(min(FOLDS, np.bincount(labels).min()))
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=PROBE_C))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on tiny folds
        probs = cross_val_predict(probe, features, labels, cv=cv, method="predict_proba")
    return np.asarray(probs, dtype=np.float64)


def label_issues(
    features: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    paths: list[str],
    seed: int,
) -> dict[str, Any]:
    """{"label_issues": [{path, given_label, suggested_label, score}, ...] worst first,
    "label_issues_total", "label_issues_method"}; "label_issues_skipped" says why
    there are none when the search could not run."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    present = np.unique(labels)
    counts = np.bincount(labels, minlength=len(class_names))[present]
    if len(present) < 2 or counts.min() < 2 or len(labels) > MAX_IMAGES:
        why = (
            f"over {MAX_IMAGES} training images"
            if len(labels) > MAX_IMAGES
            else "needs two classes with at least two training images each"
        )
        return {"label_issues": [], "label_issues_total": 0, "label_issues_skipped": why}
    # Re-indexed so that the probabilities' columns are the classes present, in order.
    dense = np.searchsorted(present, labels)
    probs = out_of_sample_probs(np.asarray(features, dtype=np.float32), dense, seed)
    # n_jobs=1: by default cleanlab forks a multiprocessing pool (one process per core),
    # and a fork of a worker process that runs a heartbeat thread and torch's thread
    # pools can deadlock on a lock held at the fork (seen: a job hung here).
    flagged = find_label_issues(dense, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    given = probs[np.arange(len(dense)), dense]
    ranked = [int(i) for i in flagged if given[i] < MAX_GIVEN_PROBABILITY]
    quality = get_label_quality_scores(dense, probs)
    listed = [
        {
            "path": paths[i],
            "given_label": class_names[present[dense[i]]],
            "suggested_label": class_names[present[int(probs[i].argmax())]],
            # Low is suspect: the out-of-sample probability of the given label.
            "label_quality": float(quality[i]),
        }
        for i in ranked[:MAX_LISTED]
    ]
    return {
        "label_issues": listed,
        "label_issues_total": len(ranked),
        "label_issues_method": METHOD,
    }
