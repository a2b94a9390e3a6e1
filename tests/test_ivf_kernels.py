"""IVF kernels (k-means, PQ, ADC / IVF-Flat scans) against their numpy references.

Comparisons are tie-aware: distances must agree within a float32 tolerance, and among
entries whose distances are (nearly) equal any choice is accepted, as long as every entry
clearly nearer than the last result is present.
"""

from __future__ import annotations

import numpy as np
import pytest
from _numeric import assert_labels_tie_aware
from _numeric import assert_same_topk as assert_answers_agree

from simplevector.engine.errors import InvalidInput
from simplevector.engine.kernels.adctables import NO_TERMS, delta_l2_terms, row_l2_terms
from simplevector.engine.kernels.distances import COSINE, IP, L2, normalize_rows
from simplevector.engine.kernels import ivffused
from simplevector.engine.kernels.ivfscan import (
    NO_MASK,
    adc_scan,
    adc_search_ref,
    build_csr,
    build_csr_ref,
    ivfflat_search_ref,
    probe,
    probe_lists_batch,
    probe_lists_ref,
    widen_ref,
)
from simplevector.engine.kernels.kmeans import (
    assign,
    assign_ref,
    kmeans,
    kmeans_objective,
    kmeans_ref,
)
from simplevector.engine.kernels.pq import (
    pq_decode,
    pq_decode_ref,
    pq_encode,
    pq_encode_ref,
    pq_train,
    transpose_codebooks,
)
from simplevector.engine.kernels.topk import heap_sort

ALL_METRICS = [L2, IP, COSINE]


