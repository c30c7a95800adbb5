"""Gaussian and nearest-neighbour scorers, anomaly maps, score fusion."""

import numpy as np
import pytest
import torch

from anomalyvfm.method import Method
from anomalyvfm.model import RawScores, ScaleModel, fit_fusion, fit_map_medians, full_size_map, fused_scores
from anomalyvfm.scoring import (GaussianScorer, NearestNeighbourScorer, anomaly_map, centred_grid, discount_saturated,
                               clipping_is_normal, map_median_of, patch_grid, saturated_share,
                               PEAK_PATCHES, padded_grid, peak_score, phase_shifts, shifted_inputs, stacked_phases,
                               whitening_matrix)


def test_gaussian_gives_training_points_low_and_an_outlier_high_distance():
    generator = torch.Generator().manual_seed(0)
    normal = torch.randn(500, 8, generator=generator) * torch.tensor([5.0, 1, 1, 1, 1, 1, 1, 0.1])
    scorer = GaussianScorer.fit(normal)
    inside = scorer.distances(normal)
    outlier = scorer.distances(torch.tensor([[0.0, 0, 0, 0, 0, 0, 0, 2.0]]))  # 20 sigma along the thin axis
    assert outlier.item() > 2 * inside.max().item()
    # The same point along the wide axis is ordinary: Mahalanobis, not Euclidean.
    assert scorer.distances(torch.tensor([[2.0, 0, 0, 0, 0, 0, 0, 0]])).item() < inside.median().item()


def test_gaussian_matches_the_closed_form_with_known_mean_and_precision():
    scorer = GaussianScorer(torch.tensor([1.0, 2.0]), torch.tensor([[4.0, 0.0], [0.0, 1.0]]))
    torch.testing.assert_close(scorer.distances(torch.tensor([[2.0, 4.0]])), torch.tensor([np.sqrt(4 + 4)]).float())


def test_gaussian_is_defined_with_fewer_samples_than_dimensions():
    scorer = GaussianScorer.fit(torch.randn(10, 64))
    assert torch.isfinite(scorer.distances(torch.randn(5, 64))).all()


def test_nearest_neighbour_cosine_distance_is_exact_across_chunks():
    generator = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(40_000, 6, generator=generator), torch.randn(2100, 6, generator=generator)
    # Independent reference: the cosine similarity to every bank vector, one query at a time.
    unit_bank = bank / bank.norm(dim=1, keepdim=True)
    expected = torch.stack([1 - (unit_bank @ (q / q.norm())).max() for q in queries])
    torch.testing.assert_close(NearestNeighbourScorer.fit(bank).distances(queries), expected, atol=1e-3, rtol=1e-4)
    assert NearestNeighbourScorer.fit(bank, bank_size=100).bank.shape == (100, 6)


def _anisotropic(n: int, seed: int = 0) -> torch.Tensor:
    """Normal tokens around (10, 0, 0): wide along axis 1, narrow along axis 2."""
    generator = torch.Generator().manual_seed(seed)
    return torch.tensor([10.0, 0.0, 0.0]) + torch.randn(n, 3, generator=generator) * torch.tensor([0.5, 3.0, 0.1])


@pytest.mark.parametrize("shrinkage", [1e-6, 0.25, 1.0])
def test_whitening_matrix_whitens_the_shrunk_covariance(shrinkage):
    features = _anisotropic(5000)
    whitening = whitening_matrix(features, shrinkage).double()
    covariance = torch.cov(features.double().T)
    eigenvalues = torch.linalg.eigvalsh(covariance)
    shrunk = (1 - shrinkage) * covariance + shrinkage * eigenvalues.mean() * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(whitening @ shrunk @ whitening, torch.eye(3, dtype=torch.float64), atol=1e-4, rtol=1e-4)
    if shrinkage == 1.0:  # the identity up to scale: plain cosine
        torch.testing.assert_close(whitening.double(), torch.eye(3, dtype=torch.float64) / eigenvalues.mean().sqrt())
    for bad in (0.0, -0.1, 1.01):
        with pytest.raises(ValueError, match=r"shrinkage must be in \(0, 1\]"):
            whitening_matrix(features, bad)


