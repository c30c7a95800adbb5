"""The synthetic training samples: three nuisance stages, each carrying a pasted defect.

``SYNTHETIC_SAMPLES`` variants of the training images (90 by default), a third per stage:

- photometric: AD 2's lighting conditions (overexposure with clipping, underexposure,
  colour casts, smooth illumination gradients and spotlights across the image, gamma);
  ``shift_1..4`` in AD 2 are lighting shifts, so this stage is where they are learnt;
- geometric: small rotations and scale changes (pose jitter of the same scene);
- noise: sensor noise.

A share ``DEFECT_SHARE`` of the samples also gets one synthetic defect with a known mask: a
Perlin-noise blob, a thin scar or a small spot of 1-4 patches, filled with the texture of
another normal training image or with an intensity change, and alpha-blended.

What the heads learn from them (``training.py``): to undo the nuisances of ``RESTORED_STAGES``
(a sample's tokens should become those of its content in regular light, ``SyntheticSample.regular``)
and never the content itself. So in those stages the defect is pasted first and the light or the
noise falls on it, as on a real part; a pose change is normal variation, which the heads leave
as it is (its defect is pasted after the warp, so the mask stays in the sample's frame).
Everything is drawn from one seeded generator: the same seed gives the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

STAGES = ("photometric", "geometric", "noise")
RESTORED_STAGES = ("photometric", "noise")  # nuisances the heads learn to undo
DEFECT_SHARE = 2 / 3  # the rest are defect-free nuisance variants
DEFECT_KINDS = ("blob", "scar", "spot")
DEFECT_TOKEN_FRACTION = 0.3  # a patch whose area is at least this much defect is a defect token


@dataclass
class SyntheticSample:
    image: torch.Tensor         # [3, h, w] in [0, 1], at network input size
    mask: torch.Tensor          # [h, w] bool, the pasted defect (all False when none)
    source: int                 # index of the clean training image it was made from
    stage: str                  # one of STAGES; calibration samples: "regular" or "photometric"
    defect: str = ""            # one of DEFECT_KINDS, or "" when the sample has no defect
    # RESTORED_STAGES: the same content (defect included) before the nuisance, [3, h, w]; for a
    # sample without a defect that is its source image. None for the other stages.
    regular: torch.Tensor | None = None


def make_synthetic_samples(load_source: Callable[[int], torch.Tensor], num_sources: int, count: int,
                           seed: int) -> Iterator[SyntheticSample]:
    """``count`` samples (a multiple of 3), ``count // 3`` per stage, from random sources, made one at a
    time as they are taken (so a consumer that encodes and drops them holds only a few images at once).

    ``load_source(i)`` returns training image ``i`` as ``[3, h, w]`` in [0, 1] at network input size.
    """
    rng = np.random.default_rng(seed)
    per_stage = count // len(STAGES)
    for stage in STAGES:
        sources = rng.choice(num_sources, size=per_stage, replace=per_stage > num_sources)
        with_defect = rng.permutation(per_stage) < round(DEFECT_SHARE * per_stage)
        restored = stage in RESTORED_STAGES
        for source, defective in zip(sources.tolist(), with_defect.tolist()):
            image = load_source(source)
            if not restored:
                image = NUISANCES[stage](image, rng)
            mask = torch.zeros(image.shape[1:], dtype=torch.bool)
            kind = ""
            if defective:
                kind = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
                donor = load_source(int(rng.integers(num_sources))) if num_sources > 1 else image
                image, mask = paste_defect(image, donor, kind, rng)
            regular = image if restored else None
            if restored:
                image = NUISANCES[stage](image, rng)
            yield SyntheticSample(image=image, mask=mask, source=source, stage=stage, defect=kind, regular=regular)


def make_calibration_samples(load_source: Callable[[int], torch.Tensor], num_sources: int, pairs: int,
                             seed: int) -> list[SyntheticSample]:
    """Samples for choosing the decision thresholds: ``pairs`` times, for a source image, one defect-free
    lighting variant and one pasted defect, under a lighting variant half the time.

    The sources are a seeded permutation of the ``num_sources`` images, taken in turn and from the
    start again when ``pairs`` exceeds them: a small validation set (6 images on the demo) still
    gets ``pairs`` different lightings and defects, not ``num_sources``.
    ``load_source(i)`` returns validation image ``i`` as ``[3, h, w]`` in [0, 1] at network input size.
    A generator of its own (not the training samples' stream): the same seed gives the same samples.
    """
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(num_sources).tolist()
    sources = [order[i % num_sources] for i in range(pairs)] if num_sources else []
    samples = []
    for source in sources:
        image = load_source(source)
        samples.append(SyntheticSample(image=_photometric(image, rng), mask=torch.zeros(image.shape[1:], dtype=torch.bool),
                                       source=source, stage="photometric"))
        relit = rng.random() < 0.5
        base = _photometric(image, rng) if relit else image
        kind = DEFECT_KINDS[int(rng.integers(len(DEFECT_KINDS)))]
        donor = load_source(int(rng.choice(sources))) if len(sources) > 1 else image
        defective, mask = paste_defect(base, donor, kind, rng)
        samples.append(SyntheticSample(image=defective, mask=mask, source=source,
                                       stage="photometric" if relit else "regular", defect=kind))
    return samples


# -- nuisances ---------------------------------------------------------------------------------
def _photometric(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One of AD 2's illuminations: exposure change, colour cast, gradient or spotlight, gamma."""
    _, height, width = image.shape
    gain = float(rng.choice([rng.uniform(0.3, 0.7), rng.uniform(1.3, 2.0), rng.uniform(0.8, 1.2)]))
    cast = torch.from_numpy(rng.uniform(0.85, 1.15, 3)).float().view(3, 1, 1)
    field = illumination_field(height, width, rng)
    image = image ** float(rng.uniform(0.8, 1.25))
    return (image * gain * cast * field).clamp(0.0, 1.0)


def illumination_field(height: int, width: int, rng: np.random.Generator) -> torch.Tensor:
    """A smooth multiplicative light field ``[1, h, w]``: a linear ramp at a random angle, or a spotlight."""
    ys = torch.linspace(-1, 1, height).view(-1, 1)
    xs = torch.linspace(-1, 1, width).view(1, -1)
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (math.cos(angle) * xs + math.sin(angle) * ys) / math.sqrt(2)  # in [-1, 1]
        low, high = sorted(rng.uniform(0.5, 1.5, 2))
        field = low + (high - low) * (ramp + 1) / 2
    else:
        cy, cx = rng.uniform(-0.7, 0.7, 2)
        radius = rng.uniform(0.6, 1.6)
        falloff = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * radius ** 2))
        field = rng.uniform(0.45, 0.8) + rng.uniform(0.4, 0.9) * falloff
    return field[None].float()


