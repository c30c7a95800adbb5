"""Illumination normalisation: the light field and the channel statistics projected onto the training range."""

import torch

from anomalyvfm.illumination import FIELD_GRID, IlluminationRange, channel_stats, field_coefficients, light_stats


TRAIN = torch.stack([torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(i)) * (0.4 + 0.1 * i) + 0.1 * i
                     for i in range(3)])


def _range(train: torch.Tensor = TRAIN) -> IlluminationRange:
    return IlluminationRange.of(*light_stats(train))


def _ramp(height: int, width: int, low: float, high: float) -> torch.Tensor:
    """``[h, w]`` gain rising linearly from ``low`` at the left edge to ``high`` at the right."""
    return torch.linspace(low, high, width).expand(height, width)


def test_images_inside_the_training_range_are_left_exactly_as_they_are():
    illumination = _range()
    assert torch.equal(illumination.apply(TRAIN), TRAIN)  # every training image, by construction


def test_the_light_field_is_the_least_squares_plane_of_the_log_image():
    # One pixel per cell: the coarse image is the image itself, so the plane is known exactly.
    centres = (torch.arange(FIELD_GRID) + 0.5) / FIELD_GRID * 2 - 1
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    planes = torch.tensor([[-1.0, 0.3, -0.2], [-0.5, 0.0, 0.1], [-2.0, -0.4, 0.0]])
    image = torch.stack([(a + b * x + c * y).exp() for a, b, c in planes])[None]
    torch.testing.assert_close(field_coefficients(image)[0], planes, atol=1e-5, rtol=0)


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


def test_a_light_ramp_and_a_colour_cast_outside_the_training_range_are_divided_out():
    generator = torch.Generator().manual_seed(0)
    train = 0.3 + 0.2 * torch.rand(6, 3, 64, 96, generator=generator)  # evenly lit, grey, 0.3-0.5
    illumination = _range(train)
    scene = 0.3 + 0.2 * torch.rand(1, 3, 64, 96, generator=generator)
    cast = torch.tensor([1.3, 1.0, 0.7])[:, None, None]
    relit = scene * _ramp(64, 96, 0.5, 1.5) * cast
    restored = illumination.apply(relit)
    excess = illumination.field_excess(field_coefficients(restored))
    assert excess.abs().max() < 0.05 < illumination.field_excess(field_coefficients(relit)).abs().max()
    # What is left of the ramp and the cast is far less than what the light did to the scene.
    assert (restored - scene).abs().mean() < 0.2 * (relit - scene).abs().mean()


def test_a_model_saved_without_a_field_range_leaves_the_light_field_to_the_statistics_step():
    generator = torch.Generator().manual_seed(1)
    train = 0.3 + 0.2 * torch.rand(6, 3, 64, 96, generator=generator)
    without_field = IlluminationRange.of(*light_stats(train))
    without_field.field_low = without_field.field_high = None
    assert set(without_field.state()) == {"mean_low", "mean_high", "std_low", "std_high"}
    ramped = train[:1] * _ramp(64, 96, 0.5, 1.5)
    means, stds = channel_stats(ramped)
    target_means, target_stds, _ = without_field.targets(means, stds)
    stats_only = (ramped - means[..., None, None]) * (target_stds / stds)[..., None, None] + target_means[..., None, None]
    torch.testing.assert_close(without_field.apply(ramped), stats_only)
    assert not torch.allclose(_range(train).apply(ramped), stats_only, atol=1e-2)


def test_only_the_images_outside_the_range_change_in_a_batch():
    illumination = _range()
    inside = TRAIN[1:2]
    batch = torch.cat([inside, inside.clamp(0, 1) * 0.1 + 0.9])
    out = illumination.apply(batch)
    assert torch.equal(out[0], batch[0]) and not torch.equal(out[1], batch[1])
