"""In-memory state of one namespace version: derived entirely from LMDB + WAL replay.

Rows live at dense positions ``0..n-1`` in append order. A delete, or an upsert of an id
that exists, leaves a tombstone at the old position (``alive[pos] = False``); an upsert
appends the new row at a fresh position with a fresh rowid. Rows therefore never change in
place, so a concurrent query sees each row either before or after a write, never torn.
Tombstones stay until a compaction (not implemented yet), across reopens too: a checkpoint
writes the arrays with their dead positions as segments (:meth:`VersionState.capture`),
reopening restores them as they were (:meth:`VersionState.restore`) and WAL replay after the
checkpoint adds its own. Only a rebuild from the LMDB rows, when the segments cannot be used
(missing, or older than the retained WAL), yields dense arrays: deleted and replaced rows
are not in LMDB. A re-index drops tombstones from the IVF lists, not from these arrays.

Writes are serialised by the database (one apply at a time, in LSN order); readers take a
:class:`View` (array references and a row count) and need no lock.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from .fieldindex import FieldIndex
from .indexspec import IndexSpec
from .kernels.distances import resolve_metric
from .types import VersionConfig

_MIN_CAPACITY = 1024


@dataclass(frozen=True)
class View:
    """A consistent snapshot of the searchable arrays for one query."""

    X: np.ndarray          # (n, dim) float32, unit rows for cosine
    xnorm2: np.ndarray     # (n,) float32 squared norms of X rows
    alive: np.ndarray      # (n,) bool
    rowids: np.ndarray     # (n,) int64
    n: int
    live: int


class VersionState:
    """Vectors, ids, tombstones and field indexes of one version, in memory."""

    def __init__(self, config: VersionConfig, next_rowid: int = 0):
        self.config = config
        self.metric = resolve_metric(config.metric)
        self.dim = config.dim
        self.next_rowid = next_rowid
        self.n = 0
        self.live = 0
        self._X = np.zeros((0, self.dim), np.float32)
        self._xnorm2 = np.zeros(0, np.float32)
        self._alive = np.zeros(0, np.bool_)
        self._rowids = np.zeros(0, np.int64)
        self.extids: list = []
        self.metas: list = []
        self.id_to_pos: dict = {}
        self._fields: FieldIndex | None = FieldIndex()
        self._lock = threading.Lock()   # guards array swaps on growth
        # held while a write mutates this state; an index build takes it to catch up and swap
        self.mutate_lock = threading.RLock()
        self.spec = IndexSpec.parse(config.index)
        self.index = None               # an IVFIndex once trained
        self.training = False
        self.build_lock = threading.Lock()
        self.training_error = None
        self.failed_at_rows = 0
        self.mutations = 0              # bumps on every write (checkpoints skip clean states)
        self.checkpointed_mutations = -1

    @property
    def fields(self) -> FieldIndex:
        """The metadata field indexes, built from the rows' metadata on first use."""
        fields = self._fields
        if fields is None:
            with self.mutate_lock:
                if self._fields is None:
                    built = FieldIndex()
                    alive = self._alive
                    for pos, md in enumerate(self.metas):
                        if md and alive[pos]:
                            built.add(pos, md)
                    self._fields = built
                fields = self._fields
        return fields

    # -- reading ---------------------------------------------------------------------
    def view(self) -> View:
        with self._lock:
            n = self.n
            return View(self._X[:n], self._xnorm2[:n], self._alive[:n], self._rowids[:n], n,
                        self.live)

    def position_of(self, extid):
        # ids are str or int only (bools and floats are rejected at the boundary), so the
        # id itself is the key: 1 and "1" are different keys
        return self.id_to_pos.get(extid)

    @property
    def tombstones(self) -> int:
        return self.n - self.live

    # -- writing (called in LSN order by the database) -------------------------------------
    def _reserve(self, extra: int):
        need = self.n + extra
        cap = self._X.shape[0]
        if need <= cap:
            return
        new_cap = max(_MIN_CAPACITY, cap * 2, need)
        X = np.zeros((new_cap, self.dim), np.float32)
        X[: self.n] = self._X[: self.n]
        xn = np.zeros(new_cap, np.float32)
        xn[: self.n] = self._xnorm2[: self.n]
        alive = np.zeros(new_cap, np.bool_)
        alive[: self.n] = self._alive[: self.n]
        rowids = np.full(new_cap, -1, np.int64)
        rowids[: self.n] = self._rowids[: self.n]
        with self._lock:
            self._X, self._xnorm2, self._alive, self._rowids = X, xn, alive, rowids

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors as the index stores them (unit rows for cosine)."""
        if self.metric.normalize:
            if vectors.shape[0] == 1:
                v = vectors[0].astype(np.float64)
                return (v / math.sqrt(v @ v)).astype(np.float32).reshape(1, -1)
            norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
            return (vectors / norms[:, None]).astype(np.float32)
        return vectors

    def plan_upsert(self, ids: list) -> tuple[list, list]:
        """Old positions (or -1) and the new rowids an upsert of ``ids`` will use.

        Deterministic in the state, so WAL replay assigns exactly the same rowids.
        """
        get = self.id_to_pos.get
        old = [get(extid, -1) for extid in ids]
        rowids = list(range(self.next_rowid, self.next_rowid + len(ids)))
        return old, rowids

    def apply_upsert(self, ids: list, vectors: np.ndarray, metas: list, old: list,
                     rowids: list, *, stored: np.ndarray | None = None, encoded=None):
        """``encoded``: (index, future of index.encode(stored)) started before the write was
        logged; used only if that index is still the live one."""
        with self.mutate_lock:
            self._apply_upsert(ids, vectors, metas, old, rowids, stored, encoded)

    def _apply_upsert(self, ids, vectors, metas, old, rowids, stored, encoded=None):
        m = len(ids)
        self.mutations += 1
        if old and max(old) >= 0:          # some ids existed: their old rows die
            for pos in old:
                if pos >= 0:
                    self._kill(pos)
        self._reserve(m)
        start = self.n
        if stored is None:
            stored = self.prepare(vectors)
        self._X[start:start + m] = stored
        self._xnorm2[start:start + m] = np.einsum("ij,ij->i", stored, stored)
        self._rowids[start:start + m] = rowids
        self.extids.extend(ids)
        self.metas.extend(metas)
        self.id_to_pos.update(zip(ids, range(start, start + m)))
        fields = self._fields
        if fields is not None:
            for i, md in enumerate(metas):
                if md:
                    fields.add(start + i, md)
        self._alive[start:start + m] = True
        self.next_rowid = rowids[-1] + 1 if rowids else self.next_rowid
        with self._lock:
            self.n = start + m
            self.live += m
        index = self.index
        if index is not None:
            if encoded is not None and encoded[0] is index:
                lists, codes = encoded[1].result()
            else:
                lists, codes = index.encode(stored)
            index.add(np.arange(start, start + m, dtype=np.int64), lists, codes,
                      alive=self._alive[: self.n])

    def _kill(self, pos: int):
        if not self._alive[pos]:
            return
        self._alive[pos] = False
        md = self.metas[pos]
        if md and self._fields is not None:
            self._fields.remove(pos, md)
        self.metas[pos] = None
        extid = self.extids[pos]
        if self.id_to_pos.get(extid) == pos:
            del self.id_to_pos[extid]
        self.live -= 1

    def apply_delete(self, positions: list) -> int:
        killed = 0
        with self.mutate_lock:
            self.mutations += 1
            for pos in positions:
                if pos is not None and pos >= 0 and self._alive[pos]:
                    self._kill(pos)
                    killed += 1
        return killed

    def load_rows(self, rowids: np.ndarray, vectors: np.ndarray, ids: list, metas: list):
        """Bulk load at open (rows in rowid order, all alive)."""
        m = len(ids)
        if m == 0:
            return
        self.apply_upsert(ids, vectors, metas, [-1] * m, list(map(int, rowids)))

    # -- checkpoint segments ---------------------------------------------------------------------
    def capture(self) -> dict:
        """A consistent copy of this state for a checkpoint (the caller holds writes off).

        Rows never change in place, so the row arrays are shared, not copied; the alive
        mask and the lists are copied.
        """
        with self.mutate_lock:
            n = self.n
            out = {
                "meta": {"n": n, "live": self.live, "next_rowid": self.next_rowid,
                         "spec": str(self.spec), "mutations": self.mutations},
                "X": self._X[:n],
                "alive": self._alive[:n].copy(),
                "rowids": self._rowids[:n],
                "extids": list(self.extids[:n]),
                "metas": list(self.metas[:n]),
            }
            if self.index is not None:
                out["ivf"] = self.index.to_arrays()
        return out

    @classmethod
    def restore(cls, config: VersionConfig, seg: dict) -> "VersionState":
        """Rebuild from checkpoint segments (positions, tombstones and lists as they were).

        The segment arrays may be views of the LMDB map (see segments.read): everything kept
        is copied into this state's own buffers."""
        meta = seg["meta"]
        state = cls(config, meta["next_rowid"])
        n = meta["n"]
        state._reserve(n)
        X = seg["X"].reshape(n, config.dim)
        state._X[:n] = X
        state._xnorm2[:n] = np.einsum("ij,ij->i", X, X)
        state._alive[:n] = seg["alive"]
        state._rowids[:n] = seg["rowids"]
        state.extids = list(seg["extids"])
        state.metas = list(seg["metas"])
        alive = seg["alive"]
        live_pos = np.flatnonzero(alive).tolist()
        ext = state.extids
        if len(live_pos) == n:
            state.id_to_pos = dict(zip(ext, range(n)))
        else:
            state.id_to_pos = dict(zip([ext[p] for p in live_pos], live_pos))
        state.n, state.live = n, meta["live"]
        state._fields = None            # built from metas on first filtered query
        state.mutations = state.checkpointed_mutations = 0
        if "ivf" in seg:
            from .ivf import IVFIndex
            ivf_meta, arrays = seg["ivf"]
            state.index = IVFIndex.from_arrays(ivf_meta, arrays)
        return state
