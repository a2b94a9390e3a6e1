"""Per-field metadata indexes and the bitmap filter evaluator.

A :class:`FieldIndex` belongs to one namespace version. Rows live at dense positions
``0..n-1``; the caller adds each row's metadata once (on write, or on open while
rebuilding from storage) and removes it with the same metadata before re-adding or
deleting. A compiled filter (:func:`~.filters.compile_filter`) is then answered from the
indexes alone, as a boolean bitmap, without decoding any record's metadata.

Per field path (a tuple of keys; nested dicts are flattened so ``a.b`` is indexed too):

* equality: an inverted index from a typed key (:func:`~.filters.scalar_key`, so ``True``,
  ``1`` and ``"1"`` differ while ``1`` and ``1.0`` agree) to the set of positions. The
  sorted numpy array of a key's positions is cached until a write touches that key.
* exists: the set of positions where the path is present (any value, including None,
  lists and dicts), with the same cached array.
* numeric: every int/float value (list elements included) as parallel arrays sorted by
  float64 value, answered with ``np.searchsorted``. Writes go to a small pending delta
  (new rows, removed rows) that queries scan directly; once the delta passes
  ``merge_threshold`` the arrays are rebuilt on the next range query. Ints that float64
  cannot hold exactly are kept too, and ties at the float64 boundary are decided with
  exact Python comparisons, so ranges agree with :func:`~.filters.matches` for any int.

Writes cost O(number of paths and values in the row). Complements (``$ne``, ``$nin``,
``$exists: False``, ``$not``) are taken within the caller's ``alive`` mask.

Thread-safety: one lock guards every structure; ``add``/``remove`` hold it, and
``evaluate`` takes it per leaf while it reads a set, builds a cached array or rebuilds
the numeric arrays. Arrays, once published, are never mutated (a rebuild replaces them),
so bitmaps are built outside the lock. Evaluates may run concurrently with each other and
with writes; a filter that reads several fields sees each leaf at its own instant, so the
caller that needs one consistent view serialises writes against the query (as the engine
does per namespace version).
"""

from __future__ import annotations

import hashlib
import math
import threading
from itertools import chain
from typing import Any, Iterator

import numpy as np

from .errors import InvalidInput
from .filters import And, Field, Node, Not, Or, compile_filter, is_number, scalar_key

__all__ = ["FieldIndex"]

_EMPTY = np.zeros(0, dtype=np.int64)


