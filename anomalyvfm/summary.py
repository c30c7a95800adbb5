"""The top-level reports of a run: summary, CSV, JSON, config and figures."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dataset_ad2
from anomalyvfm import __version__, model_io, plots, reporting
from anomalyvfm.config import Config
from anomalyvfm.evaluate import CategoryOutcome, map_path, read_scores_csv
from anomalyvfm.method import Method
from anomalyvfm.model import mask_threshold
from anomalyvfm.preflight import check_device

REPORT_FILES = ("performance_summary.txt", "results.csv", "metrics.json", "config.json", "roc_curves.png",
                "anomaly_scores.png", "sample_detections.png", "feature_analysis.png", "pro_curves.png",
                "training_loss.png")  # report.html is written after these by the main script


def write_reports(folder: Path, results_dir: Path, outcomes: dict[str, CategoryOutcome], config: Config,
                  method: Method, notes: list[str], skipped_files: list[tuple[str, str]], started: dt.datetime) -> None:
    """Write every file of ``REPORT_FILES`` into ``folder``; category results are read from ``results_dir``."""
    categories = {name: outcome.metrics for name, outcome in outcomes.items()}
    config_dict = config.to_dict() | {"METHOD": method.name, reporting.DEVICE_USED_KEY: check_device(config.DEVICE).type}
    config.save(folder / "config.json")
    reporting.write_metrics_json(folder / "metrics.json", categories, config_dict)
    reporting.write_results_csv(folder / "results.csv", categories)
    test_scores = {n: (o.scores["test_public"]["scores"], o.scores["test_public"]["labels"]) for n, o in outcomes.items()}
    plots.plot_roc_curves(folder / "roc_curves.png", test_scores)
    plots.plot_score_distributions(folder / "anomaly_scores.png", test_scores,
                                   {n: o.image_threshold for n, o in outcomes.items()})
    plots.plot_pro_curves(folder / "pro_curves.png", {n: o.pro_curve for n, o in outcomes.items()})
    plots.plot_feature_analysis(folder / "feature_analysis.png",
                                {n: o.embeddings for n, o in outcomes.items() if o.embeddings is not None})
    plots.plot_training_loss(folder / "training_loss.png", {n: o.losses for n, o in outcomes.items()})
    examples = []
    for name, outcome in outcomes.items():
        examples += detection_examples(config, name, results_dir / name, outcome.pixel_threshold, count=1)
    plots.plot_sample_detections(folder / "sample_detections.png", examples)
    text = reporting.format_summary(categories, config=config_dict, warnings=notes, skipped_files=skipped_files,
                                    code_version=f"{__version__} ({method.name})",
                                    started=started.isoformat(timespec="seconds"),
                                    finished=dt.datetime.now().isoformat(timespec="seconds"),
                                    title=f"AnomalyVFM {method.name} performance summary")
    reporting.write_summary(folder / "performance_summary.txt", text)


def detection_examples(config: Config, category: str, category_dir: Path, pixel_threshold: float,
                       count: int) -> list[dict]:
    """The ``count`` best- and worst-scored defective test images (and the top false alarm) for plotting."""
    rows = [r for r in read_scores_csv(category_dir / "scores.csv") if r["split"] == "test_public"]
    bad = sorted((r for r in rows if r["label"] == 1), key=lambda r: r["image_score"])
    good = sorted((r for r in rows if r["label"] == 0), key=lambda r: r["image_score"])
    picks = [("best", r) for r in bad[::-1][:count]] + [("worst", r) for r in bad[:count]]
    picks += [("false alarm?", r) for r in good[::-1][:1]]
    root = dataset_ad2.category_root(config.DATA_ROOT, category)
    examples = []
    for kind, row in picks:
        relative = Path(row["relative_path"])
        mask_file = root / "test_public" / "ground_truth" / "bad" / f"{relative.stem}_mask.png"
        anomaly_map = model_io.read_map(map_path(category_dir, row["relative_path"]))
        examples.append({
            "title": f"{category} {kind}: {relative.name} (score {row['image_score']:.2f})",
            "image": dataset_ad2.load_image(root / relative),
            "mask": dataset_ad2.load_mask(mask_file) if row["label"] == 1 else None,
            "anomaly_map": anomaly_map,
            "threshold": mask_threshold(anomaly_map, pixel_threshold)})  # the map's own cut, as its mask
    return examples
