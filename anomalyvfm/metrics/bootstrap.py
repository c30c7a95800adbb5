"""How sure a difference of image AUROC or AU-PRO is: a scene-clustered bootstrap interval.

A lighting-stressed test set shows each scene (one object, one defect) under several lights, so
its images are not independent: the same hard scene is hard under every light. Resampling
images would pretend otherwise and give intervals that are too narrow; resampling **scenes**
(every image of a drawn scene comes along, as often as the scene is drawn) keeps what they share.
Both AUROCs of a difference are computed on the same draw, so what the two subsets share cancels
(a paired bootstrap).

The AUROC of a draw is the weighted Mann-Whitney statistic (ties count one half), each image
weighted by how often its scene was drawn: the same value as ``roc_auc_score`` with those
``sample_weight``s, for all draws at once, with the scores sorted once. The AU-PRO of a draw is the
streaming AU-PRO (``au_pro(..., num_bins=k)``) of the weighted sum of each image's histograms
(``au_pro.image_histograms``): a region of an image drawn twice counts twice, like its pixels.

- ``auroc_difference_interval``: one score per image; two subsets of the images (all lights against
  regular light).
- ``paired_auroc_interval``, ``paired_au_pro_interval``: two methods (or settings) on the same test
  images, the first minus the second; ``..._draws`` give each method's own value and the draws of the
  difference, so that differences on independent datasets can be averaged draw by draw
  (``percentile_interval`` of the mean). Each set of maps is read and histogrammed once: its AU-PRO is
  that of the unweighted sum of the histograms the draws reuse.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from anomalyvfm.metrics._io import MapSource, MaskSource, check_lengths
from anomalyvfm.metrics.au_pro import DEFAULT_NUM_BINS, _curve, _Levels, _normalised_area, areas, \
    checked_limits, image_histograms, score_range
from anomalyvfm.metrics.image_metrics import _scores_and_labels, image_auroc
from anomalyvfm.metrics.undefined import undefined

DEFAULT_RESAMPLES = 2000


def weighted_aurocs(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` ``[N]`` against ``labels`` ``[N]`` under each row of ``weights`` ``[R, N]``: ``[R]``.

    A row that gives no weight to the defective images, or none to the good ones, gives NaN.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])  # first position of each tie group
    positive = labels[order] == 1
    ordered = weights[:, order]
    bad = np.add.reduceat(ordered * positive, starts, axis=1)  # [R, groups]
    good = np.add.reduceat(ordered * ~positive, starts, axis=1)
    good_below = np.cumsum(good, axis=1) - good
    pairs = bad.sum(1) * good.sum(1)
    wins = (bad * (good_below + 0.5 * good)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def scene_weights(clusters: Sequence[str], resamples: int, seed: int) -> np.ndarray:
    """``[resamples, N]``: per seeded draw of the scenes (with replacement, as many as there are), how often
    each image's scene (``clusters`` ``[N]``) was drawn."""
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    names, cluster_of = np.unique(np.asarray(clusters, dtype=str), return_inverse=True)
    draws = np.random.default_rng(seed).integers(0, len(names), (resamples, len(names)))
    counts = np.zeros((resamples, len(names)))
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1.0)
    return counts[:, cluster_of]


def percentile_interval(difference: float, draws: np.ndarray, level: float = 0.95) -> dict[str, float]:
    """``{"difference", "low", "high", "resamples"}``: ``difference`` with the ``level`` percentile interval of
    its bootstrap ``draws`` that are defined (not NaN) and how many those are. NaN bounds, with an
    ``UndefinedMetricWarning`` unless the difference itself is NaN (its metric has warned), when none is."""
    draws = draws[~np.isnan(draws)]
    if np.isnan(difference) or not draws.size:
        if not np.isnan(difference):
            undefined("bootstrap interval", "no draw of the scenes defines the difference")
        return {"difference": difference, "low": float("nan"), "high": float("nan"), "resamples": 0}
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return {"difference": difference, "low": float(low), "high": float(high), "resamples": int(draws.size)}


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")


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
    _check_level(level)
    difference = image_auroc(scores[first], labels[first]) - image_auroc(scores[second], labels[second])
    if np.isnan(difference):  # image_auroc already warned
        return percentile_interval(difference, np.empty(0), level)
    weights = scene_weights(clusters, resamples, seed)
    return percentile_interval(difference, weighted_aurocs(scores, labels, weights * first)
                               - weighted_aurocs(scores, labels, weights * second), level)


