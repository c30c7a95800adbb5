"""The product's decision thresholds, chosen where defects and lighting changes are known.

The AD 2 paper's baseline rule, mean + 3 std of the validation/good maps, sees regular light
and no defect: under a lighting change the whole map rises above it (every pixel flagged), and
it ignores how high defects score. Instead, the pixel and the image threshold each maximise F1
on the validation images plus, for each of up to ``CALIBRATION_SOURCES`` of them, one
defect-free lighting variant and one pasted synthetic defect with its mask
(``synthetic.make_calibration_samples``); never on test images. ``evaluate`` still reports the
baseline rule beside it (``seg_f1_baseline_rule``) for comparison with the AD 2 paper.

Maps are compared at the network input size of the first scale: the saved maps are the same
maps upsampled to the original size, so the value distribution, and the threshold, carry over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from anomalyvfm import metrics, timing
from anomalyvfm.model import RawScores, ScaleModel, fused_scores, full_size_map
from anomalyvfm.synthetic import make_calibration_samples

if TYPE_CHECKING:
    from anomalyvfm.fit import Runner

CALIBRATION_SOURCES = 30  # validation images that get a lighting variant and a synthetic defect each


@dataclass
class Thresholds:
    """``pixel``: anomaly-map value, ``image``: image score; a value ``>=`` the threshold is anomalous."""

    pixel: float
    image: float
    record: dict  # what they were chosen on and the F1 reached there (saved in fit.json)


def calibrate_thresholds(runner: Runner, scales: Sequence[ScaleModel], load_validation: Callable[[int], torch.Tensor],
                         validation: Sequence[RawScores], seed: int) -> Thresholds:
    """Thresholds maximising pixel and image F1 on validation images with lighting variants and synthetic defects.

    ``scales`` have their score fusion fitted; ``validation``: per scale the
    raw scores of the validation images; ``load_validation(i)``: validation image ``i`` ``[3, h, w]`` in
    [0, 1] at the first scale's input size. Falls back to the baseline rule where F1 is undefined.
    """
    count = len(validation[0].grids)
    with timing.stage("synthetic"):
        samples = make_calibration_samples(load_validation, count, CALIBRATION_SOURCES, seed)
    synthetic = []
    for scale, raw in zip(scales, validation):
        images = [_resized(s.image, raw.input_sizes[s.source]) for s in samples]
        synthetic.append(runner.raw_scores_of_images(scale, images))

    with timing.stage("maps"):
        maps = [full_size_map(validation, i, validation[0].input_sizes[i]) for i in range(count)]
        maps += [full_size_map(synthetic, j, tuple(s.mask.shape)) for j, s in enumerate(samples)]
    masks = [np.zeros(m.shape, bool) for m in maps[:count]] + [s.mask.numpy() for s in samples]
    scores = np.concatenate([fused_scores(runner.method, scales, validation),
                             fused_scores(runner.method, scales, synthetic)])
    labels = np.array([0] * count + [int(bool(s.defect)) for s in samples])

    pixel_f1, pixel = metrics.f1_optimal_threshold(maps, masks)
    image_f1, image = metrics.f1_max(scores, labels)
    fallback = []
    if not math.isfinite(pixel):
        pixel, fallback = metrics.mean_plus_k_std(maps[:count]), fallback + ["pixel"]
    if not math.isfinite(image):
        image, fallback = metrics.mean_plus_k_std(scores[:count]), fallback + ["image"]
    record = {"pixel_threshold": pixel, "image_threshold": image, "pixel_f1": pixel_f1, "image_f1": image_f1,
              "validation_images": count, "lighting_variants": sum(not s.defect for s in samples),
              "synthetic_defects": sum(bool(s.defect) for s in samples),
              "baseline_rule_fallback": fallback}
    return Thresholds(pixel, image, record)


def _resized(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``image`` ``[3, h, w]`` at ``size`` (another scale's input size), or itself when it already is."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp(0, 1)
