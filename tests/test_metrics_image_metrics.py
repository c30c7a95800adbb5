"""Image AUROC, AP, F1-max and ClassF1 against hand-computed values."""

import numpy as np
import pytest

from anomalyvfm.metrics import class_f1, f1_max, image_ap, image_auroc

# Two good images (0.1, 0.4) and two defective ones (0.35, 0.8).
SCORES = np.array([0.1, 0.4, 0.35, 0.8])
LABELS = np.array([0, 0, 1, 1])


def test_auroc_counts_correctly_ordered_pairs():
    # (bad, good) pairs: (.35, .1) yes, (.35, .4) no, (.8, .1) yes, (.8, .4) yes -> 3/4.
    assert image_auroc(SCORES, LABELS) == pytest.approx(0.75)
    assert image_auroc(list(SCORES), [False, False, True, True]) == pytest.approx(0.75)


def test_average_precision_is_the_stepwise_sum():
    # Descending: .8 (R 1/2, P 1), .4 (R 1/2, P 1/2), .35 (R 1, P 2/3): 1/2 * 1 + 1/2 * 2/3 = 5/6.
    assert image_ap(SCORES, LABELS) == pytest.approx(5 / 6)


def test_f1_max_and_its_threshold():
    # >= .8: TP1 FP0 FN1 -> 2/3; >= .4: TP1 FP1 FN1 -> 1/2; >= .35: TP2 FP1 FN0 -> 4/5; >= .1: TP2 FP2 -> 2/3.
    f1, threshold = f1_max(SCORES, LABELS)
    assert f1 == pytest.approx(0.8)
    assert threshold == pytest.approx(0.35)
    # The returned threshold reproduces the F1 under the package's ">=" rule.
    assert class_f1(SCORES, LABELS, threshold) == pytest.approx(0.8)


def test_class_f1_predicts_defective_at_equal_score():
    # Threshold 0.4, ">=": predicted bad .4 .35? no: .4 and .8 -> TP1 FP1 FN1 -> 2/4 = 1/2.
    assert class_f1(SCORES, LABELS, 0.4) == pytest.approx(0.5)
    # Ties at the threshold: scores [.1 .4 .4 .8], labels [0 0 1 1] at 0.4 -> TP2 FP1 FN0 -> 4/5
    # (">" would give TP1 FP0 FN1 -> 2/3).
    assert class_f1([0.1, 0.4, 0.4, 0.8], LABELS, 0.4) == pytest.approx(0.8)
    assert class_f1(SCORES, LABELS, 10.0) == 0.0  # nothing predicted: TP 0 -> 0 / (0 + 0 + 2)


def test_invalid_input_raises():
    with pytest.raises(ValueError, match="scores=4, labels=3"):
        image_auroc(SCORES, LABELS[:3])
    with pytest.raises(ValueError, match="image score 2 is nan"):
        image_auroc([0.1, 0.2, np.nan], [0, 1, 1])
    with pytest.raises(ValueError, match="labels must be 0"):
        image_ap(SCORES, [0, 1, 2, 1])
