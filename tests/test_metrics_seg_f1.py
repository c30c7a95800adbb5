"""SegF1: pixel F1 pooled over all test images."""

import numpy as np
import pytest
from PIL import Image

from anomalyvfm.metrics import seg_f1
from tests.reference_metrics import reference_seg_f1

# Image A: defect {.9, .5}, defect-free {.7, .1}; image B: defect {.2}, defect-free {.6, .4, .3}.
MAPS = [np.array([[0.9, 0.5], [0.7, 0.1]]), np.array([[0.2, 0.6, 0.4, 0.3]])]
MASKS = [np.array([[1, 1], [0, 0]]), np.array([[1, 0, 0, 0]])]


def test_hand_computed_and_pooled_over_images():
    # Threshold 0.5 (">="): A: TP 2 (.9, .5), FP 1 (.7); B: FN 1 (.2), FP 1 (.6).
    # Pooled: 2TP / (2TP + FP + FN) = 4 / (4 + 2 + 1) = 4/7.
    # (Mean of per-image F1s would be (4/5 + 0) / 2 = 2/5.)
    assert seg_f1(MAPS, MASKS, 0.5) == pytest.approx(4 / 7)
    assert seg_f1(MAPS, MASKS, 0.5) == pytest.approx(reference_seg_f1(MAPS, MASKS, 0.5))
    # Just above 0.5 the .5 defect pixel is missed: TP 1, FP 2, FN 2 -> 2 / 6.
    assert seg_f1(MAPS, MASKS, 0.50001) == pytest.approx(1 / 3)


def test_float32_maps_are_compared_in_float64():
    # float32(0.1) > 0.1: it passes ">= 0.1" in float64, while a float32 comparison would round the
    # threshold 0.1 + 1e-9 down to float32(0.1) and wrongly pass it there too.
    scores = [np.array([[0.1, 0.0]], np.float32)]
    mask = [np.array([[1, 0]])]
    assert seg_f1(scores, mask, 0.1) == 1.0
    assert seg_f1(scores, mask, float(np.float32(0.1)) + 1e-9) == 0.0


def test_random_maps_and_paths_match_the_reference(tmp_path):
    rng = np.random.default_rng(0)
    maps = [rng.random(shape).astype(np.float32) for shape in [(12, 9), (7, 15), (10, 10)]]
    masks = [rng.random(m.shape) < 0.2 for m in maps]
    expected = reference_seg_f1(maps, masks, 0.7)
    assert seg_f1(maps, masks, 0.7) == pytest.approx(expected, abs=1e-12)
    for index, (scores, mask) in enumerate(zip(maps, masks)):
        np.save(tmp_path / f"{index}.npy", scores)
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"{index}.png")
    paths = [tmp_path / f"{i}.npy" for i in range(3)], [tmp_path / f"{i}.png" for i in range(3)]
    assert seg_f1(*paths, 0.7) == pytest.approx(expected, abs=1e-12)


def test_one_threshold_per_map():
    # A cut at .8 (.9 only: TP 1) and B at .15 (all four: TP 1, FP 3): TP 2, predicted 5, defect 3 -> 4 / 8.
    assert seg_f1(MAPS, MASKS, [0.8, 0.15]) == pytest.approx(0.5)
    # The same value for every map is the single threshold.
    assert seg_f1(MAPS, MASKS, [0.45, 0.45]) == seg_f1(MAPS, MASKS, 0.45)
    with pytest.raises(ValueError, match=r"one value or one per map \(2\), got shape \(3,\)"):
        seg_f1(MAPS, MASKS, [0.1, 0.2, 0.3])
