"""Micro-benchmarks of the numba kernels, each group against a numpy (or faiss) baseline run in
the same process; compare within a group (`--benchmark-only`, read the ratios of the means).

With `--benchmark-disable` every benchmark runs once and checks its result, so this file is
also a quick test. Sizes: 100k x 128 float32 rows (51 MB), the single-query latency case.
"""

from __future__ import annotations

import numpy as np
import pytest

from simplevector.engine.kernels.distances import IP, L2, distances_to
from simplevector.engine.kernels.flat import (
    numba_threads,
    search_batch,
    search_one,
    search_subset,
)
from simplevector.engine.kernels.topk import topk_rows, topk_smallest

N, DIM, K, NQ = 100_000, 128, 10, 64


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2024)
    X = rng.standard_normal((N, DIM), dtype=np.float32)
    X.flags.writeable = False  # like an LMDB view
    xnorm2 = np.einsum("ij,ij->i", X, X).astype(np.float32)
    Q = rng.standard_normal((NQ, DIM), dtype=np.float32)
    positions = np.sort(rng.choice(N, N // 10, replace=False)).astype(np.int64)
    return X, xnorm2, Q, positions


def numpy_topk(d, k):
    idx = np.argpartition(d, k)[:k]
    return idx[np.argsort(d[idx], kind="stable")]


def numpy_search_ip(X, q, k):
    return numpy_topk(-(X @ q), k)


def numpy_search_l2(X, xnorm2, q, k):
    return numpy_topk(xnorm2 - 2.0 * (X @ q), k)


def numpy_search_batch_ip(X, Q, k):
    D = -(Q @ X.T)
    idx = np.argpartition(D, k, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(D, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


def assert_topk_of(pos, scores, k):
    """``pos`` is a top-k of ``scores`` (a float64 reference) up to float rounding: numba's
    fastmath sums and BLAS round differently per CPU, so near-tied rows may swap."""
    pos = np.asarray(pos)
    assert pos.shape == (k,) and len(set(pos.tolist())) == k
    best = np.sort(scores)[:k]
    tol = 1e-4 * max(1.0, float(np.abs(best).max()))
    np.testing.assert_allclose(np.sort(scores[pos]), best, rtol=0, atol=tol)


def ref_ip(X, q):
    return -(X.astype(np.float64) @ q.astype(np.float64))


def ref_l2(X, q):
    return ((X.astype(np.float64) - q.astype(np.float64)) ** 2).sum(1)


# --------------------------------------------------------------------------- distances


@pytest.mark.benchmark(group="distances 100k x 128")
def test_bench_distances_to_numba(benchmark, data):
    X, _, Q, _ = data
    d = benchmark(distances_to, X, Q[0], IP)
    np.testing.assert_allclose(d, -(X @ Q[0]), rtol=1e-4, atol=1e-3)


@pytest.mark.benchmark(group="distances 100k x 128")
def test_bench_distances_to_numpy_matmul(benchmark, data):
    X, _, Q, _ = data
    d = benchmark(lambda: -(X @ Q[0]))
    assert d.shape == (N,)


# --------------------------------------------------------------------------- top-k


@pytest.fixture(scope="module")
def dists(data):
    X, _, Q, _ = data
    return np.ascontiguousarray(-(X @ Q[0]))


@pytest.mark.benchmark(group="topk 100k k=10")
def test_bench_topk_smallest_numba(benchmark, dists):
    vals, idx = benchmark(topk_smallest, dists, K)
    assert_topk_of(idx, dists.astype(np.float64), K)       # same input: ties only


@pytest.mark.benchmark(group="topk 100k k=10")
def test_bench_topk_smallest_numpy_argpartition(benchmark, dists):
    idx = benchmark(numpy_topk, dists, K)
    assert idx.shape == (K,)


@pytest.fixture(scope="module")
def dist_rows(data):
    X, _, Q, _ = data
    return np.ascontiguousarray(-(Q[:16] @ X.T))


@pytest.mark.benchmark(group="topk rows 16 x 100k k=10")
def test_bench_topk_rows_numba(benchmark, dist_rows):
    V, I = benchmark(topk_rows, dist_rows, K)
    assert_topk_of(I[0], dist_rows[0].astype(np.float64), K)


@pytest.mark.benchmark(group="topk rows 16 x 100k k=10")
def test_bench_topk_rows_numpy_argpartition(benchmark, dist_rows):
    idx = benchmark(lambda: np.argpartition(dist_rows, K, axis=1)[:, :K])
    assert idx.shape == (16, K)


# --------------------------------------------------------------------------- search_one


@pytest.mark.benchmark(group="search_one ip 100k x 128 k=10")
def test_bench_search_one_ip_numba(benchmark, data):
    X, xnorm2, Q, _ = data
    dist, pos = benchmark(search_one, X, xnorm2, Q[0], IP, K)
    assert_topk_of(pos, ref_ip(X, Q[0]), K)


@pytest.mark.benchmark(group="search_one ip 100k x 128 k=10")
def test_bench_search_one_ip_numba_one_thread(benchmark, data):
    X, xnorm2, Q, _ = data
    with numba_threads(1):
        dist, pos = benchmark(search_one, X, xnorm2, Q[0], IP, K)
    assert_topk_of(pos, ref_ip(X, Q[0]), K)


@pytest.mark.benchmark(group="search_one ip 100k x 128 k=10")
def test_bench_search_one_ip_numpy_matmul_argpartition(benchmark, data):
    X, _, Q, _ = data
    pos = benchmark(numpy_search_ip, X, Q[0], K)
    assert pos.shape == (K,)


@pytest.mark.benchmark(group="search_one l2 100k x 128 k=10")
def test_bench_search_one_l2_numba(benchmark, data):
    X, xnorm2, Q, _ = data
    dist, pos = benchmark(search_one, X, xnorm2, Q[0], L2, K)
    assert_topk_of(pos, ref_l2(X, Q[0]), K)


@pytest.mark.benchmark(group="search_one l2 100k x 128 k=10")
def test_bench_search_one_l2_numpy_matmul_argpartition(benchmark, data):
    X, xnorm2, Q, _ = data
    pos = benchmark(numpy_search_l2, X, xnorm2, Q[0], K)
    assert pos.shape == (K,)


@pytest.mark.benchmark(group="search_one ip masked 50% 100k x 128 k=10")
def test_bench_search_one_masked_numba(benchmark, data):
    X, xnorm2, Q, _ = data
    mask = np.zeros(N, bool)
    mask[::2] = True
    dist, pos = benchmark(search_one, X, xnorm2, Q[0], IP, K, mask)
    assert np.all(pos % 2 == 0) and pos.shape == (K,)


# --------------------------------------------------------------------------- search_subset


@pytest.mark.benchmark(group="search_subset ip 10k of 100k k=10")
def test_bench_search_subset_numba(benchmark, data):
    X, xnorm2, Q, positions = data
    dist, pos = benchmark(search_subset, X, xnorm2, Q[0], IP, K, positions)
    assert set(pos.tolist()) <= set(positions.tolist())
    scores = np.full(N, np.inf)
    scores[positions] = ref_ip(X[positions], Q[0])
    assert_topk_of(pos, scores, K)


@pytest.mark.benchmark(group="search_subset ip 10k of 100k k=10")
def test_bench_search_subset_numpy_take_matmul(benchmark, data):
    X, _, Q, positions = data
    pos = benchmark(lambda: positions[numpy_search_ip(X[positions], Q[0], K)])
    assert pos.shape == (K,)


# --------------------------------------------------------------------------- search_batch


@pytest.mark.benchmark(group="search_batch ip 64 x 100k x 128 k=10")
def test_bench_search_batch_numba(benchmark, data):
    X, xnorm2, Q, _ = data
    D, I = benchmark(search_batch, X, xnorm2, Q, IP, K)
    for r in range(NQ):
        assert_topk_of(I[r], ref_ip(X, Q[r]), K)


@pytest.mark.benchmark(group="search_batch ip 64 x 100k x 128 k=10")
def test_bench_search_batch_numpy_matmul_argpartition(benchmark, data):
    X, _, Q, _ = data
    I = benchmark(numpy_search_batch_ip, X, Q, K)
    assert I.shape == (NQ, K)


@pytest.mark.benchmark(group="search_batch ip 64 x 100k x 128 k=10")
def test_bench_search_batch_faiss_flat_ip(benchmark, data):
    faiss = pytest.importorskip("faiss")
    X, _, Q, _ = data
    index = faiss.IndexFlatIP(DIM)
    index.add(X)
    D, I = benchmark(index.search, Q, K)
    assert I.shape == (NQ, K)
