r"""Run v1.1-v1.4 on the same data and backbone and write a version table (CSV + Markdown).

    python experimental/compare_versions.py --DATA_ROOT=../shared/datasets/magtile_ad2 \
        --CATEGORIES=magtile --BACKBONE=../shared/models/dinov2-small-imgfocus --IMAGE_SIZE=224

Takes the main script's settings (any --NAME=value); each version writes its full results
to RESULTS_DIR/compare/<version>/ and the table goes to RESULTS_DIR/compare/versions.{csv,md}.
A version already finished with the same settings is reused, as in the main script.
"""

from __future__ import annotations

import csv
import math
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import anomaly_vfm_v11_lora as v11  # noqa: E402
from anomaly_vfm_v12_adaptive_lora import AdaptiveLoRA  # noqa: E402
from anomaly_vfm_v13_multiscale_lora import MultiScaleLoRA  # noqa: E402
from anomaly_vfm_v14_attention_guided_lora import AttentionGuidedLoRA  # noqa: E402
from anomalyvfm import model_io  # noqa: E402
from anomalyvfm.config import Config, wants_help  # noqa: E402
from anomalyvfm.method import Method  # noqa: E402
from anomalyvfm.pipeline import run  # noqa: E402
from anomalyvfm.reporting import mean_metrics, total_metrics  # noqa: E402

VERSIONS: dict[str, Method] = {"v1.1": Method(), "v1.2 adaptive LoRA": AdaptiveLoRA(),
                               "v1.3 multi-scale LoRA": MultiScaleLoRA(),
                               "v1.4 attention-guided LoRA": AttentionGuidedLoRA()}
COLUMNS = ("version", "image_auroc", "au_pro_0.05", "seg_f1", "seconds")


def compare(config: Config, versions: dict[str, Method] = VERSIONS, **options) -> list[dict]:
    """One row per version: mean image AUROC, AU-PRO@0.05, SegF1 over CATEGORIES, and seconds."""
    base = Path(config.RESULTS_DIR) / "compare"
    rows = []
    for name, method in versions.items():
        folder = base / method.name
        start = time.perf_counter()
        per_category = run(config.replace(RESULTS_DIR=str(folder)), method, **options)
        mean = mean_metrics(per_category)
        rows.append({"version": name, "image_auroc": mean["image_auroc"], "au_pro_0.05": mean["au_pro_0.05"],
                     "seg_f1": mean["seg_f1"], "seconds": total_metrics(per_category)["seconds"],
                     "wall_seconds": time.perf_counter() - start})
    write_tables(base, rows, config)
    return rows


def write_tables(folder: Path, rows: list[dict], config: Config) -> None:
    def fmt(value: float, digits: int = 4) -> str:
        return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"

    with model_io.atomic_path(folder / "versions.csv") as temporary, open(temporary, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row["version"]] + [fmt(row[c], 1 if c == "seconds" else 4) for c in COLUMNS[1:]])
    lines = [f"Data: {config.DATA_ROOT} ({', '.join(config.CATEGORIES)}), backbone {config.BACKBONE}, "
             f"IMAGE_SIZE={config.IMAGE_SIZE}, FEATURE_LAYERS={config.FEATURE_LAYERS}, SEED={config.SEED}", "",
             "| version | image AUROC | AU-PRO@0.05 | SegF1 | seconds (fit + score) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['version']} | {fmt(r['image_auroc'])} | {fmt(r['au_pro_0.05'])} | {fmt(r['seg_f1'])} | "
              f"{fmt(r['seconds'], 1)} |" for r in rows]
    model_io.write_text_atomic(folder / "versions.md", "\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if wants_help(argv):
        print(v11.help_text(Path(__file__).name, usage=__doc__.strip()))
        return 0
    try:
        config = v11.build_config(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    compare(config)
    print((Path(config.RESULTS_DIR) / "compare" / "versions.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
