"""timing.timed: a generator's own work is its stage; the consumer's work between items is not."""

import time

from anomalyvfm import timing


def test_timed_counts_the_making_of_each_item_and_not_the_consumers_work():
    def slow_items():
        for item in (0, None, 2):  # None is an item like any other
            time.sleep(0.02)
            yield item

    timing.reset()
    seen = []
    for item in timing.timed(slow_items(), "synthetic"):
        seen.append(item)
        with timing.stage("backbone"):
            time.sleep(0.05)
    assert seen == [0, None, 2]
    assert timing.seconds["synthetic"] >= 0.06 and timing.seconds["backbone"] >= 0.15
    assert timing.seconds["synthetic"] < timing.seconds["backbone"]  # 0.21 s or more had it counted the consumer's
    timing.reset()
