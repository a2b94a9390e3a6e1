"""One suite, two backends: the embedded database (``sv.open``) and the HTTP client
(``sv.connect``, over JSON and over msgpack) of a real ``simplevector serve``
subprocess. A feature is done when it
passes on both; each test uses its own namespace names (the backends are module-scoped)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import simplevector as sv
from simplevector.engine.planner import Plan

from _numeric import assert_same_hits
from _serverproc import ServerProcess

_names = itertools.count()


@pytest.fixture(scope="module", params=["embedded", "server", "server-msgpack"])
def backend(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param) / "db"
    if request.param == "embedded":
        db = sv.open(path, checkpoint_interval=0)
        yield db
        db.close()
        return
    server = ServerProcess(path)
    client = sv.connect(server.url, wire="msgpack" if request.param.endswith("msgpack")
                        else "json")
    yield client
    client.close()
    assert server.stop() == 0, server.log()


@pytest.fixture
def name():
    return f"ns{next(_names)}"


def data(n=40, dim=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)).astype(np.float32)


def reference(X, ids, q, k, metric="l2", keep=None):
    """Exact hits computed in numpy (the same reference for both backends)."""
    if metric == "l2":
        d = ((X.astype(np.float64) - q) ** 2).sum(1)
    else:
        raise AssertionError(metric)
    order = [i for i in np.argsort(d, kind="stable") if keep is None or keep(i)][:k]
    return [sv.Hit(id=ids[i], distance=float(d[i])) for i in order]


# -- namespaces and versions ------------------------------------------------------------------
def test_create_list_and_drop_namespace(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2", model="m@1.0.0")
    assert (ns.name, ns.version, ns.dim, ns.metric, ns.model) == (name, 1, 4, "l2", "m@1.0.0")
    infos = {i.name: i for i in backend.list_namespaces()}
    assert isinstance(infos[name], sv.NamespaceInfo)
    assert infos[name].live_version == 1
    v = infos[name].versions[0]
    assert isinstance(v, sv.VersionInfo)
    assert (v.version, v.dim, v.metric, v.count, v.live) == (1, 4, "l2", 0, True)
    backend.drop_namespace(name)
    assert name not in {i.name for i in backend.list_namespaces()}
    with pytest.raises(sv.NamespaceNotFound):
        backend.namespace(name)


def test_versions_and_promote(backend, name):
    v1 = backend.create_namespace(name, dim=4, metric="l2")
    v1.upsert([1], data(1))
    v2 = backend.create_version(name, model="m@2.0.0")
    assert (v2.version, v2.dim, v2.model, v2.live) == (2, 4, "m@2.0.0", False)
    v2.upsert([1, 2], data(2, seed=1))
    assert backend.namespace(name).count() == 1
    assert backend.namespace(name, 2).count() == 2
    backend.promote(name, 2)
    live = backend.namespace(name)
    assert (live.version, live.count()) == (2, 2)
    backend.drop_namespace(name, 1)
    assert [v.version for v in
            next(i for i in backend.list_namespaces() if i.name == name).versions] == [2]
    with pytest.raises(sv.VersionNotFound):
        backend.namespace(name, 1)


# -- rows ----------------------------------------------------------------------------------------
def test_upsert_and_get_keep_id_types_metadata_documents_and_vectors(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2")
    X = data(3)
    lsn = ns.upsert([7, "seven", 8], X, metadata=[{"a": 1, "tags": ["x"]}, None, {"b": 2.5}],
                    documents=["doc7", "docs", None])
    assert isinstance(lsn, int) and lsn == backend.lsn
    recs = ns.get([7, "seven", 8, "missing"], include=("metadata", "documents", "vectors"))
    assert [r.id for r in recs[:3]] == [7, "seven", 8] and recs[3] is None
    assert type(recs[0].id) is int and type(recs[1].id) is str
    assert isinstance(recs[0], sv.Record)
    assert recs[0].metadata == {"a": 1, "tags": ["x"]} and recs[1].metadata is None
    assert [r.document for r in recs[:3]] == ["doc7", "docs", None]
    for r, x in zip(recs, X):
        assert r.vector.dtype == np.float32
        np.testing.assert_array_equal(r.vector, x)
    one = ns.get("seven")
    assert isinstance(one, sv.Record) and one.id == "seven" and one.vector is None
    assert ns.get(99) is None
    assert ns.count() == 3


def test_upsert_replaces_a_row(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2")
    ns.upsert(["a"], data(1), metadata=[{"v": 1}])
    ns.upsert(["a"], data(1, seed=3), metadata=[{"v": 2}])
    assert ns.count() == 1
    assert ns.get("a").metadata == {"v": 2}


def test_delete_by_ids_and_by_where(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2")
    ns.upsert(list(range(10)), data(10), metadata=[{"g": i % 3} for i in range(10)])
    assert ns.delete(ids=[0, 1, 42]) == 2
    assert ns.delete(where={"g": 2}) == 3          # 2, 5, 8
    assert ns.count() == 5
    assert sorted(r.id for r in ns.get(list(range(10))) if r is not None) == [3, 4, 6, 7, 9]


# -- queries ---------------------------------------------------------------------------------------
def test_query_single_and_batch_match_exact_reference(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2")
    X = data(60)
    ids = [i if i % 2 else f"s{i}" for i in range(60)]
    ns.upsert(ids, X)
    Q = data(3, seed=9)
    single = ns.query(Q[0], k=5)
    assert isinstance(single, list) and all(isinstance(h, sv.Hit) for h in single)
    assert_same_hits(single, reference(X, ids, Q[0], 5))
    batch = ns.query(Q, k=5)
    assert len(batch) == 3 and all(isinstance(row, list) for row in batch)
    for q, row in zip(Q, batch):
        assert_same_hits(row, reference(X, ids, q, 5))


def test_query_with_where_and_include(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2")
    X = data(50)
    ids = list(range(50))
    ns.upsert(ids, X, metadata=[{"even": i % 2 == 0, "i": i} for i in ids],
              documents=[f"d{i}" for i in ids])
    q = data(1, seed=5)[0]
    hits = ns.query(q, k=4, where={"even": True}, include=("metadata", "documents", "vectors"))
    assert_same_hits(hits, reference(X, ids, q, 4, keep=lambda i: i % 2 == 0))
    for h in hits:
        assert h.metadata == {"even": True, "i": h.id} and h.document == f"d{h.id}"
        assert h.vector.dtype == np.float32
        np.testing.assert_array_equal(h.vector, X[h.id])
    bare = ns.query(q, k=2, include=())
    assert all(h.metadata is None and h.vector is None for h in bare)
    assert ns.query(q, k=3, where={"i": {"$gt": 1000}}) == []


def test_query_explain_returns_hits_and_plan(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2")
    ns.upsert(list(range(20)), data(20))
    hits, plan = ns.query(data(1, seed=2)[0], k=3, explain=True)
    assert isinstance(plan, Plan) and plan.index == "flat" and plan.rows == 20
    assert len(hits) == 3 and all(isinstance(h, sv.Hit) for h in hits)
    rows, plan = ns.query(data(2, seed=2), k=3, where={"missing": 1}, explain=True)
    assert rows == [[], []] and plan.matched == 0


def test_build_index_and_index_info_on_ivf(backend, name):
    ns = backend.create_namespace(name, dim=8, metric="l2", index="IVF4,Flat")
    X = data(400, dim=8)
    ns.upsert(list(range(400)), X)
    info = ns.build_index()
    assert info["active"].startswith("IVF4")
    assert ns.index_info()["active"] == info["active"]
    q = data(1, dim=8, seed=4)[0]
    hits, plan = ns.query(q, k=5, nprobe=4, explain=True)
    assert plan.index.startswith("ivf") and plan.nprobe == 4
    assert_same_hits(hits, reference(X, list(range(400)), q, 5))   # nprobe = nlist: exact
    assert_same_hits(ns.query(q, k=5, exact=True), reference(X, list(range(400)), q, 5))


def test_changes_since(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2")
    start = backend.lsn
    ns.upsert([1, "b"], data(2))
    ns.delete(ids=[1])
    changes = list(backend.changes(since=start))
    assert all(isinstance(c, sv.Change) for c in changes)
    assert [(c.op, c.namespace, c.ids) for c in changes] == [
        ("upsert", name, (1, "b")), ("delete", name, (1,))]
    assert changes[-1].lsn == backend.lsn


def test_health_metrics_and_latency(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2")
    ns.upsert([1], data(1))
    ns.query(data(1)[0], k=1)
    report = backend.health()
    assert type(report).__name__ == "HealthReport"
    assert report.status in ("ok", "warning", "critical")
    assert report.findings and all(type(f).__name__ == "Finding" for f in report.findings)
    assert {f.check for f in report.findings} >= {"tombstone_ratio", "wal_bytes"}
    text = backend.metrics_text()
    assert isinstance(text, str) and "simplevector_" in text
    rows = backend.latency(namespace=name, op="query")
    assert rows and type(rows[0]).__name__ == "LatencySummary" and rows[0].count >= 1
    assert backend.latency(namespace=name, op="query", window="5m")[0].window == 300


def test_verify_and_repair(backend, name):
    from simplevector.engine.integrity import VerifyReport
    from simplevector.engine.repair import RepairReport
    ns = backend.create_namespace(name, dim=4, metric="l2")
    ns.upsert([1, 2, "c"], data(3), metadata=[{"a": 1}, None, {"a": "x"}])
    ns.delete([2])
    for deep in (False, True):
        report = backend.verify(deep=deep)
        assert isinstance(report, VerifyReport) and report.ok, report.problems
        assert report.deep is deep and report.checked["rows"] >= 2
    with pytest.raises(sv.InvalidInput):
        backend.verify(deep="yes")
    repaired = backend.repair()
    assert isinstance(repaired, RepairReport) and repaired.ok and not repaired.damaged
    assert repaired.after.ok and repaired.checkpoint_lsn >= 1
    assert backend.health().find("integrity")[0].severity == "ok"


def test_version_zero_raises_invalid_input(backend, name):
    backend.create_namespace(name, dim=4)
    with pytest.raises(sv.InvalidInput):
        backend.namespace(name, 0)


# -- typed errors -------------------------------------------------------------------------------
def test_missing_namespace_raises_namespace_not_found(backend, name):
    with pytest.raises(sv.NamespaceNotFound) as info:
        backend.namespace(name)
    assert name in info.value.message and info.value.hint
    with pytest.raises(sv.NamespaceNotFound):
        backend.drop_namespace(name)


def test_existing_namespace_raises_namespace_exists(backend, name):
    backend.create_namespace(name, dim=4)
    with pytest.raises(sv.NamespaceExists):
        backend.create_namespace(name, dim=4)


def test_wrong_dimension_raises_dimension_mismatch(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2")
    with pytest.raises(sv.DimensionMismatch):
        ns.upsert([1], data(1, dim=3))
    with pytest.raises(sv.DimensionMismatch):
        ns.query(data(1, dim=5)[0])


def test_bad_filter_raises_filter_error(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2")
    ns.upsert([1], data(1))
    with pytest.raises(sv.FilterError):
        ns.query(data(1)[0], where={"a": {"$nope": 1}})


def test_k_zero_raises_invalid_input(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2")
    with pytest.raises(sv.InvalidInput) as info:
        ns.query(data(1)[0], k=0)
    assert type(info.value) is sv.InvalidInput


def test_errors_keep_message_and_hint(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2")
    with pytest.raises(sv.DimensionMismatch) as info:
        ns.upsert([1], data(1, dim=2))
    assert "dim" in info.value.message
    assert str(info.value).startswith(info.value.message)


@pytest.fixture(params=["embedded", "server"])
def readonly_backend(request, tmp_path):
    path = tmp_path / "ro"
    with sv.open(path, checkpoint_interval=0) as db:
        db.create_namespace("docs", dim=4, metric="l2").upsert([1], data(1))
    if request.param == "embedded":
        db = sv.open(path, readonly=True)
        yield db
        db.close()
        return
    server = ServerProcess(path, "--readonly")
    client = sv.connect(server.url)
    yield client
    client.close()
    assert server.stop() == 0, server.log()


def test_writes_to_a_readonly_database_raise_read_only(readonly_backend):
    ns = readonly_backend.namespace("docs")
    assert ns.count() == 1
    with pytest.raises(sv.ReadOnlyError):
        ns.upsert([2], data(1))
    with pytest.raises(sv.ReadOnlyError):
        readonly_backend.create_namespace("other", dim=4)
