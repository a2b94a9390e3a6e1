"""Compaction: a version rewritten without its tombstones, as one checkpoint-shaped bundle.

A version's derived state is captured the way a checkpoint captures it
(:meth:`~.state.VersionState.capture`: alive mask, norms, id map, field indexes, IVF lists,
all dead rows already dropped from the lists), then every array is renumbered so that the
``live`` surviving positions ``P`` (in their old order) become ``0..live-1``:

* per-position arrays are indexed by ``P`` (``alive``, ``xnorm2``, ``id_int``, and the
  encoded ids ``id_off``/``id_blob`` gathered);
* arrays holding positions are mapped through ``new = remap[old]`` (``id_spos``,
  ``id_hpos``, every field index's ``pos``/``exists``/``vpos``, the IVF lists' ``pos``);
  the map is increasing, so every sorted array stays sorted and every CSR list keeps its
  order, and nothing is re-trained or re-encoded.

The rows themselves are copied to a new row file generation (:func:`copy_rows`). The
result is what :meth:`~.state.VersionState.restore` loads. A position of a dead row in
an array that should hold live positions only is a :class:`CorruptionError`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from .errors import CorruptionError

#: Array names (after the "fields.f<i>." / "ivf." prefixes) that hold row positions.
_FIELD_POSITION_ARRAYS = ("pos", "exists", "vpos")
_COPY_CHUNK_ROWS = 65536


def survivors(alive: np.ndarray) -> np.ndarray:
    """Positions that survive a compaction, in order."""
    return np.flatnonzero(alive).astype(np.int64)


def remap_bundle(meta: dict, arrays: dict, keep: np.ndarray, *, what: str = "") -> tuple:
    """(meta, arrays) of a captured state renumbered to the positions ``keep``."""
    n = int(meta["n"])
    live = len(keep)
    remap = np.full(n, -1, np.int64)
    remap[keep] = np.arange(live, dtype=np.int64)

    def positions(name, values):
        values = np.asarray(values, np.int64)
        if not len(values):
            return values
        if int(values.min()) < 0 or int(values.max()) >= n:
            raise CorruptionError(f"{what}: array {name} holds a position outside 0..{n - 1}")
        out = remap[values]
        if len(out) and int(out.min()) < 0:
            bad = int(values[np.flatnonzero(out < 0)[0]])
            raise CorruptionError(f"{what}: array {name} holds position {bad}, a tombstone "
                                  "(compaction found derived state that counts a dead row)")
        return out

    out = {}
    for name, value in arrays.items():
        if name in ("alive",):
            out[name] = np.ones(live, np.bool_)
        elif name in ("xnorm2", "id_int"):
            out[name] = np.ascontiguousarray(np.asarray(value)[keep])
        elif name == "id_off":
            continue                            # with id_blob below
        elif name == "id_blob":
            out["id_off"], out["id_blob"] = _gather_blob(arrays["id_off"], value, keep)
        elif name in ("id_spos", "id_hpos", "ivf.pos"):
            out[name] = positions(name, value)
        elif name.startswith("fields.") and name.rsplit(".", 1)[1] in _FIELD_POSITION_ARRAYS:
            out[name] = positions(name, value)
        else:
            out[name] = value                   # hashes, offsets, codes, centroids, ...
    new_meta = dict(meta)
    new_meta.update(n=live, live=live, next_rowid=live)
    if "ivf" in meta:
        ivf = dict(meta["ivf"])
        ivf["covers"] = live
        ivf["trained_upto"] = int(np.searchsorted(keep, int(ivf.get("trained_upto", 0))))
        new_meta["ivf"] = ivf
    return new_meta, out


def _gather_blob(off: np.ndarray, blob: np.ndarray, keep: np.ndarray):
    off = np.asarray(off, np.int64)
    lens = (off[1:] - off[:-1])[keep]
    new_off = np.zeros(len(keep) + 1, np.int64)
    np.cumsum(lens, out=new_off[1:])
    total = int(new_off[-1])
    if not total:
        return new_off, np.zeros(0, np.uint8)
    idx = np.repeat(off[:-1][keep] - new_off[:-1], lens) + np.arange(total, dtype=np.int64)
    return new_off, np.ascontiguousarray(np.asarray(blob)[idx])


def copy_rows(src_rows: np.ndarray, keep: np.ndarray, dst, *, progress=None) -> None:
    """Rows ``src_rows[keep]`` into the row file ``dst`` at ``0..len(keep)-1``, in chunks
    (the source is a mapping: no full copy in the heap)."""
    for lo in range(0, len(keep), _COPY_CHUNK_ROWS):
        part = keep[lo:lo + _COPY_CHUNK_ROWS]
        dst.write(lo, src_rows[part])
        if progress is not None:
            progress(len(part))


@dataclass(frozen=True)
class CompactedVersion:
    """One version's compaction: positions before, rows kept, tombstones dropped."""

    namespace: str
    version: int
    positions_before: int
    rows: int
    tombstones_removed: int
    generation: int             # the row file generation it now uses
    lsn: int                    # the WAL record of the compaction (0: nothing to do)
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CompactReport:
    """What ``compact()`` did. ``bytes_before``/``bytes_after``: the database directory's
    own files on disk (LMDB, WAL, row files, checkpoints; snapshots not counted), measured
    before the first version was rewritten and after the checkpoint that follows."""

    versions: tuple             # CompactedVersion, one per version looked at
    bytes_before: int
    bytes_after: int
    seconds: float
    automatic: bool = False     # started by the compact_ratio policy

    @property
    def tombstones_removed(self) -> int:
        return sum(v.tombstones_removed for v in self.versions)

    @property
    def bytes_reclaimed(self) -> int:
        return self.bytes_before - self.bytes_after

    def to_dict(self) -> dict:
        return {"versions": [v.to_dict() for v in self.versions],
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
                "bytes_reclaimed": self.bytes_reclaimed,
                "tombstones_removed": self.tombstones_removed,
                "seconds": self.seconds, "automatic": self.automatic}


