"""Evaluation metrics of MVTec AD / AD 2, with the official definitions.

- ``au_pro(maps, masks, fpr_limit=0.05, *, num_bins=None)``: area under the per-region-overlap
  curve up to an FPR limit, normalised to [0, 1]; exact, or streaming over files with ``num_bins``.
- ``au_pro_multi(maps, masks, fpr_limits=(0.05, 0.3), *, num_bins=None)``: the same for several
  limits from one pass over the data: ``{limit: value}``.
- ``pro_curve(maps, masks, *, num_bins=None)``: the whole curve ``(fpr, pro)``, FPR ascending,
  for plots.
- ``normalised_pro_area(fpr, pro, limit)``: the AU-PRO area of a given curve (e.g. for plots).
- ``DEFAULT_NUM_BINS``: a bin count for streaming AU-PRO (20 000) that agrees with the exact
  value within 1e-3 on realistic maps.
- ``image_auroc(scores, labels)`` / ``image_ap(scores, labels)``: ROC AUC and average precision
  of one score per test image (labels 0 good, 1 defective).
- ``f1_max(scores, labels)``: best image-level F1 over all thresholds, and that threshold.
  Everything here predicts "defective" when ``score >= threshold``.
- ``class_f1(scores, labels, threshold)``: image-level F1 at a given threshold (officially
  mean + 3 std of the validation images' scores).
- ``seg_f1(maps, masks, threshold)``: pixel-level F1 with TP/FP/FN pooled over all test images,
  maps binarised at ``threshold`` (officially mean + 3 std of the validation maps).
- ``mean_plus_k_std(values_or_maps, k=3.0)``: mean + k * population std over all values of an
  array or of a sequence of maps (streamed); the threshold of ClassF1 and SegF1.
- ``quantile_threshold(values_or_maps, q=0.999)``: the q-quantile of all values: on defect-free maps, a
  pixel threshold at false-positive rate 1 - q.
- ``f1_optimal_threshold(maps, masks, *, num_bins=None)``: the pixel threshold maximising SegF1's
  pooled pixel F1 on maps with defects, and that F1: ``(f1, threshold)``; exact, or streaming
  over files with ``num_bins``.
- ``by_lighting(lightings, labels, scores, maps, masks, ..., threshold=None, scenes=None)``: image
  AUROC and AU-PRO per lighting group (regular, overexposed, underexposed, shift, others; the
  grouping of ``dataset_ad2.lighting_group``), SegF1 per group when a pixel ``threshold`` is
  given, and with ``scenes`` the same on the regular-light images of each group's scenes
  (keys prefixed ``SAME_SCENES``).
- ``auroc_difference_interval(scores, labels, first, second, clusters, ...)``: image AUROC of one
  subset of the test images minus another's (e.g. all lighting-stressed images minus the regular
  ones) and its percentile interval under a bootstrap that resamples scenes, not images.
- ``paired_auroc_interval(first_scores, second_scores, labels, clusters, ...)`` and
  ``paired_au_pro_interval(first_maps, second_maps, masks, clusters, fpr_limit, ...)``: two methods
  on the same test images, the first minus the second, with the same scene bootstrap interval.
- ``UndefinedMetricWarning``: emitted, with the reason, whenever a metric is undefined for the
  data and returns NaN (no defective or no good images, constant maps, empty input).

Maps are ``[H, W]`` arrays or ``.npy``/``.tif(f)`` paths, masks ``[H, W]`` arrays, ``.png``/``.npy``
paths or None (a good image); paths are loaded one at a time. NaN or inf in a map is a bug
upstream and raises ValueError naming the image.
"""

from anomalyvfm.metrics.au_pro import DEFAULT_NUM_BINS, au_pro, au_pro_multi, normalised_pro_area, pro_curve
from anomalyvfm.metrics.bootstrap import auroc_difference_interval, paired_au_pro_interval, paired_auroc_interval
from anomalyvfm.metrics.image_metrics import class_f1, f1_max, image_ap, image_auroc
from anomalyvfm.metrics.lighting import SAME_SCENES, by_lighting
from anomalyvfm.metrics.seg_f1 import seg_f1
from anomalyvfm.metrics.thresholds import f1_optimal_threshold, mean_plus_k_std, quantile_threshold
from anomalyvfm.metrics.undefined import UndefinedMetricWarning

__all__ = ["DEFAULT_NUM_BINS", "SAME_SCENES", "UndefinedMetricWarning", "au_pro", "au_pro_multi",
           "auroc_difference_interval", "by_lighting", "class_f1", "f1_max", "f1_optimal_threshold", "image_ap",
           "image_auroc", "mean_plus_k_std", "normalised_pro_area", "paired_au_pro_interval", "paired_auroc_interval",
           "pro_curve", "quantile_threshold", "seg_f1"]
