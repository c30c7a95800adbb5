"""Illumination normalisation: projection of channel statistics onto the training range."""

import torch

from anomalyvfm.illumination import IlluminationRange, channel_stats


TRAIN = torch.stack([torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(i)) * (0.4 + 0.1 * i) + 0.1 * i
                     for i in range(3)])


def _range() -> IlluminationRange:
    return IlluminationRange.of(*channel_stats(TRAIN))


def test_images_inside_the_training_range_are_left_exactly_as_they_are():
    illumination = _range()
    assert torch.equal(illumination.apply(TRAIN), TRAIN)  # every training image, by construction


def test_a_dark_image_is_lifted_onto_the_range_and_keeps_its_structure():
    illumination = _range()
    bright = TRAIN[1:2]
    dark = bright * 0.2
    restored = illumination.apply(dark)
    means, stds = channel_stats(restored)
    assert (means >= illumination.mean_low - 1e-6).all() and (means <= illumination.mean_high + 1e-6).all()
    assert (stds >= illumination.std_low - 1e-6).all()
    # A gain and an offset per channel: the pattern is the same, so the correlation is 1.
    assert torch.corrcoef(torch.stack([restored.flatten(), bright.flatten()]))[0, 1] > 0.999


def test_only_the_images_outside_the_range_change_in_a_batch():
    illumination = _range()
    inside = TRAIN[1:2]
    batch = torch.cat([inside, inside.clamp(0, 1) * 0.1 + 0.9])
    out = illumination.apply(batch)
    assert torch.equal(out[0], batch[0]) and not torch.equal(out[1], batch[1])
