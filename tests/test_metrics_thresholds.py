"""mean + k std over image scores and over streamed maps."""

import numpy as np
import pytest
import tifffile

from anomalyvfm.metrics import mean_plus_k_std


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
