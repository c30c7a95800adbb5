"""Backbone tokens of a dataset, computed once per (dataset, category, backbone, size, layers) and cached.

The quality benchmark compares many candidates on the same tokens; a backbone pass over a
dataset at IMAGE_SIZE 448 takes many minutes on a CPU, so it runs once and every candidate
then costs seconds. The cache lives in ``benchmarks/.cache/`` (ignored by git).

A cached split holds, per image in ``dataset_ad2`` order: the CLS token ``[D]``, the patch
grid ``[gh, gw, D]`` (float16), the per-channel mean and std of the network input ``[3]``
each (for illumination normalisation), the original size and the network input size.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dataset_ad2  # noqa: E402

CACHE_DIR = ROOT / "benchmarks" / ".cache"
SPLITS = ("train", "validation", "test_public")


@dataclass
class SplitTokens:
    """Backbone outputs of one split. Lists are per image, in the split's sample order."""

    samples: list[dataset_ad2.Sample]
    cls: torch.Tensor                      # [N, D] float32
    patches: list[torch.Tensor]            # [gh, gw, D] float16 each
    channel_mean: torch.Tensor             # [N, 3] of the network input in [0, 1]
    channel_std: torch.Tensor              # [N, 3]
    original_sizes: list[tuple[int, int]]  # (H, W)
    input_sizes: list[tuple[int, int]]     # (h, w), multiples of the patch size


def cache_key(data_root: str, category: str, backbone: str, image_size: int, layers: Sequence[int]) -> str:
    backbone_id = Path(backbone).resolve() if Path(backbone).exists() else backbone
    text = f"{Path(data_root).resolve()}|{category}|{backbone_id}|{image_size}|{list(layers)}|v2"
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def load_or_compute(extractor, data_root: str, category: str, backbone_name: str, image_size: int,
                    layers: Sequence[int], *, batch_size: int = 8, log=print) -> dict[str, SplitTokens]:
    """``{split: SplitTokens}`` for train, validation and test_public, from the cache when present."""
    from anomalyvfm.backbone import iterate_images, normalize, target_size
    from anomalyvfm.illumination import channel_stats

    data = dataset_ad2.load_category(data_root, category)
    key = cache_key(data_root, category, backbone_name, image_size, layers)
    out: dict[str, SplitTokens] = {}
    for split in SPLITS:
        samples = data.split(split)
        file = CACHE_DIR / f"{category}-{image_size}-{key}-{split}.pt"
        if file.is_file():
            stored = torch.load(file, weights_only=True)
            if stored["paths"] == [s.relative_path for s in samples]:
                out[split] = SplitTokens(samples, stored["cls"], stored["patches"], stored["channel_mean"],
                                         stored["channel_std"], [tuple(x) for x in stored["original_sizes"]],
                                         [tuple(x) for x in stored["input_sizes"]])
                continue
        start = time.perf_counter()
        paths = [s.path for s in samples]
        sizes = [target_size(*dataset_ad2.image_size(p), image_size, extractor.patch_size) for p in paths]
        cls = torch.zeros(len(paths), extractor.dim)
        patches: list[torch.Tensor] = [torch.empty(0)] * len(paths)
        means, stds = torch.zeros(len(paths), 3), torch.zeros(len(paths), 3)
        for indices, images in iterate_images(paths, image_size, extractor.patch_size, batch_size=batch_size,
                                              num_workers=1):
            means[indices], stds[indices] = channel_stats(images)
            features = extractor(normalize(images))
            cls[indices] = features.cls
            for row, index in enumerate(indices):
                patches[index] = features.patches[row].half()
        tokens = SplitTokens(samples, cls, patches, means, stds,
                             [dataset_ad2.image_size(p) for p in paths], sizes)
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        torch.save({"paths": [s.relative_path for s in samples], "cls": cls, "patches": patches,
                    "channel_mean": means, "channel_std": stds, "original_sizes": tokens.original_sizes,
                    "input_sizes": sizes}, file)
        log(f"cached {category} {split} @{image_size}: {len(paths)} images in {time.perf_counter() - start:.0f} s")
        out[split] = tokens
    return out


def with_illumination_projection(extractor, tokens: dict[str, SplitTokens], *, batch_size: int = 8,
                                 log=print) -> dict[str, SplitTokens]:
    """The tokens the pipeline sees: validation and test images whose channel statistics fall outside
    the training range are projected onto it (``anomalyvfm.illumination``) and run through the
    backbone again; every other image keeps its cached tokens (the projection leaves it unchanged)."""
    from anomalyvfm.backbone import normalize, to_input
    from anomalyvfm.illumination import IlluminationRange

    train = tokens["train"]
    illumination = IlluminationRange.of(train.channel_mean, train.channel_std)
    out = {"train": train}
    for split in ("validation", "test_public"):
        cached = tokens[split]
        outside = ~illumination.targets(cached.channel_mean, cached.channel_std)[2]
        patches, cls = list(cached.patches), cached.cls.clone()
        for index in torch.nonzero(outside).flatten().tolist():
            sample = cached.samples[index]
            image = to_input(dataset_ad2.load_image(sample.path), cached.input_sizes[index])[None]
            features = extractor(normalize(illumination.apply(image)))
            patches[index], cls[index] = features.patches[0].half(), features.cls[0]
        log(f"illumination: {int(outside.sum())} of {len(outside)} {split} images projected onto the training range")
        out[split] = SplitTokens(cached.samples, cls, patches, cached.channel_mean, cached.channel_std,
                                 cached.original_sizes, cached.input_sizes)
    return out
