"""sv.cluster on a local Ray (num_cpus=2): sharded top-k equals one database holding the
same rows, IVF-PQ recall, the embedded errors, a SIGKILLed shard during concurrent writes,
cluster snapshots during writes and their restore, DDL all-or-nothing, health and metrics.

Ray is started once for this module (loopback only, no dashboard) and shut down after it;
the teardown checks that no shard actor process outlives it. Clusters are made once per
shard count and shared: each test works in namespaces of its own.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import simplevector as sv
from simplevector.cluster_db import ShardInfo, shard_of
from simplevector.ops.cluster_health import ClusterFinding

from _numeric import assert_same_hits
# the conformance suite's tests that a cluster must pass as written (not: versions and
# promote, the change feed, a single Plan from explain, one index_info dict, db.lsn)
from test_conformance import (  # noqa: F401
    test_bad_filter_raises_filter_error as test_conformance_bad_filter,
    test_create_list_and_drop_namespace as test_conformance_create_list_and_drop,
    test_delete_by_ids_and_by_where as test_conformance_delete_by_ids_and_by_where,
    test_errors_keep_message_and_hint as test_conformance_errors_keep_message_and_hint,
    test_existing_namespace_raises_namespace_exists as test_conformance_namespace_exists,
    test_k_zero_raises_invalid_input as test_conformance_k_zero,
    test_missing_namespace_raises_namespace_not_found as test_conformance_namespace_not_found,
    test_query_single_and_batch_match_exact_reference as test_conformance_query_exact,
    test_query_with_where_and_include as test_conformance_query_where_include,
    test_upsert_replaces_a_row as test_conformance_upsert_replaces_a_row,
    test_version_zero_raises_invalid_input as test_conformance_version_zero,
    test_wrong_dimension_raises_dimension_mismatch as test_conformance_dimension_mismatch)

_names = itertools.count()
_PIDS: set = set()


def _fresh(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


def _ray_children() -> set:
    """Live (not zombie) child processes of this one that run Ray's own programs."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        is_ray = b"site-packages/ray/" in cmdline or cmdline.startswith(b"ray::")
        if int(stat[1]) == os.getpid() and stat[0] != "Z" and is_ray:
            out.add(int(entry))
    return out


def _cmdlines(pids) -> dict:
    out = {}
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                out[pid] = f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
        except OSError:
            out[pid] = "(gone)"
    return out


@pytest.fixture(scope="module")
def ray_local():
    before = _ray_children()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1")
    started = _ray_children() - before
    assert started, "ray.init started no local Ray processes"
    yield
    ray.shutdown()
    deadline = time.monotonic() + 60            # a loaded 2-core machine exits slowly
    alive = set(_PIDS) | started
    while alive and time.monotonic() < deadline:
        for pid in list(alive):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive.discard(pid)
                continue
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        alive.discard(pid)          # exited, not yet reaped
            except OSError:
                alive.discard(pid)
        time.sleep(0.2)
    assert not alive, f"Ray processes outlived ray.shutdown(): {_cmdlines(alive)}"


@pytest.fixture(scope="module")
def clusters(ray_local, tmp_path_factory):
    """shards -> an open ClusterDatabase (made on first use, closed after the module)."""
    root = tmp_path_factory.mktemp("clusters")
    made: dict = {}

    def get(shards: int) -> sv.ClusterDatabase:
        if shards not in made:
            made[shards] = sv.cluster(root / f"c{shards}", shards=shards,
                                      checkpoint_interval=0)
            _PIDS.update(s.pid for s in made[shards].shards())
        return made[shards]
    yield get
    for cl in made.values():
        cl.close()


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    db = sv.open(tmp_path_factory.mktemp("single") / "db", checkpoint_interval=0)
    yield db
    db.close()


@pytest.fixture
def backend(clusters):
    """The conformance suite's backend: a 3-shard cluster."""
    return clusters(3)


@pytest.fixture
def name():
    return _fresh("conf")


def _tie_key(extid):
    return (0, extid, "") if isinstance(extid, int) else (1, 0, extid)


