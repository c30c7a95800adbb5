"""A small generated dataset in the MVTec AD 2 layout, to try and test the pipeline offline.

``generate_demo_dataset(root)`` writes three procedural categories (numpy + PIL only):

- ``tiles``: a grid of beige tiles with grout lines (a regular pattern);
- ``weave``: a blue woven fabric (a regular texture);
- ``washer``: a metal ring with a keyway notch on a dark background (an object).

Normal images vary a little (position, phase, colour, sensor noise). Defective images carry one
of four defects (scratch, stain, missing piece, contamination) covering 0.5-5 % of the image,
with a pixel-exact 0/255 mask. Test images cycle through the MVTec AD 2 lighting conditions, and
the condition is applied as light, as in AD 2 (every condition is an illumination of the same
scene): ``overexposed`` is brighter and clipped, ``underexposed`` darker, and ``shift_k`` a colour
cast under an uneven illumination (a ramp, a spotlight or a vignette). Output is deterministic
for a given ``seed``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dataset_ad2 import LIGHTING_CONDITIONS, DatasetError

DEMO_CATEGORIES: tuple[str, ...] = ("tiles", "weave", "washer")
_TEST_LIGHTING = LIGHTING_CONDITIONS[:7]  # every condition but "mixed"
# shift_k: (per-channel gain of the colour cast, illumination field) of a lighting shift
_SHIFTS = {"shift_1": ((1.12, 1.0, 0.85), "ramp_x"), "shift_2": ((0.88, 0.97, 1.15), "ramp_y"),
           "shift_3": ((1.08, 1.05, 0.9), "spotlight"), "shift_4": ((0.92, 1.1, 0.95), "vignette")}
_DEFECT_AREA = (0.005, 0.05)  # fraction of the image a defect may cover

Float = np.ndarray  # float32 arrays: [H, W] coordinates/values or [H, W, 3] colours in 0..255


def _rgb(values: Float, colour: Sequence[float]) -> Float:
    """``[H, W]`` intensities times an RGB colour -> ``[H, W, 3]``."""
    return values[:, :, None] * np.asarray(colour, np.float32)


def _jitter(colour: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """A sample's own version of a colour: 3 % brightness and 1 % hue variation."""
    return (np.asarray(colour) * (1 + rng.normal(0, 0.03)) * (1 + rng.normal(0, 0.01, 3))).astype(np.float32)


# -- normal content: (u, v) content coordinates centred on the image, per-sample rng -> [H, W, 3] and
# -- the region a defect may sit on (the object, or everything for a texture) ---------------------
def _tiles(u: Float, v: Float, rng: np.random.Generator) -> tuple[Float, np.ndarray]:
    period, grout = 28.0, 3.0
    iu, iv = np.floor(u / period), np.floor(v / period)
    fu, fv = u / period - iu, v / period - iv
    # each tile's own slight brightness (a fixed hash of its index) and a bevel towards its edges
    tone = 1.0 + 0.05 * np.sin(12.9898 * iu + 78.233 * iv) + rng.normal(0, 0.015)
    bevel = 1.0 - 0.12 * (np.abs(fu - 0.5) + np.abs(fv - 0.5))
    colour = _jitter((200, 180, 150), rng)
    image = _rgb(tone * bevel, colour)
    is_grout = (fu * period < grout) | (fv * period < grout)
    image[is_grout] = (110, 105, 100)
    return image, np.ones(u.shape, bool)


