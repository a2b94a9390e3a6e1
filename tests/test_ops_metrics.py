"""Prometheus export parses and matches what the engine did; histograms survive a reopen."""

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import simplevector as sv
from simplevector.engine.namespace import Plan
from simplevector.ops.database import ObservedDatabase


def samples(text):
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def db(tmp_path):
    handle = ObservedDatabase(tmp_path / "db", checkpoint_interval=0, auto_index=False)
    yield handle
    handle.close()


def fill(db, n=300, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    ns = db.create_namespace("docs", dim=dim, metric="l2")
    X = rng.standard_normal((n, dim)).astype(np.float32)
    ns.upsert(ids=list(range(n // 2)), vectors=X[: n // 2])
    ns.upsert(ids=list(range(n // 2, n)), vectors=X[n // 2:])
    return ns, X


def test_open_returns_the_ops_enabled_database(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as handle:
        assert isinstance(handle, ObservedDatabase)
        assert hasattr(handle, "metrics_text")


def test_metrics_parse_and_match_the_operations(db):
    ns, X = fill(db)
    ns.delete(ids=[0, 1, 2])
    for i in range(5):
        ns.query(X[i], k=3)
    ns.get([5, 6])
    with pytest.raises(sv.SimpleVectorError):
        ns.query(np.zeros(3, np.float32), k=3)           # wrong dim: a failed query
    s = samples(db.metrics_text())
    docs = lambda op: (("namespace", "docs"), ("op", op))  # noqa: E731
    assert s[("simplevector_operations_total", docs("upsert"))] == 2
    assert s[("simplevector_operations_total", docs("query"))] == 6
    assert s[("simplevector_operation_errors_total", docs("query"))] == 1
    assert s[("simplevector_operations_total", docs("delete"))] == 1
    assert s[("simplevector_operation_duration_seconds_count", docs("query"))] == 6
    assert s[("simplevector_operation_duration_seconds_bucket",
              tuple(sorted(docs("get") + (("le", "+Inf"),))))] == 1
    assert s[("simplevector_vectors_written_total", ())] == 300
    assert s[("simplevector_vectors_deleted_total", ())] == 3
    labels = (("live", "true"), ("model", ""), ("namespace", "docs"), ("version", "1"))
    assert s[("simplevector_vectors", labels)] == 297
    assert s[("simplevector_tombstones", labels)] == 3
    assert s[("simplevector_wal_bytes", ())] == db.info()["wal_bytes"]
    assert s[("simplevector_wal_records_since_checkpoint", ())] == db.status().logged_lsn
    assert s[("simplevector_lsn", ())] == db.lsn


def test_histogram_buckets_are_cumulative_and_sum_matches_latency(db):
    ns, X = fill(db)
    for i in range(20):
        ns.query(X[i], k=3)
    fam = {f.name: f for f in text_string_to_metric_families(db.metrics_text())}
    hist = fam["simplevector_operation_duration_seconds"]
    q = [s for s in hist.samples if s.labels.get("op") == "query"]
    buckets = [s.value for s in q if s.name.endswith("_bucket")]
    assert buckets == sorted(buckets) and buckets[-1] == 20
    total = next(s.value for s in q if s.name.endswith("_sum"))
    assert total == pytest.approx(db.latency("docs", "query")[0].sum)


def test_recall_and_short_results_are_exported(db):
    ns, X = fill(db)
    db.probe_recall("docs", samples=50, k=5)
    db.engine._notify_query("docs", Plan(short=2, matched=100), None)
    s = samples(db.metrics_text())
    assert s[("simplevector_recall", (("k", "5"), ("namespace", "docs"), ("version", "1")))] == 1.0
    assert s[("simplevector_short_results_total", (("namespace", "docs"),))] == 2


def test_probe_queries_are_not_counted_as_user_operations(db):
    ns, X = fill(db)
    db.probe_recall("docs", samples=50, k=5)
    assert db.latency(op="query") == []


def test_histograms_survive_a_reopen_through_the_checkpoint(tmp_path):
    path = tmp_path / "db"
    with ObservedDatabase(path, checkpoint_interval=0, auto_index=False) as db:
        ns, X = fill(db)
        for i in range(7):
            ns.query(X[i], k=3)
        before = db.latency("docs", "query")[0]
        db.engine._notify_query("docs", Plan(short=1), None)
    with ObservedDatabase(path, checkpoint_interval=0, auto_index=False) as db:
        after = db.latency("docs", "query")[0]
        assert after.count == 7 and after.p99 == before.p99 and after.max == before.max
        assert db.latency("docs", "query", window="5m")[0].count == 0   # windows: this process
        ns = db.namespace("docs")
        ns.query(X[0], k=3)
        assert db.latency("docs", "query")[0].count == 8
        assert db.short_results() == {"docs": 1}
    with ObservedDatabase(path, readonly=True, checkpoint_interval=0) as ro:
        assert ro.latency("docs", "query")[0].count == 8


def test_latency_filters_and_rejects_unknown_op(db):
    ns, X = fill(db)
    ns.query(X[0], k=3)
    assert {(s.namespace, s.op) for s in db.latency()} == {("docs", "upsert"), ("docs", "query")}
    assert [s.op for s in db.latency(op="upsert")] == ["upsert"]
    with pytest.raises(sv.InvalidInput):
        db.latency(op="scan")
    with pytest.raises(sv.InvalidInput):
        db.latency(window="2d")
