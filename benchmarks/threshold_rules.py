"""Which threshold rule gives the best SegF1 and ClassF1 on real test data: candidates side by side.

    python benchmarks/threshold_rules.py RESULTS_DIR:DATA_ROOT:CATEGORY [...] --backbone=PATH

Each argument names a finished run (``RESULTS_DIR/CATEGORY/model`` and its saved test maps) and
its data. For each one this script rebuilds the calibration set of ``anomalyvfm/calibration.py``
with the saved model (the validation images, their defect-free lighting variants and pasted
synthetic defects), derives every candidate threshold from it, and scores the SAVED test maps and
image scores at each: the maps do not depend on the rule, so every candidate sees the same maps.
Test images choose nothing here; they only score the candidates. Prints one Markdown table (SegF1
and ClassF1 per run and rule, means over runs) and the SegF1 per lighting group of every rule. The
product's rules are ``calibration.PIXEL_RULE`` and ``calibration.IMAGE_RULE``.

Candidates (pixel and image alike):
- ``mean+3σ regular``: the AD 2 paper's baseline rule on the validation images;
- ``F1 synthetic``: the value maximising F1 over the whole calibration set;
- ``mean+3σ with lighting``: the baseline rule over the validation images and their
  defect-free lighting variants;
- ``min(F1 synthetic, mean+3σ with lighting)`` and ``midpoint(...)``, their mean;
- ``q99.9 regular`` and ``q99.9 with lighting``: the 99.9th percentile of the normal maps' pixels (of the
  normal images' scores), so one normal pixel in a thousand reaches it (``calibration.NORMAL_QUANTILE``).

Every map is cut where the product cuts it: at the rule's threshold raised to the map's own floor
(``model.mask_threshold``, ``--peak-floor``; ``--peak-floor=0`` compares plain thresholds).

A last row gives the best SegF1 and ClassF1 any threshold reaches on the test data itself
(pixels: over ``BEST_BINS`` bins): what no rule can exceed, chosen on test, so a reference only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import anomaly_vfm_v11_lora as v11  # noqa: E402
import dataset_ad2  # noqa: E402
from anomalyvfm import metrics, model_io  # noqa: E402
from anomalyvfm.calibration import IMAGE_RULE, PIXEL_RULE, calibration_set, candidate_thresholds  # noqa: E402
from anomalyvfm.evaluate import map_path, read_scores_csv  # noqa: E402
from anomalyvfm.fit import Runner  # noqa: E402
from anomalyvfm.method import Method  # noqa: E402
from anomalyvfm.model import MODEL_SETTINGS, PEAK_FLOOR, CategoryModel, mask_threshold  # noqa: E402


# The test-optimal thresholds, as an upper bound for every rule (chosen ON the test data: a reference, not a rule)
BEST_ROW = "best possible (test-optimal, reference only)"
BEST_BINS = 4096  # the pixel optimum over this many equal bins of the map range (exact for image scores)


def pooled_f1(map_files: list[Path], masks: list, groups: list[str], thresholds: dict[str, float],
              peak_floor: float = PEAK_FLOOR) -> dict[str, dict[str, float]]:
    """Pooled pixel F1 (as ``metrics.seg_f1``) of the saved maps at every threshold, each map cut where the product
    cuts it (``model.mask_threshold`` with ``peak_floor``; 0: at the threshold alone), overall and per lighting
    group, in one pass over the maps: ``{rule: {"overall": f1, group: f1, ...}}``."""
    counts: dict[tuple[str, str], list[int]] = {}  # (rule, group) -> [tp, predicted, defect]
    for path, mask_source, group in zip(map_files, masks, groups):
        values = model_io.read_map(path)
        mask = np.zeros(values.shape, bool) if mask_source is None else dataset_ad2.read_mask(mask_source) > 0
        floor = mask_threshold(values, -np.inf, peak_floor)  # the map's own floor, the same for every rule
        for name, threshold in thresholds.items():
            hit = values >= np.float64(max(threshold, floor))  # = mask_threshold(values, threshold, peak_floor)
            for key in ((name, "overall"), (name, group)):
                tally = counts.setdefault(key, [0, 0, 0])
                tally[0] += int(np.count_nonzero(hit & mask))
                tally[1] += int(np.count_nonzero(hit))
                tally[2] += int(mask.sum())
    return {name: {group: 2 * tp / (predicted + defect) if defect else float("nan")
                   for (rule, group), (tp, predicted, defect) in counts.items() if rule == name}
            for name in thresholds}


def evaluate(results_dir: Path, data_root: Path, category: str, backbone: str, peak_floor: float = PEAK_FLOOR
             ) -> dict:
    model = CategoryModel.load(results_dir / category / "model")
    settings = {k: v for k, v in model.settings.items() if k in MODEL_SETTINGS}
    config = v11.default_config().replace(**settings | {"DATA_ROOT": str(data_root), "CATEGORIES": [category],
                                                        "BACKBONE": backbone, "RESULTS_DIR": str(results_dir)})
    data = dataset_ad2.load_category(data_root, category)
    with Runner(config, Method(), progress=False) as runner, torch.inference_mode():
        paths = [s.path for s in data.validation]
        raws = [runner.raw_scores(scale, paths, "validation", keep_inputs=set(range(len(paths)))
                                  if number == 0 else ()) for number, scale in enumerate(model.scales)]
        inputs = [runner.kept_inputs[Path(p)] for p in paths]
        calibration = calibration_set(runner, model.scales, lambda i: inputs[i].float().div(255.0), raws, config.SEED)
    pixel, image = candidate_thresholds(calibration)
    rows = [r for r in read_scores_csv(results_dir / category / "scores.csv") if r["split"] == "test_public"]
    by_path = {s.relative_path: s for s in data.test_public}
    map_files = [map_path(results_dir / category, r["relative_path"]) for r in rows]
    masks = [by_path[r["relative_path"]].mask_path for r in rows]
    scores = np.array([r["image_score"] for r in rows])
    labels = np.array([r["label"] for r in rows])
    groups = [dataset_ad2.lighting_group(by_path[r["relative_path"]].lighting) for r in rows]
    best_seg_f1, best_pixel = metrics.f1_optimal_threshold(map_files, masks, num_bins=BEST_BINS)
    best_class_f1, best_image = metrics.f1_max(scores, labels)
    return {"seg_f1": pooled_f1(map_files, masks, groups, pixel, peak_floor),
            "class_f1": {name: metrics.class_f1(scores, labels, t) for name, t in image.items()},
            "pixel": pixel, "image": image,
            "best": {"seg_f1": best_seg_f1, "class_f1": best_class_f1, "pixel": best_pixel, "image": best_image}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="RESULTS_DIR:DATA_ROOT:CATEGORY")
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--peak-floor", type=float, default=PEAK_FLOOR,
                        help=f"each map cut at no less than median + this share of (peak - median), as the product "
                             f"(model.PEAK_FLOOR, {PEAK_FLOOR:g}); 0: every rule a plain threshold")
    args = parser.parse_args(argv)
    if not 0.0 <= args.peak_floor < 1.0:
        parser.error(f"--peak-floor must lie in [0, 1), got {args.peak_floor}")
    table = {}
    for run in args.runs:
        results_dir, data_root, category = run.split(":")
        table[f"{Path(data_root).name}/{category}"] = evaluate(Path(results_dir), Path(data_root), category,
                                                               args.backbone, args.peak_floor)
    names = list(next(iter(table.values()))["seg_f1"])
    print("| rule | " + " | ".join(f"{run} SegF1 | {run} ClassF1" for run in table) + " | mean SegF1 | mean ClassF1 |")
    print("|---|" + "---:|---:|" * len(table) + "---:|---:|")

    def print_row(name: str, seg: list[float], cls: list[float]) -> None:
        cells = " | ".join(f"{s:.4f} | {c:.4f}" for s, c in zip(seg, cls))
        print(f"| {name} | {cells} | {np.mean(seg):.4f} | {np.mean(cls):.4f} |")

    for name in names:
        print_row(name, [entry["seg_f1"][name]["overall"] for entry in table.values()],
                  [entry["class_f1"][name] for entry in table.values()])
    print_row(BEST_ROW, [entry["best"]["seg_f1"] for entry in table.values()],
              [entry["best"]["class_f1"] for entry in table.values()])
    print()
    print(f"SegF1 per lighting group (the product's rules: pixel {PIXEL_RULE}, image {IMAGE_RULE}):")
    for run, entry in table.items():
        for name in names:
            print(run, name, {group: round(f1, 4) for group, f1 in entry["seg_f1"][name].items()})
    print()
    for run, entry in table.items():
        print(run, "pixel thresholds", {k: round(v, 4) for k, v in entry["pixel"].items()},
              "image thresholds", {k: round(v, 4) for k, v in entry["image"].items()},
              f"{BEST_ROW}: pixel {entry['best']['pixel']:.4f}, image {entry['best']['image']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
