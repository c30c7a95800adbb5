"""Decision thresholds chosen on validation images with lighting variants and synthetic defects."""

import numpy as np
import pytest
import torch

from anomalyvfm import metrics
from anomalyvfm.calibration import (CALIBRATION_PAIRS, IMAGE_RULE, PIXEL_RULE, QUANTILE_LIGHTING, QUANTILE_REGULAR,
                                   calibrate_thresholds, calibration_set, candidate_thresholds)
from anomalyvfm.method import Method
from anomalyvfm.model import PEAK_FLOOR, RawScores, ScaleModel, full_size_map
from anomalyvfm.scoring import ScoreFusion
from anomalyvfm.synthetic import make_calibration_samples

PATCH = 14


def _validation_images(count: int, size: tuple[int, int] = (56, 84)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [0.3 + 0.4 * torch.rand(3, *size, generator=generator) for _ in range(count)]


def test_calibration_samples_pair_a_lighting_variant_with_a_defect_per_source():
    images = _validation_images(4)
    samples = make_calibration_samples(lambda i: images[i], len(images), pairs=3, seed=5)
    assert len(samples) == 6  # two samples a pair
    clean, defective = samples[0::2], samples[1::2]
    assert all(not s.defect and not s.mask.any() and s.stage == "photometric" for s in clean)
    assert all(s.defect and s.mask.any() for s in defective)
    assert all(not torch.equal(s.image, images[s.source]) for s in clean)  # re-lit
    assert [s.source for s in clean] == [s.source for s in defective] and len({s.source for s in clean}) == 3
    again = make_calibration_samples(lambda i: images[i], len(images), pairs=3, seed=5)
    assert all(torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask) for a, b in zip(samples, again))


def test_a_small_validation_set_still_gets_every_pair_from_its_images_in_turn():
    images = _validation_images(3)
    samples = make_calibration_samples(lambda i: images[i], len(images), pairs=7, seed=5)
    sources = [s.source for s in samples[0::2]]
    assert len(samples) == 14 and sorted(sources[:3]) == [0, 1, 2] and sources == sources[:3] * 2 + sources[:1]
    variants = [s.image for s in samples[0::2]]
    assert not torch.equal(variants[0], variants[3])  # the same image in turn, under another light
    # With at least as many images as pairs, the first ones of the same seeded order, as before.
    first = make_calibration_samples(lambda i: images[i], len(images), pairs=2, seed=5)
    assert [s.source for s in first] == [s.source for s in samples[:4]]
    assert make_calibration_samples(lambda i: images[i], 0, pairs=7, seed=5) == []


class _MaskReadingRunner:
    """Stands in for ``fit.Runner``: its "patch distance" is how much of each patch is brighter than
    the image's own median plus a margin, so a pasted bright defect scores and everything else does not."""

    method = Method()

    def raw_scores_of_images(self, scale: ScaleModel, images: list[torch.Tensor]) -> RawScores:
        raw = RawScores.empty(len(images), 4)
        for index, image in enumerate(images):
            raw.grids[index] = self.grid(image)
            raw.input_sizes[index] = tuple(image.shape[1:])
        return raw

    @staticmethod
    def grid(image: torch.Tensor) -> torch.Tensor:
        gray = image.mean(0)
        outlier = (gray - gray.median()).abs() > 0.25
        return torch.nn.functional.avg_pool2d(outlier[None, None].float(), PATCH)[0, 0]


