"""Where a dataset's segmentation is lost, per defect class (issue 14; docs/Lighting_and_Thresholds.md).

    python benchmarks/defect_class_probe.py magtile_ad2@448 tire_ad2@448

SegF1 pools the pixels of all test images, so a class with large defects decides it. For each case the
default row (``v1.1 (default)``: trained heads, coreset kNN, two scoring phases, centred maps) is fitted on
the cached tokens (``run_quality.row_outputs``) and its test maps cut as the product cuts them: at the 99.9th
percentile of the validation maps' pixels (``calibration.NORMAL_QUANTILE``; the product also pools the
validation images' lighting variants, which a regular-light case does not have), raised per map to its own
floor (``model.mask_threshold``). Printed per defect class, from the dataset's manifest
(``<dataset>/<category>.manifest.csv``: a ``file`` column and a ``defect...`` column):

- ``pixels``: its share of all defect pixels of the test set;
- ``recall``: the share of its defect pixels the cut finds;
- ``inside`` / ``core`` / ``outside``: the mean map value inside its masks, inside them at least
  ``CORE_MARGIN`` pixels from their edge, and outside them, over its images: a class whose core is not
  above the outside is not seen by the map, only its edges are;
- ``ceiling``: the best SegF1 possible if this class were never found and every other defect pixel were,
  without one false positive (``2 (P - P_c) / (2 (P - P_c) + P_c)``).

Then the SegF1 of the whole test set at that cut and at the best single threshold (test-optimal, a reference).
"""

from __future__ import annotations

import csv
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import run_quality  # noqa: E402
import anomaly_vfm_v11_lora as v11  # noqa: E402
from anomalyvfm import metrics  # noqa: E402
from anomalyvfm.calibration import NORMAL_QUANTILE  # noqa: E402
from anomalyvfm.model import mask_threshold  # noqa: E402

CORE_MARGIN = 20  # pixels: a mask's core lies at least this far inside its edge
OPTIMAL_STEPS = 400  # thresholds tried for the test-optimal SegF1, evenly spaced in rank over the maps' upper half


def scene_of(path: str | Path) -> str:
    """The scene an AD 2 test file shows: its number, shared by every lighting of it
    (``012_overexposed.png`` -> ``012``)."""
    return Path(path).name.split("_")[0]


def defect_classes(manifest: Path) -> dict[str, str]:
    """Scene -> defect class of every defective test image in ``manifest``: a CSV with a ``file`` column (the path in
    the dataset, ``<category>/test_public/bad/...`` for defective test images) and one column named ``defect...``.
    ``ValueError`` naming the file when either column is missing."""
    with manifest.open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        column = next((f for f in fields if f.startswith("defect")), None)
        if "file" not in fields or column is None:
            raise ValueError(f"{manifest}: needs a 'file' column and a 'defect...' column, has {fields}")
        return {scene_of(row["file"]): row[column] for row in reader if "/test_public/bad/" in row["file"]}


@dataclass
class ClassRow:
    name: str
    images: int
    pixel_share: float
    recall: float
    inside: float
    core: float
    outside: float
    ceiling: float


def class_rows(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], cuts: Sequence[float],
               classes: Sequence[str]) -> list[ClassRow]:
    """Per defect class (of the defective images, ``classes[i]`` for image ``i``; good images have no mask and are
    skipped), the figures of the module docstring. ``maps`` ``[H, W]``, ``masks`` ``[H, W]`` (non-zero: defect) or None,
    ``cuts`` one value per map (a pixel at or above it is found). Classes in order of first appearance."""
    total = sum(int((m > 0).sum()) for m in masks if m is not None)
    rows = []
    for name in dict.fromkeys(c for c, m in zip(classes, masks) if m is not None):
        found = pixels = 0
        inside, core, outside = [], [], []
        for amap, mask, cut, cls in zip(maps, masks, cuts, classes):
            if mask is None or cls != name:
                continue
            defect = mask > 0
            pixels += int(defect.sum())
            found += int((defect & (amap >= cut)).sum())
            inside.append(float(amap[defect].mean()))
            outside.append(float(amap[~defect].mean()) if (~defect).any() else np.nan)
            centre = ndimage.binary_erosion(defect, iterations=CORE_MARGIN)
            core.append(float(amap[centre].mean()) if centre.any() else np.nan)
        rest = total - pixels
        rows.append(ClassRow(name, len(inside), pixels / total, found / pixels, float(np.mean(inside)),
                             float(np.nanmean(core)) if not np.all(np.isnan(core)) else np.nan,
                             float(np.nanmean(outside)), 2 * rest / (2 * rest + pixels)))
    return rows


