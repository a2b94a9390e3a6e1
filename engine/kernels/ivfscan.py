"""IVF search kernels: probe selection, the IVF-PQ ADC scan and the IVF-Flat scan.

Inverted lists are kept as CSR plus a small unsorted delta:

- sealed part: ``offsets`` int64[nlist + 1]; list l holds rows ``offsets[l]:offsets[l+1]`` of
  ``codes`` uint8[N, m] (IVF-PQ only) and ``pos`` int64[N], the row positions into the
  engine's matrix. :func:`build_csr` computes the order and offsets (stable counting sort).
- delta: ``dcodes`` uint8[D, m], ``dpos`` int64[D], ``dlist`` int32/int64[D]; only the first
  ``dn`` rows are valid. Each call buckets the delta rows by list (counting sort, O(dn +
  nlist)) so every probed list is scanned with one lookup table, sealed rows then delta rows.
- ``mask`` bool/uint8[n_rows] (or None = all allowed): entries whose position is not allowed
  are skipped inside the scan, so k results come back whenever k allowed entries exist.
  Entries at positions past the mask (rows written after the caller took its row
  snapshot) are skipped too.

Distances (lower is nearer), with r the decoded PQ residual of an entry of list l:

- l2 (0): ||q - c_l - r||^2, summed from a per-list table ||(q - c_l)_sub - codeword||^2,
  or (``precomputed``) ||q - c_l||^2 + sum_j [||r_j||^2 + 2 c_l,j . r_j] - 2 sum_j q_j . r_j
  with the bracket precomputed per (list, j, code) and one query table for all lists.
- ip (1): -(q.c_l + q.r); cosine (2): 1 - (q.c_l + q.r) (rows and query arrive normalised).
  One table of q_sub . codeword serves every list; q.c_l is a per-list constant.

IVF-Flat computes exact distances from X (n_rows, d) with the semantics of flat search.
Results are sorted by distance ascending, ties by lower position (bounded max-heap of size
kk, helpers from :mod:`.topk`). Single-query forms return kk' = min(kk, allowed entries
scanned) results; batch forms have fixed shape (nq, kk) padded with +inf / -1 and run the
queries in parallel. Probes of one query must be distinct (probe_lists guarantees it).
"""

from __future__ import annotations

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
    readonly_view,
)
from .distances import _dot, _l2sq
from .pq import check_codebooks, pq_decode_ref, transpose_codebooks
from .topk import heap_offer, heap_sort, topk_rows

__all__ = [
    "build_csr",
    "build_csr_ref",
    "probe_lists",
    "probe_lists_ref",
    "probe_lists_batch",
    "adc_search",
    "adc_search_ref",
    "adc_search_batch",
    "ivfflat_search",
    "ivfflat_search_ref",
    "ivfflat_search_batch",
]

# probe_lists_batch: bound on one block of query x centroid scores (16 MiB of float32).
PROBE_BLOCK_ELEMENTS = 1 << 22

_NO_MASK = readonly_view(np.ones(1, np.uint8))


# --------------------------------------------------------------------------- small kernels


@njit(cache=True, nogil=True)
def _csr_kernel(lists, nlist):
    n = lists.shape[0]
    offsets = np.zeros(nlist + 1, np.int64)
    for i in range(n):
        offsets[lists[i] + 1] += 1
    for l in range(nlist):
        offsets[l + 1] += offsets[l]
    fill = offsets[:-1].copy()
    order = np.empty(n, np.int64)
    for i in range(n):
        l = lists[i]
        order[fill[l]] = i
        fill[l] += 1
    return order, offsets


@njit(cache=True, nogil=True)
def _probe_kernel(q, centroids, nprobe, metric):
    hd = np.empty(nprobe, np.float32)
    hi = np.empty(nprobe, np.int64)
    size = 0
    worst = np.float32(np.inf)
    for l in range(centroids.shape[0]):
        if metric == IP:
            d = -_dot(q, centroids[l])
        else:
            d = _l2sq(q, centroids[l])
        if d > worst:
            continue
        size = heap_offer(hd, hi, size, nprobe, d, l)
        if size == nprobe:
            worst = hd[0]
    heap_sort(hd, hi, size)
    return hi[:size].copy()


_transpose_codebooks = transpose_codebooks


