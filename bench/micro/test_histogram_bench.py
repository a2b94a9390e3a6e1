"""Cost of recording one latency into the ops histograms, against an empty Python call in
the same process (the floor any Python-level hook pays). Compare within the group
(`--benchmark-only`, ratios of the means); with `--benchmark-disable` it runs once as a test.
"""

from __future__ import annotations

import pytest

from simplevector.ops.histogram import Histogram, RollingHistogram

N = 10_000


def _noop(seconds):
    return None


@pytest.mark.benchmark(group="histogram-record")
def test_baseline_empty_call(benchmark):
    def run():
        f = _noop
        for _ in range(N):
            f(0.00123)
    benchmark(run)


@pytest.mark.benchmark(group="histogram-record")
def test_rolling_histogram_record(benchmark):
    h = RollingHistogram()

    def run():
        f = h.record
        for _ in range(N):
            f(0.00123)
    benchmark(run)
    assert h.snapshot().count >= N


@pytest.mark.benchmark(group="histogram-read")
def test_snapshot_5m_and_percentiles(benchmark):
    h = RollingHistogram()
    for i in range(N):
        h.record(1e-4 * (1 + i % 100))
    out = benchmark(lambda: h.snapshot("5m").summary())
    assert out["count"] == N


@pytest.mark.benchmark(group="histogram-read")
def test_merge_two_histograms(benchmark):
    a, b = Histogram(), Histogram()
    a.record(0.001)
    b.record(0.002)
    out = benchmark(lambda: a.copy().merge(b))
    assert out.count == 2
