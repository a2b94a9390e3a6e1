"""One suite, two backends: the embedded database (``sv.open``) and the HTTP client
(``sv.connect``, over JSON and over msgpack) of a real ``simplevector serve``
subprocess. A feature is done when it
passes on both; each test uses its own namespace names (the backends are module-scoped)."""

from __future__ import annotations

import itertools
import os
import time

import numpy as np
import pytest

import simplevector as sv
from simplevector.engine.planner import Plan

import _embedfns
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
    server = ServerProcess(path, "--embedding", "_embedfns:one", "--embedding", "_embedfns:two")
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


# -- lifecycle: snapshots, named consumers, WAL retention ---------------------------------------
def _rows_of(db, name, ids):
    return [(r.id, r.metadata, r.document) for r in db.namespace(name).get(ids)]


def test_snapshot_is_listed_verifies_and_restores_to_the_same_data(backend, name, tmp_path):
    ns = backend.create_namespace(name, dim=4, metric="l2")
    ids = list(range(20))
    ns.upsert(ids, data(20), metadata=[{"i": i} for i in ids],
              documents=[f"d{i}" for i in ids])
    info = backend.snapshot()
    assert isinstance(info, sv.SnapshotInfo) and info.lsn == backend.lsn
    counts = {n["name"]: n["count"] for n in info.namespaces}
    assert counts[name] == 20
    assert info in backend.snapshots()
    assert backend.verify_snapshot(info.path) == info
    assert backend.verify_snapshot(os.path.basename(info.path)) == info
    want = _rows_of(backend, name, ids)
    report = sv.restore(info.path, tmp_path / "restored")
    assert report.verified and report.lsn == info.lsn
    with sv.open(tmp_path / "restored", checkpoint_interval=0) as copy:
        assert copy.namespace(name).count() == 20
        assert _rows_of(copy, name, ids) == want
        got = copy.namespace(name).get(ids, include=("vectors",))
        np.testing.assert_array_equal(np.stack([r.vector for r in got]), data(20))


def test_snapshot_to_a_named_path_under_the_snapshot_directory(backend, name):
    backend.create_namespace(name, dim=4, metric="l2").upsert([1], data(1))
    root = os.path.dirname(backend.snapshot().path)
    named = backend.snapshot(os.path.join(root, f"{name}-named"))
    assert named.path == os.path.join(root, f"{name}-named")
    assert named in backend.snapshots()
    with pytest.raises(sv.TargetExists):
        backend.snapshot(named.path)


def test_prune_snapshots_removes_the_oldest_beyond_keep(backend, name):
    backend.create_namespace(name, dim=4, metric="l2").upsert([1], data(1))
    backend.snapshot()
    backend.snapshot()
    before = backend.snapshots()
    removed = backend.prune_snapshots(1)
    assert all(isinstance(i, sv.SnapshotInfo) for i in removed)
    assert removed == before[:-1] and backend.snapshots() == before[-1:]
    assert backend.prune_snapshots(1) == []


@pytest.mark.parametrize("keep", [-1, "2", 1.5, True])
def test_prune_snapshots_with_a_bad_keep_raises_invalid_input(backend, keep):
    with pytest.raises(sv.InvalidInput, match="keep"):
        backend.prune_snapshots(keep)