def _geometric(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Rotation by +-10 degrees and scale 0.9-1.1 about the centre, in pixel units (aspect ratio kept).

    Plain ``affine_grid``/``grid_sample``: importing torchvision for this took 3.5 s of every start.
    """
    angle, scale = math.radians(float(rng.uniform(-10, 10))), float(rng.uniform(0.9, 1.1))
    _, height, width = image.shape
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[[cos, -sin * height / width, 0.0], [sin * width / height, cos, 0.0]]])
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def _noise(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    sigma = float(rng.uniform(0.02, 0.08))
    noise = torch.from_numpy(rng.standard_normal(image.shape).astype(np.float32))
    return (image + sigma * noise).clamp(0.0, 1.0)


NUISANCES: dict[str, Callable[[torch.Tensor, np.random.Generator], torch.Tensor]] = {
    "photometric": _photometric, "geometric": _geometric, "noise": _noise}


# -- defects -----------------------------------------------------------------------------------
def paste_defect(image: torch.Tensor, donor: torch.Tensor, kind: str, rng: np.random.Generator,
                 patch_size: int = 14) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend one defect of ``kind`` into ``image`` ``[3, h, w]``; returns (image, mask ``[h, w]`` bool).

    The fill is the donor's texture (another normal image, shifted) or an intensity change of
    the image itself; the blend weight is drawn in [0.5, 1] (GLASS blends around 0.5).
    """
    _, height, width = image.shape
    mask = DEFECT_MASKS[kind](height, width, rng, patch_size)
    if rng.random() < 0.5:
        shift = (int(rng.integers(height)), int(rng.integers(width)))
        fill = torch.roll(F.interpolate(donor[None], size=(height, width), mode="bilinear")[0], shift, dims=(1, 2))
    else:
        factor = float(rng.choice([rng.uniform(0.2, 0.6), rng.uniform(1.5, 2.5)]))
        fill = (image * factor + float(rng.uniform(-0.15, 0.15))).clamp(0.0, 1.0)
    weight = float(rng.uniform(0.5, 1.0)) * mask.float()
    return image * (1 - weight) + fill * weight, mask


def _perlin_blob(height: int, width: int, rng: np.random.Generator, patch_size: int) -> torch.Tensor:
    """Threshold of smooth multi-octave value noise, cut to a random window: an irregular blob."""
    noise = torch.zeros(1, 1, height, width)
    for octave in range(3):
        cells = 2 ** (octave + 2)
        grid = torch.from_numpy(rng.standard_normal((1, 1, cells, cells)).astype(np.float32))
        noise += F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False) / 2 ** octave
    noise = noise[0, 0]
    window = torch.zeros(height, width, dtype=torch.bool)
    box_h, box_w = (max(patch_size, int(side * rng.uniform(0.1, 0.35))) for side in (height, width))
    top, left = int(rng.integers(0, height - box_h + 1)), int(rng.integers(0, width - box_w + 1))
    window[top:top + box_h, left:left + box_w] = True
    inside = noise[window]
    mask = window & (noise > torch.quantile(inside, float(rng.uniform(0.4, 0.7))))
    return mask if mask.any() else window


