"""Run reports: the Mean entry, strict metrics.json, results.csv and the text summary."""

import csv
import json
import math

import pytest

from anomalyvfm import reporting

pytestmark = pytest.mark.filterwarnings("error")  # e.g. numpy's "mean of empty slice" must not happen

NAN = math.nan
CATEGORY_KEYS = {"image_auroc", "image_ap", "class_f1", "au_pro_0.05", "au_pro_0.30", "seg_f1", "seg_f1_baseline_rule",
                 "by_lighting", "n_train", "n_test_good", "n_test_bad", "seconds"}


def lighting(auroc: float, au_pro: float, good: int, bad: int) -> dict:
    """A lighting group's entry; its SegF1 is half its AU-PRO (any distinct value will do)."""
    return {"image_auroc": auroc, "au_pro_0.05": au_pro, "seg_f1": None if au_pro is None else au_pro / 2,
            "n_good": good, "n_bad": bad}


def category(auroc, ap, class_f1, pro05, pro30, seg_f1, seg_f1_rule, by_lighting, n_train, good, bad, seconds) -> dict:
    return {"image_auroc": auroc, "image_ap": ap, "class_f1": class_f1, "au_pro_0.05": pro05, "au_pro_0.30": pro30,
            "seg_f1": seg_f1, "seg_f1_baseline_rule": seg_f1_rule, "by_lighting": by_lighting, "n_train": n_train,
            "n_test_good": good, "n_test_bad": bad, "seconds": seconds}


@pytest.fixture
def categories() -> dict:
    # class_f1 is NaN everywhere; image_auroc and seg_f1 are NaN in one category only.
    return {
        "vial": category(0.9, 0.8, NAN, 0.5, 0.7, NAN, 0.1,
                         {"regular": lighting(0.95, 0.6, 10, 20), "overexposed": lighting(NAN, 0.3, 5, 0)},
                         100, 30, 40, 12.25),
        "can": category(NAN, 0.6, NAN, 0.3, 0.5, 0.4, 0.3,
                        {"regular": lighting(0.85, 0.4, 8, 12), "shift": lighting(0.7, 0.2, 4, 6)},
                        50, 20, 10, 7.5),
    }


CONFIG = {"BACKBONE": "facebook/dinov2-base", "IMAGE_SIZE": 448, "FEATURE_LAYERS": [4, 8, 12], "LORA_RANK": 16,
          "LORA_ALPHA": 32.0, "EPOCHS": 10, "LEARNING_RATE": 1e-4, "SEED": 7, "DATA_ROOT": "/data/ad2"}


def test_mean_metrics_are_means_ignoring_nan(categories):
    mean = reporting.mean_metrics(categories)
    assert set(mean) == CATEGORY_KEYS
    assert mean["image_auroc"] == pytest.approx(0.9)  # NaN in "can" ignored
    assert mean["image_ap"] == pytest.approx(0.7)
    assert math.isnan(mean["class_f1"])  # NaN in every category
    assert mean["au_pro_0.05"] == pytest.approx(0.4) and mean["au_pro_0.30"] == pytest.approx(0.6)
    assert mean["seg_f1"] == pytest.approx(0.4) and mean["seg_f1_baseline_rule"] == pytest.approx(0.2)
    assert (mean["n_train"], mean["n_test_good"], mean["n_test_bad"]) == (75, 25, 25)
    assert mean["seconds"] == pytest.approx(9.875)
    assert list(mean["by_lighting"]) == ["regular", "overexposed", "shift"]  # MVTec AD 2's order
    assert mean["by_lighting"]["regular"] == pytest.approx(lighting(0.9, 0.5, 9, 16))
    overexposed = mean["by_lighting"]["overexposed"]
    assert math.isnan(overexposed["image_auroc"]) and overexposed["au_pro_0.05"] == pytest.approx(0.3)
    assert mean["by_lighting"]["shift"] == pytest.approx(lighting(0.7, 0.2, 4, 6))


