"""The engine's IVF query kernels: scan and exact re-rank in one compiled call.

The IVF index (engine/ivf.py) calls these with arrays it owns and has already validated,
so there are no per-call checks here: few numba calls per query keep the Python overhead
of a single query small. An IVF-PQ single query makes two: its probe
(:func:`probe_and_count`, which also says how many codes the probed lists hold, so the
caller can pick the serial or the split scan), then the scan and re-rank. They are built
from the public scan pieces of :mod:`.ivfscan` and tested, as they are, against the numpy
references :func:`pq_search_ref` and :func:`.ivfscan.ivfflat_search_ref`.

- ``probe_metric``: how lists are ranked for a query — 1 (largest inner product) for ip,
  0 (smallest squared L2) for l2 and cosine.
- The parallel single-query form splits the probed lists across threads (interleaved, so
  big and small lists spread evenly), one heap per thread, then merges: worth it only when a
  query scans many codes (the caller decides).
- ``scan_metric`` is the ADC distance (cosine indexes scan with l2 tables over their unit
  rows, which ranks like cosine with a smaller quantization error than inner-product
  tables); ``metric`` is the exact distance the re-rank computes and returns.
- ``pre``, ``snorm``, ``dnorm``: the l2 table strategy: precomputed terms (nlist, m, ksub),
  or per-row terms of the sealed and delta rows (the engine's; ``pre`` empty), or neither
  (``pre`` (0, m, ksub), ``adctables.NO_TERMS``) for per-list tables
  (:func:`.ivfscan.adc_scan`, :mod:`.adctables`).
- ``min_lists``, ``target_share``: -1 scans every probed list; >= 0 is the widened
  filtered scan of :func:`.ivfscan.widen_target` (engine/planner.py decides).
- Re-ranking computes exact distances from X for the ADC candidates and keeps the k best;
  results are ascending by (distance, position). Every kernel also returns the lists each
  query scanned and whether its widening target was reached.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .distances import distance, distances_to_ref
from .ivfscan import adc_scan, adc_scan_table, adc_search_ref, chunk_probes, flat_scan, probe
from .topk import heap_consider, heap_sort

__all__ = [
    "probe_and_count",
    "pq_search_serial",
    "pq_search_parallel",
    "pq_search_batch",
    "pq_search_batch_tables",
    "pq_search_ref",
    "flat_lists_serial",
    "flat_lists_batch",
]


@njit(cache=True, nogil=True)
def _touch_rows(X, ci, csize):
    """Read one float per cache line of every candidate row before the exact distances:
    the loads are independent, so the CPU overlaps their misses, which the distance loop
    (one row at a time) does not (60k x 384 rows, 40 candidates out of cache: re-rank
    117 -> 92 us). Returns a value the caller keeps, so the loads are not dropped."""
    acc = np.float32(0.0)
    for t in range(csize):
        row = X[ci[t]]
        for u in range(0, row.shape[0], 16):
            acc += row[u]
    return acc


@njit(cache=True, nogil=True)
def _rerank(X, q, metric, cd, ci, csize, k):
    buf = np.empty(k + 1, np.float32)
    buf[k] = _touch_rows(X, ci, csize)  # stored past the heap: keeps the loads alive
    od = buf[:k]
    oi = np.empty(k, np.int64)
    size = 0
    worst = np.float32(np.inf)
    for t in range(csize):
        p = ci[t]
        d = distance(X[p], q, metric)
        if d <= worst:
            size, worst = heap_consider(od, oi, size, worst, d, p)
    heap_sort(od, oi, size)
    return od[:size].copy(), oi[:size].copy()


@njit(cache=True, nogil=True)
def _merge(HD, HI, sizes, kk):
    hd = np.empty(kk, np.float32)
    hi = np.empty(kk, np.int64)
    size = 0
    worst = np.float32(np.inf)
    for c in range(HD.shape[0]):
        for t in range(sizes[c]):
            d = HD[c, t]
            if d <= worst:
                size, worst = heap_consider(hd, hi, size, worst, d, HI[c, t])
    return hd, hi, size


@njit(cache=True, nogil=True)
def probe_and_count(q, centroids, nprobe, probe_metric, offsets, doffsets):
    """(the nprobe lists to scan for q, how many codes they hold, sealed and delta): the
    caller picks the serial or the parallel scan from the real count, not the average."""
    probes = probe(q, centroids, nprobe, probe_metric)
    count = 0
    for p in range(probes.shape[0]):
        l = probes[p]
        count += offsets[l + 1] - offsets[l] + doffsets[l + 1] - doffsets[l]
    return probes, count


@njit(cache=True, nogil=True)
def pq_search_serial(q, X, centroids, cbT, pre, probes, offsets, codes, pos, snorm,
                     dcodes, dpos, dnorm, dorder, doffsets, mask, use_mask, scan_metric, metric,
                     kk, k, min_lists, target_share):
    """(dist, pos, lists scanned, target reached) of one query: the ADC top-kk of the
    probed lists, re-ranked exactly to the top k."""
    hd = np.empty(kk, np.float32)
    hi = np.empty(kk, np.int64)
    size, scanned, reached = adc_scan(q, centroids, cbT, pre, probes, offsets, codes, pos,
                                      snorm, dcodes, dpos, dnorm, dorder, doffsets, mask,
                                      use_mask, scan_metric, hd, hi, min_lists, target_share)
    od, oi = _rerank(X, q, metric, hd, hi, size, k)
    return od, oi, scanned, reached


@njit(cache=True, nogil=True, parallel=True)
def pq_search_parallel(q, X, centroids, cbT, pre, probes, offsets, codes, pos, snorm,
                       dcodes, dpos, dnorm, dorder, doffsets, mask, use_mask, scan_metric, metric,
                       kk, k, nchunks, min_lists, target_share):
    """:func:`pq_search_serial` with the probed lists split across ``nchunks`` threads
    (interleaved; a widened scan gives each chunk its share of ``min_lists``)."""
    HD = np.empty((nchunks, kk), np.float32)
    HI = np.empty((nchunks, kk), np.int64)
    sizes = np.zeros(nchunks, np.int64)
    scanned = np.zeros(nchunks, np.int64)
    reached = np.zeros(nchunks, np.bool_)
    for c in prange(nchunks):
        sub, share = chunk_probes(probes, nchunks, c, min_lists)
        size, lists, ok = adc_scan(q, centroids, cbT, pre, sub, offsets, codes, pos, snorm,
                                   dcodes, dpos, dnorm, dorder, doffsets, mask, use_mask,
                                   scan_metric, HD[c], HI[c], share, target_share)
        sizes[c] = size
        scanned[c] = lists
        reached[c] = ok
    hd, hi, size = _merge(HD, HI, sizes, kk)
    od, oi = _rerank(X, q, metric, hd, hi, size, k)
    return od, oi, scanned.sum(), reached.all()


@njit(cache=True, nogil=True, parallel=True)
def pq_search_batch(Q, X, centroids, cbT, pre, probes2d, offsets, codes, pos, snorm, dcodes,
                    dpos, dnorm, dorder, doffsets, mask, use_mask, scan_metric, metric, kk, k,
                    min_lists, target_share):
    """Every query in parallel: (D (nq, k), I (nq, k)) padded with +inf / -1, the lists
    each query scanned, and whether each reached its widening target."""
    nq = Q.shape[0]
    D = np.full((nq, k), np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    scanned = np.zeros(nq, np.int64)
    reached = np.zeros(nq, np.bool_)
    for r in prange(nq):
        hd = np.empty(kk, np.float32)
        hi = np.empty(kk, np.int64)
        size, scanned[r], reached[r] = adc_scan(
            Q[r], centroids, cbT, pre, probes2d[r], offsets, codes, pos, snorm, dcodes, dpos,
            dnorm, dorder, doffsets, mask, use_mask, scan_metric, hd, hi, min_lists, target_share)
        od, oi = _rerank(X, Q[r], metric, hd, hi, size, k)
        for j in range(od.shape[0]):
            D[r, j] = od[j]
            I[r, j] = oi[j]
    return D, I, scanned, reached


@njit(cache=True, nogil=True, parallel=True)
def pq_search_batch_tables(Q, tables, X, centroids, cbT, pre, probes2d, offsets, codes, pos,
                           snorm, dcodes, dpos, dnorm, dorder, doffsets, mask, use_mask,
                           scan_metric, metric, kk, k, min_lists, target_share):
    """:func:`pq_search_batch` with each query's query-only table given (``tables``
    (nq, m, ksub) from :func:`.ivfscan.query_tables`, one BLAS product per sub-space for
    the whole batch): for ip and row-terms scans."""
    nq = Q.shape[0]
    D = np.full((nq, k), np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    scanned = np.zeros(nq, np.int64)
    reached = np.zeros(nq, np.bool_)
    for r in prange(nq):
        hd = np.empty(kk, np.float32)
        hi = np.empty(kk, np.int64)
        size, scanned[r], reached[r] = adc_scan_table(
            Q[r], centroids, cbT, pre, tables[r], probes2d[r], offsets, codes, pos, snorm,
            dcodes, dpos, dnorm, dorder, doffsets, mask, use_mask, scan_metric, hd, hi,
            min_lists, target_share)
        od, oi = _rerank(X, Q[r], metric, hd, hi, size, k)
        for j in range(od.shape[0]):
            D[r, j] = od[j]
            I[r, j] = oi[j]
    return D, I, scanned, reached


@njit(cache=True, nogil=True)
def flat_lists_serial(q, X, centroids, nprobe, probe_metric, offsets, pos, dpos, dorder,
                      doffsets, mask, use_mask, metric, k, min_lists, target_share):
    """IVF-Flat single query: probe ``nprobe`` lists, exact scan; (dist, pos, scanned,
    reached)."""
    probes = probe(q, centroids, nprobe, probe_metric)
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    size, scanned, reached = flat_scan(q, X, probes, offsets, pos, dpos, dorder, doffsets,
                                       mask, use_mask, metric, hd, hi, min_lists, target_share)
    heap_sort(hd, hi, size)
    return hd[:size].copy(), hi[:size].copy(), scanned, reached


@njit(cache=True, nogil=True, parallel=True)
def flat_lists_batch(Q, X, probes, offsets, pos, dpos, dorder, doffsets, mask, use_mask,
                     metric, k, min_lists, target_share):
    """IVF-Flat, every query in parallel (probes from BLAS): padded (nq, k), scanned,
    reached."""
    nq = Q.shape[0]
    D = np.empty((nq, k), np.float32)
    I = np.empty((nq, k), np.int64)
    scanned = np.zeros(nq, np.int64)
    reached = np.zeros(nq, np.bool_)
    for r in prange(nq):
        size, scanned[r], reached[r] = flat_scan(Q[r], X, probes[r], offsets, pos, dpos, dorder,
                                                 doffsets, mask, use_mask, metric, D[r], I[r],
                                                 min_lists, target_share)
        heap_sort(D[r], I[r], size)
        for j in range(size, k):
            D[r, j] = np.inf
            I[r, j] = -1
    return D, I, scanned, reached


def pq_search_ref(q, X, centroids, codebooks, probes, offsets, codes, pos, dcodes, dpos, dlist,
                  dn, mask, scan_metric, metric, kk, k):
    """numpy reference of :func:`pq_search_serial` over the given probes: the ADC top-kk
    (:func:`.ivfscan.adc_search_ref`), then exact distances from X, the k nearest."""
    _, cand = adc_search_ref(q, centroids, codebooks, probes, offsets, codes, pos, dcodes, dpos,
                             dlist, dn, mask, scan_metric, kk)
    d = distances_to_ref(np.asarray(X, np.float64)[cand], q, metric)
    order = np.lexsort((cand, d))[:k]
    return d[order].astype(np.float32), cand[order]
