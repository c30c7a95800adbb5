"""Wall-clock seconds per pipeline stage, for progress lines and the benchmark.

Stages are leaves (never nested), so their sum is the run's time: load (waiting for
decoded images), backbone, synthetic, training, fitting, scoring, maps, metrics, reports.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

seconds: defaultdict[str, float] = defaultdict(float)


@contextmanager
def stage(name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[name] += time.perf_counter() - start


Item = TypeVar("Item")


def timed(items: Iterable[Item], name: str) -> Iterator[Item]:
    """``items``, with the time spent making each (a generator's own work) counted as stage ``name``;
    what the consumer does between items is not."""
    remaining, end = iter(items), object()
    while True:
        with stage(name):
            item = next(remaining, end)
        if item is end:
            return
        yield item


def reset() -> None:
    seconds.clear()
