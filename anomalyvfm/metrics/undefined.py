"""The warning for metrics that the data cannot define (returned as NaN, never a made-up number)."""

from __future__ import annotations

import warnings


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for this data (e.g. no defective images); its value is NaN."""


def undefined(metric: str, reason: str, stacklevel: int = 3) -> float:
    """Warn that ``metric`` is undefined because of ``reason`` and return NaN."""
    warnings.warn(f"{metric} is undefined: {reason}; returning NaN", UndefinedMetricWarning, stacklevel=stacklevel)
    return float("nan")