def _rows(rng, n, dim, dupes):
    X = rng.standard_normal((n, dim)).astype(np.float32)
    for a, b in dupes:                       # exact ties: identical vectors, other ids
        X[b % n] = X[a % n]
    ids = [i if i % 2 else f"id-{i}" for i in range(n)]
    metas = [{"g": i % 3, "t": "even" if i % 2 == 0 else "odd"} for i in range(n)]
    return ids, X, metas


# ------------------------------------------------------------------- exact sharded top-k

@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(shards=st.integers(1, 4), n=st.integers(1, 120), dim=st.integers(2, 6),
       metric=st.sampled_from(["l2", "cosine", "ip"]), k=st.integers(1, 25),
       seed=st.integers(0, 2**16),
       dupes=st.lists(st.tuples(st.integers(0, 119), st.integers(0, 119)), max_size=12))
def test_flat_sharded_topk_equals_one_database_plain_and_filtered_ties_included(
        clusters, single, shards, n, dim, metric, k, seed, dupes):
    rng = np.random.default_rng(seed)
    ids, X, metas = _rows(rng, n, dim, dupes)
    name = _fresh("prop")
    cl = clusters(shards)
    cns = cl.create_namespace(name, dim=dim, metric=metric, index="Flat")
    sns = single.create_namespace(name, dim=dim, metric=metric, index="Flat")
    try:
        cns.upsert(ids, X, metadata=metas)
        sns.upsert(ids, X, metadata=metas)
        assert cns.count() == sns.count() == n
        Q = np.concatenate([X[:3], rng.standard_normal((3, dim)).astype(np.float32)])
        for where in (None, {"g": 1}, {"$or": [{"g": 0}, {"t": "odd"}]}, {"g": 7}):
            got = cns.query(Q, k=k, where=where)
            want = sns.query(Q, k=k, where=where)
            assert len(got) == len(Q)
            for g, w in zip(got, want):
                assert_same_hits(g, w)
                assert [h.metadata for h in g] == [metas[ids.index(h.id)] for h in g]
                keys = [(h.distance, _tie_key(h.id)) for h in g]
                assert keys == sorted(keys), "merge order is not (distance, id)"
            assert cns.query(Q, k=k, where=where) == got     # deterministic
        one = cns.query(Q[0], k=k)                            # one vector: list[Hit]
        assert isinstance(one, list) and all(isinstance(h, sv.Hit) for h in one)
    finally:
        cl.drop_namespace(name)
        single.drop_namespace(name)


def _clustered(rng, n, dim, centers=24):
    C = rng.standard_normal((centers, dim)).astype(np.float32) * 4
    return (C[rng.integers(0, centers, n)]
            + rng.standard_normal((n, dim)).astype(np.float32)).astype(np.float32)


def _recall(hits, truth, k):
    return np.mean([len({h.id for h in h_} & set(t[:k].tolist())) / k
                    for h_, t in zip(hits, truth)])


def test_ivfpq_recall_against_exact_is_within_001_of_one_database(clusters, single):
    rng = np.random.default_rng(7)
    n, dim, k = 6000, 16, 10
    X = _clustered(rng, n, dim)
    Q = _clustered(rng, 100, dim)
    truth = np.argsort(((Q[:, None, :].astype(np.float64) - X[None]) ** 2).sum(-1), 1)[:, :k]
    spec = "IVF32,PQ8x8"
    name = _fresh("ivf")
    cl = clusters(2)
    cns = cl.create_namespace(name, dim=dim, metric="l2", index=spec)
    sns = single.create_namespace(name, dim=dim, metric="l2", index=spec)
    try:
        ids = list(range(n))
        cns.upsert(ids, X)
        sns.upsert(ids, X)
        infos = cns.build_index()
        assert [i["active"] for i in infos] == [spec, spec]
        assert sns.build_index()["active"] == spec
        r_single = _recall(sns.query(Q, k=k, nprobe=4), truth, k)
        r_cluster = _recall(cns.query(Q, k=k, nprobe=4), truth, k)
        assert r_single < 1.0               # PQ without refine loses some recall
        assert r_cluster >= r_single - 0.01, (r_cluster, r_single)
        exact = cns.query(Q, k=k, exact=True)
        assert _recall(exact, truth, k) >= 0.99
    finally:
        cl.drop_namespace(name)
        single.drop_namespace(name)


# -------------------------------------------------------------- routing, API, errors

