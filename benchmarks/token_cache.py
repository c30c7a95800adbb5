"""Backbone tokens of a dataset as the pipeline sees them, computed once per (split, backbone, size, layers) and cached.

The quality benchmark compares many candidates on the same tokens; a backbone pass over a
dataset at IMAGE_SIZE 448 takes many minutes on a CPU, so it runs once and every candidate
then costs seconds. The cache lives in ``benchmarks/.cache/`` (ignored by git).

A cached split holds, per image in ``dataset_ad2`` order: the CLS token ``[D]``, the patch
grid ``[gh, gw, D]`` (float16), the per-channel mean and std of the decoded network input
``[3]`` each and its light field ``[3, 3]`` (``anomalyvfm.illumination.light_stats``), the share of each
patch's pixels clipped at the top ``[gh, gw]`` (``anomalyvfm.scoring.saturated_share``), the original
size and the network input size. With ``phases`` above 1 (the product's ``SCORING_PHASES``), validation and
test splits also carry the patch grids and saturated shares of their inputs cropped by each further phase's
shift (``anomalyvfm.scoring.shifted_inputs``), cached per shift. Train tokens are of the images as
they are; validation and test tokens are of the images as the pipeline scores them: projected
onto the training images' illumination range where they fall outside it (``anomalyvfm.illumination``),
in the same pass. A split is keyed by its resolved folder, so a lighting-stressed copy whose
train/ and validation/ link to the source's shares their tokens.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import dataset_ad2  # noqa: E402

CACHE_DIR = ROOT / "benchmarks" / ".cache"
SPLITS = ("train", "validation", "test_public")
FORMAT = "v3"


@dataclass
class PhaseTokens:
    """A split's images scored at one further phase: their network inputs cropped by ``shift`` ``(down, right)``
    pixels (``scoring.shifted_inputs``), through the same illumination step. Lists are per image."""

    shift: tuple[int, int]
    patches: list[torch.Tensor]      # [gh', gw', D] float16 each; a shifted axis lacks the image's last patch
    saturated: list[torch.Tensor]    # [gh', gw'] each


@dataclass
class SplitTokens:
    """Backbone outputs of one split. Lists are per image, in the split's sample order."""

    samples: list[dataset_ad2.Sample]
    cls: torch.Tensor                      # [N, D] float32
    patches: list[torch.Tensor]            # [gh, gw, D] float16 each
    channel_mean: torch.Tensor             # [N, 3] of the decoded network input in [0, 1]
    channel_std: torch.Tensor              # [N, 3]
    light_fields: torch.Tensor | None      # [N, 3, 3]; None only while an older cache file is read
    original_sizes: list[tuple[int, int]]  # (H, W)
    input_sizes: list[tuple[int, int]]     # (h, w), multiples of the patch size
    saturated: list[torch.Tensor] | None = None  # [gh, gw] each, of the input as decoded; None only while an older file is read
    phases: list[PhaseTokens] = field(default_factory=list)  # the further scoring phases, in PHASE_SHIFTS order


def _digest(*parts: object) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()[:12]


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    return hashlib.sha1(b"".join(t.numpy().tobytes() for t in tensors.values())).hexdigest()[:12]


def pipeline_tokens(extractor, data_root: str, category: str, backbone_name: str, image_size: int,
                    layers: Sequence[int], *, batch_size: int = 8, phases: int = 1, log=print
                    ) -> dict[str, SplitTokens]:
    """``{split: SplitTokens}`` for train, validation and test_public, from the cache when present; validation
    and test with ``phases - 1`` further scoring phases (``SplitTokens.phases``).

    ``extractor`` (an ``anomalyvfm.backbone.FeatureExtractor``) is only used for splits not cached yet.
    """
    from anomalyvfm.illumination import IlluminationRange
    from anomalyvfm.scoring import phase_shifts

    data = dataset_ad2.load_category(data_root, category)
    out: dict[str, SplitTokens] = {}
    illumination = None
    for split in SPLITS:
        samples = data.split(split)
        file, key = _split_file(category, image_size, split, samples, backbone_name, layers, illumination)
        tokens = _load(file, samples)
        if tokens is None:
            start = time.perf_counter()
            tokens = _compute(extractor, samples, image_size, illumination, batch_size)
            _save(file, tokens)
            log(f"cached {category} {split} @{image_size}: {len(samples)} images in {time.perf_counter() - start:.0f} s")
        elif tokens.light_fields is None or tokens.saturated is None:  # cached before they were kept: one decode
            tokens.light_fields, tokens.saturated = _decoded_extras(   # pass, no backbone
                [s.path for s in samples], image_size, extractor.patch_size, batch_size)
            _save(file, tokens)
        if split == "train":
            illumination = IlluminationRange.of(tokens.channel_mean, tokens.channel_std, tokens.light_fields)
        else:
            stats_outside = ~illumination.targets(tokens.channel_mean, tokens.channel_std)[2]
            field_outside = illumination.field_excess(tokens.light_fields).flatten(1).any(-1)
            log(f"illumination: {int(field_outside.sum())} of {len(samples)} {split} images outside the training "
                f"range of light fields, {int(stats_outside.sum())} of channel statistics (before the field step)")
            if samples:  # the patch size from the grid, as the extractor may be None when all is cached
                patch_size = tokens.input_sizes[0][0] // tokens.patches[0].shape[0]
                tokens.phases = [_phase_tokens(extractor, tokens, category, image_size, split, f"{key}|{shift}",
                                               illumination, shift, batch_size, log)
                                 for shift in phase_shifts(phases, patch_size)[1:]]
        out[split] = tokens
    return out


