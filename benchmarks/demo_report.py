"""The demo's measured numbers (``benchmarks/demo.json``, the README's demo table) and issue 14's demo targets,
read back from a finished demo run's results folder.

    python anomaly_vfm_v11_lora.py --demo --BACKBONE=../shared/models/dinov2-small-imgfocus \\
        --EXPORT_SUBMISSION=true --RESULTS_DIR=/tmp/demo
    python benchmarks/demo_report.py /tmp/demo --wall-seconds=182 --write

Per category: the metrics of ``metrics.json``, and the white share of each exported mask
(``anomaly_images_thresholded/<category>/<split>/<stem>.png``) of ``test_private`` and
``test_private_mixed``, whose good images are known from the demo generator
(``demo_data.private_is_defective``). Printed: the table and whether each target holds (SegF1 at least
``MIN_SEG_F1`` in every category, no good image's mask more than ``MAX_GOOD_WHITE`` white). ``--write``
replaces ``benchmarks/demo.json`` (``--wall-seconds``, the demo command's measured wall time, is then required).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from anomalyvfm.demo_data import private_is_defective  # noqa: E402
from run_benchmark import machine  # noqa: E402

HERE = Path(__file__).resolve().parent
COMMAND = ("python anomaly_vfm_v11_lora.py --demo --BACKBONE=../shared/models/dinov2-small-imgfocus "
           "--EXPORT_SUBMISSION=true")
PRIVATE_SPLITS = ("test_private", "test_private_mixed")
MIN_SEG_F1 = 0.3  # issue 14's demo targets
MAX_GOOD_WHITE = 0.05
METRIC_KEYS = ("image_auroc", "au_pro_0.05", "seg_f1", "seg_f1_baseline_rule", "class_f1")


def mask_shares(results_dir: Path, category: str) -> dict[str, dict[str, float]]:
    """``{"good": {split/stem: white share}, "defective": {...}}`` of the category's exported private masks."""
    shares: dict[str, dict[str, float]] = {"good": {}, "defective": {}}
    for split in PRIVATE_SPLITS:
        folder = results_dir / "anomaly_images_thresholded" / category / split
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing: run the demo with --EXPORT_SUBMISSION=true (see --help).")
        for path in sorted(folder.glob("*.png")):
            white = float((np.asarray(Image.open(path)) > 127).mean())
            kind = "defective" if private_is_defective(int(path.stem.split("_")[0])) else "good"
            shares[kind][f"{split}/{path.stem}"] = white
    return shares


def demo_report(results_dir: Path) -> dict[str, dict]:
    """Per category: ``METRIC_KEYS`` from ``metrics.json`` and the largest good-mask white share with its image."""
    metrics_file = results_dir / "metrics.json"
    if not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file} is missing: expected a finished demo run's RESULTS_DIR.")
    categories = json.loads(metrics_file.read_text())["categories"]
    report = {}
    for category, found in categories.items():
        shares = mask_shares(results_dir, category)
        worst = max(shares["good"], key=shares["good"].get)
        report[category] = {key: round(float(found[key]), 4) for key in METRIC_KEYS}
        report[category].update(largest_good_mask_white=round(shares["good"][worst], 4), largest_good_mask=worst,
                                defective_mask_white={k: round(v, 4) for k, v in shares["defective"].items()})
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--wall-seconds", type=float, help="the demo command's measured wall time")
    parser.add_argument("--write", action="store_true", help="replace benchmarks/demo.json")
    args = parser.parse_args(argv)
    if args.write and args.wall_seconds is None:
        parser.error("--write needs --wall-seconds (the demo command's measured wall time)")
    try:
        report = demo_report(args.results_dir)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("| category | image AUROC | AU-PRO@0.05 | SegF1 | SegF1 mean + 3σ | ClassF1 | largest good mask white |")
    for category, row in report.items():
        print(f"| {category} | {row['image_auroc']:.4f} | {row['au_pro_0.05']:.4f} | {row['seg_f1']:.4f} | "
              f"{row['seg_f1_baseline_rule']:.4f} | {row['class_f1']:.4f} | "
              f"{100 * row['largest_good_mask_white']:.2f} % ({row['largest_good_mask']}) |")
        for name, white in row["defective_mask_white"].items():
            print(f"    defective {name}: {100 * white:.2f} % white")
    seg_met = all(row["seg_f1"] >= MIN_SEG_F1 for row in report.values())
    masks_met = all(row["largest_good_mask_white"] <= MAX_GOOD_WHITE for row in report.values())
    print(f"SegF1 >= {MIN_SEG_F1} in every category: {'met' if seg_met else 'NOT met'}; "
          f"no good mask above {100 * MAX_GOOD_WHITE:.0f} % white: {'met' if masks_met else 'NOT met'}")
    if args.write:
        document = {"command": COMMAND, "machine": machine(),
                    "wall_seconds": round(args.wall_seconds), "categories": report}
        (HERE / "demo.json").write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {HERE / 'demo.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
