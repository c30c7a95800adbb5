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


def test_seeds_are_parsed_strictly(capsys):
    assert compare_rows.run_quality.parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("", "a", "-1", "1.5", "0,0"):
        with pytest.raises(ValueError):
            compare_rows.run_quality.parse_seeds(bad)
    assert compare_rows.main(["tire_ad2@448", "--seeds=0,x"]) == 2
    assert "--seeds expects comma-separated non-negative integers" in capsys.readouterr().err


def test_seed_average_averages_differences_and_draws_draw_by_draw():
    per_seed = [{"au_pro_0.05": 0.01}, {"au_pro_0.05": 0.03}]
    draws = [{"au_pro_0.05": np.array([0.0, 0.02, np.nan])}, {"au_pro_0.05": np.array([0.04, 0.0, 0.1])}]
    difference, averaged = compare_rows.seed_average(per_seed, draws, "au_pro_0.05")
    assert difference == pytest.approx(0.02)
    np.testing.assert_allclose(averaged, [0.02, 0.01, np.nan])
    undefined = [{"au_pro_0.05": np.array([0.0, 0.02, 0.01])}, {"au_pro_0.05": np.empty(0)}]
    difference, averaged = compare_rows.seed_average([{"au_pro_0.05": 0.01}, {"au_pro_0.05": float("nan")}],
                                                     undefined, "au_pro_0.05")
    assert np.isnan(difference) and averaged.size == 0


class _Sample:
    def __init__(self, name: str, label: int):
        self.relative_path, self.label = f"test_public/{'bad' if label else 'good'}/{name}", label


def _fake_case(monkeypatch, synthetic_seeds: list):
    """compare_case on four generated test images whose maps and scores depend on the row (EPOCHS) and SEED."""
    samples = [_Sample("000_regular.png", 0), _Sample("001_regular.png", 0), _Sample("002_regular.png", 1),
               _Sample("003_regular.png", 1)]
    masks = [None, None, np.zeros((8, 8), bool), np.zeros((8, 8), bool)]
    masks[2][2:5, 2:5] = True
    masks[3][5:8, 0:3] = True

    class Split:
        pass

    test = Split()
    test.samples = samples
    monkeypatch.setattr(compare_rows.run_quality, "parse_case", lambda case: ("generated", 224))  # no ../shared needed
    monkeypatch.setattr(compare_rows.run_quality, "case_tokens", lambda *a: {"test_public": test, "train": None})
    monkeypatch.setattr(compare_rows.run_quality, "ground_truth_masks", lambda split: masks)
    monkeypatch.setattr(compare_rows.run_quality, "synthetic_tokens",
                        lambda extractor, train, size, count, seed: synthetic_seeds.append(seed) or "tokens")

    def outputs(tokens, synthetic, settings):
        rng = np.random.default_rng(1000 * settings.SEED + settings.EPOCHS)
        maps = [rng.random((8, 8)) + (2 * m if m is not None else 0) * rng.random() for m in masks]
        return compare_rows.run_quality.RowOutputs(val_maps=[], test_maps=maps, scores=rng.random(4),
                                                   val_scores=rng.random(2), losses=[], score_seconds=0.0,
                                                   map_seconds=0.0)

    monkeypatch.setattr(compare_rows.run_quality, "row_outputs", outputs)
    return masks, outputs


def test_compare_case_averages_each_seeds_paired_difference(monkeypatch):
    synthetic_seeds = []
    masks, outputs = _fake_case(monkeypatch, synthetic_seeds)
    monkeypatch.setattr(compare_rows, "RESAMPLES", 50)
    entry, draws = compare_rows.compare_case(None, "backbone", "generated@224", "v1.1 (default)", "v1.1 --EPOCHS=0",
                                             seeds=[0, 3])
    assert synthetic_seeds == [0, 3]  # the trained row's synthetic samples follow the seed
    defaults = compare_rows.v11.default_config().replace(IMAGE_SIZE=224)
    labels = np.array([0, 0, 1, 1])
    expected = []
    for seed in (0, 3):
        first = outputs(None, None, defaults.replace(SEED=seed))
        second = outputs(None, None, defaults.replace(SEED=seed, EPOCHS=0))
        expected.append(compare_rows.metrics.au_pro(first.test_maps, masks, 0.05, num_bins=compare_rows.run_quality.PRO_BINS)
                        - compare_rows.metrics.au_pro(second.test_maps, masks, 0.05,
                                                      num_bins=compare_rows.run_quality.PRO_BINS))
        assert entry["per_seed"][len(expected) - 1]["image_auroc"] == pytest.approx(
            compare_rows.metrics.image_auroc(first.scores, labels) - compare_rows.metrics.image_auroc(second.scores, labels))
    assert [s["seed"] for s in entry["per_seed"]] == [0, 3]
    assert [s["au_pro_0.05"] for s in entry["per_seed"]] == pytest.approx(expected)
    assert entry["au_pro_0.05"]["difference"] == pytest.approx(np.mean(expected))
    assert entry["first"]["au_pro_0.05"] - entry["second"]["au_pro_0.05"] == pytest.approx(np.mean(expected))
    assert draws["au_pro_0.05"].shape == (50,)
    assert entry["scenes"] == 4 and entry["images"] == 4


