"""The IVF query paths agree: one thread, probed lists split across threads, and batch."""

import numpy as np
import pytest
from _numeric import assert_same_hits

import simplevector as sv
import simplevector.engine.ivf as ivf


def _namespace(tmp_path, metric, spec):
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((20, 16)).astype(np.float32) * 4
    X = (centres[rng.integers(0, 20, 4000)] + rng.standard_normal((4000, 16))).astype(np.float32)
    db = sv.open(tmp_path / "db", checkpoint_interval=0, auto_index=False)
    ns = db.create_namespace("v", dim=16, metric=metric, index=spec)
    ns.upsert(list(range(len(X))), X)
    ns.build_index()
    ns.upsert(list(range(4000, 4100)), X[:100] + 0.01)      # rows in the delta too
    Q = (centres[rng.integers(0, 20, 30)] + rng.standard_normal((30, 16))).astype(np.float32)
    return db, ns, Q


def _ids_and_distances(hits):
    return [h.id for h in hits], np.array([h.distance for h in hits])


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_split_lists_path_returns_the_single_thread_results(tmp_path, monkeypatch, metric):
    db, ns, Q = _namespace(tmp_path, metric, "IVF16,PQ8x8,Refine3")
    with db:
        monkeypatch.setattr(ivf, "PARALLEL_SCAN_CODES", 0)
        monkeypatch.setattr(ivf, "SCAN_SPLIT", False)
        serial = [ns.query(q, k=10, nprobe=6, include=()) for q in Q]
        monkeypatch.setattr(ivf, "SCAN_SPLIT", True)
        split = [ns.query(q, k=10, nprobe=6, include=()) for q in Q]
        for a, b in zip(serial, split):
            ids_a, d_a = _ids_and_distances(a)
            ids_b, d_b = _ids_and_distances(b)
            np.testing.assert_allclose(d_a, d_b, rtol=1e-5, atol=1e-6)
            assert_same_hits(a, b)          # ids equal except among (near-)tied distances


@pytest.mark.parametrize("spec", ["IVF16,PQ8x8,Refine3", "IVF16,Flat", "IVF16,RaBitQ,Refine3"])
def test_batch_query_returns_the_single_query_results(tmp_path, spec):
    db, ns, Q = _namespace(tmp_path, "cosine", spec)
    with db:
        batch = ns.query(Q, k=10, nprobe=6, include=())
        for q, hits in zip(Q, batch):
            one = ns.query(q, k=10, nprobe=6, include=())
            assert_same_hits(hits, one)     # the batch probes through BLAS
            np.testing.assert_allclose([h.distance for h in hits], [h.distance for h in one],
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["IVF16,PQ8x8,Refine3", "IVF16,Flat", "IVF16,RaBitQ,Refine3"])
def test_scan_without_the_alive_mask_only_when_no_row_can_be_excluded(
        tmp_path, monkeypatch, spec):
    """With no tombstones, no filter and no row past the query's view, the scan skips the
    per-row mask lookup; it must return what the masked scan returns, and a single delete
    (or a row written after the view) must bring the mask back."""
    db, ns, Q = _namespace(tmp_path, "l2", spec)
    with db:
        seen = []
        real = ivf._scan_mask
        monkeypatch.setattr(ivf, "_scan_mask",
                            lambda *a: seen.append(real(*a)) or seen[-1])
        fast = [ns.query(q, k=10, nprobe=6, include=()) for q in Q]
        fast_batch = ns.query(Q, k=10, nprobe=6, include=())
        assert seen and not any(seen)                      # no tombstones: mask skipped
        monkeypatch.setattr(ivf, "_scan_mask", lambda *a: True)
        masked = [ns.query(q, k=10, nprobe=6, include=()) for q in Q]
        for a, b, c in zip(fast, masked, fast_batch):
            assert_same_hits(a, b)
            assert_same_hits(a, c)
        monkeypatch.setattr(ivf, "_scan_mask", lambda *a: seen.append(real(*a)) or seen[-1])
        victim = fast[0][0].id
        ns.delete([victim])
        seen.clear()
        after = ns.query(Q[0], k=10, nprobe=6, include=())
        assert seen == [True] and victim not in [h.id for h in after]
        # lists holding a row past the view: the bound comes back even with all rows alive
        state = db.engine._state(db.version_status("v").vid)
        view = state.view()
        sealed, d = state.index.snapshot()
        assert real(view.alive[:-1], True, sealed, d)


