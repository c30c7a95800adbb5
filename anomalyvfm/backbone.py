"""The frozen DINOv2 backbone: preprocessing, feature extraction, batching.

Images are resized (aspect ratio kept) so the shorter side is ``IMAGE_SIZE``; the
longer side goes to the nearest multiple of the patch size. That is the same as
cropping or padding by less than half a patch, but every original pixel stays
inside the anomaly map, so maps can be resized back to the original size exactly.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
import socket
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import dataset_ad2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(RuntimeError):
    """The backbone checkpoint could not be found or loaded."""


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BackboneError("DEVICE='cuda' but no CUDA GPU is visible to torch; use DEVICE='auto' or 'cpu'.")
    return torch.device(name)


HUB_PROBE_SECONDS = 3.0  # a reachable hub answers a TCP connect far faster; an offline machine fails at once or times out


def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """True when a TCP connection to the Hugging Face hub (``HF_ENDPOINT`` if set) opens within ``timeout``.

    One quick probe instead of letting the download fail: huggingface_hub retries with back-off,
    which took 36 s offline before any message.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def backbone_advice(name: str, problem: str) -> str:
    """``problem``, then how to run without downloading hub id ``name``."""
    return (f"{problem}\n"
            "  Use a local checkpoint folder:  --BACKBONE=<local folder>  (config.json + model.safetensors).\n"
            "  To make one, run once on a machine with internet access:\n"
            f"    python -c \"from transformers import Dinov2Model; "
            f"Dinov2Model.from_pretrained('{name}').save_pretrained('dinov2-local')\"\n"
            "  and copy the dinov2-local folder here (or run once online: the hub id is then cached).\n"
            "  Set HF_HUB_OFFLINE=1 to never try the network; the cache and local folders still work.")


