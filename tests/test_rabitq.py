"""IVF-RaBitQ (engine/rabitq.py, engine/kernels/rabitq.py): the encoder and the estimator
against their numpy references, the estimator's error bound, the scan and search kernels
against the reference search, and the index through the public API: spec strings, recall
against exact search (tie-aware), dims that are not a multiple of 64, incremental adds,
deletes, filters that never come back short, checkpoint + reopen, WAL replay after a
crash, compaction, explain and info.

Floats are compared with tolerances (BLAS and the CPU's float paths differ between Intel
and AMD): a sign bit of a rotated residual within 1e-5 of zero may differ, estimates agree
to a relative 1e-4, and ids are compared tie-aware.
"""

import mmap
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import simplevector as sv
from _numeric import exact_distances as exact
from simplevector.engine import planner, warmup
from simplevector.engine import rabitq as rabitq_mod
from simplevector.engine.indexspec import RABITQ_DEFAULT_REFINE, IndexSpec
from simplevector.engine.ivf import IVFIndex
from simplevector.engine.kernels import ivfscan, rabitq as rq
from simplevector.engine.kernels.distances import IP, L2, COSINE
from simplevector.engine.rabitq import RaBitQIndex

TIE = 1e-4
DIMS = (50, 100, 384, 768)


# -- helpers ---------------------------------------------------------------------------------
def clustered(rng, n, dim, clusters=40, spread=3.0):
    centres = rng.standard_normal((clusters, dim)) * spread
    labels = rng.integers(0, clusters, n)
    X = (centres[labels] + rng.standard_normal((n, dim))).astype(np.float32)
    return X, labels, centres


def near(rng, centres, count, dim):
    which = rng.integers(0, len(centres), count)
    return (centres[which] + rng.standard_normal((count, dim))).astype(np.float32)


def recall(hits, D, allowed=None, k=10):
    """Tie-aware recall@k of hits (lists of Hit with int ids) against exact distances D."""
    if allowed is not None:
        D = np.where(allowed[None, :], D, np.inf)
    good = total = 0
    for i, row in enumerate(hits):
        want = min(k, int(np.isfinite(D[i]).sum()))
        kth = np.sort(D[i])[want - 1]
        ids = [int(h.id) for h in row]
        assert len(ids) == len(set(ids)) == want, f"query {i}: {len(ids)} hits, want {want}"
        if allowed is not None:
            assert all(allowed[j] for j in ids), f"query {i} returned a row the filter excludes"
        good += sum(1 for j in ids if D[i, j] <= kth + TIE * max(1.0, abs(kth)))
        total += want
    return good / total


def _root(a):
    """The object at the end of an array's .base chain (an mmap for a mapped view)."""
    while isinstance(a, np.ndarray) and a.base is not None:
        a = a.base
    return a.obj if isinstance(a, memoryview) else a


def open_db(path, **kw):
    kw.setdefault("checkpoint_interval", 0)
    kw.setdefault("auto_index", False)
    return sv.open(path, **kw)


def built(path, X, *, metric="l2", spec="IVF32,RaBitQ", metadata=None):
    db = open_db(path)
    ns = db.create_namespace("v", dim=X.shape[1], metric=metric, index=spec)
    for s in range(0, len(X), 5000):
        ns.upsert(list(range(s, min(len(X), s + 5000))), X[s:s + 5000],
                  metadata=None if metadata is None else metadata[s:s + 5000])
    info = ns.build_index()
    assert info["active"] == str(IndexSpec.parse(spec))
    return db, ns


def state_of(db, name="v"):
    return db.engine._state(db.engine._resolve(name).vid)


def trained_index(rng, n, dim, metric, nlist=16):
    X, _, centres = clustered(rng, n, dim)
    if metric == COSINE:
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
    index = IVFIndex.train(IndexSpec.parse(f"IVF{nlist},RaBitQ"), X, metric, seed=1)
    lists, codes = index.encode(X[: n - 300])
    index.load_lists(np.arange(n - 300), lists, codes)
    dl, dc = index.encode(X[n - 300:])          # the last 300 rows in the delta
    index.add(np.arange(n - 300, n), dl, dc)
    return index, X, centres


# -- 1. spec strings ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["IVF256,RaBitQ", "IVF256,RaBitQ,Refine4", "IVF64,RaBitQ,Refine1"])
def test_rabitq_spec_round_trips_through_parse_and_str(text):
    spec = IndexSpec.parse(text)
    assert str(spec) == text
    assert IndexSpec.parse(str(spec)) == spec
    assert spec.rabitq and spec.encoding == "rabitq" and spec.pq_m == 0


def test_rabitq_spec_without_refine_takes_the_default_refine_and_prints_without_it():
    spec = IndexSpec.parse("ivf128,rabitq")
    assert (spec.kind, spec.nlist, spec.refine) == ("ivf", 128, RABITQ_DEFAULT_REFINE)
    assert str(spec) == "IVF128,RaBitQ"
    explicit = IndexSpec.parse(f"IVF128,RaBitQ,Refine{RABITQ_DEFAULT_REFINE}")
    assert explicit == spec and str(explicit) == "IVF128,RaBitQ"
    assert spec.min_train_rows == 128 * 39


@pytest.mark.parametrize("text, names", [
    ("IVF16,RaBitQ4", "'RaBitQ4'"), ("IVF16,RaBitQx8", "'RaBitQx8'"),
    ("IVF16,RaBitQ,Refine0", "'Refine0'"), ("IVF16,RaBitQ,PQ8", "'PQ8'"),
    ("IVF16,RaBitQ,Refine2,Refine3", "too many parts"), ("IVF0,RaBitQ", "nlist 0"),
    ("RaBitQ", "'RaBitQ'")])
def test_bad_rabitq_specs_raise_invalid_input_naming_the_part(text, names):
    with pytest.raises(sv.InvalidInput) as e:
        IndexSpec.parse(text)
    assert names in str(e.value) and text in str(e.value)


