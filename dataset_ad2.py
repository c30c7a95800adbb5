"""The MVTec AD 2 folder layout: enumeration of samples, images and ground-truth masks.

Layout of a category (``<root>/<cat>/`` or, as archives often unpack, ``<root>/<cat>/<cat>/``)::

    train/good/NNN_regular.png                      label 0
    validation/good/NNN_regular.png                 label 0
    test_public/good/NNN_<lighting>.png             label 0
    test_public/bad/NNN_<lighting>.png              label 1
    test_public/ground_truth/bad/NNN_<lighting>_mask.png   0/255, same size as its image
    test_private/NNN_<lighting>.png                 label -1 (unknown), no masks
    test_private_mixed/NNN_mixed.png                label -1 (unknown), no masks

Any folder in this layout is a category, not only the official eight.

Public API
----------
- ``OFFICIAL_CATEGORIES``, ``SPLITS``, ``LIGHTING_CONDITIONS``, ``IMAGE_EXTENSIONS``: constants.
- ``DatasetError`` (a ``ValueError``): every bad-input error; the message says what was wrong,
  what was expected and where. ``UnreadableImageError`` (a ``DatasetError``) has ``.path``.
- ``Sample``: one image (path, category, split, label, lighting, mask path, relative path).
- ``lighting_of(name)``, ``lighting_group(lighting)``: lighting parsed from a file name;
  ``scene_of(relative_path)``: the scene an image shows (its id without the lighting).
- ``category_root``, ``list_categories``, ``list_samples``, ``load_category`` -> ``CategoryData``:
  enumeration; these read directory listings only, never pixels. ``CategoryData.without(paths)``
  leaves images out (e.g. the ones a run could not read).
- ``image_size(path)``: ``(H, W)`` from the file header. ``load_image(path)``: ``[H, W, 3] uint8``
  RGB at the original size. ``load_mask(sample_or_path)``, ``read_mask(path)``: ``[H, W] bool``.

Unreadable images
-----------------
Enumeration does not decode images, so a truncated or corrupt file is only found when it is
read: ``load_image``/``load_mask``/``image_size`` then raise ``UnreadableImageError`` naming the
file. A long run should not die on one bad file, and should not decode every file twice to
find one, so the pipeline checks nothing up front: the one decode that feeds the backbone
(``anomalyvfm.backbone.ImageLoader``) finds an unreadable image, the run leaves it out and lists
it as a warning in the run summary. A mask's header (its size) is checked before the run and
its pixels are read when its category is evaluated; an unreadable mask stops the run with an
error naming it (a defective image cannot be evaluated without its mask).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

OFFICIAL_CATEGORIES: tuple[str, ...] = (
    "can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
SPLITS: tuple[str, ...] = ("train", "validation", "test_public", "test_private", "test_private_mixed")
LIGHTING_CONDITIONS: tuple[str, ...] = (
    "regular", "overexposed", "underexposed", "shift_1", "shift_2", "shift_3", "shift_4", "mixed")
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DOWNLOAD_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad-2"

_LIGHTING_PATTERN = re.compile(r"^\d+_(" + "|".join(LIGHTING_CONDITIONS) + r")$")
# split -> (sub-folder, label) pairs; "" is the split folder itself (flat, unlabelled).
_SPLIT_FOLDERS: dict[str, tuple[tuple[str, int], ...]] = {
    "train": (("good", 0),),
    "validation": (("good", 0),),
    "test_public": (("good", 0), ("bad", 1)),
    "test_private": (("", -1),),
    "test_private_mixed": (("", -1),),
}


class DatasetError(ValueError):
    """Bad input: a missing or malformed dataset folder, file or argument."""


class UnreadableImageError(DatasetError):
    """An image or mask file that cannot be decoded (truncated, corrupt, not an image).

    ``what``: ``"image"`` or ``"mask"``; a mask cannot simply be deleted (its defective image
    needs it), so its message says to replace it.
    """

    def __init__(self, path: str | Path, reason: str, what: str = "image"):
        self.path = Path(path)
        self.reason = reason
        remedy = ("replace it (e.g. unpack it again from the dataset archive), or delete it together with its "
                  "defective test image" if what == "mask" else "replace or delete it")
        super().__init__(f"Cannot read {what} {self.path}: {reason}. Expected a complete "
                         f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} file; {remedy}.")


@dataclass(frozen=True)
class Sample:
    """One image of a category; holds paths only, never pixels."""

    path: Path  # absolute image path
    category: str
    split: str  # one of SPLITS
    label: int  # 0 good, 1 bad, -1 unknown (test_private, test_private_mixed)
    lighting: str  # one of LIGHTING_CONDITIONS, or "unknown"
    mask_path: Path | None  # test_public/bad only
    relative_path: str  # POSIX path relative to the category root, e.g. "test_public/bad/000_regular.png"

    @property
    def stem(self) -> str:
        return self.path.stem


def lighting_of(file_name: str | Path) -> str:
    """``"003_shift_2.png"`` -> ``"shift_2"``; a name not of the form ``NNN_<lighting>`` -> ``"unknown"``."""
    match = _LIGHTING_PATTERN.match(Path(file_name).stem)
    return match.group(1) if match else "unknown"


def scene_of(relative_path: str) -> str:
    """The scene an image shows, as its relative path without the lighting and extension:
    ``"test_public/bad/003_shift_2.png"`` -> ``"test_public/bad/003"``.

    AD 2 captures every test scene under several lightings with one id ``NNN`` per scene and
    folder, so images of one scene share this value. A name not of the form ``NNN_<lighting>``
    is a scene of its own.
    """
    path = Path(relative_path)
    match = _LIGHTING_PATTERN.match(path.stem)
    stem = path.stem[:-len(match.group(1)) - 1] if match else path.stem
    return (path.parent / stem).as_posix()


def lighting_group(lighting: str) -> str:
    """``shift_1`` .. ``shift_4`` -> ``"shift"``; every other condition is its own group."""
    return "shift" if lighting.startswith("shift_") else lighting


# -- enumeration ----------------------------------------------------------------------------------
def _data_root(data_root: str | Path) -> Path:
    root = Path(data_root).expanduser().absolute()
    if not root.exists():
        raise DatasetError(
            f"DATA_ROOT {root} does not exist. Expected a folder holding one folder per category "
            f"(<root>/<category>/train/good/*.png). Download MVTec AD 2 from {DOWNLOAD_URL}, unpack it and "
            "set DATA_ROOT to that folder, or generate the small demo dataset "
            "(python anomaly_vfm_v11_lora.py --demo).")
    if not root.is_dir():
        raise DatasetError(f"DATA_ROOT {root} is a file, not a folder. Expected the folder holding the "
                           "category folders (<root>/<category>/train/good); unpack archives first.")
    return root


def _has_train(folder: Path) -> bool:
    return (folder / "train" / "good").is_dir()


def list_categories(data_root: str | Path) -> list[str]:
    """Sorted names of the folders under ``data_root`` (at either nesting) that have ``train/good``."""
    root = _data_root(data_root)
    return sorted(d.name for d in root.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and (_has_train(d) or _has_train(d / d.name)))


def category_root(data_root: str | Path, category: str) -> Path:
    """The folder holding ``train/``, ``test_public/``, ... of ``category``: ``<root>/<cat>`` or ``<root>/<cat>/<cat>``.

    ``DatasetError`` if ``<root>/<cat>`` is missing (the message lists the categories found).
    """
    root = _data_root(data_root)
    outer = root / category
    if not category or Path(category).name != category or not outer.is_dir():
        found = list_categories(root)
        hint = (f" DATA_ROOT itself looks like a category folder; set DATA_ROOT to {root.parent}."
                if _has_train(root) else "")
        raise DatasetError(
            f"Category {category!r} not found: expected the folder {outer} (with train/good inside, or "
            f"{outer / category}/train/good). Categories found in {root}: "
            f"{', '.join(found) if found else 'none'}.{hint}")
    inner = outer / category
    # Prefer the nesting that actually holds the splits; an empty outer folder means the inner one.
    if (outer / "train").is_dir() or not inner.is_dir():
        return outer
    return inner


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder``; other files (.DS_Store, Thumbs.db, ._* forks) are ignored."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir()
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()]


def _split_samples(root: Path, category: str, split: str) -> list[Sample]:
    """One split's samples sorted by relative path; checks that train/good has images and every bad image a mask."""
    samples, missing_masks = [], []
    for sub, label in _SPLIT_FOLDERS[split]:
        for path in _images_in(root / split / sub):
            mask = None
            if label == 1:
                mask = root / split / "ground_truth" / sub / f"{path.stem}_mask.png"
                if not mask.is_file():
                    missing_masks.append((path, mask))
            samples.append(Sample(path=path, category=category, split=split, label=label,
                                  lighting=lighting_of(path.name), mask_path=mask,
                                  relative_path=path.relative_to(root).as_posix()))
    if missing_masks:
        image, mask = missing_masks[0]
        raise DatasetError(f"{len(missing_masks)} defective test image(s) have no ground-truth mask, e.g. {image}: "
                           f"expected the mask {mask} (0/255 PNG of the same size).")
    if split == "train" and not samples:
        what = "has no images" if (root / "train" / "good").is_dir() else "is missing"
        raise DatasetError(f"{root / 'train' / 'good'} {what}: expected the defect-free training images "
                           f"({', '.join(IMAGE_EXTENSIONS)}) of category {category!r} there.")
    return sorted(samples, key=lambda s: s.relative_path)


