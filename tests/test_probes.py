"""The probes' shared case parsing (benchmarks/run_quality.parse_case), the quality benchmark's pooled image
AUROC gap, the pooling probe's grid, the blur probe's per-lighting AU-PRO, the image score probe's variants,
the discriminator probe's training and the layer probe's rows."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from run_quality import parse_case, pooled_auroc_gap  # noqa: E402
from image_score_probe import VARIANTS, gap_table, variant_aurocs, top_percent_mean  # noqa: E402
import scale_probe  # noqa: E402
import discriminator_probe  # noqa: E402
import layer_probe  # noqa: E402
import run_quality  # noqa: E402
import token_cache  # noqa: E402
from scale_probe import (au_pro_by_group, defect_offset_share, joined, mirrored_copy, pooled_grid,  # noqa: E402
                         position_offsets, split_half_r)
import dataset_ad2  # noqa: E402
from PIL import Image  # noqa: E402
from token_cache import SplitTokens  # noqa: E402
from anomalyvfm import metrics  # noqa: E402
from dataset_ad2 import lighting_group  # noqa: E402


def test_parse_case_reads_dataset_and_size_and_names_the_valid_datasets(make_ad2_category):
    root = make_ad2_category("widget").parent  # <tmp>/data/widget: the dataset "data"
    assert parse_case("data@448", root) == ("data", 448)
    assert parse_case("data+lighting@224", root) == ("data+lighting", 224)
    for bad in ("tyre@448", "data", "data@big"):
        with pytest.raises(ValueError, match=r"DATASET@SIZE with DATASET one of \['data'\]"):
            parse_case(bad, root)
    with pytest.raises(ValueError, match="not a positive multiple of 14"):
        parse_case("data@500", root)


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


def test_image_score_probe_aurocs_per_group_and_the_gap_averaged_over_seeds():
    # Four images: a good and a defective one in regular light, the same re-lit; each grid constant but one peak.
    def grid(peak: float) -> torch.Tensor:
        g = torch.zeros(4, 4)
        g[1, 2] = peak
        return g

    labels, groups = np.array([0, 1, 0, 1]), np.array(["regular", "regular", "shift", "shift"])
    found = variant_aurocs([[grid(1.0), grid(3.0), grid(4.0), grid(2.0)]], labels, groups, ["regular", "shift"])
    # "max": regular 3 > 1 (AUROC 1), shift 2 < 4 (0); pooled pairs (good, bad): (1,3) (1,2) (4,3) (4,2) -> 2 of 4
    assert found["max"] == (0.5, [1.0, 0.0])
    # A second phase whose re-lit images rank the other way: scores averaged per image, (4+0)/2 < (2+6)/2.
    two = variant_aurocs([[grid(1.0), grid(3.0), grid(4.0), grid(2.0)], [grid(1.0), grid(3.0), grid(0.0), grid(6.0)]],
                         labels, groups, ["regular", "shift"])
    assert two["max"] == (1.0, [1.0, 1.0])
    table = gap_table({0: found, 5: {v: (0.75, [0.5, 1.0]) for v in VARIANTS}}, ["regular", "shift"]).splitlines()
    assert table[0] == "| image score | SEED 0 | SEED 5 | mean pooled | mean regular | mean gap |"
    # max: gaps 0.5 - 1 = -0.5 and 0.75 - 0.5 = +0.25; means pooled 0.625, regular 0.75, gap -0.125
    assert "| max | -0.5000 | +0.2500 | 0.6250 | 0.7500 | -0.1250 |" in table


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


def test_mirrored_copy_mirrors_test_images_and_masks_together_and_links_train(make_ad2_category, tmp_path,
                                                                            monkeypatch):
    root = make_ad2_category("widget", test_good=1, test_bad=2)
    source = dataset_ad2.load_category(root, "widget")
    bad = next(s for s in source.test_public if s.label == 1)
    pixels = np.zeros((20, 36, 3), np.uint8)
    pixels[:, :, 0] = np.arange(36, dtype=np.uint8)[None] * 7  # a left-to-right ramp: mirroring shows
    Image.fromarray(pixels).save(bad.path)
    monkeypatch.setattr(scale_probe, "FLIP_DIR", tmp_path / "flip")

    out = mirrored_copy("data", root, "widget")
    copy = dataset_ad2.load_category(out, "widget")
    assert [s.relative_path for s in copy.test_public] == [s.relative_path for s in source.test_public]
    assert [s.path.resolve() for s in copy.train] == [s.path.resolve() for s in source.train]
    mirrored = next(s for s in copy.test_public if s.stem == bad.stem)
    assert np.array_equal(dataset_ad2.load_image(mirrored.path), pixels[:, ::-1])
    original_mask = dataset_ad2.load_mask(bad)
    assert original_mask[:, :18].any() and not original_mask[:, 18:].any()  # the fixture's defect is on the left
    assert np.array_equal(dataset_ad2.load_mask(mirrored), original_mask[:, ::-1])

    Image.fromarray(np.zeros_like(pixels)).save(bad.path)  # made once: a second call reuses the copy
    assert mirrored_copy("data", root, "widget") == out
    assert np.array_equal(dataset_ad2.load_image(mirrored.path), pixels[:, ::-1])


def test_joined_concatenates_every_per_image_field_in_order():
    def split(values: list[float]) -> SplitTokens:
        n = len(values)
        return SplitTokens(samples=[f"s{v}" for v in values], cls=torch.tensor(values)[:, None],
                           patches=[torch.full((1, 1, 1), v) for v in values], channel_mean=torch.zeros(n, 3),
                           channel_std=torch.ones(n, 3), light_fields=torch.zeros(n, 3, 3),
                           original_sizes=[(2, 2)] * n, input_sizes=[(14, 14)] * n,
                           saturated=[torch.zeros(1, 1)] * n)

    both = joined(split([1.0, 2.0]), split([3.0]))
    assert both.samples == ["s1.0", "s2.0", "s3.0"]
    assert both.cls[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert [float(p) for p in both.patches] == [1.0, 2.0, 3.0]
    assert both.light_fields.shape == (3, 3, 3) and len(both.saturated) == 3 and len(both.input_sizes) == 3


def test_position_offsets_average_each_cell_above_its_grid_median_and_resample_other_shapes():
    first = torch.tensor([[0.0, 1.0], [2.0, 9.0]])   # median 1.0: torch takes the lower of the two middle values
    second = torch.tensor([[5.0, 5.0], [5.0, 7.0]])  # median 5.0
    offsets = position_offsets([first, second], (2, 2))
    assert torch.allclose(offsets, torch.tensor([[(-1.0 + 0.0) / 2, (0.0 + 0.0) / 2], [(1.0 + 0.0) / 2, (8.0 + 2.0) / 2]]))
    constant = position_offsets([torch.full((3, 5), 2.0)], (4, 4))  # another shape: resampled, still 0 above median
    assert constant.shape == (4, 4) and torch.equal(constant, torch.zeros(4, 4))


def test_split_half_r_is_one_for_repeatable_offsets_and_minus_one_for_opposite_halves():
    ramp = torch.arange(6.0).reshape(2, 3)
    assert split_half_r([ramp, ramp * 2, ramp, ramp * 2], (2, 3)) == pytest.approx(1.0)
    assert split_half_r([ramp, -ramp], (2, 3)) == pytest.approx(-1.0)


def test_defect_offset_share_divides_the_offsets_on_defect_cells_by_their_excess():
    grid = torch.tensor([[0.0, 0.0], [0.0, 4.0]])  # median 0: the defect cell's excess is 4
    offsets = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    mask = np.zeros((28, 28), dtype=bool)
    mask[14:, 14:] = True                          # exactly the bottom-right cell
    good = torch.full((2, 2), 9.0)                 # a good image (no mask) counts for nothing
    assert defect_offset_share(offsets, [grid, good], [mask, None]) == pytest.approx(1.0 / 4.0)
    grazed = np.zeros((28, 28), dtype=bool)
    grazed[14:16, 14:16] = True                    # 4 of 196 pixels: under DEFECT_TOKEN_FRACTION, not a defect cell
    assert defect_offset_share(offsets, [grid, grid], [mask, grazed]) == pytest.approx(1.0 / 4.0)


def test_discriminator_logits_are_higher_for_the_anomalies_it_was_trained_on(monkeypatch):
    monkeypatch.setattr(discriminator_probe, "STEPS", 200)
    generator = torch.Generator().manual_seed(0)
    normal = torch.randn(4000, 8, generator=generator)
    defects = torch.randn(500, 8, generator=generator) + 2.0
    with_defects = discriminator_probe.train_discriminator(normal, defects, 0.0, seed=0)
    noise_only = discriminator_probe.train_discriminator(normal, defects[:0], 1.0, seed=0)
    held_out_normal = torch.randn(1000, 8, generator=generator)
    held_out_defects = torch.randn(1000, 8, generator=generator) + 2.0
    with torch.inference_mode():
        scores = with_defects(torch.cat([held_out_normal, held_out_defects])).squeeze(1).numpy()
        far = noise_only(held_out_normal * 3).squeeze(1)  # noise negatives: far from the normal cloud is anomalous
        near = noise_only(held_out_normal * 0.3).squeeze(1)
    labels = np.r_[np.zeros(1000), np.ones(1000)]
    assert metrics.image_auroc(scores, labels) > 0.9
    assert far.mean() > near.mean()


def test_layer_sets_parse_and_bad_ones_are_named():
    assert layer_probe.parse_layer_sets("6,8,10;4") == [[6, 8, 10], [4]]
    for bad in ("6,x", "0,2", "6;;8"):
        with pytest.raises(ValueError, match="--layer-sets"):
            layer_probe.parse_layer_sets(bad)


def test_layer_rows_score_each_sets_own_tokens_against_the_first(tmp_path, monkeypatch, make_ad2_category,
                                                                 tiny_backbone):
    monkeypatch.setattr(token_cache, "CACHE_DIR", tmp_path / "cache")
    root = make_ad2_category(train=4, validation=2, test_good=2, test_bad=3, size=(28, 42))
    sets = [[1, 2], [1]]
    token_cache.cache_layer_sets(tiny_backbone, str(root), "widget", "tiny", 28, sets, log=lambda _: None)
    load = lambda layers: token_cache.pipeline_tokens(None, str(root), "widget", "tiny", 28, layers,
                                                      log=lambda _: None)
    reported = []
    rows = layer_probe.layer_rows(load, 28, sets, lambda layers, row: reported.append(layers))
    assert reported == [(1, 2), (1,)] and "difference" not in rows[(1, 2)]
    # Each row is the quality benchmark's untrained one-phase row on that set's tokens.
    settings = layer_probe.v11.default_config().replace(IMAGE_SIZE=28, EPOCHS=0, SCORING_PHASES=1)
    for layers in sets:
        tokens = load(layers)
        expected = run_quality.evaluate_row(tokens, run_quality.ground_truth_masks(tokens["test_public"]), None,
                                            settings.replace(FEATURE_LAYERS=layers))
        assert rows[tuple(layers)]["au_pro_0.05"] == pytest.approx(expected["au_pro_0.05"])
        assert rows[tuple(layers)]["image_auroc"] == pytest.approx(expected["image_auroc"])
    assert rows[(1,)]["difference"]["difference"] == pytest.approx(rows[(1,)]["au_pro_0.05"] - rows[(1, 2)]["au_pro_0.05"])


def test_rows_that_set_feature_layers_are_grouped_apart_for_their_own_tokens():
    groups = run_quality.rows_by_layers(["v1.1 (default)", "v1.1 --FEATURE_LAYERS=5,6,7,8,9", "v1.1 --EPOCHS=0"])
    default = tuple(layer_probe.v11.default_config().FEATURE_LAYERS)
    assert groups == {default: ["v1.1 (default)", "v1.1 --EPOCHS=0"],
                      (5, 6, 7, 8, 9): ["v1.1 --FEATURE_LAYERS=5,6,7,8,9"]}


def test_extractor_for_reuses_an_extractor_of_the_same_blocks(tiny_backbone):
    from anomalyvfm.backbone import FeatureExtractor

    extractor = FeatureExtractor(tiny_backbone, [1, 2])
    assert run_quality.extractor_for(extractor, [1, 2]) is extractor
    assert run_quality.extractor_for(None, [2]) is None
    other = run_quality.extractor_for(extractor, [2])
    assert other.layers == [2] and other.backbone is tiny_backbone


def test_rows_option_reads_row_names_that_hold_commas():
    assert run_quality.parse_rows("v1.1 (default), v1.1 --FEATURE_LAYERS=5,6,7,8,9,v1.1 --EPOCHS=0,") == [
        "v1.1 (default)", "v1.1 --FEATURE_LAYERS=5,6,7,8,9", "v1.1 --EPOCHS=0"]
    assert run_quality.parse_rows("") == []
    with pytest.raises(ValueError, match="unknown row 'v1.1 --FEATURE_LAYERS=5'"):
        run_quality.parse_rows("v1.1 --FEATURE_LAYERS=5,6")
