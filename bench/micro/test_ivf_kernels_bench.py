"""Micro-benchmarks of the IVF kernels (k-means, PQ, ADC scan, probes), each group against a
numpy baseline run in the same process; compare within a group (`--benchmark-only`, read the
ratios of the means). With `--benchmark-disable` every benchmark runs once and checks its
result, so this file is also a quick test.

Sizes: 65536 x 50 rows, k=1024 for the k-means step (the coarse quantizer case); an IVF-PQ
layout of 50000 x 50 rows, nlist=256, m=25 for the scans.

The one-off comparison with FAISS (200k x 50 clustered rows, nlist=1024, m=25) is not a
pytest benchmark because it trains for tens of seconds; run it as a script:

    python bench/micro/test_ivf_kernels_bench.py
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from simplevector.engine.kernels.adctables import NO_TERMS
from simplevector.engine.kernels.distances import L2
from simplevector.engine.kernels.ivfscan import NO_MASK, adc_scan, adc_search_ref, build_csr
from simplevector.engine.kernels.ivfscan import probe as probe_lists
from simplevector.engine.kernels.kmeans import _assign_unchecked, _update_kernel, assign, kmeans
from simplevector.engine.kernels.pq import pq_decode, pq_encode, pq_train, transpose_codebooks
from simplevector.engine.kernels.topk import heap_sort

N, DIM, K, NLIST, M, NPROBE, KK = 50_000, 50, 1024, 256, 25, 16, 10


def clustered(seed, n, dim, nclusters):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((nclusters, dim), dtype=np.float32) * 2
    labels = rng.integers(0, nclusters, n)
    return (centers[labels] + rng.standard_normal((n, dim), dtype=np.float32)).astype(np.float32)


# --------------------------------------------------------------------------- k-means step


@pytest.fixture(scope="module")
def kdata():
    X = clustered(1, 65_536, DIM, 2000)
    X.flags.writeable = False
    return X, np.ascontiguousarray(X[:: 64][:K])


def numpy_lloyd_step(X, C):
    D = (C * C).sum(1) - 2.0 * (X @ C.T)
    labels = D.argmin(1)
    counts = np.bincount(labels, minlength=C.shape[0])
    sums = np.zeros(C.shape, np.float64)
    np.add.at(sums, labels, X)
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


@pytest.mark.benchmark(group="kmeans step 65536 x 50 k=1024")
def test_bench_kmeans_step_numba(benchmark, kdata):
    X, C = kdata

    def step():
        labels, _ = _assign_unchecked(X, C, L2)
        return _update_kernel(X, labels, C)

    C2, counts = benchmark(step)
    assert C2.shape == C.shape and counts.sum() == X.shape[0]


@pytest.mark.benchmark(group="kmeans step 65536 x 50 k=1024")
def test_bench_kmeans_step_numpy(benchmark, kdata):
    X, C = kdata
    C2 = benchmark(numpy_lloyd_step, X, C)
    assert C2.shape == C.shape


# --------------------------------------------------------------------------- IVF-PQ layout


@pytest.fixture(scope="module")
def ivf():
    X = clustered(2, N, DIM, 500)
    C = kmeans(X, NLIST, niter=5, seed=0)
    lists, _ = assign(X, C)
    R = X - C[lists]
    codebooks = pq_train(R, M, niter=5, seed=0, max_points=10_000)
    codes = pq_encode(R, codebooks)
    order, offsets = build_csr(lists, NLIST)
    Q = clustered(3, 64, DIM, 500)
    return dict(X=X, R=R, C=C, cb=codebooks, offsets=offsets,
                codes=np.ascontiguousarray(codes[order]), pos=order, Q=Q)


def adc_call(ivf, q, probes, kk=KK):
    """The engine's ADC scan (ivfscan.adc_scan, per-list l2 tables, no delta), sorted."""
    empty = np.zeros((0, M), np.uint8)
    none = np.zeros(0, np.int64)
    if "cbT" not in ivf:
        ivf["cbT"] = transpose_codebooks(ivf["cb"])
        ivf["no_pre"] = np.zeros((0, M, ivf["cb"].shape[1]), np.float32)
        ivf["no_delta"] = np.zeros(ivf["C"].shape[0] + 1, np.int64)
    hd, hi = np.empty(kk, np.float32), np.empty(kk, np.int64)
    size, _, _ = adc_scan(q, ivf["C"], ivf["cbT"], ivf["no_pre"], probes, ivf["offsets"],
                          ivf["codes"], ivf["pos"], NO_TERMS, empty, none, NO_TERMS, none,
                          ivf["no_delta"], NO_MASK, False, L2, hd, hi, -1, 1.0)
    heap_sort(hd, hi, size)
    return hd[:size], hi[:size]


