"""Lazy, validated loading of anomaly maps and ground-truth masks, one image at a time.

A map is a 2-D array or a path to ``.npy`` / ``.tif`` / ``.tiff``; a mask is a 2-D array,
a path to ``.png`` / ``.npy`` / ``.tif`` / ``.tiff`` (binarised ``> 0``), or ``None`` for a
good image without a mask file (all zeros). Mask image files are decoded by
``dataset_ad2.read_mask``, the data layer's loader, so both accept the same files (RGB masks
included). Errors about a file name it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence, Union

import numpy as np
import tifffile

import dataset_ad2

MapSource = Union[np.ndarray, str, os.PathLike]
MaskSource = Union[np.ndarray, str, os.PathLike, None]


def _check_kind(path: Path, kinds: tuple[str, ...]) -> str:
    suffix = path.suffix.lower()
    if suffix not in kinds:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (expected one of {', '.join(kinds)})")
    return suffix


def _where(source: object) -> str:
    return f" ({source})" if isinstance(source, (str, os.PathLike)) else ""


def load_map(source: MapSource, index: int) -> np.ndarray:
    """One anomaly map as ``[H, W]`` float32 (float16/32 input) or float64 (anything else).

    Raises ValueError naming ``index`` if it is not 2-D or holds NaN/inf: that is a bug
    upstream, not an undefined metric.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        values = np.load(path, allow_pickle=False) if _check_kind(path, (".npy", ".tif", ".tiff")) == ".npy" \
            else tifffile.imread(path)
    else:
        values = np.asarray(source)
    # float32 holds float16 exactly and halves the memory of float64; wider inputs stay exact.
    values = values.astype(np.float32 if values.dtype in (np.float16, np.float32) else np.float64, copy=False)
    if values.ndim != 2 or not values.size:
        raise ValueError(f"anomaly map {index} must be a non-empty 2-D [H, W] array, got shape {values.shape}"
                         f"{_where(source)}")
    # min/max propagate NaN and expose +-inf, at a fraction of the cost of isfinite().all()
    if not (np.isfinite(values.min()) and np.isfinite(values.max())):
        raise ValueError(f"anomaly map {index} contains NaN or infinite values{_where(source)}")
    return values


def load_mask(source: MaskSource, shape: tuple[int, ...], index: int) -> np.ndarray:
    """The ground truth of image ``index`` as ``[H, W]`` bool (``> 0``), checked against the map's ``shape``."""
    if source is None:
        return np.zeros(shape, bool)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if _check_kind(path, (".png", ".npy", ".tif", ".tiff")) == ".npy":
            values = np.load(path, allow_pickle=False) > 0
        else:
            values = dataset_ad2.read_mask(path)
    else:
        values = np.asarray(source) > 0
    if values.shape != tuple(shape):
        raise ValueError(f"image {index}: anomaly map shape {tuple(shape)} does not match mask shape {values.shape}"
                         f"{_where(source)}")
    return values


def iter_maps(anomaly_maps: Sequence[MapSource]) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, map)`` for each map, loading one at a time."""
    for index, source in enumerate(anomaly_maps):
        yield index, load_map(source, index)


def iter_pairs(anomaly_maps: Sequence[MapSource], gt_masks: Sequence[MaskSource]
               ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(index, map, mask)`` for each test image, loading one pair at a time."""
    check_lengths(anomaly_maps=anomaly_maps, gt_masks=gt_masks)
    for index, values in iter_maps(anomaly_maps):
        yield index, values, load_mask(gt_masks[index], values.shape, index)


def check_lengths(**sequences: Sequence) -> int:
    """The common length of ``sequences``; ValueError naming every length if they differ."""
    lengths = {name: len(values) for name, values in sequences.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError("one entry per test image is needed, got " + ", ".join(f"{n}={v}" for n, v in lengths.items()))
    return next(iter(lengths.values()))
