"""Checks that cost seconds, run before anything that costs minutes or changes ``RESULTS_DIR``.

Order in ``pipeline.run``: settings (``Config``), the device, every category's listing and
masks, ``RESULTS_DIR``, then the lock, the backbone and ``FEATURE_LAYERS`` (``fit.Runner``);
only after all of them does a run archive or write anything.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import torch

import dataset_ad2
from anomalyvfm.config import Config, ConfigError
from anomalyvfm.errors import PipelineError

MIN_VALIDATION_IMAGES = 5  # below this, thresholds and score standardisation are guesses


def check_device(name: str) -> torch.device:
    """The device to run on; ``ConfigError`` if the named one is not available on this machine."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("DEVICE='cuda' but torch sees no CUDA GPU on this machine; use --DEVICE=auto or --DEVICE=cpu.")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("DEVICE='mps' but this machine has no Apple MPS device available to torch; "
                          "use --DEVICE=auto or --DEVICE=cpu.")
    return torch.device(name)


def check_results_dir(results_dir: Path) -> None:
    """``PipelineError`` unless ``results_dir`` is (or can be created as) a writable folder.

    Writability is probed by creating and removing a file, in the folder or, when it does not exist
    yet, in its nearest existing parent (nothing is created in a folder that is not there).
    """
    if results_dir.exists() and not results_dir.is_dir():
        raise PipelineError(f"RESULTS_DIR {results_dir} is a file, not a folder; pass --RESULTS_DIR=<a folder> "
                            "or move the file away.")
    existing = results_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PipelineError(f"RESULTS_DIR {results_dir} cannot be created: {existing} is a file, not a folder.")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-")
    except OSError as error:
        raise PipelineError(f"RESULTS_DIR {results_dir} is not writable ({existing}: {error.strerror}); "
                            "fix its permissions or pass another --RESULTS_DIR.") from None
    os.close(handle)
    os.remove(probe)


def load_categories(config: Config) -> dict[str, dataset_ad2.CategoryData]:
    """Every category's samples, checked before any work from directory listings and file headers.

    Fails (``DatasetError`` naming the file) on a missing category, a missing or empty
    ``train/good``, a defective image without its mask or with a mask of another size or an
    unreadable header (sizes from the file headers, any format the mask loader reads), and two
    images of a split sharing a stem (their masks and saved outputs are named by the stem). No
    pixel is decoded here: an unreadable image is found, skipped and listed by the decode that
    feeds the backbone.
    """
    categories = {}
    for category in config.CATEGORIES:
        data = dataset_ad2.load_category(config.DATA_ROOT, category)
        for split in dataset_ad2.SPLITS:
            _check_unique_stems(data.split(split))
        for sample in data.test_public:
            if sample.mask_path is not None:
                _check_mask_size(sample)
        categories[category] = data
    return categories


def _check_unique_stems(samples: list[dataset_ad2.Sample]) -> None:
    stems = Counter((s.path.parent, s.stem) for s in samples)
    for (folder, stem), count in stems.items():
        if count > 1:
            names = sorted(s.path.name for s in samples if s.path.parent == folder and s.stem == stem)
            raise dataset_ad2.DatasetError(f"{folder} holds {', '.join(names)}: images sharing a name stem would share "
                                           "one mask and one output file; rename or remove all but one.")


def _check_mask_size(sample: dataset_ad2.Sample) -> None:
    try:
        mask = dataset_ad2.image_size(sample.mask_path)
    except dataset_ad2.UnreadableImageError as error:
        raise dataset_ad2.UnreadableImageError(error.path, error.reason, "mask") from None
    try:
        image = dataset_ad2.image_size(sample.path)
    except dataset_ad2.UnreadableImageError:
        return  # the run skips the image when it fails to decode it, and lists it in the summary
    if image != mask:
        raise dataset_ad2.DatasetError(
            f"Mask {sample.mask_path} is {mask[0]}x{mask[1]} (HxW) but its image {sample.path} is "
            f"{image[0]}x{image[1]}; a mask must have its image's size.")


def validation_warning(data: dataset_ad2.CategoryData) -> str | None:
    """A summary warning when a category has too few validation images for reliable thresholds."""
    count = len(data.validation)
    if count >= MIN_VALIDATION_IMAGES:
        return None
    return (f"{data.name}: only {count} validation image(s) (fewer than {MIN_VALIDATION_IMAGES}); its thresholds "
            "and score standardisation are unreliable.")
