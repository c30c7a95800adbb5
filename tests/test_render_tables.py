"""The docs' tables of measured numbers are exactly what benchmarks/render_tables.py renders from benchmarks/*.json."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import render_tables  # noqa: E402
from anomalyvfm.metrics import SAME_SCENES  # noqa: E402


@pytest.mark.parametrize("document", render_tables.DOCUMENTS, ids=lambda path: path.name)
def test_committed_tables_equal_the_rendered_ones(document):
    text = document.read_text(encoding="utf-8")
    assert "<!-- table:" in text
    assert render_tables.render(text) == text, "run: python benchmarks/render_tables.py"


def test_render_replaces_only_marked_sections_and_rejects_unknown_tables():
    text = "before\n<!-- table:demo -->\nstale | numbers\n<!-- /table -->\nafter\n"
    rendered = render_tables.render(text)
    assert rendered.startswith("before\n<!-- table:demo -->\n") and rendered.endswith("<!-- /table -->\nafter\n")
    assert "stale" not in rendered and "| tiles |" in rendered
    with pytest.raises(KeyError, match="unknown table"):
        render_tables.render("<!-- table:nope -->\n<!-- /table -->")


def test_quality_json_rows_are_rendered_when_present():
    metrics = {"image_auroc": 0.85, "au_pro_0.05": 0.51, "au_pro_0.30": 0.75, "seg_f1": 0.28, "train_seconds": 4.0,
               "fit_seconds": 12.0, "score_seconds": 3.25}
    same = render_tables.SAME_SCENES_AU_PRO  # each group's own scenes in regular light
    assert same == SAME_SCENES + "au_pro_0.05"  # the key metrics.by_lighting writes, spelled out in render_tables
    by_lighting = {"regular": {"au_pro_0.05": 0.6}, "overexposed": {"au_pro_0.05": 0.55, same: 0.58},
                   "underexposed": {"au_pro_0.05": 0.4, same: 0.43}, "shift": {"au_pro_0.05": 0.5, same: 0.6}}
    report = {"backbone": "../shared/models/x", "feature_layers": [6, 8, 10], "seed": 0, "machine": "2 CPU threads",
              "date": "2026-11-29",
              "results": [{"dataset": "magtile_ad2", "image_size": 224, "row": "v1.1 (default)", "metrics": metrics,
                           "commit": "abc1234"},
                          {"dataset": "magtile_ad2+lighting", "image_size": 224, "row": "v1.1 (default)",
                           "metrics": metrics | {"by_lighting": by_lighting}, "commit": "abc1234"}],
              "mean_rows": [{"lighting": "regular", "image_size": 224, "row": "v1.1 (default)", "datasets": 1} | metrics]}
    lines = render_tables.quality_datasets(report).splitlines()
    assert "| magtile_ad2 | 224 | v1.1 (default) | 0.8500 | 0.5100 | 0.7500 | 0.2800 | 4.0 | 12.0 | 3.2 | abc1234 |" in lines
    assert "| regular | 224 | v1.1 (default) | 1 | 0.8500 | 0.5100 | 0.7500 | 0.2800 |" in lines
    # The stressed copy's lighting groups, the worst group's gap to regular light (0.4 - 0.6), and the worst
    # gap to the same scenes in regular light (shift: 0.5 - 0.6; underexposed's is 0.4 - 0.43).
    # Rows before the pooled image AUROC gap existed show n/a; with it, the difference and its interval.
    assert lines[-1] == ("| magtile_ad2+lighting | 224 | v1.1 (default) | 0.6000 | 0.5500 | 0.4000 | 0.5000 | -0.2000 "
                         "| -0.1000 | n/a |")
    report["results"][1]["metrics"]["image_auroc_gap"] = {"difference": -0.0625, "low": -0.11, "high": -0.0149,
                                                          "resamples": 2000}
    assert render_tables.quality_datasets(report).splitlines()[-1].endswith("| -0.1000 | -0.062 [-0.110, -0.015] |")
    del by_lighting["shift"][same], by_lighting["underexposed"][same], by_lighting["overexposed"][same]
    assert render_tables.quality_datasets(report).splitlines()[-1].endswith("| -0.2000 | n/a | -0.062 [-0.110, -0.015] |")


def test_docs_show_no_absolute_paths_of_the_measuring_machine():
    for document in render_tables.DOCUMENTS:
        assert not re.search(r"(?<![\w.])/work/", document.read_text(encoding="utf-8")), document


def test_readme_quick_start_fits_one_screen():
    lines = (render_tables.REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines.index("## Contents") < 40 and lines.index("## Quick start") < 10