def test_routing_is_a_stable_hash_of_the_typed_id(clusters):
    # fixed values: the hash must never depend on the process (PYTHONHASHSEED) or version
    assert [shard_of(i, 4) for i in (0, 1, 2, "0", "a", "b")] == \
        [shard_of(i, 4) for i in (0, 1, 2, "0", "a", "b")]
    code = ("from simplevector.cluster_db import shard_of;"
            "print([shard_of(i, 4) for i in (0, 1, 2, '0', 'a', 'b', 10**12)])")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
            for seed in ("1", "2")}
    assert len(outs) == 1
    assert shard_of(1, 4) != shard_of("1", 4) or shard_of(2, 4) != shard_of("2", 4)
    cl = clusters(3)
    assert isinstance(cl, sv.ClusterDatabase) and cl.shard_count == 3
    name = _fresh("route")
    ns = cl.create_namespace(name, dim=2, metric="l2")
    ids = list(range(300)) + [f"k{i}" for i in range(300)]
    ns.upsert(ids, np.ones((600, 2), np.float32))
    want = np.bincount([shard_of(i, 3) for i in ids], minlength=3)
    infos = cl.shards()
    assert [s.namespaces[name] for s in infos] == want.tolist()
    assert all(isinstance(s, ShardInfo) and s.status == "up" and s.pid > 0 and s.node
               and s.lsn >= 1 and s.path.endswith(f"shard-{s.index}") for s in infos)
    cl.drop_namespace(name)


def test_upsert_get_delete_count_have_the_embedded_return_types(clusters):
    cl = clusters(3)
    name = _fresh("api")
    ns = cl.create_namespace(name, dim=3, metric="l2")
    X = np.arange(30, dtype=np.float32).reshape(10, 3)
    ack = ns.upsert(list(range(10)), X, metadata=[{"i": i} for i in range(10)],
                    documents=[f"doc {i}" for i in range(10)])
    assert isinstance(ack, int) and int(ack) == max(ack.lsns.values())
    assert set(ack.lsns) == {shard_of(i, 3) for i in range(10)}
    rec = ns.get(4)
    assert isinstance(rec, sv.Record) and rec.metadata == {"i": 4} and rec.document == "doc 4"
    got = ns.get([9, 123, 0], include=("vectors",))
    assert got[1] is None and np.array_equal(got[0].vector, X[9]) and got[2].id == 0
    assert ns.delete(ids=[1, 2, 777]) == 2
    assert ns.delete(where={"i": {"$gte": 8}}) == 2
    assert ns.count() == 6
    infos = {i.name: i for i in cl.list_namespaces()}
    assert infos[name].versions[0].count == 6 and infos[name].live_version == 1
    assert cl.namespace(name).dim == 3
    hits, plans = ns.query(X[0], k=2, explain=True)
    assert hits[0].id == 0 and len(plans) == 3
    cl.drop_namespace(name)
    with pytest.raises(sv.NamespaceNotFound):
        cl.namespace(name)


def _bad_calls(dim):
    good = np.ones((2, dim), np.float32)
    nan = good.copy()
    nan[1, 0] = np.nan
    return [
        ("upsert", dict(ids=["a", "b"], vectors=np.ones((2, dim + 1), np.float32))),
        ("upsert", dict(ids=["a", "b"], vectors=nan)),
        ("upsert", dict(ids=["a", "a"], vectors=good)),
        ("upsert", dict(ids=["a", True], vectors=good)),
        ("upsert", dict(ids=["a"], vectors=good)),
        ("upsert", dict(ids=["a", "b"], vectors=good, metadata=[{"x": 1}])),
        ("upsert", dict(ids=["a", "b"], vectors=good, documents=["x" * (2 << 20), "y"])),
        ("query", dict(vectors=np.ones(dim + 2, np.float32))),
        ("query", dict(vectors=np.ones(dim, np.float32), k=0)),
        ("query", dict(vectors=np.ones(dim, np.float32), where={"$bogus": 1})),
        ("query", dict(vectors=np.ones(dim, np.float32), include=("nope",))),
        ("query", dict(vectors=np.ones(dim, np.float32), nprobe=0)),
        ("delete", dict()),
        ("delete", dict(where={"x": {"$gt": [1]}})),
        ("get", dict(ids=[])),
    ]