@njit(cache=True, nogil=True, fastmath=True)
def _l2_table(q, c, cbT, T):
    """T[j, t] = ||(q - c)_j - codeword_jt||^2."""
    m, dsub, ksub = cbT.shape
    for j in range(m):
        Tj = T[j]
        for t in range(ksub):
            Tj[t] = 0.0
        for u in range(dsub):
            r = q[j * dsub + u] - c[j * dsub + u]
            cu = cbT[j, u]
            for t in range(ksub):
                v = r - cu[t]
                Tj[t] += v * v


@njit(cache=True, nogil=True, fastmath=True)
def _neg_ip_table(q, cbT, T):
    """T[j, t] = -(q_j . codeword_jt)."""
    m, dsub, ksub = cbT.shape
    for j in range(m):
        Tj = T[j]
        for t in range(ksub):
            Tj[t] = 0.0
        for u in range(dsub):
            r = q[j * dsub + u]
            cu = cbT[j, u]
            for t in range(ksub):
                Tj[t] -= r * cu[t]


@njit(cache=True, nogil=True, fastmath=True)
def _add_scaled(P, S, T):
    """T = P + 2 S: a list's precomputed l2 term plus the query's -q_j . codeword table."""
    m, ksub = S.shape
    for j in range(m):
        Pj = P[j]
        Sj = S[j]
        Tj = T[j]
        for t in range(ksub):
            Tj[t] = Pj[t] + np.float32(2.0) * Sj[t]


@njit(cache=True, nogil=True, fastmath=True)
def _adc(T, code):
    s = np.float32(0.0)
    for j in range(code.shape[0]):
        s += T[j, code[j]]
    return s


@njit(cache=True, nogil=True, fastmath=True)
def _adc4(T, codes, r):
    """ADC sums of codes r..r+3: four independent chains over the same table row
    (measured, 25k codes x 64 sub-quantizers: 0.48 ms one code at a time, 0.40 ms four)."""
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    for j in range(codes.shape[1]):
        Tj = T[j]
        s0 += Tj[codes[r, j]]
        s1 += Tj[codes[r + 1, j]]
        s2 += Tj[codes[r + 2, j]]
        s3 += Tj[codes[r + 3, j]]
    return s0, s1, s2, s3


# --------------------------------------------------------------------------- scans


@njit(cache=True, nogil=True)
def widen_target(probes, offsets, doffsets, min_lists):
    """Allowed rows a widened filtered scan must see: every row (sealed and delta) of the
    first ``min_lists`` probed lists, i.e. as many candidates as the unfiltered query with
    nprobe = ``min_lists`` scans. 0 when ``min_lists`` < 0 (no widening)."""
    target = 0
    for p in range(min(max(min_lists, 0), probes.shape[0])):
        l = probes[p]
        target += offsets[l + 1] - offsets[l] + doffsets[l + 1] - doffsets[l]
    return target


