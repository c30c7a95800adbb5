"""benchmarks/compare_rows.py: argument checks, the mean over cases, the saved file and its rendered table."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import compare_rows  # noqa: E402
import render_tables  # noqa: E402


def _interval(difference, low, high):
    return {"difference": difference, "low": low, "high": high, "resamples": 2000}


def _comparison(cases=("tire_ad2@448", "magtile_ad2@448")):
    entries = [{"case": case, "scenes": 112, "images": 112, "first": {"au_pro_0.05": 0.78, "image_auroc": 0.74},
                "second": {"au_pro_0.05": 0.776, "image_auroc": 0.732}, "au_pro_0.05": _interval(0.004, -0.003, 0.0112),
                "image_auroc": _interval(0.008, -0.02, 0.031)} for case in cases]
    return {"first": "v1.1 (default)", "second": "v1.1 --EPOCHS=0", "commit": "abc1234", "date": "2026-12-04",
            "backbone": "../shared/models/x", "resamples": 2000, "level": 0.95, "seed": 0, "cases": entries,
            "mean": {"au_pro_0.05": _interval(0.004, -0.001, 0.009), "image_auroc": _interval(0.008, -0.01, 0.025)},
            "seconds": 1}


def test_rows_must_be_two_different_known_rows(capsys):
    assert compare_rows.main(["tire_ad2@448", "--first=nope"]) == 2
    assert "two different rows" in capsys.readouterr().err
    assert compare_rows.main(["tire_ad2@448", "--first=v1.1 (default)", "--second=v1.1 (default)"]) == 2


def test_mean_interval_averages_the_cases_draw_by_draw():
    entries = [{"au_pro_0.05": {"difference": 0.01}}, {"au_pro_0.05": {"difference": 0.03}}]
    draws = [{"au_pro_0.05": np.array([0.0, 0.02, np.nan, 0.04])}, {"au_pro_0.05": np.array([0.02, 0.04, 0.5, 0.06])}]
    result = compare_rows.mean_interval(entries, draws, "au_pro_0.05")
    # mean 0.02; draw means 0.01, 0.03, NaN (left out), 0.05 -> 2.5th / 97.5th percentiles of [0.01, 0.03, 0.05]
    assert result["difference"] == pytest.approx(0.02)
    assert result["resamples"] == 3
    assert (result["low"], result["high"]) == pytest.approx(tuple(np.percentile([0.01, 0.03, 0.05], [2.5, 97.5])))


def test_save_replaces_the_same_comparison_and_keeps_others(tmp_path):
    output = tmp_path / "paired.json"
    compare_rows.save(_comparison(), output)
    compare_rows.save(_comparison(("tire_ad2@224",)), output)
    replaced = _comparison()
    replaced["commit"] = "def5678"
    report = compare_rows.save(replaced, output)
    assert [c["commit"] for c in report["comparisons"]] == ["abc1234", "def5678"]
    assert [[e["case"] for e in c["cases"]] for c in report["comparisons"]] == [["tire_ad2@224"],
                                                                                ["tire_ad2@448", "magtile_ad2@448"]]
    assert json.loads(output.read_text()) == report


def test_paired_rows_table():
    lines = render_tables.paired_rows({"comparisons": [_comparison()]}).splitlines()
    assert lines[0].startswith('`python benchmarks/compare_rows.py --first="v1.1 (default)" --second="v1.1 --EPOCHS=0" '
                               'tire_ad2@448 magtile_ad2@448` (commit abc1234')
    assert "| tire_ad2@448 | 112 | 0.7800 | 0.7760 | +0.0040 [-0.0030, +0.0112] | 0.7400 | 0.7320 | " \
           "+0.0080 [-0.0200, +0.0310] |" in lines
    assert lines[-1] == "| mean | | | | +0.0040 [-0.0010, +0.0090] | | | +0.0080 [-0.0100, +0.0250] |"


def test_each_paired_table_shows_the_comparisons_against_its_own_second_row():
    training, saturation = _comparison(), _comparison() | {"second": "v1.1 --DISCOUNT_SATURATED=false"}
    report = {"comparisons": [training, saturation]}
    both = render_tables.paired_rows(report)
    assert '--second="v1.1 --EPOCHS=0"' in both and '--second="v1.1 --DISCOUNT_SATURATED=false"' in both
    only = render_tables.paired_rows(report, second_row="v1.1 --DISCOUNT_SATURATED=false")
    assert '--second="v1.1 --EPOCHS=0"' not in only and '--second="v1.1 --DISCOUNT_SATURATED=false"' in only
    assert render_tables.paired_rows(report, second_row="v1.1 --KNN_SHRINKAGE=1").startswith(
        "No comparison against 'v1.1 --KNN_SHRINKAGE=1' in `benchmarks/paired_rows.json` yet")
    assert set(render_tables.PAIRED_TABLES.values()) <= set(compare_rows.run_quality.ROWS)