def test_bad_inputs_raise_the_embedded_error_and_write_nothing(clusters, single):
    cl = clusters(3)
    name = _fresh("err")
    dim = 4
    cns = cl.create_namespace(name, dim=dim, metric="cosine")
    sns = single.create_namespace(name, dim=dim, metric="cosine")
    seed_rows = np.eye(dim, dtype=np.float32)
    cns.upsert(list(range(dim)), seed_rows)
    sns.upsert(list(range(dim)), seed_rows)
    try:
        for method, kwargs in _bad_calls(dim):
            with pytest.raises(sv.SimpleVectorError) as embedded:
                getattr(sns, method)(**kwargs)
            with pytest.raises(type(embedded.value)) as clustered:
                getattr(cns, method)(**kwargs)
            assert type(clustered.value) is type(embedded.value), (method, kwargs)
            assert str(clustered.value) == str(embedded.value), (method, kwargs)
        assert cns.count() == dim
        zero = np.zeros((2, dim), np.float32)    # cosine rejects a zero row, on any shard
        with pytest.raises(sv.InvalidInput):
            cns.upsert([100, "z"], zero)
        assert cns.count() == dim
        with pytest.raises(sv.NamespaceExists):
            cl.create_namespace(name, dim=dim)
        with pytest.raises(sv.NamespaceNotFound):
            cl.namespace("missing")
        with pytest.raises(sv.NamespaceNotFound):
            cl.drop_namespace("missing")
        with pytest.raises(sv.InvalidInput):
            cl.create_namespace("bad metric", dim=dim, metric="manhattan")
        assert "bad metric" not in {n for s in cl.shards() for n in s.namespaces}
    finally:
        cl.drop_namespace(name)
        single.drop_namespace(name)


def test_another_shard_count_for_a_root_is_a_typed_error(clusters, tmp_path):
    cl = clusters(2)
    with pytest.raises(sv.ShardCountMismatch, match="has 2 shards; opened with shards=3"):
        sv.cluster(cl.root, shards=3)
    with pytest.raises(sv.InvalidInput, match="shards=0"):
        sv.cluster(tmp_path / "x", shards=0)
    assert not (tmp_path / "x").exists()


def test_shard_options_reach_each_shard_actor_and_are_checked(ray_local, tmp_path):
    with pytest.raises(sv.InvalidInput, match="shard_options"):
        sv.cluster(tmp_path / "bad", shards=2, shard_options=[{}])
    names = [f"sv-test-shard-{i}" for i in range(2)]
    with sv.cluster(tmp_path / "c", shards=2, shard_options=[{"name": n} for n in names],
                    checkpoint_interval=0) as cl:
        _PIDS.update(s.pid for s in cl.shards())
        for i, n in enumerate(names):
            assert ray.get(ray.get_actor(n).ping.remote()) == i


def test_interrupted_ddl_stays_invisible_and_a_retry_completes_it(clusters):
    cl = clusters(3)
    name = _fresh("ddl")
    # a create that reached shard 1 only (as when the others failed mid-DDL)
    ray.get(cl.actor(1).create_namespace.remote(name, 2, "l2", None, "auto"))
    assert name not in [n.name for n in cl.list_namespaces()]
    with pytest.raises(sv.NamespaceNotFound, match=r"shards \[1\]"):
        cl.namespace(name)
    ns = cl.create_namespace(name, dim=2, metric="l2")           # the retry completes it
    ns.upsert(list(range(50)), np.ones((50, 2), np.float32))
    assert cl.namespace(name).count() == 50
    # a drop that reached shard 0 only: invisible, and drop_namespace again finishes it
    ray.get(cl.actor(0).drop_namespace.remote(name))
    with pytest.raises(sv.NamespaceNotFound):
        cl.namespace(name)
    cl.drop_namespace(name)
    assert all(name not in s.namespaces for s in cl.shards())
    with pytest.raises(sv.NamespaceNotFound):
        cl.drop_namespace(name)