def test_whitening_matrix_adds_the_nuisance_scatter_to_the_covariance():
    features = _anisotropic(5000)
    # Nuisance moves along the narrow axis 2 (as a lighting change that moves normal tokens off it).
    moves = torch.randn(800, 3, generator=torch.Generator().manual_seed(2)) * torch.tensor([0.0, 0.0, 0.5])
    whitening = whitening_matrix(features, 0.25, moves, 2.0).double()
    scatter = 2.0 * moves.double().T @ moves.double() / len(moves)  # uncentred: a move's mean counts too
    total = torch.cov(features.double().T) + scatter
    shrunk = 0.75 * total + 0.25 * torch.linalg.eigvalsh(total).mean() * torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(whitening @ shrunk @ whitening, torch.eye(3, dtype=torch.float64), atol=1e-4, rtol=1e-4)
    # Weight 0, or no moves, is the normal covariance alone.
    torch.testing.assert_close(whitening_matrix(features, 0.25, moves, 0.0), whitening_matrix(features, 0.25))
    torch.testing.assert_close(whitening_matrix(features, 0.25, moves[:0], 2.0), whitening_matrix(features, 0.25))
    with pytest.raises(ValueError, match="nuisance_weight must be >= 0"):
        whitening_matrix(features, 0.25, moves, -1.0)
    # A step along the nuisance direction now costs less distance than before, relative to a step
    # along the wide normal axis.
    along_wide, along_narrow = torch.tensor([[10.0, 1.0, 0.0]]), torch.tensor([[10.0, 0.0, 1.0]])
    normal_only = NearestNeighbourScorer.fit(features, whitening=whitening_matrix(features, 0.25))
    with_moves = NearestNeighbourScorer.fit(features, whitening=whitening.float())
    ratio = lambda scorer: scorer.distances(along_narrow).item() / scorer.distances(along_wide).item()
    assert ratio(with_moves) < ratio(normal_only) / 2


def test_whitened_knn_weighs_the_low_variance_direction_and_round_trips_through_its_state():
    normal = _anisotropic(4000)
    # Two queries the same Euclidean step (1.0) from the normal centre: along the wide axis (normal
    # variation) and along the narrow one (an anomaly in the sense of Rippel et al.).
    along_wide, along_narrow = torch.tensor([[10.0, 1.0, 0.0]]), torch.tensor([[10.0, 0.0, 1.0]])
    plain = NearestNeighbourScorer.fit(normal)
    whitened = NearestNeighbourScorer.fit(normal, whitening=whitening_matrix(normal, 0.25))
    assert plain.distances(along_narrow).item() > 1e-4  # off the normal tokens: plain cosine sees it too
    assert whitened.distances(along_narrow).item() > 50 * whitened.distances(along_wide).item()
    # Plain cosine: a step along the wide axis lands among normal tokens, so it is near zero too,
    # but the whitened metric separates the two by far more.
    ratio_plain = plain.distances(along_narrow).item() / max(plain.distances(along_wide).item(), 1e-12)
    ratio_whitened = whitened.distances(along_narrow).item() / max(whitened.distances(along_wide).item(), 1e-12)
    assert ratio_whitened > ratio_plain
    # A scaled identity leaves the cosine unchanged; the saved state scores as the fitted scorer.
    scaled = NearestNeighbourScorer.fit(normal, whitening=3 * torch.eye(3))
    queries = torch.randn(50, 3, generator=torch.Generator().manual_seed(1)) + torch.tensor([10.0, 0.0, 0.0])
    torch.testing.assert_close(scaled.distances(queries), plain.distances(queries), atol=1e-6, rtol=1e-5)
    for scorer in (plain, whitened):
        restored = NearestNeighbourScorer.from_state(scorer.state())
        torch.testing.assert_close(restored.distances(queries), scorer.distances(queries))
    assert "whitening" not in plain.state() and "whitening" in whitened.state()


