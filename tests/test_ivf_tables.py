"""ADC table strategies (kernels/adctables.py): precomputed l2 terms and row terms against
their numpy references, scans with each against the decoding reference, the choice rule,
the engine's recall with row terms against per-list and precomputed tables, and reopen.

Comparisons of floats from different code paths are tie-aware (tests/_numeric.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from _numeric import assert_same_topk as assert_answers_agree
from test_ivf_kernels import (
    adc_args,
    adc_topk,
    assert_same_topk,
    clustered,
    make_ivf,
    make_mask,
    pq_args,
)

from simplevector.engine.indexspec import IndexSpec
from simplevector.engine.ivf import IVFIndex
from simplevector.engine.kernels import adctables
from simplevector.engine.kernels.adctables import (
    PRECOMPUTED_MAX_BYTES,
    PRECOMPUTED_MIN_DSUB,
    precompute_l2_terms,
    precompute_l2_terms_ref,
    use_precomputed,
)
from simplevector.engine.kernels.distances import COSINE, IP, L2, normalize_rows
from simplevector.engine.kernels import ivffused
from simplevector.engine.kernels.ivfscan import adc_search_ref, probe, probe_lists_batch


def test_precompute_l2_terms_matches_reference():
    rng = np.random.default_rng(0)
    C = rng.standard_normal((20, 24), dtype=np.float32)
    cb = rng.standard_normal((6, 32, 4), dtype=np.float32)
    P = precompute_l2_terms(C, cb)
    assert P.shape == (20, 6, 32) and P.dtype == np.float32
    np.testing.assert_allclose(P, precompute_l2_terms_ref(C, cb), rtol=0,
                               atol=1e-4 * float(np.abs(P).max()))


def test_precomputed_terms_give_the_expanded_l2_distance():
    rng = np.random.default_rng(1)
    C = rng.standard_normal((5, 8), dtype=np.float32)
    cb = rng.standard_normal((2, 16, 4), dtype=np.float32)
    P = precompute_l2_terms_ref(C, cb).astype(np.float64)
    q = rng.standard_normal(8)
    l, code = 3, (7, 11)
    r = np.concatenate([cb[0, code[0]], cb[1, code[1]]]).astype(np.float64)
    want = ((q - C[l] - r) ** 2).sum()
    got = ((q - C[l]) ** 2).sum() + P[l, 0, code[0]] + P[l, 1, code[1]] - 2 * q @ r
    assert abs(got - want) < 1e-4 * max(1.0, want)


@pytest.mark.parametrize("metric", [L2, COSINE])
@pytest.mark.parametrize("mask_kind", ["none", "half", "sparse"])
def test_adc_scan_with_precomputed_tables_matches_reference(metric, mask_kind):
    X, Q, ivf = make_ivf(21, metric)
    pre = precompute_l2_terms(ivf["centroids"], ivf["codebooks"])
    mask = make_mask(mask_kind, X.shape[0], 4)
    scan = L2 if metric == COSINE else metric     # cosine lists scan by l2 in the engine
    for i, q in enumerate(Q):
        probes = probe(q, ivf["centroids"], 2 + i, scan)
        got = adc_topk(q, ivf, probes, mask, scan, 25, pre=pre)
        ref = adc_search_ref(*adc_args(q, ivf, probes, mask, scan, 25))
        per_list = adc_topk(q, ivf, probes, mask, scan, 25)
        assert_same_topk(*got, *ref)
        assert_answers_agree(*got, *per_list)


def test_pq_search_batch_with_precomputed_tables_equals_single_query_loop():
    X, Q, ivf = make_ivf(22, L2)
    pre = precompute_l2_terms(ivf["centroids"], ivf["codebooks"])
    mask = make_mask("half", X.shape[0], 5)
    P = probe_lists_batch(Q, ivf["centroids"], 5, L2)
    D, I, _, _ = ivffused.pq_search_batch(*pq_args(Q, X, ivf, P, mask, L2, L2, 40, 10, pre), -1,
                                          1.0)
    for i in range(Q.shape[0]):
        d, p, _, _ = ivffused.pq_search_serial(*pq_args(Q[i], X, ivf, P[i], mask, L2, L2, 40, 10,
                                                        pre), -1, 1.0)
        assert_answers_agree(D[i, : d.size], I[i, : p.size], d, p)


def test_rule_precomputes_wide_subvectors_within_the_budget_only():
    assert not use_precomputed(IP, 256, 48, 256, 8)           # ip: query-only tables
    assert use_precomputed(L2, 256, 48, 256, 8)
    assert use_precomputed(COSINE, 256, 96, 256, 8)
    assert not use_precomputed(L2, 1024, 25, 256, 2)          # GloVe PQ25: per-list
    assert not use_precomputed(L2, 256, 48, 256, PRECOMPUTED_MIN_DSUB - 1)
    assert not use_precomputed(L2, 1024, 96, 256, 8)          # 100 MB > budget
    assert adctables.precomputed_bytes(1024, 96, 256) > PRECOMPUTED_MAX_BYTES


# --------------------------------------------------------------------------- engine recall


def _exact(X, q, metric, k):
    if metric == L2:
        d = ((X - q) ** 2).sum(1)
    else:
        d = -(X @ q)
    return d


def _recall(index, X, Q, alive, allowed, metric, k, nprobe, batch):
    mask = alive & allowed
    if batch:
        res = index.search_batch(X, Q, k, nprobe, 2, mask)
    else:
        res = [index.search(X, q, k, nprobe, 2, mask)[:2] for q in Q]
    hits = 0
    for q, (_, pos) in zip(Q, res):
        d = _exact(X, q, metric, k)
        d = np.where(mask, d, np.inf)
        kth = np.partition(d, k - 1)[k - 1]
        assert mask[pos].all()
        hits += int((d[pos] <= kth + 1e-5 * max(1.0, abs(kth))).sum())
    return hits / (k * len(Q))


@pytest.mark.parametrize("metric", [L2, IP, COSINE])
def test_recall_with_row_terms_is_at_least_the_per_list_and_precomputed_recall(metric):
    """Seeded synthetic set, PQ with 4-dim sub-vectors, tombstones, a filter, and delta
    rows: recall@10 against exact search of the engine's tables (row terms; ip: query-only)
    >= the per-list and the precomputed tables' minus 0.01."""
    rng = np.random.default_rng(7)
    X = clustered(8, 6000, 32, nclusters=40)
    if metric == COSINE:
        X = normalize_rows(X)
    Q = clustered(9, 40, 32, nclusters=40)
    if metric == COSINE:
        Q = normalize_rows(Q)
    index = IVFIndex.train(IndexSpec.parse("IVF32,PQ8x8,Refine2"), X[:5000], metric)
    assert index.table_strategy == ("query" if metric == IP else "row_terms")
    lists, codes = index.encode(X)
    index.load_lists(np.arange(5000), lists[:5000], codes[:5000])
    index.add(np.arange(5000, 6000), lists[5000:], codes[5000:])     # delta rows
    alive = rng.random(6000) > 0.1                                    # tombstones
    allowed = rng.random(6000) > 0.3                                  # a filter
    no_pre, pre = index._pre, index._precomputed()
    for batch in (False, True):
        for nprobe in (2, 8):
            new = _recall(index, X, Q, alive, allowed, metric, 10, nprobe, batch)
            index._row_terms = False
            per_list = _recall(index, X, Q, alive, allowed, metric, 10, nprobe, batch)
            index._pre = pre
            precomputed = _recall(index, X, Q, alive, allowed, metric, 10, nprobe, batch)
            index._pre, index._row_terms = no_pre, metric != IP
            assert new >= max(per_list, precomputed) - 0.01, (batch, nprobe, new, per_list)
            assert nprobe < 8 or new > 0.5          # the test set is not degenerate


