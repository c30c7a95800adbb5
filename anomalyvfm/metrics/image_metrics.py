"""Image-level metrics: one anomaly score and one label (0 good, 1 defective) per test image.

Decision rule, used everywhere in this package (also by ``seg_f1``): an image or pixel is
predicted defective when its score is ``>= threshold``. It is sklearn's rule, so the
threshold that ``f1_max`` returns reproduces its F1 in ``class_f1``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from anomalyvfm.metrics._io import check_lengths
from anomalyvfm.metrics.undefined import undefined


def _scores_and_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """``[N]`` float64 scores and ``[N]`` int labels, validated (NaN scores are a bug: ValueError)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D [N], got shapes {scores.shape} and {labels.shape}")
    check_lengths(scores=scores, labels=labels)
    broken = np.flatnonzero(~np.isfinite(scores))
    if broken.size:
        raise ValueError(f"image score {broken[0]} is {scores[broken[0]]}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0 (good) or 1 (defective), got {np.unique(labels)}")
    return scores, labels.astype(int)


def _missing(labels: np.ndarray, need_good: bool) -> str | None:
    """Why a metric over ``labels`` is undefined, or None."""
    if not labels.size:
        return "no test images"
    if not labels.any():
        return "no defective images"
    if need_good and labels.all():
        return "no good images"
    return None


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of ``scores`` ``[N]`` against ``labels`` ``[N]`` (needs both classes)."""
    scores, labels = _scores_and_labels(scores, labels)
    reason = _missing(labels, need_good=True)
    return undefined("image AUROC", reason) if reason else float(roc_auc_score(labels, scores))


def image_ap(scores: ArrayLike, labels: ArrayLike) -> float:
    """Average precision of ``scores`` ``[N]`` against ``labels`` ``[N]`` (sklearn's step-wise sum)."""
    scores, labels = _scores_and_labels(scores, labels)
    reason = _missing(labels, need_good=False)
    return undefined("image AP", reason) if reason else float(average_precision_score(labels, scores))


def f1_max(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """Best F1 over all thresholds and that threshold: ``(f1, threshold)``, predicting ``score >= threshold``.

    Ties in F1 go to the lowest threshold. NaN, NaN (with a warning) without defective images.
    """
    scores, labels = _scores_and_labels(scores, labels)
    reason = _missing(labels, need_good=False)
    if reason:
        return undefined("F1-max", reason), float("nan")
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]  # the last point (P=1, R=0) has no threshold
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=precision + recall > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def class_f1(scores: ArrayLike, labels: ArrayLike, threshold: float) -> float:
    """F1 of predicting defective when ``score >= threshold``: ``2TP / (2TP + FP + FN)`` over the ``[N]`` images."""
    scores, labels = _scores_and_labels(scores, labels)
    reason = _missing(labels, need_good=False) or ("the threshold is NaN" if np.isnan(threshold) else None)
    if reason:
        return undefined("ClassF1", reason)
    predicted = scores >= threshold
    tp = int(np.count_nonzero(predicted & (labels == 1)))
    return 2 * tp / (int(predicted.sum()) + int(labels.sum()))  # 2TP + FP + FN = (TP + FP) + (TP + FN)
