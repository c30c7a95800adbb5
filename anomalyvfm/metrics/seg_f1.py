"""SegF1: pixel-level F1 of anomaly maps binarised at one threshold, pooled over the test set."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from anomalyvfm.metrics._io import MapSource, MaskSource, check_lengths, iter_pairs
from anomalyvfm.metrics.undefined import undefined


def seg_f1(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource], threshold: float) -> float:
    """Pixel F1 over all pixels of all test images pooled: TP, FP and FN are summed over images,
    then ``F1 = 2TP / (2TP + FP + FN)`` (not a mean of per-image F1s).

    A pixel is predicted defective when its score is ``>= threshold`` (the package's rule, see
    ``image_metrics``); the official threshold is ``mean_plus_k_std(validation maps, k=3)``.
    Maps ``[H_i, W_i]`` and masks are arrays or paths, loaded one pair at a time (as in ``au_pro``).
    NaN with a warning when there are no images, no defect pixels, or the threshold is NaN.
    """
    if not check_lengths(anomaly_maps=anomaly_maps, gt_masks=gt_masks):
        return undefined("SegF1", "no test images")
    if np.isnan(threshold):
        return undefined("SegF1", "the threshold is NaN")
    threshold = np.float64(threshold)  # a float64 scalar keeps float32 maps from rounding the threshold
    tp = predicted = defect = 0
    for _, values, mask in iter_pairs(anomaly_maps, gt_masks):
        hit = values >= threshold
        tp += int(np.count_nonzero(hit & mask))
        predicted += int(np.count_nonzero(hit))
        defect += int(np.count_nonzero(mask))
    if not defect:
        return undefined("SegF1", "no defect pixels in the ground truth")
    return 2 * tp / (predicted + defect)  # 2TP + FP + FN = (TP + FP) + (TP + FN)
