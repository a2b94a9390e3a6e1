"""State of one namespace version: rows read in place, derived structures in memory.

Rows live at dense positions ``0..n-1`` in append order, and a row's position is its
rowid (format 2). The rows themselves are in the version's row file
(:class:`~.arrayfile.RowFile`), mapped, never copied into the heap. A delete, or an upsert
of an id that exists, leaves a tombstone at the old position (``alive[pos] = False``); an
upsert appends the new row at the next position. Rows therefore never change in place, so
a concurrent query sees each row either before or after a write, never torn. Tombstones
stay until a compaction.

In memory: the alive mask and squared norms (one byte and four per row), the id map
(:class:`~.idmap.IdMap`), the field indexes and the IVF lists. A checkpoint writes them as
one array bundle (:meth:`VersionState.capture`); reopening maps that bundle
(:meth:`VersionState.restore`): the id map, field indexes and IVF lists are then views of
it, and only the rows written after the checkpoint (the WAL tail) are kept as Python
objects. After a checkpoint the state is rebased on its new bundle (:meth:`rebase`), so
the tail stays bounded. When no checkpoint can be used, :meth:`load_rows` rebuilds from
LMDB's ids and records and the row file (slow: per-row Python).

Writes are serialised by the database (one apply at a time, in LSN order); readers take a
:class:`View` (array references and a row count) and need no lock.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np

from .errors import CorruptionError, InvalidInput
from .fieldindex import FieldIndex
from .idmap import IdMap
from .indexspec import IndexSpec
from .kernels.distances import resolve_metric
from .types import VersionConfig

_MIN_CAPACITY = 1024
#: a scan cursor is ``gen << 40 | position`` (positions stay below 2**40)
_CURSOR_GEN_SHIFT = 40


@dataclass(frozen=True)
class View:
    """A consistent snapshot of the searchable arrays for one query."""

    X: np.ndarray          # (n, dim) float32 rows (unit rows for cosine), a mapped view
    xnorm2: np.ndarray     # (n,) float32 squared norms of X rows
    alive: np.ndarray      # (n,) bool
    n: int
    live: int


class VersionState:
    """Rows, ids, tombstones, field indexes and IVF lists of one version."""

    def __init__(self, config: VersionConfig, next_rowid: int = 0, *, rows=None):
        self.config = config
        self.metric = resolve_metric(config.metric)
        self.dim = config.dim
        self.rows = rows                 # a RowFile (None only in unit tests of the state)
        self.gen = 0                     # row file generation (a compaction starts a new one)
        # survivors of the compactions that ended earlier generations (gen -> positions),
        # so a scan cursor taken before one still finds its place
        self.remaps: dict[int, np.ndarray] = {}
        self.next_rowid = next_rowid
        self.n = 0
        self.live = 0
        self._xnorm2 = np.zeros(0, np.float32)
        self._alive = np.zeros(0, np.bool_)
        self._X = np.zeros((0, self.dim), np.float32)   # used when rows is None
        self.ids = IdMap()
        # metadata of rows the field index holds in its mutable part (positions at or past
        # its base): what remove() needs; rows of the base are answered through ``alive``
        self.metas: dict[int, dict] = {}
        self._fields: FieldIndex | None = FieldIndex()
        self._lock = threading.Lock()   # guards array swaps on growth
        self._view = None               # (n, live, arrays..., View) of the last view()
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
        """The metadata field indexes (built from the rows' metadata on first use after a
        rebuild without a checkpoint)."""
        fields = self._fields
        if fields is None:
            with self.mutate_lock:
                if self._fields is None:
                    built = FieldIndex()
                    alive = self._alive
                    for pos, md in self.metas.items():
                        if md and alive[pos]:
                            built.add(pos, md)
                    self._fields = built
                fields = self._fields
        return fields

    # -- reading ---------------------------------------------------------------------
    def _rows_view(self, n: int) -> np.ndarray:
        return self._X[:n] if self.rows is None else self.rows.rows(n)

    def view(self) -> View:
        """The searchable arrays now. The same View object is handed out until a write
        changes n or live, or grows an array (every query asks; building one costs
        more than the checks)."""
        with self._lock:
            n, live = self.n, self.live
            base = self._X if self.rows is None else self.rows.base()
            cached = self._view
            if (cached is not None and cached[0] == n and cached[1] == live
                    and cached[2] is base and cached[3] is self._xnorm2
                    and cached[4] is self._alive):
                return cached[5]
            view = View(self._rows_view(n), self._xnorm2[:n], self._alive[:n], n, live)
            self._view = (n, live, base, self._xnorm2, self._alive, view)
            return view

    def position_of(self, extid):
        # ids are str or int only (bools and floats are rejected at the boundary), so the
        # id itself is the key: 1 and "1" are different keys
        pos = self.ids.lookup(extid, self._alive)
        return None if pos < 0 else pos

    def row_vector(self, pos: int) -> np.ndarray:
        """A copy of the stored row at ``pos`` (unit length for cosine)."""
        return np.array(self._rows_view(pos + 1)[pos])

    def extid_at(self, pos: int):
        return self.ids.at(pos)

    def extids_at(self, positions) -> list:
        return self.ids.at_many(positions)

    def heap_bytes(self) -> int:
        """Heap this state holds: alive + norms per position, and ~100 bytes for each row
        written since the last checkpoint (its id, metadata and field-index entries)."""
        return self.n * 5 + (self.n - self.ids.base_n) * 100

    def cursor_of(self, pos: int) -> int:
        """A scan cursor for position ``pos``: the position, with the generation above it."""
        return (self.gen << _CURSOR_GEN_SHIFT) | pos

    def cursor_position(self, cursor: int) -> int:
        """The position in this generation of the last row at or before ``cursor``."""
        gen, pos = cursor >> _CURSOR_GEN_SHIFT, cursor & ((1 << _CURSOR_GEN_SHIFT) - 1)
        if gen > self.gen:
            raise InvalidInput(f"scan cursor {cursor!r} is not valid for namespace "
                               f"{self.config.name!r}; expected a cursor from its scan()")
        while gen < self.gen:
            keep = self.remaps.get(gen)
            if keep is None:
                raise InvalidInput(
                    f"scan cursor {cursor!r} of namespace {self.config.name!r} was taken before "
                    "a compaction this process did not see; start the scan again",
                    hint="scan(after=None) starts from the first row")
            pos = int(np.searchsorted(keep, pos, side="right")) - 1
            gen += 1
        return pos

    @property
    def tombstones(self) -> int:
        return self.n - self.live

    # -- writing (called in LSN order by the database) -------------------------------------
    def _reserve(self, extra: int):
        need = self.n + extra
        cap = self._alive.shape[0]
        if need <= cap:
            return
        self._grow(max(_MIN_CAPACITY, cap * 2, need))

    def _grow(self, new_cap: int):
        """Alive flags, norms (and rows, without a row file) copied into owned arrays of
        ``new_cap`` positions, swapped in whole."""
        xn = np.zeros(new_cap, np.float32)
        xn[: self.n] = self._xnorm2[: self.n]
        alive = np.zeros(new_cap, np.bool_)
        alive[: self.n] = self._alive[: self.n]
        X = self._X
        if self.rows is None:
            X = np.zeros((new_cap, self.dim), np.float32)
            X[: self.n] = self._X[: self.n]
        with self._lock:
            self._xnorm2, self._alive, self._X = xn, alive, X

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors as the index stores them (unit rows for cosine)."""
        if self.metric.normalize:
            if vectors.shape[0] == 1:       # float64 maths as below: rows stored one at a
                v = vectors[0].astype(np.float64)   # time and in batches match bit for bit
                return (v / math.sqrt(v @ v)).astype(np.float32).reshape(1, -1)
            norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
            return (vectors / norms[:, None]).astype(np.float32)
        return np.ascontiguousarray(vectors, np.float32)

    def plan_upsert(self, ids: list) -> tuple[list, list]:
        """Old positions (or -1) and the new rowids (= positions) an upsert of ``ids`` will
        use. Deterministic in the state, so WAL replay assigns exactly the same rowids."""
        old = self.ids.lookup_many(ids, self._alive)
        rowids = list(range(self.next_rowid, self.next_rowid + len(ids)))
        return old, rowids

    def apply_upsert(self, ids: list, vectors: np.ndarray, metas: list, old: list,
                     rowids: list, *, stored: np.ndarray | None = None, encoded=None,
                     write_rows: bool = True):
        """``encoded``: (index, future of index.encode(stored)) started before the write was
        logged; used only if that index is still the live one. ``write_rows=False``: the
        rows are already in the row file (a read-only process following the writer)."""
        with self.mutate_lock:
            self._apply_upsert(ids, vectors, metas, old, rowids, stored, encoded, write_rows)

    def _apply_upsert(self, ids, vectors, metas, old, rowids, stored, encoded, write_rows):
        m = len(ids)
        self.mutations += 1
        if old and max(old) >= 0:          # some ids existed: their old rows die
            for pos in old:
                if pos >= 0:
                    self._kill(pos)
        self._reserve(m)
        start = self.n
        if rowids and rowids[0] != start:
            raise CorruptionError(f"namespace {self.config.name!r}: rowid {rowids[0]} is not "
                                  f"the next position {start} (positions must be dense)")
        if stored is None:
            stored = self.prepare(vectors)
        if self.rows is None:
            self._X[start:start + m] = stored
        elif write_rows:
            self.rows.write(start, stored)
        else:
            self.rows.rows(start + m)       # map what was written (maybe by the writer)
        self._xnorm2[start:start + m] = np.einsum("ij,ij->i", stored, stored)
        self.ids.append(ids, start)
        fields = self._fields
        for i, md in enumerate(metas):
            if md:
                self.metas[start + i] = md
                if fields is not None:
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
        md = self.metas.pop(pos, None)
        fields = self._fields
        if md and fields is not None and pos >= fields.base_n:
            fields.remove(pos, md)
        self.ids.forget(self.ids.at(pos), pos)
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

    def load_rows(self, n: int, alive_ids: dict, metas: dict):
        """Rebuild without a checkpoint: ``n`` positions, ``alive_ids`` position -> id of
        the live rows (from LMDB), ``metas`` position -> metadata; rows from the row file."""
        self._reserve(n)
        X = self._rows_view(n)
        alive = np.zeros(n, bool)
        if alive_ids:
            alive[np.fromiter(alive_ids, np.int64, len(alive_ids))] = True
        xn = np.empty(n, np.float32)
        for lo in range(0, n, 65536):
            chunk = X[lo:lo + 65536]
            xn[lo:lo + len(chunk)] = np.einsum("ij,ij->i", chunk, chunk)
        tail = [None] * n
        for pos, extid in alive_ids.items():
            tail[pos] = extid
        self.ids = IdMap()
        self.ids.tail = tail
        self.ids.recent = {extid: pos for pos, extid in alive_ids.items()}
        self.metas = {p: md for p, md in metas.items() if md}
        self._fields = None               # built from metas on first filtered query
        with self._lock:
            self._xnorm2[:n] = xn
            self._alive[:n] = alive
            self.n, self.live = n, len(alive_ids)
        self.next_rowid = max(self.next_rowid, n)

    # -- checkpoints ---------------------------------------------------------------------------
    def capture(self) -> tuple[dict, dict]:
        """(meta, arrays) of this state for a checkpoint bundle (the caller holds writes
        off). Rows are not part of it: they are in the row file already."""
        with self.mutate_lock:
            n = self.n
            alive = self._alive[:n].copy()
            meta = {"n": n, "live": self.live, "next_rowid": self.next_rowid,
                    "spec": str(self.spec), "mutations": self.mutations, "gen": self.gen}
            arrays = {"alive": alive, "xnorm2": self._xnorm2[:n]}
            arrays.update(self.ids.to_arrays(n, alive))
            fmeta, farrays = self.fields.to_arrays(n, alive)
            meta["fields"] = fmeta
            arrays.update({"fields." + k: v for k, v in farrays.items()})
            if self.index is not None:
                imeta, iarrays = self.index.to_arrays(alive)
                meta["ivf"] = imeta
                arrays.update({"ivf." + k: v for k, v in iarrays.items()})
            meta["captured_index"] = id(self.index) if self.index is not None else 0
        return meta, arrays

    @classmethod
    def restore(cls, config: VersionConfig, meta: dict, arrays: dict, rows) -> "VersionState":
        """The state saved by :meth:`capture`, its arrays views of the bundle's mapping.
        Alive and norms too: the mapping is private copy-on-write (arrayfile.read_bundle), so
        a delete writes a private copy of one page and never the file, and the first write
        past n copies them into grown arrays (:meth:`_reserve`). Nothing here reads every
        row (copying them made the open grow with n)."""
        state = cls(config, meta["next_rowid"], rows=rows)
        state.gen = meta.get("gen", 0)
        n = meta["n"]
        alive, xnorm2 = arrays["alive"], arrays["xnorm2"]
        if (len(alive), len(xnorm2)) != (n, n):
            raise CorruptionError(f"namespace {config.name!r}: the checkpoint holds "
                                  f"{len(alive)} alive flags and {len(xnorm2)} norms for "
                                  f"{n} rows")
        if (alive.flags.writeable and xnorm2.flags.writeable and alive.dtype == np.bool_
                and xnorm2.dtype == np.float32):
            state._alive, state._xnorm2 = alive, xnorm2
        else:                               # not a private mapping: own copies
            state._reserve(n)
            state._alive[:n] = alive
            state._xnorm2[:n] = xnorm2
        state.rows.rows(n)                  # the file must hold every checkpointed row
        state._adopt(meta, arrays, n)
        state.n, state.live = n, meta["live"]
        state.mutations = state.checkpointed_mutations = 0
        if "ivf" in meta:
            from .ivf import IVFIndex
            state.index = IVFIndex.from_arrays(meta["ivf"], _sub(arrays, "ivf."))
        return state

    def _own_arrays(self):
        """Alive flags and norms copied out of the bundle mapping :meth:`restore` adopted,
        once, at the first checkpoint after it (which rewrites them anyway): otherwise that
        mapping, and the disk of the unlinked bundle file behind it, stays held for as long
        as no row is appended."""
        if not (self._alive.flags.owndata and self._xnorm2.flags.owndata):
            self._grow(max(_MIN_CAPACITY, self._alive.shape[0]))

    def _adopt(self, meta: dict, arrays: dict, n: int):
        self.ids, self._fields, self.metas = _base_structures(meta, arrays, n)

    def rebase(self, meta: dict, arrays: dict):
        """After a checkpoint: use its bundle as the base, keep only later rows in the tail
        (called with the bundle of this state's :meth:`capture`). The new id map and field
        indexes are complete before they replace the old ones, so a concurrent query sees
        one or the other, never a half-built one."""
        n0 = meta["n"]
        with self.mutate_lock:
            self._own_arrays()
            old_ids, old_metas = self.ids, self.metas
            ids, fields, metas = _base_structures(meta, arrays, n0)
            ids.tail = old_ids.tail[n0 - old_ids.base_n:]
            ids.recent = {x: p for x, p in old_ids.recent.items() if p >= n0}
            for pos in range(n0, self.n):
                md = old_metas.get(pos)
                if md and self._alive[pos]:
                    metas[pos] = md
                    fields.add(pos, md)
            self.ids, self._fields, self.metas = ids, fields, metas
            index = self.index
            if index is not None and "ivf" in meta and id(index) == meta["captured_index"]:
                index.rebase(meta["ivf"], _sub(arrays, "ivf."), n0)


def _base_structures(meta: dict, arrays: dict, n: int):
    """(id map, field indexes, tail metadata) resting on a checkpoint bundle of n rows."""
    fields = FieldIndex()
    fields.load_arrays(meta["fields"], _sub(arrays, "fields."), n)
    return IdMap(arrays), fields, {}


def _sub(arrays: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