def cache_layer_sets(backbone, data_root: str, category: str, backbone_name: str, image_size: int,
                     layer_sets: Sequence[Sequence[int]], *, batch_size: int = 8, log=print) -> None:
    """Cache train, validation and test_public tokens (one scoring phase) for each of ``layer_sets`` (candidate
    ``FEATURE_LAYERS``) not cached yet, as ``pipeline_tokens(layers=...)`` then reads them: one backbone pass per
    split over the union of their blocks (``LayerSetsExtractor``), each set the mean of its blocks' tokens."""
    from anomalyvfm.illumination import IlluminationRange

    data = dataset_ad2.load_category(data_root, category)
    illumination = None
    for split in SPLITS:
        samples = data.split(split)
        files = [_split_file(category, image_size, split, samples, backbone_name, layers, illumination)[0]
                 for layers in layer_sets]
        missing = [index for index, file in enumerate(files) if _load(file, samples) is None]
        together = None
        if missing:
            start = time.perf_counter()
            extractor = LayerSetsExtractor(backbone, [layer_sets[index] for index in missing])
            together = _compute(extractor, samples, image_size, illumination, batch_size)
            for position, index in enumerate(missing):
                _save(files[index], extractor.layer_set(together, position))
            log(f"cached {category} {split} @{image_size} for {len(missing)} layer sets: {len(samples)} images in "
                f"{time.perf_counter() - start:.0f} s")
        if split == "train":  # the light statistics do not depend on the blocks: any set's, read once
            train = together if together is not None else _load(files[0], samples)
            illumination = IlluminationRange.of(train.channel_mean, train.channel_std, train.light_fields)


class LayerSetsExtractor:
    """A ``FeatureExtractor`` for several layer sets at once: the union of their blocks runs once, and each
    set's CLS and patch tokens (the mean of its blocks, as ``FeatureExtractor``) lie side by side along the
    channels (``dim`` is the sets' count times the backbone's); ``layer_set`` takes one set's back out."""

    def __init__(self, backbone, layer_sets: Sequence[Sequence[int]]) -> None:
        from anomalyvfm.backbone import FeatureExtractor

        self.layer_sets = [list(layers) for layers in layer_sets]
        self.blocks = FeatureExtractor(backbone, sorted({block for layers in layer_sets for block in layers}))
        self.patch_size = self.blocks.patch_size
        self.dim = self.blocks.dim * len(layer_sets)

    def __call__(self, pixel_values: torch.Tensor):
        from anomalyvfm.backbone import Features

        chosen = self.blocks.block_tokens(pixel_values)
        means = [torch.stack([chosen[block] for block in layers]).mean(0).float() for layers in self.layer_sets]
        cls, patches = self.blocks.split_tokens(torch.cat(means, dim=-1), pixel_values.shape[-2:])
        return Features(cls=cls, patches=patches)

    def layer_set(self, tokens: SplitTokens, index: int) -> SplitTokens:
        """The ``index``-th set's own ``SplitTokens`` out of ``tokens`` computed with this extractor."""
        part = slice(index * self.blocks.dim, (index + 1) * self.blocks.dim)
        return SplitTokens(tokens.samples, tokens.cls[:, part].contiguous(),
                           [grid[..., part].contiguous() for grid in tokens.patches], tokens.channel_mean,
                           tokens.channel_std, tokens.light_fields, tokens.original_sizes, tokens.input_sizes,
                           tokens.saturated)


def _split_file(category: str, image_size: int, split: str, samples: list[dataset_ad2.Sample], backbone_name: str,
                layers: Sequence[int], illumination) -> tuple[Path, str]:
    """The cache file of a split and its key. Validation and test tokens depend on the training images'
    illumination range (``illumination``, None for train) and the projection's code too."""
    import anomalyvfm.illumination as illumination_module

    backbone_id = Path(backbone_name).resolve() if Path(backbone_name).exists() else backbone_name
    folder = Path(samples[0].path).parent.resolve() if samples else split
    depends = ""
    if illumination is not None:
        recipe = hashlib.sha1(Path(illumination_module.__file__).read_bytes()).hexdigest()[:10]
        depends = f"{recipe}|{_tensor_digest(illumination.state())}"
    key = _digest(folder, backbone_id, image_size, list(layers), depends, FORMAT)
    return CACHE_DIR / f"{category}-{image_size}-{split}-{key}.pt", key


