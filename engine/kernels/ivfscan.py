"""IVF scan kernels: list probing, the IVF-PQ ADC scan and the IVF-Flat scan, and their
numpy references. The engine's query kernels (:mod:`.ivffused`) are built from these public
pieces; the tests compare the pieces and the fused kernels with the references here.

Inverted lists are kept as CSR plus a small unsorted delta:

- sealed part: ``offsets`` int64[nlist + 1]; list l holds rows ``offsets[l]:offsets[l+1]`` of
  ``codes`` uint8[N, m] (IVF-PQ only) and ``pos`` int64[N], the row positions into the
  engine's matrix. :func:`build_csr` computes the order and offsets (stable counting sort).
- delta: ``dcodes`` uint8[D, m], ``dpos`` int64[D] and its rows bucketed by list
  (``dorder``, ``doffsets`` from :func:`build_csr` of the delta's list ids): list l's delta
  rows are ``dorder[doffsets[l]:doffsets[l+1]]``, scanned after its sealed rows with the
  same lookup table.
- ``mask`` bool/uint8[n_rows] with ``use_mask``: entries whose position is not allowed are
  skipped inside the scan (:func:`allowed`), so k results come back whenever k allowed
  entries exist. Entries at positions past the mask (rows written after the caller took its
  row snapshot) are skipped too. ``use_mask=False`` skips the lookup (every row allowed).

Distances (lower is nearer), with r the decoded PQ residual of an entry of list l:

- l2 (0): ||q - c_l - r||^2, summed from a per-list table ||(q - c_l)_sub - codeword||^2,
  or (``pre``) ||q - c_l||^2 + sum_j [||r_j||^2 + 2 c_l,j . r_j] - 2 sum_j q_j . r_j
  with the bracket precomputed per (list, j, code) and one query table for all lists.
- ip (1): -(q.c_l + q.r); cosine (2): 1 - (q.c_l + q.r) (rows and query arrive normalised).
  One table of q_sub . codeword serves every list; q.c_l is a per-list constant.

IVF-Flat computes exact distances from X (n_rows, d) with the semantics of flat search.
Every kernel keeps its best entries in a bounded max-heap (:func:`.topk.heap_consider`),
ties broken by lower position. The kernels take arrays the engine owns and has validated
(the IVF index builds them): no per-call checks, and read-only arrays are accepted. Probes
of one query must be distinct (:func:`probe` guarantees it).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .distances import IP, L2, distance, distances_to_ref, readonly_view
from .distances import _dot, _l2sq
from .pq import pq_decode_ref
from .topk import heap_consider, heap_sort, topk_rows

__all__ = [
    "NO_MASK",
    "allowed",
    "build_csr",
    "build_csr_ref",
    "probe",
    "probe_lists_ref",
    "probe_lists_batch",
    "widen_target",
    "adc_scan",
    "adc_scan_table",
    "query_tables",
    "adc_search_ref",
    "flat_scan",
    "ivfflat_search_ref",
]

# probe_lists_batch: bound on one block of query x centroid scores (16 MiB of float32).
PROBE_BLOCK_ELEMENTS = 1 << 22

#: The ``mask`` to pass with ``use_mask=False``.
NO_MASK = readonly_view(np.ones(1, np.uint8))


# --------------------------------------------------------------------------- small kernels


@njit(cache=True, nogil=True, inline="always")
def allowed(mask, use_mask, p):
    """Whether position p passes the row mask (always, when ``use_mask`` is false)."""
    return not use_mask or (p < mask.shape[0] and mask[p] != 0)


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


def build_csr(lists, nlist: int):
    """Stable counting sort of list ids (ints in 0..nlist-1, [N]) into CSR.

    Returns ``(order int64[N], offsets int64[nlist + 1])``: list l holds the entries
    order[offsets[l]:offsets[l+1]], in their original order.
    """
    return _csr_kernel(np.ascontiguousarray(lists, np.int64), int(nlist))


#: :func:`probe` sorts every list's key instead of keeping a heap from nprobe > nlist / this
#: (a widened filtered scan probes up to nlist lists). 512 lists x 384-d, one query:
#: heap 44 us at nprobe 100 and 70 us at 320, key sort 29-34 us; at 32 the heap is faster.
PROBE_SORT_FRACTION = 6


@njit(cache=True, nogil=True)
def probe(q, centroids, nprobe, metric):
    """The min(nprobe, nlist) lists nearest to q: smallest squared L2 to the centroid (l2,
    cosine), largest inner product (ip); int64, nearest first, ties by lower list id."""
    nlist = centroids.shape[0]
    nprobe = min(nprobe, nlist)
    if nprobe * PROBE_SORT_FRACTION > nlist:
        # one sort of (distance, list id) keys: ties by lower id as the heap's
        keys = np.empty(nlist, np.uint64)
        cell = np.empty(1, np.float32)
        bits = cell.view(np.uint32)
        for l in range(nlist):
            cell[0] = -_dot(q, centroids[l]) if metric == IP else _l2sq(q, centroids[l])
            b = bits[0]
            b = ~b if b & np.uint32(0x80000000) else b | np.uint32(0x80000000)
            keys[l] = (np.uint64(b) << np.uint64(32)) | np.uint64(l)
        keys.sort()
        out = np.empty(nprobe, np.int64)
        for i in range(nprobe):
            out[i] = np.int64(keys[i] & np.uint64(0xFFFFFFFF))
        return out
    hd = np.empty(nprobe, np.float32)
    hi = np.empty(nprobe, np.int64)
    size = 0
    worst = np.float32(np.inf)
    for l in range(centroids.shape[0]):
        d = -_dot(q, centroids[l]) if metric == IP else _l2sq(q, centroids[l])
        if d <= worst:
            size, worst = heap_consider(hd, hi, size, worst, d, l)
    heap_sort(hd, hi, size)
    return hi[:size].copy()


def probe_lists_batch(Q, centroids, nprobe: int, metric: int):
    """:func:`probe` for every row of Q (nq, dim): int64 (nq, min(nprobe, nlist)).

    Scores come from BLAS in blocks of queries (||c||^2 - 2 q.c for l2/cosine, -q.c for ip),
    then a parallel top-k per row.
    """
    nlist = centroids.shape[0]
    nprobe = min(int(nprobe), nlist)
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


# --------------------------------------------------------------------------- tables


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
def chunk_probes(probes, nchunks, c, min_lists):
    """Chunk c of a single query's probes split across ``nchunks`` threads (interleaved,
    so every chunk starts near the query) and its share of ``min_lists`` (-1 stays -1)."""
    sub = np.ascontiguousarray(probes[c::nchunks])
    share = -1 if min_lists < 0 else (min_lists + nchunks - 1 - c) // nchunks
    return sub, share


@njit(cache=True, nogil=True)
def widen_target(probes, offsets, doffsets, min_lists, target_share):
    """Allowed rows a widened filtered scan must see: ``target_share`` of every row (sealed
    and delta) of the first ``min_lists`` probed lists, the candidates the unfiltered query
    with nprobe = ``min_lists`` scans (the planner passes the filter's share of rows to the
    power ``planner.WIDEN_EXPONENT``: engine/planner.py, "ivf"). 0 when ``min_lists`` < 0
    (no widening)."""
    rows = 0
    for p in range(min(max(min_lists, 0), probes.shape[0])):
        l = probes[p]
        rows += offsets[l + 1] - offsets[l] + doffsets[l + 1] - doffsets[l]
    return np.int64(np.ceil(rows * target_share))


@njit(cache=True, nogil=True)
def adc_scan(q, centroids, cbT, pre, probes, offsets, codes, pos, snorm, dcodes, dpos, dnorm,
             dorder, doffsets, mask, use_mask, metric, hd, hi, min_lists, target_share):
    """ADC scan of one query; see :func:`adc_scan_table` (which this calls, building the
    query's table itself)."""
    return adc_scan_table(q, centroids, cbT, pre, np.empty((0, cbT.shape[2]), np.float32),
                          probes, offsets, codes, pos, snorm, dcodes, dpos, dnorm, dorder,
                          doffsets, mask, use_mask, metric, hd, hi, min_lists, target_share)


def query_tables(Q, cbT, scale: float) -> np.ndarray:
    """The query-only ADC tables of every row of Q at once, by BLAS: float32 (nq, m, ksub),
    ``scale * (q_j . codeword_jt)``; -1 is the ip table, -2 the row-terms l2 table
    (:func:`adc_scan_table`'s ``qtable``)."""
    m, dsub, _ = cbT.shape
    Qs = np.ascontiguousarray(np.asarray(Q, np.float32).reshape(len(Q), m, dsub)
                              .transpose(1, 0, 2))
    T = np.matmul(Qs, cbT)                        # (m, nq, ksub)
    T *= np.float32(scale)
    return np.ascontiguousarray(T.transpose(1, 0, 2))


@njit(cache=True, nogil=True)
def adc_scan_table(q, centroids, cbT, pre, qtable, probes, offsets, codes, pos, snorm, dcodes,
                   dpos, dnorm, dorder, doffsets, mask, use_mask, metric, hd, hi, min_lists,
                   target_share):
    """ADC scan of the probed lists (sealed rows then delta rows) into the heap hd/hi
    (capacity ``hd.shape[0]``); returns (heap size (unsorted), lists scanned, whether the
    widening target was reached).

    ``cbT``: the codebooks transposed (:func:`.pq.transpose_codebooks`). l2 tables: ``pre``
    (nlist, m, ksub) from :func:`.adctables.precompute_l2_terms` selects the precomputed
    form (one query table per query, one table add per list); an empty ``pre`` (0, m, ksub)
    the per-list form, unless ``snorm`` / ``dnorm`` hold one row term per sealed / delta code
    row (:func:`.adctables.row_l2_terms`): then one query-only table -2 q_j . codeword
    serves every list and a row's distance is ||q - c_l||^2 + its term + the table sum
    (pass :data:`.adctables.NO_TERMS` for both otherwise; see :mod:`.adctables` for the
    choice). ``min_lists`` < 0: scan every
    list in ``probes``. Otherwise a widened filtered scan (:func:`widen_target`): after the
    first ``min_lists`` lists, stop at the first list boundary where the allowed rows seen
    reach ``target_share`` of the rows those first lists hold. ``qtable`` (m, ksub): the
    query-only table computed by the caller (:func:`query_tables`, for ip and row-terms
    scans; ignored otherwise), or (0, ksub) to build it here.
    """
    m, _, ksub = cbT.shape
    T = np.empty((m, ksub), np.float32)
    use_pre = metric == L2 and pre.shape[0] > 0
    use_terms = (metric == L2 and not use_pre and snorm.shape[0] == codes.shape[0]
                 and dnorm.shape[0] == dcodes.shape[0])
    if (metric != L2 or use_terms) and qtable.shape[0] > 0:
        T = qtable
    elif metric != L2 or use_terms:
        _neg_ip_table(q, cbT, T)
        if use_terms:
            for j in range(m):
                for t in range(ksub):
                    T[j, t] *= np.float32(2.0)
    S = T
    if use_pre:
        S = np.empty((m, ksub), np.float32)
        _neg_ip_table(q, cbT, S)
    size = 0
    worst = np.float32(np.inf)
    base = np.float32(0.0)
    target = widen_target(probes, offsets, doffsets, min_lists, target_share)
    seen = 0
    scanned = 0
    for p in range(probes.shape[0]):
        if p >= min_lists >= 0 and seen >= target:
            break
        scanned += 1
        l = probes[p]
        if offsets[l] == offsets[l + 1] and doffsets[l] == doffsets[l + 1]:
            continue
        if use_terms:
            # ||q - c - r||^2 = ||q - c||^2 + N_r - 2 q.r, N_r per row
            base = _l2sq(q, centroids[l])
        elif use_pre:
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
            s0 += base
            s1 += base
            s2 += base
            s3 += base
            if use_terms:
                s0 += snorm[r]
                s1 += snorm[r + 1]
                s2 += snorm[r + 2]
                s3 += snorm[r + 3]
            if not use_mask:
                # every row allowed: a position is read only for a code that enters the
                # heap (most do not: 60k x 384, nprobe 16, 45 -> 30 ns a code)
                seen += 4
                if s0 <= worst:
                    size, worst = heap_consider(hd, hi, size, worst, s0, pos[r])
                if s1 <= worst:
                    size, worst = heap_consider(hd, hi, size, worst, s1, pos[r + 1])
                if s2 <= worst:
                    size, worst = heap_consider(hd, hi, size, worst, s2, pos[r + 2])
                if s3 <= worst:
                    size, worst = heap_consider(hd, hi, size, worst, s3, pos[r + 3])
                r += 4
                continue
            for i in range(4):
                pr = pos[r + i]
                if not allowed(mask, use_mask, pr):
                    continue
                seen += 1
                d = s0 if i == 0 else s1 if i == 1 else s2 if i == 2 else s3
                if d <= worst:
                    size, worst = heap_consider(hd, hi, size, worst, d, pr)
            r += 4
        while r < end:
            pr = pos[r]
            if allowed(mask, use_mask, pr):
                seen += 1
                d = base + _adc(T, codes[r])
                if use_terms:
                    d += snorm[r]
                if d <= worst:
                    size, worst = heap_consider(hd, hi, size, worst, d, pr)
            r += 1
        for t in range(doffsets[l], doffsets[l + 1]):
            r = dorder[t]
            pr = dpos[r]
            if allowed(mask, use_mask, pr):
                seen += 1
                d = base + _adc(T, dcodes[r])
                if use_terms:
                    d += dnorm[r]
                if d <= worst:
                    size, worst = heap_consider(hd, hi, size, worst, d, pr)
    return size, scanned, seen >= target


@njit(cache=True, nogil=True)
def flat_scan(q, X, probes, offsets, pos, dpos, dorder, doffsets, mask, use_mask, metric,
              hd, hi, min_lists, target_share):
    """Exact scan of the probed lists into the heap hd/hi; returns (heap size, lists
    scanned, target reached). ``min_lists``: as in :func:`adc_scan`."""
    size = 0
    worst = np.float32(np.inf)
    target = widen_target(probes, offsets, doffsets, min_lists, target_share)
    seen = 0
    scanned = 0
    for p in range(probes.shape[0]):
        if p >= min_lists >= 0 and seen >= target:
            break
        scanned += 1
        l = probes[p]
        for r in range(offsets[l], offsets[l + 1]):
            pr = pos[r]
            if allowed(mask, use_mask, pr):
                seen += 1
                d = distance(X[pr], q, metric)
                if d <= worst:
                    size, worst = heap_consider(hd, hi, size, worst, d, pr)
        for t in range(doffsets[l], doffsets[l + 1]):
            pr = dpos[dorder[t]]
            if allowed(mask, use_mask, pr):
                seen += 1
                d = distance(X[pr], q, metric)
                if d <= worst:
                    size, worst = heap_consider(hd, hi, size, worst, d, pr)
    return size, scanned, seen >= target


# --------------------------------------------------------------------------- references


def build_csr_ref(lists, nlist):
    """numpy reference of :func:`build_csr`."""
    lists = np.asarray(lists, dtype=np.int64)
    order = np.argsort(lists, kind="stable").astype(np.int64)
    offsets = np.zeros(nlist + 1, np.int64)
    offsets[1:] = np.cumsum(np.bincount(lists, minlength=nlist))
    return order, offsets


def probe_lists_ref(q, centroids, nprobe, metric):
    """numpy reference of :func:`probe` (float64 scores, stable order)."""
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


def widen_ref(probes, offsets, pos, dpos, dlist, dn, mask, min_lists, target_share):
    """numpy reference of the lists a widened scan opens (:func:`widen_target`): the prefix
    of ``probes`` after which (at least ``min_lists`` in) the allowed rows seen reach
    ``target_share`` of the rows of the first ``min_lists`` lists. Returns (probes scanned,
    target reached)."""
    probes = np.asarray(probes)
    if min_lists < 0:
        return probes, True
    dl = np.asarray(dlist)[:dn]
    sizes = np.diff(np.asarray(offsets)) + np.bincount(dl, minlength=len(offsets) - 1)
    target = int(np.ceil(int(sizes[probes[:min_lists]].sum()) * target_share))
    keep = np.ones(np.asarray(pos).max(initial=0) + np.asarray(dpos).max(initial=0) + 2, bool) \
        if mask is None else np.asarray(mask, bool)
    seen = 0
    for i, l in enumerate(probes):
        if i >= min_lists and seen >= target:
            return probes[:i], True
        where = np.concatenate([np.asarray(pos)[offsets[l]:offsets[l + 1]],
                                np.asarray(dpos)[:dn][dl == l]])
        seen += int(sum(1 for p in where if p < len(keep) and keep[p]))
    return probes, seen >= target


def adc_search_ref(q, centroids, codebooks, probes, offsets, codes, pos, dcodes, dpos, dlist, dn,
                   mask, metric, kk):
    """numpy reference of :func:`adc_scan` (then sorted): decode c_l + residual, exact
    distance, the kk nearest ascending (ties by lower position)."""
    lists, idx, delta, where = _probed_entries(probes, offsets, pos, dpos, dlist, dn, mask)
    m = codebooks.shape[0]
    c = np.empty((idx.size, m), np.uint8)
    c[~delta] = np.asarray(codes)[idx[~delta]]
    c[delta] = np.asarray(dcodes)[idx[delta]]
    V = np.asarray(centroids, np.float64)[lists] + pq_decode_ref(c, codebooks)
    return _top(distances_to_ref(V, q, metric).astype(np.float64), where, kk)


def ivfflat_search_ref(q, X, centroids, probes, offsets, pos, dpos, dlist, dn, mask, metric, kk):
    """numpy reference of :func:`flat_scan` (then sorted)."""
    _, _, _, where = _probed_entries(probes, offsets, pos, dpos, dlist, dn, mask)
    return _top(distances_to_ref(np.asarray(X)[where], q, metric).astype(np.float64), where, kk)
