"""mean + k std over image scores and over streamed maps."""

import numpy as np
import pytest
import tifffile

from anomalyvfm.metrics import (UndefinedMetricWarning, f1_optimal_threshold, mean_plus_k_std, quantile_threshold,
                                seg_f1)
from tests.reference_metrics import reference_f1_optimal_threshold


def test_image_scores():
    # mean 2, population std sqrt(((1-2)^2 + 0 + (3-2)^2) / 3) = sqrt(2/3).
    assert mean_plus_k_std([1.0, 2.0, 3.0]) == pytest.approx(2 + 3 * np.sqrt(2 / 3))
    assert mean_plus_k_std(np.array([1.0, 2.0, 3.0]), k=1.0) == pytest.approx(2 + np.sqrt(2 / 3))


def test_maps_of_mixed_sizes_and_paths_equal_numpy_on_all_values(tmp_path):
    rng = np.random.default_rng(0)
    # A large mean and a small spread: naive sums of squares would cancel most digits of the variance.
    maps = [(1000 + 0.01 * rng.standard_normal(shape)).astype(np.float32) for shape in [(40, 50), (64, 32), (7, 9)]]
    values = np.concatenate([m.ravel().astype(np.float64) for m in maps])
    expected = values.mean() + 3 * values.std()
    assert mean_plus_k_std(maps) == pytest.approx(expected, rel=1e-12)
    np.save(tmp_path / "a.npy", maps[0])
    tifffile.imwrite(tmp_path / "b.tiff", maps[1])
    paths = [tmp_path / "a.npy", str(tmp_path / "b.tiff"), maps[2]]
    assert mean_plus_k_std(paths) == pytest.approx(expected, rel=1e-12)


def test_nan_raises():
    with pytest.raises(ValueError, match="value 1 is nan"):
        mean_plus_k_std([1.0, np.nan])
    with pytest.raises(ValueError, match="anomaly map 1 contains NaN"):
        mean_plus_k_std([np.zeros((2, 2)), np.full((2, 2), np.nan)])


# -- quantile_threshold ---------------------------------------------------------------------------------
def test_quantile_threshold_by_hand():
    # Values 0..10: the 0.9-quantile is 9; at 0.95 it lies halfway between 9 and 10 (linear).
    values = np.arange(11.0)
    assert quantile_threshold(values, 0.9) == pytest.approx(9.0)
    assert quantile_threshold(values, 0.95) == pytest.approx(9.5)
    assert quantile_threshold(values, 1.0) == 10.0 and quantile_threshold(values, 0.0) == 0.0


def test_quantile_threshold_of_maps_flags_the_chosen_share_of_normal_pixels(tmp_path):
    rng = np.random.default_rng(1)
    maps = [rng.gamma(2.0, size=shape).astype(np.float32) for shape in [(100, 120), (80, 64), (9, 7)]]
    threshold = quantile_threshold(maps, 0.999)
    values = np.concatenate([m.ravel() for m in maps])
    assert threshold == pytest.approx(float(np.quantile(values, 0.999)))
    flagged = np.count_nonzero(values >= threshold) / values.size
    assert abs(flagged - 0.001) <= 1 / values.size  # one normal pixel in a thousand, to one pixel
    np.save(tmp_path / "a.npy", maps[0])
    tifffile.imwrite(tmp_path / "b.tiff", maps[1])
    assert quantile_threshold([tmp_path / "a.npy", str(tmp_path / "b.tiff"), maps[2]], 0.999) == threshold


def test_quantile_threshold_bad_input():
    with pytest.raises(ValueError, match=r"q must lie in \[0, 1\], got 99.9"):
        quantile_threshold([1.0, 2.0], 99.9)
    with pytest.raises(ValueError, match="value 1 is nan"):
        quantile_threshold([1.0, np.nan])
    with pytest.raises(ValueError, match="anomaly map 1 contains NaN"):
        quantile_threshold([np.zeros((2, 2)), np.full((2, 2), np.nan)])
    with pytest.warns(UndefinedMetricWarning, match="no values"):
        assert np.isnan(quantile_threshold(np.array([])))


# -- f1_optimal_threshold ---------------------------------------------------------------------------
GOOD_MAP = np.array([[0.1, 0.2], [0.3, 0.4]])
BAD_MAP = np.array([[0.9, 0.35], [0.6, 0.2]])
BAD_MASK = np.array([[1, 0], [1, 0]])