def numpy_adc(ivf, q, probes, kk=KK):
    """The same ADC in numpy: per-list table, fancy-indexed sums, argpartition."""
    cb, codes, offsets, pos = ivf["cb"], ivf["codes"], ivf["offsets"], ivf["pos"]
    m, ksub, dsub = cb.shape
    ds, ps = [], []
    for l in probes:
        r = (q - ivf["C"][l]).reshape(m, 1, dsub)
        T = ((r - cb) ** 2).sum(-1)
        c = codes[offsets[l] : offsets[l + 1]]
        ds.append(T[np.arange(m), c].sum(1))
        ps.append(pos[offsets[l] : offsets[l + 1]])
    d, p = np.concatenate(ds), np.concatenate(ps)
    idx = np.argpartition(d, kk)[:kk]
    idx = idx[np.argsort(d[idx])]
    return d[idx], p[idx]


@pytest.mark.benchmark(group="pq_encode 50000 x 50 m=25")
def test_bench_pq_encode_numba(benchmark, ivf):
    codes = benchmark(pq_encode, ivf["R"], ivf["cb"])
    assert codes.shape == (N, M)


@pytest.mark.benchmark(group="pq_encode 50000 x 50 m=25")
def test_bench_pq_encode_numpy(benchmark, ivf):
    R, cb = ivf["R"][:5000], ivf["cb"]  # numpy on 1/10 of the rows (x10 to compare)

    def encode():
        out = np.empty((R.shape[0], M), np.uint8)
        for j in range(M):
            sub = R[:, j * 2 : j * 2 + 2]
            D = (cb[j] * cb[j]).sum(1) - 2.0 * (sub @ cb[j].T)
            out[:, j] = D.argmin(1)
        return out

    codes = benchmark(encode)
    assert (codes == pq_encode(R, cb)).mean() > 0.99


@pytest.mark.benchmark(group="adc_search 50000 x 50 nlist=256 nprobe=16")
def test_bench_adc_search_numba(benchmark, ivf):
    q = ivf["Q"][0]
    probes = probe_lists(q, ivf["C"], NPROBE, L2)
    dist, pos = benchmark(adc_call, ivf, q, probes)
    ref = numpy_adc(ivf, q, probes)
    np.testing.assert_allclose(dist, ref[0], rtol=1e-4, atol=1e-3)


@pytest.mark.benchmark(group="adc_search 50000 x 50 nlist=256 nprobe=16")
def test_bench_adc_search_numpy(benchmark, ivf):
    q = ivf["Q"][0]
    probes = probe_lists(q, ivf["C"], NPROBE, L2)
    dist, pos = benchmark(numpy_adc, ivf, q, probes)
    assert dist.shape == (KK,)


@pytest.mark.benchmark(group="probe_lists nlist=256 nprobe=16")
def test_bench_probe_lists_numba(benchmark, ivf):
    q = ivf["Q"][0]
    probes = benchmark(probe_lists, q, ivf["C"], NPROBE, L2)
    assert probes.shape == (NPROBE,)


@pytest.mark.benchmark(group="probe_lists nlist=256 nprobe=16")
def test_bench_probe_lists_numpy(benchmark, ivf):
    q, C = ivf["Q"][0], ivf["C"]

    def probe():
        d = (C * C).sum(1) - 2.0 * (C @ q)
        idx = np.argpartition(d, NPROBE)[:NPROBE]
        return idx[np.argsort(d[idx])]

    probes = benchmark(probe)
    assert set(probes.tolist()) == set(probe_lists(q, C, NPROBE, L2).tolist())


def test_adc_search_agrees_with_reference_on_bench_layout(ivf):
    q = ivf["Q"][1]
    probes = probe_lists(q, ivf["C"], 4, L2)
    dist, _ = adc_call(ivf, q, probes)
    empty = np.zeros((0, M), np.uint8)
    none = np.zeros(0, np.int64)
    ref, _ = adc_search_ref(q, ivf["C"], ivf["cb"], probes, ivf["offsets"], ivf["codes"],
                            ivf["pos"], empty, none, none, 0, None, L2, KK)
    np.testing.assert_allclose(dist, ref, rtol=1e-4, atol=1e-3)
    assert pq_decode(ivf["codes"][:2], ivf["cb"]).shape == (2, DIM)


# --------------------------------------------------------------------------- FAISS, once


