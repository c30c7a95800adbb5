"""Metrics of a category from its saved scores and maps alone (no model, no backbone).

A category folder holds ``scores.csv`` (one row per readable validation and test_public image),
``maps/<relative path>.tiff`` (float16 anomaly maps at the original size) and ``fit.json`` (with
the images the fit left out as unreadable). They may have been edited or damaged since they
were written, so they are checked as they are read: a path that leaves the category folder, a
NaN score or map, or a missing map is a ``PipelineError`` naming the file (and row).

Only the test images with a row are evaluated. Each map and each ground-truth mask is decoded
once per evaluation when the category's maps (masks) fit in ``PRELOAD_BYTES``, else streamed
from disk by every metric.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

import dataset_ad2
from anomalyvfm import metrics, model_io
from anomalyvfm.errors import PipelineError
from anomalyvfm.model import mask_threshold, read_model_meta

FPR_LIMITS = (0.05, 0.3)
PRO_BINS = 20_000  # streaming AU-PRO; agrees with the exact computation within 1e-3 (tests)
SCORE_FIELDS = ("relative_path", "split", "label", "lighting", "image_score")
SCORED_SPLITS = ("validation", "test_public")
# The maps (float16) of a category, and separately its masks (bool), smaller than this are read once, not once per metric.
PRELOAD_BYTES = 1 << 30
SKIPPED_KEY = "skipped"  # fit.json: [[path, reason], ...], the images a fit left out as unreadable
REFIT_HINT = "rerun the category with --FORCE=true"


@dataclass
class CategoryOutcome:
    """What the reports need from a finished category."""

    metrics: dict
    scores: dict  # split -> {"scores": [N], "labels": [N]}
    image_threshold: float
    pixel_threshold: float
    pro_curve: tuple[np.ndarray, np.ndarray]
    embeddings: tuple[np.ndarray, np.ndarray] | None  # ([N, 512], kind [N]: 0 validation, 1 test good, 2 test bad)
    losses: list[float]


def _unsafe_relative_path(relative_path: str) -> str | None:
    """Why ``relative_path`` could name a file outside the category folder, or None."""
    parts = PurePosixPath(relative_path).parts
    if not parts or "\\" in relative_path or relative_path.startswith("/") or ":" in parts[0]:
        return "must be a relative path inside the category folder"
    if ".." in parts:
        return "must not contain '..'"
    return None


def map_path(category_dir: Path, relative_path: str) -> Path:
    """Where the map of the image at ``relative_path`` (relative to the category root) is saved."""
    problem = _unsafe_relative_path(relative_path)
    if problem:
        raise PipelineError(f"Image path {relative_path!r} {problem}.")
    return category_dir / "maps" / PurePosixPath(relative_path).with_suffix(".tiff")


def write_scores_csv(path: Path, rows: list[dict]) -> None:
    with model_io.atomic_path(path) as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(SCORE_FIELDS))
        writer.writeheader()
        writer.writerows(rows)


def read_scores_csv(path: Path) -> list[dict]:
    """The rows of a ``scores.csv``, validated; ``PipelineError`` naming the file and row otherwise."""
    if not path.is_file():
        raise PipelineError(f"{path} is missing: no saved scores for this category; run it without "
                            "--EVALUATE_ONLY first.")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not set(SCORE_FIELDS) <= set(reader.fieldnames):
            raise PipelineError(f"{path} has the columns {reader.fieldnames}, expected {', '.join(SCORE_FIELDS)}; "
                                f"{REFIT_HINT}.")
        rows = []
        for line, row in enumerate(reader, start=2):  # line 1 is the header
            problem = _row_problem(row)
            if problem:
                raise PipelineError(f"{path} row {line}: {problem}; {REFIT_HINT}.")
            rows.append(dict(row, label=int(row["label"]), image_score=float(row["image_score"])))
    return rows


def _row_problem(row: dict) -> str | None:
    problem = _unsafe_relative_path(row["relative_path"] or "")
    if problem:
        return f"relative_path {row['relative_path']!r} {problem}"
    if row["split"] not in SCORED_SPLITS:
        return f"split is {row['split']!r}, expected one of {', '.join(SCORED_SPLITS)}"
    if row["label"] not in ("0", "1"):
        return f"label is {row['label']!r}, expected 0 or 1"
    try:
        score = float(row["image_score"])
    except (TypeError, ValueError):
        score = math.nan
    if not math.isfinite(score):
        return f"image_score is {row['image_score']!r}, expected a finite number"
    return None


def missing_maps(category_dir: Path, rows: Sequence[dict]) -> list[Path]:
    """The maps that ``scores.csv`` rows refer to but that are not on disk."""
    return [path for path in (map_path(category_dir, r["relative_path"]) for r in rows) if not path.is_file()]


def recorded_skips(category_dir: Path) -> list[tuple[str, str]]:
    """``(path, reason)`` of the images the category's fit left out as unreadable, from its ``fit.json``
    (none without one); ``PipelineError`` naming the file when the list is malformed."""
    path = category_dir / "fit.json"
    if not path.is_file():
        return []
    record = model_io.read_json(path)
    entries = record.get(SKIPPED_KEY, []) if isinstance(record, dict) else None
    if not isinstance(entries, list) or not all(
            isinstance(e, list) and len(e) == 2 and all(isinstance(v, str) for v in e) for e in entries):
        raise PipelineError(f"{path}: {SKIPPED_KEY!r} must be a list of [path, reason] pairs; {REFIT_HINT}.")
    return [(file, reason) for file, reason in entries]


def _checked_maps(paths: list[Path], sizes: Sequence[tuple[int, int]]) -> list:
    """Check every saved map for NaN/inf (naming the file); return them as float16 arrays when the
    ``sizes`` ``(H, W)`` of their images add up to at most ``PRELOAD_BYTES``, else their paths
    (AD 2-scale categories stay streamed one map at a time)."""
    preload = sum(2 * h * w for h, w in sizes) <= PRELOAD_BYTES
    loaded = []
    for path in paths:
        values = model_io.read_map(path, np.float16)
        if not (np.isfinite(values.min()) and np.isfinite(values.max())):  # min/max propagate NaN
            raise PipelineError(f"{path} holds NaN or infinite values; {REFIT_HINT}.")
        loaded.append(values if preload else path)
    return loaded


def _decoded_masks(samples: Sequence[dataset_ad2.Sample], sizes: Sequence[tuple[int, int]]) -> list:
    """The ground truth of each sample for the metrics: None for a good image; for a defective one its
    mask decoded once as ``[H, W]`` bool when all of them (``sizes`` ``(H, W)`` of the images) fit in
    ``PRELOAD_BYTES``, else its path (decoded by each metric). An unreadable mask raises
    ``UnreadableImageError`` naming it."""
    paths = [s.mask_path for s in samples]
    if sum(h * w for path, (h, w) in zip(paths, sizes) if path is not None) > PRELOAD_BYTES:
        return paths
    return [None if path is None else dataset_ad2.read_mask(path) for path in paths]


def evaluate_category(data: dataset_ad2.CategoryData, category_dir: Path) -> CategoryOutcome:
    """All metrics of a category from its saved scores and maps alone (no model needed).

    ``data``: the category without the images its fit left out (``recorded_skips``), so that counts
    such as ``n_train`` are of the images used.
    """
    scores_file = category_dir / "scores.csv"
    rows = read_scores_csv(scores_file)
    by_path = {s.relative_path: s for s in data.test_public}
    validation = [r for r in rows if r["split"] == "validation"]
    test = [r for r in rows if r["split"] == "test_public"]
    missing = [r["relative_path"] for r in test if r["relative_path"] not in by_path]
    if missing:
        raise PipelineError(f"{scores_file} lists test images that are not in the dataset any more, e.g. "
                            f"{missing[0]}; {REFIT_HINT}.")
    absent = missing_maps(category_dir, rows)
    if absent:
        raise PipelineError(f"{absent[0]} is missing ({len(absent)} map(s) listed in {scores_file} are); {REFIT_HINT}.")
    samples = [by_path[r["relative_path"]] for r in test]
    scores = np.array([r["image_score"] for r in test])
    labels = np.array([r["label"] for r in test])
    val_scores = np.array([r["image_score"] for r in validation])
    sizes = [dataset_ad2.image_size(s.path) for s in samples]  # headers only
    maps = _checked_maps([map_path(category_dir, s.relative_path) for s in samples], sizes)
    masks = _decoded_masks(samples, sizes)
    val_maps = _checked_maps([map_path(category_dir, r["relative_path"]) for r in validation], [])

    # The product's thresholds (chosen at fit time, see ``calibration``) and the AD 2 paper's baseline rule.
    model = read_model_meta(category_dir / "model")
    image_threshold, pixel_threshold = float(model["image_threshold"]), float(model["pixel_threshold"])
    baseline_image = metrics.mean_plus_k_std(val_scores) if len(val_scores) else float("nan")
    baseline_pixel = metrics.mean_plus_k_std(val_maps) if val_maps else float("nan")
    # Each map is cut at its own value (``model.mask_threshold``), as --PREDICT and the export cut it.
    mask_thresholds = [mask_threshold(m.astype(np.float32) if isinstance(m, np.ndarray) else model_io.read_map(m),
                                      pixel_threshold) for m in maps]
    pro = metrics.au_pro_multi(maps, masks, FPR_LIMITS, num_bins=PRO_BINS)
    fit_record = model_io.read_json(category_dir / "fit.json") if (category_dir / "fit.json").is_file() else {}
    result = {
        "image_auroc": metrics.image_auroc(scores, labels),
        "image_ap": metrics.image_ap(scores, labels),
        "class_f1": metrics.class_f1(scores, labels, image_threshold),
        "au_pro_0.05": pro[0.05],
        "au_pro_0.30": pro[0.3],
        "seg_f1": metrics.seg_f1(maps, masks, mask_thresholds),
        "seg_f1_baseline_rule": metrics.seg_f1(maps, masks, baseline_pixel),
        "class_f1_baseline_rule": metrics.class_f1(scores, labels, baseline_image),
        "thresholds": {"pixel": pixel_threshold, "image": image_threshold,
                       "pixel_baseline_rule": baseline_pixel, "image_baseline_rule": baseline_image},
        "by_lighting": metrics.by_lighting([s.lighting for s in samples], labels, scores, maps, masks,
                                           fpr_limit=0.05, num_bins=PRO_BINS, threshold=mask_thresholds,
                                           scenes=[dataset_ad2.scene_of(s.relative_path) for s in samples]),
        "n_train": len(data.train),
        "n_test_good": int((labels == 0).sum()),
        "n_test_bad": int((labels == 1).sum()),
        "seconds": fit_record.get("seconds", float("nan")),
    }
    embeddings = None
    embedding_file = category_dir / "embeddings.npy"
    if embedding_file.is_file():
        stored = np.load(embedding_file, allow_pickle=False).astype(np.float32)
        kind = np.array([0] * len(validation) + [1 + r["label"] for r in test])
        embeddings = (stored, kind)
    return CategoryOutcome(result, {"validation": {"scores": val_scores}, "test_public": {"scores": scores, "labels": labels}},
                           image_threshold, pixel_threshold, metrics.pro_curve(maps, masks, num_bins=PRO_BINS),
                           embeddings, fit_record.get("losses", []))