def _scar(height: int, width: int, rng: np.random.Generator, patch_size: int) -> torch.Tensor:
    """A thin crack or scratch: a slightly curved stroke, 2-6 pixels wide."""
    length = rng.uniform(0.1, 0.35) * max(height, width)
    y0, x0 = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
    angle, bend = rng.uniform(0, math.pi), rng.uniform(-0.6, 0.6)
    steps = torch.linspace(0, 1, 200)
    ys = y0 + length * steps * math.sin(angle) + bend * length * (steps ** 2) * math.cos(angle)
    xs = x0 + length * steps * math.cos(angle) - bend * length * (steps ** 2) * math.sin(angle)
    half_width = rng.uniform(1.0, 3.0)
    yy, xx = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    mask = torch.zeros(height, width, dtype=torch.bool)
    for y, x in zip(ys[::4].tolist(), xs[::4].tolist()):
        mask |= (yy - y) ** 2 + (xx - x) ** 2 <= half_width ** 2
    return mask


def _spot(height: int, width: int, rng: np.random.Generator, patch_size: int) -> torch.Tensor:
    """A small ellipse 1-4 patches across: the size of AD 2's smallest defects at the network's scale."""
    radius_y, radius_x = rng.uniform(0.5, 2.0, 2) * patch_size
    cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    yy, xx = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    return ((yy - cy) / radius_y) ** 2 + ((xx - cx) / radius_x) ** 2 <= 1.0


DEFECT_MASKS = {"blob": _perlin_blob, "scar": _scar, "spot": _spot}


def token_labels(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per-patch labels ``[gh, gw]`` from a pixel mask ``[h, w]``: 1 defect, 0 normal, -1 ignored.

    A patch is a defect token when at least ``DEFECT_TOKEN_FRACTION`` of it is defect, normal
    when none of it is; patches that a defect only grazes are left out of the loss.
    """
    covered = F.avg_pool2d(mask[None, None].float(), patch_size)[0, 0]
    labels = torch.full(covered.shape, -1, dtype=torch.long)
    labels[covered == 0] = 0
    labels[covered >= DEFECT_TOKEN_FRACTION] = 1
    return labels
