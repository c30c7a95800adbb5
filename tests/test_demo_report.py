"""benchmarks/demo_report.py: the demo's metrics and mask shares read back from a results folder."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import demo_report  # noqa: E402


def write_mask(path: Path, white_rows: int) -> None:
    """A 10 x 10 {0, 255} mask whose first ``white_rows`` rows are white (a share of white_rows / 10)."""
    mask = np.zeros((10, 10), np.uint8)
    mask[:white_rows] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask).save(path)


def test_report_separates_good_and_defective_masks_and_checks_the_targets(tmp_path, capsys):
    metrics = {"image_auroc": 1.0, "au_pro_0.05": 0.9, "seg_f1": 0.35, "seg_f1_baseline_rule": 0.05,
               "class_f1": 0.8, "image_ap": 1.0}
    (tmp_path / "metrics.json").write_text(json.dumps({"categories": {"tiles": metrics}}))
    folder = tmp_path / "anomaly_images_thresholded" / "tiles"
    write_mask(folder / "test_private" / "000_regular.png", 0)       # good (even index)
    write_mask(folder / "test_private" / "001_overexposed.png", 9)   # defective (odd index)
    write_mask(folder / "test_private_mixed" / "002_mixed.png", 1)   # good: 10 % white
    write_mask(folder / "test_private_mixed" / "003_mixed.png", 3)
    row = demo_report.demo_report(tmp_path)["tiles"]
    assert row["largest_good_mask_white"] == pytest.approx(0.1)
    assert row["largest_good_mask"] == "test_private_mixed/002_mixed"
    assert row["defective_mask_white"] == {"test_private/001_overexposed": pytest.approx(0.9),
                                           "test_private_mixed/003_mixed": pytest.approx(0.3)}
    assert demo_report.main([str(tmp_path)]) == 0
    assert "no good mask above 5 % white: NOT met" in capsys.readouterr().out


def test_report_refuses_a_run_without_exported_masks(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text(json.dumps({"categories": {"tiles": {}}}))
    assert demo_report.main([str(tmp_path)]) == 2
    assert "--EXPORT_SUBMISSION=true" in capsys.readouterr().err
