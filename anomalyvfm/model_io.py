"""Files that a run writes and reads: atomic writes, model files, anomaly-map TIFFs.

Safety: model weights are safetensors (no pickle) and everything else is JSON, so
loading a model file that someone sent you cannot run code. Every write goes to a
temporary file in the target folder first and is then renamed over the target, so a
crash never leaves a half-written file behind.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tifffile
import torch
from PIL import Image
from safetensors.torch import load_file, save_file


def _create_unique(folder: Path, stem: str, suffix: str) -> Path:
    """An empty new file in ``folder``, created with mode 0o666 so the kernel applies the process umask
    (results are meant to be shared; ``mkstemp`` would make them 0600)."""
    while True:
        candidate = folder / f".{stem}.{secrets.token_hex(4)}{suffix}"
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_unique(path.parent, path.stem, path.suffix)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None (strict JSON has no NaN); numpy scalars and arrays -> Python."""
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def save_figure_atomic(figure, path: Path, dpi: int = 120) -> None:
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, dpi=dpi, format="png")
    finally:
        plt.close(figure)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(path) as temporary:
        save_file({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}, str(temporary),
                  metadata=metadata)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def saved_precision(anomaly_map: np.ndarray) -> np.ndarray:
    """The values a map has once saved (float16, clipped to its range so nothing becomes inf), as float32."""
    return np.clip(anomaly_map, -65504, 65504).astype(np.float16).astype(np.float32)


def write_map_tiff(path: Path, anomaly_map: np.ndarray) -> None:
    """``[H, W]`` map -> single-channel float16 TIFF (the official MVTec AD 2 upload format)."""
    if anomaly_map.ndim != 2:
        raise ValueError(f"anomaly map must be 2-D [H, W], got shape {anomaly_map.shape} for {path}")
    values = saved_precision(anomaly_map).astype(np.float16)
    with atomic_path(path) as temporary:
        tifffile.imwrite(temporary, values, photometric="minisblack")


def read_map(path: Path, dtype: type = np.float32) -> np.ndarray:
    """A saved map as ``[H, W]`` of ``dtype`` (float16 keeps it as stored)."""
    return tifffile.imread(path).astype(dtype, copy=False)


def write_mask_png(path: Path, mask: np.ndarray) -> None:
    """``[H, W]`` bool -> 8-bit PNG with values {0, 255}."""
    with atomic_path(path) as temporary:
        Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(temporary, format="PNG")
