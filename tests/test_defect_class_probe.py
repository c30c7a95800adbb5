"""The defect class probe (benchmarks/defect_class_probe.py): manifests read, per-class figures by hand, and the
test-optimal SegF1 against a brute-force search."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import defect_class_probe  # noqa: E402
from defect_class_probe import class_rows, defect_classes, optimal_seg_f1, product_cuts, scene_of  # noqa: E402
from anomalyvfm.model import PEAK_FLOOR, mask_threshold  # noqa: E402


def test_manifests_of_both_shared_layouts_map_each_defective_scene_to_its_class(tmp_path):
    magtile = tmp_path / "magtile.manifest.csv"
    magtile.write_text("split,file,source,defect_class\n"
                       "train,magtile/train/good/000_regular.png,a.jpg,good\n"
                       "test_bad,magtile/test_public/bad/007_regular.png,b.jpg,uneven\n"
                       "test_good,magtile/test_public/good/008_regular.png,c.jpg,good\n")
    tire = tmp_path / "tire.manifest.csv"
    tire.write_text("split,file,source,defect\nbad,tire/test_public/bad/003_regular.jpg,x.png,cut\n")
    assert defect_classes(magtile) == {"007": "uneven"}
    assert defect_classes(tire) == {"003": "cut"}
    assert scene_of("bad/012_shift_3.png") == "012"  # every lighting of a scene has its class


def test_a_manifest_without_a_defect_column_is_named_in_the_error(tmp_path):
    manifest = tmp_path / "m.manifest.csv"
    manifest.write_text("split,file\nbad,x/test_public/bad/000_regular.png\n")
    with pytest.raises(ValueError, match=r"m\.manifest\.csv.*'defect\.\.\.' column"):
        defect_classes(manifest)


def test_class_rows_by_hand(monkeypatch):
    monkeypatch.setattr(defect_class_probe, "CORE_MARGIN", 1)
    big_map = np.full((7, 7), 0.1)
    big_mask = np.zeros((7, 7), np.uint8)
    big_mask[1:6, 1:6] = 255                # 25 defect pixels
    big_map[1:6, 1:6] = 0.2                 # their ring (16 pixels) faint ...
    big_map[2:5, 2:5] = 1.0                 # ... their core (9 pixels) strong
    small_map = np.zeros((7, 7))
    small_mask = np.zeros((7, 7), np.uint8)
    small_mask[3, 3] = 255                  # 1 defect pixel, no core
    small_map[3, 3] = 0.9
    good_map = np.full((7, 7), 5.0)         # a good image: no mask, counts for no class
    rows = class_rows([big_map, small_map, good_map], [big_mask, small_mask, None], [0.5, 0.5, 0.5],
                      ["big", "small", "good"])
    big, small = rows
    assert [r.name for r in rows] == ["big", "small"]
    assert (big.images, small.images) == (1, 1)
    assert big.pixel_share == pytest.approx(25 / 26) and small.pixel_share == pytest.approx(1 / 26)
    assert big.recall == pytest.approx(9 / 25) and small.recall == pytest.approx(1.0)
    assert big.inside == pytest.approx((9 * 1.0 + 16 * 0.2) / 25) and big.core == pytest.approx(1.0)
    assert big.outside == pytest.approx(0.1) and small.outside == pytest.approx(0.0)
    assert np.isnan(small.core)
    assert big.ceiling == pytest.approx(2 * 1 / (2 * 1 + 25))     # only the small defect's pixel left to find
    assert small.ceiling == pytest.approx(2 * 25 / (2 * 25 + 1))


def test_product_cuts_are_the_validation_quantile_raised_to_each_maps_floor():
    validation = [np.arange(1000, dtype=float).reshape(10, 100) / 1000]   # pixels 0.000 ... 0.999
    faint = np.zeros((4, 4))
    faint[0, 0] = 0.5                                                     # floor PEAK_FLOOR * 0.5 < threshold
    strong = np.zeros((4, 4))
    strong[0, 0] = 100.0                                                  # floor PEAK_FLOOR * 100 > threshold
    threshold, floors, cuts = product_cuts(validation, [faint, strong])
    assert threshold == pytest.approx(0.999 * 0.999)                     # numpy's linear quantile of 0 ... 0.999
    assert floors == pytest.approx([PEAK_FLOOR * 0.5, PEAK_FLOOR * 100.0])
    assert cuts == pytest.approx([threshold, PEAK_FLOOR * 100.0])
    assert cuts == pytest.approx([mask_threshold(m, threshold) for m in (faint, strong)])  # as the product cuts


def _brute_force_f1(maps, masks, floors, thresholds):
    best = 0.0
    for t in thresholds:
        tp = fp = fn = 0
        for amap, mask, floor in zip(maps, masks, floors):
            found = amap >= max(t, floor)
            truth = np.zeros(amap.shape, bool) if mask is None else mask > 0
            tp += int((found & truth).sum())
            fp += int((found & ~truth).sum())
            fn += int((~found & truth).sum())
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def test_optimal_seg_f1_equals_a_brute_force_search_over_the_same_range(monkeypatch):
    monkeypatch.setattr(defect_class_probe, "OPTIMAL_STEPS", 4000)  # denser than the 300 values: every gap is tried
    rng = np.random.default_rng(0)
    maps = [rng.normal(size=(10, 10)) for _ in range(3)]
    masks = [np.zeros((10, 10), np.uint8) for _ in range(2)] + [None]
    masks[0][2:4, 2:5] = 255
    masks[1][7:9, 1:3] = 255
    maps[0][2:4, 2:5] += 2.0
    maps[1][7:9, 1:3] += 1.0
    floors = [-np.inf, 0.5, -np.inf]        # map 1 cut no lower than 0.5
    values = np.concatenate([np.where(m >= f, m, -np.inf).ravel() for m, f in zip(maps, floors)])
    values = np.sort(values[np.isfinite(values)])
    upper = values[values >= np.quantile(values, 0.5)]
    expected = _brute_force_f1(maps, masks, floors, upper)
    assert 0 < expected < 1
    assert optimal_seg_f1(maps, masks, floors) == pytest.approx(expected)


def test_optimal_seg_f1_never_finds_a_defect_pixel_below_its_maps_floor():
    amap = np.array([[0.0, 0.0, 0.0, 3.0], [0.0, 0.0, 0.0, 1.0]])
    mask = np.array([[0, 0, 0, 255], [0, 0, 0, 255]], np.uint8)
    assert optimal_seg_f1([amap], [mask], [-np.inf]) == pytest.approx(1.0)
    assert optimal_seg_f1([amap], [mask], [2.0]) == pytest.approx(2 * 1 / (2 * 1 + 1))  # the 1.0 pixel is lost


def test_no_case_or_a_bad_case_is_refused_before_the_backbone_loads(capsys):
    assert defect_class_probe.main([]) == 2
    assert "usage" in capsys.readouterr().err
    assert defect_class_probe.main(["magtile_ad2@500"]) == 2  # 500 is not a multiple of 14
    assert "error" in capsys.readouterr().err
