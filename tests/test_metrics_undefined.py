"""Every undefined case: NaN with an UndefinedMetricWarning that gives the reason; never a crash."""

import math
import warnings

import numpy as np
import pytest

from anomalyvfm.metrics import (UndefinedMetricWarning, au_pro, au_pro_multi, class_f1, f1_max, image_ap, image_auroc,
                                mean_plus_k_std, pro_curve, seg_f1)

GOOD_MAP, GOOD_MASK = np.array([[0.1, 0.2], [0.3, 0.4]]), np.zeros((2, 2))
BAD_MAP, BAD_MASK = np.array([[0.9, 0.1], [0.5, 0.2]]), np.array([[1, 0], [0, 0]])


@pytest.mark.parametrize("num_bins", [None, 100])
@pytest.mark.parametrize("maps, masks, reason", [
    ([], [], "no test images"),
    ([GOOD_MAP, GOOD_MAP], [GOOD_MASK, None], "no defect regions"),
    ([BAD_MAP], [np.ones((2, 2))], "no defect-free pixels"),
    ([np.full((2, 2), 0.5), np.full((3, 2), 0.5)], [BAD_MASK, np.zeros((3, 2))], "all anomaly scores are equal"),
])
def test_au_pro(maps, masks, reason, num_bins):
    with pytest.warns(UndefinedMetricWarning, match=f"AU-PRO is undefined: {reason}"):
        assert math.isnan(au_pro(maps, masks, num_bins=num_bins))
    with pytest.warns(UndefinedMetricWarning, match=reason):
        result = au_pro_multi(maps, masks, (0.05, 0.3), num_bins=num_bins)
    assert list(result) == [0.05, 0.3] and all(math.isnan(v) for v in result.values())


@pytest.mark.parametrize("num_bins", [None, 100])
def test_pro_curve(num_bins):
    with pytest.warns(UndefinedMetricWarning, match="PRO curve is undefined: no defect regions"):
        fpr, pro = pro_curve([GOOD_MAP], [GOOD_MASK], num_bins=num_bins)
    assert fpr.size == pro.size == 0
    # All-equal scores: the curve itself is defined (one threshold), only its area is not used.
    fpr, pro = pro_curve([np.full((2, 2), 0.5)], [BAD_MASK], num_bins=num_bins)
    np.testing.assert_allclose(np.column_stack([fpr, pro]), [[0, 0], [1, 1]])


def test_image_metrics():
    for scores, labels, reason in [([], [], "no test images"), ([0.1, 0.2], [0, 0], "no defective images")]:
        for metric in (image_auroc, image_ap, lambda s, y: class_f1(s, y, 0.5)):
            with pytest.warns(UndefinedMetricWarning, match=reason):
                assert math.isnan(metric(scores, labels))
        with pytest.warns(UndefinedMetricWarning, match=reason):
            assert all(math.isnan(v) for v in f1_max(scores, labels))
    with pytest.warns(UndefinedMetricWarning, match="image AUROC is undefined: no good images"):
        assert math.isnan(image_auroc([0.1, 0.2], [1, 1]))
    with pytest.warns(UndefinedMetricWarning, match="ClassF1 is undefined: the threshold is NaN"):
        assert math.isnan(class_f1([0.1, 0.2], [0, 1], float("nan")))
    # Without good images precision is 1 at every threshold: AP and F1 are defined, not made up.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert image_ap([0.1, 0.2], [1, 1]) == 1.0
        assert f1_max([0.1, 0.2], [1, 1]) == (1.0, 0.1)


def test_seg_f1_and_thresholds():
    for maps, masks, threshold, reason in [([], [], 0.5, "no test images"),
                                           ([GOOD_MAP], [None], 0.5, "no defect pixels"),
                                           ([BAD_MAP], [BAD_MASK], float("nan"), "the threshold is NaN")]:
        with pytest.warns(UndefinedMetricWarning, match=f"SegF1 is undefined: {reason}"):
            assert math.isnan(seg_f1(maps, masks, threshold))
    with pytest.warns(UndefinedMetricWarning, match="no values"):
        assert math.isnan(mean_plus_k_std([]))


def test_defined_metrics_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert au_pro([GOOD_MAP, BAD_MAP], [None, BAD_MASK], num_bins=100) == 1.0
        assert seg_f1([GOOD_MAP, BAD_MAP], [None, BAD_MASK], 0.9) == 1.0
        assert image_auroc([0.1, 0.9], [0, 1]) == 1.0