@njit(cache=True, nogil=True)
def _adc_one(q, centroids, cbT, pre, probes, offsets, codes, pos, dcodes, dpos, dorder,
             doffsets, mask, use_mask, metric, hd, hi, min_lists=-1):
    """ADC scan of the probed lists (sealed rows then delta rows) into heap hd/hi; returns
    (heap size (unsorted), lists scanned, whether the widening target was reached).

    ``min_lists`` < 0: scan every list in ``probes``. Otherwise a widened filtered scan
    (:func:`widen_target`): after the first ``min_lists`` lists, stop at the first list
    boundary where the allowed rows seen reach the rows those first lists hold.

    l2 tables: ``pre`` (nlist, m, ksub) from :func:`.adctables.precompute_l2_terms` selects
    the precomputed form (one query table per query, one table add per list); an empty
    ``pre`` (0, m, ksub) the per-list form (see :mod:`.adctables` for the choice).
    """
    k = hd.shape[0]
    m, _, ksub = cbT.shape
    T = np.empty((m, ksub), np.float32)
    use_pre = metric == L2 and pre.shape[0] > 0
    if metric != L2:
        _neg_ip_table(q, cbT, T)
    S = T
    if use_pre:
        S = np.empty((m, ksub), np.float32)
        _neg_ip_table(q, cbT, S)
    size = 0
    worst = np.float32(np.inf)
    base = np.float32(0.0)
    target = widen_target(probes, offsets, doffsets, min_lists)
    seen = 0
    scanned = 0
    for p in range(probes.shape[0]):
        if p >= min_lists >= 0 and seen >= target:
            break
        scanned += 1
        l = probes[p]
        if offsets[l] == offsets[l + 1] and doffsets[l] == doffsets[l + 1]:
            continue
        if use_pre:
            # ||q - c - r||^2 = ||q - c||^2 + (||r||^2 + 2 c.r) - 2 q.r
            base = _l2sq(q, centroids[l])
            _add_scaled(pre[l], S, T)
        elif metric == L2:
            _l2_table(q, centroids[l], cbT, T)
        elif metric == IP:
            base = -_dot(q, centroids[l])
        else:
            base = np.float32(1.0) - _dot(q, centroids[l])
        r = offsets[l]
        end = offsets[l + 1]
        while r + 4 <= end:
            # four codes at once: four independent sums over the same table rows
            s0, s1, s2, s3 = _adc4(T, codes, r)
            for i in range(4):
                pr = pos[r + i]
                if use_mask and (pr >= mask.shape[0] or not mask[pr]):
                    continue
                seen += 1
                d = base + (s0 if i == 0 else s1 if i == 1 else s2 if i == 2 else s3)
                if d > worst:
                    continue
                size = heap_offer(hd, hi, size, k, d, pr)
                if size == k:
                    worst = hd[0]
            r += 4
        while r < end:
            pr = pos[r]
            if not (use_mask and (pr >= mask.shape[0] or not mask[pr])):
                seen += 1
                d = base + _adc(T, codes[r])
                if d <= worst:
                    size = heap_offer(hd, hi, size, k, d, pr)
                    if size == k:
                        worst = hd[0]
            r += 1
        for t in range(doffsets[l], doffsets[l + 1]):
            r = dorder[t]
            pr = dpos[r]
            if use_mask and (pr >= mask.shape[0] or not mask[pr]):
                continue
            seen += 1
            d = base + _adc(T, dcodes[r])
            if d > worst:
                continue
            size = heap_offer(hd, hi, size, k, d, pr)
            if size == k:
                worst = hd[0]
    return size, scanned, seen >= target


@njit(cache=True, nogil=True)
def _flat_one(q, X, probes, offsets, pos, dpos, dorder, doffsets, mask, use_mask, metric,
              hd, hi, min_lists=-1):
    """Exact scan of the probed lists into heap hd/hi; returns (heap size, lists scanned,
    target reached).
    ``min_lists``: as in :func:`_adc_one`."""
    k = hd.shape[0]
    size = 0
    worst = np.float32(np.inf)
    target = widen_target(probes, offsets, doffsets, min_lists)
    seen = 0
    scanned = 0
    for p in range(probes.shape[0]):
        if p >= min_lists >= 0 and seen >= target:
            break
        scanned += 1
        l = probes[p]
        for r in range(offsets[l], offsets[l + 1]):
            pr = pos[r]
            if use_mask and (pr >= mask.shape[0] or not mask[pr]):
                continue
            seen += 1
            d = distance(X[pr], q, metric)
            if d > worst:
                continue
            size = heap_offer(hd, hi, size, k, d, pr)
            if size == k:
                worst = hd[0]
        for t in range(doffsets[l], doffsets[l + 1]):
            pr = dpos[dorder[t]]
            if use_mask and (pr >= mask.shape[0] or not mask[pr]):
                continue
            seen += 1
            d = distance(X[pr], q, metric)
            if d > worst:
                continue
            size = heap_offer(hd, hi, size, k, d, pr)
            if size == k:
                worst = hd[0]
    return size, scanned, seen >= target


@njit(cache=True, nogil=True)
def _adc_search_kernel(q, centroids, codebooks, pre, probes, offsets, codes, pos, dcodes, dpos,
                       dorder, doffsets, mask, use_mask, metric, k):
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    cbT = _transpose_codebooks(codebooks)
    size, _, _ = _adc_one(q, centroids, cbT, pre, probes, offsets, codes, pos, dcodes, dpos,
                          dorder, doffsets, mask, use_mask, metric, hd, hi)
    heap_sort(hd, hi, size)
    return hd[:size].copy(), hi[:size].copy()