def _weave(u: Float, v: Float, rng: np.random.Generator) -> tuple[Float, np.ndarray]:
    period = 14.0
    warp_on_top = (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    # a thread's cross-section: bright at its centre, dark in the gaps between threads
    warp, weft = np.sin(np.pi * (u / period % 1.0)), np.sin(np.pi * (v / period % 1.0))
    shade = 0.3 + 0.7 * np.where(warp_on_top, warp, weft)
    colour = _jitter((80, 100, 150), rng)
    return _rgb(shade, colour), np.ones(u.shape, bool)


def _washer(u: Float, v: Float, rng: np.random.Generator) -> tuple[Float, np.ndarray]:
    outer = 0.36 * min(u.shape)
    inner = 0.45 * outer
    radius, angle = np.hypot(u, v), np.arctan2(v, u)
    keyway = (u > 0.8 * outer) & (np.abs(v) < 0.1 * outer)  # makes rotations visible
    ring = (radius > inner) & (radius < outer) & ~keyway
    image = _rgb(55 + 12 * (v / u.shape[0]) + rng.normal(0, 2), (1.0, 1.0, 1.05))
    middle, half_width = (inner + outer) / 2, (outer - inner) / 2
    # metal: an anisotropic highlight around the ring and a bevel across it
    metal = 175 + 30 * np.cos(2 * angle) - 25 * np.abs(radius - middle) / half_width + rng.normal(0, 4)
    image[ring] = _rgb(metal, (1.0, 0.98, 0.95))[ring]
    return image, ring


_CATEGORIES: dict[str, Callable[[Float, Float, np.random.Generator], tuple[Float, np.ndarray]]] = {
    "tiles": _tiles, "weave": _weave, "washer": _washer}
# per category: scratch, stain, missing-piece fill (None: the empty background), contamination colours
_DEFECT_COLOURS = {
    "tiles": ((60, 50, 45), (150, 60, 40), (75, 70, 65), (40, 40, 35)),
    "weave": ((225, 215, 170), (190, 140, 50), (10, 10, 12), (240, 240, 235)),
    "washer": ((70, 65, 60), (165, 75, 30), None, (35, 30, 25)),
}


def _coordinates(shape: tuple[int, int], dx: float, dy: float, degrees: float) -> tuple[Float, Float]:
    """Content coordinates ``(u, v)`` of every pixel when the content is moved by (dx, dy) and rotated."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    x, y = x - (shape[1] - 1) / 2 - dx, y - (shape[0] - 1) / 2 - dy
    a = np.float32(np.deg2rad(degrees))
    return np.cos(a) * x + np.sin(a) * y, -np.sin(a) * x + np.cos(a) * y


# -- defects: pixel-exact boolean masks drawn in image coordinates ----------------------------------
def _defect_mask(kind: int, shape: tuple[int, int], centre: tuple[float, float],
                 rng: np.random.Generator) -> np.ndarray:
    """``[H, W] bool``: 0 scratch, 1 stain, 2 missing piece, 3 contamination, around ``centre`` (y, x)."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    y, x = y - centre[0], x - centre[1]
    scale = float(np.sqrt(shape[0] * shape[1]))
    a = rng.uniform(0, np.pi)
    along, across = np.cos(a) * x + np.sin(a) * y, -np.sin(a) * x + np.cos(a) * y
    if kind == 0:  # a thin, slightly curved line
        length, width = rng.uniform(0.35, 0.6) * scale, max(2.0, rng.uniform(0.012, 0.018) * scale)
        bend = rng.uniform(-1, 1) * along ** 2 / (4 * length)
        return (np.abs(along) < length / 2) & (np.abs(across - bend) < width / 2)
    if kind == 1:  # an ellipse with a wavy edge
        ra, rb = rng.uniform(0.04, 0.09, 2) * scale
        wobble = 1 + 0.2 * np.sin(3 * np.arctan2(across, along) + rng.uniform(0, 2 * np.pi))
        return (along / ra) ** 2 + (across / rb) ** 2 < wobble ** 2
    if kind == 2:  # a rectangular chip
        sa, sb = rng.uniform(0.08, 0.16, 2) * scale
        return (np.abs(along) < sa / 2) & (np.abs(across) < sb / 2)
    mask = np.zeros(shape, bool)  # contamination: a cluster of small specks
    for _ in range(rng.integers(5, 10)):
        oy, ox = rng.normal(0, 0.05 * scale, 2)
        mask |= (y - oy) ** 2 + (x - ox) ** 2 < (rng.uniform(0.015, 0.03) * scale) ** 2
    return mask


def _add_defect(image: Float, region: np.ndarray, background: Float, category: str,
                rng: np.random.Generator) -> np.ndarray:
    """Paint one random defect on ``region`` of ``image`` (in place); returns its ``[H, W] bool`` mask."""
    shape = region.shape
    margin = min(0.12 * np.sqrt(shape[0] * shape[1]), 0.3 * min(shape))
    inside = np.zeros(shape, bool)
    inside[int(margin):shape[0] - int(margin), int(margin):shape[1] - int(margin)] = True
    candidates = np.argwhere(region & inside)
    kind = int(rng.integers(4))
    while True:  # redraw until the defect's size is in range (a few tries at most)
        mask = _defect_mask(kind, shape, tuple(candidates[rng.integers(len(candidates))]), rng)
        mask &= region  # defects sit on the object only
        if _DEFECT_AREA[0] <= mask.mean() <= _DEFECT_AREA[1]:
            break
    colour = _DEFECT_COLOURS[category][kind]
    fill = background if colour is None else _rgb(1 + 0.06 * rng.standard_normal(shape, np.float32), colour)
    image[mask] = fill[mask]
    return mask


def _illumination(field: str, shape: tuple[int, int]) -> Float:
    """``[H, W]`` gain of an uneven illumination, between about 0.55 and 1.35."""
    y, x = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    y, x = y / (shape[0] - 1) - 0.5, x / (shape[1] - 1) - 0.5  # -0.5 .. 0.5
    if field == "ramp_x":
        return 0.95 + 0.8 * x
    if field == "ramp_y":
        return 0.95 - 0.8 * y
    radius2 = x ** 2 + y ** 2
    if field == "spotlight":  # bright off-centre, falling off towards the far side
        return 0.6 + 0.75 * np.exp(-((x - 0.2) ** 2 + (y + 0.15) ** 2) / 0.08)
    return 1.3 - 1.5 * radius2  # vignette: dark corners


def _render(category: str, shape: tuple[int, int], lighting: str, defective: bool,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """One image ``[H, W, 3] uint8`` under ``lighting`` and, if ``defective``, its mask ``[H, W] bool``."""
    u, v = _coordinates(shape, rng.uniform(-2, 2), rng.uniform(-2, 2), rng.uniform(-0.5, 0.5))
    image, region = _CATEGORIES[category](u, v, rng)
    mask = None
    if defective:
        background = _rgb(np.full(shape, 55, np.float32), (1.0, 1.0, 1.05))
        mask = _add_defect(image, region, background, category, rng)
    image += 3 * rng.standard_normal(image.shape, np.float32)  # sensor noise
    if lighting == "overexposed":
        image = image * 1.4 + 35
    elif lighting == "underexposed":
        image = image * 0.45
    elif lighting in _SHIFTS:
        cast, field = _SHIFTS[lighting]
        image = image * _illumination(field, shape)[..., None] * np.float32(cast)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), mask


# -- writing --------------------------------------------------------------------------------------
def private_is_defective(index: int) -> bool:
    """Whether image ``index`` (its file name's number) of ``test_private`` / ``test_private_mixed`` is defective:
    every second one, unlabelled in the folder."""
    return index % 2 == 1


def generate_demo_dataset(root: str | Path, categories: Sequence[str] = DEMO_CATEGORIES, *, n_train: int = 24,
                          n_validation: int = 6, n_test_good: int = 8, n_test_bad: int = 8, n_private: int = 4,
                          image_size: tuple[int, int] = (168, 280), seed: int = 0) -> Path:
    """Write the demo categories under ``root`` in the MVTec AD 2 layout; returns ``root``.

    ``image_size`` is ``(height, width)``. ``n_private`` images go to each of ``test_private``
    and ``test_private_mixed`` (every second one defective, unlabelled). An existing non-empty
    category folder is never touched: ``DatasetError`` (a ``ValueError``) before anything is written.
    """
    root = Path(root)
    unknown = [c for c in categories if c not in _CATEGORIES]
    if unknown or not categories:
        raise ValueError(f"Unknown demo categories {unknown or list(categories)}; expected some of {DEMO_CATEGORIES}.")
    if min(image_size) < 64:
        raise ValueError(f"image_size {image_size} is too small for the demo defects; expected at least (64, 64).")
    if n_train < 1 or min(n_validation, n_test_good, n_test_bad, n_private) < 0:
        raise ValueError("Expected n_train >= 1 and non-negative n_validation, n_test_good, n_test_bad, n_private.")
    if root.exists() and not root.is_dir():
        raise DatasetError(f"Demo dataset root {root} is a file; expected a folder (it is created if missing).")
    for category in categories:
        folder = root / category
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise DatasetError(f"{folder} already exists and is not empty; the demo generator never overwrites data. "
                               "Expected a new or empty folder: choose another root or remove that folder.")

    shape = (int(image_size[0]), int(image_size[1]))
    # (folder, count, lighting of image i, is image i defective)
    plan = [("train/good", n_train, lambda i: "regular", lambda i: False),
            ("validation/good", n_validation, lambda i: "regular", lambda i: False),
            ("test_public/good", n_test_good, lambda i: _TEST_LIGHTING[i % 7], lambda i: False),
            ("test_public/bad", n_test_bad, lambda i: _TEST_LIGHTING[i % 7], lambda i: True),
            ("test_private", n_private, lambda i: _TEST_LIGHTING[i % 7], private_is_defective),
            ("test_private_mixed", n_private, lambda i: "mixed", private_is_defective)]
    for category in categories:
        for split_index, (folder, count, lighting_at, defective_at) in enumerate(plan):
            out = root / category / folder
            out.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                # one stream per image, so changing one count leaves the other images as they were
                rng = np.random.default_rng([seed, zlib.crc32(category.encode()), split_index, i])
                name = lighting_at(i)
                applied = _TEST_LIGHTING[rng.integers(7)] if name == "mixed" else name
                image, mask = _render(category, shape, applied, defective_at(i), rng)
                Image.fromarray(image).save(out / f"{i:03d}_{name}.png", compress_level=1)
                if folder == "test_public/bad":
                    masks = root / category / "test_public" / "ground_truth" / "bad"
                    masks.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{i:03d}_{name}_mask.png")
    return root