def _terms_ref(index):
    sealed, d = index.snapshot()
    lists = np.repeat(np.arange(index.nlist), np.diff(sealed.offsets))
    return (adctables.row_l2_terms_ref(lists, sealed.codes, index.centroids, index.codebooks),
            adctables.row_l2_terms_ref(d.lists[: d.n], d.codes[: d.n], index.centroids,
                                       index.codebooks))


def test_row_terms_match_the_reference_after_load_add_and_seal():
    X = clustered(12, 4000, 32, nclusters=20)
    index = IVFIndex.train(IndexSpec.parse("IVF16,PQ8x8,Refine2"), X, L2)
    lists, codes = index.encode(X)
    index.load_lists(np.arange(3000), lists[:3000], codes[:3000])
    index.add(np.arange(3000, 4000), lists[3000:], codes[3000:])
    for _ in range(2):
        sealed, d = index.snapshot()
        ref_s, ref_d = _terms_ref(index)
        tol = 1e-4 * max(1.0, float(np.abs(ref_s).max()))
        assert sealed.terms.dtype == np.float32 and len(d.terms) == len(d.codes)
        np.testing.assert_allclose(sealed.terms, ref_s, rtol=0, atol=tol)
        np.testing.assert_allclose(d.terms[: d.n], ref_d, rtol=0, atol=tol)
        index.seal(np.ones(4000, bool))                              # delta folded in


