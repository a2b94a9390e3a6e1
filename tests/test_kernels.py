"""The numba kernels against their plain numpy references (engine/kernels/).

Comparisons are tie-aware: distances must agree within a float32 tolerance, and among rows
whose distances are (nearly) equal any choice is accepted, as long as every row clearly
nearer than the k-th result is present.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from _numeric import assert_same_topk as assert_answers_agree

from simplevector.engine.errors import InvalidInput
from simplevector.engine.kernels import flat
from simplevector.engine.kernels.distances import (
    COSINE,
    IP,
    L2,
    METRICS,
    distances_subset,
    distances_subset_ref,
    distances_to,
    distances_to_ref,
    has_zero_rows,
    normalize_rows,
    resolve_metric,
)
from simplevector.engine.kernels.flat import (
    numba_threads,
    search_batch,
    search_batch_ref,
    search_one,
    search_one_ref,
    search_subset,
    search_subset_ref,
)
from simplevector.engine.kernels.topk import (
    topk_rows,
    topk_rows_ref,
    topk_smallest,
    topk_smallest_ref,
)

ALL_METRICS = [L2, IP, COSINE]
DIMS = [1, 3, 50, 128]


def make_data(seed, n, dim, metric, nq=None):
    """Random rows X, their squared norms, and one query (or nq queries); unit rows for cosine."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim), dtype=np.float32)
    Q = rng.standard_normal((nq or 1, dim), dtype=np.float32)
    if metric == COSINE:
        X = normalize_rows(X)
        Q = normalize_rows(Q)
    xnorm2 = np.einsum("ij,ij->i", X, X).astype(np.float32)
    return X, xnorm2, (Q if nq else Q[0])


def read_only(a):
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


def assert_topk_equivalent(dist, pos, full, allowed, k):
    """dist/pos is a correct top-k of the distances *full* over the positions *allowed*."""
    allowed = np.asarray(allowed, dtype=np.int64)
    kk = min(k, allowed.size)
    assert dist.dtype == np.float32 and pos.dtype == np.int64
    assert dist.shape == (kk,) and pos.shape == (kk,)
    if kk == 0:
        return
    best = np.sort(full[allowed])[:kk]
    tol = 1e-4 * max(1.0, float(np.abs(best).max()))
    np.testing.assert_allclose(dist, best, rtol=0, atol=tol)
    assert len(set(pos.tolist())) == kk, "positions repeat"
    assert set(pos.tolist()) <= set(allowed.tolist()), "a position outside the allowed rows"
    np.testing.assert_allclose(full[pos], dist, rtol=0, atol=tol)
    assert np.all(np.diff(dist) >= 0), "distances not ascending"
    surely_in = allowed[full[allowed] < best[-1] - tol]
    assert set(surely_in.tolist()) <= set(pos.tolist()), "a clearly nearer row is missing"
    exact_tie = dist[:-1] == dist[1:]
    assert np.all(pos[:-1][exact_tie] < pos[1:][exact_tie]), "equal distances not by position"


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    "name, expected",
    [
        ("l2", "l2"),
        ("Euclidean", "l2"),
        ("L2SQ", "l2"),
        ("ip", "ip"),
        ("dot", "ip"),
        ("Inner_Product", "ip"),
        ("cosine", "cosine"),
        ("COS", "cosine"),
    ],
)
def test_resolve_metric_accepts_names_and_aliases_case_insensitively(name, expected):
    assert resolve_metric(name) is METRICS[expected]


def test_resolve_metric_unknown_name_raises_invalid_input_listing_known_metrics():
    with pytest.raises(InvalidInput) as info:
        resolve_metric("foo")
    assert str(info.value) == "metric 'foo' is not known; expected one of 'cosine', 'l2', 'ip'"