def test_health_and_metrics_cover_every_shard(clusters):
    cl = clusters(3)
    name = _fresh("ops")
    ns = cl.create_namespace(name, dim=2, metric="l2")
    ns.upsert(list(range(3000)), np.random.default_rng(1).standard_normal((3000, 2)))
    ns.query(np.ones(2, np.float32), k=3)
    report = cl.health()
    assert {f.shard for f in report.findings if f.shard is not None} == {0, 1, 2}
    assert all(isinstance(f, ClusterFinding) for f in report.findings)
    down = report.find("shard_down")
    assert [f.severity for f in down] == ["ok"]
    balance = report.find("shard_balance")[0]
    assert balance.severity == "ok" and 1.0 <= balance.value < 1.2
    assert "README.md#scaling-past-one-machine" == balance.runbook
    readme = Path(__file__).parent.parent / "README.md"
    assert "## Scaling past one machine" in readme.read_text()
    text = cl.metrics_text()
    for i in range(3):
        assert f'simplevector_cluster_shard_up{{shard="{i}"}} 1.0' in text
        assert f'simplevector_operations_total{{shard="{i}",' in text
    helps = [line for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps))
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(line.split("{")[1].startswith('shard="') for line in samples if "{" in line)
    cl.drop_namespace(name)


# ----------------------------------------------------------------- a shard dies (kill -9)

def _wait_up(cl, index, old_pid, seconds=60.0) -> ShardInfo:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = cl.shards()[index]
        if info.status == "up" and info.pid != old_pid:
            return info
        time.sleep(0.2)
    raise AssertionError(f"shard {index} did not come back in {seconds}s")


def test_sigkill_of_a_shard_during_writes_loses_no_acknowledged_write(clusters):
    cl = clusters(2)
    name = _fresh("kill")
    dim = 4
    ns = cl.create_namespace(name, dim=dim, metric="l2")
    victim = 1
    acked, failures, stop = [], [], threading.Event()
    lock = threading.Lock()

    def writer(w):
        rng = np.random.default_rng(w)
        for b in itertools.count():
            if stop.is_set():
                return
            ids = [f"w{w}-{b}-{j}" for j in range(8)]
            try:
                ns.upsert(ids, rng.standard_normal((8, dim)).astype(np.float32))
                with lock:
                    acked.extend(ids)
            except sv.ShardUnavailable as e:
                with lock:
                    failures.append((ids, e))
                    acked.extend(e.applied_ids)     # durable on the shards that answered
                time.sleep(0.05)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while len(acked) < 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        old = cl.shards()[victim]
        _PIDS.add(old.pid)
        os.kill(old.pid, signal.SIGKILL)
        seen_down = seen_partial = False
        while not (seen_down and seen_partial):
            try:
                ns.query(np.zeros(dim, np.float32), k=5)
            except sv.ShardUnavailable as e:
                assert e.shard == victim and f"shard {victim}" in str(e)
                seen_down = True
            res = ns.query(np.zeros(dim, np.float32), k=5, partial=True)
            if res.partial:
                assert res.missing_shards == (victim,)
                assert all(shard_of(h.id, 2) != victim for h in res)
                seen_partial = True
            if cl.shards()[victim].status == "up":
                break
        assert seen_down or seen_partial, "the outage was never visible to a query"
        back = _wait_up(cl, victim, old.pid)
        _PIDS.add(back.pid)
        assert back.restarted is True
        time.sleep(0.5)                              # writes resume on the new actor
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures, "no write saw the dead shard"
    for ids, e in failures:
        assert e.shard == victim
        if e.applied_ids or e.unknown_ids:          # failed after the parts were sent
            assert sorted(e.applied_ids + e.unknown_ids) == sorted(ids)
            assert all(shard_of(i, 2) != victim for i in e.applied_ids)
            assert all(shard_of(i, 2) == victim for i in e.unknown_ids)
    with lock:
        want = list(acked)
    got = ns.get(want)
    missing = [i for i, r in zip(want, got) if r is None]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"
    assert ns.count() >= len(set(want))
    report = cl.health()
    assert report.find("shard_down")[0].severity == "ok"
    cl.drop_namespace(name)


