"""The scene-clustered bootstrap of an image AUROC difference, against hand-computed values and a slow reference."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomalyvfm.metrics import UndefinedMetricWarning, auroc_difference_interval
from anomalyvfm.metrics.bootstrap import weighted_aurocs


def test_weighted_auroc_by_hand():
    # Good 0.1, 0.4; defective 0.35, 0.8; unweighted 3 of 4 pairs ordered -> 0.75.
    # Weights 1, 2, 1, 1: the good 0.4 counts twice; ordered pair weight (.35,.1) 1 + (.8,.1) 1 + (.8,.4) 2 = 4 of 6.
    # A tie counts one half: good 0.35 (weight 1) against defective 0.35 -> 0.5 / 1.
    scores, labels = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    weights = np.array([[1, 1, 1, 1], [1, 2, 1, 1], [0, 0, 1, 1]], dtype=float)
    assert weighted_aurocs(scores, labels, weights)[:2] == pytest.approx([0.75, 4 / 6])
    assert np.isnan(weighted_aurocs(scores, labels, weights)[2])  # no good image weighted in
    assert weighted_aurocs(np.array([0.35, 0.35]), np.array([0, 1]), np.ones((1, 2)))[0] == pytest.approx(0.5)


def test_weighted_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 6, 40).astype(float)  # many ties
    labels = np.r_[np.zeros(20, int), np.ones(20, int)]
    weights = rng.integers(0, 4, (5, 40)).astype(float)
    expected = [roc_auc_score(labels, scores, sample_weight=w) for w in weights]
    assert weighted_aurocs(scores, labels, weights) == pytest.approx(expected)


def _slow_interval(scores, labels, first, second, clusters, level, resamples, seed):
    """The same bootstrap the plain way: per draw, the drawn scenes' images repeated, two sklearn AUROCs."""
    names = sorted(set(clusters))
    draws = np.random.default_rng(seed).integers(0, len(names), (resamples, len(names)))
    differences = []
    for draw in draws:
        chosen = [i for d in draw for i in range(len(scores)) if clusters[i] == names[d]]
        a, b = [i for i in chosen if first[i]], [i for i in chosen if second[i]]
        if len({labels[i] for i in a}) < 2 or len({labels[i] for i in b}) < 2:
            continue
        differences.append(roc_auc_score(labels[a], scores[a]) - roc_auc_score(labels[b], scores[b]))
    tail = (1 - level) / 2 * 100
    return np.percentile(differences, [tail, 100 - tail]), len(differences)


def test_interval_matches_the_slow_reference():
    rng = np.random.default_rng(0)
    scenes = [f"{s:03d}" for s in range(12) for _ in range(3)]  # 12 scenes, each under 3 lights
    labels = np.array([s % 3 == 0 for s in range(12) for _ in range(3)], dtype=int)
    scores = labels * 0.8 + rng.normal(0, 0.6, 36)
    regular = np.array([i % 3 == 0 for i in range(36)])
    result = auroc_difference_interval(scores, labels, np.ones(36, bool), regular, scenes, resamples=300, seed=4)
    (low, high), kept = _slow_interval(scores, labels, np.ones(36, bool), regular, scenes, 0.95, 300, 4)
    assert result["low"] == pytest.approx(low) and result["high"] == pytest.approx(high)
    assert result["resamples"] == kept
    assert result["difference"] == pytest.approx(roc_auc_score(labels, scores)
                                                  - roc_auc_score(labels[regular], scores[regular]))
    assert result["low"] <= result["difference"] <= result["high"]


def test_identical_subsets_differ_by_exactly_zero():
    scores, labels = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])
    everything = np.ones(4, bool)
    result = auroc_difference_interval(scores, labels, everything, everything, ["a", "b", "c", "d"], resamples=50)
    assert (result["difference"], result["low"], result["high"]) == (0.0, 0.0, 0.0)


def test_scenes_not_images_are_resampled():
    # Two scenes, each a good and a defective image in perfect order: every draw keeps both classes
    # and AUROC 1, so the interval of 'all minus itself' is a point, and the number of draws is kept.
    scores, labels = np.array([0.0, 1.0, 0.0, 1.0]), np.array([0, 1, 0, 1])
    result = auroc_difference_interval(scores, labels, np.ones(4, bool), np.ones(4, bool), ["x", "x", "y", "y"],
                                       resamples=20)
    assert result["resamples"] == 20 and result["low"] == result["high"] == 0.0


def test_undefined_difference_warns_and_bad_arguments_raise():
    scores, labels = np.array([0.1, 0.9]), np.array([0, 1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = auroc_difference_interval(scores, labels, [True, False], [True, True], ["a", "b"])
    assert np.isnan(result["difference"]) and result["resamples"] == 0
    assert any(issubclass(w.category, UndefinedMetricWarning) for w in caught)
    with pytest.raises(ValueError, match="one entry per image"):
        auroc_difference_interval(scores, labels, [True], [True, True], ["a", "b"])
    with pytest.raises(ValueError, match="level"):
        auroc_difference_interval(scores, labels, [True, True], [True, True], ["a", "b"], level=1.5)