def test_the_scan_chooser_takes_the_cheaper_way_and_retries_the_other(monkeypatch):
    monkeypatch.setattr(ivf, "SCAN_SPLIT", None)
    c = ivf.ScanChooser()
    assert c.split() is False                   # nothing measured: serial first
    c.record(False, 1.0, 10_000)                # a first call (kernel load): not counted
    assert c.split() is False and c.info()["serial_ns_per_code"] is None
    c.record(False, 1e-3, 10_000)
    assert c.split() is True                    # then the split, until it is measured
    c.record(True, 1.0, 10_000)
    assert c.split() is True
    c.record(True, 5e-3, 10_000)                # the split is 5x slower (a busy machine)
    picks = [c.split() for _ in range(c.EXPLORE_SPLIT * 4)]
    assert sum(picks) == 4                      # retried once per EXPLORE_SPLIT queries
    c.record(True, 0.4e-3, 10_000)              # the machine went quiet: the split wins
    picks = [c.split() for _ in range(c.EXPLORE_SERIAL * 4)]
    assert picks.count(False) == 4 and c.info()["split_ns_per_code"] < \
        c.info()["serial_ns_per_code"]
    c.record(True, 1.0, 0)                      # a scan of nothing is not a measurement
    assert c.info()["split_ns_per_code"] < 100
    for _ in range(10):
        c.record(True, 5e-3, 10_000)            # busy again: a few slow splits move it off
    assert c.split() is False
    monkeypatch.setattr(ivf, "SCAN_SPLIT", True)
    assert all(c.split() for _ in range(10))


def test_single_queries_past_the_threshold_are_timed_both_ways(tmp_path, monkeypatch):
    db, ns, Q = _namespace(tmp_path, "l2", "IVF16,PQ8x8,Refine3")
    with db:
        monkeypatch.setattr(ivf, "PARALLEL_SCAN_CODES", 0)
        monkeypatch.setattr(ivf, "SCAN_SPLIT", None)
        monkeypatch.setattr(ivf.numba, "get_num_threads", lambda: 2)
        for q in Q:
            ns.query(q, k=10, nprobe=6, include=())
        index = db.engine._state(db.engine._resolve(ns.name).vid).index
        info = index._chooser.info()
        assert info["serial_ns_per_code"] > 0 and info["split_ns_per_code"] > 0


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_batch_tables_by_blas_and_in_the_kernel_give_the_same_hits(tmp_path, monkeypatch,
                                                                   metric):
    """Both places a batch's query tables are built (ivf.BatchTableChooser) return the
    same hits and distances, and the single queries' hits."""
    db, ns, Q = _namespace(tmp_path, metric, "IVF16,PQ8x8,Refine3")
    with db:
        got = {}
        for way in ("blas", "kernel"):
            monkeypatch.setattr(ivf, "BATCH_TABLES", way)
            got[way] = ns.query(Q, k=10, nprobe=6, include=())
        single = [ns.query(q, k=10, nprobe=6, include=()) for q in Q]
        for a, b, s in zip(got["blas"], got["kernel"], single):
            assert _ids_and_distances(a)[0] == _ids_and_distances(b)[0]
            np.testing.assert_allclose(_ids_and_distances(a)[1], _ids_and_distances(b)[1],
                                       rtol=1e-6, atol=1e-6)
            assert_same_hits(b, s)


def test_batches_time_both_table_ways_and_take_the_cheaper(tmp_path, monkeypatch):
    """Unforced, the first batches measure each way (its first call not counted), then
    the cheaper is taken and the other retried every EXPLORE_SPLIT batches."""
    db, ns, Q = _namespace(tmp_path, "cosine", "IVF16,PQ8x8,Refine3")
    with db:
        monkeypatch.setattr(ivf, "BATCH_TABLES", None)
        index = db.engine._state(db.engine._resolve(ns.name).vid).index
        for _ in range(6):
            ns.query(Q, k=10, nprobe=6, include=())
        info = index._tables.info()
        assert info["serial_ns_per_code"] > 0 and info["split_ns_per_code"] > 0
    c = ivf.BatchTableChooser()
    for way, cost in ((False, 1.0), (False, 2e-3), (True, 1.0), (True, 1e-3)):
        c.split()
        c.record(way, cost, 1000)
    picks = [c.split() for _ in range(c.EXPLORE_SERIAL * 3)]
    assert picks.count(False) == 3                  # BLAS cheaper: in-kernel retried
    monkeypatch.setattr(ivf, "BATCH_TABLES", "kernel")
    assert not any(c.split() for _ in range(5))
