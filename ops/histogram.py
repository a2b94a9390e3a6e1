"""Log-linear (HDR-style) latency histograms: bounded relative error, mergeable, windowed.

Buckets: every power of two of microseconds, from 1 us up, is split into ``SUB`` = 64
equal sub-buckets, so a bucket is at most 1/64 (1.6 %) of its lower bound wide. A
percentile is reported as the midpoint of the bucket that holds its rank (clamped to the
exact min and max), so it is within 0.8 % of a recorded value; the nearest-rank value of
the recorded data lies in the same bucket. ``NBUCKETS`` = 26 octaves cover 1 us .. 67 s;
values below 1 us count in the first bucket, values above the last in the last bucket
(min, max, sum and count stay exact).

:class:`Histogram` is a plain mergeable value (numpy counts). :class:`RollingHistogram`
is what operations record into: thread-safe, with lifetime totals beside a ring of
10-second slots that answers "the last 1 min / 5 min / 1 h" (a window of W seconds
merges the slots that end after ``now - W``, so it spans between W and W + 10 seconds).
Recording is a frexp, a few arithmetic operations, a clock read and one list increment
under a lock; finished slots are stored sparsely (only non-empty buckets).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

import numpy as np

SUB = 64                      # sub-buckets per power of two (relative width 1/64)
OCTAVES = 26                  # 2**26 us = 67 s
NBUCKETS = SUB * OCTAVES
SLOT_SECONDS = 10.0
MAX_WINDOW = 3600.0
WINDOWS = {"1m": 60.0, "5m": 300.0, "1h": 3600.0}
QUANTILES = (0.5, 0.95, 0.99, 0.999)
#: relative error bound of a reported percentile against a recorded value in its bucket
RELATIVE_ERROR = 1.0 / (2 * SUB)

_frexp = math.frexp


def bucket_index(seconds: float) -> int:
    """The bucket a latency of ``seconds`` falls in."""
    u = seconds * 1e6
    if u < 1.0:
        return 0
    m, e = _frexp(u)                       # u = m * 2**e, 0.5 <= m < 1
    i = (e << 6) + int(m * 128.0) - 128    # (e - 1) * SUB + floor((2m - 1) * SUB)
    return i if i < NBUCKETS else NBUCKETS - 1


def bucket_indices(seconds: np.ndarray) -> np.ndarray:
    """Vectorised :func:`bucket_index` (identical results)."""
    u = np.maximum(np.asarray(seconds, np.float64) * 1e6, 1.0)
    m, e = np.frexp(u)
    i = e.astype(np.int64) * SUB + (m * 128.0).astype(np.int64) - 2 * SUB
    return np.clip(i, 0, NBUCKETS - 1)


def bucket_lower(i) -> np.ndarray | float:
    """Lower bound of bucket ``i`` in seconds (array or scalar)."""
    i = np.asarray(i, np.int64)
    return np.ldexp(1.0 + (i % SUB) / SUB, i // SUB) * 1e-6


def bucket_upper(i) -> np.ndarray | float:
    i = np.asarray(i, np.int64)
    return np.ldexp(1.0 + (i % SUB + 1) / SUB, i // SUB) * 1e-6


def parse_window(window) -> float | None:
    """None (lifetime), seconds, or one of "1m", "5m", "1h" (also "30s", "2h")."""
    if window is None:
        return None
    if isinstance(window, bool):
        raise ValueError(f"window {window!r} is not valid; expected seconds or '1m'/'5m'/'1h'")
    if isinstance(window, (int, float)):
        seconds = float(window)
    else:
        text = str(window).strip().lower()
        if text in ("", "lifetime", "all", "none"):
            return None
        units = {"s": 1.0, "m": 60.0, "h": 3600.0}
        try:
            seconds = float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
        except (ValueError, KeyError, IndexError):
            raise ValueError(f"window {window!r} is not valid; expected seconds or "
                             "'1m'/'5m'/'1h'") from None
    if not (0 < seconds <= MAX_WINDOW):
        raise ValueError(f"window {window!r} is not valid; expected 0 < seconds <= {MAX_WINDOW:g}"
                         " (older data is kept only in the lifetime totals)")
    return seconds


class Histogram:
    """A mergeable latency histogram (seconds). Not thread-safe; see RollingHistogram."""

    __slots__ = ("counts", "count", "sum", "min", "max")

    def __init__(self):
        self.counts = np.zeros(NBUCKETS, np.int64)
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    # -- recording ------------------------------------------------------------------------
    def record(self, seconds: float, n: int = 1) -> None:
        self.counts[bucket_index(seconds)] += n
        self.count += n
        self.sum += seconds * n
        self.min = min(self.min, seconds)
        self.max = max(self.max, seconds)

    def record_many(self, seconds) -> None:
        values = np.asarray(seconds, np.float64).ravel()
        if not len(values):
            return
        self.counts += np.bincount(bucket_indices(values), minlength=NBUCKETS)
        self.count += len(values)
        self.sum += float(values.sum())
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))

    def add_counts(self, counts, n: int, total: float, lo: float, hi: float) -> None:
        """Add raw bucket counts (dense array, or (indices, counts) pair) and their stats."""
        if isinstance(counts, tuple):
            idx, cnt = counts
            if len(idx):
                np.add.at(self.counts, np.asarray(idx, np.int64), np.asarray(cnt, np.int64))
        else:
            self.counts += np.asarray(counts, np.int64)
        self.count += int(n)
        self.sum += float(total)
        if n:
            self.min = min(self.min, lo)
            self.max = max(self.max, hi)

    def merge(self, other: "Histogram") -> "Histogram":
        """Add ``other`` into this histogram (in place); returns self."""
        self.add_counts(other.counts, other.count, other.sum, other.min, other.max)
        return self

    def copy(self) -> "Histogram":
        return Histogram().merge(self)

    # -- reading --------------------------------------------------------------------------
    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def percentile(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile (0 < q <= 1), as its bucket's midpoint."""
        if not self.count:
            return None
        if not 0.0 < q <= 1.0:
            raise ValueError(f"quantile {q!r} is not valid; expected 0 < q <= 1")
        rank = max(1, math.ceil(q * self.count))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        mid = 0.5 * (float(bucket_lower(i)) + float(bucket_upper(i)))
        return min(max(mid, self.min), self.max)

    def percentiles(self, qs=QUANTILES) -> dict:
        return {q: self.percentile(q) for q in qs}

    def summary(self) -> dict:
        """count, sum, min, max, mean, p50, p95, p99, p999 (seconds; None when empty)."""
        out = {"count": int(self.count), "sum": self.sum,
               "min": self.min if self.count else None,
               "max": self.max if self.count else None, "mean": self.mean}
        for q in QUANTILES:
            out["p" + f"{q * 100:g}".replace(".", "")] = self.percentile(q)
        return out

    def nonzero(self):
        """(lower, upper, count) per non-empty bucket, in increasing order."""
        idx = np.flatnonzero(self.counts)
        return list(zip(bucket_lower(idx).tolist(), bucket_upper(idx).tolist(),
                        self.counts[idx].tolist()))

    def cumulative(self, bounds) -> list:
        """Cumulative counts at each upper bound (for Prometheus ``le`` buckets). Exact when
        a bound is a bucket edge (powers of two of microseconds are)."""
        cum = np.cumsum(self.counts)
        out = []
        for b in bounds:
            # buckets whose upper bound <= b (with a tolerance for float rounding)
            j = int(np.searchsorted(bucket_upper(np.arange(NBUCKETS)), b * (1 + 1e-9),
                                    side="right"))
            out.append(int(cum[j - 1]) if j > 0 else 0)
        return out

    # -- persistence ----------------------------------------------------------------------
    def to_msg(self) -> dict:
        idx = np.flatnonzero(self.counts)
        return {"n": int(self.count), "sum": self.sum,
                "min": self.min if self.count else None,
                "max": self.max if self.count else None,
                "idx": idx.tolist(), "cnt": self.counts[idx].tolist()}

    @classmethod
    def from_msg(cls, msg: dict) -> "Histogram":
        h = cls()
        if msg and msg.get("n"):
            h.add_counts((msg["idx"], msg["cnt"]), msg["n"], msg["sum"], msg["min"], msg["max"])
        return h

    def __eq__(self, other):
        return (isinstance(other, Histogram) and self.count == other.count
                and np.array_equal(self.counts, other.counts)
                and math.isclose(self.sum, other.sum, rel_tol=1e-9, abs_tol=1e-12)
                and (not self.count or (self.min == other.min and self.max == other.max)))

    def __repr__(self):
        s = self.summary()
        return f"<Histogram n={s['count']} p50={s['p50']} p99={s['p99']}>"