def _walk(metadata: dict, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every (path, value) in *metadata*, nested dicts flattened; non-str keys skipped."""
    for key, value in metadata.items():
        if not isinstance(key, str):
            continue
        path = prefix + (key,)
        yield path, value
        if isinstance(value, dict):
            yield from _walk(value, path)


def _to_float(v: Any) -> float:
    """float64 of an int/float, saturating to +-inf for ints beyond float range."""
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def _exact(v: Any) -> bool:
    """Whether float64 represents *v* exactly (always true for floats)."""
    if isinstance(v, float):
        return True
    try:
        return float(v) == v
    except OverflowError:
        return False


def _changes_of(changes: dict, key) -> "_Changes":
    out = changes.get(key)
    if out is None:
        out = changes[key] = _Changes()
    return out


def _sorted_positions(positions) -> np.ndarray:
    if not positions:
        return _EMPTY
    arr = np.fromiter(positions, dtype=np.int64, count=len(positions))
    # a set of ints written in order mostly iterates in order: the stable sort (radix /
    # timsort) takes 1.8 ms for 300k such positions where the default took 14.5
    arr.sort(kind="stable")
    arr.setflags(write=False)
    return arr


#: Filter results a :class:`FieldIndex` keeps (:meth:`FieldIndex.evaluate`), least
#: recently used out first: at most this many bytes (one bool a row; a result larger than
#: a quarter of it is not kept) and this many results.
RESULT_CACHE_BYTES = 16 << 20
RESULT_CACHE_ENTRIES = 32


def _scatter(bitmap: np.ndarray, positions: np.ndarray, n: int, is_sorted: bool,
             end: int | None = None) -> None:
    """Set bitmap[p] for every p in *positions* below n. ``end``: a bound on the positions
    (every one < end), so that a bitmap of n >= end rows takes them without the test
    (the test and its copy cost as much as the scatter: 18k positions, ~20 us each)."""
    if positions.size == 0:
        return
    if end is not None and end <= n:
        pass
    elif is_sorted:
        positions = positions[: np.searchsorted(positions, n)]
    else:
        positions = positions[positions < n]
    bitmap[positions] = True


class _Numeric:
    """The sorted numeric values of one field, with a pending write delta."""

    __slots__ = ("entries", "pending", "dead", "vals", "poss", "exact", "inexact", "end")

    def __init__(self) -> None:
        self.entries: dict[int, tuple] = {}  # authoritative: pos -> numeric values
        self.pending: dict[int, tuple] = {}  # added since the last rebuild
        self.dead: set[int] = set()  # positions whose built entries are stale
        self.vals = np.zeros(0, dtype=np.float64)
        self.poss = _EMPTY
        self.exact: list | None = None  # Python values in sorted order, if any inexact
        self.inexact = False
        self.end = 0  # 1 + the largest position in poss

    def add(self, pos: int, values: tuple) -> None:
        self.entries[pos] = values
        self.pending[pos] = values

    def remove(self, pos: int) -> None:
        if self.entries.pop(pos, None) is None:
            return
        if self.pending.pop(pos, None) is None or pos in self.dead:
            self.dead.add(pos)
        # a pending-only row (added after the last rebuild) leaves nothing behind

    def delta(self) -> int:
        return len(self.pending) + len(self.dead)

    def rebuild(self) -> None:
        poss, raw, vals, self.inexact = _numeric_arrays(self.entries)
        order = np.argsort(vals, kind="stable")
        self.vals = vals[order]
        self.poss = poss[order]
        self.vals.setflags(write=False)
        self.poss.setflags(write=False)
        self.end = int(poss.max()) + 1 if len(raw) else 0
        self.exact = [raw[j] for j in order.tolist()] if self.inexact else None
        self.pending = {}
        self.dead = set()


def _numeric_arrays(entries: dict) -> tuple[np.ndarray, list, np.ndarray, bool]:
    """(positions, values, their float64, whether any is inexact) of a numeric index's
    entries (position -> tuple of numbers), one item per value, in the entries' order."""
    n = len(entries)
    lens = np.fromiter(map(len, entries.values()), dtype=np.int64, count=n)
    keys = np.fromiter(entries.keys(), dtype=np.int64, count=n)
    poss = keys if int(lens.sum()) == n else np.repeat(keys, lens)
    raw = list(chain.from_iterable(entries.values()))
    vals = _floats(raw)
    # float64 holds every float and every int below 2^53 exactly: only larger magnitudes
    # (and the +-inf of an int beyond float range) need the exact test
    big = np.flatnonzero(np.abs(vals) >= _EXACT_INTS)
    return poss, raw, vals, not all(_exact(raw[j]) for j in big.tolist())


#: every integer of smaller magnitude is exactly a float64
_EXACT_INTS = float(2 ** 53)


def _floats(raw: list) -> np.ndarray:
    """float64 of the numbers ``raw`` (:func:`_to_float` of each): numpy's conversion when
    they are all plain ints and floats (the same correctly rounded values as ``float``, in C:
    a rebuild over 400k rows took 0.5 s value by value), else value by value."""
    if set(map(type, raw)) <= {int, float}:
        try:
            return np.array(raw, dtype=np.float64).reshape(-1)
        except OverflowError:               # an int beyond float range: saturate below
            pass
    return np.fromiter((_to_float(v) for v in raw), dtype=np.float64, count=len(raw))


def _range_slice(num: _Numeric, op: str, c: Any) -> np.ndarray:
    """Positions in the built arrays whose value satisfies ``value op c`` (exactly)."""
    fc = _to_float(c)
    vals = num.vals
    lo_tie = int(np.searchsorted(vals, fc, side="left"))
    hi_tie = int(np.searchsorted(vals, fc, side="right"))
    # float64 rounding is monotone: values strictly outside the tie block are decided.
    if op in ("$gt", "$gte"):
        definite = num.poss[hi_tie:]
    else:
        definite = num.poss[:lo_tie]
    if lo_tie == hi_tie:
        return definite
    if not num.inexact and _exact(c):
        # every tied value equals c exactly
        if op in ("$gte", "$lte"):
            return num.poss[lo_tie:] if op == "$gte" else num.poss[:hi_tie]
        return definite
    exact = num.exact
    ties = [
        j
        for j in range(lo_tie, hi_tie)
        if _cmp(op, exact[j] if exact is not None else float(vals[j]), c)
    ]
    if not ties:
        return definite
    return np.concatenate([definite, num.poss[np.asarray(ties, dtype=np.int64)]])


def _cmp(op: str, x: Any, c: Any) -> bool:
    if op == "$gt":
        return x > c
    if op == "$gte":
        return x >= c
    if op == "$lt":
        return x < c
    return x <= c


class _Changes:
    """Positions added to and removed from a set since its sorted array was cached."""

    __slots__ = ("added", "removed")

    def __init__(self) -> None:
        self.added: set[int] = set()
        self.removed: set[int] = set()

    def add(self, pos: int) -> None:
        if pos in self.removed:
            self.removed.discard(pos)       # back in the cached array's set
        else:
            self.added.add(pos)

    def remove(self, pos: int) -> None:
        if pos in self.added:
            self.added.discard(pos)
        else:
            self.removed.add(pos)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed)

    def applied(self, cached: np.ndarray) -> np.ndarray | None:
        """``cached`` with these changes, sorted; None when they do not fit it (a removed
        position it does not hold): build again. New rows take new positions, so the
        usual change is an append: a write between two filtered queries then costs its
        own positions and one copy, not a sort of every one (300k rows of one value: 27 ms
        against ~0.3 ms)."""
        arr = cached
        if self.removed:
            gone = np.fromiter(self.removed, dtype=np.int64, count=len(self.removed))
            gone.sort()
            at = np.searchsorted(arr, gone)
            if at.size and (at[-1] >= arr.size or not np.array_equal(arr[at], gone)):
                return None
            arr = np.delete(arr, at)
        if self.added:
            new = np.fromiter(self.added, dtype=np.int64, count=len(self.added))
            new.sort()
            if arr.size and new[0] <= arr[-1]:
                arr = np.union1d(arr, new)      # sorted, each position once
            else:
                arr = np.concatenate([arr, new])
        arr.setflags(write=False)               # a new array: there was a change
        return arr


