"""Metrics per lighting group on a constructed test set."""

import numpy as np
import pytest

from anomalyvfm.metrics import SAME_SCENES, UndefinedMetricWarning, by_lighting

LIGHTINGS = ["regular", "regular", "overexposed", "overexposed", "shift_1", "shift_3", "shift_2", "mixed"]
LABELS = [0, 1, 0, 1, 0, 1, 1, 0]
SCORES = [0.2, 0.9, 0.8, 0.3, 0.1, 0.5, 0.4, 0.7]
CORNER, OTHER_CORNER = np.array([[1, 0], [0, 0]]), np.array([[0, 0], [0, 1]])
MAPS = [
    np.array([[0.1, 0.2], [0.3, 0.4]]), np.array([[0.9, 0.1], [0.1, 0.1]]),  # regular: perfect
    np.full((2, 2), 0.9), np.array([[0.1, 0.5], [0.5, 0.5]]),  # overexposed: inverted
    np.full((2, 2), 0.5), np.array([[0.6, 0.2], [0.2, 0.2]]), np.array([[0.1, 0.1], [0.1, 0.5]]),  # shift
    np.full((2, 2), 0.3),  # mixed: a good image only
]
MASKS = [None, CORNER, None, CORNER, None, CORNER, OTHER_CORNER, None]


@pytest.mark.parametrize("num_bins", [None, 1000])
def test_groups_pool_shifts_and_use_only_their_own_images(num_bins):
    # shift: 10 defect-free pixels (4 x .5, 3 x .2, 3 x .1), regions {.6} and {.5} (1 px each).
    # .6 -> (0, 1/2); .5 -> (4/10, 1); PRO(0.05) = 1/2 + 0.05 / 0.4 * 1/2 = 0.5625;
    # area = 0.05 * (0.5 + 0.5625) / 2, / 0.05 = 0.53125. Image AUROC: bad .5 .4 > good .1 -> 1.
    with pytest.warns(UndefinedMetricWarning, match="lighting group 'mixed'") as caught:
        result = by_lighting(LIGHTINGS, LABELS, SCORES, MAPS, MASKS, num_bins=num_bins)
    assert sorted(str(w.message).split(":")[1] for w in caught) == [" AU-PRO is undefined", " image AUROC is undefined"]
    assert list(result) == ["regular", "overexposed", "shift", "mixed"]
    assert result["regular"] == {"image_auroc": 1.0, "au_pro_0.05": 1.0, "n_good": 1, "n_bad": 1}
    assert result["overexposed"] == {"image_auroc": 0.0, "au_pro_0.05": 0.0, "n_good": 1, "n_bad": 1}
    assert result["shift"] == pytest.approx({"image_auroc": 1.0, "au_pro_0.05": 0.53125, "n_good": 1, "n_bad": 2})
    mixed = result["mixed"]
    assert np.isnan(mixed["image_auroc"]) and np.isnan(mixed["au_pro_0.05"])
    assert (mixed["n_good"], mixed["n_bad"]) == (1, 0)


def test_key_follows_the_limit_and_lengths_are_checked():
    result = by_lighting(LIGHTINGS[:2], LABELS[:2], SCORES[:2], MAPS[:2], MASKS[:2], fpr_limit=0.3)
    assert result == {"regular": {"image_auroc": 1.0, "au_pro_0.3": 1.0, "n_good": 1, "n_bad": 1}}
    with pytest.raises(ValueError, match="lightings=8, labels=7"):
        by_lighting(LIGHTINGS, LABELS[:7], SCORES, MAPS, MASKS)