def test_row_terms_give_the_expanded_l2_distance():
    rng = np.random.default_rng(2)
    C = rng.standard_normal((5, 8)).astype(np.float32)
    cb = rng.standard_normal((2, 16, 4)).astype(np.float32)
    codes = np.array([[7, 11], [0, 3]], np.uint8)
    lists = np.array([3, 1])
    N = adctables.row_l2_terms_ref(lists, codes, C, cb).astype(np.float64)
    q = rng.standard_normal(8)
    for i in range(2):
        r = np.concatenate([cb[0, codes[i, 0]], cb[1, codes[i, 1]]]).astype(np.float64)
        c = C[lists[i]].astype(np.float64)
        want = ((q - c - r) ** 2).sum()
        got = ((q - c) ** 2).sum() + N[i] - 2 * q @ r
        assert abs(got - want) < 1e-4 * max(1.0, want)


def test_checkpoint_stores_the_row_terms_and_reopen_maps_them():
    """The bundle holds the row terms beside the codes (an empty ``pre``, as per-list
    indexes wrote), so a reopen maps them and runs no numba code. A bundle without them (an
    older build) gets them computed on the first kernel query, not at open; a non-empty
    ``pre`` stored by an older build is not used. The answers are the same every way."""
    X = normalize_rows(clustered(10, 3000, 32, nclusters=20))
    index = IVFIndex.train(IndexSpec.parse("IVF16,PQ8x8,Refine2"), X, COSINE)
    lists, codes = index.encode(X)
    index.load_lists(np.arange(len(X)), lists, codes)
    meta, arrays = index.to_arrays(np.ones(len(X), bool))
    assert set(arrays) == {"centroids", "offsets", "pos", "codes", "pre", "codebooks", "terms"}
    assert arrays["pre"].shape == (0, 8, 256)
    np.testing.assert_array_equal(arrays["terms"], index.snapshot()[0].terms)
    older = {k: v for k, v in arrays.items() if k != "terms"}
    old_pre = dict(older, pre=adctables.precompute_l2_terms(index.centroids, index.codebooks))
    mask = np.ones(len(X), bool)
    for bundle, stored in ((arrays, True), (older, False), (old_pre, False)):
        again = IVFIndex.from_arrays(meta, bundle)
        assert again.table_strategy == "row_terms"
        assert again.info()["precomputed_bytes"] == 0
        if stored:
            assert again.snapshot()[0].terms is bundle["terms"]      # a view, not computed
        else:
            assert again.snapshot()[0].terms is None                 # lazy: nothing at open
        for q in X[:5]:
            d1, p1 = index.search(X, q, 10, 4, 2, mask, True)[:2]
            d2, p2 = again.search(X, q, 10, 4, 2, mask, True)[:2]
            assert_answers_agree(d1, p1, d2, p2)
        np.testing.assert_allclose(again.snapshot()[0].terms, index.snapshot()[0].terms,
                                   rtol=0, atol=1e-6)


@pytest.mark.parametrize("metric", [L2, COSINE])
def test_adc_scan_with_row_terms_matches_reference(metric):
    X, Q, ivf = make_ivf(23, metric)
    mask = make_mask("half", X.shape[0], 4)
    for i, q in enumerate(Q):
        probes = probe(q, ivf["centroids"], 2 + i, L2)
        got = adc_topk(q, ivf, probes, mask, L2, 25, terms=True)
        ref = adc_search_ref(*adc_args(q, ivf, probes, mask, L2, 25))
        assert_same_topk(*got, *ref)