def paired_auroc_draws(first_scores: ArrayLike, second_scores: ArrayLike, labels: ArrayLike, clusters: Sequence[str],
                       *, resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> tuple[float, float, np.ndarray]:
    """Image AUROC of ``first_scores`` and of ``second_scores`` (``[N]`` each, the same test images, ``labels``
    ``[N]``) and the first minus the second on each seeded draw of the scenes (``clusters`` ``[N]``):
    ``(first, second, [resamples])``, NaN where a draw lacks a class; no draws (``[]``) where either AUROC
    is undefined."""
    first, labels = _scores_and_labels(first_scores, labels)
    second, _ = _scores_and_labels(second_scores, labels)
    check_lengths(first_scores=first, second_scores=second, clusters=clusters)
    first_value, second_value = image_auroc(first, labels), image_auroc(second, labels)
    if np.isnan(first_value - second_value):  # image_auroc already warned
        return first_value, second_value, np.empty(0)
    weights = scene_weights(clusters, resamples, seed)
    return first_value, second_value, weighted_aurocs(first, labels, weights) - weighted_aurocs(second, labels, weights)


def paired_auroc_interval(first_scores: ArrayLike, second_scores: ArrayLike, labels: ArrayLike,
                          clusters: Sequence[str], *, level: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                          seed: int = 0) -> dict[str, float]:
    """``paired_auroc_draws`` as ``{"difference", "low", "high", "resamples"}`` (``percentile_interval``)."""
    _check_level(level)
    first, second, draws = paired_auroc_draws(first_scores, second_scores, labels, clusters, resamples=resamples,
                                              seed=seed)
    return percentile_interval(first - second, draws, level)


class _ImageLevels:
    """Each test image's streaming AU-PRO histograms (``au_pro.image_histograms``) ``[N, k]`` and region
    counts ``[N]`` (N >= 1); ``au_pro`` is the AU-PRO of the test set as it is, ``au_pros(weights)`` that of
    every weighting ``[R, N]`` of its images."""

    def __init__(self, anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource], num_bins: int) -> None:
        low, high = score_range(anomaly_maps)
        parts = list(zip(*image_histograms(anomaly_maps, gt_masks, num_bins, low, high)))
        self.totals, self.region_counts, self.region_weights = (np.stack(p).astype(np.float64) for p in parts[:3])
        self.regions = np.asarray(parts[3], dtype=np.float64)
        self.constant = high == low

    def au_pro(self, fpr_limit: float) -> float:
        """``au_pro(anomaly_maps, gt_masks, fpr_limit, num_bins=k)`` from the histograms (warns where undefined)."""
        levels = _Levels(self.totals.sum(0), self.region_counts.sum(0), self.region_weights.sum(0),
                         int(self.regions.sum()), self.constant)
        return areas(levels, [fpr_limit])[fpr_limit]

    def au_pros(self, weights: np.ndarray, fpr_limit: float, chunk: int = 64) -> np.ndarray:
        out = np.full(len(weights), np.nan)
        for start in range(0, len(weights), chunk):
            block = weights[start:start + chunk]
            totals, region_counts = block @ self.totals, block @ self.region_counts
            region_weights, regions = block @ self.region_weights, block @ self.regions
            for row in range(len(block)):
                levels = _Levels(totals[row], region_counts[row], region_weights[row], regions[row], self.constant)
                if levels.n_regions > 0 and levels.n_defect_free > 0:
                    out[start + row] = _normalised_area(*_curve(levels), fpr_limit)
        return out


def paired_au_pro_draws(first_maps: Sequence[MapSource], second_maps: Sequence[MapSource],
                        gt_masks: Sequence[MaskSource], clusters: Sequence[str], fpr_limit: float = 0.05, *,
                        num_bins: int = DEFAULT_NUM_BINS, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
                        ) -> tuple[float, float, np.ndarray]:
    """AU-PRO up to ``fpr_limit`` of ``first_maps`` and of ``second_maps`` (the same test images; maps and
    masks as for ``au_pro``), streaming with ``num_bins`` bins, and the first minus the second on each
    seeded draw of the scenes (``clusters`` ``[N]``): ``(first, second, [resamples])``. Each value equals
    ``au_pro(maps, gt_masks, fpr_limit, num_bins=num_bins)``, from the same single read of the maps the
    draws use; no draws (``[]``) where either is undefined. Memory: up to 48 bytes per image and bin for
    each set of maps (20 000 bins, 1 000 images: about 1 GB), 24 once its histograms are built."""
    check_lengths(first_maps=first_maps, second_maps=second_maps, gt_masks=gt_masks, clusters=clusters)
    limit, = checked_limits([fpr_limit])  # before any map is read
    if not len(first_maps):
        nan = areas(None, [limit])[limit]  # warns: no test images
        return nan, nan, np.empty(0)
    first, second = _ImageLevels(first_maps, gt_masks, num_bins), _ImageLevels(second_maps, gt_masks, num_bins)
    first_value, second_value = first.au_pro(limit), second.au_pro(limit)
    if np.isnan(first_value - second_value):  # areas already warned
        return first_value, second_value, np.empty(0)
    weights = scene_weights(clusters, resamples, seed)
    return first_value, second_value, first.au_pros(weights, limit) - second.au_pros(weights, limit)


def paired_au_pro_interval(first_maps: Sequence[MapSource], second_maps: Sequence[MapSource],
                           gt_masks: Sequence[MaskSource], clusters: Sequence[str], fpr_limit: float = 0.05, *,
                           num_bins: int = DEFAULT_NUM_BINS, level: float = 0.95,
                           resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> dict[str, float]:
    """``paired_au_pro_draws`` as ``{"difference", "low", "high", "resamples"}`` (``percentile_interval``)."""
    _check_level(level)
    first, second, draws = paired_au_pro_draws(first_maps, second_maps, gt_masks, clusters, fpr_limit,
                                               num_bins=num_bins, resamples=resamples, seed=seed)
    return percentile_interval(first - second, draws, level)
