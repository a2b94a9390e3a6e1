"""Metric registry and distance kernels.

Every metric is a distance: lower is nearer.

- ``l2``     squared euclidean distance ||x - q||^2 (aliases ``euclidean``, ``l2sq``). The
  square root is never taken inside the engine: it preserves order, so it is applied only
  where a caller asks for true euclidean distances.
- ``ip``     negative inner product -dot(x, q) (aliases ``dot``, ``inner_product``).
- ``cosine`` 1 - cos(x, q) (alias ``cos``). The engine stores cosine vectors L2-normalised
  and normalises queries before calling, so the kernel is 1 - dot(x, q); ``normalize`` on the
  registry row tells the engine to do that.

Kernels take the integer metric code (``L2``, ``IP``, ``COSINE``), never a Metric object.
Sums use float32 accumulators with ``fastmath=True`` so they vectorise; inputs must be
finite (the engine rejects NaN and inf on write and on query).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from ..errors import InvalidInput

__all__ = [
    "L2",
    "IP",
    "COSINE",
    "Metric",
    "METRICS",
    "resolve_metric",
    "normalize_rows",
    "has_zero_rows",
    "distance",
    "distance_ref",
    "distances_to",
    "distances_to_ref",
    "distances_subset",
    "distances_subset_ref",
]

L2 = 0
IP = 1
COSINE = 2


@dataclass(frozen=True)
class Metric:
    """One registry row.

    name: canonical name. code: integer passed to kernels. aliases: other accepted names
    (matched case-insensitively). normalize: the engine stores rows and sends queries
    L2-normalised for this metric.
    """

    name: str
    code: int
    aliases: tuple[str, ...]
    normalize: bool


METRICS: dict[str, Metric] = {
    "cosine": Metric("cosine", COSINE, ("cos",), True),
    "l2": Metric("l2", L2, ("euclidean", "l2sq"), False),
    "ip": Metric("ip", IP, ("dot", "inner_product"), False),
}

_BY_NAME: dict[str, Metric] = {}
for _m in METRICS.values():
    _BY_NAME[_m.name] = _m
    for _a in _m.aliases:
        _BY_NAME[_a] = _m
del _m, _a

METRIC_CODES = frozenset(m.code for m in METRICS.values())


def resolve_metric(name: str) -> Metric:
    """The registry row for a metric name or alias (case-insensitive)."""
    metric = _BY_NAME.get(name.strip().lower()) if isinstance(name, str) else None
    if metric is None:
        expected = ", ".join(f"'{n}'" for n in METRICS)
        raise InvalidInput(f"metric {name!r} is not known; expected one of {expected}")
    return metric


def check_metric_code(metric) -> int:
    """*metric* as an int code, or InvalidInput when it is not one of L2, IP, COSINE."""
    if isinstance(metric, (int, np.integer)) and not isinstance(metric, (bool, np.bool_)):
        if int(metric) in METRIC_CODES:
            return int(metric)
    raise InvalidInput(
        f"metric code {metric!r} is not known; expected one of {L2} (l2), {IP} (ip), "
        f"{COSINE} (cosine)"
    )


def normalize_rows(X) -> np.ndarray:
    """A float32 copy of 2-D *X* (or 1-D, one row) with each row scaled to unit L2 norm.

    Zero rows stay zero; use :func:`has_zero_rows` to reject them first where that matters.
    """
    Y = np.array(X, dtype=np.float32, copy=True, order="C")
    norms = np.atleast_1d(np.sqrt(np.einsum("...j,...j->...", Y, Y, dtype=np.float64)))
    norms[norms == 0.0] = 1.0
    Y /= norms.reshape(Y.shape[:-1] + (1,)).astype(np.float32)
    return Y


def has_zero_rows(X) -> int:
    """Index of the first row of 2-D *X* whose norm is zero, or -1 when there is none."""
    X = np.asarray(X)
    if X.ndim == 1:
        X = X[None, :]
    zero = ~np.any(X != 0, axis=1)
    hits = np.flatnonzero(zero)
    return int(hits[0]) if hits.size else -1


# --------------------------------------------------------------------------- input checks
# Cheap checks done by the Python wrappers; the engine has already validated shapes.


def readonly_view(a):
    """A read-only view of *a* (no copy). Wrappers pass every array to the kernels this way,
    so each kernel compiles once, for read-only arrays (LMDB views are read-only anyway)."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def check_float32(name, a, ndim):
    """InvalidInput unless *a* is a C-contiguous float32 ndarray with *ndim* dimensions."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != ndim:
        got = f"a {a.dtype} array with {a.ndim} dims" if isinstance(a, np.ndarray) else type(a)
        raise InvalidInput(f"{name} is {got}; expected a {ndim}-D float32 array")
    if not a.flags.c_contiguous:
        raise InvalidInput(f"{name} is not C-contiguous; expected a C-contiguous array")


def check_k(k) -> int:
    """*k* as an int, or InvalidInput when it is not an integer >= 0."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 0:
        raise InvalidInput(f"k is {k!r}; expected an integer >= 0")
    return int(k)


