"""How IVF-PQ builds its ADC lookup tables, and the precomputed l2 terms.

An ADC scan sums, per code, one table entry per sub-quantizer. The table can be built in
three ways (FAISS's IndexIVFPQ has the same three, see its ``use_precomputed_table``):

- **query-only** (ip and cosine-as-ip): <q, c_l + r> = <q, c_l> + sum_j <q_j, r_j>, so one
  (m, ksub) table of q_j . codeword serves every list; <q, c_l> is a per-list constant.
  Nothing to choose: the ip scan always does this.
- **per-list** (l2, and cosine, which scans by l2 over unit rows): for each probed list,
  T_l[j, t] = ||(q - c_l)_j - codeword_jt||^2: nprobe * m * ksub * dsub multiply-adds per
  query, from the codebooks (small, cache-resident).
- **precomputed** (l2, cosine): ||q - c_l - r||^2 = ||q - c_l||^2
  + sum_j [||r_j||^2 + 2 <c_l,j, r_j>] - 2 sum_j <q_j, r_j>. The bracket depends on the list
  and the code only: computed once per index, nlist * m * ksub float32
  (:func:`precompute_l2_terms`). A query then builds one table -q_j . codeword (m * ksub *
  dsub multiply-adds) and, per probed list, adds it to the list's term (m * ksub adds, read
  from memory).

- **row terms** (l2, cosine; what the engine uses): the bracket summed over j is one number
  per stored row, N_i = ||c_l + r_i||^2 - ||c_l||^2 = sum_j [||r_ij||^2 + 2 <c_l,j, r_ij>]
  (:func:`row_l2_terms` for CSR lists, :func:`delta_l2_terms` for loose rows). Then
  ||q - c_l - r_i||^2 = ||q - c_l||^2 + N_i - 2 sum_j <q_j, r_ij>: like ip, one query-only
  table (m * ksub * dsub multiply-adds per query) serves every list, a probed list costs one
  scalar, a code one more 4-byte read. FAISS's additive quantizers store the same norm
  ("ST_norm_float"). 4 bytes per row of derived state, computed when lists are built, loaded
  or appended to (never stored in a checkpoint).

Per-list tables cost dsub multiply-adds per table entry, precomputed ones one add plus a
read of the term from memory (cache misses: nlist * m * ksub * 4 bytes do not stay in cache),
row terms nothing per list. With 2-dim sub-vectors per-list and precomputed tables are close;
with 8-dim ones the per-list table is most of the query. :func:`table_strategy` is the one
place the engine's choice is made (measured: bench/README.md, "ADC table strategy").
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .distances import IP

__all__ = [
    "PRECOMPUTED_MIN_DSUB",
    "PRECOMPUTED_MAX_BYTES",
    "precomputed_bytes",
    "use_precomputed",
    "precompute_l2_terms",
    "precompute_l2_terms_ref",
    "table_strategy",
    "row_l2_terms",
    "delta_l2_terms",
    "row_l2_terms_ref",
    "NO_TERMS",
]

#: The row-terms arguments of a scan that does not use them (per-list or precomputed).
NO_TERMS = np.zeros(0, np.float32)

#: Precomputed l2 tables from this sub-vector width up. Measured (``python -m
#: bench.ivf_dims --tables-sweep``: 40k synthetic rows, IVF256, one thread, the same index
#: timed both ways): at dsub 2 neither wins consistently (per-list/precomputed time
#: 0.75-1.13), at dsub 4 precomputed is 2-18% faster, at dsub 8 18-50%; table in
#: bench/README.md.
PRECOMPUTED_MIN_DSUB = 4
#: Upper bound on the precomputed terms of one index (nlist * m * ksub * 4 bytes, derived
#: state held in memory and recomputed on load). IVF256,PQ48 takes 12.6 MB, IVF1024,PQ96
#: 100 MB: past the bound an index keeps per-list tables (same results, slower at large
#: dsub) rather than holding that much memory per namespace.
PRECOMPUTED_MAX_BYTES = 64 << 20


def precomputed_bytes(nlist: int, m: int, ksub: int) -> int:
    return nlist * m * ksub * 4


def use_precomputed(metric: int, nlist: int, m: int, ksub: int, dsub: int) -> bool:
    """Whether an IVF-PQ index scans l2 with precomputed tables (else per-list tables).

    Never for ip (its table is query-only already); for l2 and cosine when the sub-vectors
    are at least :data:`PRECOMPUTED_MIN_DSUB` wide and the terms fit in
    :data:`PRECOMPUTED_MAX_BYTES`.
    """
    if metric == IP or m == 0:
        return False
    return dsub >= PRECOMPUTED_MIN_DSUB and \
        precomputed_bytes(nlist, m, ksub) <= PRECOMPUTED_MAX_BYTES


def precompute_l2_terms(centroids: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """P[l, j, t] = ||codeword_jt||^2 + 2 <c_l,j, codeword_jt>: float32 (nlist, m, ksub).

    One BLAS product per sub-space ((nlist, dsub) @ (dsub, ksub)), float32.
    """
    C = np.ascontiguousarray(centroids, np.float32)
    cb = np.ascontiguousarray(codebooks, np.float32)
    nlist = C.shape[0]
    m, ksub, dsub = cb.shape
    P = np.empty((nlist, m, ksub), np.float32)
    norms = np.einsum("jtu,jtu->jt", cb, cb)
    for j in range(m):
        G = C[:, j * dsub:(j + 1) * dsub] @ cb[j].T
        G *= np.float32(2.0)
        G += norms[j]
        P[:, j, :] = G
    return P


def precompute_l2_terms_ref(centroids, codebooks):
    """numpy reference of :func:`precompute_l2_terms` (float64 sums)."""
    C = np.asarray(centroids, np.float64)
    cb = np.asarray(codebooks, np.float64)
    m, ksub, dsub = cb.shape
    Cs = C.reshape(C.shape[0], m, dsub)
    P = (cb ** 2).sum(-1)[None, :, :] + 2.0 * np.einsum("lju,jtu->ljt", Cs, cb)
    return P.astype(np.float32)


def table_strategy(metric: int, m: int) -> str:
    """The engine's ADC tables for an index: "none" (IVF-Flat), "query" (ip) or "row_terms"
    (l2, cosine; at every shape: a query-only table and per-row terms do less work per query
    than per-list or precomputed tables, which stay for the measurements and the tests)."""
    if m == 0:
        return "none"
    return "query" if metric == IP else "row_terms"


@njit(cache=True, nogil=True, fastmath=True)
def _list_terms(c, cbT, T):
    """T[j, t] = ||codeword_jt||^2 + 2 <c_j, codeword_jt> for one list's centroid c."""
    m, dsub, ksub = cbT.shape
    for j in range(m):
        Tj = T[j]
        for t in range(ksub):
            Tj[t] = 0.0
        for u in range(dsub):
            cu = cbT[j, u]
            cc = np.float32(2.0) * c[j * dsub + u]
            for t in range(ksub):
                w = cu[t]
                Tj[t] += w * (w + cc)