def test_verify_snapshot_names_the_damaged_file_and_refuses_a_non_snapshot(backend, name):
    backend.create_namespace(name, dim=4, metric="l2").upsert([1, 2], data(2))
    info = backend.snapshot()
    with pytest.raises(sv.InvalidInput, match="not a SimpleVector snapshot"):
        backend.verify_snapshot(os.path.join(os.path.dirname(info.path), f"{name}-missing"))
    with open(os.path.join(info.path, "lmdb", "data.mdb"), "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(sv.CorruptionError, match="data.mdb"):
        backend.verify_snapshot(info.path)
    backend.prune_snapshots(0)          # the damaged one must not be the newest later


def test_named_consumer_position_is_recorded_reported_and_dropped(backend, name):
    consumer = f"feed-{name}"
    ns = backend.create_namespace(name, dim=4, metric="l2")
    ns.upsert([1], data(1))
    start = backend.lsn
    ns.upsert([2, 3], data(2))
    changes = list(backend.changes(start, consumer=consumer))
    assert [(c.op, c.ids) for c in changes] == [("upsert", (2, 3))]
    rows = {c["name"]: c for c in backend.consumers()}
    assert rows[consumer]["lsn"] == start and rows[consumer]["lag"] == backend.lsn - start
    pins = backend.wal_retention()["pins"]
    assert any(p["kind"] == "consumer" and p["name"] == consumer for p in pins), pins
    list(backend.changes(backend.lsn, consumer=consumer))     # moves on
    assert {c["name"]: c for c in backend.consumers()}[consumer]["lag"] == 0
    backend.drop_consumer(consumer)
    assert consumer not in {c["name"] for c in backend.consumers()}
    with pytest.raises(sv.InvalidInput, match="not known"):
        backend.drop_consumer(consumer)


def test_consumer_changes_with_a_bad_since_raise_invalid_input(backend, name):
    with pytest.raises(sv.InvalidInput, match="since"):
        list(backend.changes(-1, consumer=f"feed-{name}"))
    with pytest.raises(sv.InvalidInput, match="past the last committed LSN"):
        list(backend.changes(backend.lsn + 100, consumer=f"feed-{name}"))
    assert f"feed-{name}" not in {c["name"] for c in backend.consumers()}


def test_wal_retention_reports_bytes_and_pins(backend):
    ret = backend.wal_retention()
    assert ret["bytes"] >= 0 and ret["segments"] >= 1 and ret["keep_bytes"] > 0
    assert "checkpoint" in {p["kind"] for p in ret["pins"]}


# -- budgets and rate limits ----------------------------------------------------------------------
def test_budgets_are_set_listed_and_removed(backend, name):
    from simplevector.ops.costs import Budget
    made = backend.set_budget(namespace=name, max_tokens=1000, period="total")
    assert made == Budget(namespace=name, max_tokens=1000, period="total")
    [row] = [b for b in backend.budgets() if b["namespace"] == name]
    assert (row["max_tokens"], row["used_tokens"], row["used_ratio"], row["hard"]) == (
        1000, 0, 0.0, True)
    backend.set_budget(namespace=name, period="total", remove=True)
    assert name not in {b["namespace"] for b in backend.budgets()}


@pytest.mark.parametrize("bad", [dict(), dict(max_tokens=-1), dict(max_tokens=5, period="week"),
                                 dict(max_cost="lots")])
def test_a_bad_budget_raises_invalid_input(backend, name, bad):
    with pytest.raises(sv.InvalidInput):
        backend.set_budget(namespace=name, **bad)


def test_rate_limits_are_set_listed_enforced_and_removed(backend, name):
    from simplevector.ops.ratelimit import RateLimit
    ns = backend.create_namespace(name, dim=4, metric="l2")
    ns.upsert([1], data(1))
    limit = backend.set_rate_limit(name, "query", 0.001, burst=1)
    assert limit == RateLimit(namespace=name, op="query", per_second=0.001, burst=1.0)
    assert limit in backend.rate_limits()
    ns.query(data(1)[0], k=1)
    with pytest.raises(sv.RateLimited) as info:
        ns.query(data(1)[0], k=1)
    assert info.value.retry_after > 0
    assert backend.set_rate_limit(name, "query", 0) is None
    assert name not in {lim.namespace for lim in backend.rate_limits()}
    ns.query(data(1)[0], k=1)


@pytest.mark.parametrize("op,per_second", [("nope", 1), ("query", -1)])
def test_a_bad_rate_limit_raises_invalid_input(backend, name, op, per_second):
    with pytest.raises(sv.InvalidInput):
        backend.set_rate_limit(name, op, per_second)


# -- costs, freshness, migrations: a database made in-process, served by each backend -------------
FRESH_N = 12


def _fn(model):
    def embed(texts):
        return np.array([[len(t), t.count("a") + 1.0, sum(map(ord, t)) % 7 + 1.0, 1.0]
                         for t in texts], dtype=np.float32)
    return sv.embeddings.Callable(embed, model=model, dim=4, price_per_1k_tokens=0.5)


@pytest.fixture(scope="module", params=["embedded", "server"])
def migrated(request, tmp_path_factory):
    """A database whose namespace ``docs`` has a migration m@1 -> m@2 ready to promote
    (made in-process: starting one needs the embedding function), a total budget and the
    expected cost figures; then opened by the backend."""
    path = tmp_path_factory.mktemp(f"migrated-{request.param}") / "db"
    with sv.open(path, checkpoint_interval=0) as db:
        ns = db.create_namespace("docs", embedding=_fn("m@1.0.0"), metric="l2")
        ns.sync([{"id": i, "text": f"text number {i} aaa"} for i in range(FRESH_N)])
        db.set_budget(namespace="docs", max_tokens=10_000, period="total")
        db.migrate("docs", embedding=_fn("m@2.0.0")).run()
        expected = {(ln.namespace, ln.model): (ln.embedding_calls, ln.texts, ln.tokens,
                                               ln.cost, ln.by_op)
                    for ln in db.cost().lines}
        budget_used = db.budgets()[0]["used_tokens"]
    if request.param == "embedded":
        db = sv.open(path, checkpoint_interval=0)
        yield db, expected, budget_used
        db.close()
        return
    server = ServerProcess(path)
    client = sv.connect(server.url)
    yield client, expected, budget_used
    client.close()
    assert server.stop() == 0, server.log()


def test_cost_report_and_budget_use_equal_the_in_process_figures(migrated):
    from simplevector.ops.costs import CostLine, CostReport
    backend, expected, budget_used = migrated
    report = backend.cost()
    assert isinstance(report, CostReport) and all(isinstance(ln, CostLine)
                                                  for ln in report.lines)
    got = {(ln.namespace, ln.model): (ln.embedding_calls, ln.texts, ln.tokens, ln.cost,
                                      ln.by_op) for ln in report.lines}
    assert got == expected
    assert report.line("docs", "m@2.0.0").tokens > 0
    assert report.tokens == sum(v[2] for v in expected.values())
    assert backend.cost("1h").tokens == backend.cost(3600).tokens == report.tokens
    [row] = backend.budgets()
    assert row["used_tokens"] == budget_used == report.tokens
    with pytest.raises(sv.InvalidInput):
        backend.cost("soon")


def test_freshness_reports_the_namespace_and_its_migration(migrated):
    from simplevector.ops.freshness import FreshnessReport
    backend, _, _ = migrated
    [rep] = backend.freshness("docs")
    assert isinstance(rep, FreshnessReport)
    assert (rep.namespace, rep.version, rep.model, rep.rows) == ("docs", 1, "m@1.0.0", FRESH_N)
    assert rep.with_provenance == FRESH_N and rep.migration is not None
    with pytest.raises(sv.NamespaceNotFound):
        backend.freshness("missing")
    assert backend.freshness("docs", max_age=0)[0].older_than_max_age == FRESH_N


@pytest.mark.parametrize("max_age", [-1, "soon", float("inf")])
def test_freshness_with_a_bad_max_age_raises_invalid_input(migrated, max_age):
    backend, _, _ = migrated
    with pytest.raises(sv.InvalidInput, match="max_age"):
        backend.freshness("docs", max_age=max_age)


def test_migration_status_plan_promote_rollback_and_abort(migrated):
    backend, _, _ = migrated
    [m] = backend.migrations("docs")
    assert (m.namespace, m.state, m.from_version, m.to_version, m.active) == (
        "docs", "ready", 1, 2, True)
    assert backend.migrations("other") == []
    m = backend.migration("docs")
    status = m.status()
    assert (status["state"], status["from_model"], status["to_model"]) == (
        "ready", "m@1.0.0", "m@2.0.0")
    assert status["rows_done"] == FRESH_N and status["remaining"] == 0
    plan = m.plan()
    assert (plan["rows"], plan["migratable"], plan["not_migratable"]) == (FRESH_N, FRESH_N, 0)
    assert m.promote()["state"] == "promoted" and m.state == "promoted"
    live = backend.namespace("docs")
    assert (live.version, live.model, live.count()) == (2, "m@2.0.0", FRESH_N)
    with pytest.raises(sv.MigrationError, match="promoted"):
        m.abort()
    assert m.rollback()["state"] == "rolled_back"
    assert backend.namespace("docs").version == 1
    assert m.abort()["state"] == "aborted"
    assert [v.version for v in next(i for i in backend.list_namespaces()
                                    if i.name == "docs").versions] == [1]
    with pytest.raises(sv.MigrationError, match="no migration in progress"):
        backend.migration("docs")
    assert backend.migrations("docs")[0].state == "aborted"


def test_a_readonly_database_lists_and_takes_snapshots_but_records_no_consumer(
        readonly_backend):
    info = readonly_backend.snapshot()
    assert info in readonly_backend.snapshots()
    assert readonly_backend.verify_snapshot(info.path) == info
    with pytest.raises(sv.ReadOnlyError):
        list(readonly_backend.changes(0, consumer="feed"))
    assert readonly_backend.consumers() == []


# -- text: sync, query_text, a migration end to end (the server's --embedding functions) ------
def _records(n, prefix="text"):
    return [{"id": i, "text": f"{prefix} number {i}", "metadata": {"i": i}} for i in range(n)]


def test_sync_embeds_only_changed_texts_and_query_text_matches_query(backend, name):
    from simplevector.ops.sync import SyncReport
    one = _embedfns.one()
    ns = backend.create_namespace(name, embedding=one, metric="l2")
    assert (ns.dim, ns.model) == (4, one.model)
    first = ns.sync(_records(10))
    assert isinstance(first, SyncReport)
    assert (first.records, first.added, first.embedded, first.model) == (10, 10, 10, one.model)
    assert first.tokens == one.count_tokens([r["text"] for r in _records(10)])
    assert first.cost == pytest.approx(first.tokens / 1000 * 0.25)
    changed = _records(10)
    changed[3]["text"] = "a new text"
    again = ns.sync(changed, mode="full")
    assert (again.unchanged, again.updated, again.embedded) == (9, 1, 1)
    hits = ns.query_text("text number 4", k=3)
    assert hits[0].id == 4 and hits[0].distance == pytest.approx(0.0, abs=1e-5)
    assert_same_hits(hits, ns.query(one.embed(["text number 4"])[0], k=3))
    batch = ns.query_text(["text number 1", "text number 2"], k=1)
    assert [row[0].id for row in batch] == [1, 2]


def test_text_calls_without_an_embedding_function_raise_invalid_input(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2", model="nofn@1.0.0")
    with pytest.raises(sv.InvalidInput, match="no embedding function"):
        ns.query_text("x")
    with pytest.raises(sv.InvalidInput, match="no embedding function"):
        ns.sync(_records(2))
    with pytest.raises(sv.ModelMismatch):
        backend.namespace(name, embedding=_embedfns.one())


def test_a_migration_runs_shadows_and_promotes_end_to_end(backend, name):
    from simplevector.ops.migration import ShadowReport
    one, two = _embedfns.one(), _embedfns.two()
    ns = backend.create_namespace(name, embedding=one, metric="l2")
    ns.sync(_records(20))
    ns.query_text("text number 1", k=2)             # a recent query text for the shadow
    m = backend.migrate(name, embedding=two)
    assert (m.state, m.from_version, m.to_version) == ("backfilling", 1, 2)
    status = m.run(batch_size=8)
    assert (status["state"], status["rows_done"], status["embedded"]) == ("ready", 20, 20)
    assert backend.namespace(name, 2).count() == 20
    ns.sync(_records(21), mode="incremental")       # dual-write reaches the new version
    assert backend.namespace(name, 2).count() == 21
    report = m.shadow(k=3, samples=5)
    assert isinstance(report, ShadowReport) and report.k == 3 and 0 <= report.overlap_at_k <= 1
    assert m.promote()["state"] == "promoted"
    live = backend.namespace(name, embedding=two)
    assert (live.version, live.model) == (2, two.model)
    hits = live.query_text("text number 5", k=1)
    assert hits[0].id == 5
    assert m.finish()["state"] == "finished"
    [line] = [ln for ln in backend.cost().lines if ln.namespace == name and
              ln.model == two.model]
    assert line.by_op["migrate"]["texts"] == 21


def test_migrating_to_the_live_model_raises_migration_error(backend, name):
    backend.create_namespace(name, embedding=_embedfns.one(), metric="l2")
    with pytest.raises(sv.MigrationError, match="already uses"):
        backend.migrate(name, embedding=_embedfns.one())


def test_compact_drops_tombstones_and_keeps_every_answer(backend, name):
    ns = backend.create_namespace(name, dim=4, metric="l2", index="Flat")
    X = data(200)
    ns.upsert(list(range(200)), X, metadata=[{"i": i} for i in range(200)])
    ns.delete(list(range(0, 200, 2)))
    before = ns.query(X[1], k=10, include=("metadata",))
    report = ns.compact()
    assert isinstance(report, sv.CompactReport)
    (entry,) = report.versions
    assert isinstance(entry, sv.CompactedVersion)
    assert (entry.namespace, entry.tombstones_removed, entry.rows) == (name, 100, 100)
    assert report.tombstones_removed == 100 and report.automatic is False
    assert ns.count() == 100
    assert ns.query(X[1], k=10, include=("metadata",)) == before
    again = backend.compact(name)
    assert again.versions[0].tombstones_removed == 0 and again.versions[0].lsn == 0
    status = backend.compaction_status()
    assert status["runs"] >= 1 and status["ratio"] == sv.DEFAULT_COMPACT_RATIO
    assert status["last"]["ok"] is True


def test_compact_bad_input_raises_typed_errors(backend, name):
    backend.create_namespace(name, dim=4, metric="l2")
    with pytest.raises(sv.NamespaceNotFound):
        backend.compact(f"{name}-missing")
    with pytest.raises(sv.VersionNotFound):
        backend.compact(name, 7)
    with pytest.raises(sv.InvalidInput, match="version"):
        backend.compact(version=1)


def test_alerts_events_and_recall_probe(backend, name):
    from simplevector.ops.alerts import Alert
    from simplevector.ops.probe import ProbeResult
    ns = backend.create_namespace(name, dim=4, metric="l2", index="Flat")
    X = data(300)
    ns.upsert(list(range(300)), X, metadata=[{"g": i % 3} for i in range(300)])
    found = backend.alerts()
    assert found and all(isinstance(a, Alert) for a in found)
    assert {a.state for a in found} <= {"firing", "ok", "no_data"}
    events = backend.alert_events()
    assert isinstance(events, list)
    assert backend.alert_events(since=time.time() + 3600) == []
    result = backend.probe_recall(name, samples=20, k=5)
    assert isinstance(result, ProbeResult)
    assert (result.namespace, result.samples, result.k, result.recall) == (name, 20, 5, 1.0)
    filtered = backend.probe_recall(name, samples=20, k=5, where={"g": 1})
    assert filtered.where == {"g": 1} and filtered.recall == 1.0
    with pytest.raises(sv.NamespaceNotFound):
        backend.probe_recall(f"{name}-missing", samples=5)