def test_total_metrics_sum_counts_and_seconds(categories):
    total = reporting.total_metrics(categories)
    assert total == {"n_train": 150, "n_test_good": 50, "n_test_bad": 50, "seconds": pytest.approx(19.75),
                     "by_lighting": {"regular": {"n_good": 18, "n_bad": 32}, "overexposed": {"n_good": 5, "n_bad": 0},
                                     "shift": {"n_good": 4, "n_bad": 6}}}


def test_metrics_json_is_strict_json_with_null_for_nan(tmp_path, categories):
    path = tmp_path / "metrics.json"
    categories["can"]["reused"] = True
    reporting.write_metrics_json(path, categories, CONFIG)

    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    document = json.loads(path.read_text(encoding="utf-8"), parse_constant=reject)
    assert set(document) == {"categories", "mean", "total", "config"}
    assert list(document["categories"]) == ["can", "vial"]
    assert set(document["categories"]["vial"]) == CATEGORY_KEYS and set(document["mean"]) == CATEGORY_KEYS
    assert set(document["categories"]["can"]) == CATEGORY_KEYS | {"reused"}
    assert document["categories"]["can"]["image_auroc"] is None
    assert document["categories"]["vial"]["by_lighting"]["overexposed"] == lighting(None, 0.3, 5, 0)
    assert document["mean"]["class_f1"] is None and document["mean"]["image_ap"] == pytest.approx(0.7)
    assert document["mean"]["n_train"] == 75 and document["total"]["n_train"] == 150
    assert document["config"] == CONFIG


def test_results_csv_has_sorted_rows_a_mean_row_and_a_total_row(tmp_path, categories):
    path = tmp_path / "results.csv"
    categories["vial"]["reused"] = True
    reporting.write_results_csv(path, categories)
    rows = list(csv.reader(path.read_text(encoding="utf-8").splitlines()))
    assert rows[0] == ["category", "image_auroc", "image_ap", "class_f1", "au_pro_0.05", "au_pro_0.30", "seg_f1",
                       "seg_f1_baseline_rule", "n_train", "n_test_good", "n_test_bad", "seconds", "reused"]
    assert rows[1] == ["can", "", "0.6000", "", "0.3000", "0.5000", "0.4000", "0.3000", "50", "20", "10", "7.5", "false"]
    assert rows[2] == ["vial", "0.9000", "0.8000", "", "0.5000", "0.7000", "", "0.1000", "100", "30", "40", "12.2",
                       "true"]
    assert rows[3] == ["Mean", "0.9000", "0.7000", "", "0.4000", "0.6000", "0.4000", "0.2000", "75", "25", "25", "9.9",
                       ""]
    assert rows[4] == ["Total", "", "", "", "", "", "", "", "150", "50", "50", "19.8", ""]
    assert len(rows) == 5


