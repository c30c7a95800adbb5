"""Scoring images outside the dataset's labelled splits with a saved model: ``--PREDICT`` on a
file or folder, and the official MVTec AD 2 submission files (``--EXPORT_SUBMISSION``)."""

from __future__ import annotations

import csv
import datetime as dt
import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import torch

import dataset_ad2
from anomalyvfm import model_io, plots
from anomalyvfm.config import Config, ConfigError
from anomalyvfm.errors import PipelineError
from anomalyvfm.fit import Runner, raw_scores
from anomalyvfm.method import Method
from anomalyvfm.model import (MODEL_SETTINGS, CategoryModel, anomalous_pixels, full_size_map, fused_scores,
                              is_anomalous, mask_threshold)
from anomalyvfm.results import ResultsFolder

log = logging.getLogger("anomalyvfm")


def output_names(paths: Sequence[Path]) -> list[str]:
    """A file name stem per input that no other input shares: the stem, or ``<stem>_<ext>`` for
    inputs whose stems collide (``x.png``, ``x.jpg`` -> ``x_png``, ``x_jpg``)."""
    stems = Counter(path.stem for path in paths)
    names = [f"{path.stem}_{path.suffix[1:]}" if stems[path.stem] > 1 else path.stem for path in paths]
    clashes = [name for name, count in Counter(name.lower() for name in names).items() if count > 1]
    if clashes:
        inputs = [str(p) for p, n in zip(paths, names) if n.lower() == clashes[0]]
        raise PipelineError(f"Inputs {', '.join(inputs)} would share the output name {clashes[0]!r}; "
                            "rename one of them.")
    return names


def predict(config: Config, method: Method, *, backbone: torch.nn.Module | None = None,
            progress: bool = True) -> Path:
    """Score new images (a file or a folder) with a saved category model; returns the output folder."""
    if len(config.CATEGORIES) != 1:
        raise PipelineError(f"PREDICT needs exactly one category, e.g. --CATEGORIES=can; got {config.CATEGORIES}.")
    category = config.CATEGORIES[0]
    model_folder = Path(config.RESULTS_DIR) / category / "model"
    model = CategoryModel.load(model_folder)
    if model.settings["METHOD"] != method.name:
        raise PipelineError(f"The saved {category} model was made by {model.settings['METHOD']}, not {method.name}; "
                            "predict with the script that trained it.")
    if model.settings["BACKBONE"] != config.BACKBONE:
        # The model folder must not choose what gets loaded: the user names the backbone.
        raise PipelineError(f"{model_folder / 'model.json'} was made with BACKBONE={model.settings['BACKBONE']!r} but "
                            f"this run uses {config.BACKBONE!r}; pass --BACKBONE={model.settings['BACKBONE']} to use it.")
    paths = _prediction_inputs(Path(config.PREDICT))
    names = output_names(paths)
    # The saved model fixes layers, image size and scorer; the run's config fixes the rest.
    try:
        run_config = config.replace(**{k: v for k, v in model.settings.items() if k in MODEL_SETTINGS})
    except ConfigError as error:
        raise PipelineError(f"{model_folder / 'model.json'} holds invalid settings: {error}") from None
    with Runner(run_config, method, backbone=backbone, progress=progress) as runner:
        _, raws = raw_scores(runner, model.scales, paths, "predict")
    if runner.unreadable:  # an input named on purpose: an error, before anything is written
        raise dataset_ad2.UnreadableImageError(*next(iter(runner.unreadable.items())))
    scores = fused_scores(method, model.scales, raws)
    out = _new_folder(Path(config.RESULTS_DIR) / "predictions", f"{category}-{dt.datetime.now():%Y%m%d-%H%M%S-%f}")
    rows = []
    for index, (path, name) in enumerate(zip(paths, names)):
        image = dataset_ad2.load_image(path)  # the overlay's pixels: the one decode besides the backbone's
        full = full_size_map(model.scales, raws, index, image.shape[:2])
        anomalous = anomalous_pixels(full, model.pixel_threshold)
        model_io.write_map_tiff(out / "maps" / f"{name}.tiff", full)
        model_io.write_mask_png(out / "masks" / f"{name}.png", anomalous)
        plots.save_overlay(out / "overlays" / f"{name}.png", image, full, mask_threshold(full, model.pixel_threshold))
        rows.append({"file": str(path), "output_name": name, "image_score": f"{scores[index]:.6f}",
                     "image_threshold": f"{model.image_threshold:.6f}",
                     "anomalous": str(is_anomalous(scores[index], model.image_threshold)).lower(),
                     "anomalous_pixel_fraction": f"{float(anomalous.mean()):.6f}"})
    with model_io.atomic_path(out / "predictions.csv") as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    log.info("%d predictions for %s written to %s", len(rows), category, out)
    return out


def _new_folder(parent: Path, name: str) -> Path:
    """``parent/name``, or ``name-2``, ``name-3``... : a folder that did not exist before."""
    parent.mkdir(parents=True, exist_ok=True)
    for counter in range(1, 10_000):
        folder = parent / (name if counter == 1 else f"{name}-{counter}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise PipelineError(f"Cannot create a new folder next to {parent / name}; clean up {parent}.")


def _prediction_inputs(target: Path) -> list[Path]:
    if target.is_file():
        return [target]
    if target.is_dir():
        paths = sorted(p for p in target.iterdir() if p.suffix.lower() in dataset_ad2.IMAGE_EXTENSIONS)
        if paths:
            return paths
        raise PipelineError(f"PREDICT={target}: the folder holds no images ({', '.join(dataset_ad2.IMAGE_EXTENSIONS)}).")
    raise PipelineError(f"PREDICT={target}: no such file or folder.")


def export_submission(runner: Runner, model: CategoryModel, data: dataset_ad2.CategoryData, results: ResultsFolder,
                      notes: list[str]) -> list[tuple[str, str]]:
    """Official MVTec AD 2 upload files: float16 TIFF maps at the original size and {0, 255} PNG masks.

    Each split's files are written to staging and replace the earlier export only when complete.
    Unreadable images get no files; returns them as ``(path, reason)`` for the run summary.
    """
    skipped: list[tuple[str, str]] = []
    for split in ("test_private", "test_private_mixed"):
        samples = data.split(split)
        if not samples:
            notes.append(f"{data.name}: EXPORT_SUBMISSION found no {split} images under {data.root}.")
            continue
        names = output_names([s.path for s in samples])
        staged = {folder: results.staging(folder, data.name, split)
                  for folder in ("anomaly_images", "anomaly_images_thresholded")}
        kept, raws = raw_scores(runner, model.scales, [s.path for s in samples], f"export {split}")
        for index, original in enumerate(kept):
            sample, name = samples[original], names[original]
            full = full_size_map(model.scales, raws, index, dataset_ad2.image_size(sample.path))
            model_io.write_map_tiff(staged["anomaly_images"] / f"{name}.tiff", full)
            model_io.write_mask_png(staged["anomaly_images_thresholded"] / f"{name}.png",
                                    anomalous_pixels(full, model.pixel_threshold))
        for folder, files in staged.items():
            results.publish(files, results.root / folder / data.name / split)
        skipped += runner.unreadable_among(s.path for s in samples)
    return skipped
