"""SegF1: pixel-level F1 of anomaly maps binarised at one threshold, pooled over the test set."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from anomalyvfm.metrics._io import MapSource, MaskSource, check_lengths, iter_pairs
from anomalyvfm.metrics.undefined import undefined


def seg_f1(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource], threshold: float | Sequence[float]
           ) -> float:
    """Pixel F1 over all pixels of all test images pooled: TP, FP and FN are summed over images,
    then ``F1 = 2TP / (2TP + FP + FN)`` (not a mean of per-image F1s).

    A pixel is predicted defective when its score is ``>= threshold`` (the package's rule, see
    ``image_metrics``); the official threshold is ``mean_plus_k_std(validation maps, k=3)``.
    ``threshold`` may also hold one value per map ``[N]`` (a rule that cuts each image at its own value, as
    ``model.mask_threshold``). Maps ``[H_i, W_i]`` and masks are arrays or paths, loaded one pair at a time (as in
    ``au_pro``). NaN with a warning when there are no images, no defect pixels, or a threshold is NaN.
    """
    if not check_lengths(anomaly_maps=anomaly_maps, gt_masks=gt_masks):
        return undefined("SegF1", "no test images")
    per_map = np.asarray(threshold, dtype=np.float64)  # float64 keeps float32 maps from rounding the threshold
    if per_map.ndim and per_map.shape != (len(anomaly_maps),):
        raise ValueError(f"threshold must be one value or one per map ({len(anomaly_maps)}), got shape {per_map.shape}")
    per_map = np.broadcast_to(per_map, (len(anomaly_maps),))
    if np.isnan(per_map).any():
        return undefined("SegF1", "the threshold is NaN")
    tp = predicted = defect = 0
    for index, values, mask in iter_pairs(anomaly_maps, gt_masks):
        hit = values >= per_map[index]
        tp += int(np.count_nonzero(hit & mask))
        predicted += int(np.count_nonzero(hit))
        defect += int(np.count_nonzero(mask))
    if not defect:
        return undefined("SegF1", "no defect pixels in the ground truth")
    return 2 * tp / (predicted + defect)  # 2TP + FP + FN = (TP + FP) + (TP + FN)