def test_metric_registry_codes_and_normalize_flags():
    assert (L2, IP, COSINE) == (0, 1, 2)
    assert {m.name: m.code for m in METRICS.values()} == {"l2": 0, "ip": 1, "cosine": 2}
    assert [m.name for m in METRICS.values() if m.normalize] == ["cosine"]


def test_normalize_rows_returns_unit_float32_copy_and_keeps_zero_rows_zero():
    X = np.array([[3, 4], [0, 0], [1, 0]], dtype=np.float64)
    Y = normalize_rows(X)
    assert Y.dtype == np.float32 and Y.flags.c_contiguous
    np.testing.assert_allclose(Y, [[0.6, 0.8], [0, 0], [1, 0]], atol=1e-7)
    assert X[0, 0] == 3  # input untouched


def test_has_zero_rows_returns_first_zero_row_or_minus_one():
    X = np.ones((5, 3), np.float32)
    assert has_zero_rows(X) == -1
    X[3] = 0
    X[4] = 0
    assert has_zero_rows(X) == 3


# --------------------------------------------------------------------------- distances


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("metric", ALL_METRICS)
def test_distances_to_matches_reference(metric, dim):
    X, _, q = make_data(1, 300, dim, metric)
    got = distances_to(X, q, metric)
    ref = distances_to_ref(X, q, metric)
    assert got.dtype == np.float32 and got.shape == (300,)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_distances_subset_matches_reference(metric):
    X, _, q = make_data(2, 200, 50, metric)
    positions = np.array([0, 7, 8, 150, 199], np.int64)
    got = distances_subset(X, q, metric, positions)
    np.testing.assert_allclose(
        got, distances_subset_ref(X, q, metric, positions), rtol=1e-5, atol=1e-4
    )


# --------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("n, k", [(1000, 10), (50, 50), (7, 20), (0, 3), (30, 0)])
def test_topk_smallest_matches_reference_with_ties(n, k):
    rng = np.random.default_rng(3)
    d = rng.integers(0, 20, n).astype(np.float32)  # many exact ties
    vals, idx = topk_smallest(d, k)
    ref_vals, ref_idx = topk_smallest_ref(d, k)
    np.testing.assert_array_equal(vals, ref_vals)
    np.testing.assert_array_equal(idx, ref_idx)


@pytest.mark.parametrize("shape, k", [((40, 500), 10), ((5, 3), 8), ((3, 100), 100)])
def test_topk_rows_matches_reference_with_ties(shape, k):
    rng = np.random.default_rng(4)
    D = rng.integers(0, 50, shape).astype(np.float32)
    V, I = topk_rows(D, k)
    Vr, Ir = topk_rows_ref(D, k)
    np.testing.assert_array_equal(V, Vr)
    np.testing.assert_array_equal(I, Ir)


# --------------------------------------------------------------------------- search_one


@pytest.fixture(params=["serial", "chunked"])
def scan_path(request, monkeypatch):
    """Run search_one/search_subset on one thread, or cut into many small parallel chunks."""
    if request.param == "chunked":
        if numba.get_num_threads() < 2:
            pytest.skip("the chunked scan needs 2 numba threads")
        monkeypatch.setattr(flat, "PARALLEL_MIN_ELEMENTS", 0)
        monkeypatch.setattr(flat, "MIN_CHUNK_ROWS", 16)
    else:
        monkeypatch.setattr(flat, "PARALLEL_MIN_ELEMENTS", 1 << 62)
    return request.param


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("metric", ALL_METRICS)
def test_search_one_matches_reference(metric, dim, scan_path):
    X, xnorm2, q = make_data(5, 700, dim, metric)
    dist, pos = search_one(X, xnorm2, q, metric, 10)
    assert_topk_equivalent(dist, pos, distances_to_ref(X, q, metric), np.arange(700), 10)
    ref_dist, _ = search_one_ref(X, xnorm2, q, metric, 10)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_search_one_k_larger_than_n_returns_every_row_sorted(metric, scan_path):
    X, xnorm2, q = make_data(6, 40, 3, metric)
    dist, pos = search_one(X, xnorm2, q, metric, 100)
    assert_topk_equivalent(dist, pos, distances_to_ref(X, q, metric), np.arange(40), 100)
    assert sorted(pos.tolist()) == list(range(40))