def _best(f, reps):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def compare_with_faiss(n=200_000, dim=50, nlist=1024, m=25, niter=20, nprobe=32, k=10,
                       threads=2):
    """Print training and single-query search times next to FAISS, same process and data."""
    import faiss
    import numba

    from simplevector.engine.kernels.flat import numba_threads
    from simplevector.engine.kernels.ivfscan import probe

    X = clustered(7, n, dim, 3000)
    Q = clustered(8, 200, dim, 3000)
    max_points = 256 * nlist  # FAISS's default cap (max_points_per_centroid = 256)
    faiss.omp_set_num_threads(threads)
    print(f"data {n} x {dim} clustered, nlist={nlist}, m={m}, niter={niter}; "
          f"numba threads {numba.get_num_threads()}, faiss omp threads {threads}")
    kmeans(X[:5000], 16, niter=1)  # compile outside the timing

    t = time.perf_counter()
    C = kmeans(X, nlist, niter=niter, seed=0, max_points=max_points)
    t_ours = time.perf_counter() - t
    fk = faiss.Kmeans(dim, nlist, niter=niter, seed=1234, max_points_per_centroid=256)
    t = time.perf_counter()
    fk.train(X)
    t_faiss = time.perf_counter() - t
    obj_ours = float(assign(X, C)[1].sum())
    obj_faiss = float(assign(X, np.ascontiguousarray(fk.centroids))[1].sum())
    print(f"kmeans train on {min(n, max_points)} points: ours {t_ours:.2f} s "
          f"(k-means++ seeding + {niter} Lloyd), faiss.Kmeans {t_faiss:.2f} s "
          f"(random init); objective on all {n} rows ours {obj_ours:.4g} faiss {obj_faiss:.4g}")

    # IVF-PQ: ours from our centroids; FAISS trains its own quantizer + PQ (same sizes).
    lists, _ = assign(X, C)
    R = X - C[lists]
    t = time.perf_counter()
    cb = pq_train(R, m, niter=niter, seed=0)
    t_pq = time.perf_counter() - t
    t = time.perf_counter()
    codes = pq_encode(R, cb)
    t_enc = time.perf_counter() - t
    order, offsets = build_csr(lists, nlist)
    ivf = dict(C=C, cb=cb, offsets=offsets, codes=np.ascontiguousarray(codes[order]), pos=order)
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8)
    t = time.perf_counter()
    index.train(X)
    t_ftrain = time.perf_counter() - t
    t = time.perf_counter()
    index.add(X)
    t_fadd = time.perf_counter() - t
    index.nprobe = nprobe
    print(f"pq_train {t_pq:.2f} s + pq_encode {n} rows {t_enc:.2f} s; "
          f"faiss IndexIVFPQ train (coarse + PQ) {t_ftrain:.2f} s, add {t_fadd:.2f} s")

    def ours_all():
        for q in Q:
            adc_call(ivf, q, probe(q, C, nprobe, L2), k)

    def faiss_all():
        for q in Q:
            index.search(q[None, :], k)

    ours_all()
    faiss_all()
    nq = Q.shape[0]
    t_o = _best(ours_all, 5) / nq * 1e6
    t_f = _best(faiss_all, 5) / nq * 1e6
    faiss.omp_set_num_threads(1)
    t_f1 = _best(faiss_all, 5) / nq * 1e6
    faiss.omp_set_num_threads(threads)
    with numba_threads(1):
        t_o1 = _best(ours_all, 5) / nq * 1e6
    print(f"single query nprobe={nprobe} k={k} (probe + adc_scan, best of 5 x {nq} "
          f"queries): ours {t_o:.0f} us ({t_o1:.0f} us with 1 numba thread; the scan is serial); "
          f"faiss IndexIVFPQ.search {t_f:.0f} us with {threads} omp threads, {t_f1:.0f} us "
          "with 1")
    # recall of both against exact, to show they do comparable work
    Qs = Q[:50]
    exact = np.argsort(((Qs[:, None, :] - X[None, :, :]) ** 2).sum(-1), axis=1)[:, :k]
    ours = [adc_call(ivf, q, probe(q, C, nprobe, L2), k)[1] for q in Qs]
    _, fI = index.search(Qs, k)
    r_o = np.mean([len(set(a) & set(b)) / k for a, b in zip(ours, exact)])
    r_f = np.mean([len(set(a) & set(b)) / k for a, b in zip(fI, exact)])
    print(f"recall@{k} without refine: ours {r_o:.3f}, faiss {r_f:.3f}")


if __name__ == "__main__":
    compare_with_faiss()
