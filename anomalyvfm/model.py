"""A category's saved model and how it scores images.

``CategoryModel`` is everything needed to score new images of a category, saved under
``<category>/model/`` as ``model.json`` plus one ``scale_<size>.safetensors`` per input size
(no pickle anywhere). A model folder may come from someone else, so loading validates every
field of ``model.json`` (types, ranges, file names) before it is used, and every problem is a
``PipelineError`` naming the file.

Scoring: per scale, ``RawScores`` (CLS distances, patch distance grids) -> ``ScoreFusion`` of
the standardised distances -> image scores averaged over scales; anomaly maps at the original
size, averaged over scales, rounded to float16 (the precision they are saved and thresholded at).
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from anomalyvfm import __version__, model_io
from anomalyvfm.config import PATCH_SIZE, SCORERS, Config, is_image_size
from anomalyvfm.errors import PipelineError
from anomalyvfm.heads import StackedLoRAHeads
from anomalyvfm.illumination import IlluminationRange
from anomalyvfm.method import Method
from anomalyvfm.scoring import ScoreFusion, Scorer, anomaly_map, centred_grid, map_median_of, scorer_from_state

# Settings that change a category's model or metrics: a finished category is reused on
# rerun only if all of them match.
MODEL_SETTINGS = ("DATA_ROOT", "BACKBONE", "FEATURE_LAYERS", "IMAGE_SIZE", "LORA_RANK", "LORA_ALPHA", "EPOCHS",
                  "LEARNING_RATE", "SYNTHETIC_SAMPLES", "BATCH_SIZE", "SEED", "SCORER", "KNN_BANK_SIZE",
                  "KNN_BANK_SAMPLING", "KNN_SHRINKAGE", "KNN_NUISANCE_WEIGHT", "KNN_IMAGE_BANK_SIZE",
                  "CENTRE_MAPS", "DISCOUNT_SATURATED", "SCORING_PHASES")
# What a saved model's numbers mean; raised whenever the same model would score differently. A model
# saved under another one is refitted on rerun and refused by --PREDICT, never silently mixed.
# 2: the image score became the peak patch distance above the image's median (was the top-1 % mean).
# 3: a whitened kNN (KNN_SHRINKAGE < 1) scores images by a plain-cosine search of their own (KNN_IMAGE_BANK_SIZE).
# 4: the peak is the mean of the PEAK_PATCHES (3) highest patch distances (was the highest one).
SCORING_VERSION = 4
# Settings added since SCORING_VERSION was last raised, with the value that reproduces the models saved
# before them: such a model is read as if it had been saved with that value (reused, not refitted).
SETTINGS_ADDED = {"KNN_NUISANCE_WEIGHT": 0.0, "DISCOUNT_SATURATED": False, "SCORING_PHASES": 1}
# Masks: a pixel counts only at or above its own map's floor too, median + PEAK_FLOOR (peak - median)
# (``mask_threshold``). 0.2 keeps every demo category's SegF1 above 0.33 with the quantile pixel threshold and costs
# the real sets 0.001 (0.3: magnetic tiles -0.019); docs/Lighting_and_Thresholds.md. 0: the pixel threshold alone.
PEAK_FLOOR = 0.2
# A spread below this fraction of the mean (or exactly 0) means the validation images could not
# estimate it (too few, or identical); dividing by it would blow scores up to +-1e13.
MIN_RELATIVE_SPREAD = 1e-3


def model_settings(config: Config, method: Method) -> dict:
    """The settings saved with a model; DATA_ROOT resolved, so that ``data/`` and ``data`` compare equal."""
    settings = {name: getattr(config, name) for name in MODEL_SETTINGS} | {"METHOD": method.name}
    settings["DATA_ROOT"] = str(Path(config.DATA_ROOT).expanduser().resolve())
    return settings


@dataclass
class ScaleModel:
    """Heads and scorers at one input size."""

    image_size: int
    heads: StackedLoRAHeads
    cls_scorer: Scorer
    patch_scorer: Scorer
    illumination: IlluminationRange
    fusion: ScoreFusion | None = None
    # The validation images' mean median patch distance: maps are centred on it (``centred_grid``); None: raw maps.
    map_median: float | None = None
    # Clipped highlights discounted (``scoring.discount_saturated``): DISCOUNT_SATURATED and the training images clip.
    discount_saturated: bool = False
    losses: list[float] = field(default_factory=list)
    # A few synthetic training samples ({"image", "mask", "title"}) for synthetic_samples.png; not saved.
    synthetic_preview: list[dict] = field(default_factory=list)


@dataclass
class CategoryModel:
    """Everything needed to score new images of a category; saved under ``<cat>/model/``."""

    category: str
    scales: list[ScaleModel]
    image_threshold: float
    pixel_threshold: float
    settings: dict

    def save(self, folder: Path) -> None:
        for scale in self.scales:
            tensors = {f"heads.{name}": value for name, value in scale.heads.state_dict().items()}
            tensors |= {f"cls_scorer.{name}": value for name, value in scale.cls_scorer.state().items()}
            tensors |= {f"patch_scorer.{name}": value for name, value in scale.patch_scorer.state().items()}
            tensors |= {f"illumination.{name}": value for name, value in scale.illumination.state().items()}
            model_io.save_tensors(folder / f"scale_{scale.image_size}.safetensors", tensors)
        model_io.write_json_atomic(folder / "model.json", {
            "category": self.category, "image_threshold": self.image_threshold,
            "pixel_threshold": self.pixel_threshold, "settings": self.settings, "version": __version__,
            "scoring_version": SCORING_VERSION,
            "scales": [{"image_size": s.image_size, "rank": s.heads.rank, "alpha": s.heads.alpha,
                        "fusion": s.fusion.state() if s.fusion else None, "map_median": s.map_median,
                        "discount_saturated": s.discount_saturated}
                       for s in self.scales]})

    @classmethod
    def load(cls, folder: Path) -> "CategoryModel":
        meta = read_model_meta(folder)
        scales = []
        for entry in meta["scales"]:
            path = folder / f"scale_{entry['image_size']}.safetensors"
            if not path.is_file():
                raise PipelineError(f"{path} is missing: model.json lists input size {entry['image_size']}; "
                                    "refit the category (--FORCE=true).")
            try:
                tensors = model_io.load_tensors(path)
                part = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
                head_state = part("heads.")
                heads = StackedLoRAHeads(head_state["head1.lora_A"].shape[1], rank=entry["rank"], alpha=entry["alpha"])
                heads.load_state_dict(head_state)
                kind = meta["settings"]["SCORER"]
                cls_scorer = scorer_from_state(kind, part("cls_scorer."))
                patch_scorer = scorer_from_state(kind, part("patch_scorer."))
                illumination = IlluminationRange(**part("illumination."))
            except (KeyError, ValueError, RuntimeError, OSError) as error:
                raise PipelineError(f"{path} is not a model file that matches {folder / 'model.json'} ({error}); "
                                    "refit the category (--FORCE=true).") from None
            scales.append(ScaleModel(entry["image_size"], heads.eval(), cls_scorer, patch_scorer, illumination,
                                     ScoreFusion(**entry["fusion"]), entry["map_median"],
                                     discount_saturated=entry.get("discount_saturated", False)))
        return cls(meta["category"], scales, meta["image_threshold"], meta["pixel_threshold"], meta["settings"])


def read_model_meta(folder: Path) -> dict:
    """``folder/model.json``, validated field by field; ``PipelineError`` naming the file otherwise."""
    path = folder / "model.json"
    if not path.is_file():
        raise PipelineError(f"No saved model in {folder} (expected model.json and scale_*.safetensors); "
                            "run the pipeline on this category first.")
    try:
        meta = model_io.read_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise PipelineError(f"{path} is empty or not valid JSON ({error}); refit the category with --FORCE=true "
                            "or delete its folder.") from None
    if isinstance(meta, dict) and isinstance(meta.get("settings"), dict):
        meta["settings"] = SETTINGS_ADDED | meta["settings"]
    problem = _meta_problem(meta)
    if problem:
        raise PipelineError(f"{path} is not a valid model description: {problem}; refit the category with "
                            "--FORCE=true or delete its folder.")
    return meta


def _meta_problem(meta: Any) -> str | None:
    """What is wrong with a parsed model.json, or None."""
    if not isinstance(meta, dict):
        return "expected a JSON object"
    if not isinstance(meta.get("category"), str):
        return "'category' must be a string"
    if meta.get("scoring_version") != SCORING_VERSION:
        return (f"it was saved by anomalyvfm {meta.get('version', '(unknown)')}, which scores images differently "
                f"(scoring_version {meta.get('scoring_version', 1)!r}, this version reads {SCORING_VERSION})")
    for name in ("image_threshold", "pixel_threshold"):
        if not _is_finite_number(meta.get(name)):
            return f"{name!r} must be a finite number, got {meta.get(name)!r}"
    settings = meta.get("settings")
    if not isinstance(settings, dict):
        return "'settings' must be an object"
    hints = typing.get_type_hints(Config)
    for name in MODEL_SETTINGS:
        if name not in settings or not _has_type(settings[name], hints[name]):
            return f"settings.{name} must be a {getattr(hints[name], '__name__', hints[name])}, got {settings.get(name)!r}"
    if settings["SCORER"] not in SCORERS:
        return f"settings.SCORER must be one of {', '.join(SCORERS)}, got {settings['SCORER']!r}"
    if not isinstance(settings.get("METHOD"), str):
        return "settings.METHOD must be a string"
    scales = meta.get("scales")
    if not isinstance(scales, list) or not scales:
        return "'scales' must be a non-empty list"
    for entry in scales:
        if not isinstance(entry, dict):
            return "each scale must be an object"
        size = entry.get("image_size")
        if not is_image_size(size):
            return f"scales[].image_size must be a positive multiple of {PATCH_SIZE}, got {size!r}"
        if not _has_type(entry.get("rank"), int) or entry["rank"] < 1:
            return f"scales[].rank must be an integer >= 1, got {entry.get('rank')!r}"
        if not _is_finite_number(entry.get("alpha")) or entry["alpha"] <= 0:
            return f"scales[].alpha must be a finite number > 0, got {entry.get('alpha')!r}"
        fusion = entry.get("fusion")
        names = ("cls_mean", "cls_std", "patch_mean", "patch_std")
        if not isinstance(fusion, dict) or set(fusion) != set(names) or not all(
                _is_finite_number(fusion[n]) for n in names) or min(fusion["cls_std"], fusion["patch_std"]) <= 0:
            return f"scales[].fusion must hold finite {', '.join(names)} with spreads > 0, got {fusion!r}"
        if "map_median" not in entry or not (entry["map_median"] is None or _is_finite_number(entry["map_median"])):
            return f"scales[].map_median must be a finite number or null, got {entry.get('map_median', '(missing)')!r}"
        if not isinstance(entry.get("discount_saturated", False), bool):  # absent in a model saved before 1.5.0
            return f"scales[].discount_saturated must be true or false, got {entry['discount_saturated']!r}"
    return None


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _has_type(value: Any, annotation: Any) -> bool:
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if annotation is float:
        return _is_finite_number(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


# -- scoring images with a model ---------------------------------------------------------------------
@dataclass
class RawScores:
    """One scale's unfused outputs over a list of images (see ``fit.Runner.raw_scores``).

    cls_distances ``[N]``; grids: per image ``[gh, gw]`` patch distances (the map's), ``[P, gh, gw]`` with
    ``SCORING_PHASES`` P above 1 (``scoring.phase_shifts``); input_sizes: per image the network input ``(h, w)``;
    embeddings: CLS embeddings ``[N, D]``; peaks ``[N]``: each image's ``peak_score``, of its grid or, where the
    patch scorer searches for the image score on its own (``NearestNeighbourScorer.image_distances``), of that
    search's grid (averaged over the phases).
    """

    cls_distances: np.ndarray
    grids: list[torch.Tensor]
    input_sizes: list[tuple[int, int]]
    embeddings: np.ndarray
    peaks: np.ndarray

    @classmethod
    def empty(cls, count: int, dim: int) -> "RawScores":
        """``count`` rows to be filled in (zeros, empty grids)."""
        return cls(np.zeros(count), [torch.empty(0)] * count, [(0, 0)] * count, np.zeros((count, dim), np.float32),
                   np.zeros(count))

    def subset(self, indices: Sequence[int]) -> "RawScores":
        chosen = list(indices)
        return RawScores(self.cls_distances[chosen], [self.grids[i] for i in chosen],
                         [self.input_sizes[i] for i in chosen], self.embeddings[chosen], self.peaks[chosen])


def fit_fusion(normal: RawScores) -> tuple[ScoreFusion, list[str]]:
    """Score standardisation from normal (validation) images, and warnings when a spread is unusable.

    A spread that is zero or tiny relative to the mean (one image, identical images) would turn
    z-scores into +-1e13; the mean's magnitude (or 1.0) replaces it, so scores become relative deviations.
    """
    warnings: list[str] = []
    statistics = []
    for label, values in (("CLS distance", normal.cls_distances), ("peak patch distance", normal.peaks)):
        mean, spread = float(np.mean(values)), float(np.std(values))
        if not spread > MIN_RELATIVE_SPREAD * abs(mean):
            safe = abs(mean) if abs(mean) > 0 else 1.0
            warnings.append(f"the {label} of the {len(values)} validation image(s) has (almost) no spread "
                            f"({spread:.3g}); image scores use {safe:.3g} as its scale instead")
            spread = safe
        statistics += [mean, spread]
    return ScoreFusion(*statistics), warnings


def fused_scores(method: Method, scales: Sequence[ScaleModel], raws: Sequence[RawScores]) -> np.ndarray:
    """Image scores ``[N]``: per scale the method's fusion of the z-scores standardised with the
    scale's ``ScoreFusion`` statistics, averaged over scales."""
    per_scale = []
    for scale, raw in zip(scales, raws):
        fusion = scale.fusion
        cls_z = (raw.cls_distances - fusion.cls_mean) / fusion.cls_std
        patch_z = (raw.peaks - fusion.patch_mean) / fusion.patch_std
        per_scale.append([method.image_score(float(c), float(p)) for c, p in zip(cls_z, patch_z)])
    return np.mean(per_scale, axis=0) if per_scale else np.zeros(0)


def fit_map_medians(scales: Sequence[ScaleModel], validation: Sequence[RawScores], centre: bool) -> None:
    """Set each scale's ``map_median`` from its validation images' grids (None when ``centre`` is false)."""
    for scale, raw in zip(scales, validation):
        scale.map_median = map_median_of(raw.grids) if centre else None


def full_size_map(scales: Sequence[ScaleModel], raws: Sequence[RawScores], index: int,
                  original_size: tuple[int, int]) -> np.ndarray:
    """Image ``index``'s anomaly map ``[H, W]`` at its original size, averaged over scales, at saved precision.

    Each scale's grid is centred on the scale's ``map_median`` first, when it has one.
    Maps are saved as float16 and the pixel threshold is computed from saved maps, so every
    comparison with it uses the float16 values (held in float32).
    """
    grids = [raw.grids[index] if scale.map_median is None else centred_grid(raw.grids[index], scale.map_median)
             for scale, raw in zip(scales, raws)]
    maps = [anomaly_map(grid, raw.input_sizes[index], original_size) for grid, raw in zip(grids, raws)]
    return model_io.saved_precision(maps[0] if len(maps) == 1 else np.mean(maps, axis=0))


def mask_threshold(anomaly_map: np.ndarray, pixel_threshold: float, floor: float = PEAK_FLOOR) -> float:
    """The value one ``[H, W]`` map is cut at: the model's ``pixel_threshold``, raised to
    ``median + floor * (peak - median)`` of the map itself where that is higher (``floor`` 0: the threshold). A strong defect raises the
    background around it too (the backbone's attention is global) and the floor keeps that background out of the
    mask; a faint defect's map has a low peak and keeps ``pixel_threshold`` (docs/Lighting_and_Thresholds.md)."""
    median = float(np.median(anomaly_map))
    return max(float(pixel_threshold), median + floor * (float(anomaly_map.max()) - median))


def anomalous_pixels(anomaly_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """``[H, W]`` bool: the package's one rule, a value at or above the map's ``mask_threshold`` is anomalous."""
    return anomaly_map >= mask_threshold(anomaly_map, pixel_threshold)


def is_anomalous(image_score: float, image_threshold: float) -> bool:
    return bool(image_score >= image_threshold)