def test_a_shard_that_stays_down_fails_writes_ddl_and_queries_without_half_applying(
        ray_local, tmp_path):
    cl = sv.cluster(tmp_path / "c", shards=2, checkpoint_interval=0)
    try:
        _PIDS.update(s.pid for s in cl.shards())
        ns = cl.create_namespace("docs", dim=2, metric="l2")
        ids = list(range(40))
        ns.upsert(ids[:10], np.ones((10, 2), np.float32))
        ray.kill(cl.actor(0), no_restart=True)        # down for good (restarts exhausted)
        deadline = time.monotonic() + 30              # ray.kill is asynchronous
        while cl.shards()[0].status != "down" and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(sv.ShardUnavailable) as err:   # the pre-check finds shard 0 down
            ns.upsert(ids, np.ones((40, 2), np.float32))
        assert err.value.shard == 0 and err.value.applied_ids == ()
        alive = [i for i in ids if shard_of(i, 2) == 1]
        assert ns.query(np.ones(2, np.float32), k=40, partial=True).missing_shards == (0,)
        hits = ns.query(np.ones(2, np.float32), k=40, partial=True)
        assert isinstance(hits, sv.PartialResult) and hits.partial
        assert {h.id for h in hits} == set(alive) & set(ids[:10])
        with pytest.raises(sv.ShardUnavailable, match="shard 0"):
            ns.query(np.ones(2, np.float32), k=3)
        with pytest.raises(sv.ShardUnavailable):
            ns.count()
        with pytest.raises(sv.ShardUnavailable):
            ns.get(ids)
        with pytest.raises(sv.ShardUnavailable):      # DDL needs every shard
            cl.create_namespace("other", dim=2)
        with pytest.raises(sv.ShardUnavailable):
            cl.drop_namespace("docs")
        with pytest.raises(sv.ShardUnavailable):
            cl.snapshot(tmp_path / "snap")
        assert not (tmp_path / "snap").exists()
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
        assert ray.get(cl.actor(1).catalog.remote()).keys() == {"docs"}
        assert ray.get(cl.actor(1).count.remote("docs")) == len(set(alive) & set(ids[:10]))
        infos = cl.shards()
        assert [s.status for s in infos] == ["down", "up"] and infos[0].pid is None
        report = cl.health()
        assert report.status == "critical"
        assert [(f.severity, f.shard) for f in report.find("shard_down")] == [("critical", 0)]
        text = cl.metrics_text()
        assert 'simplevector_cluster_shard_up{shard="0"} 0.0' in text
        assert 'shard="1"' in text and 'simplevector_operations_total{shard="0"' not in text
    finally:
        cl.close()


# ---------------------------------------------------------- snapshots, restore, reopen

def test_cluster_snapshot_during_writes_restores_the_data_at_its_lsns(clusters, tmp_path):
    cl = clusters(3)
    name = _fresh("snap")
    dim = 3
    ns = cl.create_namespace(name, dim=dim, metric="l2")
    acks, stop = [], threading.Event()

    def writer():
        for b in itertools.count():
            if stop.is_set():
                return
            ids = [f"b{b}-{j}" for j in range(6)]
            vec = np.full((6, dim), b, np.float32) + np.arange(6, dtype=np.float32)[:, None]
            acks.append((ids, ns.upsert(ids, vec).lsns))

    t = threading.Thread(target=writer)
    t.start()
    try:
        while len(acks) < 20:
            time.sleep(0.02)
        info = cl.snapshot(tmp_path / "snap")
        time.sleep(0.2)
    finally:
        stop.set()
        t.join()
    assert len(info.shard_lsns) == 3 and info.lsn == sum(info.shard_lsns)
    assert [s.lsn for s in info.shards] == list(info.shard_lsns)
    expect = {s: set() for s in range(3)}
    later = set()
    for ids, lsns in acks:
        for extid in ids:
            s = shard_of(extid, 3)
            (expect[s] if lsns[s] <= info.shard_lsns[s] else later).add(extid)
    assert later, "the snapshot did not overlap the writes"
    report = sv.restore_cluster(info.path, tmp_path / "restored")
    assert report.verified and report.shard_lsns == info.shard_lsns
    with pytest.raises(sv.TargetExists):
        sv.restore_cluster(info.path, tmp_path / "restored")
    restored = sv.cluster(tmp_path / "restored", shards=3, checkpoint_interval=0)
    try:
        _PIDS.update(s.pid for s in restored.shards())
        rns = restored.namespace(name)
        assert rns.count() == sum(len(v) for v in expect.values())
        every = sorted(set().union(*expect.values()) | later)
        got = dict(zip(every, rns.get(every, include=("vectors",))))
        assert {i for i, r in got.items() if r is not None} == set().union(*expect.values())
        b = next(iter(expect[0] | expect[1] | expect[2]))
        batch, j = b[1:].split("-")
        assert np.array_equal(got[b].vector, np.full(dim, int(batch) + int(j), np.float32))
        assert [s.lsn for s in restored.shards()] == list(info.shard_lsns)
    finally:
        restored.close()


