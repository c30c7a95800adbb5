"""The frozen DINOv2 backbone: preprocessing, feature extraction, batching.

Images are resized (aspect ratio kept) so the shorter side is ``IMAGE_SIZE``; the
longer side goes to the nearest multiple of the patch size. That is the same as
cropping or padding by less than half a patch, but every original pixel stays
inside the anomaly map, so maps can be resized back to the original size exactly.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

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
    hub answers and ``HF_HUB_OFFLINE`` is not set. Otherwise one ``BackboneError`` says what to do.
    """
    from transformers import Dinov2Model

    local = Path(name_or_path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise BackboneError(f"BACKBONE={name_or_path!r} is a folder without config.json; expected a Hugging Face "
                                "checkpoint folder (config.json + model.safetensors).")
        try:
            return freeze(Dinov2Model.from_pretrained(str(local)))
        except (OSError, ValueError) as error:
            raise BackboneError(f"Could not load the local DINOv2 checkpoint {name_or_path!r}: {error}") from None
    try:
        return freeze(Dinov2Model.from_pretrained(name_or_path, local_files_only=True))
    except (OSError, ValueError):
        pass  # not cached: download below if the hub can be reached
    not_cached = f"The DINOv2 backbone {name_or_path!r} is not a local folder nor in the Hugging Face cache"
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise BackboneError(backbone_advice(name_or_path, f"{not_cached}, and HF_HUB_OFFLINE=1 is set."))
    if not hub_reachable():
        raise BackboneError(backbone_advice(name_or_path, f"{not_cached}, and the hub cannot be reached (offline?)."))
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


def to_input(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``[H, W, 3] uint8`` image -> ``[3, h, w]`` float in [0, 1], resized with antialiasing."""
    tensor = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1).float().div_(255.0)
    if tuple(tensor.shape[1:]) != size:
        tensor = F.interpolate(tensor[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
    return tensor.clamp_(0.0, 1.0)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of ``[B, 3, h, w]`` images in [0, 1]."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


@dataclass
class Features:
    """Backbone outputs of a batch.

    cls: ``[B, D]``; patches: ``[B, gh, gw, D]``; attention: ``[B, gh, gw]`` CLS-to-patch
    attention of the last block averaged over heads (only when requested), else None.
    """

    cls: torch.Tensor
    patches: torch.Tensor
    attention: torch.Tensor | None = None


class FeatureExtractor(nn.Module):
    """Frozen DINOv2 returning CLS and patch tokens of ``layers`` (blocks counted from 1).

    The tokens of each chosen block go through the backbone's final LayerNorm (so blocks
    are on one scale) and are averaged.
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[int], *, attention: bool = False) -> None:
        super().__init__()
        self.backbone = freeze(backbone)
        depth = backbone.config.num_hidden_layers
        if max(layers) > depth:
            raise BackboneError(f"FEATURE_LAYERS={list(layers)} but the backbone has only {depth} blocks.")
        self.layers = list(layers)
        self.attention = attention
        if attention:
            backbone.set_attn_implementation("eager")  # fused attention kernels do not return weights
        self.patch_size: int = backbone.config.patch_size
        self.dim: int = backbone.config.hidden_size

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor) -> Features:
        """``pixel_values``: normalised ``[B, 3, h, w]`` with h, w multiples of the patch size."""
        batch, _, height, width = pixel_values.shape
        grid = (height // self.patch_size, width // self.patch_size)
        output = self.backbone(pixel_values=pixel_values, output_hidden_states=True,
                               output_attentions=self.attention)
        norm = self.backbone.layernorm
        tokens = torch.stack([norm(output.hidden_states[layer]) for layer in self.layers]).mean(0).float()
        registers = tokens.shape[1] - 1 - grid[0] * grid[1]  # 0 for DINOv2, >0 for with-registers checkpoints
        patches = tokens[:, 1 + registers:].reshape(batch, *grid, self.dim)
        attention = None
        if self.attention:
            last = output.attentions[-1].float().mean(1)  # [B, T, T], averaged over heads
            attention = last[:, 0, 1 + registers:].reshape(batch, *grid)
        return Features(cls=tokens[:, 0], patches=patches, attention=attention)


class _ImageFiles(Dataset):
    """Decodes and resizes images in DataLoader workers, so decoding overlaps the backbone."""

    def __init__(self, paths: Sequence[Path], sizes: Sequence[tuple[int, int]]) -> None:
        self.paths, self.sizes = list(paths), list(sizes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, to_input(dataset_ad2.load_image(self.paths[index]), self.sizes[index])


class _SameSizeBatches(Sampler[list[int]]):
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


def input_sizes(paths: Sequence[Path], image_size: int, patch_size: int) -> list[tuple[int, int]]:
    """Network input size of each image, from the file headers alone."""
    return [target_size(*dataset_ad2.image_size(path), image_size, patch_size) for path in paths]


def iterate_images(paths: Sequence[Path], image_size: int, patch_size: int, *, batch_size: int,
                   num_workers: int) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Yield ``(indices, images [B, 3, h, w] in [0, 1])`` over ``paths``, decoded in workers."""
    sizes = input_sizes(paths, image_size, patch_size)
    loader = DataLoader(_ImageFiles(paths, sizes), batch_sampler=_SameSizeBatches(sizes, batch_size),
                        num_workers=num_workers, persistent_workers=False)
    for indices, images in loader:
        yield indices.tolist(), images


def autocast(device: torch.device):
    """bf16 autocast on CUDA (tensor cores); full precision elsewhere."""
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
