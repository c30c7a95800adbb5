"""The scene-clustered bootstrap of an image AUROC difference, against hand-computed values and a slow reference."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from anomalyvfm.metrics import UndefinedMetricWarning, au_pro, auroc_difference_interval, paired_au_pro_interval, \
    paired_auroc_interval
from anomalyvfm.metrics.bootstrap import _ImageLevels, paired_au_pro_draws, paired_auroc_draws, scene_weights, \
    weighted_aurocs


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


def _scene_data(seed=0, scenes=8, lights=2, size=6):
    """Integer-valued maps (0..9) with square defects, ``lights`` images per scene; half the scenes defective."""
    rng = np.random.default_rng(seed)
    maps, masks, clusters = [], [], []
    for scene in range(scenes):
        mask = np.zeros((size, size), bool)
        if scene % 2:
            top, left = rng.integers(0, size - 2, 2)
            mask[top:top + 2, left:left + 2] = True
        for _ in range(lights):
            values = rng.integers(0, 6, (size, size)).astype(np.float32)
            values[mask] += rng.integers(0, 5, int(mask.sum()))
            maps.append(np.minimum(values, 9))
            masks.append(mask if mask.any() else None)
            clusters.append(f"{scene:03d}")
    maps[0][0, 0], maps[1][0, 1] = 0, 9  # the whole range 0..9 is present
    return maps, masks, clusters


def test_paired_au_pro_difference_is_the_difference_of_au_pros():
    maps, masks, clusters = _scene_data()
    other = [np.where(m > 3, m, 0).astype(np.float32) for m in maps]
    result = paired_au_pro_interval(maps, other, masks, clusters, 0.3, num_bins=1000, resamples=50)
    assert result["difference"] == pytest.approx(au_pro(maps, masks, 0.3, num_bins=1000)
                                                 - au_pro(other, masks, 0.3, num_bins=1000))
    same = paired_au_pro_interval(maps, maps, masks, clusters, 0.3, num_bins=1000, resamples=50)
    assert (same["difference"], same["low"], same["high"]) == (0.0, 0.0, 0.0)


class _CountedReads(list):
    """A list of maps that counts how often the metric code walks through it (one pass reads every map)."""

    passes = 0

    def __iter__(self):
        self.passes += 1
        return super().__iter__()


def test_paired_au_pro_gives_each_rows_au_pro_from_one_read_of_its_maps():
    maps, masks, clusters = _scene_data(seed=5)
    other = [np.clip(m + (m > 6), 0, 9).astype(np.float32) for m in maps]
    counted_first, counted_second = _CountedReads(maps), _CountedReads(other)
    first, second, draws = paired_au_pro_draws(counted_first, counted_second, masks, clusters, 0.3, num_bins=1000,
                                               resamples=40)
    assert first == pytest.approx(au_pro(maps, masks, 0.3, num_bins=1000), abs=1e-12)
    assert second == pytest.approx(au_pro(other, masks, 0.3, num_bins=1000), abs=1e-12)
    assert draws.shape == (40,)
    # One pass for the score range, one for the histograms, which serve the value and every draw.
    assert counted_first.passes == counted_second.passes == 2


def test_paired_au_pro_undefined_warns_without_draws_and_bad_limit_raises_before_reading():
    maps, _, clusters = _scene_data(seed=1)
    no_defects = [None] * len(maps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second, draws = paired_au_pro_draws(maps, maps, no_defects, clusters, 0.05, num_bins=100)
    assert np.isnan(first) and np.isnan(second) and draws.size == 0
    assert any("no defect regions" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert np.isnan(paired_au_pro_draws([], [], [], [], 0.05)[0])
    assert any("no test images" in str(w.message) for w in caught)
    counted = _CountedReads(maps)
    with pytest.raises(ValueError, match="FPR limit"):
        paired_au_pro_draws(counted, counted, no_defects, clusters, 1.5)
    assert counted.passes == 0


def test_paired_au_pro_draws_match_the_resampled_test_set_recomputed():
    # Values 0..9 over 10 bins: every value has its own bin, so the binned AU-PRO of any draw equals the
    # exact AU-PRO of that draw's images listed as often as their scene was drawn (the slow reference).
    maps, masks, clusters = _scene_data(seed=3)
    other = [np.flipud(m) for m in maps]
    weights = scene_weights(clusters, 5, seed=7)
    for levels_of, chosen_maps in ((_ImageLevels(maps, masks, 10), maps), (_ImageLevels(other, masks, 10), other)):
        fast = levels_of.au_pros(weights, 0.3, chunk=2)
        for row, draw in enumerate(weights):
            repeated = [i for i, count in enumerate(draw) for _ in range(int(count))]
            slow = au_pro([chosen_maps[i] for i in repeated], [masks[i] for i in repeated], 0.3)
            assert fast[row] == pytest.approx(slow)


def test_paired_auroc_matches_sklearn_on_each_draw():
    rng = np.random.default_rng(2)
    clusters = [f"{s}" for s in range(10) for _ in range(3)]
    labels = np.array([s % 2 for s in range(10) for _ in range(3)])
    first, second = labels + rng.normal(0, 0.7, 30), labels + rng.normal(0, 1.0, 30)
    result = paired_auroc_interval(first, second, labels, clusters, resamples=200, seed=5)
    assert result["difference"] == pytest.approx(roc_auc_score(labels, first) - roc_auc_score(labels, second))
    own_first, own_second, _ = paired_auroc_draws(first, second, labels, clusters, resamples=10)
    assert (own_first, own_second) == pytest.approx((roc_auc_score(labels, first), roc_auc_score(labels, second)))
    weights = scene_weights(clusters, 200, seed=5)
    draws = [roc_auc_score(labels, first, sample_weight=w) - roc_auc_score(labels, second, sample_weight=w)
             for w in weights if len(set(labels[w > 0])) == 2]
    assert (result["low"], result["high"]) == pytest.approx(tuple(np.percentile(draws, [2.5, 97.5])))
    assert result["resamples"] == len(draws)


def test_scene_weights_count_the_draws_per_scene():
    weights = scene_weights(["b", "a", "b"], 300, seed=0)
    assert weights.shape == (300, 3)
    assert (weights[:, 0] == weights[:, 2]).all()  # both images of scene b come along together
    assert (weights[:, 0] + weights[:, 1] == 2).all()  # two scenes drawn per resample
