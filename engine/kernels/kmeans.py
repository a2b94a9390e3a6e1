"""k-means: the coarse quantizer of IVF indexes and the sub-quantizers of PQ.

- :func:`kmeans` seeds with k-means++ (on a seeded subsample of at most
  ``SEED_POINTS_PER_CENTROID * k`` rows), then runs *niter* Lloyd iterations. Empty clusters
  are repaired as FAISS does: the centroid of the largest cluster is copied and the pair is
  pushed apart by a small symmetric multiplicative perturbation (+-1/1024 per coordinate).
- :func:`assign` is the nearest-centroid step. For dims of at least ``BLAS_MIN_DIM`` it takes
  inner products from BLAS in blocks of rows (so one block of distances stays under
  ``ASSIGN_BLOCK_ELEMENTS``) and picks the best centroid per row with a parallel numba kernel;
  for small dims (PQ sub-spaces, where a matmul writes far more than it computes) one
  parallel numba kernel computes the distances directly, a block of rows at a time.
  Measured (one thread, CPU time, n=65536, k=1024): d=4 direct 0.023 s vs BLAS 0.133 s;
  d=16 0.063 s vs 0.112 s; d=24 equal (0.09 s); d=50 BLAS 0.110 s vs direct 0.180 s. On a
  loaded 2-core machine BLAS's and numba's thread pools can contend; BLAS still does less
  work at d=50, so it stays the choice there.

Metrics (codes from :mod:`.distances`): l2 (0) and cosine (2) cluster by squared L2; ip (1)
assigns by the largest inner product and keeps centroids at unit norm (spherical k-means, as
FAISS trains an inner-product IVF quantizer). ``dist`` from :func:`assign` is the squared L2
distance for l2/cosine and ``-ip`` for ip. The whole run is deterministic for a seed.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from ..errors import InvalidInput
from .distances import IP, _l2sq, check_float32, check_metric_code, readonly_view
from .threads import one_blas_thread, worker_pool

__all__ = [
    "kmeans",
    "kmeans_ref",
    "assign",
    "assign_ref",
    "kmeanspp_init",
    "kmeans_objective",
]

# k-means++ seeding runs on at most this many rows per centroid (a seeded subsample).
SEED_POINTS_PER_CENTROID = 32
# assign(): dims from which BLAS inner products beat the direct numba kernel (measured).
BLAS_MIN_DIM = 24
# assign(): bound on one block of BLAS distances (16 MiB of float32).
ASSIGN_BLOCK_ELEMENTS = 1 << 22
# assign(): from this many rows (and more than one numba thread), blocks of rows run on
# several Python threads with one BLAS thread each (see kernels/threads.py).
THREADED_ASSIGN_ROWS = 4096
# Relative perturbation used when splitting a cluster to refill an empty one (FAISS: 1/1024).
SPLIT_EPS = 1.0 / 1024.0


# --------------------------------------------------------------------------- small helpers


# --------------------------------------------------------------------------- kernels


@njit(cache=True, nogil=True, parallel=True)
def _kmeanspp_kernel(X, first, u):
    """k-means++ seeding: centroid 0 is X[first], then each next one is drawn with
    probability proportional to the squared distance to the nearest chosen centroid, using
    the uniform draws u (k - 1,) so the result depends only on the caller's seed."""
    n, d = X.shape
    k = u.shape[0] + 1
    C = np.empty((k, d), np.float32)
    C[0] = X[first]
    mind = np.empty(n, np.float64)
    for i in range(n):
        mind[i] = _l2sq(X[i], C[0])
    for c in range(1, k):
        total = 0.0
        for i in range(n):
            total += mind[i]
        pick = min(n - 1, int(u[c - 1] * n))  # every row already a centroid: any row
        if total > 0.0:
            target = u[c - 1] * total
            acc = 0.0
            pick = -1
            last = 0
            for i in range(n):
                if mind[i] > 0.0:
                    last = i
                    acc += mind[i]
                    if acc >= target:
                        pick = i
                        break
            if pick < 0:  # rounding at the top end of the cumulative sum
                pick = last
        C[c] = X[pick]
        for i in prange(n):  # each row on its own: the same result on any thread count
            dd = _l2sq(X[i], C[c])
            if dd < mind[i]:
                mind[i] = dd
    return C


# rows per block of the direct nearest-codeword kernel: its inner loops run over the rows
# of a block, so a block must be long enough for LLVM to vectorise them (measured, one
# thread, 1000 rows against 25 sub-spaces x 256 codewords of 2 dims: 16 rows 6.7 ms,
# 64 rows 1.2 ms, 128 rows 1.07 ms, 256 rows 1.05 ms; a loop over codewords per row with
# a vectorised argmin took 4.0 ms)
DIRECT_BLOCK_ROWS = 128