def test_summary_lists_results_warnings_and_skipped_files(tmp_path, categories):
    categories["vial"]["reused"] = True
    text = reporting.format_summary(
        categories, config=CONFIG | {"DEVICE": "auto"}, warnings=["vial: only 3 validation images"],
        skipped_files=[("/data/ad2/can/test_public/bad/007.png", "truncated PNG")],
        code_version="1.1.0 (v1.1)", started="2025-03-01T10:00:00", finished="2025-03-01T11:30:00",
        device_used="cuda")
    lines = text.splitlines()
    assert lines[0] == "AnomalyVFM v1.1 performance summary | 2025-03-01T11:30:00 | code 1.1.0 (v1.1)"
    assert "  Feature layers  4, 8, 12" in lines and "  Learning rate   0.0001" in lines
    assert "  Device          cuda (DEVICE=auto)" in lines
    assert "Scorer" not in text  # absent config keys are skipped
    header = next(line for line in lines if line.split()[:3] == ["Category", "Img", "AUROC"])
    assert header.split() == ["Category", "Img", "AUROC", "Img", "AP", "ClassF1", "AU-PRO@0.05", "AU-PRO@0.30",
                              "SegF1", "SegF1", "3σ", "train", "good", "bad", "seconds"]
    # Each name starts one row of the main table, then one of the lighting table.
    can, vial, mean, total = ([line.split()[1:] for line in lines if line.split()[:1] == [name]]
                              for name in ("can", "vial", "Mean", "Total"))
    assert can[0] == ["n/a", "0.6000", "n/a", "0.3000", "0.5000", "0.4000", "0.3000", "50", "20", "10", "7.5"]
    assert vial[0] == ["(reused)", "0.9000", "0.8000", "n/a", "0.5000", "0.7000", "n/a", "0.1000", "100", "30", "40",
                       "12.2"]
    assert mean[0] == ["0.9000", "0.7000", "n/a", "0.4000", "0.6000", "0.4000", "0.2000", "75", "25", "25", "9.9"]
    assert total[0] == ["-"] * 7 + ["150", "50", "50", "19.8"]
    lighting_header = next(line for line in lines if line.split()[:3] == ["Category", "regular", "AUROC"])
    assert lighting_header.split() == ["Category", *(word for group in ("regular", "overexposed", "shift")
                                                     for word in (group, "AUROC", group, "AU-PRO", group, "SegF1",
                                                                  group, "good/bad"))]
    assert can[1] == ["0.8500", "0.4000", "0.2000", "8/12", "n/a", "n/a", "n/a", "-", "0.7000", "0.2000", "0.1000", "4/6"]
    assert vial[1] == ["(reused)", "0.9500", "0.6000", "0.3000", "10/20", "n/a", "0.3000", "0.1500", "5/0",
                       "n/a", "n/a", "n/a", "-"]
    assert mean[1] == ["0.9000", "0.5000", "0.2500", "9/16", "n/a", "0.3000", "0.1500", "5/0",
                       "0.7000", "0.2000", "0.1000", "4/6"]
    assert total[1] == ["-", "-", "-", "18/32", "-", "-", "-", "5/0", "-", "-", "-", "4/6"]
    assert len(can) == len(vial) == len(mean) == len(total) == 2
    sections = [lines.index(title) for title in ("Run", "How to read", "Warnings", "Skipped files")]
    assert sections == sorted(sections)
    assert lines[lines.index("Warnings") + 1] == "  - vial: only 3 validation images"
    assert lines[lines.index("Skipped files") + 1] == "  - /data/ad2/can/test_public/bad/007.png — truncated PNG"

    path = tmp_path / "performance_summary.txt"
    reporting.write_summary(path, text)
    assert path.read_text(encoding="utf-8") == text


@pytest.mark.parametrize("config, device_used, shown", [
    ({"DEVICE": "auto", "device_used": "mps"}, None, "  Device   mps (DEVICE=auto)"),
    ({"DEVICE": "cpu"}, "cpu", "  Device   cpu"),
    ({"DEVICE": "auto"}, None, "  Device   auto"),
])
def test_summary_shows_the_resolved_device(config, device_used, shown):
    metrics = category(0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, {}, 1, 1, 1, 1.0)
    text = reporting.format_summary({"rice": metrics}, config=config, warnings=[], skipped_files=[],
                                    code_version="x", started="s", finished="f", device_used=device_used)
    assert shown in text.splitlines()


def test_summary_says_none_without_warnings_skipped_files_or_lighting():
    metrics = category(0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, {}, 1, 1, 1, 1.0)
    text = reporting.format_summary({"rice": metrics}, config={}, warnings=[], skipped_files=[], code_version="x",
                                    started="s", finished="f", title="T")
    lines = text.splitlines()
    assert lines[0] == "T | f | code x"
    assert lines[lines.index("Warnings") + 1] == "  - none"
    assert lines[lines.index("Skipped files") + 1] == "  - none"
    assert "  no lighting groups in the data" in lines