def test_candidate_rules_and_the_product_rule_on_a_constructed_calibration_set():
    images = _validation_images(6)
    runner = _MaskReadingRunner()
    scale = ScaleModel(56, heads=None, cls_scorer=None, patch_scorer=None, illumination=None,
                       fusion=ScoreFusion(0.0, 1.0, 0.0, 1.0))
    validation = runner.raw_scores_of_images(scale, images)
    calibration = calibration_set(runner, [scale], lambda i: images[i], [validation], seed=0)
    # 6 validation images, CALIBRATION_PAIRS pairs made from them in turn.
    assert calibration.count == 6 and int(calibration.labels.sum()) == int(calibration.relit.sum()) == CALIBRATION_PAIRS
    pixel, image = candidate_thresholds(calibration)

    # Rebuilt by hand: the same maps, masks and scores.
    samples = make_calibration_samples(lambda i: images[i], 6, CALIBRATION_PAIRS, 0)
    synthetic = runner.raw_scores_of_images(scale, [s.image for s in samples])
    maps = [full_size_map([scale], [validation], i, (56, 84)) for i in range(6)]
    maps += [full_size_map([scale], [synthetic], j, (56, 84)) for j in range(len(samples))]
    masks = [np.zeros((56, 84), bool)] * 6 + [s.mask.numpy() for s in samples]
    scores = np.concatenate([validation.peaks, synthetic.peaks])
    labels = np.array([0] * 6 + [int(bool(s.defect)) for s in samples])
    normal = [i for i in range(len(maps)) if i < 6 or not samples[i - 6].defect]

    # "F1 synthetic" reaches the best F1 of any threshold tried, for pixels and images.
    best = metrics.seg_f1(maps, masks, pixel["F1 synthetic"])
    for candidate in np.quantile(np.concatenate([m.ravel() for m in maps]), np.linspace(0.5, 1.0, 41)):
        assert metrics.seg_f1(maps, masks, float(candidate)) <= best + 1e-12
    best_image = metrics.class_f1(scores, labels, image["F1 synthetic"])
    assert all(metrics.class_f1(scores, labels, float(c)) <= best_image + 1e-12 for c in np.unique(scores))
    # The baseline rules: regular validation maps only, and with the defect-free lighting variants.
    assert pixel["mean+3σ regular"] == pytest.approx(metrics.mean_plus_k_std(maps[:6]))
    assert pixel["mean+3σ with lighting"] == pytest.approx(metrics.mean_plus_k_std([maps[i] for i in normal]))
    assert image["mean+3σ with lighting"] == pytest.approx(metrics.mean_plus_k_std(scores[normal]))
    # The quantile rules: one normal pixel (image) in a thousand at or above them.
    normal_pixels = np.concatenate([maps[i].ravel() for i in normal])
    assert pixel[QUANTILE_LIGHTING] == pytest.approx(float(np.quantile(normal_pixels, 0.999)))
    assert pixel[QUANTILE_REGULAR] == pytest.approx(float(np.quantile(np.concatenate([m.ravel() for m in maps[:6]]), 0.999)))
    assert image[QUANTILE_LIGHTING] == pytest.approx(float(np.quantile(scores[normal], 0.999)))
    for rules in (pixel, image):
        pair = (rules["F1 synthetic"], rules["mean+3σ with lighting"])
        assert rules["min(F1 synthetic, mean+3σ with lighting)"] == min(pair)
        assert rules["midpoint(F1 synthetic, mean+3σ with lighting)"] == pytest.approx(sum(pair) / 2)

    thresholds = calibrate_thresholds(runner, [scale], lambda i: images[i], [validation], seed=0)
    assert (thresholds.record["pixel_rule"], thresholds.record["image_rule"]) == (PIXEL_RULE, IMAGE_RULE)
    assert (thresholds.pixel, thresholds.image) == (pixel[PIXEL_RULE], image[IMAGE_RULE])
    assert thresholds.pixel == pytest.approx(float(np.quantile(normal_pixels, 0.999)))
    assert thresholds.image == min(image["F1 synthetic"], image["mean+3σ with lighting"])
    # The recorded F1 is that of the masks the product makes: each map cut at its own floor too.
    cuts = [max(thresholds.pixel, np.median(m) + PEAK_FLOOR * (m.max() - np.median(m))) for m in maps]
    assert thresholds.record["pixel_f1"] == pytest.approx(metrics.seg_f1(maps, masks, cuts))
    assert thresholds.record["peak_floor"] == PEAK_FLOOR
    assert thresholds.record["baseline_rule_fallback"] == []
