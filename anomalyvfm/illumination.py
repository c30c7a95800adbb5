"""Illumination normalisation before the backbone, in two steps, each a projection onto the range
seen in the training images.

MVTec AD 2 trains in regular light and tests under over- and underexposure and lighting
shifts (colour casts, gradients, spotlights); frozen features change with the light and every
scorer on them fails there. Both steps leave an image whose statistics already lie inside the
training range exactly as it is (every training image, by construction, and most regular-light
test images), so they act only on light the training images never showed.

1. **Smooth light field**, per channel: the log of the image at a coarse ``FIELD_GRID`` grid is
   fitted by a plane, ``log I_c(x, y) ~ a_c + b_c x + c_c y`` (``field_coefficients``); the part of
   ``(a, b, c)`` outside the training images' range is divided out as a smooth gain
   ``exp(excess . (1, x, y))``. This undoes colour casts, exposure and illumination ramps across
   the image, which the heads otherwise have to undo on their own.
2. **Global statistics**, per channel: the mean and std are clamped to the training range,

       x' = (x - m) / s * clamp(s, s_low, s_high) + clamp(m, m_low, m_high)

Why a plane (degree 1): on the shared datasets' lighting-stressed copies at IMAGE_SIZE 448 a
plane closed the tyre's shift group from 0.062 below regular light to 0.003 above it; a
quadratic surface did a little worse there (docs/Lighting_and_Thresholds.md has the numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MIN_STD = 1e-3  # a flat channel (a black image) is lifted without dividing by ~0
FIELD_GRID = 32  # the light field is fitted on the image averaged to FIELD_GRID x FIELD_GRID cells
MIN_LEVEL = 1e-3  # cells darker than this count as this dark (log of 0)


def _plane_basis(device: torch.device | None = None) -> torch.Tensor:
    """``[FIELD_GRID**2, 3]``: 1, x, y at the cell centres, x and y in [-1, 1]."""
    centres = (torch.arange(FIELD_GRID, dtype=torch.float32, device=device) + 0.5) / FIELD_GRID * 2 - 1
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack([torch.ones_like(x), x, y], -1).reshape(-1, 3)


def field_coefficients(images: torch.Tensor) -> torch.Tensor:
    """Per image and channel the least-squares plane ``(a, b, c)`` of the coarse log image: ``[B, 3, 3]``.

    ``images`` ``[B, 3, h, w]`` in [0, 1]; x runs along the width, y along the height, both in [-1, 1]
    whatever the aspect ratio, so images of different sizes are compared by their relative positions.
    """
    cells = F.adaptive_avg_pool2d(images.float(), FIELD_GRID).clamp_min(MIN_LEVEL).log()  # [B, 3, G, G]
    basis = _plane_basis(images.device)
    return cells.flatten(2) @ torch.linalg.pinv(basis).T  # [B, 3, G*G] @ [G*G, 3]


def light_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What ``IlluminationRange.of`` needs of ``[B, 3, h, w]`` images: channel means and stds ``[B, 3]``
    each (``channel_stats``) and light fields ``[B, 3, 3]`` (``field_coefficients``)."""
    return *channel_stats(images), field_coefficients(images)


@dataclass
class IlluminationRange:
    """Per-channel range ``[3]`` of the training images' means and stds (network input in [0, 1]) and
    of their light fields' coefficients ``[3, 3]`` (``field_coefficients``). A model saved before 1.3.0
    has no field range (None): its images get the statistics step only, as when it was fitted."""

    mean_low: torch.Tensor
    mean_high: torch.Tensor
    std_low: torch.Tensor
    std_high: torch.Tensor
    field_low: torch.Tensor | None = None
    field_high: torch.Tensor | None = None

    @classmethod
    def of(cls, means: torch.Tensor, stds: torch.Tensor, fields: torch.Tensor) -> "IlluminationRange":
        """From the training images' ``light_stats``: means and stds ``[N, 3]``, fields ``[N, 3, 3]``."""
        return cls(means.min(0).values, means.max(0).values, stds.min(0).values, stds.max(0).values,
                   fields.min(0).values, fields.max(0).values)

    def targets(self, means: torch.Tensor, stds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For per-image channel means and stds ``[B, 3]``: the projected means and stds ``[B, 3]``
        and whether each image already lies inside the range ``[B]``."""
        target_means = torch.maximum(torch.minimum(means, self.mean_high.to(means)), self.mean_low.to(means))
        target_stds = torch.maximum(torch.minimum(stds, self.std_high.to(stds)), self.std_low.to(stds))
        return target_means, target_stds, ((target_means == means) & (target_stds == stds)).all(-1)

    def field_excess(self, fields: torch.Tensor) -> torch.Tensor:
        """The part ``[B, 3, 3]`` of light fields ``[B, 3, 3]`` outside the training range (0 inside it)."""
        return fields - torch.maximum(torch.minimum(fields, self.field_high.to(fields)), self.field_low.to(fields))

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, h, w]`` in [0, 1] -> the same, each image's light field and then its channel statistics
        projected onto the training range (an image inside both is returned unchanged)."""
        return self._project_stats(self._flatten_field(images))

    def _flatten_field(self, images: torch.Tensor) -> torch.Tensor:
        if self.field_low is None or self.field_high is None:
            return images
        excess = self.field_excess(field_coefficients(images))
        if not bool(excess.any()):
            return images
        gain = (excess @ _plane_basis(images.device).T).exp().reshape(*excess.shape[:2], FIELD_GRID, FIELD_GRID)
        gain = F.interpolate(gain, size=images.shape[-2:], mode="bilinear", align_corners=False)
        changed = excess.flatten(1).any(-1)[:, None, None, None]
        return torch.where(changed, (images / gain.to(images.dtype)).clamp(0, 1), images)

    def _project_stats(self, images: torch.Tensor) -> torch.Tensor:
        means, stds = channel_stats(images)
        target_means, target_stds, inside = self.targets(means, stds)
        if bool(inside.all()):
            return images
        gain = (target_stds / stds.clamp_min(MIN_STD))[..., None, None]
        projected = (images - means[..., None, None]) * gain + target_means[..., None, None]
        return torch.where(inside[:, None, None, None], images, projected)

    def state(self) -> dict[str, torch.Tensor]:
        fields = {} if self.field_low is None else {"field_low": self.field_low, "field_high": self.field_high}
        return {"mean_low": self.mean_low, "mean_high": self.mean_high, "std_low": self.std_low,
                "std_high": self.std_high} | fields


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and std ``[B, 3]`` of ``[B, 3, h, w]`` images."""
    flat = images.flatten(2).float()
    return flat.mean(-1), flat.std(-1, unbiased=False)
