"""The first queries of a fresh process (engine/warmup.py): answered exactly in numpy
while the numba kernels load on a background thread, then by the index. Each test runs a
fresh Python process (a process that already ran a kernel has it loaded)."""

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import simplevector as sv
from simplevector.engine import warmup

DIM = 24

_CHILD = """
import json, sys, time
import numpy as np
import simplevector as sv
from simplevector.engine import warmup
path, kind = sys.argv[1], sys.argv[2]
Q = np.load(sys.argv[3])
db = sv.open(path, readonly=True, checkpoint_interval=0)
ns = db.namespace("w")
out = []
hits, plan = ns.query(Q[0], k=10, include=("metadata",), explain=True)
out.append([plan.index, plan.reason, [[h.id, h.distance, h.metadata] for h in hits]])
hits, plan = ns.query(Q[1], k=10, where={"g": 1}, include=(), explain=True)
out.append([plan.index, plan.reason, [[h.id, h.distance] for h in hits]])
deadline = time.time() + 120
while not warmup.loaded(kind) and time.time() < deadline:
    time.sleep(0.01)
hits, plan = ns.query(Q[0], k=10, include=(), explain=True)
out.append([plan.index, plan.reason, [[h.id, h.distance] for h in hits]])
print(json.dumps(out))
"""


def _fresh(path, kind, Q, tmp_path):
    np.save(tmp_path / "q.npy", Q)
    env = {k: v for k, v in os.environ.items() if k != "SIMPLEVECTOR_COLD_QUERIES"}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), kind,
                          str(tmp_path / "q.npy")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _exact(X, alive_ids, q, metric, k, allowed=None):
    ids = [i for i in alive_ids if allowed is None or allowed(i)]
    V = X[ids].astype(np.float64)
    if metric == "l2":
        d = ((V - q) ** 2).sum(1)
    else:
        d = -(V @ q)
    order = np.lexsort((ids, d))[:k]
    return [ids[i] for i in order], d[order]


@pytest.mark.parametrize("metric,index", [("l2", "IVF16,PQ8"), ("ip", "IVF16,Flat"),
                                          ("l2", "Flat"), ("l2", "IVF16,RaBitQ")])
def test_first_queries_of_a_process_are_exact_then_the_index_answers(tmp_path, metric, index):
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, DIM)).astype(np.float32)
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("w", dim=DIM, metric=metric, index=index)
        ns.upsert(list(range(3000)), X, metadata=[{"g": i % 3} for i in range(3000)])
        if index != "Flat":
            ns.build_index()
        ns.delete(list(range(0, 3000, 10)))
    alive = [i for i in range(3000) if i % 10]
    Q = rng.standard_normal((2, DIM)).astype(np.float32)
    kind = {"IVF16,PQ8": "ivfpq", "IVF16,Flat": "ivfflat", "Flat": "flat",
            "IVF16,RaBitQ": "rabitq"}[index]
    first, filtered, later = _fresh(path, kind, Q, tmp_path)
    assert first[0] == ("exact-numpy" if index == "Flat" else "ivf-numpy"), first
    assert "loading" in first[1]
    if index == "Flat":
        ids, d = _exact(X, alive, Q[0], metric, 10)
        assert [h[0] for h in first[2]] == ids
        np.testing.assert_allclose([h[1] for h in first[2]], d, rtol=1e-4, atol=1e-4)
    else:
        # the same IVF search as the kernels: the same hits (here nprobe = all 16 lists)
        assert [h[0] for h in first[2]] == [h[0] for h in later[2]]
    assert all(h[2] == {"g": h[0] % 3} for h in first[2])
    assert filtered[0] == "exact-numpy"
    ids, d = _exact(X, alive, Q[1], metric, 10, allowed=lambda i: i % 3 == 1)
    assert [h[0] for h in filtered[2]] == ids
    # once the background run loaded the kernels, the index plans again
    assert later[0] in ("flat", "ivf"), later
    assert [h[0] for h in later[2]] == [h[0] for h in first[2]]


_BUSY_CHILD = """
import json, sys, time
import numpy as np
import simplevector as sv
db = sv.open(sys.argv[1], readonly=True, checkpoint_interval=0)
ns = db.namespace("w")
Q = np.random.default_rng(0).standard_normal((500, int(sys.argv[2]))).astype(np.float32)
t0 = time.perf_counter()
plans, n = {}, 0
while time.perf_counter() - t0 < 60:
    _, plan = ns.query(Q[n % 500], k=10, include=(), explain=True)   # back to back
    plans[plan.index] = plans.get(plan.index, 0) + 1
    n += 1
    if plan.index == "ivf":
        break
print(json.dumps({"plans": plans, "seconds": time.perf_counter() - t0}))
"""


