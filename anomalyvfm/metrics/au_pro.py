"""AU-PRO: area under the per-region-overlap curve up to a false positive rate limit.

Definition (MVTec AD / AD 2 evaluation code): one threshold sweep over all pixels of all
test images. Ground-truth regions are the 8-connected components of each mask. At
threshold ``t``, FPR = fraction of all defect-free pixels with score ``>= t`` and PRO = mean
over all regions of all images of the fraction of the region's pixels with score ``>= t``
(every region counts once, whatever its size). Pixels with equal scores switch together;
the curve starts at (0, 0). It is integrated with the trapezoidal rule over
``FPR in [0, fpr_limit]``, PRO interpolated linearly at ``fpr_limit``, and divided by
``fpr_limit`` so a perfect map gives 1.0.

Two ways to compute it, with the same curve code:

- exact (``num_bins=None``): all scores are sorted once; each distinct score is a curve point.
  Memory: up to 8 bytes per pixel of the whole test set (the loaded maps and their float32
  concatenation) plus about 28 bytes per distinct score.
- streaming (``num_bins=k``): never holds more than one map. Pass 1 finds the global
  min/max, pass 2 histograms every pixel into ``k`` equal bins over it: defect-free pixel
  counts and region pixels weighted by 1 / region size, so PRO(t) = cumulative weight /
  number of regions. Each bin edge is then a curve point; the exact curve's points in between
  are replaced by a straight line. With ``DEFAULT_NUM_BINS`` (20 000) the result agrees with
  the exact one within 1e-3 on realistic maps (``tests/test_metrics_au_pro.py``); it can be
  coarser if a few extreme outliers stretch the score range far beyond the defects' scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
from scipy import ndimage

from anomalyvfm.metrics._io import MapSource, MaskSource, check_lengths, iter_maps, iter_pairs
from anomalyvfm.metrics.undefined import undefined

DEFAULT_NUM_BINS = 20_000
_EIGHT_CONNECTED = np.ones((3, 3), bool)


@dataclass
class _Levels:
    """Pixel counts per score level (distinct score or bin), levels ascending."""

    totals: np.ndarray  # [L] all pixels at the level
    region_counts: np.ndarray  # [L] of which region (defect) pixels
    region_weights: np.ndarray  # [L] sum of 1 / (size of the pixel's region) over those
    n_regions: int
    constant: bool  # one distinct score over all pixels

    @property
    def n_defect_free(self) -> int:
        return int(self.totals.sum() - self.region_counts.sum())


def _regions(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Weight 1 / (region size) of each mask pixel (``mask`` ``[H, W]`` bool, raster order) and the region count."""
    if not mask.any():  # good images: skip the labelling
        return np.empty(0), 0
    labels, count = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labels.ravel())
    return 1.0 / sizes[labels[mask]], count


def _exact_levels(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource]) -> _Levels:
    scores, region_scores, region_weights, n_regions = [], [], [], 0
    for _, values, mask in iter_pairs(anomaly_maps, gt_masks):
        weights, count = _regions(mask)
        scores.append(values.ravel())
        region_scores.append(values[mask])
        region_weights.append(weights)
        n_regions += count
    everything = np.concatenate(scores)  # float32 unless a map was wider: ties stay ties
    del scores
    everything.sort()  # in place: the concatenation is the only full-size copy
    ends = np.flatnonzero(everything[1:] != everything[:-1])  # last index of each distinct score but the top one
    values = np.append(everything[ends], everything[-1])
    totals = np.diff(ends, prepend=-1, append=everything.size - 1)
    del everything, ends
    level = np.searchsorted(values, np.concatenate(region_scores))
    return _Levels(totals, np.bincount(level, minlength=values.size),
                   np.bincount(level, weights=np.concatenate(region_weights), minlength=values.size),
                   n_regions, values.size == 1)


