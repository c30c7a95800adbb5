"""Illumination normalisation before the backbone: each image's per-channel brightness (mean)
and contrast (std) are projected onto the range seen in the training images.

MVTec AD 2 trains in regular light and tests under over- and underexposure and lighting
shifts; frozen features change with the light and every scorer on them fails there (an
underexposed image's AU-PRO collapses). Projecting the statistics back onto the training
range undoes global exposure and colour casts, while an image whose statistics already lie
inside that range (every regular-light image, by construction every training image) is
left exactly as it is, so regular-light quality cannot change.

    x' = (x - m) / s * clamp(s, s_low, s_high) + clamp(m, m_low, m_high)    per image and channel

Local changes (gradients across the image) are left to the heads, trained on synthetic
gradients (``synthetic.illumination_field``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_STD = 1e-3  # a flat channel (a black image) is lifted without dividing by ~0


@dataclass
class IlluminationRange:
    """Per-channel range ``[3]`` of the training images' means and stds (network input in [0, 1])."""

    mean_low: torch.Tensor
    mean_high: torch.Tensor
    std_low: torch.Tensor
    std_high: torch.Tensor

    @classmethod
    def of(cls, means: torch.Tensor, stds: torch.Tensor) -> "IlluminationRange":
        """From per-image channel means and stds ``[N, 3]`` of the training images."""
        return cls(means.min(0).values, means.max(0).values, stds.min(0).values, stds.max(0).values)

    def targets(self, means: torch.Tensor, stds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For per-image channel means and stds ``[B, 3]``: the projected means and stds ``[B, 3]``
        and whether each image already lies inside the range ``[B]``."""
        target_means = torch.maximum(torch.minimum(means, self.mean_high.to(means)), self.mean_low.to(means))
        target_stds = torch.maximum(torch.minimum(stds, self.std_high.to(stds)), self.std_low.to(stds))
        return target_means, target_stds, ((target_means == means) & (target_stds == stds)).all(-1)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, h, w]`` in [0, 1] -> the same, each image projected onto the range (unchanged if inside)."""
        means, stds = channel_stats(images)
        target_means, target_stds, inside = self.targets(means, stds)
        if bool(inside.all()):
            return images
        gain = (target_stds / stds.clamp_min(MIN_STD))[..., None, None]
        projected = (images - means[..., None, None]) * gain + target_means[..., None, None]
        return torch.where(inside[:, None, None, None], images, projected)

    def state(self) -> dict[str, torch.Tensor]:
        return {"mean_low": self.mean_low, "mean_high": self.mean_high, "std_low": self.std_low,
                "std_high": self.std_high}


def channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and std ``[B, 3]`` of ``[B, 3, h, w]`` images."""
    flat = images.flatten(2).float()
    return flat.mean(-1), flat.std(-1, unbiased=False)