def test_queries_back_to_back_do_not_keep_the_kernels_from_loading(tmp_path):
    """A process queried without a pause from its first query on (a server restarted under
    load): the background load steps aside for the queries only part of the time, so the
    kernels load and the index answers; the numpy path does not stay on for good."""
    rng = np.random.default_rng(4)
    dim = 64
    X = rng.standard_normal((60000, dim)).astype(np.float32)
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("w", dim=dim, metric="l2", index="IVF256,PQ16x8")
        ns.upsert(list(range(len(X))), X)
        ns.build_index()
    env = {k: v for k, v in os.environ.items() if k != "SIMPLEVECTOR_COLD_QUERIES"}
    out = subprocess.run([sys.executable, "-c", _BUSY_CHILD, str(path), str(dim)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["plans"].get("ivf") == 1, got          # the kernels answered within 60 s
    assert got["plans"].get("ivf-numpy", 0) >= 1, got  # and the first answers were numpy


def test_cold_queries_can_be_turned_off_and_big_versions_wait_for_the_kernels(monkeypatch):
    monkeypatch.setenv("SIMPLEVECTOR_COLD_QUERIES", "0")
    assert warmup.loaded("ivfpq")           # off: every kind counts as loaded
    monkeypatch.setenv("SIMPLEVECTOR_COLD_QUERIES", "1")
    assert warmup.COLD_EXACT_VALUES == 1 << 27


def test_exact_matches_the_flat_kernel_on_every_metric():
    from simplevector.engine.kernels import flat
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4000, 16)).astype(np.float32)
    X[7] = X[8]                             # a tie: the lower position first
    for metric in (0, 1, 2):
        Y = X / np.linalg.norm(X, axis=1, keepdims=True) if metric == 2 else X
        xn = np.einsum("ij,ij->i", Y, Y).astype(np.float32)
        mask = rng.random(4000) < 0.5
        mask[7] = mask[8] = True
        sparse = rng.random(4000) < 0.05        # a selective mask scores the gathered rows
        sparse[7] = sparse[8] = True
        for q in (Y[8], Y[3] + 0.05):
            q = np.ascontiguousarray(q, np.float32)
            for m in (None, mask, sparse):
                got = warmup.exact(Y, xn, q, metric, 10, m)
                want = flat.search_one(Y, xn, q, metric, 10,
                                       None if m is None else m.astype(np.uint8))
                np.testing.assert_array_equal(got[1], want[1])
                np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


def test_numpy_ivf_search_equals_the_kernels(tmp_path):
    """warmup.ivf_search against IVFIndex.search (the kernels) on l2 and ip, IVF-PQ with
    per-list tables, precomputed terms and IVF-Flat, with tombstones and delta rows."""
    rng = np.random.default_rng(5)
    for metric, spec in (("l2", "IVF8,PQ6x8,Refine3"), ("ip", "IVF8,PQ6x8,Refine3"),
                         ("l2", "IVF8,PQ12x8,Refine2"), ("cosine", "IVF8,PQ6x8"),
                         ("l2", "IVF8,Flat")):
        X = rng.standard_normal((3000, 24)).astype(np.float32)
        with sv.open(tmp_path / f"{metric}{spec}", checkpoint_interval=0,
                     auto_index=False) as db:
            ns = db.create_namespace("w", dim=24, metric=metric, index=spec)
            ns.upsert(list(range(2500)), X[:2500])
            ns.build_index()
            ns.upsert(list(range(2500, 3000)), X[2500:])        # in the delta lists
            ns.delete(list(range(0, 3000, 7)))
            state = db.engine._state(db.engine._resolve("w").vid)
            view, index = state.view(), state.index
            same = 0
            for q in rng.standard_normal((20, 24)).astype(np.float32):
                q = state.prepare(q[None])[0]
                for nprobe in (2, 8):
                    d, p = warmup.ivf_search(index, view.X, q, state.metric.code, 10, nprobe,
                                             index.spec.refine, view.alive)
                    d2, p2 = index.search(view.X, q, 10, nprobe, index.spec.refine,
                                          view.alive)[:2]
                    same += len(set(p.tolist()) & set(p2.tolist()))
                    assert all(view.alive[p])
            # float32 sums in another order may swap a candidate at the re-rank boundary
            assert same >= 0.99 * 20 * 2 * 10, (metric, spec, same)


def _background_load(monkeypatch, pause_s):
    """Start a background load (warmup.start) that makes one Python call once released:
    (release, done) events; the test's own kind is forgotten afterwards."""
    monkeypatch.setattr(warmup, "MAX_PAUSE_S", pause_s)
    kind = f"test-step-aside-{pause_s}"
    release, done = threading.Event(), threading.Event()

    def python_call():
        return 1

    def load():
        release.wait()
        python_call()               # a Python call: the trace hook decides whether to wait
        done.set()
    warmup.start(kind, load)
    monkeypatch.setattr(warmup, "_started", warmup._started - {kind})
    return release, done


def test_a_background_load_waits_while_a_query_runs_and_goes_on_after_it(monkeypatch):
    release, done = _background_load(monkeypatch, pause_s=60.0)
    with warmup.foreground():
        assert warmup._foreground == 1      # a load is running: the query is counted
        release.set()
        # unhooked, the load finishes in microseconds; hooked, it waits for the query
        assert not done.wait(0.3)
    assert done.wait(10)
    assert warmup._foreground == 0
    deadline = time.time() + 10
    while warmup._loading and time.time() < deadline:
        time.sleep(0.001)
    assert warmup._loading == 0
    # no load running: a query costs one check, nothing is counted
    with warmup.foreground():
        assert warmup._foreground == 0


def test_a_background_load_waits_at_most_max_pause_for_one_query(monkeypatch):
    # a query that outlasts the bound (or waits for a lock the load holds) does not stop it
    release, done = _background_load(monkeypatch, pause_s=0.05)
    with warmup.foreground():
        release.set()
        assert done.wait(10)


def test_wait_returns_when_the_background_load_ends_or_at_its_timeout(monkeypatch):
    release, done = _background_load(monkeypatch, pause_s=0.07)    # a kind of its own
    t0 = time.monotonic()
    assert warmup.wait(timeout=0.2) is False        # the load waits for its release
    assert 0.2 <= time.monotonic() - t0 < 5.0 and not done.is_set()
    threading.Timer(0.1, release.set).start()
    assert warmup.wait(timeout=30.0) is True
    assert done.is_set() and warmup._loading == 0
    assert warmup.wait() is True                    # nothing loading: at once