def test_one_seed_gives_the_single_run_comparison(monkeypatch):
    _fake_case(monkeypatch, [])
    monkeypatch.setattr(compare_rows, "RESAMPLES", 50)
    one, _ = compare_rows.compare_case(None, "b", "generated@224", "v1.1 (default)", "v1.1 --EPOCHS=0", seeds=[3])
    two, _ = compare_rows.compare_case(None, "b", "generated@224", "v1.1 (default)", "v1.1 --EPOCHS=0", seeds=[3, 3])
    assert one["au_pro_0.05"] == two["au_pro_0.05"]  # the same seed twice averages to itself, draws included
    assert one["per_seed"][0]["au_pro_0.05"] == one["au_pro_0.05"]["difference"]


def test_a_comparison_over_other_seeds_is_kept_beside_the_single_seed_one(tmp_path):
    output = tmp_path / "paired.json"
    compare_rows.save(_comparison(), output)
    seeded = _comparison() | {"training_seeds": [0, 1, 2]}
    report = compare_rows.save(seeded, output)
    assert [c.get("training_seeds", [0]) for c in report["comparisons"]] == [[0], [0, 1, 2]]


def test_paired_rows_table_over_seeds_shows_each_seed():
    comparison = _comparison() | {"training_seeds": [0, 1]}
    for entry, seeds in zip(comparison["cases"], ([0.002, 0.006], [0.01, -0.002])):
        entry["per_seed"] = [{"seed": i, "au_pro_0.05": d} for i, d in enumerate(seeds)]
    lines = render_tables.paired_rows({"comparisons": [comparison]}).splitlines()
    assert lines[0].startswith('`python benchmarks/compare_rows.py --seeds=0,1 --first="v1.1 (default)"')
    assert "every value the mean over SEED 0, 1" in lines[0]
    assert "| tire_ad2@448 | 112 | 0.7800 | 0.7760 | +0.0040 [-0.0030, +0.0112] | +0.0020 / +0.0060 | 0.7400 |" \
        in "\n".join(lines)
    assert lines[-1] == "| mean | | | | +0.0040 [-0.0010, +0.0090] | +0.0060 / +0.0020 | | | +0.0080 [-0.0100, +0.0250] |"


def test_a_row_that_sets_feature_layers_is_scored_on_its_own_blocks_tokens(monkeypatch):
    synthetic_seeds = []
    _fake_case(monkeypatch, synthetic_seeds)
    monkeypatch.setattr(compare_rows, "RESAMPLES", 20)
    fetched, scored = [], []
    own = {}

    def case_tokens(extractor, backbone, dataset, size, phases, layers):
        fetched.append(tuple(layers))
        return own.setdefault(tuple(layers), {"test_public": test_split, "train": tuple(layers)})

    test_split = compare_rows.run_quality.case_tokens()["test_public"]  # the fake's generated test split
    real_outputs = compare_rows.run_quality.row_outputs
    monkeypatch.setattr(compare_rows.run_quality, "case_tokens", case_tokens)
    monkeypatch.setattr(compare_rows.run_quality, "row_outputs",
                        lambda tokens, synthetic, settings: scored.append(tokens["train"]) or real_outputs(
                            tokens, synthetic, settings))
    compare_rows.compare_case(None, "b", "generated@224", "v1.1 (default)", "v1.1 --FEATURE_LAYERS=5,6,7,8,9",
                              seeds=[0])
    default = tuple(compare_rows.v11.default_config().FEATURE_LAYERS)
    assert fetched == [default, (5, 6, 7, 8, 9)]
    assert scored == [default, (5, 6, 7, 8, 9)]
    assert synthetic_seeds == [0, 0]  # each set of blocks encodes its own synthetic samples