def test_a_damaged_cluster_snapshot_restores_nothing(clusters, tmp_path):
    cl = clusters(2)
    name = _fresh("dmg")
    ns = cl.create_namespace(name, dim=2, metric="l2")
    ns.upsert(list(range(20)), np.ones((20, 2), np.float32))
    info = cl.snapshot(tmp_path / "snap")
    with pytest.raises(sv.TargetExists):
        cl.snapshot(tmp_path / "snap")
    data = tmp_path / "snap" / "shard-1" / "lmdb" / "data.mdb"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(sv.CorruptionError):
        sv.restore_cluster(info.path, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if "restore-tmp" in p.name]
    cl.drop_namespace(name)


def test_reopening_a_root_finds_the_same_data_and_close_is_final(ray_local, tmp_path):
    root = tmp_path / "c"
    cl = sv.cluster(root, shards=2, checkpoint_interval=0)
    _PIDS.update(s.pid for s in cl.shards())
    ns = cl.create_namespace("docs", dim=2, metric="l2")
    ns.upsert(list(range(100)), np.random.default_rng(3).standard_normal((100, 2)))
    before = ns.query(np.zeros(2, np.float32), k=5)
    cl.close()
    cl.close()                                        # idempotent
    with pytest.raises(sv.ClosedError):
        ns.count()
    with pytest.raises(sv.ClosedError):
        cl.shards()
    with sv.cluster(root, shards=2) as again:
        _PIDS.update(s.pid for s in again.shards())
        assert again.namespace("docs").count() == 100
        assert again.namespace("docs").query(np.zeros(2, np.float32), k=5) == before


def test_import_simplevector_does_not_import_ray():
    code = "import sys, simplevector as sv; sv.ShardUnavailable; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
    assert issubclass(sv.ShardUnavailable, sv.SimpleVectorError)
    assert sv.ShardUnavailable.http_status == 503
    assert sv.error_class_for_code("shard_unavailable") is sv.ShardUnavailable
    assert sv.error_class_for_code("shard_count_mismatch") is sv.ShardCountMismatch


def test_the_readme_example_runs_as_written(ray_local, tmp_path, monkeypatch):
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text.split("## Scaling past one machine", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "cluster-data" / "cluster.json").exists()
    assert sorted(p.name for p in (tmp_path / "cluster-data").iterdir()) == \
        ["cluster.json", "shard-0", "shard-1"]


def test_bench_cluster_runs_end_to_end_at_a_tiny_size(ray_local, tmp_path):
    """bench/cluster.py on the module's Ray: every figure and ratio is written (no speed
    is asserted; the figures live in the README with the command and CPU)."""
    sys.path.insert(0, str(Path(__file__).parent.parent))
    from bench import cluster as bench_cluster
    out = tmp_path / "cluster.json"
    result = bench_cluster.main(["--n", "400", "--dim", "8", "--batch", "100", "--queries",
                                 "8", "--clients", "2", "--shards", "1,2", "--dir",
                                 str(tmp_path), "--out", str(out), "--quiet"])
    assert set(result["runs"]) == {"embedded", "embedded_1thread", "cluster_1", "cluster_2"}
    for run in result["runs"].values():
        assert run["ingest_rows_per_s"] > 0 and run["qps_clients"] > 0 and run["p50_ms"] > 0
    assert sum(result["runs"]["cluster_2"]["rows_per_shard"]) == 400
    assert set(result["ratios_over_embedded_1thread"]) == {"cluster_1", "cluster_2"}
    assert "p50_ms_added" in result["coordinator_overhead"]
    assert {"cpu_model", "cores"} <= set(result["machine"]) and result["versions"]["ray"]
    assert out.exists() and ray.is_initialized()       # the caller's Ray is left running
