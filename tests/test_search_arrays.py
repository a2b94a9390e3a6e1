"""``ns.search(Q, k, where=None, ...) -> (distances, ids)``: fixed-shape arrays, FAISS's
contract. distances float32 (nq, k), +inf padding; ids an object array (nq, k) of the
stored ids, None padding. Checked against a numpy reference and against ``ns.query``."""

import numpy as np
import pytest

import simplevector as sv
from _numeric import assert_same_topk


def rows(n, dim, seed):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def l2_reference(X, Q, k, allowed=None):
    """(distances float64 (nq, k'), row indices (nq, k')) of the exact top-k by squared L2."""
    D = ((Q[:, None, :].astype(np.float64) - X[None, :, :]) ** 2).sum(-1)
    if allowed is not None:
        D = np.where(allowed[None, :], D, np.inf)
    order = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, order, 1), order


@pytest.fixture
def int_ns(db):
    X = rows(500, 8, 1)
    ns = db.create_namespace("v", dim=8, metric="l2")
    ns.upsert(list(range(1000, 1500)), X, metadata=[{"even": i % 2 == 0} for i in range(500)])
    return ns, X


def test_search_matches_a_numpy_reference_with_fixed_shape(int_ns):
    ns, X = int_ns
    Q = rows(7, 8, 2)
    D, ids = ns.search(Q, k=5)
    assert D.shape == ids.shape == (7, 5)
    assert D.dtype == np.float32 and ids.dtype == object
    RD, RI = l2_reference(X, Q, 5)
    for i in range(7):
        assert_same_topk(D[i], ids[i], RD[i], RI[i] + 1000)


def test_search_with_a_filter_matches_the_reference_over_matching_rows(int_ns):
    ns, X = int_ns
    Q = rows(4, 8, 3)
    D, ids = ns.search(Q, k=6, where={"even": True})
    allowed = np.arange(500) % 2 == 0
    RD, RI = l2_reference(X, Q, 6, allowed)
    for i in range(4):
        assert all((j - 1000) % 2 == 0 for j in ids[i])
        assert_same_topk(D[i], ids[i], RD[i], RI[i] + 1000)


def test_search_pads_with_inf_and_none_where_fewer_than_k_match(int_ns):
    ns, X = int_ns
    D, ids = ns.search(rows(3, 8, 4), k=10, where={"missing": {"$exists": True}})
    assert D.shape == (3, 10) and np.isinf(D).all() and (ids == None).all()  # noqa: E711
    wanted = {"even": True}
    ns.delete(where={"even": True})
    ns.upsert([7, 8], rows(2, 8, 5), metadata=[{"even": True}] * 2)
    D, ids = ns.search(rows(2, 8, 6), k=4, where=wanted)
    assert np.isfinite(D[:, :2]).all() and np.isinf(D[:, 2:]).all()
    assert sorted(ids[0, :2].tolist()) == [7, 8] and ids[0, 2:].tolist() == [None, None]
    faiss_style = np.where(ids == None, -1, ids).astype(np.int64)  # noqa: E711
    assert faiss_style[0, 2:].tolist() == [-1, -1]


def test_search_of_an_empty_namespace_is_all_padding(db):
    ns = db.create_namespace("e", dim=3, metric="l2")
    D, ids = ns.search(np.ones((2, 3), np.float32), k=3)
    assert D.shape == (2, 3) and np.isinf(D).all() and (ids == None).all()  # noqa: E711


def test_search_of_one_vector_gives_one_row(int_ns):
    ns, X = int_ns
    D, ids = ns.search(X[3], k=3)
    assert D.shape == ids.shape == (1, 3)
    assert ids[0, 0] == 1003 and D[0, 0] == pytest.approx(0.0, abs=1e-4)


def test_search_keeps_string_ids_as_stored(db):
    X = rows(50, 4, 7)
    ns = db.create_namespace("s", dim=4, metric="cosine")
    ns.upsert([f"doc-{i}" for i in range(50)], X)
    D, ids = ns.search(X[:5], k=50 + 3)
    assert ids.shape == (5, 53)
    assert ids[:, 0].tolist() == [f"doc-{i}" for i in range(5)]
    assert (ids[:, 50:] == None).all() and np.isinf(D[:, 50:]).all()  # noqa: E711
    assert all(isinstance(i, str) for i in ids[:, :50].ravel())


def test_search_explain_returns_the_plan(int_ns):
    ns, _ = int_ns
    D, ids, plan = ns.search(rows(2, 8, 8), k=2, where={"even": True}, explain=True)
    assert plan.index == "flat" and plan.matched == 250 and plan.short == 0


@pytest.mark.parametrize("bad, error", [({"k": 0}, sv.InvalidInput),
                                        ({"vectors": np.ones((2, 5), np.float32)},
                                         sv.InvalidInput),
                                        ({"where": {"even": {"$bogus": 1}}}, sv.SimpleVectorError),
                                        ({"nprobe": 0}, sv.InvalidInput)])
def test_search_rejects_bad_input_with_typed_errors(int_ns, bad, error):
    ns, _ = int_ns
    args = {"vectors": np.ones((2, 8), np.float32), "k": 3, **bad}
    with pytest.raises(error):
        ns.search(args.pop("vectors"), **args)


@pytest.fixture
def ivf_ns(db):
    rng = np.random.default_rng(9)
    centres = rng.standard_normal((20, 16)) * 4
    X = (centres[rng.integers(0, 20, 4000)] + rng.standard_normal((4000, 16))).astype(np.float32)
    ns = db.create_namespace("ivf", dim=16, metric="l2", index="IVF32,PQ8x8,Refine4")
    ns.upsert(list(range(4000)), X, metadata=[{"t": i % 4} for i in range(4000)])
    ns.build_index()
    Q = (centres[rng.integers(0, 20, 30)] + rng.standard_normal((30, 16))).astype(np.float32)
    return ns, Q


@pytest.mark.parametrize("where", [None, {"t": 1}, {"t": {"$in": [1, 2, 3]}}])
def test_search_returns_what_query_returns_on_an_ivf_index(ivf_ns, where):
    ns, Q = ivf_ns
    D, ids = ns.search(Q, k=10, where=where, nprobe=4)
    hits = ns.query(Q, k=10, where=where, nprobe=4, include=())
    for i, row in enumerate(hits):
        assert ids[i].tolist() == [h.id for h in row]
        np.testing.assert_array_equal(D[i], np.array([h.distance for h in row], np.float32))
    for i in (0, 7):                                            # one query per call too
        d1, i1 = ns.search(Q[i], k=10, where=where, nprobe=4)
        one = ns.query(Q[i], k=10, where=where, nprobe=4, include=())
        assert i1[0].tolist() == [h.id for h in one]