def load_backbone(name_or_path: str) -> nn.Module:
    """Load a frozen ``transformers.Dinov2Model`` in eval mode from a hub id or a local folder.

    A hub id is read from the cache first; it is downloaded only when it is not cached, the
    hub answers and ``HF_HUB_OFFLINE`` is not set. Otherwise one ``BackboneError`` says what to do,
    decided with huggingface_hub alone: importing transformers takes seconds that an offline user
    should not wait for.
    """
    local = Path(name_or_path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise BackboneError(f"BACKBONE={name_or_path!r} is a folder without config.json; expected a Hugging Face "
                                "checkpoint folder (config.json + model.safetensors).")
        from transformers import Dinov2Model

        try:
            return freeze(Dinov2Model.from_pretrained(str(local)))
        except (OSError, ValueError) as error:
            raise BackboneError(f"Could not load the local DINOv2 checkpoint {name_or_path!r}: {error}") from None
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        from transformers import Dinov2Model

        try:
            return freeze(Dinov2Model.from_pretrained(name_or_path, local_files_only=True))
        except (OSError, ValueError):
            pass  # only partly cached: download below if the hub can be reached
    not_cached = f"The DINOv2 backbone {name_or_path!r} is not a local folder nor in the Hugging Face cache"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise BackboneError(backbone_advice(name_or_path, f"{not_cached}, and HF_HUB_OFFLINE=1 is set."))
    if not hub_reachable():
        raise BackboneError(backbone_advice(name_or_path, f"{not_cached}, and the hub cannot be reached (offline?)."))
    from transformers import Dinov2Model

    try:
        return freeze(Dinov2Model.from_pretrained(name_or_path))
    except (OSError, ValueError) as error:
        raise BackboneError(backbone_advice(name_or_path, f"Could not download the DINOv2 backbone "
                                                          f"{name_or_path!r}: {error}")) from None


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def target_size(height: int, width: int, image_size: int, patch_size: int) -> tuple[int, int]:
    """Network input size ``(h, w)``: shorter side ``image_size``, both sides multiples of the patch."""
    scale = image_size / min(height, width)
    return (max(patch_size, round(height * scale / patch_size) * patch_size),
            max(patch_size, round(width * scale / patch_size) * patch_size))


def resize_pixels(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``[H, W, 3] uint8`` image -> ``[3, h, w]`` uint8, resized with antialiasing.

    Resizing the uint8 pixels (torch's vectorised uint8 path, within one grey level of
    resizing floats) means no full-size float copy of a large image is ever made.
    """
    pixels = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)
    if tuple(pixels.shape[1:]) != size:
        pixels = F.interpolate(pixels[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return pixels.contiguous()


def to_input(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``[H, W, 3] uint8`` image -> ``[3, h, w]`` float in [0, 1], resized with antialiasing."""
    return resize_pixels(image, size).float().div_(255.0)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of ``[B, 3, h, w]`` images in [0, 1]."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


@dataclass
class Features:
    """Backbone outputs of a batch.

    cls: ``[B, D]``; patches: ``[B, gh, gw, D]``; attention: ``[B, gh, gw]`` CLS-to-patch
    attention of the last block averaged over heads (only when requested), else None; saturated:
    ``[B, gh, gw]`` share of each patch's input pixels clipped by the camera (``scoring.saturated_share``,
    filled in by ``fit.Runner``, which sees the input before the illumination step), else None.
    """

    cls: torch.Tensor
    patches: torch.Tensor
    attention: torch.Tensor | None = None
    saturated: torch.Tensor | None = None


class FeatureExtractor(nn.Module):
    """Frozen DINOv2 returning CLS and patch tokens of ``layers`` (blocks counted from 1).

    The tokens of each chosen block go through the backbone's final LayerNorm (so blocks
    are on one scale) and are averaged. Only the blocks up to the deepest chosen one run
    (later blocks cannot change the chosen tokens), unless ``attention`` (the last
    block's CLS-to-patch attention is read) or ``full_depth`` (the benchmark's floor: one
    full backbone pass) asks for every block.
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[int], *, attention: bool = False,
                 full_depth: bool = False) -> None:
        super().__init__()
        self.backbone = freeze(backbone)
        depth = backbone.config.num_hidden_layers
        if max(layers) > depth:
            raise BackboneError(f"FEATURE_LAYERS={list(layers)} but the backbone has only {depth} blocks.")
        self.layers = list(layers)
        self.attention = attention
        if attention:
            backbone.set_attn_implementation("eager")  # fused attention kernels do not return weights
        self.blocks_to_run = depth if attention or full_depth else max(layers)
        self.patch_size: int = backbone.config.patch_size
        self.dim: int = backbone.config.hidden_size

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor) -> Features:
        """``pixel_values``: normalised ``[B, 3, h, w]`` with h, w multiples of the patch size."""
        captured: list[torch.Tensor] = []
        hook = None
        if self.attention:  # eager attention returns (output, weights [B, heads, T, T]); keep the last block's
            last_block = self.backbone.encoder.layer[self.blocks_to_run - 1]
            hook = last_block.attention.register_forward_hook(lambda module, args, output: captured.append(output[1]))
        try:
            chosen = self.block_tokens(pixel_values)
        finally:
            if hook is not None:
                hook.remove()
        cls, patches = self.split_tokens(torch.stack([chosen[layer] for layer in self.layers]).mean(0).float(),
                                         pixel_values.shape[-2:])
        attention = None
        if self.attention:
            last = captured[-1].float().mean(1)  # [B, T, T], averaged over heads
            attention = last[:, 0, -patches.shape[1] * patches.shape[2]:].reshape(patches.shape[:3])
        return Features(cls=cls, patches=patches, attention=attention)

    @torch.inference_mode()
    def block_tokens(self, pixel_values: torch.Tensor) -> dict[int, torch.Tensor]:
        """``{block: tokens [B, T, D]}`` of each block of ``layers``, through the backbone's final LayerNorm."""
        norm = self.backbone.layernorm
        chosen: dict[int, torch.Tensor] = {}
        hidden = self.backbone.embeddings(pixel_values)
        for number, block in enumerate(self.backbone.encoder.layer[:self.blocks_to_run], start=1):
            hidden = block(hidden)
            if number in self.layers:
                chosen[number] = norm(hidden)
        return chosen

    def split_tokens(self, tokens: torch.Tensor, input_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens ``[B, T, D]`` of inputs of ``input_size`` (h, w) -> CLS ``[B, D]`` and patch grid ``[B, gh, gw, D]``;
        register tokens (with-registers checkpoints) between them are dropped."""
        grid = (input_size[0] // self.patch_size, input_size[1] // self.patch_size)
        patches = tokens[:, tokens.shape[1] - grid[0] * grid[1]:]
        return tokens[:, 0], patches.reshape(tokens.shape[0], *grid, tokens.shape[-1])


def resolve_num_workers(setting: int | str) -> int:
    """``"auto"``: decode workers for a share of the cores (one left for the backbone; 0 on one core)."""
    if setting != "auto":
        return int(setting)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cores - 1)


class _SameSizeBatches:
    """Batches of images whose network input sizes are equal (they must stack), in input order."""

    def __init__(self, sizes: Sequence[tuple[int, int]], batch_size: int) -> None:
        groups: dict[tuple[int, int], list[int]] = {}
        for index, size in enumerate(sizes):
            groups.setdefault(size, []).append(index)
        self.batches = sorted((members[start:start + batch_size] for members in groups.values()
                               for start in range(0, len(members), batch_size)), key=lambda batch: batch[0])

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


# One batch's work for a decode worker: (index, path, input size) per image.
_BatchTask = list[tuple[int, Path, tuple[int, int]]]


def _decode_batch(task: _BatchTask) -> tuple[list[int], np.ndarray | None, list[tuple[int, str]]]:
    """Decode and resize one batch: ``(indices, uint8 [B, 3, h, w] or None, [(index, reason)] unreadable)``.

    uint8 crosses the process boundary (4x less than float); never raises for a bad file.
    """
    indices, images, unreadable = [], [], []
    for index, path, size in task:
        try:
            image = dataset_ad2.load_image(path)
        except dataset_ad2.UnreadableImageError as error:
            unreadable.append((index, error.reason))
            continue
        indices.append(index)
        images.append(resize_pixels(image, size).numpy())
    return indices, (np.stack(images) if images else None), unreadable


def _worker_init() -> None:
    torch.set_num_threads(1)  # the workers share the cores with the backbone; one thread each


class ImageLoader:
    """Decodes images for the backbone in a pool of worker processes that lives for a whole run.

    Create it once per run (a context manager; ``close()`` ends the workers), then call
    ``batches(...)`` for each pass. Decoding of later batches overlaps the caller's work on
    earlier ones; at most ``prefetch`` batches are decoded ahead. An unreadable image never
    raises: it is left out of its batch and listed in ``unreadable``.
    """

    def __init__(self, num_workers: int | str = "auto", *, batch_size: int,
                 device: torch.device | str = "cpu", prefetch: int | None = None) -> None:
        self.num_workers = resolve_num_workers(num_workers)
        self.batch_size = batch_size
        self.device = torch.device(device)
        self.prefetch = prefetch or 2 * max(1, self.num_workers)
        # Images this loader could not read in its latest pass: (path, reason), in input order.
        self.unreadable: list[tuple[Path, str]] = []
        self._pool = (ProcessPoolExecutor(self.num_workers, initializer=_worker_init)
                      if self.num_workers > 0 else None)

    def batches(self, paths: Sequence[Path], image_size: int, patch_size: int, *, pixels: bool = False
                ) -> Iterator[tuple[list[int], torch.Tensor] | tuple[list[int], torch.Tensor, torch.Tensor]]:
        """Yield ``(indices, images [B, 3, h, w] float in [0, 1] on the loader's device)`` over ``paths``.

        Images of one batch share their network input size (shorter side ``image_size``);
        ``indices`` point into ``paths``. ``pixels``: yield ``(indices, images, uint8 [B, 3, h, w]
        on the CPU)`` instead, the same inputs before the conversion (4x smaller to keep; no copy
        back from the device). Unreadable images are skipped; once the pass is exhausted,
        ``self.unreadable`` lists them (reset at the start of every pass).
        """
        self.unreadable = []
        failures: list[tuple[int, str]] = []
        readable: list[int] = []
        sizes: list[tuple[int, int]] = []
        for index, path in enumerate(paths):
            try:
                sizes.append(target_size(*dataset_ad2.image_size(path), image_size, patch_size))
                readable.append(index)
            except dataset_ad2.UnreadableImageError as error:  # not even a header
                failures.append((index, error.reason))
        tasks = [[(readable[i], Path(paths[readable[i]]), sizes[i]) for i in batch]
                 for batch in _SameSizeBatches(sizes, self.batch_size)]
        for indices, decoded, unreadable in self._decoded(tasks):
            failures += unreadable
            if decoded is not None:
                uint8 = torch.from_numpy(decoded)
                yield (indices, self._to_device(uint8), uint8) if pixels else (indices, self._to_device(uint8))
        self.unreadable = [(Path(paths[index]), reason) for index, reason in sorted(failures)]

    def _decoded(self, tasks: list[_BatchTask]) -> Iterator[tuple[list[int], np.ndarray | None, list[tuple[int, str]]]]:
        """Decoded batches in task order; in the workers with at most ``prefetch`` ahead."""
        if self._pool is None:
            yield from map(_decode_batch, tasks)
            return
        pending: deque[Future] = deque()
        remaining = iter(tasks)
        try:
            for task in islice(remaining, self.prefetch):
                pending.append(self._pool.submit(_decode_batch, task))
            while pending:
                result = pending.popleft().result()
                for task in islice(remaining, 1):
                    pending.append(self._pool.submit(_decode_batch, task))
                yield result
        finally:  # a pass abandoned early must not leave work queued for the next one
            for future in pending:
                future.cancel()

    def _to_device(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, h, w]`` -> float in [0, 1] on the device; on CUDA the uint8 copy is pinned and
        asynchronous, and the conversion runs on the GPU."""
        if self.device.type == "cuda":
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        return pixels.float().div_(255.0)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "ImageLoader":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def iterate_images(paths: Sequence[Path], image_size: int, patch_size: int, *, batch_size: int,
                   num_workers: int | str) -> Iterator[tuple[list[int], torch.Tensor]]:
    """One pass of a one-off ``ImageLoader``; an unreadable image raises ``UnreadableImageError`` at the end."""
    with ImageLoader(num_workers, batch_size=batch_size) as loader:
        yield from loader.batches(paths, image_size, patch_size)
        if loader.unreadable:
            raise dataset_ad2.UnreadableImageError(*loader.unreadable[0])


def autocast(device: torch.device):
    """bf16 autocast on CUDA (tensor cores); full precision elsewhere."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
