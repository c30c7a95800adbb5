"""Figures: every function writes one readable PNG, also for a single category, NaN and empty inputs."""

import math

import numpy as np
import pytest
from PIL import Image

from anomalyvfm import plots

pytestmark = pytest.mark.filterwarnings("error")  # matplotlib/numpy warnings mean a broken edge case


def read_png(path, size: tuple[int, int]) -> np.ndarray:
    """Assert ``path`` is the only file in its folder (no temporary left) and a non-blank RGBA PNG of ``size``."""
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    with Image.open(path) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGBA", size)
        pixels = np.asarray(image)
    assert pixels[..., :3].std() > 10  # more than a blank canvas
    return pixels


def labelled_scores(seed: int, good: int = 30, bad: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(good), np.ones(bad)].astype(int)
    return rng.normal(size=good + bad) + 2 * labels, labels


def test_roc_curves_for_many_categories_one_class_and_nan(tmp_path):
    scores, labels = labelled_scores(0)
    scores[3] = np.nan
    path = plots.plot_roc_curves(tmp_path / "roc.png", {
        "can": (scores, labels), "fabric": labelled_scores(1), "rice": (np.ones(5), np.zeros(5, dtype=int))})
    assert path == tmp_path / "roc.png"
    read_png(path, (1020, 600))


def test_roc_curves_without_any_usable_category(tmp_path):
    read_png(plots.plot_roc_curves(tmp_path / "roc.png", {"can": (np.full(4, np.nan), np.array([0, 0, 1, 1]))}),
             (1020, 600))


def test_score_distributions_grid_sizes_and_edge_cases(tmp_path):
    # One category: a single 4.0 x 3.6 inch panel.
    read_png(plots.plot_score_distributions(tmp_path / "one" / "s.png", {"can": labelled_scores(0)}, {"can": 1.5}),
             (480, 432))
    # Five categories: a 4-column grid of two rows; only good images, all NaN, and no threshold are fine.
    scores = {"a": labelled_scores(0), "b": labelled_scores(1, bad=0), "c": (np.full(3, np.nan), np.zeros(3)),
              "d": labelled_scores(2), "e": labelled_scores(3)}
    read_png(plots.plot_score_distributions(tmp_path / "many" / "s.png", scores, {"a": 1.0, "c": math.nan}),
             (1920, 816))
    read_png(plots.plot_score_distributions(tmp_path / "none" / "s.png", {}, {}), (480, 432))