@pytest.mark.parametrize("num_bins", [None, 1000])
def test_f1_optimal_threshold_on_a_constructed_case(num_bins):
    # Two defect pixels (.9, .6). At .9: TP 1, predicted 1 -> 2/3; at .6: TP 2, predicted 2 -> 1;
    # at .4: predicted 3 -> 4/5; lower thresholds add only false positives. mean + 3 std is far above .9.
    maps, masks = [GOOD_MAP, BAD_MAP], [None, BAD_MASK]
    assert f1_optimal_threshold(maps, masks, num_bins=num_bins) == (1.0, 0.6)
    assert mean_plus_k_std(maps) > 0.9
    assert seg_f1(maps, masks, 0.6) == 1.0


def test_f1_ties_go_to_the_lowest_threshold():
    # Defects .9 and .7, good pixels .8 and .75 (rest .1): at .9 F1 = 2/3, at .7 TP 2 of 4 predicted -> 4/6 = 2/3.
    scores = np.array([[0.9, 0.8, 0.75, 0.7, 0.1, 0.1]])
    mask = np.array([[1, 0, 0, 1, 0, 0]])
    assert f1_optimal_threshold([scores], [mask]) == (pytest.approx(2 / 3), 0.7)


def _blob_maps(seed: int, quantum: float | None = None) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Noisy maps ``[H, W]`` of mixed sizes, bright where a rectangular defect is; ``quantum`` rounds (ties)."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for index, shape in enumerate([(12, 15), (9, 11), (14, 10), (8, 8)]):
        values = rng.random(shape).astype(np.float32)
        mask = None
        if index % 2 == 0:
            mask = np.zeros(shape, bool)
            mask[2:6, 3:8] = True
            values[mask] += 0.6 * rng.random(int(mask.sum())).astype(np.float32)
        maps.append(np.round(values / quantum) * quantum if quantum else values)
        masks.append(mask)
    return maps, masks


@pytest.mark.parametrize("seed, quantum", [(0, None), (1, None), (2, 0.05), (3, 0.2)])
def test_f1_optimal_threshold_equals_the_slow_reference_and_seg_f1(seed, quantum):
    maps, masks = _blob_maps(seed, quantum)
    f1, threshold = f1_optimal_threshold(maps, masks)
    expected_f1, expected_threshold = reference_f1_optimal_threshold(maps, [np.zeros(m.shape) if k is None else k
                                                                           for m, k in zip(maps, masks)])
    assert f1 == pytest.approx(expected_f1, abs=1e-12)
    assert threshold == expected_threshold
    assert seg_f1(maps, masks, threshold) == pytest.approx(f1, abs=1e-12)


def test_streaming_agrees_with_exact_and_reads_paths(tmp_path):
    rng = np.random.default_rng(4)
    maps, masks = [], []
    for index in range(6):  # realistic-ish: smooth noise with brighter defect blobs
        values = rng.normal(0.0, 1.0, (60, 80)).astype(np.float32)
        mask = np.zeros((60, 80), bool)
        if index % 2:
            mask[10 + index:30 + index, 20:45] = True
            values[mask] += rng.normal(2.5, 1.0, int(mask.sum())).astype(np.float32)
        np.save(tmp_path / f"{index}.npy", values)
        maps.append(tmp_path / f"{index}.npy")
        masks.append(mask)
    exact_f1, exact_threshold = f1_optimal_threshold(maps, masks)
    streamed_f1, streamed_threshold = f1_optimal_threshold(maps, masks, num_bins=20_000)
    assert streamed_f1 <= exact_f1 and streamed_f1 == pytest.approx(exact_f1, abs=1e-3)
    assert streamed_threshold == pytest.approx(exact_threshold, abs=1e-2)
    # The streamed threshold is a real score, so it reproduces its F1 exactly; a few bins cost F1.
    assert seg_f1(maps, masks, streamed_threshold) == pytest.approx(streamed_f1, abs=1e-12)
    assert f1_optimal_threshold(maps, masks, num_bins=4)[0] < exact_f1 - 1e-3


def test_streaming_is_exact_when_every_distinct_score_has_its_own_bin():
    maps, masks = _blob_maps(5, quantum=0.01)
    assert f1_optimal_threshold(maps, masks, num_bins=1000) == f1_optimal_threshold(maps, masks)


@pytest.mark.parametrize("num_bins", [None, 100])
def test_f1_optimal_threshold_without_defects_is_nan(num_bins):
    with pytest.warns(UndefinedMetricWarning, match="no defect pixels"):
        f1, threshold = f1_optimal_threshold([GOOD_MAP], [None], num_bins=num_bins)
    assert np.isnan(f1) and np.isnan(threshold)
    with pytest.warns(UndefinedMetricWarning, match="no test images"):
        assert np.isnan(f1_optimal_threshold([], [])[0])
    with pytest.raises(ValueError, match="num_bins"):
        f1_optimal_threshold([BAD_MAP], [BAD_MASK], num_bins=0)
