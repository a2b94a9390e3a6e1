"""Capacity forecast: growth rate from the WAL's write timestamps, days until full.

The change feed carries the wall-clock time of every write. :class:`GrowthTracker`
folds it into per-minute buckets (vectors written, vectors deleted, vector bytes written)
for the last ``LOOKBACK_DAYS``, reading only the changes after the last LSN it saw; the
buckets are persisted at checkpoints (key ``growth:v1``), so the history outlives WAL
truncation and restarts. :func:`project` turns the buckets into rates and days until the
LMDB map (which grows by itself: read that one as "until the next map growth"), the disk
or a memory budget is full.
"""

from __future__ import annotations

import math
import shutil
import threading
import time
from dataclasses import asdict, dataclass

from simplevector.engine.errors import ChangeFeedGap

GROWTH_KEY = "growth:v1"
LOOKBACK_DAYS = 7
#: below this much history the rate is not estimated (a burst is not a trend)
MIN_SPAN_SECONDS = 600.0
DAY = 86400.0


@dataclass
class CapacityForecast:
    """Growth and headroom. Rates are per day over the observed history (up to 7 days);
    ``None`` where there is not enough history or nothing grows."""

    vectors_per_day: float | None
    bytes_per_day: float | None
    written_per_day: float | None
    deleted_per_day: float | None
    history_seconds: float
    bytes_per_vector: float | None
    map_size: int
    map_used: int
    disk_total: int
    disk_free: int
    memory_used: int
    memory_budget: int | None
    days_until_map_full: float | None
    days_until_disk_full: float | None
    days_until_memory_full: float | None
    days_until_full: float | None
    limiting: str | None

    def to_dict(self) -> dict:
        return asdict(self)