def test_seg_f1_per_group_at_the_given_threshold():
    # At 0.5: regular TP 1 of 1 predicted, 1 defect -> 1; overexposed 7 predicted, none a defect -> 0;
    # shift predicted 4 (good, all .5) + 1 + 1, TP 2, defect 2 -> 2*2 / (6 + 2) = 0.5; mixed: no defect -> NaN.
    with pytest.warns(UndefinedMetricWarning, match="lighting group 'mixed': SegF1 is undefined"):
        result = by_lighting(LIGHTINGS, LABELS, SCORES, MAPS, MASKS, threshold=0.5)
    assert {group: values["seg_f1"] for group, values in result.items() if group != "mixed"} == {
        "regular": 1.0, "overexposed": 0.0, "shift": 0.5}
    assert np.isnan(result["mixed"]["seg_f1"])


def test_only_shift_underscore_names_pool_into_shift():
    # dataset_ad2.lighting_group is the one rule: "shifted" is not one of AD 2's shift_1..shift_4.
    with pytest.warns(UndefinedMetricWarning, match="lighting group 'shifted'"):  # one bad image only
        result = by_lighting(["shift_4", "shifted", "shift_1"], [0, 1, 1], [0.1, 0.9, 0.8], MAPS[:3],
                             [None, CORNER, None])
    assert list(result) == ["shift", "shifted"]
    assert (result["shift"]["n_good"], result["shift"]["n_bad"]) == (1, 1)


def test_each_group_is_paired_with_the_regular_images_of_its_own_scenes():
    # Regular light shows scenes a (good), b (bad, found) and c (bad, missed); the overexposed
    # group re-lights a and b only, so it is compared with regular a and b, not with c.
    lightings = ["regular", "regular", "regular", "overexposed", "overexposed", "mixed"]
    scenes = ["good/a", "bad/b", "bad/c", "good/a", "bad/b", "other/m"]
    labels, scores = [0, 1, 1, 0, 1, 0], [0.2, 0.9, 0.1, 0.3, 0.8, 0.5]
    maps = [np.array([[0.1, 0.2], [0.3, 0.4]]), np.array([[0.9, 0.1], [0.1, 0.1]]),
            np.array([[0.1, 0.1], [0.1, 0.9]]), np.array([[0.2, 0.3], [0.4, 0.5]]),
            np.array([[0.9, 0.2], [0.2, 0.2]]), np.full((2, 2), 0.3)]
    masks = [None, CORNER, CORNER, None, CORNER, None]
    with pytest.warns(UndefinedMetricWarning, match="lighting group 'mixed'"):
        result = by_lighting(lightings, labels, scores, maps, masks, threshold=0.5, scenes=scenes)
    # The whole regular group: image AUROC of bad {.9, .1} against good {.2} is 1/2.
    assert result["regular"]["image_auroc"] == 0.5 and result["regular"]["au_pro_0.05"] < 1
    assert not any(key.startswith(SAME_SCENES) for key in result["regular"])
    same = {key[len(SAME_SCENES):]: value for key, value in result["overexposed"].items() if key.startswith(SAME_SCENES)}
    # Regular a and b: b's defect pixel (.9) is above every defect-free pixel, and b above a.
    assert same == {"image_auroc": 1.0, "au_pro_0.05": 1.0, "n_good": 1, "n_bad": 1, "seg_f1": 1.0}
    reference = by_lighting(lightings[:2], labels[:2], scores[:2], maps[:2], masks[:2], threshold=0.5)["regular"]
    assert same == reference  # the same computation on those images alone
    assert not any(key.startswith(SAME_SCENES) for key in result["mixed"])  # no regular image of its scene
    # A group showing every regular scene is compared with the whole regular group.
    whole = by_lighting(lightings[:3] + ["shift_1"] * 3, labels[:3] * 2, scores[:3] * 2, maps[:3] * 2, masks[:3] * 2,
                        scenes=scenes[:3] * 2)
    paired = {key[len(SAME_SCENES):]: value for key, value in whole["shift"].items() if key.startswith(SAME_SCENES)}
    assert paired == whole["regular"]
    with pytest.raises(ValueError, match="scenes=2"):
        by_lighting(lightings, labels, scores, maps, masks, scenes=scenes[:2])
