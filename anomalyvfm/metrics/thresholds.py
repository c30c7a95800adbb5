"""Thresholds from defect-free data: mean + k * std (the official SegF1 rule uses k = 3 on validation maps)."""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from anomalyvfm.metrics._io import MapSource, iter_maps
from anomalyvfm.metrics.undefined import undefined


def _is_map_sequence(values_or_maps: ArrayLike | Sequence[MapSource]) -> bool:
    if isinstance(values_or_maps, np.ndarray) or not isinstance(values_or_maps, Sequence) or not values_or_maps:
        return False
    first = values_or_maps[0]
    return isinstance(first, (str, os.PathLike)) or np.ndim(first) >= 1


def mean_plus_k_std(values_or_maps: ArrayLike | Sequence[MapSource], k: float = 3.0) -> float:
    """``mean + k * std`` over ALL values, std the population one (ddof=0).

    ``values_or_maps`` is an array of any shape (e.g. image scores ``[N]``), or a sequence of
    ``[H_i, W_i]`` maps / ``.npy`` / ``.tif(f)`` paths streamed one at a time: float64 running
    sums of ``v - c`` and ``(v - c)^2``, with ``c`` the first map's mean so that a large mean does
    not cancel the variance away. Empty input gives NaN with a warning; NaN/inf raise ValueError.
    """
    if not _is_map_sequence(values_or_maps):
        values = np.asarray(values_or_maps, dtype=np.float64).ravel()
        broken = np.flatnonzero(~np.isfinite(values))
        if broken.size:
            raise ValueError(f"value {broken[0]} is {values[broken[0]]}")
        if not values.size:
            return undefined("mean + k std", "no values")
        return float(values.mean() + k * values.std())
    count, total, squares, shift = 0, 0.0, 0.0, 0.0
    for index, values in iter_maps(values_or_maps):
        centred = values.ravel().astype(np.float64)
        if index == 0:
            shift = float(centred.mean())
        centred -= shift
        count += centred.size
        total += float(centred.sum())
        squares += float(centred @ centred)
    mean = total / count
    return shift + mean + k * math.sqrt(max(squares / count - mean * mean, 0.0))