@njit(cache=True, nogil=True, parallel=True)
def _adc_batch_kernel(Q, centroids, codebooks, pre, probes, offsets, codes, pos, dcodes, dpos,
                      dorder, doffsets, mask, use_mask, metric, k):
    nq = Q.shape[0]
    D = np.empty((nq, k), np.float32)
    I = np.empty((nq, k), np.int64)
    cbT = _transpose_codebooks(codebooks)
    for r in prange(nq):
        size, _, _ = _adc_one(Q[r], centroids, cbT, pre, probes[r], offsets, codes, pos,
                              dcodes, dpos, dorder, doffsets, mask, use_mask, metric, D[r], I[r])
        heap_sort(D[r], I[r], size)
        for j in range(size, k):
            D[r, j] = np.inf
            I[r, j] = -1
    return D, I


@njit(cache=True, nogil=True)
def _flat_search_kernel(q, X, probes, offsets, pos, dpos, dorder, doffsets, mask, use_mask,
                        metric, k):
    hd = np.empty(k, np.float32)
    hi = np.empty(k, np.int64)
    size, _, _ = _flat_one(q, X, probes, offsets, pos, dpos, dorder, doffsets, mask,
                           use_mask, metric, hd, hi)
    heap_sort(hd, hi, size)
    return hd[:size].copy(), hi[:size].copy()


@njit(cache=True, nogil=True, parallel=True)
def _flat_batch_kernel(Q, X, probes, offsets, pos, dpos, dorder, doffsets, mask, use_mask,
                       metric, k):
    nq = Q.shape[0]
    D = np.empty((nq, k), np.float32)
    I = np.empty((nq, k), np.int64)
    for r in prange(nq):
        size, _, _ = _flat_one(Q[r], X, probes[r], offsets, pos, dpos, dorder, doffsets,
                               mask, use_mask, metric, D[r], I[r])
        heap_sort(D[r], I[r], size)
        for j in range(size, k):
            D[r, j] = np.inf
            I[r, j] = -1
    return D, I


# --------------------------------------------------------------------------- input checks


def _int_array(name, a, ndim=1):
    if not isinstance(a, np.ndarray) or a.ndim != ndim or a.dtype.kind not in "iu":
        got = f"a {a.dtype} array with {a.ndim} dims" if isinstance(a, np.ndarray) else type(a)
        raise InvalidInput(f"{name} is {got}; expected a {ndim}-D integer array")
    if a.dtype != np.int64 or not a.flags.c_contiguous:
        a = np.ascontiguousarray(a, dtype=np.int64)
    return readonly_view(a)


def _prepare_lists(lists, nlist):
    lists = _int_array("lists", lists)
    if isinstance(nlist, (bool, np.bool_)) or not isinstance(nlist, (int, np.integer)) or nlist < 1:
        raise InvalidInput(f"nlist is {nlist!r}; expected an integer >= 1")
    if lists.size and (lists.min() < 0 or lists.max() >= nlist):
        raise InvalidInput(
            f"lists span {lists.min()}..{lists.max()}; expected list ids in 0..{nlist - 1}"
        )
    return lists, int(nlist)


def build_csr(lists, nlist):
    """Stable counting sort of list ids (int32/int64 [N]) into CSR.

    Returns ``(order int64[N], offsets int64[nlist + 1])``: list l holds the entries
    order[offsets[l]:offsets[l+1]], in their original order.
    """
    lists, nlist = _prepare_lists(lists, nlist)
    return _csr_kernel(lists, nlist)


def _prepare_mask(mask):
    if mask is None:
        return _NO_MASK, False
    if not isinstance(mask, np.ndarray) or mask.ndim != 1 or mask.dtype not in (np.bool_, np.uint8):
        got = mask.dtype if isinstance(mask, np.ndarray) else type(mask)
        raise InvalidInput(f"mask is {got}; expected a 1-D bool or uint8 array or None")
    if not mask.flags.c_contiguous:
        mask = np.ascontiguousarray(mask)
    return readonly_view(mask.view(np.uint8)), True


def _prepare_query_side(q, centroids, metric, ndim):
    check_float32("q" if ndim == 1 else "Q", q, ndim)
    check_float32("centroids", centroids, 2)
    if q.shape[-1] != centroids.shape[1]:
        raise InvalidInput(
            f"query has dim {q.shape[-1]}; expected dim {centroids.shape[1]} like the centroids"
        )
    return readonly_view(q), readonly_view(centroids), check_metric_code(metric)


