"""Text, CSV and JSON reports of a run: ``performance_summary.txt``, ``results.csv``, ``metrics.json``.

Input everywhere is ``{category: metrics}``, each metrics dict as produced by the pipeline::

    {"image_auroc", "image_ap", "class_f1", "au_pro_0.05", "au_pro_0.30", "seg_f1", "seg_f1_baseline_rule":
         float (NaN = undefined),
     "by_lighting": {group: {"image_auroc", "au_pro_0.05", "seg_f1": float, "n_good", "n_bad": int}},
     "n_train", "n_test_good", "n_test_bad": int, "seconds": float,
     "reused": bool (optional, default false: the category finished earlier with the same settings and
               was not refit; its "seconds" are the original fit time)}

Summary tables end with a "Mean" row (metrics and counts averaged over categories) and a
"Total" row (counts and seconds summed), so that no row mixes the two.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from anomalyvfm.metrics import SAME_SCENES
from anomalyvfm.model_io import write_json_atomic, write_text_atomic

METRIC_COLUMNS = ("image_auroc", "image_ap", "class_f1", "au_pro_0.05", "au_pro_0.30", "seg_f1", "seg_f1_baseline_rule")
COUNT_COLUMNS = ("n_train", "n_test_good", "n_test_bad")
LIGHTING_METRICS = ("image_auroc", "au_pro_0.05", "seg_f1")
LIGHTING_COUNTS = ("n_good", "n_bad")
LIGHTING_ORDER = ("regular", "overexposed", "underexposed", "shift")  # MVTec AD 2's order; others follow
CSV_COLUMNS = ("category", *METRIC_COLUMNS, *COUNT_COLUMNS, "seconds", "reused")
TOTAL_COLUMNS = (*COUNT_COLUMNS, "seconds")

# (label, config key) of the summary's "Run" section, in display order.
RUN_FIELDS = (("Backbone", "BACKBONE"), ("Image size", "IMAGE_SIZE"), ("Feature layers", "FEATURE_LAYERS"),
              ("LoRA rank", "LORA_RANK"), ("LoRA alpha", "LORA_ALPHA"), ("Epochs", "EPOCHS"),
              ("Learning rate", "LEARNING_RATE"), ("Synthetic samples", "SYNTHETIC_SAMPLES"), ("Scorer", "SCORER"),
              ("Seed", "SEED"), ("Device", "DEVICE"), ("Data root", "DATA_ROOT"))
DEVICE_USED_KEY = "device_used"  # the resolved device ("cuda", "cpu", ...) in the config dict, shown for "Device"
SUMMARY_COLUMNS = ("Category", "Img AUROC", "Img AP", "ClassF1", "AU-PRO@0.05", "AU-PRO@0.30", "SegF1", "SegF1 3σ",
                   "train", "good", "bad", "seconds")
HOW_TO_READ = (
    "AU-PRO@0.05 is the official headline metric of MVTec AD 2: area under the PRO curve up to 5% FPR, normalised,"
    " computed on anomaly maps at the original image size over all test_public images.",
    "SegF1 is the pixel F1 at the model's pixel threshold, chosen on validation images with lighting variants and"
    " pasted synthetic defects (never on test images; docs/Lighting_and_Thresholds.md); --PREDICT and the export"
    " use it too.",
    "SegF1 3σ is the pixel F1 at the AD 2 paper's baseline rule, mean + 3·std of the validation/good anomaly values.",
    "ClassF1 is the image F1 at the model's image threshold, chosen the same way as the pixel threshold.",
    "n/a means undefined, e.g. no defective images in that group (AUROC and AU-PRO need good and bad images).",
    "Mean averages over categories, ignoring n/a; Total sums train, good, bad and seconds.",
    "good/bad beside a by-lighting number: the test images it was computed from (few images, coarse numbers).",
    "(reused): finished earlier with the same settings and not refit this run; its seconds are the original fit time.",
)


def _nanmean(values: list[float]) -> float:
    """Mean ignoring NaN; NaN (without numpy's empty-slice warning) when nothing is defined."""
    finite = [float(v) for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def lighting_groups(categories: dict[str, dict]) -> list[str]:
    """Lighting groups present in any category, in MVTec AD 2's order (unknown groups last, as first seen)."""
    seen = dict.fromkeys(group for metrics in categories.values() for group in metrics.get("by_lighting", {}))
    return [g for g in LIGHTING_ORDER if g in seen] + [g for g in seen if g not in LIGHTING_ORDER]


def mean_metrics(categories: dict[str, dict]) -> dict:
    """The "Mean" entry: metrics, counts and seconds averaged over categories (NaN ignored).

    Same keys as a category's metrics (without "reused"); a lighting group is averaged over the
    categories that have it.
    """
    values = list(categories.values())
    mean: dict[str, Any] = {name: _nanmean([m[name] for m in values]) for name in METRIC_COLUMNS}
    mean["by_lighting"] = {}
    for group in lighting_groups(categories):
        entries = [m["by_lighting"][group] for m in values if group in m.get("by_lighting", {})]
        # The regular-light metrics of a group's scenes exist only where that category has them.
        same_scenes = dict.fromkeys(k for e in entries for k in e if k.startswith(SAME_SCENES))
        mean["by_lighting"][group] = {name: _nanmean([e[name] for e in entries if name in e])
                                      for name in (*LIGHTING_METRICS, *LIGHTING_COUNTS, *same_scenes)}
    mean |= {name: _nanmean([m[name] for m in values]) for name in TOTAL_COLUMNS}
    return mean


def total_metrics(categories: dict[str, dict]) -> dict:
    """The "Total" entry: counts and seconds summed over categories, also per lighting group.

    ``{"n_train", "n_test_good", "n_test_bad": int, "seconds": float (NaN ignored),
    "by_lighting": {group: {"n_good", "n_bad": int}}}``.
    """
    values = list(categories.values())
    total: dict[str, Any] = {name: int(sum(m[name] for m in values)) for name in COUNT_COLUMNS}
    total["seconds"] = float(sum(m["seconds"] for m in values if not math.isnan(m["seconds"])))
    total["by_lighting"] = {group: {name: int(sum(m["by_lighting"][group][name] for m in values
                                                  if group in m.get("by_lighting", {})))
                                    for name in LIGHTING_COUNTS}
                            for group in lighting_groups(categories)}
    return total


def metrics_document(categories: dict[str, dict], config: dict) -> dict:
    """``{"categories": {name: metrics} (sorted by name), "mean": mean_metrics(...), "total": total_metrics(...),
    "config": config}``."""
    return {"categories": {name: categories[name] for name in sorted(categories)},
            "mean": mean_metrics(categories), "total": total_metrics(categories), "config": config}


def write_metrics_json(path: Path, categories: dict[str, dict], config: dict) -> None:
    """Strict JSON (NaN written as null) of ``metrics_document``."""
    write_json_atomic(path, metrics_document(categories, config))


def is_reused(metrics: dict) -> bool:
    return bool(metrics.get("reused", False))


def _csv_cell(name: str, value: Any) -> str:
    if name == "reused":
        return "" if value is None else str(bool(value)).lower()
    if value is None or math.isnan(value):
        return ""
    if name in COUNT_COLUMNS:
        return str(int(value)) if float(value).is_integer() else f"{value:.1f}"
    return f"{value:.1f}" if name == "seconds" else f"{value:.4f}"


def write_results_csv(path: Path, categories: dict[str, dict]) -> None:
    """One row per category (sorted by name), a "Mean" row and a "Total" row; NaN is an empty cell.

    Mean: metrics, counts and seconds averaged over categories. Total: counts and seconds summed
    (its metric cells are empty). ``reused`` is true/false per category, empty in Mean and Total.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for name in sorted(categories):
        metrics = categories[name] | {"reused": is_reused(categories[name])}
        writer.writerow([name] + [_csv_cell(column, metrics[column]) for column in CSV_COLUMNS[1:]])
    mean, total = mean_metrics(categories), total_metrics(categories)
    writer.writerow(["Mean"] + [_csv_cell(column, mean.get(column)) for column in CSV_COLUMNS[1:]])
    writer.writerow(["Total"] + [_csv_cell(column, total.get(column)) for column in CSV_COLUMNS[1:]])
    write_text_atomic(path, buffer.getvalue())


def _number(value: float, decimals: int = 4) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{decimals}f}"


def _setting(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _table(header: tuple[str, ...] | list[str], rows: list[list[str]], footer_rows: int = 2) -> list[str]:
    """Monospace table: first column left-aligned, the rest right-aligned; a rule above the footer (Mean, Total)."""
    widths = [max(len(row[i]) for row in [list(header), *rows]) for i in range(len(header))]

    def line(cells: list[str] | tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    body, footer = rows[:len(rows) - footer_rows], rows[len(rows) - footer_rows:]
    return [line(header), rule, *(line(r) for r in body), rule, *(line(r) for r in footer)]


def _section(title: str, items: list[str]) -> list[str]:
    return ["", title, *(f"  - {item}".replace("\n", "\n    ") for item in items or ["none"])]


def _count(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return str(int(value)) if float(value).is_integer() else f"{value:.1f}"


def format_summary(categories: dict[str, dict], *, config: dict, warnings: list[str],
                   skipped_files: list[tuple[str, str]], code_version: str, started: str, finished: str,
                   title: str = "AnomalyVFM v1.1 performance summary", device_used: str | None = None) -> str:
    """The plain-text ``performance_summary.txt``: run settings, result tables, reading notes, warnings.

    ``device_used``: the device the run resolved ``DEVICE`` to (e.g. "cuda" for "auto"); defaults
    to ``config["device_used"]`` when present, else the configured ``DEVICE`` is shown.
    """
    heading = f"{title} | {finished} | code {code_version}"
    lines = [heading, "=" * len(heading), "", "Run"]
    device_used = device_used or config.get(DEVICE_USED_KEY)
    shown = dict(config)
    if device_used:
        configured = config.get("DEVICE")
        shown["DEVICE"] = device_used if configured in (None, device_used) else f"{device_used} (DEVICE={configured})"
    present = [(label, shown[key]) for label, key in RUN_FIELDS if key in shown]
    width = max([len("Started")] + [len(label) for label, _ in present])
    lines += [f"  {label.ljust(width)}  {_setting(value)}" for label, value in present]
    lines += [f"  {'Started'.ljust(width)}  {started}", f"  {'Finished'.ljust(width)}  {finished}"]

    names = sorted(categories)
    labels = [f"{name} (reused)" if is_reused(categories[name]) else name for name in names]
    mean, total = mean_metrics(categories), total_metrics(categories)
    na = "-"  # a cell that the row does not define (metrics in Total)
    lines += ["", "Results on test_public", ""]
    lines += _table(SUMMARY_COLUMNS, [
        *([label, *(_number(m[c]) for c in METRIC_COLUMNS), *(_count(m[c]) for c in COUNT_COLUMNS),
           _number(m["seconds"], 1)] for label, m in zip(labels, (categories[n] for n in names))),
        ["Mean", *(_number(mean[c]) for c in METRIC_COLUMNS), *(_count(mean[c]) for c in COUNT_COLUMNS),
         _number(mean["seconds"], 1)],
        ["Total", *([na] * len(METRIC_COLUMNS)), *(_count(total[c]) for c in COUNT_COLUMNS),
         _number(total["seconds"], 1)]])

    lines += ["", "By lighting (image AUROC, AU-PRO@0.05 and SegF1 per lighting group of test_public, "
                  "from good/bad test images)", ""]
    groups = lighting_groups(categories)
    if groups:
        header = ["Category", *(f"{g} {label}" for g in groups for label in ("AUROC", "AU-PRO", "SegF1", "good/bad"))]
        missing = dict.fromkeys((*LIGHTING_METRICS, *LIGHTING_COUNTS), math.nan)

        def cells(by_lighting: dict, metrics: bool = True) -> list[str]:
            out = []
            for group in groups:
                entry = by_lighting.get(group, missing)
                out += [*(_number(entry[key]) if metrics else na for key in LIGHTING_METRICS),
                        f"{_count(entry['n_good'])}/{_count(entry['n_bad'])}" if group in by_lighting else na]
            return out

        lines += _table(header, [
            *([label, *cells(categories[n].get("by_lighting", {}))] for label, n in zip(labels, names)),
            ["Mean", *cells(mean["by_lighting"])], ["Total", *cells(total["by_lighting"], metrics=False)]])
    else:
        lines.append("  no lighting groups in the data")

    lines += _section("How to read", list(HOW_TO_READ))
    lines += _section("Warnings", list(warnings))
    lines += _section("Skipped files", [f"{path} — {reason}" for path, reason in skipped_files])
    return "\n".join(lines) + "\n"


def write_summary(path: Path, text: str) -> None:
    """Write the summary text (UTF-8) atomically."""
    write_text_atomic(path, text)