@pytest.mark.parametrize("allowed", ["all", "none", "few"])
@pytest.mark.parametrize("metric", ALL_METRICS)
def test_search_one_with_mask_returns_only_allowed_rows(metric, allowed, scan_path):
    X, xnorm2, q = make_data(7, 500, 50, metric)
    mask = np.zeros(500, bool)
    if allowed == "all":
        mask[:] = True
    elif allowed == "few":
        mask[[3, 77, 78, 400, 499]] = True
    dist, pos = search_one(X, xnorm2, q, metric, 10, mask)
    full = distances_to_ref(X, q, metric)
    assert_topk_equivalent(dist, pos, full, np.flatnonzero(mask), 10)


def test_search_one_uint8_mask_equals_bool_mask(scan_path):
    X, xnorm2, q = make_data(8, 300, 16, L2)
    mask = np.random.default_rng(8).random(300) < 0.3
    got_bool = search_one(X, xnorm2, q, L2, 12, mask)
    got_u8 = search_one(X, xnorm2, q, L2, 12, mask.astype(np.uint8) * 7)
    # two compiled specialisations may vectorise differently: equal up to rounding and ties
    assert_answers_agree(*got_bool, *got_u8)
    assert_topk_equivalent(*got_u8, distances_to_ref(X, q, L2), np.flatnonzero(mask), 12)


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_search_one_duplicate_rows_tie_broken_by_lower_position(metric, scan_path):
    rng = np.random.default_rng(9)
    base = normalize_rows(rng.standard_normal((50, 8), dtype=np.float32))
    X = np.ascontiguousarray(np.concatenate([base] * 4))  # row i == row i+50 == ...
    xnorm2 = np.einsum("ij,ij->i", X, X)
    q = normalize_rows(rng.standard_normal(8, dtype=np.float32))
    dist, pos = search_one(X, xnorm2, q, metric, 12)
    assert_topk_equivalent(dist, pos, distances_to_ref(X, q, metric), np.arange(200), 12)
    nearest = int(pos[0])
    assert nearest < 50
    assert pos[:4].tolist() == [nearest, nearest + 50, nearest + 100, nearest + 150]


# --------------------------------------------------------------------------- search_subset


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_search_subset_equals_masked_search(metric, scan_path):
    X, xnorm2, q = make_data(10, 600, 50, metric)
    rng = np.random.default_rng(10)
    positions = np.sort(rng.choice(600, 90, replace=False)).astype(np.int64)
    mask = np.zeros(600, bool)
    mask[positions] = True
    dist, pos = search_subset(X, xnorm2, q, metric, 15, positions)
    mdist, mpos = search_one(X, xnorm2, q, metric, 15, mask)
    assert_answers_agree(dist, pos, mdist, mpos)
    assert_topk_equivalent(dist, pos, distances_to_ref(X, q, metric), positions, 15)
    ref_dist, _ = search_subset_ref(X, xnorm2, q, metric, 15, positions)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-4)


def test_search_subset_empty_positions_returns_empty():
    X, xnorm2, q = make_data(11, 20, 4, IP)
    dist, pos = search_subset(X, xnorm2, q, IP, 5, np.zeros(0, np.int64))
    assert dist.shape == (0,) and pos.shape == (0,)


# --------------------------------------------------------------------------- search_batch


