"""Slow, deliberately simple reference implementations, written straight from the definitions.

Nothing here is shared with ``anomalyvfm.metrics``: own region labelling (flood fill), one
boolean comparison per distinct threshold, plain-Python integration. Use on small inputs only.
"""

from __future__ import annotations

import numpy as np


def label_regions(mask: np.ndarray, connectivity: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """Connected components of ``mask`` ``[H, W]`` as (rows, cols) index arrays, by flood fill."""
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    height, width = mask.shape
    seen = np.zeros(mask.shape, bool)
    regions = []
    for row in range(height):
        for col in range(width):
            if not mask[row, col] or seen[row, col]:
                continue
            seen[row, col] = True
            stack, pixels = [(row, col)], []
            while stack:
                r, c = stack.pop()
                pixels.append((r, c))
                for dr, dc in steps:
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < height and 0 <= cc < width and mask[rr, cc] and not seen[rr, cc]:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
            rows, cols = zip(*pixels)
            regions.append((np.array(rows), np.array(cols)))
    return regions


def reference_pro_points(maps, masks, max_fpr: float = 1.0, connectivity: int = 8) -> list[tuple[float, float]]:
    """(FPR, PRO) at (0, 0) and at each distinct score, descending, until FPR first exceeds ``max_fpr``."""
    maps = [np.asarray(m, dtype=np.float64) for m in maps]
    masks = [np.asarray(k) > 0 for k in masks]
    regions = [(i, rows, cols) for i, k in enumerate(masks) for rows, cols in label_regions(k, connectivity)]
    n_defect_free = sum(int((~k).sum()) for k in masks)
    points = [(0.0, 0.0)]
    for threshold in sorted({float(v) for m in maps for v in m.ravel()}, reverse=True):
        false_positives = sum(int(((m >= threshold) & ~k).sum()) for m, k in zip(maps, masks))
        overlaps = [float((maps[i][rows, cols] >= threshold).mean()) for i, rows, cols in regions]
        points.append((false_positives / n_defect_free, sum(overlaps) / len(overlaps)))
        if points[-1][0] > max_fpr:
            break
    return points


def reference_au_pro(maps, masks, fpr_limit: float, connectivity: int = 8) -> float:
    """Trapezoid area under the reference curve up to ``fpr_limit`` (PRO interpolated there) / ``fpr_limit``."""
    points = reference_pro_points(maps, masks, fpr_limit, connectivity)
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x1 <= fpr_limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < fpr_limit:
                y_at_limit = y0 + (fpr_limit - x0) * (y1 - y0) / (x1 - x0)
                area += (fpr_limit - x0) * (y0 + y_at_limit) / 2
            break
    return area / fpr_limit


def reference_seg_f1(maps, masks, threshold: float) -> float:
    """Pixel F1 with TP/FP/FN counted pixel by pixel over all images together."""
    tp = fp = fn = 0
    for m, k in zip(maps, masks):
        for score, defect in zip(np.asarray(m, dtype=np.float64).ravel(), (np.asarray(k) > 0).ravel()):
            predicted = score >= threshold
            tp += predicted and defect
            fp += predicted and not defect
            fn += defect and not predicted
    return 2 * tp / (2 * tp + fp + fn)


def reference_f1_optimal_threshold(maps, masks) -> tuple[float, float]:
    """``(F1, threshold)``: ``reference_seg_f1`` at every distinct score, ascending; a tie keeps the lower threshold."""
    best_f1, best_threshold = -1.0, float("nan")
    for threshold in sorted({float(v) for m in maps for v in np.asarray(m, dtype=np.float64).ravel()}):
        f1 = reference_seg_f1(maps, masks, threshold)
        if f1 > best_f1:
            best_f1, best_threshold = f1, threshold
    return best_f1, best_threshold