def read_only(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def clustered(seed, n, dim, nclusters=20, spread=0.3):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((nclusters, dim), dtype=np.float32) * 3
    labels = rng.integers(0, nclusters, n)
    return (centers[labels] + spread * rng.standard_normal((n, dim))).astype(np.float32)


# --------------------------------------------------------------------------- kmeans


@pytest.mark.parametrize("metric", ALL_METRICS)
@pytest.mark.parametrize("dim", [2, 13, 50])  # direct numba path (2, 13) and BLAS path
def test_assign_matches_reference(metric, dim):
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3000, dim), dtype=np.float32)
    C = rng.standard_normal((97, dim), dtype=np.float32)
    if metric == COSINE:
        X, C = normalize_rows(X), normalize_rows(C)
    labels, dist = assign(X, C, metric)
    ref_labels, ref_dist = assign_ref(X, C, metric)
    assert labels.dtype == np.int64 and dist.dtype == np.float32
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-3)
    # a different label only where the two centroids are (nearly) tied
    diff = labels != ref_labels
    assert diff.mean() < 0.01
    if diff.any():
        Xd = X[diff].astype(np.float64)
        if metric == IP:
            alt = -(Xd * C[labels[diff]]).sum(1)
        else:
            alt = ((Xd - C[labels[diff]]) ** 2).sum(1)
        np.testing.assert_allclose(alt, ref_dist[diff], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("metric", [L2, IP])
def test_threaded_assign_matches_reference_and_serial(metric, monkeypatch):
    """From THREADED_ASSIGN_ROWS rows the blocks run on worker threads with one BLAS
    thread each; labels must match the reference and the one-thread result."""
    import numba

    from simplevector.engine.kernels import kmeans as km

    rng = np.random.default_rng(5)
    X = rng.standard_normal((km.THREADED_ASSIGN_ROWS * 2 + 37, 50), dtype=np.float32)
    C = rng.standard_normal((300, 50), dtype=np.float32)
    monkeypatch.setattr(km, "ASSIGN_BLOCK_ELEMENTS", 300 * 1000)  # several blocks
    threaded = assign(X, C, metric)
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        serial = assign(X, C, metric)
    finally:
        numba.set_num_threads(previous)
    # BLAS rounds a block split differently on some CPUs (AMD EPYC, OpenBLAS 0.3.31: 1.5e-5)
    np.testing.assert_allclose(threaded[1], serial[1], rtol=1e-5, atol=1e-4)
    assert_labels_tie_aware(X, C, threaded[0], serial[0], ip=metric == IP)
    ref_labels, ref_dist = assign_ref(X, C, metric)
    assert (threaded[0] != ref_labels).mean() < 0.001
    np.testing.assert_allclose(threaded[1], ref_dist, rtol=1e-4, atol=1e-3)


def test_one_blas_thread_is_shared_by_nested_and_concurrent_users():
    """The BLAS limit is process-wide: it holds while any user is inside and the original
    count comes back only when the last one leaves, in whatever order they leave."""
    import threading

    from threadpoolctl import threadpool_info

    from simplevector.engine.kernels.threads import _blas_controller, one_blas_thread

    # an OpenMP-threaded BLAS (faiss-cpu bundles one) keeps its count per thread; numpy's
    # pthreads OpenBLAS has one process-wide pool, the one the limit is for
    controlled = {lib.filepath for lib in _blas_controller().lib_controllers
                  if lib.user_api == "blas" and lib.threading_layer != "openmp"}

    def blas_threads():
        return sorted({p["num_threads"] for p in threadpool_info()
                       if p["user_api"] == "blas" and p["filepath"] in controlled})

    assert controlled, "numpy's BLAS is not visible to threadpoolctl: nothing to check"
    before = blas_threads()
    inside, release, done = threading.Event(), threading.Event(), threading.Event()

    def other():
        with one_blas_thread():
            inside.set()
            release.wait(10)
        done.set()

    with one_blas_thread():
        t = threading.Thread(target=other)
        t.start()
        assert inside.wait(10)
        assert blas_threads() == [1]
    # the first user left while the other is still inside: still one thread
    assert blas_threads() == [1]
    release.set()
    t.join(10)
    assert done.is_set()
    assert blas_threads() == before


def test_assign_in_small_blocks_equals_one_block(monkeypatch):
    from simplevector.engine.kernels import kmeans as km

    X = clustered(2, 2000, 32)
    C = X[:50].copy()
    whole = assign(X, C)
    monkeypatch.setattr(km, "ASSIGN_BLOCK_ELEMENTS", 50 * 230)
    blocked = assign(X, C)
    assert (whole[0] != blocked[0]).mean() < 0.01  # BLAS may round blocks differently
    np.testing.assert_allclose(whole[1], blocked[1], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dim", [4, 32])
def test_kmeans_has_no_empty_clusters_and_right_shape(dim):
    X = clustered(3, 4000, dim, nclusters=10)  # far fewer true clusters than k
    C = kmeans(X, 64, niter=10, seed=5)
    assert C.shape == (64, dim) and C.dtype == np.float32
    labels, _ = assign(X, C)
    assert np.bincount(labels, minlength=64).min() > 0


def test_kmeans_objective_decreases_and_is_close_to_numpy_lloyd():
    X = clustered(4, 5000, 24, nclusters=40, spread=1.0)
    k = 50
    obj = [kmeans_objective(X, kmeans(X, k, niter=it, seed=7)) for it in (0, 2, 10)]
    assert obj[0] > obj[1] > obj[2]
    ref = kmeans_objective(X, kmeans_ref(X, k, niter=10, seed=7))
    assert abs(obj[2] - ref) <= 0.03 * ref


def test_kmeans_is_deterministic_for_a_seed_and_differs_across_seeds():
    X = clustered(5, 3000, 16)
    a = kmeans(X, 32, niter=5, seed=11)
    b = kmeans(X, 32, niter=5, seed=11)
    c = kmeans(X, 32, niter=5, seed=12)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_kmeans_max_points_trains_on_a_sample():
    X = clustered(6, 6000, 8)
    C = kmeans(X, 16, niter=5, seed=0, max_points=1000)
    assert C.shape == (16, 8)
    np.testing.assert_array_equal(C, kmeans(X, 16, niter=5, seed=0, max_points=1000))


def test_kmeans_ip_gives_unit_norm_centroids():
    X = normalize_rows(clustered(7, 3000, 16))
    C = kmeans(X, 20, niter=5, metric=IP)
    np.testing.assert_allclose(np.linalg.norm(C, axis=1), 1.0, rtol=1e-5)


def test_kmeans_splits_empty_clusters_on_duplicate_heavy_data():
    rng = np.random.default_rng(8)
    X = np.repeat(rng.standard_normal((5, 6), dtype=np.float32), 200, axis=0)
    X = X + 1e-3 * rng.standard_normal(X.shape).astype(np.float32)
    C = kmeans(X, 40, niter=10)
    assert np.isfinite(C).all()
    labels, _ = assign(X, C)
    assert np.bincount(labels, minlength=40).min() > 0


def test_kmeans_fewer_rows_than_k_raises_invalid_input():
    X = np.zeros((10, 4), np.float32)
    with pytest.raises(InvalidInput, match="10 training rows"):
        kmeans(X, 11)


# --------------------------------------------------------------------------- pq


@pytest.fixture(scope="module")
def pq_data():
    R = clustered(9, 3000, 16, nclusters=30, spread=0.5)
    codebooks = pq_train(R, 4, ksub=64, niter=8, seed=1)
    return R, codebooks


def test_pq_train_shapes(pq_data):
    _, codebooks = pq_data
    assert codebooks.shape == (4, 64, 4) and codebooks.dtype == np.float32


def test_pq_encode_decode_match_reference(pq_data):
    R, codebooks = pq_data
    codes = pq_encode(R, codebooks)
    ref = pq_encode_ref(R, codebooks)
    assert codes.dtype == np.uint8 and codes.shape == (3000, 4)
    assert (codes != ref).mean() < 1e-3  # only float ties may differ
    np.testing.assert_array_equal(pq_decode(codes, codebooks), pq_decode_ref(codes, codebooks))


def test_pq_reconstruction_beats_random_codebooks(pq_data):
    R, codebooks = pq_data
    rng = np.random.default_rng(3)
    random_cb = np.ascontiguousarray(
        R[rng.choice(R.shape[0], 64, replace=False)].reshape(64, 4, 4).transpose(1, 0, 2)
    )
    err = np.mean((pq_decode(pq_encode(R, codebooks), codebooks) - R) ** 2)
    base = np.mean((pq_decode(pq_encode(R, random_cb), random_cb) - R) ** 2)
    assert err < 0.7 * base


def test_pq_train_dim_not_divisible_raises_invalid_input():
    with pytest.raises(InvalidInput, match="not divisible"):
        pq_train(np.zeros((300, 10), np.float32), 3, ksub=16)


def test_pq_train_too_few_rows_names_how_many_are_needed():
    with pytest.raises(InvalidInput, match="at least ksub=256"):
        pq_train(np.zeros((100, 8), np.float32), 2)


# --------------------------------------------------------------------------- csr / probes


def test_build_csr_is_a_stable_counting_sort():
    rng = np.random.default_rng(10)
    lists = rng.integers(0, 17, 1000).astype(np.int32)
    order, offsets = build_csr(lists, 20)
    ref_order, ref_offsets = build_csr_ref(lists, 20)
    np.testing.assert_array_equal(order, ref_order)
    np.testing.assert_array_equal(offsets, ref_offsets)
    assert offsets[-1] == 1000 and offsets[-2] == offsets[-4]  # empty lists 17..19


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_probe_single_and_batch_match_reference(metric):
    rng = np.random.default_rng(11)
    C = rng.standard_normal((200, 12), dtype=np.float32)
    Q = rng.standard_normal((30, 12), dtype=np.float32)
    B = probe_lists_batch(Q, C, 7, metric)
    assert B.shape == (30, 7) and B.dtype == np.int64
    Cd = C.astype(np.float64)
    for i in range(30):
        ref = probe_lists_ref(Q[i], C, 7, metric)
        q = Q[i].astype(np.float64)
        full = -(Cd @ q) if metric == IP else ((Cd - q) ** 2).sum(1)   # as the reference
        for got in (probe(Q[i], C, 7, metric), B[i]):
            assert_answers_agree(full[got], got, full[ref], ref)
    assert probe(Q[0], C, 500, metric).shape == (200,)


@pytest.mark.parametrize("metric", [L2, IP])
def test_probe_by_key_sort_and_by_heap_give_the_same_lists_ties_by_lower_id(metric):
    """probe sorts every list's key past nlist / PROBE_SORT_FRACTION probes and keeps a heap
    below: both nearest first, ties by lower list id (centroids on a coarse grid tie), and
    the same as the reference at every nprobe across the switch; negative ip scores too."""
    from simplevector.engine.kernels import ivfscan
    rng = np.random.default_rng(17)
    C = np.round(rng.standard_normal((120, 6)) * 2).astype(np.float32) / 2
    Q = np.round(rng.standard_normal((15, 6)) * 2).astype(np.float32) / 2
    cut = 120 // ivfscan.PROBE_SORT_FRACTION
    for q in Q:
        full = probe(q, C, 120, metric)
        d = -(C.astype(np.float64) @ q) if metric == IP else ((C - q) ** 2).sum(1)
        want = np.lexsort((np.arange(120), d))
        assert full.tolist() == want.tolist()
        for n in (1, cut - 1, cut, cut + 1, 60, 119):
            assert probe(q, C, n, metric).tolist() == want[:n].tolist(), n


# --------------------------------------------------------------------------- ADC scans


def make_ivf(seed, metric, n=3000, dim=16, nlist=24, m=4, ksub=32, ndelta=300):
    """Random IVF-PQ layout: sealed CSR of n - ndelta rows plus a delta of ndelta rows
    (held in arrays with spare rows past dn)."""
    X = clustered(seed, n, dim, nclusters=nlist)
    if metric == COSINE:
        X = normalize_rows(X)
    C = kmeans(X, nlist, niter=5, seed=seed, metric=IP if metric == IP else L2)
    lists, _ = assign(X, C, IP if metric == IP else L2)
    R = X - C[lists]
    codebooks = pq_train(R, m, ksub=ksub, niter=5, seed=seed)
    codes = pq_encode(R, codebooks)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    sealed, delta = perm[: n - ndelta], perm[n - ndelta :]
    order, offsets = build_csr(lists[sealed], nlist)
    sealed = sealed[order]
    spare = 5
    dcodes = np.zeros((ndelta + spare, m), np.uint8)
    dpos = np.zeros(ndelta + spare, np.int64)
    dlist = np.zeros(ndelta + spare, np.int32)
    dcodes[:ndelta], dpos[:ndelta], dlist[:ndelta] = codes[delta], delta, lists[delta]
    ivf = dict(centroids=C, codebooks=codebooks, offsets=offsets,
               codes=np.ascontiguousarray(codes[sealed]), pos=sealed.astype(np.int64),
               dcodes=dcodes, dpos=dpos, dlist=dlist, dn=ndelta)
    Q = clustered(seed + 100, 8, dim, nclusters=nlist)
    if metric == COSINE:
        Q = normalize_rows(Q)
    return X, Q, ivf


def adc_args(q, ivf, probes, mask, metric, kk):
    """Arguments of the numpy reference adc_search_ref."""
    return (q, ivf["centroids"], ivf["codebooks"], probes, ivf["offsets"], ivf["codes"],
            ivf["pos"], ivf["dcodes"], ivf["dpos"], ivf["dlist"], ivf["dn"], mask, metric, kk)


def flat_args(q, X, ivf, probes, mask, metric, kk):
    """Arguments of the numpy reference ivfflat_search_ref."""
    return (q, X, ivf["centroids"], probes, ivf["offsets"], ivf["pos"], ivf["dpos"],
            ivf["dlist"], ivf["dn"], mask, metric, kk)


def engine_layout(ivf, mask, pre=None, terms=False):
    """The arrays the IVF index hands the kernels: transposed codebooks, the l2 table
    strategy (``pre``: precomputed; ``terms``: row terms, as the engine; neither: per-list
    tables), the delta bucketed by list, the mask."""
    m, ksub, _ = ivf["codebooks"].shape
    dorder, doffsets = build_csr(ivf["dlist"][: ivf["dn"]], ivf["centroids"].shape[0])
    cbT = transpose_codebooks(ivf["codebooks"])
    snorm = dnorm = NO_TERMS
    if terms:
        snorm = row_l2_terms(ivf["offsets"], ivf["codes"], ivf["centroids"], cbT)
        dnorm = delta_l2_terms(ivf["dlist"], ivf["dcodes"], ivf["centroids"], ivf["codebooks"])
    return dict(cbT=cbT, pre=np.zeros((0, m, ksub), np.float32) if pre is None else pre,
                snorm=snorm, dnorm=dnorm, dorder=dorder, doffsets=doffsets,
                mask=NO_MASK if mask is None else mask, use_mask=mask is not None)


def adc_topk(q, ivf, probes, mask, metric, kk, pre=None, min_lists=-1, terms=False):
    """The engine's ADC scan (ivfscan.adc_scan) of one query, sorted: (dist, pos)."""
    e = engine_layout(ivf, mask, pre, terms)
    hd, hi = np.empty(kk, np.float32), np.empty(kk, np.int64)
    size, _, _ = adc_scan(q, ivf["centroids"], e["cbT"], e["pre"], probes, ivf["offsets"],
                          ivf["codes"], ivf["pos"], e["snorm"], ivf["dcodes"], ivf["dpos"],
                          e["dnorm"], e["dorder"], e["doffsets"], e["mask"], e["use_mask"],
                          metric, hd, hi, min_lists, 1.0)
    heap_sort(hd, hi, size)
    return hd[:size].copy(), hi[:size].copy()


def pq_args(q, X, ivf, probes, mask, scan, metric, kk, k, pre=None, terms=False):
    """Arguments of ivffused.pq_search_serial / _batch, minus min_lists."""
    e = engine_layout(ivf, mask, pre, terms)
    return (q, X, ivf["centroids"], e["cbT"], e["pre"], probes, ivf["offsets"], ivf["codes"],
            ivf["pos"], e["snorm"], ivf["dcodes"], ivf["dpos"], e["dnorm"], e["dorder"],
            e["doffsets"], e["mask"], e["use_mask"], scan, metric, kk, k)


def flat_kernel_args(X, ivf, mask):
    e = engine_layout(ivf, mask)
    return (ivf["offsets"], ivf["pos"], ivf["dpos"], e["dorder"], e["doffsets"], e["mask"],
            e["use_mask"])


def assert_same_topk(dist, pos, ref_dist, ref_pos):
    """Tie-aware: same length, distances close, and every reference entry clearly nearer
    than the last result present."""
    assert dist.dtype == np.float32 and pos.dtype == np.int64
    assert dist.shape == ref_dist.shape == pos.shape
    if dist.size == 0:
        return
    tol = 1e-4 * max(1.0, float(np.abs(ref_dist).max()))
    np.testing.assert_allclose(dist, ref_dist, rtol=0, atol=tol)
    assert len(set(pos.tolist())) == pos.size
    clear = ref_pos[ref_dist < ref_dist[-1] - tol]
    assert set(clear.tolist()) <= set(pos.tolist())
    assert np.all(np.diff(dist) >= 0)


MASKS = ["none", "half", "sparse"]
#: (scan metric, exact metric) as the engine pairs them: cosine lists scan by l2
PAIRS = {L2: (L2, L2), IP: (IP, IP), COSINE: (L2, COSINE)}


def make_mask(kind, n, seed):
    if kind == "none":
        return None
    rng = np.random.default_rng(seed)
    return rng.random(n) < (0.5 if kind == "half" else 0.02)


@pytest.mark.parametrize("metric", ALL_METRICS)
@pytest.mark.parametrize("mask_kind", MASKS)
def test_adc_scan_matches_reference_with_delta_and_mask(metric, mask_kind):
    X, Q, ivf = make_ivf(12, metric)
    mask = make_mask(mask_kind, X.shape[0], 1)
    for i, q in enumerate(Q):
        probes = probe(q, ivf["centroids"], 3 + i, metric)
        got = adc_topk(q, ivf, probes, mask, metric, 20)
        ref = adc_search_ref(*adc_args(q, ivf, probes, mask, metric, 20))
        assert_same_topk(*got, *ref)
        if mask is not None:
            assert mask[got[1]].all()


def test_adc_scan_scans_the_delta_rows_of_probed_lists_only():
    X, Q, ivf = make_ivf(13, L2)
    q = Q[0]
    probes = probe(q, ivf["centroids"], 2, L2)
    _, pos = adc_topk(q, ivf, probes, None, L2, X.shape[0])
    delta = ivf["dpos"][: ivf["dn"]]
    in_probe = np.isin(ivf["dlist"][: ivf["dn"]], probes)
    assert set(delta[in_probe].tolist()) <= set(pos.tolist())
    assert not set(delta[~in_probe].tolist()) & set(pos.tolist())
    # rows past dn are ignored even if they name a probed list
    ivf["dlist"][ivf["dn"]:] = probes[0]
    _, pos2 = adc_topk(q, ivf, probes, None, L2, X.shape[0])
    np.testing.assert_array_equal(np.sort(pos), np.sort(pos2))


def test_adc_scan_kk_larger_than_allowed_returns_all_allowed():
    X, Q, ivf = make_ivf(14, IP)
    mask = np.zeros(X.shape[0], bool)
    mask[ivf["pos"][:3]] = True
    probes = np.arange(ivf["centroids"].shape[0])
    dist, pos = adc_topk(Q[0], ivf, probes, mask, IP, 50)
    assert sorted(pos.tolist()) == sorted(ivf["pos"][:3].tolist())


@pytest.mark.parametrize("metric", ALL_METRICS)
@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("terms", [True, False], ids=["row_terms", "per_list"])
def test_engine_pq_kernels_match_reference(metric, mask_kind, terms):
    """pq_search_serial, _parallel and _batch (what engine/ivf.py calls) against
    pq_search_ref: the ADC top-kk re-ranked exactly; l2 scans with row terms (the engine's
    tables) and per-list tables (ip ignores both)."""
    scan, exact = PAIRS[metric]
    X, Q, ivf = make_ivf(24, metric)
    mask = make_mask(mask_kind, X.shape[0], 6)
    P = probe_lists_batch(Q, ivf["centroids"], 4, scan)
    D, I, scanned, reached = ivffused.pq_search_batch(*pq_args(Q, X, ivf, P, mask, scan, exact,
                                                               40, 10, terms=terms), -1, 1.0)
    assert D.shape == I.shape == (len(Q), 10) and (scanned == 4).all() and reached.all()
    for i, q in enumerate(Q):
        probes = probe(q, ivf["centroids"], 4, scan)
        np.testing.assert_array_equal(probes, P[i])
        ref = ivffused.pq_search_ref(q, X, ivf["centroids"], ivf["codebooks"], probes,
                                     ivf["offsets"], ivf["codes"], ivf["pos"], ivf["dcodes"],
                                     ivf["dpos"], ivf["dlist"], ivf["dn"], mask, scan, exact,
                                     40, 10)
        d, p, n, ok = ivffused.pq_search_serial(*pq_args(q, X, ivf, probes, mask, scan, exact,
                                                         40, 10, terms=terms), -1, 1.0)
        assert n == 4 and ok
        assert_same_topk(d, p, *ref)
        for chunks in (2, 3):
            dp, pp, n, _ = ivffused.pq_search_parallel(
                *pq_args(q, X, ivf, probes, mask, scan, exact, 40, 10, terms=terms), chunks, -1,
                1.0)
            assert n == 4
            assert_answers_agree(dp, pp, d, p)
        keep = I[i] >= 0
        assert_answers_agree(D[i][keep], I[i][keep], d, p)
        assert np.isinf(D[i][~keep]).all()


@pytest.mark.parametrize("share", [1.0, 0.5, 0.1])
@pytest.mark.parametrize("mask_kind", ["half", "sparse"])
def test_widened_scan_opens_the_lists_the_reference_names(mask_kind, share):
    """min_lists >= 0: the scan opens the prefix of the probes that widen_ref names (its
    target ``share`` of the first lists' rows) and returns the reference's answer over
    exactly those lists."""
    X, Q, ivf = make_ivf(25, L2)
    mask = make_mask(mask_kind, X.shape[0], 7)
    nlist = ivf["centroids"].shape[0]
    P = probe_lists_batch(Q, ivf["centroids"], nlist, L2)
    _, _, scanned, reached = ivffused.pq_search_batch(*pq_args(Q, X, ivf, P, mask, L2, L2, 30,
                                                               10), 2, share)
    for i, q in enumerate(Q):
        opened, ok = widen_ref(P[i], ivf["offsets"], ivf["pos"], ivf["dpos"], ivf["dlist"],
                               ivf["dn"], mask, 2, share)
        d, p, n, got_ok = ivffused.pq_search_serial(*pq_args(q, X, ivf, P[i], mask, L2, L2, 30,
                                                             10), 2, share)
        assert n == scanned[i] == len(opened) and got_ok == reached[i] == ok
        assert n >= 2
        ref = ivffused.pq_search_ref(q, X, ivf["centroids"], ivf["codebooks"], opened,
                                     ivf["offsets"], ivf["codes"], ivf["pos"], ivf["dcodes"],
                                     ivf["dpos"], ivf["dlist"], ivf["dn"], mask, L2, L2, 30, 10)
        assert_same_topk(d, p, *ref)
        fd, fp, fn, _ = ivffused.flat_lists_serial(q, X, ivf["centroids"], nlist, L2,
                                                   *flat_kernel_args(X, ivf, mask), L2, 10, 2,
                                                   share)
        assert fn == len(opened)
        flat_ref = ivfflat_search_ref(*flat_args(q, X, ivf, opened, mask, L2, 10))
        assert_same_topk(fd, fp, *flat_ref)


def test_widened_scan_target_share_sets_how_far_it_goes():
    """A sparse mask (2% of rows): the full target is out of reach (every list opened), a
    tenth of it stops part way, a twentieth earlier, and share 0 at min_lists."""
    X, Q, ivf = make_ivf(25, L2)
    mask = make_mask("sparse", X.shape[0], 7)
    nlist = ivf["centroids"].shape[0]
    P = probe_lists_batch(Q, ivf["centroids"], nlist, L2)
    opened = {share: ivffused.pq_search_batch(*pq_args(Q, X, ivf, P, mask, L2, L2, 30, 10), 2,
                                              share)[2]
              for share in (1.0, 0.1, 0.05, 0.0)}
    assert (opened[1.0] == nlist).all() and (opened[0.0] == 2).all()
    assert (opened[0.05] <= opened[0.1]).all() and (opened[0.1] < nlist).all()
    assert opened[0.05].sum() < opened[0.1].sum() and (opened[0.05] > 2).all()


@pytest.mark.parametrize("metric", ALL_METRICS)
@pytest.mark.parametrize("mask_kind", MASKS)
def test_engine_ivfflat_kernels_match_reference(metric, mask_kind):
    X, Q, ivf = make_ivf(16, metric)
    mask = make_mask(mask_kind, X.shape[0], 3)
    probe_metric = IP if metric == IP else L2
    P = probe_lists_batch(Q, ivf["centroids"], 3, probe_metric)
    D, I, _, _ = ivffused.flat_lists_batch(Q, X, P, *flat_kernel_args(X, ivf, mask), metric, 15,
                                           -1, 1.0)
    for i, q in enumerate(Q):
        d, p, n, _ = ivffused.flat_lists_serial(q, X, ivf["centroids"], 3, probe_metric,
                                                *flat_kernel_args(X, ivf, mask), metric, 15, -1,
                                                1.0)
        assert n == 3
        ref = ivfflat_search_ref(*flat_args(q, X, ivf, P[i], mask, metric, 15))
        assert_same_topk(d, p, *ref)
        keep = I[i] >= 0
        assert_answers_agree(D[i][keep], I[i][keep], d, p)
        assert (I[i][~keep] == -1).all()


def test_ivfflat_with_every_list_probed_equals_exact_search():
    X, Q, ivf = make_ivf(18, L2)
    nlist = ivf["centroids"].shape[0]
    dist, pos, _, _ = ivffused.flat_lists_serial(Q[0], X, ivf["centroids"], nlist, L2,
                                                 *flat_kernel_args(X, ivf, None), L2, 10, -1,
                                                 1.0)
    exact = ((X.astype(np.float64) - Q[0]) ** 2).sum(1)
    np.testing.assert_allclose(dist, np.sort(exact)[:10], rtol=1e-4, atol=1e-3)


def test_every_engine_kernel_accepts_read_only_arrays():
    X, Q, ivf = make_ivf(19, L2)
    X, Q = read_only(X), read_only(Q)
    ivf = {k: read_only(v) if isinstance(v, np.ndarray) else v for k, v in ivf.items()}
    mask = read_only(np.ones(X.shape[0], bool))
    C = ivf["centroids"]
    assign(X, C)
    kmeans(X, 8, niter=2)
    cb = pq_train(X, 4, ksub=16, niter=2)
    pq_decode(read_only(pq_encode(X, read_only(cb))), read_only(cb))
    probes = read_only(probe(Q[0], C, 3, L2))
    P = read_only(probe_lists_batch(Q, C, 3, L2))
    args = [read_only(a) if isinstance(a, np.ndarray) else a
            for a in pq_args(Q[0], X, ivf, probes, mask, L2, L2, 5, 5, terms=True)]
    assert ivffused.pq_search_serial(*args, -1, 1.0)[0].size == 5
    assert ivffused.pq_search_parallel(*args, 2, -1, 1.0)[0].size == 5
    args[0], args[5] = Q, P
    assert ivffused.pq_search_batch(*args, -1, 1.0)[0].shape == (8, 5)
    flat = [read_only(a) if isinstance(a, np.ndarray) else a
            for a in flat_kernel_args(X, ivf, mask)]
    assert ivffused.flat_lists_serial(Q[0], X, C, 3, L2, *flat, L2, 5, -1, 1.0)[0].size == 5
    assert ivffused.flat_lists_batch(Q, X, P, *flat, L2, 5, -1, 1.0)[0].shape == (8, 5)
    build_csr(read_only(ivf["dlist"]), C.shape[0])


def test_query_tables_match_the_per_query_tables():
    from simplevector.engine.kernels.ivfscan import query_tables
    rng = np.random.default_rng(3)
    cb = rng.standard_normal((6, 32, 4)).astype(np.float32)
    Q = rng.standard_normal((9, 24)).astype(np.float32)
    T = query_tables(Q, transpose_codebooks(cb), -2.0)
    ref = -2.0 * np.einsum("qjd,jtd->qjt", Q.reshape(9, 6, 4).astype(np.float64), cb)
    assert T.shape == (9, 6, 32) and T.dtype == np.float32 and T.flags.c_contiguous
    np.testing.assert_allclose(T, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize("metric", ALL_METRICS)
@pytest.mark.parametrize("mask_kind", ["none", "half"])
def test_batch_with_blas_tables_matches_reference_and_the_single_query_kernel(metric, mask_kind):
    """pq_search_batch_tables (the engine's batch for ip and row terms) against
    pq_search_ref and pq_search_serial."""
    from simplevector.engine.kernels.ivfscan import query_tables
    scan, exact = PAIRS[metric]
    X, Q, ivf = make_ivf(27, metric)
    mask = make_mask(mask_kind, X.shape[0], 8)
    P = probe_lists_batch(Q, ivf["centroids"], 4, scan)
    args = pq_args(Q, X, ivf, P, mask, scan, exact, 40, 10, terms=True)
    tables = query_tables(Q, args[3], -1.0 if scan == IP else -2.0)
    D, I, scanned, reached = ivffused.pq_search_batch_tables(Q, tables, *args[1:], -1, 1.0)
    assert (scanned == 4).all() and reached.all()
    for i, q in enumerate(Q):
        ref = ivffused.pq_search_ref(q, X, ivf["centroids"], ivf["codebooks"], P[i],
                                     ivf["offsets"], ivf["codes"], ivf["pos"], ivf["dcodes"],
                                     ivf["dpos"], ivf["dlist"], ivf["dn"], mask, scan, exact,
                                     40, 10)
        keep = I[i] >= 0
        assert_same_topk(D[i][keep], I[i][keep], *ref)
        d, p, _, _ = ivffused.pq_search_serial(*pq_args(q, X, ivf, P[i], mask, scan, exact,
                                                        40, 10, terms=True), -1, 1.0)
        assert_answers_agree(D[i][keep], I[i][keep], d, p)