def prepare_rows_query(X, q, metric):
    """Checked, read-only (X, q, metric code) for the single-query kernels."""
    check_float32("X", X, 2)
    check_float32("q", q, 1)
    if q.shape[0] != X.shape[1]:
        raise InvalidInput(f"q has dim {q.shape[0]}; expected dim {X.shape[1]} like X")
    return readonly_view(X), readonly_view(q), check_metric_code(metric)


def prepare_positions(positions, n):
    """Checked read-only int64 positions into n rows (sorted, unique as the engine sends)."""
    if not isinstance(positions, np.ndarray) or positions.ndim != 1:
        raise InvalidInput(f"positions is {type(positions)}; expected a 1-D int64 array")
    if positions.dtype != np.int64 or not positions.flags.c_contiguous:
        positions = np.ascontiguousarray(positions, dtype=np.int64)
    if positions.size and (positions[0] < 0 or positions[-1] >= n):
        raise InvalidInput(
            f"positions span {positions[0]}..{positions[-1]}; expected values in 0..{n - 1}"
        )
    return readonly_view(positions)


# --------------------------------------------------------------------------- kernels


@njit(cache=True, nogil=True, fastmath=True)
def _l2sq(x, q):
    s = np.float32(0.0)
    for j in range(q.shape[0]):
        t = x[j] - q[j]
        s += t * t
    return s


@njit(cache=True, nogil=True, fastmath=True)
def _dot(x, q):
    s = np.float32(0.0)
    for j in range(q.shape[0]):
        s += x[j] * q[j]
    return s


@njit(cache=True, nogil=True)
def distance(x, q, metric):
    """Distance between 1-D float32 vectors x and q for the metric code."""
    if metric == L2:
        return _l2sq(x, q)
    if metric == IP:
        return -_dot(x, q)
    return np.float32(1.0) - _dot(x, q)


@njit(cache=True, nogil=True, parallel=True)
def _distances_to_kernel(X, q, metric):
    n = X.shape[0]
    out = np.empty(n, np.float32)
    for i in prange(n):
        out[i] = distance(X[i], q, metric)
    return out


@njit(cache=True, nogil=True)
def _distances_subset_kernel(X, q, metric, positions):
    m = positions.shape[0]
    out = np.empty(m, np.float32)
    for t in range(m):
        out[t] = distance(X[positions[t]], q, metric)
    return out


def distances_to(X, q, metric):
    """float32 distances from every row of X (n, dim) to q (dim,), rows in parallel."""
    X, q, metric = prepare_rows_query(X, q, metric)
    return _distances_to_kernel(X, q, metric)


def distances_subset(X, q, metric, positions):
    """float32 distances from rows X[positions] to q (used for exact re-ranking)."""
    X, q, metric = prepare_rows_query(X, q, metric)
    positions = prepare_positions(positions, X.shape[0])
    return _distances_subset_kernel(X, q, metric, positions)


# --------------------------------------------------------------------------- references


def distance_ref(x, q, metric):
    """numpy reference of :func:`distance`."""
    x = np.asarray(x, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if metric == L2:
        return np.float32(np.sum((x - q) ** 2))
    if metric == IP:
        return np.float32(-np.dot(x, q))
    return np.float32(1.0 - np.dot(x, q))


def distances_to_ref(X, q, metric):
    """numpy reference of :func:`distances_to` (float64 sums, float32 result)."""
    X = np.asarray(X, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if metric == L2:
        return np.sum((X - q) ** 2, axis=1).astype(np.float32)
    if metric == IP:
        return (-(X @ q)).astype(np.float32)
    return (1.0 - X @ q).astype(np.float32)


def distances_subset_ref(X, q, metric, positions):
    """numpy reference of :func:`distances_subset`."""
    return distances_to_ref(np.asarray(X)[positions], q, metric)