def _bin_index(values: np.ndarray, low: float, high: float, num_bins: int) -> np.ndarray:
    """Bin of each value of ``values`` ``[H, W]``: floor((v - low) / (high - low) * k), flat, in [0, k - 1]."""
    if high == low:
        return np.zeros(values.size, np.intp)
    # float32 is 3x faster and exact enough (a value may move by ~1e-3 of a bin) for float32 maps;
    # float64 maps, and ranges so small that the scale would overflow float32, use float64.
    dtype = np.float32 if values.dtype == np.float32 and high - low > 1e-30 else np.float64
    scaled = values.ravel().astype(dtype)
    scaled -= dtype(low)
    scaled *= dtype(num_bins / (high - low))
    index = scaled.astype(np.intp)
    return np.clip(index, 0, num_bins - 1, out=index)  # the maximum lands in the last bin


def _check_binning(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource], num_bins: int) -> None:
    if num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer or None, got {num_bins}")
    check_lengths(anomaly_maps=anomaly_maps, gt_masks=gt_masks)


def score_range(anomaly_maps: Sequence[MapSource]) -> tuple[float, float]:
    """The lowest and highest score over all maps (one pass, one map at a time)."""
    low, high = np.inf, -np.inf
    for _, values in iter_maps(anomaly_maps):
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    return low, high


def image_histograms(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource], num_bins: int,
                     low: float, high: float) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
    """Each test image's share of the streaming AU-PRO in ``num_bins`` equal bins over ``[low, high]``
    (``score_range`` of all maps), one image at a time: ``(pixel counts [k], region pixel counts [k],
    region pixel weights 1 / region size [k], number of regions)``. Summed over the images they are the
    binned curve's levels; weighted sums are those of a resampled test set (``metrics.bootstrap``)."""
    _check_binning(anomaly_maps, gt_masks, num_bins)
    no_regions = np.zeros(num_bins, np.int64)
    for _, values, mask in iter_pairs(anomaly_maps, gt_masks):
        index = _bin_index(values, low, high, num_bins)
        weights, count = _regions(mask)
        if not count:
            yield np.bincount(index, minlength=num_bins), no_regions, np.zeros(num_bins), 0
            continue
        in_region = index[mask.ravel()]
        yield (np.bincount(index, minlength=num_bins), np.bincount(in_region, minlength=num_bins),
               np.bincount(in_region, weights=weights, minlength=num_bins), count)


def _binned_levels(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource], num_bins: int) -> _Levels:
    _check_binning(anomaly_maps, gt_masks, num_bins)  # before the first pass over the maps
    low, high = score_range(anomaly_maps)
    totals = np.zeros(num_bins, np.int64)
    region_counts = np.zeros(num_bins, np.int64)
    region_weights = np.zeros(num_bins)
    n_regions = 0
    for image_totals, image_region_counts, image_region_weights, count in image_histograms(
            anomaly_maps, gt_masks, num_bins, low, high):
        totals += image_totals
        region_counts += image_region_counts
        region_weights += image_region_weights
        n_regions += count
    return _Levels(totals, region_counts, region_weights, n_regions, high == low)


def _levels(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource], num_bins: int | None) -> _Levels:
    if num_bins is None:
        return _exact_levels(anomaly_maps, gt_masks)
    return _binned_levels(anomaly_maps, gt_masks, num_bins)


def _undefined_reason(levels: _Levels | None) -> str | None:
    if levels is None:
        return "no test images"
    if levels.n_regions == 0:
        return "no defect regions in the ground truth (no defective images)"
    if levels.n_defect_free == 0:
        return "no defect-free pixels (no good pixels to measure false positives on)"
    return None


def _curve(levels: _Levels) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) ``[L + 1]`` each, from the highest threshold down, starting at (0, 0)."""
    keep = levels.totals > 0  # empty bins add no point
    defect_free = (levels.totals - levels.region_counts)[keep][::-1]
    weights = levels.region_weights[keep][::-1]
    fpr = np.concatenate(([0.0], np.cumsum(defect_free))) / levels.n_defect_free
    pro = np.concatenate(([0.0], np.cumsum(weights))) / levels.n_regions
    return fpr, np.minimum(pro, 1.0)  # float sums of 1/size may end a hair above 1


def _normalised_area(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Trapezoid area under PRO(FPR) for FPR in [0, limit], PRO interpolated at ``limit``, divided by ``limit``."""
    end = int(np.searchsorted(fpr, limit, side="right"))  # points [0, end) have FPR <= limit
    x, y = fpr[:end], pro[:end]
    if end < fpr.size:  # the next point lies beyond the limit: cut its segment there
        x0, y0, x1, y1 = fpr[end - 1], pro[end - 1], fpr[end], pro[end]
        x, y = np.append(x, limit), np.append(y, y0 + (limit - x0) * (y1 - y0) / (x1 - x0))
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1])) / 2 / limit)