def test_create_namespace_with_a_bad_rabitq_spec_creates_nothing(tmp_path):
    with open_db(tmp_path / "db") as db:
        with pytest.raises(sv.InvalidInput):
            db.create_namespace("v", dim=50, metric="l2", index="IVF16,RaBitQ,Refine0")
        assert "v" not in [n.name if hasattr(n, "name") else n for n in db.list_namespaces()]


# -- 2. encoder, popcount, query quantizer, estimator against numpy -----------------------------
def _rotation_ref(signs, x):
    """The rotation of kernels/rabitq.rotate in float64 numpy, written from its definition:
    each round flips signs, applies the orthonormal Hadamard matrix (Sylvester's
    construction) to the leading (even rounds) or trailing (odd) h = 2^floor(log2 D')
    coordinates, then, when h < D', the Kac butterfly ((a + b, a - b) / sqrt 2) between the
    two halves."""
    dp = signs.shape[1]
    h = 1 << (dp.bit_length() - 1)
    H = np.array([[1.0]])
    while H.shape[0] < h:
        H = np.block([[H, H], [H, -H]])
    H /= np.sqrt(h)
    y = np.zeros(dp)
    y[: len(x)] = x
    for t in range(signs.shape[0]):
        y = y * signs[t]
        s = 0 if t % 2 == 0 else dp - h
        y[s:s + h] = H @ y[s:s + h]
        if h < dp:
            a, b = y[: dp // 2].copy(), y[dp // 2:].copy()
            y[: dp // 2], y[dp // 2:] = (a + b) / np.sqrt(2), (a - b) / np.sqrt(2)
    return y


@pytest.mark.parametrize("dim", (8, 50, 64, 384, 768, 1536))
def test_rotate_matches_the_numpy_rotation_and_the_dense_matrix(dim):
    rng = np.random.default_rng(dim)
    signs = rq.rotation_signs(dim, 5)
    q = rng.standard_normal(dim).astype(np.float32)
    out = np.empty(signs.shape[1], np.float32)
    rq.rotate(signs, q, out)
    want = _rotation_ref(signs.astype(np.float64), q.astype(np.float64))
    np.testing.assert_allclose(out, want, rtol=0, atol=1e-5 * np.abs(want).max())
    np.testing.assert_allclose(np.linalg.norm(out), np.linalg.norm(q), rtol=1e-5)
    R = rq.random_rotation_of(signs)
    np.testing.assert_allclose(R[:, :dim] @ q, out, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("h", (1, 2, 4, 8, 16, 64, 512, 1024))
@pytest.mark.parametrize("start", (0, 3, 256))
def test_fht_register_stages_equal_the_stage_loop_bit_for_bit(h, start):
    x = np.random.default_rng(h + start).standard_normal(start + h + 5).astype(np.float32)
    a, b = x.copy(), x.copy()
    rq._fht(a, start, h)
    rq._fht_loop(b, start, h)
    assert np.array_equal(a, b)
    assert np.array_equal(a[:start], x[:start]) and np.array_equal(a[start + h:], x[start + h:])


@pytest.mark.parametrize("dim", DIMS)
def test_encode_matches_the_numpy_reference(dim):
    rng = np.random.default_rng(dim)
    R = rq.random_rotation(dim, 7)
    dp = R.shape[0]
    assert dp % 64 == 0 and dp - 64 < dim <= dp
    np.testing.assert_allclose(R.astype(np.float64) @ R.T.astype(np.float64), np.eye(dp),
                               atol=1e-5)
    Rs = rng.standard_normal((300, dim)).astype(np.float32)
    Rs[0] = 0.0                                     # a row on its centroid
    got, want = rq.encode(Rs, R), rq.encode_ref(Rs, R)
    assert got.shape == want.shape == (300, rq.code_bytes(dim))
    rot = Rs.astype(np.float64) @ R[:, :dim].T.astype(np.float64)
    bits_got = np.unpackbits(got[:, : dp // 8], axis=1, bitorder="little").astype(bool)
    bits_want = np.unpackbits(want[:, : dp // 8], axis=1, bitorder="little").astype(bool)
    differ = bits_got != bits_want
    assert not differ[np.abs(rot) > 1e-5].any()     # only signs of ~0 may differ
    _, fg = rq.views(got)
    _, fw = rq.views(want)
    np.testing.assert_allclose(fg[:, dp // 32:], fw[:, dp // 32:], rtol=1e-4, atol=1e-5)
    assert (fg[0, dp // 32:] == 0).all()
    np.testing.assert_array_equal(fw[:, dp // 32 + 3], bits_want.sum(1))   # popcount factor


def test_popcount_intrinsic_counts_the_set_bits_of_uint64_words():
    from numba import njit

    @njit(cache=False)
    def count(words):
        out = np.empty(words.shape[0], np.int64)
        for i in range(words.shape[0]):
            out[i] = rq.popcount(words[i])
        return out
    rng = np.random.default_rng(0)
    words = rng.integers(0, 2**63, 500, dtype=np.uint64) * np.uint64(2) + \
        rng.integers(0, 2, 500, dtype=np.uint64)
    words[:3] = [0, 2**64 - 1, 2**63]
    assert count(words).tolist() == [bin(int(w)).count("1") for w in words]


@pytest.mark.parametrize("dim", DIMS)
def test_quantized_query_planes_match_the_reference(dim):
    rng = np.random.default_rng(dim + 1)
    dp = rq.padded_dim(dim)
    y = (rng.standard_normal(dp) * 2.0).astype(np.float32)
    planes = np.empty((rq.QUERY_BITS, dp // 64), np.uint64)
    lo, delta, total = rq.quantize_query(y, planes)
    u, lo_ref, delta_ref = rq.quantize_query_ref(y)
    assert lo == lo_ref and delta == pytest.approx(delta_ref, rel=1e-6)
    bits = np.unpackbits(planes.view(np.uint8).reshape(rq.QUERY_BITS, -1), axis=1,
                         bitorder="little").astype(np.int64)
    got = sum(bits[j] << j for j in range(rq.QUERY_BITS))
    assert np.abs(got - u).max() <= 1 and (got == u).mean() > 0.99    # rounding ties only
    assert total == got.sum() and got.min() == 0 and got.max() == 15
    assert np.abs(lo + delta * got - y).max() <= delta * 0.5 + 1e-5


@pytest.mark.parametrize("metric", [L2, IP])
@pytest.mark.parametrize("dim", DIMS)
def test_scan_kernel_estimates_equal_the_numpy_estimator(dim, metric):
    """Every estimate the compiled scan puts in its heap (capacity = all rows) equals the
    numpy estimator's on the same codes and query: one query quantized from the centre
    (q' - g' for l2, q' for ip), the rows' terms from terms_ref, and the lower bounds
    scaled by the list's own residual norm ||q' - R c_l|| (l2)."""
    rng = np.random.default_rng(dim * 3 + metric)
    index, X, centres = trained_index(rng, 3000, dim, metric, nlist=8)
    sealed, d, words, fac, dwords, dfac, st, dt = index._code_views()
    q = near(rng, centres, 1, dim)[0]
    qr = index.rotate(q[None, :])[0]
    probes = np.arange(index.nlist, dtype=np.int64)
    hd = np.empty(len(X), np.float32)
    hi = np.empty(len(X), np.int64)
    hl = np.empty(len(X), np.float32)
    size, scanned, _ = rq.rabitq_scan(qr, index.rcentroids, index.rcenter, probes,
                                      sealed.offsets, words, fac, sealed.pos, st, dwords, dfac,
                                      d.pos, dt, d.order, d.offsets, ivfscan.NO_MASK, False,
                                      rq.NO_BITS, False, metric, hd, hi, hl, 1.5, -1, 1.0)
    assert size == len(X) and scanned == index.nlist
    got = np.empty(len(X))
    got[hi[:size]] = hd[:size]
    got_lower = np.empty(len(X))
    got_lower[hi[:size]] = hl[:size]
    want = np.empty(len(X))
    want_err = np.empty(len(X))
    dl = d.lists[: d.n]
    for l in range(index.nlist):
        rows = np.arange(sealed.offsets[l], sealed.offsets[l + 1])
        drows = np.flatnonzero(dl == l)
        codes = np.concatenate([sealed.codes[rows], d.codes[drows]])
        pos = np.concatenate([sealed.pos[rows], d.pos[drows]])
        y = (qr - index.rcenter).astype(np.float32)
        if metric == IP:
            assert not index.rcenter.any()
            base = -float(qr.astype(np.float64) @ index.rcentroids[l])
            want[pos], want_err[pos] = rq.estimate_ref(codes, y, index.dpad, metric, base)
        else:
            res = qr.astype(np.float64) - index.rcentroids[l]
            t = rq.terms_ref(codes, index.rcentroids[l].astype(np.float64) - index.rcenter,
                             index.dpad)
            want[pos], want_err[pos] = rq.estimate_ref(codes, y, index.dpad, metric,
                                                       float(res @ res), t,
                                                       float(np.linalg.norm(res)))
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * scale)
    # each heap entry carries its lower bound, estimate - eps x error bound
    np.testing.assert_allclose(got_lower, want - 1.5 * want_err, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("dim", DIMS)
def test_row_terms_of_sealed_and_delta_rows_equal_the_numpy_reference(dim):
    """list_terms (sealed CSR) and row_terms (the delta, appended by add) against
    terms_ref: est(R c_l - g') of each code row; ip indexes keep none and a zero centre."""
    rng = np.random.default_rng(dim + 5)
    index, X, _ = trained_index(rng, 2000, dim, L2, nlist=8)
    sealed, d, *_ , st, dt = index._code_views()
    assert len(st) == len(sealed.pos) and len(dt) >= d.n == 300
    np.testing.assert_allclose(index.rcenter, index.rcentroids.mean(axis=0), atol=1e-6)
    want = np.empty(len(sealed.pos))
    for l in range(index.nlist):
        lo, hi = sealed.offsets[l], sealed.offsets[l + 1]
        want[lo:hi] = rq.terms_ref(sealed.codes[lo:hi], index.rcentroids[l].astype(np.float64)
                                   - index.rcenter, index.dpad)
    scale = np.abs(want).max()
    np.testing.assert_allclose(st, want, rtol=1e-4, atol=1e-5 * scale)
    dl = d.lists[: d.n]
    dwant = np.array([rq.terms_ref(d.codes[i: i + 1], index.rcentroids[dl[i]].astype(np.float64)
                                   - index.rcenter, index.dpad)[0] for i in range(d.n)])
    np.testing.assert_allclose(dt[: d.n], dwant, rtol=1e-4, atol=1e-5 * scale)
    ip_index, _, _ = trained_index(rng, 2000, dim, IP, nlist=8)
    assert not ip_index.rcenter.any() and len(ip_index._code_views()[6]) == 0


def test_centred_estimate_equals_the_list_residual_estimate_up_to_query_rounding():
    """est(q' - g') - t = est(q' - R c_l) (the estimator is linear): with the query left
    unquantized both sides agree to float error, so one query serves every list at the
    residual's error bound."""
    rng = np.random.default_rng(9)
    index, X, centres = trained_index(rng, 2000, 128, L2, nlist=8)
    sealed, *_ = index._code_views()
    qr = index.rotate(near(rng, centres, 1, 128))[0].astype(np.float64)
    _, fac = rq.views(sealed.codes)
    for l in range(index.nlist):
        codes = sealed.codes[sealed.offsets[l]:sealed.offsets[l + 1]]
        rc = index.rcentroids[l].astype(np.float64)
        centred = (rq.terms_ref(codes, qr - index.rcenter, index.dpad)
                   - rq.terms_ref(codes, rc - index.rcenter, index.dpad))
        np.testing.assert_allclose(centred, rq.terms_ref(codes, qr - rc, index.dpad),
                                   rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dim", DIMS)
def test_estimator_error_is_within_the_rabitq_bound_on_random_data(dim):
    """The bound is probabilistic (eps0 in units of the estimator's standard deviation,
    Gao & Long's Theorem 3.2): at eps0 = 1.9 at most ~6% of rows fall outside, at eps0 = 3
    well under 1%. Also checked: the estimate is unbiased to within a few percent."""
    rng = np.random.default_rng(dim + 11)
    R = rq.random_rotation(dim, 2)
    dp = R.shape[0]
    c = rng.standard_normal(dim).astype(np.float32)
    X = (c + rng.standard_normal((4000, dim))).astype(np.float32)
    codes = rq.encode(X - c, R)
    outside19 = outside3 = 0
    bias = []
    for t in range(5):
        q = (c + rng.standard_normal(dim)).astype(np.float32)
        y = (R[:, :dim] @ (q - c)).astype(np.float32)
        est, err = rq.estimate_ref(codes, y, dp, L2, float(y.astype(np.float64) @ y))
        true = ((X.astype(np.float64) - q) ** 2).sum(1)
        e = np.abs(est - true)
        outside19 += int((e > 1.9 * err).sum())
        outside3 += int((e > 3.0 * err).sum())
        bias.append(float(np.mean(est - true) / np.mean(true)))
    rows = 5 * len(X)
    assert outside19 / rows <= 0.09, outside19 / rows
    assert outside3 / rows <= 0.012, outside3 / rows
    assert abs(np.mean(bias)) < 0.03


# -- 3. search kernels against the reference search --------------------------------------------
@pytest.mark.parametrize("metric", [L2, IP, COSINE])
def test_search_kernel_returns_the_reference_search(metric):
    rng = np.random.default_rng(40 + metric)
    dim = 100
    index, X, centres = trained_index(rng, 4000, dim, metric)
    Q = near(rng, centres, 12, dim)
    if metric == COSINE:
        Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    mask = np.ones(len(X), np.uint8)
    mask[::7] = 0                                  # tombstones / a filter
    sealed, d = index.snapshot()
    for q in Q:
        probes = ivfscan.probe_lists_ref(q, index.centroids, 5, index.list_metric)
        dist, pos, scanned, reached = index.search(X, q, 10, 5, 4, mask)
        want_d, want_p, top, done = rq.search_ref(
            q, X, index.rotation, index.centroids, index.rcentroids, index.rcenter, probes,
            sealed.offsets,
            sealed.codes, sealed.pos, d.codes, d.pos, d.lists, d.n, mask, index.list_metric,
            metric, 40, 10)
        assert scanned == 5 and reached
        assert not (mask[pos] == 0).any()
        np.testing.assert_allclose(dist, want_d, rtol=1e-4, atol=1e-4)
        # ids agree except among (near-)tied estimates or distances
        assert len(set(pos.tolist()) & set(want_p.tolist())) >= 9
        assert len(top) == 40 and 10 <= len(done) <= 40 and set(done) <= set(top)


def test_bounded_rerank_reads_candidates_in_bound_order_until_one_is_beyond_the_kth():
    """rerank_bounded against its definition: candidates by lower bound; each re-ranked
    unless its bound (halved for cosine) already exceeds the k-th exact distance so far;
    the first that does ends the re-rank. Negative bounds everywhere: all re-ranked."""
    rng = np.random.default_rng(3)
    for metric in (L2, IP, COSINE):
        X = rng.standard_normal((500, 24)).astype(np.float32)
        if metric == COSINE:
            X /= np.linalg.norm(X, axis=1, keepdims=True)
        for trial in range(20):
            q = X[rng.integers(500)] + 0.3 * rng.standard_normal(24).astype(np.float32)
            if metric == COSINE:
                q /= np.linalg.norm(q)
            q = q.astype(np.float32)
            cand = rng.choice(500, 60, replace=False).astype(np.int64)
            names = {L2: "l2", IP: "ip", COSINE: "cosine"}
            exact_d = {int(p): float(v)
                       for p, v in zip(cand, exact(X[cand], q[None], names[metric])[0])}
            scale = 0.5 if metric == COSINE else 1.0
            # bounds: the exact distance (in the estimate's units) minus a random slack
            lower = np.array([exact_d[int(p)] / scale - rng.uniform(0, 2.0) for p in cand],
                             np.float32)
            if trial == 0:
                lower[:] = -np.inf
            got_d, got_p, n = rq.rerank_bounded(X, q, metric, cand, lower, len(cand), 10)
            seen = []
            for t in np.argsort(lower, kind="stable"):
                if len(seen) >= 10 and lower[t] * scale > sorted(exact_d[p] for p in seen)[9]:
                    break
                seen.append(int(cand[t]))
            assert n == len(seen) and (trial or n == len(cand))
            want = sorted(seen, key=lambda p: (exact_d[p], p))[:10]
            assert got_p.tolist() == want
            np.testing.assert_allclose(got_d, [exact_d[p] for p in want], rtol=1e-5, atol=1e-5)
            # with true lower bounds nothing skipped could have been among the k nearest
            full = sorted(cand.tolist(), key=lambda p: (exact_d[p], p))[:10]
            assert got_p.tolist() == full


@pytest.mark.parametrize("metric", [L2, IP, COSINE])
def test_error_bound_keeps_the_results_of_re_ranking_every_candidate(metric):
    """The bound only skips rows that were not going to make the top k: against eps < 0 (every
    one of the k x refine candidates re-ranked) the results agree, while fewer rows are read."""
    rng = np.random.default_rng(70 + metric)
    # rows of a 16-dim latent space in 384 dims (embeddings are far from isotropic): the
    # distances spread, so the bound has something to skip
    basis = rng.standard_normal((16, 384)).astype(np.float32)
    Z = rng.standard_normal((6030, 16)).astype(np.float32)
    X = Z @ basis + 0.1 * rng.standard_normal((6030, 384)).astype(np.float32)
    if metric == COSINE:
        X /= np.linalg.norm(X, axis=1, keepdims=True)
    X, Q = np.ascontiguousarray(X[:6000]), np.ascontiguousarray(X[6000:])
    index = IVFIndex.train(IndexSpec.parse("IVF16,RaBitQ"), X, metric, seed=1)
    index.load_lists(np.arange(len(X)), *index.encode(X))
    sealed, d, words, fac, dwords, dfac, st, dt = index._code_views()
    mask = np.ones(len(X), bool)
    same = read = every = 0
    for q in Q:
        out = {}
        for eps in (-1.0, rq.BOUND_EPS):
            out[eps] = rq.rabitq_search_serial(
                q, X, index.signs, index.centroids, index.rcentroids, index.rcenter, 6,
                index.list_metric, sealed.offsets, words, fac, sealed.pos, st, dwords, dfac,
                d.pos, dt, d.order, d.offsets, mask, False, rq.NO_BITS, False, metric, 80, 10,
                -1, 1.0, eps)
        same += len(set(out[-1.0][1].tolist()) & set(out[rq.BOUND_EPS][1].tolist()))
        every += out[-1.0][4]
        read += out[rq.BOUND_EPS][4]
    assert every == 80 * len(Q)
    assert same >= 0.995 * 10 * len(Q), same
    assert read < 0.9 * every, (read, every)


def test_batch_kernel_returns_the_single_query_results():
    rng = np.random.default_rng(5)
    index, X, centres = trained_index(rng, 4000, 384, L2)
    Q = near(rng, centres, 20, 384)
    mask = np.ones(len(X), bool)
    D, I, scanned, reached = index.search_batch_padded(X, Q, 10, 6, 8, mask)
    for i, q in enumerate(Q):
        d, p, s, _ = index.search(X, q, 10, 6, 8, mask)
        np.testing.assert_allclose(D[i], d, rtol=1e-5, atol=1e-5)
        assert len(set(I[i].tolist()) & set(p.tolist())) >= 9
        assert scanned[i] == s == 6
    assert reached.all()


@pytest.mark.parametrize("metric", [L2, IP])
def test_split_kernel_returns_the_serial_kernel_results(metric):
    """rabitq_search_parallel over the same probes, 2 and 3 chunks, unwidened: the same
    top k (merged chunk heaps hold the same kk best estimates)."""
    rng = np.random.default_rng(12)
    index, X, centres = trained_index(rng, 5000, 128, metric)
    sealed, d, words, fac, dwords, dfac, st, dt = index._code_views()
    mask = np.ones(len(X), bool)
    for q in near(rng, centres, 12, 128):
        args = (sealed.offsets, words, fac, sealed.pos, st, dwords, dfac, d.pos, dt, d.order,
                d.offsets, mask, False, rq.NO_BITS, False)
        sd, sp, sn, sr, _ = rq.rabitq_search_serial(
            q, X, index.signs, index.centroids, index.rcentroids, index.rcenter, 7,
            index.list_metric, *args, metric, 60, 10, -1, 1.0, rq.BOUND_EPS)
        probes = ivfscan.probe(q, index.centroids, 7, index.list_metric)
        for chunks in (2, 3):
            pd, pp, pn, pr, _ = rq.rabitq_search_parallel(
                q, X, index.signs, index.rcentroids, index.rcenter, probes, *args,
                index.list_metric, metric, 60, 10, chunks, -1, 1.0, rq.BOUND_EPS)
            np.testing.assert_allclose(pd, sd, rtol=1e-6, atol=1e-6)
            assert pp.tolist() == sp.tolist() and pn == sn == 7 and pr and sr


def test_list_bits_equal_the_reference_and_past_the_mask_are_unset():
    rng = np.random.default_rng(21)
    for n in (0, 1, 63, 64, 65, 1000):
        pos = rng.permutation(n + 40)[:n].astype(np.int64)
        mask = rng.random(n + 20) < 0.3                 # positions past it: not allowed
        got = rq.list_bits(pos, mask)
        np.testing.assert_array_equal(got, rq.list_bits_ref(pos, mask))
        bits = np.unpackbits(got.view(np.uint8), bitorder="little")[:n].astype(bool)
        want = np.array([p < len(mask) and mask[p] for p in pos], bool)
        np.testing.assert_array_equal(bits, want)


@pytest.mark.parametrize("metric", [L2, IP])
def test_scan_with_list_bits_takes_the_same_rows_as_the_position_mask(metric):
    """rabitq_scan walking the set bits of list_bits returns the heap, lists scanned and
    target of the per-row mask lookups, widened or not, with lists not aligned to 64 rows
    (and delta rows, which keep the position mask)."""
    rng = np.random.default_rng(23 + metric)
    index, X, centres = trained_index(rng, 4000, 128, metric, nlist=24)
    sealed, d, words, fac, dwords, dfac, st, dt = index._code_views()
    mask = rng.random(len(X)) < 0.2
    lbits = rq.list_bits(sealed.pos, mask)
    for q in near(rng, centres, 6, 128):
        qr = index.rotate(q[None, :])[0]
        probes = ivfscan.probe(q, index.centroids, 24, index.list_metric)
        for min_lists, share in ((-1, 1.0), (3, 0.5), (2, 0.9)):
            out = []
            for use in (False, True):
                hd, hi, hl = (np.empty(60, np.float32), np.empty(60, np.int64),
                              np.empty(60, np.float32))
                size, scanned, reached = rq.rabitq_scan(
                    qr, index.rcentroids, index.rcenter, probes, sealed.offsets, words, fac,
                    sealed.pos, st, dwords, dfac, d.pos, dt, d.order, d.offsets, mask, True,
                    lbits, use, index.list_metric, hd, hi, hl, rq.BOUND_EPS, min_lists, share)
                order = np.lexsort((hi[:size], hd[:size]))
                out.append((hi[:size][order].tolist(), hd[:size][order].tolist(), scanned,
                            reached))
            assert out[0] == out[1]
            assert not (~mask[out[1][0]]).any()


def test_a_repeated_filter_gets_list_bits_on_its_second_widened_scan(tmp_path, monkeypatch):
    """The index keeps list bits for a read-only mask seen twice (the field index's reused
    result), none for a writable one, and answers the same with them; a write (a new
    result array) and a new seal (new lists) are not served the old bits."""
    monkeypatch.setattr(planner, "EXACT_VALUE_COST", 1e12)
    rng = np.random.default_rng(29)
    X, _, centres = clustered(rng, 6000, 64)
    bucket = rng.integers(0, 10, len(X))
    db, ns = built(tmp_path / "db", X, spec="IVF64,RaBitQ",
                   metadata=[{"b": int(v)} for v in bucket])
    index = state_of(db).index
    where = {"b": 0}
    Q = near(rng, centres, 8, 64)
    first = [[h.id for h in ns.query(q, k=10, where=where, include=(), nprobe=4)] for q in Q]
    plan = ns.query(Q[0], k=10, where=where, include=(), nprobe=4, explain=True)[1]
    assert plan.index == "ivf" and plan.lists > 4           # widened
    kept = [e for e in index._bits.values() if e[2] is not None]
    assert len(kept) == 1 and not kept[0][0].flags.writeable
    np.testing.assert_array_equal(kept[0][2], rq.list_bits_ref(kept[0][1].pos, kept[0][0]))
    again = [[h.id for h in ns.query(q, k=10, where=where, include=(), nprobe=4)] for q in Q]
    assert again == first
    for row, q in zip(first, Q):                            # against exact over matching
        D = ((X[bucket == 0] - q) ** 2).sum(1)
        assert len(set(row) & set(np.flatnonzero(bucket == 0)[np.argsort(D)[:10]])) >= 8
    writable = np.array(kept[0][0])
    assert index._list_bits(writable, kept[0][1]) is None
    ns.upsert([len(X)], Q[:1], metadata=[{"b": 0}])        # a write: a new result array
    for _ in range(2):
        after = ns.query(Q[0], k=10, where=where, include=(), nprobe=4)
        assert after[0].id == len(X) and len(after) == 10
    assert len(index._bits) <= rabitq_mod.LIST_BITS_ENTRIES
    db.close()


def test_split_widened_scan_keeps_recall_and_reaches_its_target(filtered_ns, monkeypatch):
    """A widened filtered query over many lists on the numba threads (ivf.SCAN_SPLIT
    forced): every query reaches its target, recall against exact over the matching rows
    stays within 0.02 of the serial scan's, and the chooser recorded the split."""
    from simplevector.engine import ivf as ivf_mod
    ns, X, bucket, _, Q = filtered_ns
    monkeypatch.setattr(planner, "EXACT_VALUE_COST", 1e12)
    monkeypatch.setattr(planner, "BATCH_EXACT_VALUE_COST", 1e12)
    where, allowed = {"bucket": {"$lt": 1000}}, bucket < 1000
    D = exact(X, Q, "l2")
    got = {}
    for split in (False, True):
        monkeypatch.setattr(ivf_mod, "SCAN_SPLIT", split)
        hits = []
        for q in Q:
            h, plan = ns.query(q, k=10, nprobe=8, where=where, include=(), explain=True)
            assert plan.index == "ivf" and plan.lists >= 8, plan
            hits.append(h)
        got[split] = recall(hits, D, allowed)
    assert got[True] >= got[False] - 0.02, got
    index = ns.engine_ns._db._state(ns.engine_ns._config().vid).index
    assert sum(c.seen[1] for c in index._widen_choosers.values()) >= len(Q)


def test_cold_numpy_search_returns_the_kernel_search():
    rng = np.random.default_rng(8)
    index, X, centres = trained_index(rng, 3000, 100, L2)
    for q in near(rng, centres, 8, 100):
        d1, p1 = warmup.ivf_search(index, X, q, L2, 10, 4, 8, None)
        d2, p2, _, _ = index.search(X, q, 10, 4, 8, np.ones(len(X), bool))
        np.testing.assert_allclose(d1, d2, rtol=1e-4, atol=1e-4)
        assert len(set(p1.tolist()) & set(p2.tolist())) >= 9


# -- 4. through the public API ------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_rabitq_recall_at_10_against_exact_search_is_above_threshold(tmp_path, metric):
    rng = np.random.default_rng(60)
    X, _, centres = clustered(rng, 12_000, 128, clusters=60)
    Q = near(rng, centres, 60, 128)
    db, ns = built(tmp_path / "db", X, metric=metric, spec="IVF64,RaBitQ")
    with db:
        D = exact(X, Q, metric)
        r = recall(ns.query(Q, k=10, nprobe=16, include=()), D)
        single = recall([ns.query(q, k=10, nprobe=16, include=()) for q in Q[:20]], D[:20])
        # without re-ranking 1-bit estimates alone rank far worse: the threshold can fail
        coarse = recall(ns.query(Q, k=10, nprobe=16, refine=1, include=()), D)
    assert r >= 0.95, r
    assert single >= 0.9, single
    assert coarse < r


@pytest.mark.parametrize("dim", DIMS)
def test_dims_that_are_not_a_multiple_of_64_build_and_find_their_neighbours(tmp_path, dim):
    rng = np.random.default_rng(dim + 70)
    X, _, centres = clustered(rng, 3000, dim, clusters=20)
    Q = near(rng, centres, 30, dim)
    db, ns = built(tmp_path / "db", X, metric="cosine", spec="IVF16,RaBitQ")
    with db:
        info = ns.index_info()
        assert info["code_bytes"] == rq.padded_dim(dim) // 8 + 16
        assert info["padded_dim"] == rq.padded_dim(dim)
        assert recall(ns.query(Q, k=10, nprobe=8, include=()), exact(X, Q, "cosine")) >= 0.9
        for i in (0, 1234, 2999):
            assert ns.query(X[i], k=1, nprobe=16, include=())[0].id == i


def test_rows_written_after_training_are_encoded_into_the_delta_and_found(tmp_path):
    rng = np.random.default_rng(80)
    X, _, centres = clustered(rng, 4000, 100)
    db, ns = built(tmp_path / "db", X[:3000], spec="IVF16,RaBitQ")
    with db:
        index = state_of(db).index
        ns.upsert(list(range(3000, 4000)), X[3000:])
        assert state_of(db).index is index            # no retraining
        assert index.info()["delta_rows"] == 1000
        for i in (3000, 3500, 3999):
            assert ns.query(X[i], k=1, nprobe=16, include=())[0].id == i
        index.seal(state_of(db).view().alive)
        assert index.info()["delta_rows"] == 0 and index.info()["rows_in_lists"] == 4000
        Q = near(rng, centres, 30, 100)
        assert recall(ns.query(Q, k=10, nprobe=8, include=()), exact(X, Q, "l2")) >= 0.9


def test_deleted_rows_never_come_back_from_a_rabitq_query(tmp_path):
    rng = np.random.default_rng(81)
    X, _, centres = clustered(rng, 4000, 64)
    db, ns = built(tmp_path / "db", X, spec="IVF16,RaBitQ")
    with db:
        Q = near(rng, centres, 20, 64)
        first = ns.query(Q, k=10, nprobe=16, include=())
        gone = sorted({h.id for row in first for h in row[:3]})
        ns.delete(gone)
        alive = np.ones(len(X), bool)
        alive[gone] = False
        after = ns.query(Q, k=10, nprobe=16, include=())
        assert recall(after, exact(X, Q, "l2"), alive) >= 0.9
        single = [ns.query(q, k=10, nprobe=16, include=()) for q in Q]
        assert not {h.id for row in single for h in row} & set(gone)


@pytest.fixture(scope="module")
def filtered_ns(tmp_path_factory):
    rng = np.random.default_rng(90)
    X, labels, centres = clustered(rng, 20_000, 100, clusters=80)
    bucket = rng.integers(0, 10_000, len(X))
    metadata = [{"bucket": int(b), "category": int(c)} for b, c in zip(bucket, labels)]
    db, ns = built(tmp_path_factory.mktemp("rq") / "db", X, spec="IVF128,RaBitQ",
                   metadata=metadata)
    Q = near(rng, centres, 60, 100)
    yield ns, X, bucket, labels, Q
    db.close()


@pytest.mark.parametrize("selectivity", [0.002, 0.01, 0.03, 0.1, 0.3])
@pytest.mark.parametrize("kind", ["bucket", "category"])
@pytest.mark.parametrize("force_ivf", [False, True])
def test_filtered_rabitq_queries_are_never_short_and_keep_recall(
        filtered_ns, monkeypatch, selectivity, kind, force_ivf):
    ns, X, bucket, labels, Q = filtered_ns
    if force_ivf:                        # the widened IVF scan, not exact over the matches
        monkeypatch.setattr(planner, "EXACT_VALUE_COST", 1e12)
        monkeypatch.setattr(planner, "BATCH_EXACT_VALUE_COST", 1e12)
    if kind == "bucket":
        cut = int(selectivity * 10_000)
        where, allowed = {"bucket": {"$lt": cut}}, bucket < cut
    else:
        cut = max(1, int(round(selectivity * 80)))
        where, allowed = {"category": {"$lt": cut}}, labels < cut
    D = exact(X, Q, "l2")
    base = recall(ns.query(Q, k=10, nprobe=8, include=()), D)
    hits, plan = ns.query(Q, k=10, nprobe=8, where=where, include=(), explain=True)
    assert plan.short == 0
    if force_ivf and allowed.sum() > 10 * RABITQ_DEFAULT_REFINE:
        assert plan.index in ("ivf", "ivf+exact-fallback"), plan
    r = recall(hits, D, allowed)                 # also: every query has min(10, matches)
    assert r >= base - 0.03, (plan.index, r, base)
    one = [ns.query(q, k=10, nprobe=8, where=where, include=()) for q in Q[:5]]
    recall(one, D[:5], allowed)


def test_explain_and_info_show_the_rabitq_plan(filtered_ns):
    ns, X, _, _, Q = filtered_ns
    hits, plan = ns.query(Q[0], k=10, explain=True)
    assert plan.index == "ivf" and plan.spec == "IVF128,RaBitQ"
    assert plan.refine == RABITQ_DEFAULT_REFINE and plan.candidates == 10 * RABITQ_DEFAULT_REFINE
    info = ns.index_info()
    assert info["quantizer"] == "rabitq" and info["adc_tables"] == "rabitq"
    assert info["code_bytes"] == 128 // 8 + 16 and info["query_bits"] == 4
    assert info["rows_in_lists"] == len(X)


def test_checkpoint_and_reopen_maps_the_codes_and_answers_identically(tmp_path, monkeypatch):
    rng = np.random.default_rng(100)
    X, _, centres = clustered(rng, 5000, 100)
    Q = near(rng, centres, 20, 100)
    db, ns = built(tmp_path / "db", X[:4500], metric="cosine", spec="IVF32,RaBitQ,Refine8")
    ns.upsert(list(range(4500, 5000)), X[4500:])          # rows in the delta
    ns.delete([0, 1, 2])
    before = ns.query(Q, k=10, include=())
    info = ns.index_info()
    db.checkpoint()
    db.close()

    def no_encode(self, X):
        raise AssertionError("reopen re-encoded rows")
    monkeypatch.setattr(RaBitQIndex, "_encode", no_encode)
    with open_db(tmp_path / "db", auto_index=True) as db2:
        ns2 = db2.namespace("v")
        index = state_of(db2).index
        assert isinstance(index, RaBitQIndex)
        sealed, _ = index.snapshot()
        for a in (sealed.codes, sealed.pos, index.rotation, index.rcentroids, index.rcenter,
                  sealed.terms):
            assert isinstance(_root(a), mmap.mmap), type(_root(a))   # views of the bundle
        words, fac = rq.views(sealed.codes)
        np.testing.assert_array_equal(
            sealed.terms, rq.list_terms(sealed.offsets, words, fac, index.rcentroids,
                                        index.rcenter))
        for key in ("active", "train_seconds", "trained_rows", "train_error", "code_bytes",
                    "rows"):
            assert ns2.index_info()[key] == info[key], key
        after = ns2.query(Q, k=10, include=())
    assert [[h.id for h in r] for r in after] == [[h.id for h in r] for r in before]
    np.testing.assert_allclose([[h.distance for h in r] for r in after],
                               [[h.distance for h in r] for r in before], rtol=1e-6)


def test_a_bundle_without_row_terms_gets_them_on_the_first_query_not_at_load():
    """A RaBitQ bundle written before the row terms (no ``rcenter``, no ``terms``) loads
    with none; the first kernel query computes them from the codes, equal to a fresh
    index's, and answers as the index that had them."""
    rng = np.random.default_rng(31)
    index, X, centres = trained_index(rng, 3000, 100, L2)
    alive = np.ones(len(X), bool)
    meta, arrays = index.to_arrays(alive)
    assert "terms" in arrays and "rcenter" in arrays
    old = {key: v for key, v in arrays.items() if key not in ("terms", "rcenter")}
    loaded = IVFIndex.from_arrays(meta, old)
    assert loaded.snapshot()[0].terms is None
    np.testing.assert_array_equal(loaded.rcenter, index.rcenter)
    fresh = IVFIndex.from_arrays(meta, arrays)
    for q in near(rng, centres, 5, 100):
        want = fresh.search(X, q, 10, 4, 4, alive)
        got = loaded.search(X, q, 10, 4, 4, alive)
        assert got[1].tolist() == want[1].tolist()
        np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(loaded.snapshot()[0].terms, fresh.snapshot()[0].terms)


_CRASH_CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np
    import simplevector as sv
    path, n, tail = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    X = np.load(os.path.join(path + ".x.npy"))
    db = sv.open(path, checkpoint_interval=0, auto_index=False, durability="sync")
    ns = db.create_namespace("v", dim=X.shape[1], metric="l2", index="IVF16,RaBitQ")
    ns.upsert(list(range(n)), X[:n])
    ns.build_index()
    db.checkpoint()
    for s in range(n, n + tail, 100):
        ns.upsert(list(range(s, s + 100)), X[s:s + 100])
    ns.delete([n, n + 1])
    os._exit(0)                          # no close, no checkpoint: the WAL holds the tail
""")


def test_wal_replay_after_a_crash_restores_the_rabitq_delta(tmp_path):
    rng = np.random.default_rng(110)
    X, _, centres = clustered(rng, 3600, 100)
    path = str(tmp_path / "db")
    np.save(path + ".x.npy", X)
    subprocess.run([sys.executable, "-c", _CRASH_CHILD, path, "3000", "600"], check=True,
                   timeout=300, env={**os.environ, "SIMPLEVECTOR_COLD_QUERIES": "0"})
    with open_db(path) as db:
        assert db.memory_replayed_records == 7        # six upserts and a delete
        ns = db.namespace("v")
        info = ns.index_info()
        # the replayed rows are encoded into the delta (tombstones stay until a seal)
        assert info["active"] == "IVF16,RaBitQ" and info["rows_in_lists"] == 3600
        assert info["delta_rows"] == 600 and ns.count() == 3598
        for i in (3002, 3300, 3599):
            assert ns.query(X[i], k=1, nprobe=16, include=())[0].id == i
        assert 3000 not in [h.id for h in ns.query(X[3000], k=5, nprobe=16, include=())]
        alive = np.ones(len(X), bool)
        alive[[3000, 3001]] = False
        Q = near(rng, centres, 20, 100)
        assert recall(ns.query(Q, k=10, nprobe=8, include=()), exact(X, Q, "l2"), alive) >= 0.9


def test_compaction_remaps_the_rabitq_lists_without_re_encoding(tmp_path, monkeypatch):
    rng = np.random.default_rng(120)
    X, _, centres = clustered(rng, 5000, 100)
    Q = near(rng, centres, 20, 100)
    path = tmp_path / "db"
    db, ns = built(path, X, spec="IVF32,RaBitQ")
    db.close()
    with open_db(path, compact_ratio=0) as db:
        ns = db.namespace("v")
        ns.delete(list(range(0, 5000, 3)))
        before = ns.query(Q, k=10, include=())
        monkeypatch.setattr(RaBitQIndex, "_encode",
                            lambda self, X: (_ for _ in ()).throw(AssertionError("encoded")))
        ns.compact()
        state = state_of(db)
        assert state.n == state.live == 5000 - len(range(0, 5000, 3))
        assert isinstance(state.index, RaBitQIndex)
        after = ns.query(Q, k=10, include=())
        assert [[h.id for h in r] for r in after] == [[h.id for h in r] for r in before]
        monkeypatch.undo()                      # verify's deep check re-encodes a sample
        report = db.verify(deep=True)
        assert not report.problems, report.problems
    with open_db(path) as db:
        again = db.namespace("v").query(Q, k=10, include=())
        assert [[h.id for h in r] for r in again] == [[h.id for h in r] for r in before]


def test_rebuilding_with_another_spec_switches_between_rabitq_and_pq(tmp_path):
    rng = np.random.default_rng(130)
    X, _, centres = clustered(rng, 3000, 64)
    db, ns = built(tmp_path / "db", X, spec="IVF16,PQ16x8,Refine4")
    with db:
        assert ns.build_index("IVF16,RaBitQ")["active"] == "IVF16,RaBitQ"
        assert isinstance(state_of(db).index, RaBitQIndex)
        Q = near(rng, centres, 20, 64)
        assert recall(ns.query(Q, k=10, nprobe=8, include=()), exact(X, Q, "l2")) >= 0.9
        assert ns.build_index("IVF16,PQ16x8,Refine4")["active"] == "IVF16,PQ16x8,Refine4"
        assert not isinstance(state_of(db).index, RaBitQIndex)
