"""The main script's last line: time taken, where the summary is, and what the run wrote."""

import os
import time
from pathlib import Path

import anomaly_vfm_v11_lora as script


def _touch(path: Path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x")
    os.utime(path, (mtime, mtime))


def test_done_line_lists_this_runs_reports_plots_and_exports(tmp_path):
    started = time.time()
    for name in ("performance_summary.txt", "results.csv", "metrics.json", "roc_curves.png", "pro_curves.png"):
        _touch(tmp_path / name, started + 1)
    _touch(tmp_path / "old_plot.png", started - 100)  # an earlier run's file: not listed
    _touch(tmp_path / "anomaly_images" / "tiles" / "test_private" / "000.tiff", started + 2)
    _touch(tmp_path / "anomaly_images_thresholded" / "tiles" / "test_private" / "000.png", started - 100)
    line = script.done_line(tmp_path, ["tiles", "weave"], started, 492.4)
    assert "\n" not in line and line.startswith("Done in 8 min 12 s. Summary: ")
    assert f"{tmp_path / 'performance_summary.txt'}" in line
    assert "metrics.json, results.csv, 2 plots (pro_curves.png, roc_curves.png)" in line
    assert "old_plot" not in line and "tiles, weave" in line
    assert f"Submission files: {tmp_path / 'anomaly_images'}." in line


def test_done_line_after_predict_names_the_predictions_file(tmp_path):
    started = time.time()
    _touch(tmp_path / "predictions" / "tiles-20250101-000000-000000" / "predictions.csv", started - 100)
    _touch(tmp_path / "predictions" / "tiles-20250102-000000-000000" / "predictions.csv", started + 1)
    line = script.done_line(tmp_path, [], started, 12.2)
    assert line == (f"Done in 12 s. Predictions: {tmp_path / 'predictions' / 'tiles-20250102-000000-000000'}"
                    "/predictions.csv (with maps/, masks/ and overlays/ beside it).")
