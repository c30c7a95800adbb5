"""AU-PRO: hand-computed cases, the slow reference, streaming vs exact, paths, errors."""

import math

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from anomalyvfm.metrics import DEFAULT_NUM_BINS, au_pro, au_pro_multi, pro_curve
from tests.reference_metrics import reference_au_pro, reference_pro_points


def blobby_case(seed: int, shapes, bad_every: int = 2, smooth: float = 3.0):
    """Maps of smooth skewed noise, higher (by a random amount) on irregular defects that may touch the border."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for index, shape in enumerate(shapes):
        background = np.exp(0.6 * ndimage.gaussian_filter(rng.standard_normal(shape), smooth) * smooth)
        mask = np.zeros(shape, bool)
        if index % bad_every == 0:
            field = ndimage.gaussian_filter(rng.standard_normal(shape), smooth)
            mask = field > np.quantile(field, rng.uniform(0.9, 0.99))
            mask[rng.integers(shape[0]), rng.integers(shape[1])] = True  # a 1-pixel region (usually)
        lift = ndimage.gaussian_filter(mask.astype(float), 1.5) * rng.uniform(0.5, 3.0)
        maps.append((background + lift + 0.1 * rng.standard_normal(shape)).astype(np.float32))
        masks.append(mask)
    return maps, masks


SMALL_SHAPES = [(24, 32), (30, 30), (20, 36), (32, 24), (28, 28), (24, 24)]
LARGE_SHAPES = [(192, 256), (256, 192), (200, 200), (160, 240), (224, 224), (256, 256), (180, 210), (240, 160)]


# -- hand-computed cases -------------------------------------------------------------------------
def test_one_region():
    # Region {0.9, 0.5} (2 px); defect-free 0.8 0.6 0.4 0.3 0.2 0.1 (6 px). Curve, descending:
    # (0,0) .9->(0,1/2) .8->(1/6,1/2) .6->(2/6,1/2) .5->(2/6,1) .4->(3/6,1) ...
    # Area to 0.5: 1/6*1/2 + 1/6*1/2 + 1/6*1 = 1/3; / 0.5 = 2/3.
    scores = np.array([[0.9, 0.5, 0.8, 0.1], [0.2, 0.3, 0.4, 0.6]])
    mask = np.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    assert au_pro([scores], [mask], 0.5) == pytest.approx(2 / 3, abs=1e-12)
    assert au_pro([scores], [mask], 0.5, num_bins=1000) == pytest.approx(2 / 3, abs=1e-12)


def test_two_regions_of_different_size_count_equally():
    # Region A = px 0-2 {.9,.2,.1} (3 px), region B = px 5 {.8} (1 px); defect-free {.5,.4,.3,.05}.
    # .9 -> (0, (1/3+0)/2 = 1/6), .8 -> (0, (1/3+1)/2 = 2/3), .5 .4 .3 -> FPR 1/4 2/4 3/4 at PRO 2/3,
    # .2 -> (3/4, 5/6), .1 -> (3/4, 1), .05 -> (1, 1).
    # To 0.5: 2/3 * 0.5 / 0.5 = 2/3.  To 1.0: 2/3 * 3/4 + 1 * 1/4 = 3/4.
    # Pooling the pixels instead would give 2 of 4 region pixels = 1/2 at FPR 0.5.
    scores = np.array([[0.9, 0.2, 0.1, 0.5, 0.4, 0.8, 0.3, 0.05]])
    mask = np.array([[1, 1, 1, 0, 0, 1, 0, 0]])
    assert au_pro([scores], [mask], 0.5) == pytest.approx(2 / 3, abs=1e-12)
    assert au_pro([scores], [mask], 1.0) == pytest.approx(3 / 4, abs=1e-12)


def test_region_touching_the_border():
    # Corner region {.9, .7, .3} (3 px); defect-free .8 .6 .5 .4 .2 .1 (6 px).
    # .9 -> (0, 1/3), .8 -> (1/6, 1/3), .7 -> (1/6, 2/3), .6 -> (2/6, 2/3): PRO(0.25) = 2/3.
    # Area to 0.25: 1/6 * 1/3 + (0.25 - 1/6) * 2/3 = 1/18 + 1/18 = 1/9; / 0.25 = 4/9.
    scores = np.array([[0.9, 0.7, 0.8], [0.3, 0.6, 0.5], [0.4, 0.2, 0.1]])
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert au_pro([scores], [mask], 0.25) == pytest.approx(4 / 9, abs=1e-12)


def test_diagonal_neighbours_form_one_region():
    # Mask pixels (0,0), (0,1), (1,2): 8-connected one region of 3; 4-connected {(0,0),(0,1)} and {(1,2)}.
    # (1,2) has the top score, the other two the lowest; 13 defect-free pixels in between.
    # 8-connected: PRO = 1/3 from FPR 0 to 1 -> AU-PRO = 1/3. 4-connected: (0 + 1) / 2 = 1/2.
    mask = np.zeros((4, 4), int)
    mask[0, 0] = mask[0, 1] = mask[1, 2] = 1
    scores = np.linspace(0.2, 0.8, 16).reshape(4, 4)
    scores[1, 2], scores[0, 0], scores[0, 1] = 1.0, 0.0, 0.0
    assert au_pro([scores], [mask], 0.05) == pytest.approx(1 / 3, abs=1e-12)
    assert reference_au_pro([scores], [mask], 0.05, connectivity=8) == pytest.approx(1 / 3, abs=1e-12)
    assert reference_au_pro([scores], [mask], 0.05, connectivity=4) == pytest.approx(1 / 2, abs=1e-12)


def test_pro_is_interpolated_at_the_limit():
    # The region pixel ties with one of two defect-free pixels: curve (0,0) -> (1/2, 1) -> (1, 1).
    # PRO(0.05) = 0.1 -> area 0.05 * 0.1 / 2, / 0.05 = 0.05; PRO(0.3) = 0.6 -> 0.3 * 0.6 / 2 / 0.3 = 0.3.
    # Dropping the straddling segment instead would give 0.
    scores, mask = np.array([[1.0, 1.0, 0.0]]), np.array([[1, 0, 0]])
    assert au_pro([scores], [mask], 0.05) == pytest.approx(0.05, abs=1e-12)
    assert au_pro_multi([scores], [mask], (0.05, 0.3)) == pytest.approx({0.05: 0.05, 0.3: 0.3}, abs=1e-12)


@pytest.mark.parametrize("num_bins", [None, 2, 3, 7, DEFAULT_NUM_BINS])
def test_perfect_map_gives_one(num_bins):
    # Defect-free pixels in [0.1, 0.35], region pixels in [0.6, 0.7]: some bin edge separates them
    # for these bin counts. The maximum 0.7 scales to exactly k (or a hair off): it must stay in the last bin.
    maps, masks = blobby_case(0, SMALL_SHAPES)
    low, high = min(m.min() for m in maps), max(m.max() for m in maps)
    unit = [(m - low) / (high - low) for m in maps]
    perfect = [np.where(k, 0.6 + 0.1 * u, 0.1 + 0.25 * u) for u, k in zip(unit, masks)]
    perfect[0][masks[0]] = 0.7
    perfect[1][~masks[1]] = 0.1
    assert au_pro(perfect, masks, 0.05, num_bins=num_bins) == pytest.approx(1.0, abs=1e-12)


def test_inverted_map_gives_zero():
    # Every defect-free pixel outscores every region pixel: PRO stays 0 until FPR = 1.
    maps, masks = blobby_case(1, SMALL_SHAPES)
    inverted = [np.where(k, 0.0, 1.0 + m) for m, k in zip(maps, masks)]
    assert au_pro(inverted, masks, 0.05) == 0.0
    assert au_pro(inverted, masks, 0.05, num_bins=DEFAULT_NUM_BINS) == 0.0


def test_good_image_only_adds_false_positives():
    # Defective image: region {.9, .3}, defect-free {.5, .1}. Good image: {.95, .2}, no regions.
    # Both: .95 -> (1/4, 0), .9 -> (1/4, 1/2), .5 -> (2/4, 1/2): area to 0.5 = 1/4 * 1/2 -> / 0.5 = 1/4.
    # Defective image alone: .9 -> (0, 1/2), .5 -> (1/2, 1/2): 1/2.
    bad, bad_mask = np.array([[0.9, 0.3, 0.5, 0.1]]), np.array([[1, 1, 0, 0]])
    good = np.array([[0.95, 0.2]])
    assert au_pro([bad, good], [bad_mask, np.zeros((1, 2))], 0.5) == pytest.approx(1 / 4, abs=1e-12)
    assert au_pro([bad, good], [bad_mask, None], 0.5) == pytest.approx(1 / 4, abs=1e-12)  # None: no mask file
    assert au_pro([bad], [bad_mask], 0.5) == pytest.approx(1 / 2, abs=1e-12)


# -- against the slow reference --------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal: many ties, mixing region and defect-free pixels
def test_exact_matches_reference(seed, decimals):
    maps, masks = blobby_case(seed, SMALL_SHAPES)
    if decimals is not None:
        maps = [np.round(m, decimals) for m in maps]
    exact = au_pro_multi(maps, masks, (0.05, 0.3))
    streaming = au_pro_multi(maps, masks, (0.05, 0.3), num_bins=DEFAULT_NUM_BINS)
    for limit in (0.05, 0.3):
        expected = reference_au_pro(maps, masks, limit)
        assert 0.05 < expected < 0.95  # a non-trivial curve
        assert exact[limit] == pytest.approx(expected, abs=1e-6)
        assert streaming[limit] == pytest.approx(expected, abs=1e-3)


def test_curve_matches_reference_points():
    maps, masks = blobby_case(3, SMALL_SHAPES[:3])
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(np.column_stack([fpr, pro]), reference_pro_points(maps, masks), atol=1e-12)
    assert fpr[0] == 0 and fpr[-1] == 1 and pro[-1] == pytest.approx(1.0)
    # Integrated to 1.0, the curve gives au_pro at limit 1.0.
    assert np.trapezoid(pro, fpr) == pytest.approx(au_pro(maps, masks, 1.0), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])  # float16: the dtype of the saved TIFF maps
def test_streaming_agrees_with_exact_within_1e3(seed, dtype):
    maps, masks = blobby_case(seed, LARGE_SHAPES, bad_every=2 if seed % 2 else 3)
    maps = [m.astype(dtype) for m in maps]
    exact = au_pro_multi(maps, masks, (0.05, 0.3))
    streaming = au_pro_multi(maps, masks, (0.05, 0.3), num_bins=DEFAULT_NUM_BINS)
    for limit in (0.05, 0.3):
        assert 0.05 < exact[limit] < 0.95
        assert streaming[limit] == pytest.approx(exact[limit], abs=1e-3)
    # Streaming is an approximation that tightens with more bins, not a coincidence:
    coarse = au_pro(maps, masks, 0.05, num_bins=50)
    assert abs(coarse - exact[0.05]) > abs(streaming[0.05] - exact[0.05])


def test_streaming_curve_points_lie_on_the_exact_curve():
    # Each bin edge is a threshold: its point is the exact curve's point at the lowest score above it.
    maps, masks = blobby_case(4, LARGE_SHAPES[:4])
    maps = [m.astype(np.float64) for m in maps]  # float64 bin arithmetic: edges are exact
    fpr, pro = pro_curve(maps, masks)
    fpr_binned, pro_binned = pro_curve(maps, masks, num_bins=100)
    assert 10 < fpr_binned.size <= 101 < fpr.size
    for f, p in zip(fpr_binned, pro_binned):
        same_fpr = pro[np.searchsorted(fpr, f, "left"):np.searchsorted(fpr, f, "right")]
        assert np.abs(same_fpr - p).min() < 1e-12


def test_multi_equals_single_calls():
    maps, masks = blobby_case(5, SMALL_SHAPES)
    multi = au_pro_multi(maps, masks, (0.05, 0.1, 0.3), num_bins=5000)
    assert list(multi) == [0.05, 0.1, 0.3]
    for limit, value in multi.items():
        assert value == au_pro(maps, masks, limit, num_bins=5000)


# -- paths ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_bins", [None, DEFAULT_NUM_BINS])
def test_npy_and_tiff_paths_give_the_in_memory_result(tmp_path, num_bins):
    maps, masks = blobby_case(6, SMALL_SHAPES)
    maps = [m.astype(np.float16) for m in maps]
    map_paths, mask_paths = [], []
    for index, (scores, mask) in enumerate(zip(maps, masks)):
        if index % 2:
            tifffile.imwrite(tmp_path / f"{index}.tiff", scores)
            map_paths.append(str(tmp_path / f"{index}.tiff"))  # str as well as Path
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / f"{index}_mask.png")
            mask_paths.append(tmp_path / f"{index}_mask.png")
        else:
            np.save(tmp_path / f"{index}.npy", scores)
            map_paths.append(tmp_path / f"{index}.npy")
            np.save(tmp_path / f"{index}_mask.npy", mask)
            mask_paths.append(tmp_path / f"{index}_mask.npy" if mask.any() else None)
    expected = au_pro_multi(maps, masks, (0.05, 0.3), num_bins=num_bins)
    assert au_pro_multi(map_paths, mask_paths, (0.05, 0.3), num_bins=num_bins) == expected


# -- errors -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_bins", [None, 100])
def test_shape_mismatch_names_the_image_and_both_shapes(num_bins):
    maps, masks = [np.zeros((4, 4)), np.zeros((4, 5))], [np.zeros((4, 4)), np.zeros((5, 4))]
    with pytest.raises(ValueError, match=r"image 1: anomaly map shape \(4, 5\) does not match mask shape \(5, 4\)"):
        au_pro(maps, masks, num_bins=num_bins)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
@pytest.mark.parametrize("num_bins", [None, 100])
def test_nan_in_a_map_names_the_image(bad_value, num_bins):
    maps, masks = blobby_case(7, SMALL_SHAPES[:3])
    maps[2][3, 4] = bad_value
    with pytest.raises(ValueError, match="anomaly map 2 contains NaN or infinite values"):
        au_pro(maps, masks, num_bins=num_bins)


def test_other_misuse_raises():
    maps, masks = blobby_case(8, SMALL_SHAPES[:2])
    with pytest.raises(ValueError, match="anomaly_maps=2, gt_masks=1"):
        au_pro(maps, masks[:1])
    with pytest.raises(ValueError, match=r"FPR limit must be in \(0, 1\]"):
        au_pro(maps, masks, 0.0)
    with pytest.raises(ValueError, match="unsupported file type '.png'"):
        au_pro(["map.png"], [None])
    with pytest.raises(ValueError, match="2-D"):
        au_pro([np.zeros((2, 3, 4))], [None])


def test_normalised_pro_area_interpolates_at_the_limit():
    from anomalyvfm.metrics import normalised_pro_area

    # PRO rises linearly to 1 at FPR 0.1: at 0.05 it is 0.5, so the normalised area is 0.25.
    assert normalised_pro_area(np.array([0.0, 0.1]), np.array([0.0, 1.0]), 0.05) == pytest.approx(0.25)
    assert normalised_pro_area(np.array([0.0, 0.05, 0.3]), np.array([1.0, 1.0, 1.0]), 0.05) == pytest.approx(1.0)
    assert normalised_pro_area(np.array([0.0, 0.02, 0.1]), np.array([0.0, 0.4, 1.0]),
                               0.06) == pytest.approx((0.02 * 0.2 + 0.04 * 0.55) / 0.06)
    assert math.isnan(normalised_pro_area(np.array([0.0, 0.01]), np.array([0.0, 0.2]), 0.05))  # never reaches 0.05
    assert math.isnan(normalised_pro_area(np.array([]), np.array([]), 0.05))
