"""Pixel and image thresholds.

- ``mean_plus_k_std``: from defect-free data (the official SegF1 rule uses k = 3 on validation maps).
- ``quantile_threshold``: from defect-free data, at a chosen pixel false-positive rate (``q = 0.999``: one
  normal pixel in a thousand reaches it).
- ``f1_optimal_threshold``: from data with defects (e.g. validation images with synthetic defects):
  the pixel threshold that maximises the pooled pixel F1 of ``seg_f1``.
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from anomalyvfm.metrics._io import MapSource, MaskSource, check_lengths, iter_maps, iter_pairs
from anomalyvfm.metrics.au_pro import _bin_index
from anomalyvfm.metrics.undefined import undefined


def _is_map_sequence(values_or_maps: ArrayLike | Sequence[MapSource]) -> bool:
    if isinstance(values_or_maps, np.ndarray) or not isinstance(values_or_maps, Sequence) or not values_or_maps:
        return False
    first = values_or_maps[0]
    return isinstance(first, (str, os.PathLike)) or np.ndim(first) >= 1


def _finite_values(values: ArrayLike) -> np.ndarray:
    """An array of any shape as float64 ``[N]``; ValueError naming the first NaN/inf value."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    broken = np.flatnonzero(~np.isfinite(flat))
    if broken.size:
        raise ValueError(f"value {broken[0]} is {flat[broken[0]]}")
    return flat


def mean_plus_k_std(values_or_maps: ArrayLike | Sequence[MapSource], k: float = 3.0) -> float:
    """``mean + k * std`` over ALL values, std the population one (ddof=0).

    ``values_or_maps`` is an array of any shape (e.g. image scores ``[N]``), or a sequence of
    ``[H_i, W_i]`` maps / ``.npy`` / ``.tif(f)`` paths streamed one at a time: float64 running
    sums of ``v - c`` and ``(v - c)^2``, with ``c`` the first map's mean so that a large mean does
    not cancel the variance away. Empty input gives NaN with a warning; NaN/inf raise ValueError.
    """
    if not _is_map_sequence(values_or_maps):
        values = _finite_values(values_or_maps)
        if not values.size:
            return undefined("mean + k std", "no values")
        return float(values.mean() + k * values.std())
    count, total, squares, shift = 0, 0.0, 0.0, 0.0
    for index, values in iter_maps(values_or_maps):
        centred = values.ravel().astype(np.float64)
        if index == 0:
            shift = float(centred.mean())
        centred -= shift
        count += centred.size
        total += float(centred.sum())
        squares += float(centred @ centred)
    mean = total / count
    return shift + mean + k * math.sqrt(max(squares / count - mean * mean, 0.0))


def quantile_threshold(values_or_maps: ArrayLike | Sequence[MapSource], q: float = 0.999) -> float:
    """The ``q``-quantile of ALL values (numpy's default, linear between order statistics): on defect-free maps
    the level that a share of about ``1 - q`` of the normal pixels reaches, i.e. a threshold with that pixel
    false-positive rate on them. Unlike ``mean_plus_k_std`` it does not assume a shape for the upper tail.

    ``values_or_maps`` as in ``mean_plus_k_std``; maps are loaded one at a time and their values kept (4 bytes a
    pixel for float32 maps). ``q`` in [0, 1]; empty input gives NaN with a warning; NaN/inf raise ValueError.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    if _is_map_sequence(values_or_maps):
        values = np.concatenate([m.ravel() for _, m in iter_maps(values_or_maps)])
    else:
        values = _finite_values(values_or_maps)
    if not values.size:
        return undefined("quantile threshold", "no values")
    return float(np.quantile(values, q))


def _best_level(levels: np.ndarray, totals: np.ndarray, defects: np.ndarray) -> tuple[float, float]:
    """``(F1, threshold)`` of the best level: ``levels`` ``[L]`` ascending scores, ``totals``/``defects`` ``[L]`` the
    pixels (all / defect) a threshold at that level adds. Ties in F1 go to the lowest level."""
    predicted = np.cumsum(totals[::-1])[::-1]  # pixels with score >= level
    tp = np.cumsum(defects[::-1])[::-1]
    # Exact integer counts and correctly rounded division: equal F1 values compare equal, so the tie rule holds.
    f1 = 2 * tp / (predicted + tp[0]).astype(np.float64)
    best = int(np.argmax(f1))  # the first maximum, levels ascending: the lowest threshold
    return float(f1[best]), float(levels[best])


def _exact_f1_levels(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource]
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every distinct score ascending ``[L]``, with its pixel count and defect pixel count."""
    scores, defect_scores = [], []
    for _, values, mask in iter_pairs(anomaly_maps, gt_masks):
        scores.append(values.ravel())
        defect_scores.append(values[mask])
    everything = np.concatenate(scores)  # float32 unless a map was wider: ties stay ties
    del scores
    levels, totals = np.unique(everything, return_counts=True)
    del everything
    defects = np.bincount(np.searchsorted(levels, np.concatenate(defect_scores)), minlength=levels.size)
    return levels, totals, defects


def _binned_f1_levels(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource], num_bins: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-empty bins of ``num_bins`` equal bins over the global score range, one map in memory at a time.

    Each bin's level is the lowest score in it: binning is monotone in the score, so ``score >= level``
    selects exactly the pixels of that bin and the bins above, and the F1 found is ``seg_f1`` at that level.
    """
    if num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer or None, got {num_bins}")
    low, high = np.inf, -np.inf
    for _, values in iter_maps(anomaly_maps):  # pass 1: the global score range
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    lowest = np.full(num_bins, np.inf)
    totals = np.zeros(num_bins, np.int64)
    defects = np.zeros(num_bins, np.int64)
    for _, values, mask in iter_pairs(anomaly_maps, gt_masks):  # pass 2: histograms and each bin's lowest score
        index = _bin_index(values, low, high, num_bins)
        np.minimum.at(lowest, index, values.ravel())
        totals += np.bincount(index, minlength=num_bins)
        defects += np.bincount(index[mask.ravel()], minlength=num_bins)
    filled = totals > 0
    return lowest[filled], totals[filled], defects[filled]


def f1_optimal_threshold(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource], *,
                         num_bins: int | None = None) -> tuple[float, float]:
    """The best pooled pixel F1 over all thresholds and that threshold: ``(f1, threshold)``.

    Same definition as ``seg_f1`` (a pixel is defective when ``score >= threshold``; TP, FP and FN
    summed over all images), so ``seg_f1(maps, masks, threshold) == f1``. Maps ``[H_i, W_i]`` and
    masks are arrays or paths as in ``seg_f1``. ``num_bins=None`` tries every distinct score (all
    scores sorted at once: about 8 bytes per pixel of the whole set); ``num_bins=k`` streams, one map
    in memory at a time, and tries the lowest score of each of ``k`` equal bins over the global
    [min, max] range: its F1 is at most the exact one, and close to it for ``k`` in the thousands.
    Ties in F1 go to the lowest threshold. NaN, NaN (with a warning) without images or defect pixels.
    """
    if not check_lengths(anomaly_maps=anomaly_maps, gt_masks=gt_masks):
        return undefined("F1-optimal threshold", "no test images"), float("nan")
    if num_bins is None:
        levels, totals, defects = _exact_f1_levels(anomaly_maps, gt_masks)
    else:
        levels, totals, defects = _binned_f1_levels(anomaly_maps, gt_masks, num_bins)
    if not defects.any():
        return undefined("F1-optimal threshold", "no defect pixels in the ground truth"), float("nan")
    return _best_level(levels, totals, defects)