def _check_nprobe(nprobe, nlist):
    if isinstance(nprobe, (bool, np.bool_)) or not isinstance(nprobe, (int, np.integer)) \
            or nprobe < 1:
        raise InvalidInput(f"nprobe is {nprobe!r}; expected an integer >= 1")
    return min(int(nprobe), nlist)


def _prepare_probes(probes, nlist, ndim, nq=None):
    probes = _int_array("probes", probes, ndim)
    if ndim == 2 and probes.shape[0] != nq:
        raise InvalidInput(f"probes has {probes.shape[0]} rows; expected {nq}, one per query")
    if probes.size and (probes.min() < 0 or probes.max() >= nlist):
        raise InvalidInput(
            f"probes span {probes.min()}..{probes.max()}; expected list ids in 0..{nlist - 1}"
        )
    return probes


def _prepare_lists_part(nlist, offsets, pos, dpos, dlist, dn):
    """Checked (offsets, pos, dpos, dorder, doffsets): the delta bucketed by list."""
    offsets = _int_array("offsets", offsets)
    if offsets.shape[0] != nlist + 1:
        raise InvalidInput(
            f"offsets has length {offsets.shape[0]}; expected nlist + 1 = {nlist + 1}"
        )
    pos = _int_array("pos", pos)
    if offsets[-1] != pos.shape[0] or offsets[0] != 0:
        raise InvalidInput(
            f"offsets run {offsets[0]}..{offsets[-1]}; expected 0..{pos.shape[0]} (len(pos))"
        )
    dpos = _int_array("dpos", dpos)
    dlist = _int_array("dlist", dlist)
    if isinstance(dn, (bool, np.bool_)) or not isinstance(dn, (int, np.integer)):
        raise InvalidInput(f"dn is {dn!r}; expected an integer")
    if not 0 <= dn <= min(dpos.shape[0], dlist.shape[0]):
        raise InvalidInput(
            f"dn is {dn}; expected 0..{min(dpos.shape[0], dlist.shape[0])} (delta rows held)"
        )
    dlist_valid, _ = _prepare_lists(dlist[: int(dn)], nlist)
    dorder, doffsets = _csr_kernel(dlist_valid, nlist)
    return offsets, pos, dpos, readonly_view(dorder), readonly_view(doffsets)


def _check_codes(name, codes, m, rows):
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.ndim != 2:
        got = type(codes)
        if isinstance(codes, np.ndarray):
            got = f"{codes.dtype} {codes.ndim}-D array"
        raise InvalidInput(f"{name} is {got}; expected a 2-D uint8 array")
    if codes.shape[1] != m or codes.shape[0] < rows:
        raise InvalidInput(f"{name} has shape {codes.shape}; expected at least ({rows}, {m})")
    if not codes.flags.c_contiguous:
        codes = np.ascontiguousarray(codes)
    return readonly_view(codes)


def _prepare_precomputed(pre, nlist, m, ksub):
    if pre is None:
        return readonly_view(np.zeros((0, m, ksub), np.float32))
    check_float32("precomputed", pre, 3)
    if pre.shape != (nlist, m, ksub):
        raise InvalidInput(f"precomputed has shape {pre.shape}; expected (nlist, m, ksub) = "
                           f"{(nlist, m, ksub)}, from precompute_l2_terms")
    return readonly_view(pre)


def _prepare_adc(q, centroids, codebooks, probes, offsets, codes, pos, dcodes, dpos, dlist, dn,
                 mask, metric, kk, ndim, pre):
    q, centroids, metric = _prepare_query_side(q, centroids, metric, ndim)
    nlist = centroids.shape[0]
    codebooks = check_codebooks(codebooks, centroids.shape[1])
    m = codebooks.shape[0]
    pre = _prepare_precomputed(pre, nlist, m, codebooks.shape[1])
    probes = _prepare_probes(probes, nlist, ndim, q.shape[0] if ndim == 2 else None)
    offsets, pos, dpos, dorder, doffsets = _prepare_lists_part(nlist, offsets, pos, dpos,
                                                               dlist, dn)
    codes = _check_codes("codes", codes, m, pos.shape[0])
    dcodes = _check_codes("dcodes", dcodes, m, int(dn))
    mask, use_mask = _prepare_mask(mask)
    return (q, centroids, codebooks, pre, probes, offsets, codes, pos, dcodes, dpos, dorder,
            doffsets, mask, use_mask, metric, check_k(kk))