@njit(cache=True, nogil=True)
def _row_terms_kernel(offsets, codes, centroids, cbT):
    # serial: a reopen computes the terms before its first answer, and loading a parallel
    # kernel (its thread pool) cost ~1.1 s there against tens of ms for the work at 60k rows
    n, m = codes.shape
    ksub = cbT.shape[2]
    out = np.empty(n, np.float32)
    for l in range(offsets.shape[0] - 1):
        if offsets[l] == offsets[l + 1]:
            continue
        T = np.empty((m, ksub), np.float32)
        _list_terms(centroids[l], cbT, T)
        for r in range(offsets[l], offsets[l + 1]):
            s = np.float32(0.0)
            for j in range(m):
                s += T[j, codes[r, j]]
            out[r] = s
    return out


def row_l2_terms(offsets, codes, centroids, cbT) -> np.ndarray:
    """N_i (float32 (N,)) for CSR lists: list l's rows are ``codes[offsets[l]:offsets[l+1]]``.
    One (m, ksub) term table per non-empty list (ksub * dim multiply-adds), then m reads
    per row, one thread. ``cbT``: the codebooks transposed
    (:func:`.pq.transpose_codebooks`)."""
    if codes.shape[0] == 0:
        return np.zeros(0, np.float32)
    return _row_terms_kernel(offsets, codes, centroids, cbT)


@njit(cache=True, nogil=True)
def _delta_terms_kernel(lists, codes, centroids, codebooks):
    n, m = codes.shape
    dsub = codebooks.shape[2]
    out = np.empty(n, np.float32)
    for i in range(n):
        c = centroids[lists[i]]
        s = np.float32(0.0)
        for j in range(m):
            w = codebooks[j, codes[i, j]]
            for u in range(dsub):
                s += w[u] * (w[u] + np.float32(2.0) * c[j * dsub + u])
        out[i] = s
    return out


def delta_l2_terms(lists, codes, centroids, codebooks) -> np.ndarray:
    """N_i for loose rows (a write batch: list ids ``lists`` int32/int64 (n,), codes (n, m)):
    decoded directly, dim multiply-adds a row."""
    if codes.shape[0] == 0:
        return np.zeros(0, np.float32)
    return _delta_terms_kernel(np.ascontiguousarray(lists, np.int64), codes, centroids,
                               codebooks)


def row_l2_terms_ref(lists, codes, centroids, codebooks) -> np.ndarray:
    """numpy reference of both: ||c_l + r_i||^2 - ||c_l||^2 in float64, as float32."""
    C = np.asarray(centroids, np.float64)[np.asarray(lists, np.int64)]
    m = codebooks.shape[0]
    R = np.concatenate([np.asarray(codebooks, np.float64)[j][np.asarray(codes)[:, j]]
                        for j in range(m)], axis=1) if len(C) else np.zeros_like(C)
    return (((C + R) ** 2).sum(1) - (C ** 2).sum(1)).astype(np.float32)
