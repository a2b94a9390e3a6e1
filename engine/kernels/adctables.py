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

Per-list tables cost dsub multiply-adds per table entry, precomputed ones one add plus a
read of the term from memory (cache misses: nlist * m * ksub * 4 bytes do not stay in cache).
With 2-dim sub-vectors the two are close; with 8-dim ones the per-list table is most of the
query. :func:`use_precomputed` is the one place the choice is made.
"""

from __future__ import annotations

import numpy as np

from .distances import IP

__all__ = [
    "PRECOMPUTED_MIN_DSUB",
    "PRECOMPUTED_MAX_BYTES",
    "precomputed_bytes",
    "use_precomputed",
    "precompute_l2_terms",
    "precompute_l2_terms_ref",
]

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