def _prepare_flat(q, X, centroids, probes, offsets, pos, dpos, dlist, dn, mask, metric, kk,
                  ndim):
    q, centroids, metric = _prepare_query_side(q, centroids, metric, ndim)
    check_float32("X", X, 2)
    if X.shape[1] != centroids.shape[1]:
        raise InvalidInput(f"X has dim {X.shape[1]}; expected dim {centroids.shape[1]}")
    nlist = centroids.shape[0]
    probes = _prepare_probes(probes, nlist, ndim, q.shape[0] if ndim == 2 else None)
    offsets, pos, dpos, dorder, doffsets = _prepare_lists_part(nlist, offsets, pos, dpos,
                                                               dlist, dn)
    mask, use_mask = _prepare_mask(mask)
    return (q, readonly_view(X), probes, offsets, pos, dpos, dorder, doffsets, mask, use_mask,
            metric, check_k(kk))


# --------------------------------------------------------------------------- entry points


def probe_lists(q, centroids, nprobe, metric):
    """The min(nprobe, nlist) lists nearest to q (dim,): smallest squared L2 to the centroid
    for l2 and cosine, largest inner product for ip; int64, nearest first."""
    q, centroids, metric = _prepare_query_side(q, centroids, metric, 1)
    nprobe = _check_nprobe(nprobe, centroids.shape[0])
    return _probe_kernel(q, centroids, nprobe, metric)