def test_whitened_knn_scores_images_by_plain_cosine_against_the_first_rows_of_its_bank():
    normal = _anisotropic(4000)
    queries = torch.randn(50, 3, generator=torch.Generator().manual_seed(1)) + torch.tensor([10.0, 0.0, 0.0])
    whitening = whitening_matrix(normal, 0.25)
    whitened = NearestNeighbourScorer.fit(normal, whitening=whitening, image_bank_size=300)
    # The image search: plain cosine against rows 0..299, whatever the whitening does to the maps.
    torch.testing.assert_close(whitened.image_distances(queries), NearestNeighbourScorer(normal[:300]).distances(queries))
    assert not torch.allclose(whitened.image_distances(queries), whitened.distances(queries), rtol=0.1)
    restored = NearestNeighbourScorer.from_state(whitened.state())
    torch.testing.assert_close(restored.image_distances(queries), whitened.image_distances(queries))
    # No search of its own where the maps' search is plain cosine already, or when asked for none.
    assert NearestNeighbourScorer.fit(normal, image_bank_size=300).image_distances(queries) is None
    no_image_bank = NearestNeighbourScorer.fit(normal, whitening=whitening)
    assert no_image_bank.image_distances(queries) is None and "image_bank" not in no_image_bank.state()
    assert GaussianScorer.fit(normal).image_distances(queries) is None


def test_anomaly_map_has_original_size_and_peaks_at_the_anomalous_patch():
    grid = torch.zeros(4, 8)
    grid[1, 6] = 5.0
    full = anomaly_map(grid, (56, 112), (300, 611))
    assert full.shape == (300, 611) and full.dtype == np.float32
    row, column = np.unravel_index(full.argmax(), full.shape)
    assert 1 / 4 <= row / 300 < 2 / 4 and 6 / 8 <= column / 611 < 7 / 8


