"""Synthetic training samples: nuisance stages, pasted defects, token labels."""

import numpy as np
import torch

from anomalyvfm.synthetic import (DEFECT_KINDS, RESTORED_STAGES, STAGES, illumination_field, make_synthetic_samples,
                                  paste_defect, token_labels)


def _images(n=5, size=(56, 84)):
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, *size, generator=generator) for _ in range(n)]


def test_three_equal_stages_seeded_and_mostly_defective():
    images = _images()
    samples = list(make_synthetic_samples(lambda i: images[i], len(images), 30, seed=4))
    assert [s.stage for s in samples] == [stage for stage in STAGES for _ in range(10)]
    again = make_synthetic_samples(lambda i: images[i], len(images), 30, seed=4)
    for a, b in zip(samples, again):
        assert a.source == b.source and torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    for sample in samples:
        assert sample.image.shape == images[sample.source].shape and sample.mask.shape == sample.image.shape[1:]
        assert 0.0 <= sample.image.min() and sample.image.max() <= 1.0
        assert bool(sample.mask.any()) == bool(sample.defect)
    assert sum(bool(s.defect) for s in samples) == 21  # round(2/3 * 10) per stage


def test_pasted_defect_changes_pixels_only_inside_its_mask():
    rng = np.random.default_rng(0)
    image, donor = torch.full((3, 70, 98), 0.5), torch.rand(3, 70, 98)
    for kind in DEFECT_KINDS:
        pasted, mask = paste_defect(image, donor, kind, rng)
        assert mask.any()
        changed = (pasted != image).any(0)
        assert not changed[~mask].any()
        assert changed[mask].float().mean() > 0.5


def test_token_labels_follow_the_mask_on_the_patch_grid():
    mask = torch.zeros(28, 42, dtype=torch.bool)
    mask[0:14, 14:28] = True          # patch (0, 1) fully covered
    mask[14:16, 28:42] = True         # patch (1, 2) grazed: 2 of 14 rows
    mask[14:20, 0:14] = True          # patch (1, 0) covered 6/14 = 0.43
    labels = token_labels(mask, 14)
    assert labels.tolist() == [[0, 1, 0], [1, 0, -1]]


def test_illumination_field_is_smooth_and_positive():
    field = illumination_field(50, 80, np.random.default_rng(3))
    assert field.shape == (1, 50, 80) and field.min() > 0.3
    assert (field[0, :, 1:] - field[0, :, :-1]).abs().max() < 0.1  # no edges: a light field, not a defect


def test_restored_stages_keep_their_content_in_regular_light():
    """Photometric and noise samples carry their content before the nuisance (the training target): the
    source with the defect pasted in, and nothing else changed; pose samples carry none."""
    images = _images()
    for sample in make_synthetic_samples(lambda i: images[i], len(images), 30, seed=2):
        if sample.stage not in RESTORED_STAGES:
            assert sample.regular is None
            continue
        source = images[sample.source]
        changed = (sample.regular != source).any(0)
        assert not changed[~sample.mask].any()
        assert bool(changed.any()) == bool(sample.defect)
        assert not torch.equal(sample.image, sample.regular)  # the nuisance falls on the content