def product_cuts(val_maps: Sequence[np.ndarray], test_maps: Sequence[np.ndarray]
                 ) -> tuple[float, list[float], list[float]]:
    """The product's pixel cut on a case's maps ``[H, W]``: the ``NORMAL_QUANTILE`` of the validation maps' pixels,
    then per test map its own floor and its cut ``max(threshold, floor)`` (= ``model.mask_threshold(map, threshold)``).
    Returns ``(threshold, floors, cuts)``; the floors, each computed once, also feed ``optimal_seg_f1``."""
    threshold = metrics.quantile_threshold(val_maps, NORMAL_QUANTILE)
    floors = [mask_threshold(m, -np.inf) for m in test_maps]
    return threshold, floors, [max(threshold, floor) for floor in floors]


def optimal_seg_f1(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray | None], floors: Sequence[float]) -> float:
    """The best pooled SegF1 over single thresholds ``T`` when map ``i`` is cut at ``max(T, floors[i])``: a pixel below
    its map's floor is never found. ``T`` runs over ``OPTIMAL_STEPS`` quantiles of the upper half of the kept values."""
    defect, normal = [], []
    for amap, mask, floor in zip(maps, masks, floors):
        kept = np.where(amap >= floor, amap, -np.inf)
        truth = np.zeros(amap.shape, bool) if mask is None else mask > 0
        defect.append(kept[truth])
        normal.append(kept[~truth])
    defect, normal = np.sort(np.concatenate(defect)), np.sort(np.concatenate(normal))
    values = np.concatenate([defect, normal])
    values = values[np.isfinite(values)]
    best = 0.0
    for t in np.quantile(values, np.linspace(0.5, 1.0, OPTIMAL_STEPS)):
        tp = len(defect) - np.searchsorted(defect, t, side="left")
        fp = len(normal) - np.searchsorted(normal, t, side="left")
        best = max(best, 2 * tp / (2 * tp + fp + (len(defect) - tp)))
    return float(best)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: defect_class_probe.py DATASET@SIZE ...", file=sys.stderr)
        return 2
    try:
        cases, extractor, backbone = run_quality.probe_setup(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, size in cases:
        category, _ = run_quality.case_root(name)
        dataset = name.removesuffix(run_quality.STRESS_SUFFIX)
        manifest = run_quality.SHARED / "datasets" / dataset / f"{category}.manifest.csv"
        if not manifest.is_file():
            print(f"error: {name} has no manifest with defect classes ({manifest})", file=sys.stderr)
            return 2
        by_scene = defect_classes(manifest)
        settings = v11.default_config().replace(IMAGE_SIZE=size)
        tokens = run_quality.case_tokens(extractor, backbone, name, size, phases=settings.SCORING_PHASES)
        with torch.inference_mode():
            synthetic = run_quality.synthetic_tokens(extractor, tokens["train"], size, settings.SYNTHETIC_SAMPLES,
                                                     settings.SEED)
        out = run_quality.row_outputs(tokens, synthetic, settings)
        masks = run_quality.ground_truth_masks(tokens["test_public"])
        classes = [by_scene.get(scene_of(s.path), "unlisted") if m is not None else "good"
                   for s, m in zip(tokens["test_public"].samples, masks)]
        threshold, floors, cuts = product_cuts(out.val_maps, out.test_maps)
        case = f"{name}@{size}"
        print(f"{case}: cut at q{NORMAL_QUANTILE * 100:g} of the validation maps = {threshold:.4f}, each map at least "
              f"its own floor")
        print(f"{'class':14s} {'images':>6s} {'pixels':>7s} {'recall':>7s} {'inside':>7s} {'core':>7s} {'outside':>7s} "
              f"{'ceiling':>7s}")
        for row in class_rows(out.test_maps, masks, cuts, classes):
            print(f"{row.name:14s} {row.images:6d} {row.pixel_share:7.3f} {row.recall:7.3f} {row.inside:7.4f} "
                  f"{row.core:7.4f} {row.outside:7.4f} {row.ceiling:7.3f}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", metrics.UndefinedMetricWarning)
            seg = metrics.seg_f1(out.test_maps, masks, cuts)
        print(f"{case}: SegF1 {seg:.4f} at the cut, {optimal_seg_f1(out.test_maps, masks, floors):.4f} at the best "
              f"single threshold (test-optimal)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