def normalised_pro_area(fpr: np.ndarray, pro: np.ndarray, limit: float) -> float:
    """Area under a PRO curve for FPR in ``[fpr[0], limit]``, PRO interpolated at ``limit``, divided by ``limit``.

    ``fpr``: ascending ``[K]``, ``pro``: ``[K]``, both finite. NaN when the curve is empty or does
    not reach ``limit`` (as in MVTec's evaluation code, the area is not extrapolated).
    """
    fpr, pro = np.asarray(fpr, dtype=np.float64), np.asarray(pro, dtype=np.float64)
    if not fpr.size or not fpr[0] <= limit <= fpr[-1]:
        return float("nan")
    return _normalised_area(fpr, pro, limit)


def au_pro_multi(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource],
                 fpr_limits: Iterable[float] = (0.05, 0.3), *, num_bins: int | None = None) -> dict[float, float]:
    """AU-PRO for each limit in ``fpr_limits``, from one pass over the data: ``{limit: value}``.

    ``anomaly_maps[i]`` is a ``[H_i, W_i]`` array or a ``.npy``/``.tif(f)`` path, ``gt_masks[i]`` a
    ``[H_i, W_i]`` array, a ``.png``/``.npy`` path or None (all zeros); paths load one at a time.
    ``num_bins=None`` computes exactly, ``num_bins=k`` streams with ``k`` bins (module docstring).
    Undefined cases (no images, no regions, no defect-free pixels, all scores equal) give NaN
    with an UndefinedMetricWarning; NaN/inf in a map, or mismatched shapes, raise ValueError.
    """
    limits = checked_limits(fpr_limits)  # before any map is read
    return areas(_levels(anomaly_maps, gt_masks, num_bins) if len(anomaly_maps) else None, limits)


def checked_limits(fpr_limits: Iterable[float]) -> list[float]:
    """``fpr_limits`` as floats; ValueError unless each lies in (0, 1]."""
    limits = [float(limit) for limit in fpr_limits]
    if not all(0 < limit <= 1 for limit in limits):
        raise ValueError(f"every FPR limit must be in (0, 1], got {limits}")
    return limits


def areas(levels: _Levels | None, limits: Sequence[float]) -> dict[float, float]:
    """AU-PRO for each limit in ``limits`` (each in (0, 1]) from the levels of the whole test set (None: no
    test images): ``{limit: value}``, NaN with an UndefinedMetricWarning where it is undefined."""
    reason = _undefined_reason(levels)
    if reason is None and levels.constant:
        reason = "all anomaly scores are equal (a single threshold ranks nothing)"
    if reason is not None:
        nan = undefined("AU-PRO", reason)
        return {limit: nan for limit in limits}
    fpr, pro = _curve(levels)
    return {limit: _normalised_area(fpr, pro, limit) for limit in limits}


def au_pro(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource], fpr_limit: float = 0.05, *,
           num_bins: int | None = None) -> float:
    """AU-PRO up to ``fpr_limit`` (normalised: perfect = 1.0); arguments as in ``au_pro_multi``."""
    return au_pro_multi(anomaly_maps, gt_masks, (fpr_limit,), num_bins=num_bins)[float(fpr_limit)]


def pro_curve(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource], *,
              num_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The whole PRO curve for plots: ``(fpr, pro)``, ``[P]`` each, FPR ascending from 0 to 1.

    Arguments as in ``au_pro_multi``. All-equal scores give the line (0, 0) -> (1, 1); no images,
    no regions or no defect-free pixels give two empty arrays with an UndefinedMetricWarning.
    """
    levels = _levels(anomaly_maps, gt_masks, num_bins) if len(anomaly_maps) else None
    reason = _undefined_reason(levels)
    if reason is not None:
        undefined("PRO curve", reason)
        return np.empty(0), np.empty(0)
    return _curve(levels)