class _Path:
    """All index structures of one field path."""

    __slots__ = ("eq", "eq_cache", "eq_changes", "exists", "exists_cache", "exists_changes",
                 "numeric")

    def __init__(self) -> None:
        self.eq: dict[Any, set[int]] = {}
        self.eq_cache: dict[Any, np.ndarray] = {}
        # what changed since a key's cached array was built (only while it is cached): the
        # next read applies it instead of sorting the whole set again (_Changes)
        self.eq_changes: dict[Any, _Changes] = {}
        self.exists: set[int] = set()
        self.exists_cache: np.ndarray | None = None
        self.exists_changes = _Changes()
        self.numeric: _Numeric | None = None

    def empty(self) -> bool:
        return not self.exists


class FieldIndex:
    """Per-field equality, existence and numeric indexes over rows at positions 0..n-1.

    ``merge_threshold`` bounds the pending numeric delta of a field (rows written since
    the sorted arrays were built) before a range query rebuilds them: queries scan the
    delta in Python, rebuilds cost O(m log m) for the field's m values. The default
    (``None``) is ``64 + m // 64``; 0 rebuilds on every range query after a write.
    """

    def __init__(self, merge_threshold: int | None = None) -> None:
        self._lock = threading.RLock()
        self._paths: dict[tuple[str, ...], _Path] = {}
        self._rows = 0
        self._merge_threshold = merge_threshold
        self._base: _Frozen | None = None   # positions below base_n, from a checkpoint
        self.base_n = 0
        # the last results of evaluate (:data:`RESULT_CACHE_BYTES`): (filter, n, alive) ->
        # (alive, bitmap), valid while _generation (every write) stays the same
        self._generation = 0
        self._results: dict = {}
        self._results_gen = 0
        self._results_bytes = 0

    # ------------------------------------------------------------------ writes

    def __len__(self) -> int:
        return self._rows

    def clear(self) -> None:
        """Forget every row."""
        with self._lock:
            self._paths = {}
            self._rows = 0
            self._generation += 1

    def add(self, pos: int, metadata: dict | None) -> None:
        """Index the row at *pos* (which must not be indexed already)."""
        pos = int(pos)
        with self._lock:
            self._rows += 1
            self._generation += 1
            if not metadata:
                return
            for path, value in _walk(metadata):
                entry = self._paths.get(path)
                if entry is None:
                    entry = self._paths[path] = _Path()
                entry.exists.add(pos)
                if entry.exists_cache is not None:
                    entry.exists_changes.add(pos)
                items = value if isinstance(value, list) else (value,)
                numbers = []
                for x in items:
                    key = scalar_key(x)
                    if key is None:
                        continue
                    bucket = entry.eq.get(key)
                    if bucket is None:
                        bucket = entry.eq[key] = set()
                    if pos not in bucket:       # (a list may hold a value twice)
                        bucket.add(pos)
                        if key in entry.eq_cache:
                            _changes_of(entry.eq_changes, key).add(pos)
                    if is_number(x):
                        numbers.append(x)
                if numbers:
                    if entry.numeric is None:
                        entry.numeric = _Numeric()
                    entry.numeric.add(pos, tuple(numbers))

    def remove(self, pos: int, metadata: dict | None) -> None:
        """Un-index the row at *pos*; *metadata* is what was passed to :meth:`add`."""
        pos = int(pos)
        with self._lock:
            self._rows = max(0, self._rows - 1)
            self._generation += 1
            if not metadata:
                return
            for path, value in _walk(metadata):
                entry = self._paths.get(path)
                if entry is None:
                    continue
                entry.exists.discard(pos)
                if entry.exists_cache is not None:
                    entry.exists_changes.remove(pos)
                items = value if isinstance(value, list) else (value,)
                for x in items:
                    key = scalar_key(x)
                    if key is None:
                        continue
                    bucket = entry.eq.get(key)
                    if bucket is not None and pos in bucket:
                        bucket.discard(pos)
                        if not bucket:
                            del entry.eq[key]
                        if key in entry.eq_cache:
                            _changes_of(entry.eq_changes, key).remove(pos)
                if entry.numeric is not None:
                    entry.numeric.remove(pos)
                if entry.empty():
                    del self._paths[path]

    # ------------------------------------------------------------------ reads

    def _eq_positions(self, path: tuple[str, ...], key: Any) -> np.ndarray:
        base = self._base.eq(path, key) if self._base is not None else _EMPTY
        with self._lock:
            entry = self._paths.get(path)
            if entry is None:
                return base
            arr = entry.eq_cache.get(key)
            changes = entry.eq_changes.pop(key, None)
            if arr is not None and changes:
                arr = changes.applied(arr)
            if arr is None:
                arr = _sorted_positions(entry.eq.get(key, ()))
            entry.eq_cache[key] = arr
        # base positions are all below base_n, the tail's all at or above: still sorted
        return np.concatenate([base, arr]) if base.size else arr

    def _exists_positions(self, path: tuple[str, ...]) -> np.ndarray:
        base = self._base.exists(path) if self._base is not None else _EMPTY
        with self._lock:
            entry = self._paths.get(path)
            if entry is None:
                return base
            arr = entry.exists_cache
            changes = entry.exists_changes
            if arr is not None and changes:
                arr = changes.applied(arr)
            if changes:
                entry.exists_changes = _Changes()
            if arr is None:
                arr = _sorted_positions(entry.exists)
            entry.exists_cache = arr
        return np.concatenate([base, arr]) if base.size else arr

    def _range(self, node: Field, n: int) -> np.ndarray:
        bitmap = np.zeros(n, dtype=bool)
        if self._base is not None:
            base = self._base.numeric(node.path)
            if base is not None:
                _scatter(bitmap, _range_slice(base, node.op, node.value), n, is_sorted=False,
                         end=base.end)
        with self._lock:
            entry = self._paths.get(node.path)
            num = entry.numeric if entry is not None else None
            if num is None or not num.entries:
                return bitmap
            limit = self._merge_threshold
            if limit is None:
                limit = 64 + num.poss.size // 64
            if num.delta() > limit:
                num.rebuild()
            pending = list(num.pending.items())
            stale = set(num.dead)
            stale.update(num.pending)
            stale_arr = np.fromiter(stale, dtype=np.int64, count=len(stale)) if stale else None
            hit = _range_slice(num, node.op, node.value)
            end = num.end
        if stale_arr is not None and hit.size:
            hit = hit[~np.isin(hit, stale_arr)]
        _scatter(bitmap, hit, n, is_sorted=False, end=end)
        op, c = node.op, node.value
        for pos, values in pending:
            if pos < n and any(
                _cmp(op, x, c) for x in values if not (isinstance(x, float) and math.isnan(x))
            ):
                bitmap[pos] = True
        return bitmap

    def _field(self, node: Field, n: int, alive: np.ndarray) -> np.ndarray:
        op = node.op
        if op in ("$eq", "$ne"):
            bitmap = np.zeros(n, dtype=bool)
            _scatter(bitmap, self._eq_positions(node.path, scalar_key(node.value)), n, True)
            return bitmap if op == "$eq" else alive & ~bitmap
        if op in ("$in", "$nin"):
            bitmap = np.zeros(n, dtype=bool)
            for key in {scalar_key(v) for v in node.value}:
                _scatter(bitmap, self._eq_positions(node.path, key), n, True)
            return bitmap if op == "$in" else alive & ~bitmap
        if op == "$exists":
            bitmap = np.zeros(n, dtype=bool)
            _scatter(bitmap, self._exists_positions(node.path), n, True)
            return bitmap if node.value else alive & ~bitmap
        return self._range(node, n)

    def _eval(self, node: Node, n: int, alive: np.ndarray) -> np.ndarray:
        if isinstance(node, Field):
            return self._field(node, n, alive)
        if isinstance(node, And):
            if not node.children:
                return alive.copy()
            out = self._eval(node.children[0], n, alive)
            for child in node.children[1:]:
                if not out.any():
                    break
                out &= self._eval(child, n, alive)
            return out
        if isinstance(node, Or):
            out = self._eval(node.children[0], n, alive)
            for child in node.children[1:]:
                out |= self._eval(child, n, alive)
            return out
        if isinstance(node, Not):
            return alive & ~self._eval(node.child, n, alive)
        raise TypeError(f"not a filter node: {node!r}")

    def evaluate(self, node: Node | dict, n: int, alive: np.ndarray | None = None) -> np.ndarray:
        """Bool array of length *n*: True where the row matches *node* and is alive.

        The result is read-only, and the same array answers the same filter over the
        same ``alive`` until the next write (a query repeating its filter, a tenant's or a
        category's, skips the evaluation: 45-90 us at 60k rows for a range).

        *node* is a compiled filter (a raw ``where`` dict is compiled first). *alive* is
        the caller's bool mask of live rows (None: all n rows are alive); complements are
        taken within it, and the result is already ANDed with it.
        """
        if isinstance(node, dict):
            node = compile_filter(node)
        n = int(n)
        if n < 0:
            raise InvalidInput(f"n must be >= 0, got {n}")
        fresh = alive is None
        if fresh:
            alive = np.ones(n, dtype=bool)
        else:
            alive = np.asarray(alive, dtype=bool)
            if alive.shape != (n,):
                raise InvalidInput(
                    f"alive must be a bool array of shape ({n},), got shape {alive.shape}"
                )
        try:
            # without the caller's alive (a fresh all-True array) there is nothing to reuse
            key = None if fresh else (node, n, id(alive))
            hash(key)
        except TypeError:                   # an unhashable filter value: not cached
            key = None
        with self._lock:
            generation = self._generation
            if self._results_gen != generation:
                self._results, self._results_gen, self._results_bytes = {}, generation, 0
            hit = self._results.pop(key, None) if key is not None else None
            if hit is not None:
                self._results[key] = hit                # most recently used last
        if hit is not None and hit[0] is alive:
            return hit[1]
        out = self._eval(node, n, alive)
        out &= alive
        if key is not None and out.nbytes <= RESULT_CACHE_BYTES // 4:
            out.setflags(write=False)
            with self._lock:
                if self._generation == generation:
                    results = self._results
                    old = results.pop(key, None)
                    if old is not None:
                        self._results_bytes -= old[1].nbytes
                    while results and (len(results) >= RESULT_CACHE_ENTRIES or
                                       self._results_bytes + out.nbytes > RESULT_CACHE_BYTES):
                        _, dropped = results.pop(next(iter(results)))   # least recent
                        self._results_bytes -= dropped.nbytes
                    results[key] = (alive, out)
                    self._results_bytes += out.nbytes
        return out

    def count(self, node: Node | dict, n: int, alive: np.ndarray | None = None) -> int:
        """Number of alive rows that match *node*."""
        return int(np.count_nonzero(self.evaluate(node, n, alive)))

    def fields(self) -> list[str]:
        """The dotted paths currently indexed (sorted)."""
        with self._lock:
            paths = set(self._paths)
        if self._base is not None:
            paths.update(self._base.paths)
        return sorted(".".join(p) for p in paths)

    # ------------------------------------------------------------------ checkpoints

    def to_arrays(self, n: int, alive: np.ndarray) -> tuple[dict, dict]:
        """(meta, arrays) of every index over the live rows below ``n``: the base merged
        with the rows added since, dead positions dropped. Costs O(tail) Python plus
        numpy work over the base."""
        with self._lock:
            tail = {path: (
                [(key, np.fromiter(b, np.int64, len(b))) for key, b in entry.eq.items() if b],
                np.fromiter(entry.exists, np.int64, len(entry.exists)),
                None if entry.numeric is None else dict(entry.numeric.entries))
                for path, entry in self._paths.items()}
        base = self._base
        paths = sorted(set(tail) | (set(base.paths) if base is not None else set()))
        meta = {"paths": [], "inexact": {}}
        arrays = {}
        for i, path in enumerate(paths):
            eq_h1, eq_h2, eq_pos, ex_pos = [], [], [], []
            vals, poss, exact = [], [], []
            if base is not None and path in base.paths:
                h1, h2, off, pos = base.eq_arrays(path)
                counts = np.diff(off)
                eq_h1.append(np.repeat(h1, counts))
                eq_h2.append(np.repeat(h2, counts))
                eq_pos.append(pos)
                ex_pos.append(base.exists(path))
                num = base.numeric(path)
                if num is not None:
                    vals.append(num.vals)
                    poss.append(num.poss)
                    exact.append(num.exact if num.inexact else num.vals)
            if path in tail:
                pairs, exists, entries = tail[path]
                t1, t2, tp = [], [], []
                for key, b in pairs:
                    a1, a2 = _key_hash(key)
                    t1 += [a1] * len(b)
                    t2 += [a2] * len(b)
                    tp.append(b)
                if pairs:
                    eq_h1.append(np.array(t1, np.uint64))
                    eq_h2.append(np.array(t2, np.uint64))
                    eq_pos.append(np.concatenate(tp))
                ex_pos.append(exists)
                if entries:
                    tq, tv, tf, inexact = _numeric_arrays(entries)
                    poss.append(tq)
                    vals.append(tf)
                    exact.append(tv if inexact else tf)     # a list only when inexact
            h1 = np.concatenate(eq_h1) if eq_h1 else np.zeros(0, np.uint64)
            h2 = np.concatenate(eq_h2) if eq_h2 else np.zeros(0, np.uint64)
            pos = np.concatenate(eq_pos) if eq_pos else _EMPTY
            keep = (pos < n) & alive[np.minimum(pos, n - 1)] if n else np.zeros(len(pos), bool)
            h1, h2, pos = h1[keep], h2[keep], pos[keep]
            order = np.lexsort((pos, h2, h1))
            h1, h2, pos = h1[order], h2[order], pos[order]
            starts = np.flatnonzero(np.r_[True, (h1[1:] != h1[:-1]) | (h2[1:] != h2[:-1])]) \
                if len(h1) else _EMPTY
            ex = np.concatenate(ex_pos) if ex_pos else _EMPTY
            ex = np.sort(ex[(ex < n) & alive[np.minimum(ex, n - 1)]]) if n and len(ex) else _EMPTY
            if not len(ex):
                continue                    # the path has no live row any more
            p = f"f{len(meta['paths'])}."
            meta["paths"].append(list(path))
            arrays[p + "h1"], arrays[p + "h2"] = h1[starts], h2[starts]
            arrays[p + "off"] = np.r_[starts, len(h1)].astype(np.int64)
            arrays[p + "pos"] = pos
            arrays[p + "exists"] = ex
            if vals:
                v = np.concatenate(vals)
                q = np.concatenate(poss)
                keep = (q < n) & alive[np.minimum(q, n - 1)]
                order = np.argsort(v[keep], kind="stable")
                arrays[p + "vals"] = v[keep][order]
                arrays[p + "vpos"] = q[keep][order]
                # exact Python values are kept only for ints float64 cannot hold
                if any(isinstance(e, list) and not all(_exact(x) for x in e) for e in exact):
                    flat = [x for e in exact for x in (e if isinstance(e, list) else e.tolist())]
                    sel = np.flatnonzero(keep)[order].tolist()
                    meta["inexact"][str(len(meta["paths"]) - 1)] = [flat[j] for j in sel]
        return meta, arrays

    def load_arrays(self, meta: dict, arrays: dict, base_n: int) -> None:
        """Make the checkpointed indexes the base of this (empty) index."""
        with self._lock:
            self._base = _Frozen(meta, arrays)
            self.base_n = base_n
            self._generation += 1