def _check_split(name: str) -> None:
    if name not in SPLITS:
        raise DatasetError(f"Unknown split {name!r}; expected one of {', '.join(SPLITS)}.")


def list_samples(data_root: str | Path, category: str, split: str) -> list[Sample]:
    """The samples of one split, sorted by ``relative_path``.

    A missing validation/test folder gives ``[]`` (callers decide); ``train/good`` is required.
    """
    _check_split(split)
    return _split_samples(category_root(data_root, category), category, split)


@dataclass
class CategoryData:
    """All samples of one category (lazy: lists of ``Sample``, no pixels)."""

    root: Path
    name: str
    train: list[Sample] = field(default_factory=list)
    validation: list[Sample] = field(default_factory=list)
    test_public: list[Sample] = field(default_factory=list)
    test_private: list[Sample] = field(default_factory=list)
    test_private_mixed: list[Sample] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        _check_split(name)
        return getattr(self, name)

    def without(self, paths: Iterable[Path]) -> "CategoryData":
        """A copy without the samples whose image is one of ``paths``."""
        left_out = set(map(Path, paths))
        return CategoryData(root=self.root, name=self.name, **{
            split: [s for s in self.split(split) if s.path not in left_out] for split in SPLITS})


def load_category(data_root: str | Path, category: str) -> CategoryData:
    """Enumerate and validate a category; ``DatasetError`` on a missing/empty ``train/good`` or missing masks."""
    root = category_root(data_root, category)
    return CategoryData(root=root, name=category, **{split: _split_samples(root, category, split) for split in SPLITS})