def _reference_anomaly_map(grid, input_size, original_size, sigma=4.0):
    """The torch implementation the OpenCV one replaced: bilinear, separable Gaussian (radius 3 sigma), bilinear."""
    import torch.nn.functional as F

    image = F.interpolate(grid.float()[None, None], size=input_size, mode="bilinear", align_corners=False)
    if sigma > 0:
        radius = int(3 * sigma + 0.5)
        kernel = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
        kernel = kernel / kernel.sum()
        image = F.conv2d(F.pad(image, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
        image = F.conv2d(F.pad(image, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return F.interpolate(image, size=original_size, mode="bilinear", align_corners=False)[0, 0].numpy()


@pytest.mark.parametrize("grid_shape, original_size", [
    ((16, 19), (2048, 2448)),   # AD 2 fabric at IMAGE_SIZE 224
    ((16, 64), (1056, 4224)),   # sheet_metal
    ((1, 1), (10, 12)),         # input smaller than the blur kernel, map smaller than the input
    ((21, 16), (800, 600)),
])
def test_anomaly_map_equals_the_torch_reference(grid_shape, original_size):
    grid = torch.rand(grid_shape, generator=torch.Generator().manual_seed(0)) * 10
    input_size = (grid_shape[0] * 14, grid_shape[1] * 14)
    expected = _reference_anomaly_map(grid, input_size, original_size)
    result = anomaly_map(grid, input_size, original_size)
    assert result.shape == original_size and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("sigma", [0.0, 8.0])
def test_anomaly_map_blur_width_is_a_parameter(sigma):
    grid = torch.rand((12, 15), generator=torch.Generator().manual_seed(1)) * 10
    input_size, original_size = (168, 210), (500, 640)
    expected = _reference_anomaly_map(grid, input_size, original_size, sigma)
    result = anomaly_map(grid, input_size, original_size, sigma=sigma)
    np.testing.assert_allclose(result, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # Without blur the map keeps the grid's extremes; a wider blur pulls them in.
    assert (result.max() >= anomaly_map(grid, input_size, original_size).max()) == (sigma == 0.0)


def test_peak_score_is_the_mean_of_the_highest_patches_above_the_median():
    grid = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0], [0.5, 2.5, 3.5]])
    assert PEAK_PATCHES == 3
    assert peak_score(grid) == (9.0 + 5.0 + 4.0) / 3 - 3.0  # median of the nine values is 3.0
    assert peak_score(grid + 10.0) == peak_score(grid)  # light raising every patch alike leaves it
    # fewer patches than PEAK_PATCHES: all of them; the median of an even count is the lower middle value
    assert peak_score(torch.tensor([[2.0, 6.0]])) == 4.0 - 2.0
    assert peak_score(grid, patches=1) == 9.0 - 3.0  # the single highest patch, as until 1.3.0


def test_peak_score_keeps_a_small_defect_that_a_top_percent_mean_dilutes():
    normal = torch.zeros(64, 64)
    defect = normal.clone()
    defect[10, 10:13] = 1.0  # three of 4 096 patches; a top-1 % mean (41 patches) would give 3/41
    assert peak_score(defect) == 1.0 and peak_score(normal) == 0.0


def test_peak_score_ranks_a_lone_spike_below_a_slightly_lower_defect_of_four_patches():
    spike, defect = torch.zeros(64, 64), torch.zeros(64, 64)
    spike[10, 10] = 1.0
    defect[10:12, 10:12] = 0.9
    assert peak_score(spike) < peak_score(defect) and spike.max() > defect.max()


def _raw(grids: list[torch.Tensor], cls_distances: list[float]) -> RawScores:
    return RawScores(np.array(cls_distances), grids, [(28, 28)] * len(grids), np.zeros((len(grids), 4), np.float32),
                     np.array([peak_score(grid) for grid in grids]))


def test_image_scores_are_peaks_standardised_on_validation_images():
    validation = _raw([torch.tensor([[0.0, 1.0], [1.0, 7.0]]), torch.tensor([[0.0, 1.0], [1.0, 13.0]])], [1.0, 3.0])
    # peaks (7+1+1)/3 - 1 = 2 and (13+1+1)/3 - 1 = 4 (the medians are both 1): mean 3, std 1
    fusion, problems = fit_fusion(validation)
    assert not problems
    assert (fusion.cls_mean, fusion.cls_std, fusion.patch_mean, fusion.patch_std) == (2.0, 1.0, 3.0, 1.0)
    scale = ScaleModel(224, None, None, None, None, fusion)
    test = _raw([torch.tensor([[2.0, 2.0], [2.0, 20.0]])], [100.0])  # peak 8 - 2 = 6; v1.1 ignores the CLS distance
    np.testing.assert_allclose(fused_scores(Method(), [scale], [test]), [(6.0 - 3.0) / 1.0])


def test_centring_removes_an_image_wide_offset_and_keeps_local_contrast():
    grid = torch.rand(6, 9, generator=torch.Generator().manual_seed(0))
    grid[2, 3] = 5.0  # a defect
    # An image-wide offset (a lighting change) is gone; what stands out locally is kept.
    torch.testing.assert_close(centred_grid(grid + 0.7, 0.25), centred_grid(grid, 0.25))
    torch.testing.assert_close(centred_grid(grid, 0.25) - grid, torch.full_like(grid, 0.25 - float(grid.median())))
    assert float(centred_grid(grid, 0.25).median()) == pytest.approx(0.25)
    # By hand: medians 2 and 10 (torch's median of an even count is the lower middle value).
    assert map_median_of([torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[10.0, 30.0], [0.0, 50.0]])]) == 6.0


def test_full_size_maps_are_centred_on_the_validation_median_only_when_asked():
    grids = [torch.rand(4, 6, generator=torch.Generator().manual_seed(i)) + i for i in range(3)]
    raw = RawScores(np.zeros(3), grids, [(56, 84)] * 3, np.zeros((3, 2), np.float32), np.zeros(3))
    scale = ScaleModel(56, heads=None, cls_scorer=None, patch_scorer=None, illumination=None)
    fit_map_medians([scale], [raw], centre=False)
    assert scale.map_median is None
    plain = [full_size_map([scale], [raw], i, (112, 168)) for i in range(3)]
    fit_map_medians([scale], [raw], centre=True)
    assert scale.map_median == pytest.approx(np.mean([float(g.median()) for g in grids]))
    for grid, before, index in zip(grids, plain, range(3)):
        after = full_size_map([scale], [raw], index, (112, 168))
        # Upsampling and blur are linear with unit gain: the map moves by the grid's shift, to float16 precision.
        np.testing.assert_allclose(after - before, scale.map_median - float(grid.median()), atol=2e-2)


