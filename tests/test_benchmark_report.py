"""run_benchmark.py keeps what an earlier run wrote to its output: rerun cases replaced, the rest kept."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run_benchmark import markdown, merged, settings_conflicts  # noqa: E402


def _run(dataset: str, size: int, seconds: float, measured: str | None = None) -> dict:
    stages = {"backbone": 10.0, "fitting": 1.0, "scoring": 1.0, "training": 1.0}
    metrics = {"image_auroc": 0.9, "au_pro_0.05": 0.5, "au_pro_0.30": 0.7, "seg_f1": 0.3}
    row = {"dataset": f"../shared/datasets/{dataset}", "image_size": size, "ratio": seconds / 10,
           "floor": {"images": 4, "seconds": 10.0, "peak_rss_mib": 100.0},
           "pipeline": {"seconds": seconds, "images": 4, "peak_rss_mib": 200.0, "stages": stages, "metrics": metrics}}
    return row if measured is None else dict(row, measured=measured)


def _report(date: str, runs: list[dict], skipped: list[str], au_pro: dict | None = None) -> dict:
    return {"machine": "CPU x", "backbone": "../shared/models/m", "max_images": 0, "config": [], "date": date,
            "skipped_cases": skipped, "runs": runs, "ad2_scale": [], "quality": [], **({"au_pro": au_pro} if au_pro else {})}


def test_a_rerun_replaces_its_cases_and_keeps_the_others_with_their_dates():
    au_pro = {"rows": [{"case": "(a)", "method": "exact", "seconds": 1.0, "peak_rss_mib": 5.0, "au_pro": 0.5}]}
    earlier = _report("2026-12-01 10:00:00", [_run("magtile_ad2", 224, 30.0, "2026-12-01, abc1234"),
                                              _run("tire_ad2", 224, 20.0), _run("tire_ad2", 448, 40.0)],
                      ["magtile_ad2@448"], au_pro)
    now = _report("2026-12-03 12:00:00", [_run("magtile_ad2", 448, 90.0, "2026-12-03, def5678"),
                                          _run("tire_ad2", 448, 35.0, "2026-12-03, def5678")], [])
    report = merged(earlier, now)
    assert [(Path(r["dataset"]).name, r["image_size"], r["pipeline"]["seconds"], r["measured"]) for r in report["runs"]] == [
        ("magtile_ad2", 224, 30.0, "2026-12-01, abc1234"), ("magtile_ad2", 448, 90.0, "2026-12-03, def5678"),
        ("tire_ad2", 224, 20.0, "2026-12-01 10:00:00"), ("tire_ad2", 448, 35.0, "2026-12-03, def5678")]
    assert report["skipped_cases"] == []  # magtile@448 has a row now
    assert report["au_pro"]["rows"] == au_pro["rows"] and report["au_pro"]["measured"] == "2026-12-01 10:00:00"
    table = markdown(report)
    assert "| 2026-12-01, abc1234 |" in table and "| 2026-12-03, def5678 |" in table
    assert all(row["machine"] == "CPU x" for row in report["runs"][:1])
    assert merged(None, now) is now


def test_cases_skipped_again_stay_listed_until_measured():
    earlier = _report("d1", [_run("tire_ad2", 224, 20.0)], ["magtile_ad2@448"])
    now = _report("d2", [_run("tire_ad2", 448, 35.0)], ["magtile_ad2@224"])
    assert merged(earlier, now)["skipped_cases"] == ["magtile_ad2@224", "magtile_ad2@448"]


def test_rows_measured_another_way_are_not_merged():
    earlier = _report("d1", [], [])
    assert settings_conflicts(earlier, dict(earlier, date="d2")) == []
    assert settings_conflicts(earlier, dict(earlier, config=["EPOCHS=0"], max_images=8)) == ["max_images", "config"]