def probe_lists_batch(Q, centroids, nprobe, metric):
    """:func:`probe_lists` for every row of Q (nq, dim): int64 (nq, min(nprobe, nlist)).

    Scores come from BLAS in blocks of queries (||c||^2 - 2 q.c for l2/cosine, -q.c for ip),
    then a parallel top-k per row.
    """
    Q, centroids, metric = _prepare_query_side(Q, centroids, metric, 2)
    nlist = centroids.shape[0]
    nprobe = _check_nprobe(nprobe, nlist)
    nq = Q.shape[0]
    out = np.empty((nq, nprobe), np.int64)
    cn2 = np.einsum("ij,ij->i", centroids, centroids).astype(np.float32, copy=False)
    block = max(1, PROBE_BLOCK_ELEMENTS // nlist)
    for s in range(0, nq, block):
        G = Q[s : s + block] @ centroids.T
        if metric == IP:
            np.negative(G, out=G)
        else:
            G *= np.float32(-2.0)
            G += cn2
        out[s : s + block] = topk_rows(G, nprobe)[1]
    return out


def adc_search(q, centroids, codebooks, probes, offsets, codes, pos, dcodes, dpos, dlist, dn,
               mask, metric, kk, precomputed=None):
    """IVF-PQ ADC top-kk of one query over the probed lists (sealed + delta).

    Returns ``(dist float32[kk'], pos int64[kk'])`` ascending, kk' = min(kk, allowed
    entries scanned). See the module docstring for the array layout and distances.
    ``precomputed``: for l2, the (nlist, m, ksub) terms of
    :func:`.adctables.precompute_l2_terms` (same distances, tables built another way);
    None builds a table per probed list. ip and cosine ignore it.
    """
    args = _prepare_adc(q, centroids, codebooks, probes, offsets, codes, pos, dcodes, dpos,
                        dlist, dn, mask, metric, kk, 1, precomputed)
    if args[-1] == 0:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    return _adc_search_kernel(*args)


def adc_search_batch(Q, centroids, codebooks, probes2d, offsets, codes, pos, dcodes, dpos,
                     dlist, dn, mask, metric, kk, precomputed=None):
    """:func:`adc_search` for each row of Q with its row of probes2d, queries in parallel.

    Returns ``(D float32 (nq, kk), I int64 (nq, kk))`` padded with +inf / -1.
    """
    args = _prepare_adc(Q, centroids, codebooks, probes2d, offsets, codes, pos, dcodes, dpos,
                        dlist, dn, mask, metric, kk, 2, precomputed)
    if args[-1] == 0:
        return np.empty((Q.shape[0], 0), np.float32), np.empty((Q.shape[0], 0), np.int64)
    return _adc_batch_kernel(*args)


def ivfflat_search(q, X, centroids, probes, offsets, pos, dpos, dlist, dn, mask, metric, kk):
    """IVF-Flat top-kk of one query: exact distances from X (n_rows, dim) to the entries of
    the probed lists (sealed + delta), flat-search semantics. Same return as adc_search."""
    args = _prepare_flat(q, X, centroids, probes, offsets, pos, dpos, dlist, dn, mask, metric,
                         kk, 1)
    if args[-1] == 0:
        return np.empty(0, np.float32), np.empty(0, np.int64)
    return _flat_search_kernel(*args)


def ivfflat_search_batch(Q, X, centroids, probes2d, offsets, pos, dpos, dlist, dn, mask, metric,
                         kk):
    """:func:`ivfflat_search` for each row of Q, queries in parallel; padded (+inf, -1)."""
    args = _prepare_flat(Q, X, centroids, probes2d, offsets, pos, dpos, dlist, dn, mask, metric,
                         kk, 2)
    if args[-1] == 0:
        return np.empty((Q.shape[0], 0), np.float32), np.empty((Q.shape[0], 0), np.int64)
    return _flat_batch_kernel(*args)


# --------------------------------------------------------------------------- references


def build_csr_ref(lists, nlist):
    """numpy reference of :func:`build_csr`."""
    lists = np.asarray(lists, dtype=np.int64)
    order = np.argsort(lists, kind="stable").astype(np.int64)
    offsets = np.zeros(nlist + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(lists, minlength=nlist))
    return order, offsets


def probe_lists_ref(q, centroids, nprobe, metric):
    """numpy reference of :func:`probe_lists` (float64 scores, stable order)."""
    q = np.asarray(q, dtype=np.float64)
    C = np.asarray(centroids, dtype=np.float64)
    s = -(C @ q) if metric == IP else ((C - q) ** 2).sum(1)
    return np.argsort(s, kind="stable")[: min(nprobe, C.shape[0])].astype(np.int64)


def _probed_entries(probes, offsets, pos, dpos, dlist, dn, mask):
    """(list id, index into sealed or delta, is_delta, position) of allowed probed entries."""
    lists, idx, delta, where = [], [], [], []
    probed = set(int(l) for l in probes)
    for l in probes:
        r = np.arange(offsets[l], offsets[l + 1])
        lists.append(np.full(r.size, l))
        idx.append(r)
        delta.append(np.zeros(r.size, bool))
        where.append(np.asarray(pos)[r])
    dl = np.asarray(dlist)[:dn]
    r = np.flatnonzero(np.isin(dl, list(probed)))
    lists.append(dl[r])
    idx.append(r)
    delta.append(np.ones(r.size, bool))
    where.append(np.asarray(dpos)[r])
    lists, idx, delta, where = (np.concatenate(a) for a in (lists, idx, delta, where))
    if mask is not None:
        keep = np.asarray(mask, dtype=bool)[where]
        lists, idx, delta, where = lists[keep], idx[keep], delta[keep], where[keep]
    return lists.astype(np.int64), idx, delta, where.astype(np.int64)


def _top(dist, where, kk):
    order = np.lexsort((where, dist))[:kk]
    return dist[order].astype(np.float32), where[order]


def adc_search_ref(q, centroids, codebooks, probes, offsets, codes, pos, dcodes, dpos, dlist, dn,
                   mask, metric, kk):
    """numpy reference of :func:`adc_search`: decode c_l + residual, exact distance, sort."""
    lists, idx, delta, where = _probed_entries(probes, offsets, pos, dpos, dlist, dn, mask)
    m = codebooks.shape[0]
    c = np.empty((idx.size, m), np.uint8)
    c[~delta] = np.asarray(codes)[idx[~delta]]
    c[delta] = np.asarray(dcodes)[idx[delta]]
    V = np.asarray(centroids, np.float64)[lists] + pq_decode_ref(c, codebooks)
    return _top(distances_to_ref(V, q, metric).astype(np.float64), where, kk)


def ivfflat_search_ref(q, X, centroids, probes, offsets, pos, dpos, dlist, dn, mask, metric, kk):
    """numpy reference of :func:`ivfflat_search`."""
    _, _, _, where = _probed_entries(probes, offsets, pos, dpos, dlist, dn, mask)
    return _top(distances_to_ref(np.asarray(X)[where], q, metric).astype(np.float64), where, kk)