def assert_batch_equivalent(D, I, X, Q, metric, k, mask=None):
    n = X.shape[0]
    allowed = np.arange(n) if mask is None else np.flatnonzero(mask)
    kk = min(k, allowed.size)
    assert D.shape == (Q.shape[0], k) and I.shape == (Q.shape[0], k)
    assert np.all(np.isinf(D[:, kk:])) and np.all(I[:, kk:] == -1)
    for r in range(Q.shape[0]):
        full = distances_to_ref(X, Q[r], metric)
        assert_topk_equivalent(D[r, :kk], I[r, :kk], full, allowed, k)


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("metric", ALL_METRICS)
def test_search_batch_matches_reference(metric, dim):
    X, xnorm2, Q = make_data(12, 500, dim, metric, nq=7)
    D, I = search_batch(X, xnorm2, Q, metric, 10)
    assert_batch_equivalent(D, I, X, Q, metric, 10)
    Dr, _ = search_batch_ref(X, xnorm2, Q, metric, 10)
    np.testing.assert_allclose(D, Dr, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_search_batch_merges_many_small_blocks(metric, monkeypatch):
    monkeypatch.setattr(flat, "BATCH_ROW_BLOCK", 64)
    monkeypatch.setattr(flat, "BATCH_BLOCK_ELEMENTS", 64 * 3)  # 3 queries per block
    X, xnorm2, Q = make_data(13, 1000, 20, metric, nq=8)
    mask = np.random.default_rng(13).random(1000) < 0.5
    mask[128:320] = False  # whole blocks skipped
    D, I = search_batch(X, xnorm2, Q, metric, 9, mask)
    assert_batch_equivalent(D, I, X, Q, metric, 9, mask)


@pytest.mark.parametrize("allowed", ["all", "none", "few"])
def test_search_batch_pads_with_inf_and_minus_one_when_few_rows_allowed(allowed):
    X, xnorm2, Q = make_data(14, 300, 12, L2, nq=4)
    mask = np.zeros(300, bool)
    if allowed == "all":
        mask[:] = True
    elif allowed == "few":
        mask[[0, 150, 299]] = True
    D, I = search_batch(X, xnorm2, Q, L2, 5, mask)
    assert_batch_equivalent(D, I, X, Q, L2, 5, mask)
    Dr, Ir = search_batch_ref(X, xnorm2, Q, L2, 5, mask)
    np.testing.assert_array_equal(I == -1, Ir == -1)


def test_search_batch_k_larger_than_n_pads_every_row():
    X, xnorm2, Q = make_data(15, 6, 3, IP, nq=3)
    D, I = search_batch(X, xnorm2, Q, IP, 10)
    assert_batch_equivalent(D, I, X, Q, IP, 10)
    assert np.all(I[:, 6:] == -1)


def test_search_batch_l2_without_xnorm2_computes_it():
    X, xnorm2, Q = make_data(16, 200, 10, L2, nq=3)
    D, I = search_batch(X, None, Q, L2, 4)
    D2, I2 = search_batch(X, xnorm2, Q, L2, 4)
    np.testing.assert_allclose(D, D2, rtol=1e-6, atol=1e-5)
    assert_batch_equivalent(D, I, X, Q, L2, 4)


def test_search_batch_duplicate_rows_are_tie_aware():
    rng = np.random.default_rng(17)
    base = rng.standard_normal((30, 5), dtype=np.float32)
    X = np.ascontiguousarray(np.concatenate([base] * 3))
    xnorm2 = np.einsum("ij,ij->i", X, X)
    Q = base[:4] + np.float32(0.01)
    D, I = search_batch(X, xnorm2, Q, L2, 6)
    assert_batch_equivalent(D, I, X, Q, L2, 6)
    for r in range(4):
        assert sorted(I[r, :3].tolist()) == [r, r + 30, r + 60]


# --------------------------------------------------------------------------- read-only inputs


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_every_entry_point_accepts_read_only_arrays(metric):
    X, xnorm2, Q = make_data(18, 400, 24, metric, nq=3)
    mask = np.ones(400, bool)
    mask[::3] = False
    positions = np.flatnonzero(mask).astype(np.int64)
    Xr, xr, Qr, qr = read_only(X), read_only(xnorm2), read_only(Q), read_only(Q[0])
    mr, pr = read_only(mask), read_only(positions)
    writable = search_one(X, xnorm2, Q[0], metric, 5, mask)
    assert_answers_agree(*search_one(Xr, xr, qr, metric, 5, mr), *writable)
    assert_answers_agree(*search_subset(Xr, xr, qr, metric, 5, pr), *writable)
    D_ro, I_ro = search_batch(Xr, xr, Qr, metric, 5, mr)
    D_rw, I_rw = search_batch(X, xnorm2, Q, metric, 5, mask)
    for r in range(len(Q)):
        assert_answers_agree(D_ro[r], I_ro[r], D_rw[r], I_rw[r])
    np.testing.assert_allclose(distances_to(Xr, qr, metric), distances_to(X, Q[0], metric))
    d = read_only(distances_to(X, Q[0], metric))
    assert topk_smallest(d, 4)[1].tolist() == topk_smallest_ref(d, 4)[1].tolist()
    D = read_only(np.tile(d, (2, 1)))
    np.testing.assert_array_equal(topk_rows(D, 4)[1], topk_rows_ref(D, 4)[1])


# --------------------------------------------------------------------------- bad input


def test_float64_rows_raise_invalid_input_naming_dtype():
    X, xnorm2, q = make_data(19, 10, 4, L2)
    with pytest.raises(InvalidInput, match="float64.*expected a 2-D float32"):
        search_one(X.astype(np.float64), xnorm2, q, L2, 3)


def test_non_contiguous_rows_raise_invalid_input():
    X, xnorm2, q = make_data(20, 10, 8, L2)
    with pytest.raises(InvalidInput, match="C-contiguous"):
        search_one(X[:, :4], xnorm2, q[:4], L2, 3)


def test_query_dim_mismatch_raises_invalid_input():
    X, xnorm2, q = make_data(21, 10, 8, L2)
    with pytest.raises(InvalidInput, match="q has dim 3; expected dim 8"):
        search_one(X, xnorm2, q[:3].copy(), L2, 3)


@pytest.mark.parametrize("metric", [3, -1, "l2", True])
def test_unknown_metric_code_raises_invalid_input(metric):
    X, xnorm2, q = make_data(22, 10, 4, L2)
    with pytest.raises(InvalidInput, match="metric code"):
        search_one(X, xnorm2, q, metric, 3)


@pytest.mark.parametrize("k", [-1, 2.5, None])
def test_bad_k_raises_invalid_input(k):
    X, xnorm2, Q = make_data(23, 10, 4, IP, nq=2)
    with pytest.raises(InvalidInput, match="k is"):
        search_batch(X, xnorm2, Q, IP, k)


def test_mask_of_wrong_length_or_dtype_raises_invalid_input():
    X, xnorm2, q = make_data(24, 10, 4, IP)
    with pytest.raises(InvalidInput, match=r"mask has shape \(9,\); expected \(10,\)"):
        search_one(X, xnorm2, q, IP, 3, np.ones(9, bool))
    with pytest.raises(InvalidInput, match="mask is int64"):
        search_one(X, xnorm2, q, IP, 3, np.ones(10, np.int64))


def test_positions_out_of_range_raise_invalid_input():
    X, xnorm2, q = make_data(25, 10, 4, IP)
    with pytest.raises(InvalidInput, match="positions span 2..10"):
        search_subset(X, xnorm2, q, IP, 3, np.array([2, 10], np.int64))


# --------------------------------------------------------------------------- threads


def test_numba_threads_restores_thread_count_after_an_error():
    before = numba.get_num_threads()
    with pytest.raises(RuntimeError):
        with numba_threads(1):
            assert numba.get_num_threads() == 1
            raise RuntimeError("boom")
    assert numba.get_num_threads() == before


def test_numba_threads_rejects_out_of_range_count():
    with pytest.raises(InvalidInput, match="thread count 0"):
        with numba_threads(0):
            pass