def test_saturated_share_counts_pixels_clipped_in_any_channel_per_patch():
    images = torch.full((2, 3, 28, 42), 0.5)
    images[0, :, :14, :14] = 1.0                    # patch (0, 0) fully clipped
    images[0, 2, 14:21, 28:42] = 250 / 255          # half of patch (1, 2), one channel at the level
    images[0, :, 14:28, 14:28] = 249 / 255          # patch (1, 1) just below the level: not clipped
    images[1, 1, 0, 0] = 1.0                        # one pixel of 196
    share = saturated_share(images, 14)
    expected = torch.zeros(2, 2, 3)
    expected[0, 0, 0], expected[0, 1, 2], expected[1, 0, 0] = 1.0, 0.5, 1 / 196
    torch.testing.assert_close(share, expected)


def test_discounting_saturated_patches_scales_their_excess_over_the_median_by_the_unclipped_share():
    grid = torch.tensor([[1.0, 2.0, 3.0], [4.0, 10.0, 6.0]])  # torch's median of six values: the lower middle, 3
    saturated = torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.0, 0.5]])
    expected = torch.tensor([[1.0, 2.0, 3.0], [4.0, 3.0, 4.5]])  # 10 -> 3 (fully clipped), 6 -> 3 + 3 * 0.5
    torch.testing.assert_close(discount_saturated(grid, saturated), expected)
    # The median, the reference of the image score and of the centred maps, does not move.
    noisy = torch.rand(7, 9, generator=torch.Generator().manual_seed(1))
    clipped = torch.rand(7, 9, generator=torch.Generator().manual_seed(2))
    assert float(discount_saturated(noisy, clipped).median()) == float(noisy.median())
    assert patch_grid(grid, None) is grid and torch.equal(patch_grid(grid, saturated), expected)
    # Below the median a clipped patch rises to it: a clipped patch is no evidence either way.
    assert float(discount_saturated(torch.tensor([[0.0, 5.0, 6.0]]), torch.tensor([[1.0, 0.0, 0.0]]))[0, 0]) == 5.0


def test_clipping_is_normal_when_at_least_one_training_image_in_twenty_has_a_clipped_pixel():
    clean, clipped = torch.zeros(4, 6), torch.zeros(4, 6)
    clipped[1, 2] = 1 / 196  # one pixel of one patch
    assert clipping_is_normal([clipped] + [clean] * 19)       # 1 of 20: the share
    assert not clipping_is_normal([clipped] + [clean] * 20)   # 1 of 21: below it
    assert not clipping_is_normal([clean] * 5) and not clipping_is_normal([])


def test_phase_shifts_are_half_patches_in_their_fixed_order_and_checked():
    assert phase_shifts(1, 14) == [(0, 0)]
    assert phase_shifts(2, 14) == [(0, 0), (7, 7)]
    assert phase_shifts(4, 14) == [(0, 0), (7, 7), (0, 7), (7, 0)]
    for bad in (0, 5):
        with pytest.raises(ValueError, match="phases must be 1 to 4"):
            phase_shifts(bad, 14)


def test_shifted_inputs_start_half_a_patch_in_and_drop_the_last_partial_patch():
    images = torch.arange(2 * 3 * 28 * 42, dtype=torch.float32).reshape(2, 3, 28, 42)
    assert torch.equal(shifted_inputs(images, (0, 0), 14), images)
    diagonal = shifted_inputs(images, (7, 7), 14)
    assert diagonal.shape == (2, 3, 14, 28)  # one patch fewer along each shifted axis
    assert torch.equal(diagonal, images[..., 7:21, 7:35])  # pixel (y, x) shows the image's (y + 7, x + 7)
    assert torch.equal(shifted_inputs(images, (0, 7), 14), images[..., :, 7:35])
    assert torch.equal(shifted_inputs(images, (7, 0), 14), images[..., 7:21, :])


def test_padded_grid_repeats_the_last_row_and_column_up_to_the_image_grid():
    grid = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert padded_grid(grid, (2, 2)) is grid
    torch.testing.assert_close(padded_grid(grid, (3, 3)), torch.tensor([[1.0, 2.0, 2.0], [3.0, 4.0, 4.0],
                                                                        [3.0, 4.0, 4.0]]))
    torch.testing.assert_close(padded_grid(grid, (2, 3)), torch.tensor([[1.0, 2.0, 2.0], [3.0, 4.0, 4.0]]))


