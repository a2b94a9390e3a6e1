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

import math
import threading
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


def _sorted_positions(positions) -> np.ndarray:
    if not positions:
        return _EMPTY
    arr = np.fromiter(positions, dtype=np.int64, count=len(positions))
    arr.sort()
    arr.setflags(write=False)
    return arr


def _scatter(bitmap: np.ndarray, positions: np.ndarray, n: int, is_sorted: bool) -> None:
    """Set bitmap[p] for every p in *positions* below n."""
    if positions.size == 0:
        return
    if is_sorted:
        positions = positions[: np.searchsorted(positions, n)]
    else:
        positions = positions[positions < n]
    bitmap[positions] = True


class _Numeric:
    """The sorted numeric values of one field, with a pending write delta."""

    __slots__ = ("entries", "pending", "dead", "vals", "poss", "exact", "inexact")

    def __init__(self) -> None:
        self.entries: dict[int, tuple] = {}  # authoritative: pos -> numeric values
        self.pending: dict[int, tuple] = {}  # added since the last rebuild
        self.dead: set[int] = set()  # positions whose built entries are stale
        self.vals = np.zeros(0, dtype=np.float64)
        self.poss = _EMPTY
        self.exact: list | None = None  # Python values in sorted order, if any inexact
        self.inexact = False

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
        count = sum(len(v) for v in self.entries.values())
        poss = np.empty(count, dtype=np.int64)
        raw: list = []
        i = 0
        for pos, values in self.entries.items():
            for v in values:
                poss[i] = pos
                raw.append(v)
                i += 1
        vals = np.fromiter((_to_float(v) for v in raw), dtype=np.float64, count=count)
        order = np.argsort(vals, kind="stable")
        self.vals = vals[order]
        self.poss = poss[order]
        self.vals.setflags(write=False)
        self.poss.setflags(write=False)
        self.inexact = not all(_exact(v) for v in raw)
        self.exact = [raw[j] for j in order.tolist()] if self.inexact else None
        self.pending = {}
        self.dead = set()


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


class _Path:
    """All index structures of one field path."""

    __slots__ = ("eq", "eq_cache", "exists", "exists_cache", "numeric")

    def __init__(self) -> None:
        self.eq: dict[Any, set[int]] = {}
        self.eq_cache: dict[Any, np.ndarray] = {}
        self.exists: set[int] = set()
        self.exists_cache: np.ndarray | None = None
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

    # ------------------------------------------------------------------ writes

    def __len__(self) -> int:
        return self._rows

    def clear(self) -> None:
        """Forget every row."""
        with self._lock:
            self._paths = {}
            self._rows = 0

    def add(self, pos: int, metadata: dict | None) -> None:
        """Index the row at *pos* (which must not be indexed already)."""
        pos = int(pos)
        with self._lock:
            self._rows += 1
            if not metadata:
                return
            for path, value in _walk(metadata):
                entry = self._paths.get(path)
                if entry is None:
                    entry = self._paths[path] = _Path()
                entry.exists.add(pos)
                entry.exists_cache = None
                items = value if isinstance(value, list) else (value,)
                numbers = []
                for x in items:
                    key = scalar_key(x)
                    if key is None:
                        continue
                    bucket = entry.eq.get(key)
                    if bucket is None:
                        bucket = entry.eq[key] = set()
                    bucket.add(pos)
                    entry.eq_cache.pop(key, None)
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
            if not metadata:
                return
            for path, value in _walk(metadata):
                entry = self._paths.get(path)
                if entry is None:
                    continue
                entry.exists.discard(pos)
                entry.exists_cache = None
                items = value if isinstance(value, list) else (value,)
                for x in items:
                    key = scalar_key(x)
                    if key is None:
                        continue
                    bucket = entry.eq.get(key)
                    if bucket is not None:
                        bucket.discard(pos)
                        if not bucket:
                            del entry.eq[key]
                    entry.eq_cache.pop(key, None)
                if entry.numeric is not None:
                    entry.numeric.remove(pos)
                if entry.empty():
                    del self._paths[path]

    # ------------------------------------------------------------------ reads

    def _eq_positions(self, path: tuple[str, ...], key: Any) -> np.ndarray:
        with self._lock:
            entry = self._paths.get(path)
            if entry is None:
                return _EMPTY
            arr = entry.eq_cache.get(key)
            if arr is None:
                arr = _sorted_positions(entry.eq.get(key, ()))
                entry.eq_cache[key] = arr
            return arr

    def _exists_positions(self, path: tuple[str, ...]) -> np.ndarray:
        with self._lock:
            entry = self._paths.get(path)
            if entry is None:
                return _EMPTY
            if entry.exists_cache is None:
                entry.exists_cache = _sorted_positions(entry.exists)
            return entry.exists_cache

    def _range(self, node: Field, n: int) -> np.ndarray:
        bitmap = np.zeros(n, dtype=bool)
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
        if stale_arr is not None and hit.size:
            hit = hit[~np.isin(hit, stale_arr)]
        _scatter(bitmap, hit, n, is_sorted=False)
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

        *node* is a compiled filter (a raw ``where`` dict is compiled first). *alive* is
        the caller's bool mask of live rows (None: all n rows are alive); complements are
        taken within it, and the result is already ANDed with it.
        """
        if isinstance(node, dict):
            node = compile_filter(node)
        n = int(n)
        if n < 0:
            raise InvalidInput(f"n must be >= 0, got {n}")
        if alive is None:
            alive = np.ones(n, dtype=bool)
        else:
            alive = np.asarray(alive, dtype=bool)
            if alive.shape != (n,):
                raise InvalidInput(
                    f"alive must be a bool array of shape ({n},), got shape {alive.shape}"
                )
        out = self._eval(node, n, alive)
        out &= alive
        return out

    def count(self, node: Node | dict, n: int, alive: np.ndarray | None = None) -> int:
        """Number of alive rows that match *node*."""
        return int(np.count_nonzero(self.evaluate(node, n, alive)))

    def fields(self) -> list[str]:
        """The dotted paths currently indexed (sorted)."""
        with self._lock:
            return sorted(".".join(p) for p in self._paths)