class GrowthTracker:
    """Per-minute write history folded from the change feed."""

    def __init__(self):
        self._lock = threading.Lock()
        self.last_lsn = 0
        self.buckets: dict = {}        # minute (epoch // 60) -> [written, deleted, bytes]

    def load(self, msg) -> None:
        if not msg:
            return
        self.last_lsn = int(msg.get("lsn", 0))
        self.buckets = {int(k): list(v) for k, v in msg.get("buckets", [])}

    def to_msg(self) -> dict:
        with self._lock:
            return {"lsn": self.last_lsn, "buckets": sorted(self.buckets.items())}

    def buckets_copy(self) -> dict:
        with self._lock:
            return dict(self.buckets)

    def add(self, ts: float, written: int = 0, deleted: int = 0, nbytes: int = 0) -> None:
        minute = int(ts // 60)
        b = self.buckets.setdefault(minute, [0, 0, 0])
        b[0] += written
        b[1] += deleted
        b[2] += nbytes

    def update(self, db) -> None:
        """Fold the changes after ``last_lsn`` in; skip what the WAL no longer holds."""
        with self._lock:
            dims = {(v.name, v.version): v.dim for v in db.version_statuses()}
            since = self.last_lsn
            try:
                feed = db.changes(since)
            except ChangeFeedGap:
                first = db.status().wal_first_lsn
                since = max(since, (first or 1) - 1)
                try:
                    feed = db.changes(since)
                except ChangeFeedGap:
                    return
            try:
                for change in feed:
                    self.last_lsn = change.lsn
                    if change.ts is None:
                        continue
                    if change.op == "upsert":
                        dim = dims.get((change.namespace, change.version), 0)
                        n = len(change.ids)
                        self.add(change.ts, written=n, nbytes=n * dim * 4)
                    elif change.op == "delete":
                        self.add(change.ts, deleted=len(change.ids))
            except ChangeFeedGap:
                pass
            cutoff = int((time.time() - LOOKBACK_DAYS * DAY) // 60)
            for minute in [m for m in self.buckets if m < cutoff]:
                del self.buckets[minute]


def rates(buckets: dict, now: float) -> dict:
    """Per-day rates over the history in ``buckets`` (None below MIN_SPAN_SECONDS)."""
    cutoff = now - LOOKBACK_DAYS * DAY
    items = [(m, b) for m, b in buckets.items() if m * 60 >= cutoff - 60]
    if not items:
        return {"span": 0.0, "written": None, "deleted": None, "bytes": None, "net": None,
                "bytes_per_vector": None}
    first = min(m for m, _ in items) * 60.0
    span = max(now - first, 60.0)
    written = sum(b[0] for _, b in items)
    deleted = sum(b[1] for _, b in items)
    nbytes = sum(b[2] for _, b in items)
    bpv = nbytes / written if written else None
    if span < MIN_SPAN_SECONDS:
        return {"span": span, "written": None, "deleted": None, "bytes": None, "net": None,
                "bytes_per_vector": bpv}
    per_day = DAY / span
    return {"span": span, "written": written * per_day, "deleted": deleted * per_day,
            "net": (written - deleted) * per_day, "bytes": nbytes * per_day,
            "bytes_per_vector": bpv}


def _days(headroom: float, per_day: float | None) -> float | None:
    if per_day is None or per_day <= 0:
        return None
    return max(headroom, 0.0) / per_day


def project(r: dict, *, map_size: int, map_used: int, disk_total: int, disk_free: int,
            memory_used: int, memory_budget: int | None, rows: int) -> CapacityForecast:
    """Days until each resource is full at the net growth rate ``r`` (see :func:`rates`).

    Bytes per stored vector on disk: LMDB's used bytes over the rows it holds (which
    includes ids, metadata and B-tree overhead), or the raw vector size for small stores.
    """
    bpv_raw = r.get("bytes_per_vector")
    bpv_disk = map_used / rows if rows >= 1000 else (bpv_raw * 1.5 if bpv_raw else None)
    net = r.get("net")
    bytes_per_day = None if net is None or bpv_disk is None else max(net, 0.0) * bpv_disk
    mem_per_day = None if net is None or bpv_raw is None else max(net, 0.0) * (bpv_raw + 4)
    days = {
        "map": _days(map_size - map_used, bytes_per_day),
        "disk": _days(disk_free, bytes_per_day),
        "memory": _days(memory_budget - memory_used, mem_per_day) if memory_budget else None,
    }
    known = {k: v for k, v in days.items() if v is not None and k != "map"}
    limiting = min(known, key=known.get) if known else None
    return CapacityForecast(
        vectors_per_day=net, bytes_per_day=bytes_per_day, written_per_day=r.get("written"),
        deleted_per_day=r.get("deleted"), history_seconds=r.get("span", 0.0),
        bytes_per_vector=bpv_disk, map_size=map_size, map_used=map_used,
        disk_total=disk_total, disk_free=disk_free, memory_used=memory_used,
        memory_budget=memory_budget, days_until_map_full=days["map"],
        days_until_disk_full=days["disk"], days_until_memory_full=days["memory"],
        days_until_full=known[limiting] if limiting else None, limiting=limiting)


def memory_used(db) -> int:
    """Heap bytes of every version (``VersionStatus.memory_bytes``; the rows are mapped)."""
    return sum(v.memory_bytes for v in db.version_statuses())


def disk_usage(path) -> tuple[int, int]:
    try:
        usage = shutil.disk_usage(path)
        return usage.total, usage.free
    except OSError:
        return 0, 0


def forecast(db, now: float | None = None) -> CapacityForecast:
    tracker = db.growth
    tracker.update(db)
    info = db.info()
    total, free = disk_usage(db.path)
    rows = sum(v.positions for v in db.version_statuses())
    r = rates(tracker.buckets_copy(), time.time() if now is None else now)
    return project(r, map_size=info["map_size"], map_used=info["map_used"], disk_total=total,
                   disk_free=free, memory_used=memory_used(db),
                   memory_budget=db.memory_budget, rows=rows)


def finite(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x
