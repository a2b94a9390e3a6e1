"""Flat (exact) search: the entry points the engine calls, and the recall reference.

- :func:`search_one` and :func:`search_subset` fuse the distance and the top-k selection in
  one pass over the rows (one bounded heap per chunk of rows, chunks across threads when the
  scan is large enough to pay for it, then one merge). Results have length
  k' = min(k, allowed rows), no padding.
- :func:`search_batch` computes distances with BLAS (numpy matmul) in blocks of rows and
  queries, so memory stays bounded, and merges every block into per-query heaps in parallel.
  Results have a fixed shape (nq, k), padded with distance +inf and position -1.

Every result is sorted by distance ascending, ties broken by the lower position, the order a
stable argsort gives. All inputs are float32 and C-contiguous; X may be a read-only view (LMDB).
Metric codes and semantics come from :mod:`.distances`; cosine inputs are L2-normalised by
the engine beforehand.
"""

from __future__ import annotations

from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange

from ..errors import InvalidInput
from .distances import (
    IP,
    L2,
    check_float32,
    check_k,
    check_metric_code,
    distance,
    distances_to_ref,
    prepare_positions,
    prepare_rows_query,
    readonly_view,
)
from .topk import heap_consider, heap_offer, heap_sort, topk_smallest

__all__ = [
    "search_one",
    "search_one_ref",
    "search_one_blas",
    "search_subset",
    "search_subset_ref",
    "search_batch",
    "search_batch_ref",
    "numba_threads",
]

# A scan of fewer elements (rows x dim) than this runs on one thread: waking the pool costs
# more than it saves.
PARALLEL_MIN_ELEMENTS = 1 << 21
# Rows per chunk of a parallel scan, at least; the scan is cut in ~4 chunks per thread.
MIN_CHUNK_ROWS = 2048
# search_batch: rows of X per BLAS block, and the bound on one block of distances.
BATCH_ROW_BLOCK = 16384
BATCH_BLOCK_ELEMENTS = 1 << 22  # 16 MiB of float32 distances

_NO_MASK = readonly_view(np.zeros(0, np.uint8))
_NO_POSITIONS = readonly_view(np.zeros(0, np.int64))


@contextmanager
def numba_threads(n: int):
    """Run the block with numba's thread count set to *n* (restored on exit)."""
    if not isinstance(n, (int, np.integer)) or not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise InvalidInput(
            f"thread count {n!r} is out of range; expected 1..{numba.config.NUMBA_NUM_THREADS}"
        )
    before = numba.get_num_threads()
    numba.set_num_threads(int(n))
    try:
        yield
    finally:
        numba.set_num_threads(before)


# --------------------------------------------------------------------------- scan kernels


@njit(cache=True, nogil=True)
def _scan(X, q, metric, mask, use_mask, positions, use_positions, start, stop, hd, hi):
    """Offer rows start..stop (or positions[start:stop]) to the heap hd/hi; return its size."""
    size = 0
    worst = np.float32(np.inf)  # heap root once full: anything farther is rejected inline
    for t in range(start, stop):
        i = positions[t] if use_positions else t
        if use_mask and mask[i] == 0:
            continue
        d = distance(X[i], q, metric)
        if d <= worst:
            size, worst = heap_consider(hd, hi, size, worst, d, i)
    return size


@njit(cache=True, nogil=True)
def _search_serial(X, q, metric, k, mask, use_mask, positions, use_positions, m):
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    size = _scan(X, q, metric, mask, use_mask, positions, use_positions, 0, m, hd, hi)
    heap_sort(hd, hi, size)
    return hd[:size].copy(), hi[:size].copy()


@njit(cache=True, nogil=True, parallel=True)
def _search_chunked(X, q, metric, k, mask, use_mask, positions, use_positions, m, chunk):
    nchunks = (m + chunk - 1) // chunk
    kc = min(k, chunk)
    cd = np.empty((nchunks, kc), np.float32)
    ci = np.empty((nchunks, kc), np.int64)
    counts = np.zeros(nchunks, np.int64)
    for c in prange(nchunks):
        start = c * chunk
        stop = min(m, start + chunk)
        counts[c] = _scan(
            X, q, metric, mask, use_mask, positions, use_positions, start, stop, cd[c], ci[c]
        )
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    size = 0
    for c in range(nchunks):
        for j in range(counts[c]):
            size = heap_offer(hd, hi, size, k, cd[c, j], ci[c, j])
    heap_sort(hd, hi, size)
    return hd[:size].copy(), hi[:size].copy()