def test_sample_detections_downsample_a_large_wide_image(tmp_path):
    height, width = 1056, 4224
    rows, columns = np.mgrid[0:height, 0:width]
    image = np.stack([columns * 255 // width, rows * 255 // height, np.full((height, width), 90)], -1).astype(np.uint8)
    anomaly_map = np.exp(-((rows - 500) ** 2 + (columns - 3000) ** 2) / 2e4).astype(np.float32)
    anomaly_map[:10] = np.nan
    mask = np.zeros((height, width), dtype=bool)
    mask[480:520, 2900:3100] = True
    examples = [
        {"title": "wallplugs best: 000.png", "image": image, "mask": mask, "anomaly_map": anomaly_map,
         "threshold": 0.5},
        {"title": "can false alarm?: 001.png", "image": image[:600, :400], "mask": None,
         "anomaly_map": np.full((600, 400), np.nan, dtype=np.float32), "threshold": 0.5},
    ]
    path = plots.plot_sample_detections(tmp_path / "detections.png", examples)
    # 4-inch panels: the 4:1 row is 4 x 0.25 + 0.45 inches tall, the portrait one 4 x 1.0 + 0.45, the footer 1.1.
    read_png(path, (1488, 840))
    assert path.stat().st_size < 1_000_000


def _red_pixels(pixels: np.ndarray) -> int:
    red, green, blue = (pixels[..., channel].astype(int) for channel in range(3))
    return int(((red > 200) & (green < 40) & (blue < 40)).sum())


def test_a_map_wholly_above_the_threshold_gets_a_red_frame(tmp_path):
    image = np.full((64, 64, 3), 128, dtype=np.uint8)
    example = {"title": "can false alarm?", "image": image, "mask": None, "threshold": 1.0}
    above = plots.plot_sample_detections(tmp_path / "above" / "d.png",
                                         [example | {"anomaly_map": np.full((64, 64), 3.0, np.float32)}])
    below = plots.plot_sample_detections(tmp_path / "below" / "d.png",
                                         [example | {"anomaly_map": np.full((64, 64), 0.5, np.float32)}])
    with Image.open(above) as framed, Image.open(below) as plain:
        assert _red_pixels(np.asarray(framed)) > 500 + _red_pixels(np.asarray(plain))


def test_synthetic_samples_accept_arrays_tensors_and_no_mask(tmp_path):
    import torch

    mask = np.zeros((32, 48), dtype=bool)
    mask[8:20, 10:30] = True
    samples = [{"image": np.full((32, 48, 3), 90, np.uint8), "mask": mask, "title": "photometric"},
               {"image": torch.rand(3, 16, 24), "mask": mask, "title": "geometric: mask larger than the image"},
               {"image": torch.rand(3, 16, 24), "mask": None, "title": "noise"},
               {"image": np.full((32, 48, 3), 90, np.uint8), "mask": np.ones((32, 48), bool), "title": "all defect"},
               {"image": np.full((32, 48, 3), 90, np.uint8), "mask": np.zeros((32, 48), bool), "title": "empty"}]
    pixels = read_png(plots.plot_synthetic_samples(tmp_path / "s.png", samples), (1440, 816))
    assert _red_pixels(pixels) > 100  # the mask outlines
    read_png(plots.plot_synthetic_samples(tmp_path / "none" / "s.png", []), (360, 432))


def test_sample_detections_many_rows_stay_within_the_pixel_budget(tmp_path):
    rng = np.random.default_rng(0)
    example = {"title": "rice worst: a_rather_long_file_name_0000.png (score 12.34)",
               "image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "mask": rng.random((64, 64)) > 0.9,
               "anomaly_map": rng.random((64, 64)).astype(np.float32), "threshold": 0.5}
    path = plots.plot_sample_detections(tmp_path / "detections.png", [example] * 8)
    with Image.open(path) as image:
        width, height = image.size
    assert width < 1584 and width * height <= plots.MAX_DETECTION_PIXELS  # panels narrower than the 4-inch default


def test_sample_detections_and_overlay_without_data(tmp_path):
    read_png(plots.plot_sample_detections(tmp_path / "empty" / "d.png", []), (720, 240))
    image = np.full((100, 300, 3), 128, dtype=np.uint8)
    read_png(plots.save_overlay(tmp_path / "overlay" / "o.png", image, np.linspace(0, 1, 30000).reshape(100, 300), 0.5),
             (840, 312))


def test_feature_analysis_projects_on_train_normal_pca(tmp_path):
    rng = np.random.default_rng(0)
    kinds = np.r_[np.zeros(40), np.ones(10), np.full(10, 2)].astype(int)
    features = rng.normal(size=(60, 16))
    features[kinds == 2] += 3
    features[0, 0] = np.nan  # dropped, not fatal
    embeddings = {"can": (features, kinds),
                  "one_train_normal": (features[39:], kinds[39:]),  # PCA needs two train normals: "no data" panel
                  "rice": (features[:, :2], kinds)}
    read_png(plots.plot_feature_analysis(tmp_path / "f.png", embeddings), (1440, 432))


def test_pro_curves_and_training_loss(tmp_path):
    fpr = np.linspace(0, 1, 101)
    curves = {"can": (fpr, np.sqrt(fpr)), "short": (np.array([0.0, 0.01]), np.array([0.0, 0.2])),
              "empty": (np.array([]), np.array([])), "nan": (fpr, np.full(101, np.nan))}
    read_png(plots.plot_pro_curves(tmp_path / "pro" / "p.png", curves),
             (1380, 552))
    read_png(plots.plot_pro_curves(tmp_path / "pro_none" / "p.png", {}), (1380, 552))
    losses = {"can": [1.0, 0.5, 0.25], "single": [0.7], "reused": [], "nan": [math.nan]}
    read_png(plots.plot_training_loss(tmp_path / "loss" / "l.png", losses), (780, 540))
    read_png(plots.plot_training_loss(tmp_path / "loss_none" / "l.png", {}), (780, 540))
