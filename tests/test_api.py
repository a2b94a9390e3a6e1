"""The embedded API: namespaces and versions, ids, upsert/get/delete/query semantics,
and concurrent use from threads."""

import threading

import numpy as np
import pytest

import simplevector as sv


def rows(n, dim, seed):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


# -- namespaces and versions ----------------------------------------------------------------
def test_create_list_and_drop_namespaces(db):
    db.create_namespace("b", dim=3, metric="l2")
    db.create_namespace("a", dim=2)
    db.namespace("a").upsert(["x"], [[1, 0]])
    infos = {i.name: i for i in db.list_namespaces()}
    assert set(infos) == {"a", "b"}
    assert infos["a"].live_version == 1
    assert [(v.version, v.dim, v.metric, v.count, v.live) for v in infos["a"].versions] == \
        [(1, 2, "cosine", 1, True)]
    db.drop_namespace("a")
    assert [i.name for i in db.list_namespaces()] == ["b"]
    with pytest.raises(sv.NamespaceNotFound):
        db.namespace("a")


def test_dropped_namespace_name_can_be_created_again_empty(db):
    db.create_namespace("a", dim=2).upsert(["x"], [[1, 0]])
    db.drop_namespace("a")
    ns = db.create_namespace("a", dim=5, metric="ip")
    assert (ns.dim, ns.metric, ns.count()) == (5, "ip", 0)
    assert ns.get(["x"]) == [None]


def test_handle_attributes_describe_the_version(db):
    ns = db.create_namespace("docs", dim=3, metric="L2", model="enc@1.0.0")
    got = (ns.name, ns.version, ns.dim, ns.metric, ns.model)
    assert got == ("docs", 1, 3, "l2", "enc@1.0.0")


def test_create_version_inherits_dim_metric_and_model(db):
    db.create_namespace("docs", dim=3, metric="ip", model="enc@1.0.0")
    v2 = db.create_version("docs")
    assert (v2.version, v2.dim, v2.metric, v2.model) == (2, 3, "ip", "enc@1.0.0")
    assert db.namespace("docs").version == 1          # not live until promoted


def test_create_version_overrides_what_is_given(db):
    db.create_namespace("docs", dim=3, metric="ip", model="enc@1.0.0")
    v2 = db.create_version("docs", dim=5, model="enc@2.0.0")
    assert (v2.dim, v2.metric, v2.model) == (5, "ip", "enc@2.0.0")
    v3 = db.create_version("docs", metric="l2")
    assert (v3.version, v3.dim, v3.metric, v3.model) == (3, 3, "l2", "enc@1.0.0")


def test_promote_repoints_the_alias_and_an_alias_handle_follows(db):
    alias = db.create_namespace("docs", dim=2, metric="l2")
    alias.upsert(["old"], [[0, 0]])
    v2 = db.create_version("docs")
    v2.upsert(["new"], [[0, 0]])
    pinned = db.namespace("docs", version=1)
    assert alias.query([0, 0], k=5)[0].id == "old"
    db.promote("docs", 2)
    assert alias.version == 2
    assert [h.id for h in alias.query([0, 0], k=5)] == ["new"]
    assert [h.id for h in db.namespace("docs").query([0, 0], k=5)] == ["new"]
    assert [h.id for h in pinned.query([0, 0], k=5)] == ["old"]
    info = db.list_namespaces()[0]
    assert info.live_version == 2
    assert [v.live for v in info.versions] == [False, True]


def test_queries_during_promotions_see_one_version_or_the_other(db):
    alias = db.create_namespace("docs", dim=4, metric="l2")
    alias.upsert([f"old{i}" for i in range(20)], rows(20, 4, seed=1))
    db.create_version("docs").upsert([f"new{i}" for i in range(20)], rows(20, 4, seed=2))
    seen, errors, done = set(), [], threading.Event()

    def read():
        try:
            while not done.is_set():
                prefixes = {h.id[:3] for h in alias.query(np.zeros(4), k=10)}
                assert len(prefixes) == 1, f"a query mixed versions: {prefixes}"
                seen.update(prefixes)
        except Exception as e:
            errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            db.promote("docs", 2 if i % 2 == 0 else 1)
    finally:
        done.set()
        reader.join(60)
    assert errors == []
    assert seen <= {"old", "new"}


def test_promote_back_is_a_rollback(db):
    db.create_namespace("docs", dim=2).upsert(["one"], [[1, 0]])
    db.create_version("docs").upsert(["two"], [[1, 0]])
    db.promote("docs", 2)
    db.promote("docs", 1)
    assert db.namespace("docs").get(["one", "two"])[1] is None
    assert db.namespace("docs").version == 1


