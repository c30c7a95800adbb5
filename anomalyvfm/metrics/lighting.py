"""Metrics per lighting condition of the MVTec AD 2 test images."""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from anomalyvfm.metrics._io import MapSource, MaskSource, check_lengths
from anomalyvfm.metrics.au_pro import au_pro
from anomalyvfm.metrics.image_metrics import image_auroc
from anomalyvfm.metrics.seg_f1 import seg_f1
from anomalyvfm.metrics.undefined import UndefinedMetricWarning
from dataset_ad2 import lighting_group  # one grouping rule for the data layer and the metrics

GROUP_ORDER = ("regular", "overexposed", "underexposed", "shift")


def ordered_groups(groups: Sequence[str]) -> list[str]:
    """The distinct lighting groups of ``groups``: ``GROUP_ORDER`` first, any other in order of first appearance."""
    present = dict.fromkeys(groups)
    return [g for g in GROUP_ORDER if g in present] + [g for g in present if g not in GROUP_ORDER]


SAME_SCENES = "regular_same_scenes_"  # key prefix: a group's metrics on the regular-light images of its scenes


def by_lighting(lightings: Sequence[str], labels: ArrayLike, scores: ArrayLike, anomaly_maps: Sequence[MapSource],
                gt_masks: Sequence[MaskSource], *, fpr_limit: float = 0.05, num_bins: int | None = None,
                threshold: float | Sequence[float] | None = None, scenes: Sequence[str] | None = None
                ) -> dict[str, dict[str, float]]:
    """Image AUROC and AU-PRO (and SegF1) of each lighting group, computed on that group's test images only.

    One entry per test image in every argument (``labels``/``scores`` ``[N]``, maps and masks as in
    ``au_pro``). Groups (``dataset_ad2.lighting_group``): regular, overexposed, underexposed, shift
    (shift_1..shift_4 pooled), then any other name present (e.g. mixed, unknown) as its own group,
    in order of first appearance. Returns ``{group: {"image_auroc", f"au_pro_{fpr_limit:g}",
    "n_good", "n_bad"}}``, plus ``"seg_f1"`` (pixel F1 of the group's maps at ``threshold``, see
    ``seg_f1``; one value, or one per image) when ``threshold`` is given. A metric a group cannot define is NaN, and its
    UndefinedMetricWarning names the group.

    ``scenes`` (``dataset_ad2.scene_of`` of each image) pairs a group with regular light: every
    other group then also gets the same metrics, keys prefixed ``SAME_SCENES``, on the regular
    images of the scenes it shows, where there are any. A group and the whole regular group can
    hold different scenes (a stressed copy that re-lights each scene once), and then their
    difference mixes how hard the scenes are with what the lighting costs; the same-scenes
    difference is the lighting's alone.
    """
    check_lengths(lightings=lightings, labels=labels, scores=scores, anomaly_maps=anomaly_maps, gt_masks=gt_masks)
    if scenes is not None:
        check_lengths(lightings=lightings, scenes=scenes)
    labels, scores = np.asarray(labels), np.asarray(scores)
    members: dict[str, list[int]] = {}
    for index, lighting in enumerate(lightings):
        members.setdefault(lighting_group(lighting), []).append(index)
    order = ordered_groups(list(members))

    def metrics_of(chosen: list[int], name: str) -> dict[str, float]:
        maps, masks = [anomaly_maps[i] for i in chosen], [gt_masks[i] for i in chosen]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UndefinedMetricWarning)
            values = {
                "image_auroc": image_auroc(scores[chosen], labels[chosen]),
                f"au_pro_{fpr_limit:g}": au_pro(maps, masks, fpr_limit, num_bins=num_bins),
                "n_good": int(np.sum(labels[chosen] == 0)),
                "n_bad": int(np.sum(labels[chosen] == 1)),
            }
            if threshold is not None:
                values["seg_f1"] = seg_f1(maps, masks, threshold if np.ndim(threshold) == 0 else
                                          [threshold[i] for i in chosen])
        for warning in caught:  # re-emit, naming the group
            warnings.warn(f"lighting group {name}: {warning.message}", warning.category, stacklevel=3)
        return values

    result = {group: metrics_of(members[group], repr(group)) for group in order}
    if scenes is not None and "regular" in members:
        for group in (g for g in order if g != "regular"):
            shown = {scenes[i] for i in members[group]}
            paired = [i for i in members["regular"] if scenes[i] in shown]
            if paired:  # the group shows every regular scene (every scene under every light): nothing to recompute
                same = result["regular"] if paired == members["regular"] else \
                    metrics_of(paired, f"{group!r} (regular light, same scenes)")
                result[group] |= {SAME_SCENES + name: value for name, value in same.items()}
    return result