def test_stacked_phases_keeps_one_grid_and_stacks_padded_phases():
    image = torch.arange(6.0).reshape(2, 3)
    diagonal = torch.tensor([[10.0, 11.0]])  # a phase shifted down and right: a row and a column fewer
    assert stacked_phases([image], (2, 3)) is image
    both = stacked_phases([image, diagonal], (2, 3))
    assert both.shape == (2, 2, 3)
    assert torch.equal(both[0], image)
    torch.testing.assert_close(both[1], torch.tensor([[10.0, 11.0, 11.0], [10.0, 11.0, 11.0]]))
    torch.testing.assert_close(stacked_phases([diagonal], (2, 3)), both[1])


def test_centred_grid_centres_each_phase_on_its_own_median():
    grid = torch.tensor([[[1.0, 2.0], [3.0, 9.0]], [[10.0, 20.0], [30.0, 90.0]]])  # lower medians 2 and 20
    centred = centred_grid(grid, 0.5)
    torch.testing.assert_close(centred[0], grid[0] - 2 + 0.5)
    torch.testing.assert_close(centred[1], grid[1] - 20 + 0.5)
    torch.testing.assert_close(centred_grid(grid[0], 0.5), centred[0])


def test_anomaly_map_moves_each_phase_back_onto_the_image_before_averaging():
    # A linear ramp of the position (pixel y spans [y, y + 1)) sampled at patch centres: phase (0, 0) sees
    # centres 14 r + 7, the diagonal phase (its input moved up-left by 7) sees 14 r + 14. Upsampled, moved
    # back and blurred, both give the same ramp away from the edges; moved the wrong way, the diagonal
    # phase's would be 14 off.
    size, patch = 84, 14
    centres = torch.arange(6, dtype=torch.float32) * patch
    ramp = lambda offset: (centres[:, None] + offset) + 2 * (centres[None, :] + offset)  # noqa: E731
    pixels = np.arange(size, dtype=np.float32) + 0.5
    expected = pixels[:, None] + 2 * pixels[None, :]
    inner = slice(26, 60)  # a blur radius (12 px) inside where both phases have samples on either side
    own = anomaly_map(ramp(7), (size, size), (size, size))
    diagonal_only = anomaly_map(torch.stack([ramp(14), ramp(14)])[1:], (size, size), (size, size))  # one phase: no shift
    both = anomaly_map(torch.stack([ramp(7), ramp(14)]), (size, size), (size, size))
    np.testing.assert_allclose(own[inner, inner], expected[inner, inner], atol=1e-3)
    np.testing.assert_allclose(both[inner, inner], expected[inner, inner], atol=1e-3)
    # Read as the image's own phase (not moved back), it is 7 px off in each direction: 7 + 2 * 7 higher.
    assert np.abs(diagonal_only[inner, inner] - expected[inner, inner] - 21).max() < 1e-3
    np.testing.assert_array_equal(anomaly_map(ramp(7)[None], (size, size), (60, 50)),
                                  anomaly_map(ramp(7), (size, size), (60, 50)))  # [1, gh, gw] is [gh, gw]


def test_mask_threshold_raises_the_pixel_threshold_to_the_maps_own_floor():
    from anomalyvfm.model import anomalous_pixels, mask_threshold

    # Median 1, peak 11: floor 1 + 0.2 * 10 = 3 with floor 0.2.
    strong = np.array([[1.0, 1.0, 1.0], [1.0, 2.5, 11.0]], np.float32)
    assert mask_threshold(strong, 2.0, floor=0.2) == pytest.approx(3.0)
    # The product's masks cut each map there (model.PEAK_FLOOR, 0.2 today).
    assert np.array_equal(anomalous_pixels(strong, 2.0), strong >= mask_threshold(strong, 2.0))
    # A faint map's floor stays below the threshold, which then cuts alone; floor 0 is the threshold itself.
    faint = np.array([[1.0, 1.0, 1.0], [1.0, 2.5, 3.0]], np.float32)
    assert mask_threshold(faint, 2.0, floor=0.2) == 2.0 and mask_threshold(strong, 2.0, floor=0.0) == 2.0