@njit(cache=True, nogil=True, parallel=True)
def _merge_block(G, metric, xn2, qn2, row0, mask, use_mask, hd, hi, counts, q0):
    """Offer the block of inner products G (queries q0.., rows row0..) to the query heaps."""
    nqb, nb = G.shape
    k = hd.shape[1]
    for r in prange(nqb):
        qi = q0 + r
        size = counts[qi]
        hdr = hd[qi]
        hir = hi[qi]
        worst = hdr[0] if size == k else np.float32(np.inf)
        g = G[r]
        for j in range(nb):
            i = row0 + j
            if use_mask and mask[i] == 0:
                continue
            if metric == L2:
                d = xn2[i] + qn2[qi] - np.float32(2.0) * g[j]
                if d < 0:
                    d = np.float32(0.0)
            elif metric == IP:
                d = -g[j]
            else:
                d = np.float32(1.0) - g[j]
            if d <= worst:
                size, worst = heap_consider(hdr, hir, size, worst, d, i)
        counts[qi] = size


@njit(cache=True, nogil=True, parallel=True)
def _finish_batch(hd, hi, counts, k, X, Q, metric):
    """Sort each query's heap, then give every selected row its exact distance (the
    single-query kernels' :func:`.distances.distance`) and order by (distance, position)
    again. BLAS rounds a row's inner product by where the row falls in its block and on
    which CPU (seen: a compaction moved rows and their batch distances changed in the last
    bit on AMD EPYC, not on Intel), so the expanded form is only used to select."""
    nq = hd.shape[0]
    D = np.full((nq, k), np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    for r in prange(nq):
        size = counts[r]
        heap_sort(hd[r], hi[r], size)
        for j in range(size):
            p = hi[r, j]
            d = distance(X[p], Q[r], metric)
            # insertion into the sorted prefix: the order is nearly right already
            t = j
            while t > 0 and (D[r, t - 1] > d or (D[r, t - 1] == d and I[r, t - 1] > p)):
                D[r, t] = D[r, t - 1]
                I[r, t] = I[r, t - 1]
                t -= 1
            D[r, t] = d
            I[r, t] = p
    return D, I


# --------------------------------------------------------------------------- entry points


def _prepare_mask(mask, n):
    if mask is None:
        return _NO_MASK, False
    if not isinstance(mask, np.ndarray) or mask.dtype not in (np.bool_, np.uint8):
        got = mask.dtype if isinstance(mask, np.ndarray) else type(mask)
        raise InvalidInput(f"mask is {got}; expected a bool or uint8 array or None")
    if mask.shape != (n,):
        raise InvalidInput(f"mask has shape {mask.shape}; expected ({n},), one flag per row")
    if not mask.flags.c_contiguous:
        mask = np.ascontiguousarray(mask)
    return readonly_view(mask.view(np.uint8)), True


def _chunk_rows(m, dim):
    """Rows per chunk for a parallel scan of m rows, or 0 when one thread is better."""
    threads = numba.get_num_threads()
    if threads < 2 or m * dim < PARALLEL_MIN_ELEMENTS:
        return 0
    return max(MIN_CHUNK_ROWS, -(-m // (4 * threads)))


def _search(X, q, metric, k, mask, use_mask, positions, use_positions, m):
    k = min(k, m)
    if k == 0:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    chunk = _chunk_rows(m, X.shape[1])
    if chunk == 0 or chunk >= m:
        return _search_serial(X, q, metric, k, mask, use_mask, positions, use_positions, m)
    return _search_chunked(X, q, metric, k, mask, use_mask, positions, use_positions, m, chunk)


def search_one(X, xnorm2, q, metric, k, mask=None):
    """Exact top-k of one query q (dim,) over the rows of X (n, dim) allowed by *mask*.

    mask: bool or uint8 (n,), nonzero = allowed; None allows every row. xnorm2 is accepted
    for a uniform signature and not used (the fused scan computes l2 directly).
    Returns ``(dist float32[k'], pos int64[k'])``, k' = min(k, allowed rows), sorted by
    distance then position.
    """
    X, q, metric = prepare_rows_query(X, q, metric)
    k = check_k(k)
    mask, use_mask = _prepare_mask(mask, X.shape[0])
    return _search(X, q, metric, k, mask, use_mask, _NO_POSITIONS, False, X.shape[0])


def search_one_blas(X, xnorm2, q, metric, k, mask=None):
    """:func:`search_one` with the scores from one BLAS product (``X @ q``), for large
    scans: the same memory-bound work as numpy's brute force, on BLAS's threads, so it
    keeps pace with numpy when other BLAS work shares the cores (measured: the fused numba
    scan of 100k x 128 took 5-6 ms interleaved with numpy's BLAS calls, which took 2-3 ms).

    Selection uses ``||x||^2 - 2 x.q`` for l2 (xnorm2 required), so rows within float32
    rounding of the k-th can swap places; the distances returned are recomputed exactly
    for the selected rows, which are then sorted by (distance, position).
    """
    X, q, metric = prepare_rows_query(X, q, metric)
    k = check_k(k)
    n = X.shape[0]
    scores = X @ q
    if metric == L2:
        if xnorm2 is None:
            xnorm2 = _row_norms2(X)
        d = xnorm2 - np.float32(2.0) * scores
    elif metric == IP:
        d = -scores
    else:
        d = np.float32(1.0) - scores
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != (n,):
            raise InvalidInput(f"mask has shape {mask.shape}; expected ({n},), one flag per row")
        d[~mask.astype(bool, copy=False)] = np.inf
    d = np.ascontiguousarray(d, dtype=np.float32)
    vals, idx = topk_smallest(d, k)
    idx = idx[np.isfinite(vals)]
    rows = X[idx]
    if metric == L2:
        diff = rows - q
        exact = np.einsum("ij,ij->i", diff, diff)
    elif metric == IP:
        exact = -(rows @ q)
    else:
        exact = np.float32(1.0) - rows @ q
    exact = exact.astype(np.float32)
    order = np.lexsort((idx, exact))
    return exact[order], idx[order].astype(np.int64)


def search_subset(X, xnorm2, q, metric, k, positions):
    """:func:`search_one` over the rows X[positions] only (int64, sorted, unique).

    Returns positions into X (not indices into *positions*).
    """
    X, q, metric = prepare_rows_query(X, q, metric)
    k = check_k(k)
    positions = prepare_positions(positions, X.shape[0])
    m = positions.shape[0]
    return _search(X, q, metric, k, _NO_MASK, False, positions, True, m)


def _row_norms2(X):
    return np.einsum("ij,ij->i", X, X).astype(np.float32, copy=False)


def search_batch(X, xnorm2, Q, metric, k, mask=None):
    """Exact top-k for each query row of Q (nq, dim) over the rows of X allowed by *mask*.

    Inner products come from BLAS in blocks of at most BATCH_ROW_BLOCK rows (and enough
    queries to keep one block of distances under BATCH_BLOCK_ELEMENTS); every block is merged
    into per-query heaps by a parallel kernel. l2 selects by xnorm2 + ||q||^2 - 2 x.q clamped
    at 0 (xnorm2 = squared row norms of X, float32 (n,); computed here when None); the
    distances returned are recomputed exactly for the selected rows (:func:`_finish_batch`),
    so they do not depend on a row's position or on the CPU's BLAS kernel.

    Returns ``(D float32 (nq, k), I int64 (nq, k))`` of fixed shape: when fewer than k rows
    are allowed, the tail of each row is padded with distance +inf and position -1.
    """
    check_float32("X", X, 2)
    check_float32("Q", Q, 2)
    n, dim = X.shape
    if Q.shape[1] != dim:
        raise InvalidInput(f"Q has dim {Q.shape[1]}; expected dim {dim} like X")
    metric = check_metric_code(metric)
    k = check_k(k)
    mask, use_mask = _prepare_mask(mask, n)
    nq = Q.shape[0]
    if metric == L2:
        if xnorm2 is None:
            xnorm2 = _row_norms2(X)
        check_float32("xnorm2", xnorm2, 1)
        if xnorm2.shape[0] != n:
            raise InvalidInput(f"xnorm2 has length {xnorm2.shape[0]}; expected {n}, one per row")
        qn2 = _row_norms2(Q)
    else:
        xnorm2 = np.zeros(0, np.float32)
        qn2 = np.zeros(0, np.float32)
    xnorm2 = readonly_view(xnorm2)
    kk = min(k, n)
    hd = np.empty((nq, kk), np.float32)
    hi = np.empty((nq, kk), np.int64)
    counts = np.zeros(nq, np.int64)
    if kk > 0 and nq > 0:
        row_block = min(BATCH_ROW_BLOCK, n)
        q_block = max(1, BATCH_BLOCK_ELEMENTS // row_block)
        for r0 in range(0, n, row_block):
            r1 = min(n, r0 + row_block)
            if use_mask and not mask[r0:r1].any():
                continue
            Xb = X[r0:r1]
            for q0 in range(0, nq, q_block):
                G = Q[q0 : q0 + q_block] @ Xb.T
                _merge_block(G, metric, xnorm2, qn2, r0, mask, use_mask, hd, hi, counts, q0)
    return _finish_batch(hd, hi, counts, k, X, Q, metric)


# --------------------------------------------------------------------------- references


def search_one_ref(X, xnorm2, q, metric, k, mask=None):
    """numpy reference of :func:`search_one`: every distance, then a stable argsort."""
    d = distances_to_ref(X, q, metric)
    allowed = np.arange(X.shape[0]) if mask is None else np.flatnonzero(mask)
    order = np.argsort(d[allowed], kind="stable")[:k]
    pos = allowed[order].astype(np.int64)
    return d[pos], pos


def search_subset_ref(X, xnorm2, q, metric, k, positions):
    """numpy reference of :func:`search_subset`."""
    mask = np.zeros(X.shape[0], bool)
    mask[positions] = True
    return search_one_ref(X, xnorm2, q, metric, k, mask)


def search_batch_ref(X, xnorm2, Q, metric, k, mask=None):
    """numpy reference of :func:`search_batch`, padded the same way (+inf, -1)."""
    nq = Q.shape[0]
    D = np.full((nq, k), np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    for r in range(nq):
        d, p = search_one_ref(X, xnorm2, Q[r], metric, k, mask)
        D[r, : d.shape[0]] = d
        I[r, : p.shape[0]] = p
    return D, I
