"""search_one_blas (scores from one BLAS product) against the numpy reference."""

import numpy as np
import pytest
from _numeric import assert_same_topk

from simplevector.engine.kernels import flat
from simplevector.engine.kernels.distances import COSINE, IP, L2


def _data(rng, n, dim, metric):
    X = rng.standard_normal((n, dim)).astype(np.float32)
    q = rng.standard_normal(dim).astype(np.float32)
    if metric == COSINE:
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        q /= np.linalg.norm(q)
    return X, np.einsum("ij,ij->i", X, X).astype(np.float32), q


@pytest.mark.parametrize("metric", [L2, IP, COSINE])
@pytest.mark.parametrize("allowed", [1.0, 0.3, 0.001])
def test_blas_single_query_matches_reference_tie_aware(metric, allowed):
    rng = np.random.default_rng(metric * 10 + int(allowed * 100))
    X, xn2, q = _data(rng, 20000, 48, metric)
    mask = rng.random(len(X)) < allowed
    k = 10
    d, p = flat.search_one_blas(X, xn2, q, metric, k, mask)
    rd, rp = flat.search_one_ref(X, xn2, q, metric, k, mask)
    assert len(d) == len(rd) == min(k, int(mask.sum()))
    assert mask[p].all()
    np.testing.assert_allclose(d, rd, rtol=1e-4, atol=1e-4)
    # every returned row is truly within the k-th reference distance (ties allowed)
    exact = flat.search_one_ref(X, xn2, q, metric, len(X), mask)
    true_d = dict(zip(exact[1].tolist(), exact[0].tolist()))
    assert all(true_d[i] <= rd[-1] + 1e-4 for i in p.tolist())
    # distances are exact for the returned rows and sorted
    assert np.all(np.diff(d) >= 0)


def test_blas_single_query_with_every_row_masked_returns_nothing():
    rng = np.random.default_rng(0)
    X, xn2, q = _data(rng, 1000, 8, L2)
    d, p = flat.search_one_blas(X, xn2, q, L2, 5, np.zeros(1000, bool))
    assert len(d) == 0 and len(p) == 0


@pytest.mark.parametrize("metric", [L2, IP, COSINE])
def test_batch_distances_do_not_depend_on_where_a_row_sits(metric):
    """The batch path selects by BLAS products, whose rounding depends on a row's place in
    its block (and on the CPU's kernel: a compaction that moved rows changed batch
    distances in the last bit on AMD EPYC). The distances it returns are recomputed per
    row: the same bits with the rows in another order, and the single-query kernel's."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((3000, 48)).astype(np.float32)
    if metric == COSINE:
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = rng.standard_normal((24, 48)).astype(np.float32)
    if metric == COSINE:
        Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    perm = rng.permutation(len(X))
    D1, I1 = flat.search_batch(X, None, Q, metric, 10)
    D2, I2 = flat.search_batch(np.ascontiguousarray(X[perm]), None, Q, metric, 10)
    for r in range(len(Q)):
        d, p = flat.search_one(X, None, Q[r], metric, 10)
        moved = dict(zip(perm[I2[r]].tolist(), D2[r].tolist()))
        single = dict(zip(p.tolist(), d.tolist()))
        # the set may differ only where the selection's rounding breaks a near-tie
        assert_same_topk(D1[r], I1[r], D2[r], perm[I2[r]])
        assert_same_topk(D1[r], I1[r], d, p)
        # a row found by both carries the same bits, wherever it sat and by either path
        for pos, dist in zip(I1[r].tolist(), D1[r].tolist()):
            if pos in moved:
                assert moved[pos] == dist, (r, pos)
            if pos in single:
                assert single[pos] == dist, (r, pos)
        assert len(set(I1[r].tolist()) & set(single)) >= 9


def test_a_single_query_scans_through_blas_alone_and_by_numba_beside_others(
        tmp_path, monkeypatch):
    """A BLAS-sized exact single query uses search_one_blas when it is the only one running
    and the numba scan while another runs (BLAS's threads under several callers at once
    oversubscribe the cores); both answer the exact top k. Queries from 4 threads at once
    all get the reference answer."""
    import threading

    import simplevector as sv
    from simplevector.engine import namespace as nsmod
    from simplevector.engine import planner
    rng = np.random.default_rng(11)
    n, dim = 20000, 64
    assert planner.use_blas_scan(n * dim)
    X = rng.standard_normal((n, dim)).astype(np.float32)
    Q = rng.standard_normal((24, dim)).astype(np.float32)
    with sv.open(tmp_path / "db", checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("b", dim=dim, metric="l2")
        ns.upsert(list(range(n)), X)
        want = [flat.search_one_ref(X, None, q, L2, 10)[1].tolist() for q in Q]
        used = []
        real_blas, real_numba = flat.search_one_blas, flat.search_one
        monkeypatch.setattr(flat, "search_one_blas",
                            lambda *a: used.append("blas") or real_blas(*a))
        monkeypatch.setattr(flat, "search_one", lambda *a: used.append("numba") or real_numba(*a))
        assert [h.id for h in ns.query(Q[0], k=10, include=())] == want[0]
        assert used == ["blas"]
        with nsmod._BIG_SCANS:                  # another scan is running
            assert [h.id for h in ns.query(Q[1], k=10, include=())] == want[1]
        assert used == ["blas", "numba"] and nsmod._BIG_SCANS.n == 0
        got = {}

        def run(j):
            for i in range(j, len(Q), 4):
                got[i] = [h.id for h in ns.query(Q[i], k=10, include=())]
        threads = [threading.Thread(target=run, args=(j,)) for j in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert [got[i] for i in range(len(Q))] == want and nsmod._BIG_SCANS.n == 0
