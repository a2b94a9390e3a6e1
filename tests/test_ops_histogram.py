"""Latency histograms: accuracy against numpy, merging, rolling windows, persistence."""

import threading

import numpy as np
import pytest

from simplevector.ops.histogram import (NBUCKETS, RELATIVE_ERROR, Histogram, RollingHistogram,
                                        bucket_index, bucket_indices, bucket_lower,
                                        bucket_upper, parse_window)


class FakeClock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


def lognormal(seed, n, median=0.002, sigma=1.2):
    rng = np.random.default_rng(seed)
    return rng.lognormal(np.log(median), sigma, n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_percentiles_match_numpy_within_stated_relative_error(seed):
    x = lognormal(seed, 50_000)
    h = Histogram()
    h.record_many(x)
    for q in (0.5, 0.95, 0.99, 0.999):
        truth = np.percentile(x, q * 100, method="inverted_cdf")
        assert abs(h.percentile(q) / truth - 1) <= 2 * RELATIVE_ERROR + 1e-12, q
    assert h.count == len(x)
    assert h.sum == pytest.approx(x.sum())
    assert h.min == x.min() and h.max == x.max()


def test_scalar_and_vector_bucketing_agree_over_the_whole_range():
    x = np.concatenate([np.geomspace(1e-7, 100.0, 5000), lognormal(3, 2000)])
    assert bucket_indices(x).tolist() == [bucket_index(v) for v in x]
    inside = (x >= 1e-6) & (x < float(bucket_upper(NBUCKETS - 1)))
    idx = bucket_indices(x[inside])
    assert np.all(bucket_lower(idx) <= x[inside] * (1 + 1e-12))
    assert np.all(x[inside] < bucket_upper(idx) * (1 + 1e-12))
    widths = (bucket_upper(idx) - bucket_lower(idx)) / bucket_lower(idx)
    assert widths.max() <= 2 * RELATIVE_ERROR + 1e-12


def test_out_of_range_values_clamp_but_keep_exact_min_max():
    h = Histogram()
    for v in (1e-9, 0.0, 120.0):
        h.record(v)
    assert h.count == 3 and h.min == 0.0 and h.max == 120.0
    assert h.percentile(1.0) == 120.0 or h.percentile(1.0) <= 120.0


def test_merge_equals_recording_everything_into_one():
    a, b = lognormal(4, 3000), lognormal(5, 7000, median=0.05)
    ha, hb, hall = Histogram(), Histogram(), Histogram()
    ha.record_many(a)
    for v in b:
        hb.record(v)
    hall.record_many(np.concatenate([a, b]))
    assert ha.copy().merge(hb) == hall
    assert ha.copy().merge(hb).summary() == pytest.approx(hall.summary())


def test_rolling_merge_of_threads_equals_combined_recording():
    r = RollingHistogram()
    x = lognormal(6, 8000)
    parts = np.array_split(x, 4)
    threads = [threading.Thread(target=lambda p=p: [r.record(v) for v in p]) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expect = Histogram()
    expect.record_many(x)
    assert r.snapshot() == expect
    assert r.snapshot("5m") == expect


def test_windows_drop_old_data_and_lifetime_keeps_it():
    clock = FakeClock()
    r = RollingHistogram(clock)
    r.record(0.5)                     # t = 1000
    clock.t += 45
    r.record(0.1)                     # t = 1045
    assert r.snapshot("1m").count == 2
    clock.t += 100                    # t = 1145: both slots ended more than 60 s ago
    r.record(0.2)
    assert r.snapshot("1m").count == 1
    assert r.snapshot("5m").count == 3
    clock.t += 3700                   # past the longest window
    assert r.snapshot("1h").count == 0
    life = r.snapshot()
    assert life.count == 3 and life.max == 0.5 and life.min == 0.1


def test_window_summary_min_max_come_from_the_window_only():
    clock = FakeClock()
    r = RollingHistogram(clock)
    r.record(2.0)
    clock.t += 400
    r.record(0.001)
    s = r.snapshot("5m").summary()
    assert s["count"] == 1 and s["max"] == 0.001


def test_persisted_message_round_trips_and_seeds_lifetime():
    h = Histogram()
    h.record_many(lognormal(7, 1000))
    again = Histogram.from_msg(h.to_msg())
    assert again == h
    r = RollingHistogram(base=again)
    r.record(0.003)
    assert r.snapshot().count == 1001
    assert r.snapshot("1m").count == 1


def test_cumulative_counts_at_power_of_two_bounds_are_exact():
    x = lognormal(8, 5000)
    h = Histogram()
    h.record_many(x)
    bounds = [(1 << e) * 1e-6 for e in range(27)]
    assert h.cumulative(bounds) == [int((x <= b).sum()) for b in bounds]


def test_empty_histogram_summary_is_none_not_zero():
    s = Histogram().summary()
    assert s["count"] == 0 and s["p99"] is None and s["min"] is None


@pytest.mark.parametrize("bad", ["2d", -1, 0, 7200, True, "x"])
def test_parse_window_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        parse_window(bad)


def test_parse_window_accepts_named_windows():
    assert parse_window("1m") == 60 and parse_window("5m") == 300 and parse_window("1h") == 3600
    assert parse_window(None) is None and parse_window(30) == 30
