"""How sure an image AUROC difference is: a scene-clustered bootstrap interval.

A lighting-stressed test set shows each scene (one object, one defect) under several lights, so
its images are not independent: the same hard scene is hard under every light. Resampling
images would pretend otherwise and give intervals that are too narrow; resampling **scenes**
(every image of a drawn scene comes along, as often as the scene is drawn) keeps what they share.
Both AUROCs of a difference are computed on the same draw, so what the two subsets share cancels
(a paired bootstrap).

The AUROC of a draw is the weighted Mann-Whitney statistic (ties count one half), each image
weighted by how often its scene was drawn: the same value as ``roc_auc_score`` with those
``sample_weight``s, for all draws at once, with the scores sorted once.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from anomalyvfm.metrics.image_metrics import _scores_and_labels, image_auroc
from anomalyvfm.metrics.undefined import undefined

DEFAULT_RESAMPLES = 2000


def weighted_aurocs(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` ``[N]`` against ``labels`` ``[N]`` under each row of ``weights`` ``[R, N]``: ``[R]``.

    A row without positive or without negative weight on either class gives NaN.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # first position of each tie group
    positive = labels[order] == 1
    bad = np.add.reduceat(weights[:, order] * positive, starts, axis=1)  # [R, groups]
    good = np.add.reduceat(weights[:, order] * ~positive, starts, axis=1)
    good_below = np.cumsum(good, axis=1) - good
    pairs = bad.sum(1) * good.sum(1)
    wins = (bad * (good_below + 0.5 * good)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def auroc_difference_interval(scores: ArrayLike, labels: ArrayLike, first: ArrayLike, second: ArrayLike,
                              clusters: Sequence[str], *, level: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                              seed: int = 0) -> dict[str, float]:
    """Image AUROC of the images in ``first`` minus that of the images in ``second``, with a bootstrap interval.

    ``scores``, ``labels`` ``[N]`` as for ``image_auroc``; ``first``, ``second`` ``[N]`` bool: which images
    each AUROC is computed on (they may overlap, e.g. all stressed images against the regular ones);
    ``clusters`` ``[N]``: the scene of each image (``dataset_ad2.scene_of``), the unit that is resampled.
    Returns ``{"difference", "low", "high", "resamples"}``: the difference on the data as it is, the
    ``level`` percentile interval over ``resamples`` seeded draws of the scenes, and how many draws
    defined both AUROCs (a draw that leaves a subset without good or without defective images is
    left out). NaN (with an ``UndefinedMetricWarning``) where the difference itself is undefined.
    """
    scores, labels = _scores_and_labels(scores, labels)
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    if first.shape != scores.shape or second.shape != scores.shape or len(clusters) != len(scores):
        raise ValueError(f"first {first.shape}, second {second.shape} and clusters ({len(clusters)}) must each "
                         f"have one entry per image ({len(scores)})")
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"level must lie in (0, 1) and resamples be positive, got {level} and {resamples}")
    difference = image_auroc(scores[first], labels[first]) - image_auroc(scores[second], labels[second])
    if np.isnan(difference):
        return {"difference": difference, "low": float("nan"), "high": float("nan"), "resamples": 0}
    names, cluster_of = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(names), (resamples, len(names)))
    counts = np.zeros((resamples, len(names)))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    weights = counts[:, cluster_of]  # [R, N]: how often each image's scene was drawn
    differences = weighted_aurocs(scores, labels, weights * first) - weighted_aurocs(scores, labels, weights * second)
    differences = differences[~np.isnan(differences)]
    if not differences.size:
        return {"difference": difference, "low": undefined("AUROC difference interval", "no draw defines both AUROCs"),
                "high": float("nan"), "resamples": 0}
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(differences, [tail, 100 - tail])
    return {"difference": difference, "low": float(low), "high": float(high), "resamples": int(differences.size)}