def _key_bytes(key) -> bytes:
    """Canonical bytes of a :func:`scalar_key` (``1`` and ``1.0`` give the same)."""
    tag = key[0]
    if tag == 0:
        return b"0"
    if tag == 1:
        return b"1" + (b"t" if key[1] else b"f")
    if tag == 2:
        v = key[1]
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return b"2" + repr(v).encode("ascii")
    return b"3" + key[1].encode("utf-8", "surrogatepass")


def _key_hash(key) -> tuple[int, int]:
    d = hashlib.blake2b(_key_bytes(key), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


class _FrozenNumeric:
    __slots__ = ("vals", "poss", "exact", "inexact", "end")

    def __init__(self, vals, poss, exact):
        self.vals, self.poss = vals, poss
        self.exact = exact
        self.inexact = exact is not None
        self.end = int(poss.max()) + 1 if poss.size else 0  # once per field, at first use


class _Frozen:
    """Checkpointed field indexes: read-only arrays, answered by ``np.searchsorted``."""

    def __init__(self, meta: dict, arrays: dict):
        self.paths: dict[tuple[str, ...], int] = {
            tuple(p): i for i, p in enumerate(meta["paths"])}
        self._arrays = arrays
        self._inexact = {int(k): v for k, v in meta.get("inexact", {}).items()}
        self._numeric: dict[int, _FrozenNumeric | None] = {}

    def _get(self, i: int, name: str):
        return self._arrays.get(f"f{i}.{name}")

    def eq_arrays(self, path):
        i = self.paths[path]
        return self._get(i, "h1"), self._get(i, "h2"), self._get(i, "off"), self._get(i, "pos")

    def eq(self, path, key) -> np.ndarray:
        i = self.paths.get(path)
        if i is None or key is None:
            return _EMPTY
        h1, h2, off, pos = self.eq_arrays(path)
        a1, a2 = _key_hash(key)
        j = int(np.searchsorted(h1, np.uint64(a1)))
        while j < len(h1) and int(h1[j]) == a1:
            if int(h2[j]) == a2:
                return pos[off[j]:off[j + 1]]
            j += 1
        return _EMPTY

    def exists(self, path) -> np.ndarray:
        i = self.paths.get(path)
        return _EMPTY if i is None else self._get(i, "exists")

    def numeric(self, path) -> _FrozenNumeric | None:
        i = self.paths.get(path)
        if i is None:
            return None
        if i not in self._numeric:
            vals = self._get(i, "vals")
            self._numeric[i] = None if vals is None else _FrozenNumeric(
                vals, self._get(i, "vpos"), self._inexact.get(i))
        return self._numeric[i]
