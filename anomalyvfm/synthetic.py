"""The synthetic training samples: three stages mirroring AD 2's nuisances.

``SYNTHETIC_SAMPLES`` normal-looking variants of the training images (90 by default),
a third per stage: photometric (brightness, contrast, saturation, gamma: AD 2's over-
and underexposure), geometric (rotation, scale, shift: AD 2's position shifts) and
noise (sensor noise). Each sample remembers its clean source and, for the geometric
stage, its affine parameters, so the source's features can be warped onto it.
Everything is drawn from one seeded generator: the same seed gives the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

STAGES = ("photometric", "geometric", "noise")


@dataclass
class Affine:
    """Rotation about the centre (degrees), translation (fractions of width, height), scale."""

    angle: float
    translate: tuple[float, float]
    scale: float

    def apply(self, image: torch.Tensor, interpolation=v2.InterpolationMode.BILINEAR) -> torch.Tensor:
        """Warp ``[C, h, w]``; works for images and for feature grids alike."""
        height, width = image.shape[-2:]
        return TF.affine(image, angle=self.angle, translate=[self.translate[0] * width, self.translate[1] * height],
                         scale=self.scale, shear=[0.0, 0.0], interpolation=interpolation)


@dataclass
class SyntheticSample:
    image: torch.Tensor  # [3, h, w] in [0, 1], at network input size
    source: int          # index of the clean training image it was made from
    stage: str           # one of STAGES
    affine: Affine | None = None


def make_synthetic_samples(load_source: Callable[[int], torch.Tensor], num_sources: int, count: int,
                           seed: int) -> list[SyntheticSample]:
    """``count`` samples (a multiple of 3), ``count // 3`` per stage, from random sources.

    ``load_source(i)`` returns training image ``i`` as ``[3, h, w]`` in [0, 1].
    """
    rng = np.random.default_rng(seed)
    noise_generator = torch.Generator().manual_seed(seed)
    per_stage = count // len(STAGES)
    samples = []
    for stage in STAGES:
        for source in rng.choice(num_sources, size=per_stage, replace=per_stage > num_sources):
            image = load_source(int(source))
            affine = None
            if stage == "photometric":
                image = _photometric(image, rng)
            elif stage == "geometric":
                affine = Affine(angle=float(rng.uniform(-10, 10)),
                                translate=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.06, 0.06))),
                                scale=float(rng.uniform(0.9, 1.1)))
                image = affine.apply(image)
            else:
                sigma = float(rng.uniform(0.02, 0.08))
                image = (image + sigma * torch.randn(image.shape, generator=noise_generator)).clamp(0.0, 1.0)
            samples.append(SyntheticSample(image=image, source=int(source), stage=stage, affine=affine))
    return samples


def _photometric(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    image = TF.adjust_brightness(image, float(rng.uniform(0.5, 1.5)))
    image = TF.adjust_contrast(image, float(rng.uniform(0.7, 1.3)))
    image = TF.adjust_saturation(image, float(rng.uniform(0.7, 1.3)))
    return TF.adjust_gamma(image, float(rng.uniform(0.8, 1.25))).clamp(0.0, 1.0)