def _phase_tokens(extractor, tokens: SplitTokens, category: str, image_size: int, split: str, key: str,
                  illumination, shift: tuple[int, int], batch_size: int, log) -> PhaseTokens:
    """``tokens``' split at the scoring phase ``shift``, from the cache when present (``key``: the split's own
    key and the shift)."""
    file = CACHE_DIR / f"{category}-{image_size}-{split}-shift{shift[0]}x{shift[1]}-{_digest(key)}.pt"
    shifted = _load(file, tokens.samples)
    if shifted is None:
        start = time.perf_counter()
        shifted = _compute(extractor, tokens.samples, image_size, illumination, batch_size, shift)
        _save(file, shifted)
        log(f"cached {category} {split} @{image_size} shifted {shift}: {len(tokens.samples)} images in "
            f"{time.perf_counter() - start:.0f} s")
    return PhaseTokens(shift, shifted.patches, shifted.saturated)


def _save(file: Path, tokens: SplitTokens) -> None:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    torch.save({"paths": [s.relative_path for s in tokens.samples], "cls": tokens.cls, "patches": tokens.patches,
                "channel_mean": tokens.channel_mean, "channel_std": tokens.channel_std,
                "light_fields": tokens.light_fields, "original_sizes": tokens.original_sizes,
                "input_sizes": tokens.input_sizes, "saturated": tokens.saturated}, file)


def _load(file: Path, samples: list[dataset_ad2.Sample]) -> SplitTokens | None:
    """The cached split, or None; its ``light_fields`` or ``saturated`` are None in a file cached before they were kept."""
    if not file.is_file():
        return None
    stored = torch.load(file, weights_only=True)
    if stored["paths"] != [s.relative_path for s in samples]:
        return None
    return SplitTokens(samples, stored["cls"], stored["patches"], stored["channel_mean"], stored["channel_std"],
                       stored.get("light_fields"), [tuple(x) for x in stored["original_sizes"]],
                       [tuple(x) for x in stored["input_sizes"]], stored.get("saturated"))


def _decoded_extras(paths: list[Path], image_size: int, patch_size: int, batch_size: int
                    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Light fields ``[N, 3, 3]`` and saturated shares (``[gh, gw]`` each) of the decoded network inputs,
    as ``_compute`` records them."""
    from anomalyvfm.backbone import iterate_images
    from anomalyvfm.illumination import field_coefficients
    from anomalyvfm.scoring import saturated_share

    fields = torch.zeros(len(paths), 3, 3)
    saturated: list[torch.Tensor] = [torch.empty(0)] * len(paths)
    for indices, images in iterate_images(paths, image_size, patch_size, batch_size=batch_size, num_workers=1):
        fields[indices] = field_coefficients(images)
        shares = saturated_share(images, patch_size)
        for row, index in enumerate(indices):
            saturated[index] = shares[row]
    return fields, saturated


@torch.inference_mode()
def _compute(extractor, samples: list[dataset_ad2.Sample], image_size: int, illumination, batch_size: int,
             shift: tuple[int, int] = (0, 0)) -> SplitTokens:
    """The split's tokens; with a ``shift``, its patches, saturated shares and CLS are of the inputs cropped by it
    (``scoring.shifted_inputs``, as ``fit.Runner.features`` scores a phase), the light statistics of the image's."""
    from anomalyvfm.backbone import iterate_images, normalize, target_size
    from anomalyvfm.illumination import light_stats
    from anomalyvfm.scoring import saturated_share, shifted_inputs

    paths = [s.path for s in samples]
    sizes = [target_size(*dataset_ad2.image_size(p), image_size, extractor.patch_size) for p in paths]
    cls = torch.zeros(len(paths), extractor.dim)
    patches: list[torch.Tensor] = [torch.empty(0)] * len(paths)
    saturated: list[torch.Tensor] = [torch.empty(0)] * len(paths)
    means, stds, fields = torch.zeros(len(paths), 3), torch.zeros(len(paths), 3), torch.zeros(len(paths), 3, 3)
    for indices, images in iterate_images(paths, image_size, extractor.patch_size, batch_size=batch_size,
                                          num_workers=1):
        means[indices], stds[indices], fields[indices] = light_stats(images)
        if shift != (0, 0):
            images = shifted_inputs(images, shift, extractor.patch_size)
        shares = saturated_share(images, extractor.patch_size)
        if illumination is not None:
            images = illumination.apply(images)
        features = extractor(normalize(images))
        cls[indices] = features.cls
        for row, index in enumerate(indices):
            patches[index] = features.patches[row].half()
            saturated[index] = shares[row]
    return SplitTokens(samples, cls, patches, means, stds, fields, [dataset_ad2.image_size(p) for p in paths], sizes,
                       saturated)