def engine_bytes(dbpath: str) -> int:
    """Bytes on disk of a database directory's own files (its snapshots excluded)."""
    from .segments import CKPT_DIR, ROWS_DIR, bytes_on_disk
    return bytes_on_disk(dbpath, ("lmdb", "wal", ROWS_DIR, CKPT_DIR))


def due(tombstones: int, positions: int, ratio: float, min_rows: int) -> bool:
    """The policy: compact once tombstones are at least ``ratio`` of the positions and at
    least ``min_rows`` (a small namespace is not rewritten for a handful of deletes)."""
    return bool(ratio) and tombstones >= min_rows and tombstones >= ratio * positions


#: Default policy: compact a version once 30% of its positions are tombstones (and at
#: least DEFAULT_MIN_ROWS of them). At that ratio a namespace under pure churn stays under
#: 1/0.7 = 1.43x its live rows on disk and in memory, and each compaction copies the live
#: rows after 0.43x live replacements: about 2.3 row copies per replaced row. Health warns
#: at 20% tombstones without the policy (ops/thresholds.py); 50% would double the space.
DEFAULT_COMPACT_RATIO = 0.3
DEFAULT_MIN_ROWS = 1024


def compact_version(db, config, *, automatic: bool = False) -> CompactedVersion:
    """Compact one version through the WAL (a ``compact`` record, applied in LSN order)."""
    t0 = time.perf_counter()
    state = db._state(config.vid)
    before, tomb = state.n, state.tombstones
    if tomb == 0:
        return CompactedVersion(config.name, config.version, before, state.live, 0,
                                state.gen, 0, time.perf_counter() - t0)
    # a running index build finishes first: it swaps its index into the state it trained
    with state.build_lock:
        def build():
            current = db._state(config.vid)
            return {"op": "compact", "ns": config.name, "v": config.version,
                    "vid": config.vid, "gen": current.gen + 1, "auto": automatic}
        lsn, result = db._commit(build, ddl=True)
    after = db._applier.states.get(config.vid)
    if result is None or after is None:       # dropped meanwhile
        return CompactedVersion(config.name, config.version, before, 0, 0, state.gen, lsn,
                                time.perf_counter() - t0)
    positions, live = result
    db._maybe_train(config.vid)
    return CompactedVersion(config.name, config.version, positions, live, positions - live,
                            after.gen, lsn, time.perf_counter() - t0)


class Compactor:
    """The ``compact_ratio`` policy of one database: writes poke it, a background thread
    compacts the versions that are due, one at a time, and keeps a record of each run."""

    def __init__(self, db, ratio: float, min_rows: int):
        self.db = db
        self.ratio = float(ratio)
        self.min_rows = int(min_rows)
        self.runs = 0
        self.last: dict | None = None         # the last run: report dict, or the error
        self.errors = 0
        self._due: set = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None

    @property
    def enabled(self) -> bool:
        return self.ratio > 0

    def poke(self, vid: int, state) -> None:
        """After a write to ``vid``: wake the thread when the version is due."""
        if not self.enabled or not due(state.tombstones, state.n, self.ratio, self.min_rows):
            return
        with self._lock:
            self._due.add(vid)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name="simplevector-compactor")
                self._thread.start()
        self._wake.set()

    def _loop(self):
        db = self.db
        while not db._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            with self._lock:
                vids, self._due = self._due, set()
            for vid in sorted(vids):
                if db._stop.is_set():
                    return
                config = db._applier.configs.get(vid)
                state = db._applier.states.get(vid)
                if config is None or state is None or not due(
                        state.tombstones, state.n, self.ratio, self.min_rows):
                    continue
                try:
                    db._compact_configs([config], automatic=True)
                except Exception as e:      # recorded; the next due write tries again
                    self.errors += 1
                    self.last = {"ok": False, "ts": time.time(), "automatic": True,
                                 "namespace": config.name, "version": config.version,
                                 "error": f"{type(e).__name__}: {e}"}

    def record(self, report: CompactReport) -> None:
        self.runs += 1
        self.last = {"ok": True, "ts": time.time(), **report.to_dict()}

    def status(self) -> dict:
        return {"ratio": self.ratio, "min_rows": self.min_rows, "runs": self.runs,
                "errors": self.errors, "last": self.last}

    def join(self, timeout: float = 5.0) -> None:
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