def test_promotion_survives_reopen(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        db.create_namespace("docs", dim=2)
        db.create_version("docs", dim=3)
        db.promote("docs", 2)
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        assert (db.namespace("docs").version, db.namespace("docs").dim) == (2, 3)


def test_versions_are_isolated(db):
    v1 = db.create_namespace("docs", dim=2, metric="l2")
    v2 = db.create_version("docs")
    v1.upsert(["a", "b"], [[0, 0], [1, 1]], metadata=[{"v": 1}, {"v": 1}])
    v2.upsert(["a"], [[5, 5]], metadata=[{"v": 2}])
    v2.delete(["b"])                                   # not in v2: nothing happens to v1
    assert (v1.count(), v2.count()) == (2, 1)
    assert v1.get("a", include=("metadata", "vectors")).vector.tolist() == [0, 0]
    assert v2.get("a").metadata == {"v": 2}
    assert v1.delete(where={"v": 1}) == 2
    assert v2.count() == 1


def test_dropping_a_non_live_version_keeps_the_rest(db):
    db.create_namespace("docs", dim=2).upsert(["a"], [[1, 0]])
    db.create_version("docs").upsert(["b"], [[1, 0]])
    db.drop_namespace("docs", version=2)
    assert [v.version for v in db.list_namespaces()[0].versions] == [1]
    assert db.namespace("docs").count() == 1
    with pytest.raises(sv.NamespaceNotFound):
        db.namespace("docs", version=2)
    assert db.create_version("docs").version == 2      # numbering after the highest left


# -- ids -------------------------------------------------------------------------------------
def test_int_and_str_ids_are_different_rows_and_keep_their_type(db):
    ns = db.create_namespace("ids", dim=2, metric="l2")
    ns.upsert([1, "1"], [[0, 0], [10, 10]], metadata=[{"t": "int"}, {"t": "str"}])
    assert ns.count() == 2
    a, b = ns.get([1, "1"])
    assert (a.id, type(a.id), a.metadata) == (1, int, {"t": "int"})
    assert (b.id, type(b.id), b.metadata) == ("1", str, {"t": "str"})
    hits = ns.query([0, 0], k=2)
    assert [(h.id, type(h.id)) for h in hits] == [(1, int), ("1", str)]
    assert ns.delete(["1"]) == 1
    assert ns.get([1, "1"])[1] is None and ns.count() == 1


def test_numpy_integer_ids_are_stored_as_int(db):
    ns = db.create_namespace("ids", dim=2)
    ns.upsert(np.arange(3), np.ones((3, 2)))
    assert [type(r.id) for r in ns.get([0, 1, 2])] == [int, int, int]
    assert ns.get(np.int64(2)).id == 2


def test_large_and_negative_int_ids_round_trip(db):
    ids = [-(1 << 63), -1, 0, (1 << 63) - 1]
    ns = db.create_namespace("ids", dim=2)
    ns.upsert(ids, np.ones((4, 2)))
    assert [r.id for r in ns.get(ids)] == ids


# -- upsert, get, delete -------------------------------------------------------------------------
def test_upsert_of_existing_id_replaces_the_row(db):
    ns = db.create_namespace("u", dim=2, metric="l2")
    ns.upsert(["a", "b"], [[0, 0], [5, 5]], metadata=[{"n": 1}, None], documents=["d1", None])
    ns.upsert(["a"], [[9, 9]], metadata=[{"n": 2}])
    assert ns.count() == 2
    rec = ns.get("a", include=("metadata", "documents", "vectors"))
    assert rec.metadata == {"n": 2} and rec.document is None
    np.testing.assert_array_equal(rec.vector, [9, 9])
    hits = ns.query([9, 9], k=5)
    assert [h.id for h in hits] == ["a", "b"] and hits[0].distance == pytest.approx(0)
    assert ns.query([9, 9], k=5, where={"n": 1}) == []
    assert [h.id for h in ns.query([0, 0], k=5, where={"n": 2})] == ["a"]


def test_get_keeps_order_and_returns_none_for_missing(db):
    ns = db.create_namespace("g", dim=2)
    ns.upsert(["a", "b", 3], np.ones((3, 2)), documents=["A", "B", None])
    got = ns.get(["b", "zz", 3, "a", "b"])
    assert [r and r.id for r in got] == ["b", None, 3, "a", "b"]
    assert [r and r.document for r in got] == ["B", None, None, "A", "B"]


def test_get_of_a_single_id_returns_one_record(db):
    ns = db.create_namespace("g", dim=2)
    ns.upsert(["a"], [[1, 2]])
    assert ns.get("a").id == "a"
    assert ns.get("zz") is None


def test_get_include_controls_fields(db):
    ns = db.create_namespace("g", dim=2)
    ns.upsert(["a"], [[1, 2]], metadata=[{"m": 1}], documents=["doc"])
    bare = ns.get("a", include=())
    assert (bare.metadata, bare.document, bare.vector) == (None, None, None)
    only_doc = ns.get("a", include=["documents"])
    assert (only_doc.metadata, only_doc.document) == (None, "doc")


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_include_vectors_returns_the_stored_vectors(db, metric):
    """l2 and ip store the vectors as given; cosine stores each row once, as the unit
    vector it is searched by (as Qdrant does), and returns that."""
    ns = db.create_namespace("v", dim=3, metric=metric)
    X = np.array([[3, 4, 0], [0.5, -2, 7.25]], np.float32)
    ns.upsert(["a", "b"], X)
    got = ns.get(["a", "b"], include=("vectors",))
    want = X
    if metric == "cosine":
        want = (X / np.linalg.norm(X.astype(np.float64), axis=1, keepdims=True)).astype(np.float32)
    np.testing.assert_allclose(np.stack([r.vector for r in got]), want, rtol=1e-6, atol=1e-7)
    if metric != "cosine":
        np.testing.assert_array_equal(np.stack([r.vector for r in got]), X)
    assert got[0].vector.dtype == np.float32
    hit = ns.query(X[0], k=1, include=("vectors",))[0]
    np.testing.assert_array_equal(hit.vector, got[0].vector)


def test_delete_by_ids_returns_the_number_deleted(db):
    ns = db.create_namespace("d", dim=2)
    ns.upsert(["a", "b", "c"], np.ones((3, 2)))
    assert ns.delete(["a", "zz", "c"]) == 2
    assert ns.delete(["a"]) == 0
    assert ns.count() == 1
    assert [h.id for h in ns.query([1, 1], k=10)] == ["b"]


def test_delete_by_where_returns_the_number_deleted(db):
    ns = db.create_namespace("d", dim=2)
    ns.upsert(list(range(10)), np.ones((10, 2)),
              metadata=[{"g": i % 3} if i < 9 else None for i in range(10)])
    assert ns.delete(where={"g": 0}) == 3
    assert ns.delete(where={"g": {"$ne": 1}}) == 4        # g == 2 and the row without g
    assert sorted(h.id for h in ns.query([1, 1], k=10)) == [1, 4, 7]
    assert ns.delete(where={"g": 5}) == 0


def test_delete_by_ids_and_where_deletes_only_ids_that_match(db):
    ns = db.create_namespace("d", dim=2)
    ns.upsert(["a", "b", "c"], np.ones((3, 2)), metadata=[{"k": 1}, {"k": 2}, {"k": 1}])
    assert ns.delete(ids=["a", "b"], where={"k": 1}) == 1
    assert [r is None for r in ns.get(["a", "b", "c"])] == [True, False, False]


def test_deleted_id_can_be_inserted_again(db):
    ns = db.create_namespace("d", dim=2, metric="l2")
    ns.upsert(["a"], [[1, 1]])
    ns.delete(["a"])
    ns.upsert(["a"], [[2, 2]])
    assert ns.count() == 1
    np.testing.assert_array_equal(ns.get("a", include=("vectors",)).vector, [2, 2])


# -- query ---------------------------------------------------------------------------------
def test_query_distances_follow_each_metric_lower_is_nearer(db):
    x = np.array([1.0, 2.0, 2.0], np.float32)
    q = np.array([2.0, 0.0, 1.0], np.float32)
    expected = {"cosine": 1 - x @ q / (np.linalg.norm(x) * np.linalg.norm(q)),
                "l2": float(np.sum((x - q) ** 2)), "ip": -float(x @ q)}
    for metric, want in expected.items():
        ns = db.create_namespace(metric, dim=3, metric=metric)
        ns.upsert(["x"], [x])
        assert ns.query(q, k=1)[0].distance == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_query_of_one_vector_returns_hits_and_a_matrix_returns_lists(db):
    ns = db.create_namespace("q", dim=2, metric="l2")
    ns.upsert(["a", "b", "c"], [[0, 0], [1, 0], [5, 5]])
    one = ns.query([0.1, 0], k=2)
    assert [h.id for h in one] == ["a", "b"]
    many = ns.query([[0.1, 0], [5, 4.9]], k=2)
    assert [[h.id for h in hs] for hs in many] == [["a", "b"], ["c", "b"]]
    single_row = ns.query([[0.1, 0]], k=2)
    assert len(single_row) == 1 and [h.id for h in single_row[0]] == ["a", "b"]


def test_query_with_k_above_count_returns_every_row(db):
    ns = db.create_namespace("q", dim=2)
    ns.upsert(["a", "b"], [[1, 0], [0, 1]])
    assert len(ns.query([1, 0], k=50)) == 2
    assert [len(h) for h in ns.query([[1, 0], [0, 1]], k=50)] == [2, 2]


def test_query_on_empty_namespace_returns_no_hits(db):
    ns = db.create_namespace("q", dim=2)
    assert ns.query([1, 0], k=3) == []
    assert ns.query([[1, 0], [0, 1]], k=3) == [[], []]


def test_query_include_metadata_and_documents(db):
    ns = db.create_namespace("q", dim=2)
    ns.upsert(["a"], [[1, 0]], metadata=[{"lang": "en"}], documents=["hello"])
    hit = ns.query([1, 0], k=1)[0]
    assert (hit.metadata, hit.document) == ({"lang": "en"}, None)
    hit = ns.query([1, 0], k=1, include=("documents",))[0]
    assert (hit.metadata, hit.document) == (None, "hello")
    hit = ns.query([1, 0], k=1, include=())[0]
    assert (hit.id, hit.metadata) == ("a", None)


def test_filter_shorthand_and_operators(db):
    ns = db.create_namespace("f", dim=2, metric="l2")
    md = [{"lang": "en", "year": 2020}, {"lang": "de", "year": 2022}, {"lang": "en"}, None]
    ns.upsert(["a", "b", "c", "d"], np.zeros((4, 2)), metadata=md)

    def ids(where):
        return sorted(h.id for h in ns.query([0, 0], k=10, where=where))

    assert ids({"lang": "en"}) == ["a", "c"]
    assert ids({"lang": {"$ne": "en"}}) == ["b", "d"]
    assert ids({"year": {"$gte": 2021}}) == ["b"]
    assert ids({"lang": "en", "year": {"$lt": 2021}}) == ["a"]
    assert ids({"year": {"$nin": [2020]}}) == ["b", "c", "d"]
    assert ids({"year": {"$exists": False}}) == ["c", "d"]
    assert ids({"$or": [{"lang": "de"}, {"year": 2020}]}) == ["a", "b"]
    assert ids({"$not": {"lang": "en"}}) == ["b", "d"]
    assert ids({"$and": [{"lang": {"$in": ["en", "de"]}}, {"year": {"$gt": 2019}}]}) == ["a", "b"]
    assert ids({}) == ["a", "b", "c", "d"]


# -- concurrency ------------------------------------------------------------------------------
def test_concurrent_writers_and_readers_lose_nothing_and_share_syncs(tmp_path):
    db = sv.open(tmp_path / "db", durability="sync", checkpoint_interval=0)
    try:
        ns = db.create_namespace("c", dim=8, metric="l2")
        assert db.status().wal_syncs >= 0
        syncs_before = db.status().wal_syncs
        writers, per_writer = 4, 60
        lsns, errors = [], []
        lock = threading.Lock()
        start = threading.Barrier(writers + 2)
        done = threading.Event()

        def write(w):
            try:
                start.wait()
                for i in range(per_writer):
                    X = rows(2, 8, seed=w * 1000 + i)
                    lsn = ns.upsert([f"w{w}-{i}-0", f"w{w}-{i}-1"], X,
                                    metadata=[{"w": w}, {"w": w}])
                    with lock:
                        lsns.append(lsn)
            except Exception as e:       # reported below
                errors.append(e)

        def read():
            try:
                start.wait()
                q = np.zeros(8, np.float32)
                while not done.is_set():
                    hits = ns.query(q, k=5, where={"w": {"$in": [0, 1, 2, 3]}})
                    assert len(hits) <= 5
                    assert all(h.metadata["w"] in (0, 1, 2, 3) for h in hits)
                    ns.get(["w0-0-0", "w3-5-1"])
            except Exception as e:
                errors.append(e)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
        readers = [threading.Thread(target=read) for _ in range(2)]
        for t in threads + readers:
            t.start()
        for t in threads:
            t.join(120)
        done.set()
        for t in readers:
            t.join(120)
        assert errors == []
        writes = writers * per_writer
        assert len(lsns) == writes and len(set(lsns)) == writes
        assert sorted(lsns) == list(range(2, 2 + writes))
        assert ns.count() == 2 * writes
        for w in range(writers):
            recs = ns.get([f"w{w}-{i}-{j}" for i in range(per_writer) for j in (0, 1)],
                          include=("vectors",))
            got = np.stack([r.vector for r in recs])
            want = np.concatenate([rows(2, 8, seed=w * 1000 + i) for i in range(per_writer)])
            np.testing.assert_array_equal(got, want)
        # group commit: concurrent writers share fdatasync calls
        assert db.status().wal_syncs - syncs_before < writes
        assert [c.lsn for c in db.changes()] == list(range(1, db.lsn + 1))
    finally:
        db.close()


def test_concurrent_writes_survive_reopen(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns = db.create_namespace("c", dim=4)

        def write(w):
            for i in range(25):
                ns.upsert([w * 100 + i], rows(1, 4, seed=w * 100 + i))

        threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns = db.namespace("c")
        assert ns.count() == 100
        wanted = [w * 100 + i for w in range(4) for i in range(25)]
        assert all(r is not None for r in ns.get(wanted))
