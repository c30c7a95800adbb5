"""Wall-clock seconds per pipeline stage, for progress lines and the benchmark.

Stages are leaves (never nested), so their sum is the run's time: load (waiting for
decoded images), backbone, synthetic, training, fitting, scoring, maps, metrics, reports.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

seconds: defaultdict[str, float] = defaultdict(float)


@contextmanager
def stage(name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] += time.perf_counter() - start


def reset() -> None:
    seconds.clear()
