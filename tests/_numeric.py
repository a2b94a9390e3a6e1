"""Comparisons of float results that hold on any x86-64 CPU.

BLAS (OpenBLAS picks its kernels per CPU and per block split) and numba ``fastmath`` loops
(vectorised for the host's SIMD width) do not round bitwise alike on every machine. Two
answers computed by different paths are therefore compared the way recall is: distances
within a tolerance, and ids free to differ only among entries whose distances are (nearly)
tied. Exact equality stays where the same computation is repeated on the same inputs.
"""

from __future__ import annotations

import numpy as np

#: relative tolerance of float32 distances (scaled by the largest magnitude compared)
REL_TOL = 1e-4


def tolerance(*arrays, rel: float = REL_TOL) -> float:
    biggest = max((float(np.abs(a).max()) for a in arrays if np.size(a)), default=0.0)
    return rel * max(1.0, biggest)


def _id_list(ids) -> list:
    # not np.asarray: a mixed list such as ["x", 3] would become strings ("3" == "3")
    return ids.tolist() if isinstance(ids, np.ndarray) else list(ids)


def assert_same_topk(dist_a, ids_a, dist_b, ids_b, *, rel: float = REL_TOL):
    """Two ascending top-k answers to one query agree up to float rounding.

    Same length; distances close rank by rank; an id present in both sits at nearly the
    same distance in each; an id present in only one is at the boundary (nearly tied with
    the other answer's last distance). ``ids`` may hold ints or any hashable ids.
    """
    dist_a = np.asarray(dist_a, np.float64)
    dist_b = np.asarray(dist_b, np.float64)
    ids_a, ids_b = _id_list(ids_a), _id_list(ids_b)
    assert len(ids_a) == len(ids_b) == dist_a.size == dist_b.size, \
        f"answers of different lengths: {len(ids_a)} and {len(ids_b)}"
    if not ids_a:
        return
    tol = tolerance(dist_a, dist_b, rel=rel)
    np.testing.assert_allclose(dist_a, dist_b, rtol=0, atol=tol)
    assert len(set(ids_a)) == len(ids_a) and len(set(ids_b)) == len(ids_b), "ids repeat"
    where_b = {i: d for i, d in zip(ids_b, dist_b)}
    where_a = {i: d for i, d in zip(ids_a, dist_a)}
    for ids, dists, other, last in ((ids_a, dist_a, where_b, dist_b[-1]),
                                    (ids_b, dist_b, where_a, dist_a[-1])):
        for i, d in zip(ids, dists):
            if i in other:
                assert abs(other[i] - d) <= tol, f"id {i!r} at {d} and at {other[i]}"
            else:
                assert d >= last - tol, \
                    f"id {i!r} at {d} is missing from the other answer, which ends at {last}"


def assert_same_hits(hits_a, hits_b, *, rel: float = REL_TOL):
    """``assert_same_topk`` for two lists of ``Hit``."""
    assert_same_topk([h.distance for h in hits_a], [h.id for h in hits_a],
                     [h.distance for h in hits_b], [h.id for h in hits_b], rel=rel)


def assert_labels_tie_aware(X, C, labels_a, labels_b, *, ip: bool = False,
                            rel: float = REL_TOL):
    """Two nearest-centroid assignments agree wherever the nearest centroid is not (nearly)
    tied: where they differ, both centroids are at the same float64 distance within tol."""
    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    assert labels_a.shape == labels_b.shape
    diff = np.flatnonzero(labels_a != labels_b)
    if diff.size == 0:
        return
    Xd = np.asarray(X, np.float64)[diff]
    Cd = np.asarray(C, np.float64)

    def dist(labels):
        if ip:
            return -(Xd * Cd[labels[diff]]).sum(1)
        return ((Xd - Cd[labels[diff]]) ** 2).sum(1)

    da, db = dist(labels_a), dist(labels_b)
    tol = tolerance(da, db, rel=rel)
    np.testing.assert_allclose(da, db, rtol=0, atol=tol,
                               err_msg=f"labels differ at rows {diff[:10].tolist()} "
                                       "where the centroids are not tied")


def exact_distances(X, Q, metric):
    """(len(Q), len(X)) float64 distances in the engine's units (l2 squared, ip negated,
    cosine 1 - cos): the reference the recall tests measure against."""
    X = np.asarray(X, np.float64)
    Q = np.atleast_2d(np.asarray(Q, np.float64))
    if metric == "l2":
        return (Q * Q).sum(1)[:, None] - 2.0 * Q @ X.T + (X * X).sum(1)[None, :]
    if metric == "ip":
        return -(Q @ X.T)
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    Qn = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    return 1.0 - Qn @ Xn.T