@njit(cache=True, nogil=True, fastmath=True)
def nearest_direct_block(X, s, e, off, CT, metric, xs, acc, best, arg):
    """Nearest column of CT (d, k) for rows s..e of X over the columns off..off+d: squared
    L2 (or -ip for metric IP) computed directly, first index on ties.

    Scratch: xs (d, B), acc / best (B,) float32, arg (B,) int32 with e - s <= B; on return
    best[:e-s] / arg[:e-s] hold the distance and the index. The loops over the B rows of
    the block are innermost (a branch-free compare-and-select), so they vectorise.
    """
    d, k = CT.shape
    B = xs.shape[1]
    nb = e - s
    for u in range(d):
        for i in range(nb):
            xs[u, i] = X[s + i, off + u]
        for i in range(nb, B):
            xs[u, i] = 0.0
    for t in range(k):
        for i in range(B):
            acc[i] = 0.0
        for u in range(d):
            c = CT[u, t]
            if metric == IP:
                for i in range(B):
                    acc[i] -= xs[u, i] * c
            else:
                for i in range(B):
                    v = xs[u, i] - c
                    acc[i] += v * v
        if t == 0:
            for i in range(B):
                best[i] = acc[i]
                arg[i] = 0
        else:
            for i in range(B):
                lt = acc[i] < best[i]
                best[i] = acc[i] if lt else best[i]
                arg[i] = t if lt else arg[i]


@njit(cache=True, nogil=True, fastmath=True)
def argmin_first(acc):
    """(first index of the minimum, minimum) of the 1-D float32 acc (finite values).

    The minimum is taken over 16 independent lanes, a shape LLVM vectorises (a plain
    running min does not), then the first index holding it is found."""
    k = acc.shape[0]
    lanes = np.empty(16, np.float32)
    for t in range(16):
        lanes[t] = acc[0]
    nb = k // 16
    for b in range(nb):
        for t in range(16):
            v = acc[b * 16 + t]
            lanes[t] = v if v < lanes[t] else lanes[t]
    best = lanes[0]
    for t in range(1, 16):
        if lanes[t] < best:
            best = lanes[t]
    for j in range(nb * 16, k):
        if acc[j] < best:
            best = acc[j]
    for j in range(k):
        if acc[j] == best:
            return j, best
    return 0, best


@njit(cache=True, nogil=True)
def direct_scratch(d):
    """(xs, acc, best, arg): the scratch of :func:`nearest_direct_block` for d dims."""
    B = DIRECT_BLOCK_ROWS
    return (np.empty((d, B), np.float32), np.empty(B, np.float32), np.empty(B, np.float32),
            np.empty(B, np.int32))


@njit(cache=True, nogil=True, parallel=True)
def _assign_direct(X, CT, metric, labels, dist):
    """Nearest centroid of every row, distances computed directly (small dims); blocks of
    DIRECT_BLOCK_ROWS rows in parallel, each with its own scratch."""
    n, d = X.shape
    B = DIRECT_BLOCK_ROWS
    nblocks = (n + B - 1) // B
    for b in prange(nblocks):
        xs, acc, best, arg = direct_scratch(d)
        s = b * B
        e = min(n, s + B)
        nearest_direct_block(X, s, e, 0, CT, metric, xs, acc, best, arg)
        for i in range(e - s):
            labels[s + i] = arg[i]
            dist[s + i] = best[i]


@njit(cache=True, nogil=True, fastmath=True)
def _argmin_block(G, cn2, xn2, metric, labels, dist):
    """Best centroid per row of the inner-product block G (rows, k), overwritten with the
    scores: l2 uses ||c||^2 - 2 x.c (dist adds ||x||^2, clamped at 0); ip uses -x.c.
    Scores, then their minimum, then its first index: three loops that vectorise. Serial:
    the caller runs blocks on several threads (see :func:`_assign_unchecked`)."""
    nb, k = G.shape
    for r in range(nb):
        g = G[r]
        if metric == IP:
            for j in range(k):
                g[j] = -g[j]
        else:
            for j in range(k):
                g[j] = cn2[j] - np.float32(2.0) * g[j]
        bj, best = argmin_first(g)
        labels[r] = bj
        if metric == IP:
            dist[r] = best
        else:
            v = xn2[r] + best
            dist[r] = v if v > 0 else np.float32(0.0)


