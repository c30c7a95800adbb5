"""The probes' shared case parsing (benchmarks/run_quality.parse_case), the quality benchmark's pooled image
AUROC gap, the pooling probe's grid, the blur
probe's per-lighting AU-PRO and the image score probe's variants."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from run_quality import parse_case, pooled_auroc_gap  # noqa: E402
from image_score_probe import VARIANTS, top_percent_mean  # noqa: E402
from scale_probe import au_pro_by_group, pooled_grid  # noqa: E402
from anomalyvfm import metrics  # noqa: E402
from dataset_ad2 import lighting_group  # noqa: E402


def test_parse_case_reads_dataset_and_size_and_names_the_valid_datasets(make_ad2_category):
    root = make_ad2_category("widget").parent  # <tmp>/data/widget: the dataset "data"
    assert parse_case("data@448", root) == ("data", 448)
    assert parse_case("data+lighting@224", root) == ("data+lighting", 224)
    for bad in ("tyre@448", "data", "data@big"):
        with pytest.raises(ValueError, match=r"DATASET@SIZE with DATASET one of \['data'\]"):
            parse_case(bad, root)


def test_pooled_grid_is_the_three_by_three_mean_with_replicated_edges():
    grid = torch.arange(9, dtype=torch.float32).reshape(3, 3, 1)  # value 3 r + c
    assert torch.equal(pooled_grid(grid, 0.0), grid)
    full = pooled_grid(grid, 1.0)[..., 0]
    # Corner (0, 0): rows (0, 0, 1) x columns (0, 0, 1) after replication -> (9 + 3) / 9.
    assert full[0, 0].item() == pytest.approx(12 / 9)
    assert full[1, 1].item() == pytest.approx(4.0)  # the centre sees the whole grid
    assert pooled_grid(grid, 0.5)[0, 0, 0].item() == pytest.approx(0.5 * 12 / 9)
    assert pooled_grid(grid.half(), 1.0).dtype == torch.float16


def test_image_score_variants_on_a_hand_computed_grid():
    grid = torch.arange(200, dtype=torch.float32).view(10, 20)  # median (lower middle) 99
    assert top_percent_mean(grid) == (199 + 198) / 2  # 1 % of 200 values: the top two
    assert top_percent_mean(grid[:1, :5]) == 4.0  # never fewer than one value
    # top k - median: the mean of 199 .. 200-k is 199 - (k-1)/2
    top_k = [199.0 - (k - 1) / 2 - 99 for k in (1, 2, 3, 4, 5, 6, 8)]
    assert [VARIANTS[name](grid) for name in VARIANTS] == [198.5, 198.5 - 99, 199.0, *top_k]
    assert [lighting_group(name) for name in ("regular", "shift_3", "underexposed")] == ["regular", "shift", "underexposed"]


def test_blur_probe_reports_au_pro_per_lighting_group_with_the_shifts_as_one():
    rng = np.random.default_rng(0)
    masks = [None, np.zeros((8, 8), bool), None, np.zeros((8, 8), bool), np.zeros((8, 8), bool)]
    for mask in masks[1::2] + masks[4:]:
        mask[2:5, 3:6] = True
    maps = [rng.random((8, 8)).astype(np.float32) for _ in masks]
    maps[1][2:5, 3:6] += 1.0  # the regular defect is found, the others are noise
    lightings = ["regular", "regular", "shift_1", "shift_3", "overexposed"]
    assert au_pro_by_group(maps[:2], masks[:2], lightings[:2]) == ""
    expected = {name: metrics.au_pro([maps[i] for i in chosen], [masks[i] for i in chosen], 0.05, num_bins=20_000)
                for name, chosen in (("regular", [0, 1]), ("overexposed", [4]), ("shift", [2, 3]))}
    assert au_pro_by_group(maps, masks, lightings) == (
        f" | regular {expected['regular']:.4f} overexposed {expected['overexposed']:.4f} shift {expected['shift']:.4f}")
    assert expected["regular"] == pytest.approx(1.0)


def test_pooled_auroc_gap_is_all_images_minus_regular_and_absent_without_other_lights():
    # Regular: good 0.1, bad 0.9 -> AUROC 1. Overexposed twins: good 0.8, bad 0.3 -> all six images:
    # bad (0.9, 0.3) against good (0.1, 0.8): 0.9 beats both, 0.3 beats 0.1 -> 3 of 4 = 0.75.
    scores, labels = np.array([0.1, 0.9, 0.8, 0.3]), np.array([0, 1, 0, 1])
    lightings, scenes = ["regular", "regular", "overexposed", "overexposed"], ["000", "001", "000", "001"]
    gap = pooled_auroc_gap(scores, labels, lightings, scenes)["image_auroc_gap"]
    assert gap["difference"] == pytest.approx(0.75 - 1.0)
    assert gap["low"] <= gap["difference"] <= gap["high"]
    assert pooled_auroc_gap(scores[:2], labels[:2], lightings[:2], scenes[:2]) == {}  # regular light only