class _Shard:
    """One thread's current 10-second slot (only that thread writes it)."""

    __slots__ = ("counts", "sum", "min", "max", "start", "end", "owner")

    def __init__(self, start: float, owner):
        self.counts = [0] * NBUCKETS
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.start = start
        self.end = start + SLOT_SECONDS
        self.owner = owner

    def dense(self):
        counts = np.asarray(self.counts, np.int64)
        return counts, int(counts.sum()), self.sum, self.min, self.max


class RollingHistogram:
    """Lifetime totals plus 10-second slots for the last hour. Thread-safe.

    Each recording thread writes its own current slot (a plain list), so the hot path
    takes no lock; a thread seals its slot into the shared ring (under the lock) when its
    clock passes the slot's end, and readers merge the ring with every thread's current
    slot under the same lock. Slots of threads that have ended are sealed by the next
    reader or rotation. ``clock`` (monotonic seconds) is injectable for tests. ``base``
    is a lifetime Histogram loaded from the database (lifetime reads only).
    """

    def __init__(self, clock=time.monotonic, base: Histogram | None = None):
        self._clock = clock
        self._lock = threading.Lock()
        self._tls = threading.local()
        self._lifetime = base.copy() if base is not None else Histogram()
        self._slots: deque = deque()    # (start, idx, cnt, n, sum, min, max), oldest first
        self._shards: list = []

    @staticmethod
    def _slot_start(now: float) -> float:
        return math.floor(now / SLOT_SECONDS) * SLOT_SECONDS

    def record(self, seconds: float) -> None:
        """Count one operation that took ``seconds``."""
        u = seconds * 1e6
        if u >= 1.0:
            m, e = _frexp(u)
            i = (e << 6) + int(m * 128.0) - 128
            if i >= NBUCKETS:
                i = NBUCKETS - 1
        else:
            i = 0
        try:
            sh = self._tls.shard
        except AttributeError:
            sh = self._new_shard(None)
        if self._clock() >= sh.end:
            sh = self._new_shard(sh)
        sh.counts[i] += 1
        sh.sum += seconds
        if seconds > sh.max:
            sh.max = seconds
        if seconds < sh.min:
            sh.min = seconds

    def _new_shard(self, old):
        """Seal this thread's slot ``old`` (if any) and give the thread a fresh one."""
        now = self._clock()
        shard = _Shard(self._slot_start(now), threading.current_thread())
        with self._lock:
            if old is not None:
                self._seal(old)
            self._shards.append(shard)
            self._tls.shard = shard
            self._sweep(now)
        return shard

    def _seal(self, shard) -> None:
        """Move a slot into the ring and the lifetime totals (caller holds the lock)."""
        try:
            self._shards.remove(shard)
        except ValueError:
            return
        counts, n, total, lo, hi = shard.dense()
        if not n:
            return
        idx = np.flatnonzero(counts)
        cnt = counts[idx]
        self._slots.append((shard.start, idx.astype(np.int16), cnt, n, total, lo, hi))
        self._lifetime.add_counts((idx, cnt), n, total, lo, hi)

    def _sweep(self, now: float) -> None:
        """Seal slots of ended threads; drop ring slots older than the longest window."""
        for shard in [s for s in self._shards if not s.owner.is_alive()]:
            self._seal(shard)
        if len(self._slots) > 1 and self._slots[-1][0] < self._slots[-2][0]:
            self._slots = deque(sorted(self._slots, key=lambda s: s[0]))
        while self._slots and self._slots[0][0] + SLOT_SECONDS <= now - MAX_WINDOW:
            self._slots.popleft()

    def snapshot(self, window=None) -> Histogram:
        """A Histogram of the lifetime (window None) or of the last ``window`` seconds."""
        seconds = parse_window(window)
        now = self._clock()
        cutoff = -math.inf if seconds is None else now - seconds
        with self._lock:
            self._sweep(now)
            if seconds is None:
                out = self._lifetime.copy()
            else:
                out = Histogram()
                for start, idx, cnt, n, total, lo, hi in self._slots:
                    if start + SLOT_SECONDS > cutoff:
                        out.add_counts((idx, cnt), n, total, lo, hi)
            for shard in self._shards:
                if shard.end > cutoff:
                    counts, n, total, lo, hi = shard.dense()
                    if n:
                        out.add_counts(counts, n, total, lo, hi)
        return out

    @property
    def count(self) -> int:
        return self.snapshot().count