@njit(cache=True, nogil=True)
def _update_kernel(X, labels, C_old):
    """New centroids = means of their rows (float64 sums); an empty cluster keeps its old
    centroid (the caller splits). Returns (C, counts)."""
    n, d = X.shape
    k = C_old.shape[0]
    sums = np.zeros((k, d), np.float64)
    counts = np.zeros(k, np.int64)
    for i in range(n):
        c = labels[i]
        counts[c] += 1
        for t in range(d):
            sums[c, t] += X[i, t]
    C = np.empty((k, d), np.float32)
    for c in range(k):
        if counts[c] > 0:
            inv = 1.0 / counts[c]
            for t in range(d):
                C[c, t] = sums[c, t] * inv
        else:
            for t in range(d):
                C[c, t] = C_old[c, t]
    return C, counts


@njit(cache=True, nogil=True)
def _split_empty_kernel(C, counts, eps):
    """Refill every empty cluster by splitting the currently largest one (FAISS's symmetric
    perturbation). Updates C and counts in place; returns how many were split."""
    k, d = C.shape
    nsplit = 0
    for ci in range(k):
        if counts[ci] != 0:
            continue
        cj = 0
        for c in range(1, k):
            if counts[c] > counts[cj]:
                cj = c
        if counts[cj] < 2:
            break  # nothing left to split (n < k is rejected by the wrapper)
        for t in range(d):
            v = C[cj, t]
            if t % 2 == 0:
                C[ci, t] = v * (1.0 + eps)
                C[cj, t] = v * (1.0 - eps)
            else:
                C[ci, t] = v * (1.0 - eps)
                C[cj, t] = v * (1.0 + eps)
        counts[ci] = counts[cj] // 2
        counts[cj] -= counts[ci]
        nsplit += 1
    return nsplit


# --------------------------------------------------------------------------- entry points


def _check_rows(name, X):
    check_float32(name, X, 2)
    return readonly_view(X)


def _normalize_in_place(C):
    norms = np.sqrt(np.einsum("ij,ij->i", C, C, dtype=np.float64))
    norms[norms == 0.0] = 1.0
    C /= norms[:, None].astype(np.float32)


