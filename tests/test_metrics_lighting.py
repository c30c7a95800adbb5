"""Metrics per lighting group on a constructed test set."""

import numpy as np
import pytest

from anomalyvfm.metrics import UndefinedMetricWarning, by_lighting

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