# -- pixels ---------------------------------------------------------------------------------------
def _open(path: str | Path, what: str = "image") -> Image.Image:
    """Open and fully decode ``path``; any failure becomes ``UnreadableImageError`` (about an image or a mask)."""
    try:
        image = Image.open(path)
    except FileNotFoundError as error:
        raise UnreadableImageError(path, "no such file", what) from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, f"not a readable image ({error})", what) from error
    try:
        image.load()  # decode now so truncation surfaces here (ImageFile.LOAD_TRUNCATED_IMAGES stays off)
    except (OSError, SyntaxError, ValueError) as error:
        image.close()
        raise UnreadableImageError(path, f"truncated or corrupt ({error})", what) from error
    return image


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from the file header only (no pixel decoding)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError as error:
        raise UnreadableImageError(path, "no such file") from error
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(path, f"not a readable image ({error})") from error
    return height, width


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """16-bit values -> 8 bits by their high byte (v >> 8), as Pillow itself decodes 16-bit RGB PNGs."""
    return (np.clip(values, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)


def load_image(path: str | Path) -> np.ndarray:
    """The image at its original size as ``[H, W, 3] uint8`` RGB.

    Grayscale and palette images are expanded to three equal channels. 16-bit images
    (``I;16*``, ``I`` and 16-bit RGB PNGs) keep their full range: each value becomes ``v >> 8``
    (0 -> 0, 257*k -> k, 65535 -> 255), never clipped at 255. Alpha (LA, RGBA, PA) is
    dropped, not composited: the colour channels are returned as stored.
    """
    image = _open(path)
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L, I: 16-bit grey held in an integer mode
        grey = _to_uint8(np.asarray(image))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode in ("P", "PA"):  # via RGBA so a palette's transparency is dropped without a warning
        image = image.convert("RGBA")
    return np.array(image.convert("RGB"), dtype=np.uint8)


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as ``[H, W] bool``: any non-zero value is defect, in any format Pillow decodes
    (grey, 16-bit, palette, RGB(A): the channels' maximum, alpha ignored). The one mask decoder of
    the package: the metrics read mask files through it too. ``UnreadableImageError`` names the file."""
    mask = _open(path, "mask")
    if mask.mode in ("P", "PA"):  # palette indices are not intensities
        mask = mask.convert("RGBA")
    values = np.asarray(mask)
    if values.ndim == 3:
        values = values[:, :, : 1 if values.shape[2] == 2 else 3]  # drop alpha
        values = values.max(axis=2)
    return values > 0


def load_mask(sample_or_path: Sample | str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """A ground-truth mask as ``[H, W] bool`` (any non-zero colour value is defect, see ``read_mask``).

    For a ``Sample`` without a mask (good or unlabelled) the result is all ``False`` at the
    image's size. ``expected_size`` (``(H, W)``) defaults to the sample's image size; a mask of
    another size is a ``DatasetError`` naming the file.
    """
    image_path = None
    if isinstance(sample_or_path, Sample):
        image_path = sample_or_path.path
        expected_size = expected_size or image_size(image_path)
        if sample_or_path.mask_path is None:
            return np.zeros(expected_size, dtype=bool)
        mask_path = sample_or_path.mask_path
    else:
        mask_path = Path(sample_or_path)
    values = read_mask(mask_path)
    if expected_size is not None and values.shape != tuple(expected_size):
        where = f"its image {image_path} is" if image_path else "the expected size is"
        raise DatasetError(f"Mask {mask_path} is {values.shape[0]}x{values.shape[1]} (HxW) but {where} "
                           f"{expected_size[0]}x{expected_size[1]}; a mask must have its image's size.")
    return values