def _assign_unchecked(X, C, metric):
    n, d = X.shape
    k = C.shape[0]
    labels = np.empty(n, np.int64)
    dist = np.empty(n, np.float32)
    if n == 0:
        return labels, dist
    if d < BLAS_MIN_DIM:
        _assign_direct(X, np.ascontiguousarray(C.T), metric, labels, dist)
        return labels, dist
    cn2 = np.einsum("ij,ij->i", C, C).astype(np.float32, copy=False)
    CT = C.T
    threads = numba.get_num_threads()
    block = max(1, min(n, ASSIGN_BLOCK_ELEMENTS // k))
    if threads > 1 and n >= THREADED_ASSIGN_ROWS:
        block = min(block, -(-n // threads))

    def run(s):
        e = min(n, s + block)
        Xb = X[s:e]
        G = Xb @ CT
        xn2 = np.einsum("ij,ij->i", Xb, Xb).astype(np.float32, copy=False)
        _argmin_block(G, cn2, xn2, metric, labels[s:e], dist[s:e])

    starts = range(0, n, block)
    if threads > 1 and len(starts) > 1:
        with one_blas_thread():
            for _ in worker_pool().map(run, starts):
                pass
    else:
        for s in starts:
            run(s)
    return labels, dist


def assign(X, C, metric=0):
    """Nearest centroid of each row of X (n, d) among C (k, d), both float32 C-contiguous.

    Returns ``(labels int64[n], dist float32[n])``: squared L2 for l2 (0) and cosine (2); for
    ip (1) the largest inner product, with dist = -ip. Memory is bounded by blocks of rows.
    """
    X = _check_rows("X", X)
    C = _check_rows("C", C)
    metric = check_metric_code(metric)
    if C.shape[1] != X.shape[1]:
        raise InvalidInput(f"C has dim {C.shape[1]}; expected dim {X.shape[1]} like X")
    if C.shape[0] == 0:
        raise InvalidInput("C has 0 centroids; expected at least 1")
    return _assign_unchecked(X, C, metric)


def kmeans_objective(X, C, metric=0) -> float:
    """Sum over rows of the assignment distance (the k-means objective for l2/cosine)."""
    return float(np.sum(assign(X, C, metric)[1], dtype=np.float64))


def _check_kmeans_args(X, k, niter, max_points, metric):
    X = _check_rows("X", X)
    metric = check_metric_code(metric)
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidInput(f"k is {k!r}; expected an integer >= 1")
    if not isinstance(niter, (int, np.integer)) or niter < 0:
        raise InvalidInput(f"niter is {niter!r}; expected an integer >= 0")
    if max_points is not None and (not isinstance(max_points, (int, np.integer)) or max_points < k):
        raise InvalidInput(f"max_points is {max_points!r}; expected None or an integer >= k ({k})")
    n = X.shape[0]
    if n < k:
        raise InvalidInput(f"k-means got {n} training rows for k={k}; expected at least {k}")
    return X, int(k), int(niter), metric


def _training_sample(X, max_points, rng):
    n = X.shape[0]
    if max_points is None or n <= max_points:
        return X
    idx = np.sort(rng.choice(n, int(max_points), replace=False))
    return readonly_view(np.ascontiguousarray(X[idx]))


def kmeanspp_init(X, k, seed=0):
    """k-means++ initial centroids (k, d) of X, on a seeded subsample of at most
    SEED_POINTS_PER_CENTROID * k rows. Deterministic for a seed."""
    X = _check_rows("X", X)
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    ns = min(n, SEED_POINTS_PER_CENTROID * k)
    S = X
    if ns < n:
        S = readonly_view(np.ascontiguousarray(X[np.sort(rng.choice(n, ns, replace=False))]))
    first = int(rng.integers(ns))
    u = rng.random(k - 1)
    return _kmeanspp_kernel(S, first, u)


def kmeans(X, k, *, niter=20, seed=0, max_points=None, metric=0):
    """Train k centroids on the rows of X (n, d) float32; returns centroids (k, d) float32.

    k-means++ seeding, then *niter* Lloyd iterations (assign, update, split empty clusters).
    When max_points is set and n > max_points, trains on a seeded random sample of
    max_points rows. Raises InvalidInput when n < k. Deterministic for a seed.
    """
    X, k, niter, metric = _check_kmeans_args(X, k, niter, max_points, metric)
    rng = np.random.default_rng(seed)
    X = _training_sample(X, max_points, rng)
    C = kmeanspp_init(X, k, seed=int(rng.integers(2**63 - 1)))
    if metric == IP:
        _normalize_in_place(C)
    for _ in range(niter):
        labels, _dist = _assign_unchecked(X, C, metric)
        C, counts = _update_kernel(X, labels, C)
        _split_empty_kernel(C, counts, SPLIT_EPS)
        if metric == IP:
            _normalize_in_place(C)
    return C


# --------------------------------------------------------------------------- references


def assign_ref(X, C, metric=0):
    """numpy reference of :func:`assign` (float64, no blocking)."""
    X = np.asarray(X, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    if metric == IP:
        D = -(X @ C.T)
    else:
        D = ((X[:, None, :] - C[None, :, :]) ** 2).sum(-1)
    labels = np.argmin(D, axis=1).astype(np.int64)
    return labels, D[np.arange(X.shape[0]), labels].astype(np.float32)


def kmeans_ref(X, k, *, niter=20, seed=0, max_points=None, metric=0):
    """Plain numpy Lloyd from the same seeding and sample as :func:`kmeans` (for tests)."""
    X, k, niter, metric = _check_kmeans_args(X, k, niter, max_points, metric)
    rng = np.random.default_rng(seed)
    X = _training_sample(X, max_points, rng)
    C = kmeanspp_init(X, k, seed=int(rng.integers(2**63 - 1))).astype(np.float64)
    Xd = X.astype(np.float64)

    def normalize(C):
        nrm = np.linalg.norm(C, axis=1, keepdims=True)
        return C / np.where(nrm == 0, 1.0, nrm)

    if metric == IP:
        C = normalize(C)
    for _ in range(niter):
        if metric == IP:
            labels = np.argmax(Xd @ C.T, axis=1)
        else:
            D = (Xd**2).sum(1)[:, None] + (C**2).sum(1)[None, :] - 2.0 * (Xd @ C.T)
            labels = np.argmin(D, axis=1)
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(C)
        np.add.at(sums, labels, Xd)
        nonempty = counts > 0
        C[nonempty] = sums[nonempty] / counts[nonempty, None]
        for ci in np.flatnonzero(counts == 0):
            cj = int(np.argmax(counts))
            sign = np.where(np.arange(C.shape[1]) % 2 == 0, 1.0, -1.0) * SPLIT_EPS
            C[ci] = C[cj] * (1.0 + sign)
            C[cj] = C[cj] * (1.0 - sign)
            counts[ci] = counts[cj] // 2
            counts[cj] -= counts[ci]
        if metric == IP:
            C = normalize(C)
    return C.astype(np.float32)
