"""The histogram behind the latency metrics."""

from __future__ import annotations

import math

import pytest

from tickwire.statistics import Histogram


def test_observations_land_in_the_first_bucket_that_holds_them() -> None:
    h = Histogram((0.001, 0.01, 0.1))
    for value in (0.0005, 0.001, 0.002, 0.05, 3.0):
        h.observe(value)
    stats = h.statistics()
    assert stats.counts == (2, 1, 1, 1)  # le 0.001 includes 0.001 itself
    assert stats.count == 5
    assert stats.sum == pytest.approx(3.0535)
    assert stats.cumulative() == [(0.001, 2), (0.01, 3), (0.1, 4), (math.inf, 5)]
    assert stats.quantile(0.5) == 0.01
    assert stats.quantile(0.99) == math.inf
    assert Histogram().statistics().quantile(0.5) is None


def test_bounds_must_ascend() -> None:
    with pytest.raises(ValueError, match="ascending"):
        Histogram((0.1, 0.01))
    with pytest.raises(ValueError, match="between 0 and 1"):
        Histogram().statistics().quantile(2)
