"""Fused IVF query kernels: scan and exact re-rank in one compiled call.

The engine's query path calls these with arrays it owns and has already validated (the
IVF index builds them), so there are no per-call checks here: few numba calls per query
keep the Python overhead of a single query small. An IVF-PQ single query makes two: its
probe (:func:`probe_and_count`, which also says how many codes the probed lists hold, so
the caller can pick the serial or the split scan), then the scan and re-rank. The checked,
composable forms (and their numpy references) are in :mod:`.ivfscan`; the tests compare
the two.

- ``probe_metric``: how lists are ranked for a query — 1 (largest inner product) for ip
  and cosine, 0 (smallest squared L2) for l2.
- The parallel single-query forms split the probed lists across threads (interleaved, so
  big and small lists spread evenly), one heap per thread, then merge: worth it only when a
  query scans many codes (the caller decides).
- ``scan_metric`` is the ADC distance (cosine indexes scan with l2 tables over their unit
  rows, which ranks like cosine with a smaller quantization error than inner-product
  tables); ``metric`` is the exact distance the re-rank computes and returns.
- ``pre``: the l2 table strategy, precomputed terms (nlist, m, ksub) or an empty
  (0, m, ksub) array for per-list tables (:mod:`.adctables` chooses).
- Re-ranking computes exact distances from X for the ADC candidates and keeps the k best;
  results are ascending by (distance, position).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .distances import distance
from .ivfscan import _adc_one, _flat_batch_kernel, _flat_search_kernel, _probe_kernel
from .topk import heap_offer, heap_sort


@njit(cache=True, nogil=True)
def _rerank(X, q, metric, cd, ci, csize, k):
    od = np.empty(k, np.float32)
    oi = np.empty(k, np.int64)
    size = 0
    worst = np.float32(np.inf)
    for t in range(csize):
        p = ci[t]
        d = distance(X[p], q, metric)
        if d > worst:
            continue
        size = heap_offer(od, oi, size, k, d, p)
        if size == k:
            worst = od[0]
    heap_sort(od, oi, size)
    return od[:size].copy(), oi[:size].copy()


@njit(cache=True, nogil=True)
def _merge(HD, HI, sizes, kk):
    hd = np.empty(kk, np.float32)
    hi = np.empty(kk, np.int64)
    size = 0
    for c in range(HD.shape[0]):
        for t in range(sizes[c]):
            size = heap_offer(hd, hi, size, kk, HD[c, t], HI[c, t])
    return hd, hi, size


@njit(cache=True, nogil=True)
def probe_and_count(q, centroids, nprobe, probe_metric, offsets, doffsets):
    """(the nprobe lists to scan for q, how many codes they hold, sealed and delta): the
    caller picks the serial or the parallel scan from the real count, not the average."""
    probes = _probe_kernel(q, centroids, nprobe, probe_metric)
    count = 0
    for p in range(probes.shape[0]):
        l = probes[p]
        count += offsets[l + 1] - offsets[l] + doffsets[l + 1] - doffsets[l]
    return probes, count


@njit(cache=True, nogil=True)
def pq_search_serial(q, X, centroids, cbT, pre, probes, offsets, codes, pos,
                     dcodes, dpos, dorder, doffsets, mask, use_mask, scan_metric, metric, kk, k):
    hd = np.empty(kk, np.float32)
    hi = np.empty(kk, np.int64)
    size = _adc_one(q, centroids, cbT, pre, probes, offsets, codes, pos, dcodes, dpos, dorder,
                    doffsets, mask, use_mask, scan_metric, hd, hi)
    return _rerank(X, q, metric, hd, hi, size, k)


@njit(cache=True, nogil=True, parallel=True)
def pq_search_parallel(q, X, centroids, cbT, pre, probes, offsets, codes, pos,
                       dcodes, dpos, dorder, doffsets, mask, use_mask, scan_metric, metric, kk,
                       k, nchunks):
    HD = np.empty((nchunks, kk), np.float32)
    HI = np.empty((nchunks, kk), np.int64)
    sizes = np.zeros(nchunks, np.int64)
    for c in prange(nchunks):
        sub = np.ascontiguousarray(probes[c::nchunks])
        sizes[c] = _adc_one(q, centroids, cbT, pre, sub, offsets, codes, pos, dcodes, dpos,
                            dorder, doffsets, mask, use_mask, scan_metric, HD[c], HI[c])
    hd, hi, size = _merge(HD, HI, sizes, kk)
    return _rerank(X, q, metric, hd, hi, size, k)


@njit(cache=True, nogil=True, parallel=True)
def pq_search_batch(Q, X, centroids, cbT, pre, probes2d, offsets, codes, pos, dcodes, dpos,
                    dorder, doffsets, mask, use_mask, scan_metric, metric, kk, k):
    """Every query in parallel; (nq, k) results padded with +inf / -1."""
    nq = Q.shape[0]
    D = np.full((nq, k), np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    for r in prange(nq):
        hd = np.empty(kk, np.float32)
        hi = np.empty(kk, np.int64)
        size = _adc_one(Q[r], centroids, cbT, pre, probes2d[r], offsets, codes, pos, dcodes, dpos,
                        dorder, doffsets, mask, use_mask, scan_metric, hd, hi)
        od, oi = _rerank(X, Q[r], metric, hd, hi, size, k)
        for j in range(od.shape[0]):
            D[r, j] = od[j]
            I[r, j] = oi[j]
    return D, I


@njit(cache=True, nogil=True)
def flat_lists_serial(q, X, centroids, nprobe, probe_metric, offsets, pos, dpos, dorder,
                      doffsets, mask, use_mask, metric, k):
    probes = _probe_kernel(q, centroids, nprobe, probe_metric)
    return _flat_search_kernel(q, X, probes, offsets, pos, dpos, dorder, doffsets, mask,
                               use_mask, metric, k)


#: IVF-Flat batches need no fusing: probes come from BLAS, then one parallel scan.
flat_lists_batch = _flat_batch_kernel
