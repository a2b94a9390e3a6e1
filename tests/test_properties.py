"""Property tests: query results against a numpy brute-force reference, and a persistence
state machine (upsert / delete / query / reopen) checked against a dict model."""

import itertools

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, rule,
                                 run_state_machine_as_test)

import simplevector as sv

METRICS = ("cosine", "l2", "ip")
REL_TOL = 1e-4
ID_POOL = [*range(12), *(f"s{i}" for i in range(8))]
TAGS = ["a", "b", "c"]
_dirs = itertools.count()


# -- the reference ----------------------------------------------------------------------------
def ref_distances(X, q, metric):
    X = np.asarray(X, np.float64)
    q = np.asarray(q, np.float64)
    if metric == "cosine":
        return 1.0 - (X @ q) / (np.linalg.norm(X, axis=1) * np.linalg.norm(q))
    if metric == "l2":
        return np.sum((X - q) ** 2, axis=1)
    return -(X @ q)


_MISSING = object()


def _get(md, field):
    return md.get(field, _MISSING) if md else _MISSING


def ref_match(where, md):
    """Reference filter semantics (Mongo): $ne/$nin match rows missing the field."""
    out = True
    for key, cond in where.items():
        if key == "$and":
            out &= all(ref_match(w, md) for w in cond)
        elif key == "$or":
            out &= any(ref_match(w, md) for w in cond)
        elif key == "$not":
            out &= not ref_match(cond, md)
        else:
            value = _get(md, key)
            ops = cond if isinstance(cond, dict) else {"$eq": cond}
            for op, arg in ops.items():
                have = value is not _MISSING
                num = have and isinstance(value, (int, float)) and not isinstance(value, bool)
                if op == "$eq":
                    ok = have and value == arg
                elif op == "$ne":
                    ok = not (have and value == arg)
                elif op == "$in":
                    ok = have and value in arg
                elif op == "$nin":
                    ok = not (have and value in arg)
                elif op == "$exists":
                    ok = have == arg
                else:
                    ok = num and {"$gt": value > arg, "$gte": value >= arg,
                                  "$lt": value < arg, "$lte": value <= arg}[op]
                out &= ok
    return out


def check_hits(hits, model, q, k, metric, where=None):
    """Tie-aware: the sorted distances equal the reference's top k, every returned id is a
    matching row whose true distance is within the k-th reference distance."""
    cand = [i for i, (_, md) in model.items() if where is None or ref_match(where, md)]
    want = min(k, len(cand))
    assert len(hits) == want, f"{len(hits)} hits, expected min({k}, {len(cand)})"
    if not cand:
        return
    X = np.stack([model[i][0] for i in cand])
    true = dict(zip(map(_key, cand), ref_distances(X, q, metric)))
    ref_top = np.sort(np.fromiter(true.values(), float))[:want]
    tol = REL_TOL * max(1.0, float(np.max(np.abs(ref_top))))
    got = np.array([h.distance for h in hits])
    assert np.all(np.diff(got) >= -tol), "hits are not nearest first"
    np.testing.assert_allclose(np.sort(got), ref_top, rtol=0, atol=tol)
    keys = [_key(h.id) for h in hits]
    assert len(set(keys)) == len(keys), "an id was returned twice"
    for h, key in zip(hits, keys):
        assert key in true, f"hit {h.id!r} is not a live matching row"
        assert abs(true[key] - h.distance) <= tol, f"hit {h.id!r} has a wrong distance"
        assert true[key] <= ref_top[-1] + tol, f"hit {h.id!r} is not within the top {k}"


def _key(extid):
    return (type(extid), extid)


# -- strategies ------------------------------------------------------------------------------
metadata_st = st.one_of(
    st.none(),
    st.fixed_dictionaries({}, optional={
        "g": st.integers(0, 4),
        "x": st.floats(-10, 10, allow_nan=False, width=32),
        "tag": st.sampled_from(TAGS)}))

field_filter_st = st.one_of(
    st.builds(lambda v: {"g": v}, st.integers(0, 4)),
    st.builds(lambda v: {"tag": v}, st.sampled_from(TAGS)),
    st.builds(lambda op, v: {"g": {op: v}},
              st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"]), st.integers(0, 4)),
    st.builds(lambda op, v: {"x": {op: v}}, st.sampled_from(["$gt", "$gte", "$lt", "$lte"]),
              st.floats(-10, 10, allow_nan=False, width=32)),
    st.builds(lambda op, vs: {"tag": {op: vs}}, st.sampled_from(["$in", "$nin"]),
              st.lists(st.sampled_from(TAGS), min_size=1, max_size=3)),
    st.builds(lambda op, vs: {"g": {op: vs}}, st.sampled_from(["$in", "$nin"]),
              st.lists(st.integers(0, 4), min_size=1, max_size=3)),
    st.builds(lambda f, b: {f: {"$exists": b}}, st.sampled_from(["g", "x", "tag"]),
              st.booleans()),
)
filter_st = st.recursive(
    field_filter_st,
    lambda inner: st.one_of(
        st.builds(lambda fs: {"$and": fs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda fs: {"$or": fs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda f: {"$not": f}, inner)),
    max_leaves=4)


def make_vectors(rng, n, dim, metric, style):
    """Gaussian rows, or small integers (many exact ties and duplicates)."""
    if style == "ints":
        X = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    else:
        X = rng.standard_normal((n, dim)).astype(np.float32)
    if metric == "cosine":
        zero = ~X.any(axis=1)
        X[zero, 0] = 1.0
    return X


def fresh_dir(tmp_path):
    return tmp_path / f"db{next(_dirs)}"


PROPERTY_SETTINGS = settings(max_examples=30, deadline=None, database=None,
                             suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                    HealthCheck.too_slow])


# -- query properties ----------------------------------------------------------------------
@PROPERTY_SETTINGS
@given(dim=st.integers(1, 32), metric=st.sampled_from(METRICS), k=st.integers(1, 20),
       seed=st.integers(0, 2**32 - 1), style=st.sampled_from(["gauss", "ints"]),
       data=st.data())
def test_query_matches_brute_force_after_upserts_and_deletes(
        tmp_path, dim, metric, k, seed, style, data):
    rng = np.random.default_rng(seed)
    model = {}
    with sv.open(fresh_dir(tmp_path), checkpoint_interval=0) as db:
        ns = db.create_namespace("p", dim=dim, metric=metric)
        for _ in range(data.draw(st.integers(1, 4), label="batches")):
            ids = data.draw(st.lists(st.sampled_from(ID_POOL), min_size=1, max_size=12,
                                     unique=True), label="ids")
            metas = data.draw(st.lists(metadata_st, min_size=len(ids), max_size=len(ids)),
                              label="metadata")
            X = make_vectors(rng, len(ids), dim, metric, style)
            ns.upsert(ids, X, metadata=metas)
            for i, extid in enumerate(ids):
                model[extid] = (X[i], metas[i] or None)
            gone = data.draw(st.lists(st.sampled_from(ID_POOL), max_size=4, unique=True),
                             label="deletes")
            if gone:
                assert ns.delete(gone) == sum(g in model for g in gone)
                for g in gone:
                    model.pop(g, None)
        assert ns.count() == len(model)
        Q = make_vectors(rng, 3, dim, metric, style)
        for q in Q:
            check_hits(ns.query(q, k=k), model, q, k, metric)
        for q, hits in zip(Q, ns.query(Q, k=k)):
            check_hits(hits, model, q, k, metric)


@PROPERTY_SETTINGS
@given(dim=st.integers(1, 32), metric=st.sampled_from(METRICS), k=st.integers(1, 20),
       n=st.integers(1, 120), seed=st.integers(0, 2**32 - 1),
       style=st.sampled_from(["gauss", "ints"]), where=filter_st, data=st.data())
def test_filtered_query_returns_exactly_min_k_matching_nearest(tmp_path, dim, metric, k, n,
                                                               seed, style, where, data):
    rng = np.random.default_rng(seed)
    ids = list(range(n))
    metas = data.draw(st.lists(metadata_st, min_size=n, max_size=n), label="metadata")
    X = make_vectors(rng, n, dim, metric, style)
    model = {i: (X[i], metas[i] or None) for i in ids}
    with sv.open(fresh_dir(tmp_path), checkpoint_interval=0) as db:
        ns = db.create_namespace("p", dim=dim, metric=metric)
        ns.upsert(ids, X, metadata=metas)
        dropped = data.draw(st.lists(st.sampled_from(ids), max_size=5, unique=True),
                            label="deletes")
        if dropped:
            ns.delete(dropped)
            for i in dropped:
                model.pop(i)
        q = make_vectors(rng, 1, dim, metric, style)[0]
        hits = ns.query(q, k=k, where=where, include=("metadata",))
        check_hits(hits, model, q, k, metric, where)
        assert all(ref_match(where, h.metadata) for h in hits)
        Q = make_vectors(rng, 2, dim, metric, style)
        for qq, hs in zip(Q, ns.query(Q, k=k, where=where)):
            check_hits(hs, model, qq, k, metric, where)
        expected_deleted = sum(ref_match(where, md) for _, md in model.values())
        assert ns.delete(where=where) == expected_deleted
        assert ns.count() == len(model) - expected_deleted


# -- persistence state machine ------------------------------------------------------------------
class ReopenMachine(RuleBasedStateMachine):
    """Upserts, deletes, queries and reopens, checked against a dict after every step."""

    base = None        # set by the test to a tmp_path subdirectory

    def __init__(self):
        super().__init__()
        self.path = fresh_dir(self.base)
        self.db = None
        self.model = {}
        self.lsn = 0

    @initialize(metric=st.sampled_from(METRICS), dim=st.integers(1, 6),
                seed=st.integers(0, 2**32 - 1))
    def open_db(self, metric, dim, seed):
        self.metric, self.dim = metric, dim
        self.rng = np.random.default_rng(seed)
        self.db = sv.open(self.path, checkpoint_interval=0)
        self.ns = self.db.create_namespace("m", dim=dim, metric=metric)
        self.lsn = self.db.lsn

    @rule(ids=st.lists(st.sampled_from(ID_POOL), min_size=1, max_size=6, unique=True),
          data=st.data())
    def upsert(self, ids, data):
        metas = data.draw(st.lists(metadata_st, min_size=len(ids), max_size=len(ids)))
        docs = [f"doc-{i}" if j % 2 else None for j, i in enumerate(ids)]
        X = make_vectors(self.rng, len(ids), self.dim, self.metric, "gauss")
        lsn = self.ns.upsert(ids, X, metadata=metas, documents=docs)
        assert lsn > self.lsn
        self.lsn = lsn
        for i, extid in enumerate(ids):
            self.model[extid] = (X[i], metas[i] or None, docs[i])

    @rule(ids=st.lists(st.sampled_from(ID_POOL), min_size=1, max_size=5, unique=True))
    def delete_ids(self, ids):
        expected = sum(i in self.model for i in ids)
        assert self.ns.delete(ids) == expected
        for i in ids:
            self.model.pop(i, None)

    @rule(where=filter_st)
    def delete_where(self, where):
        doomed = [i for i, (_, md, _) in self.model.items() if ref_match(where, md)]
        assert self.ns.delete(where=where) == len(doomed)
        for i in doomed:
            del self.model[i]

    @rule(k=st.integers(1, 20), where=st.none() | filter_st)
    def query(self, k, where):
        q = make_vectors(self.rng, 1, self.dim, self.metric, "gauss")[0]
        model = {i: (v, md) for i, (v, md, _) in self.model.items()}
        check_hits(self.ns.query(q, k=k, where=where), model, q, k, self.metric, where)

    @rule()
    def reopen(self):
        self.db.close()
        self.db = sv.open(self.path, checkpoint_interval=0)
        assert self.db.replayed_records == 0        # close() checkpointed
        assert self.db.lsn >= self.lsn
        self.lsn = self.db.lsn
        self.ns = self.db.namespace("m")
        assert (self.ns.dim, self.ns.metric) == (self.dim, self.metric)

    @rule(deep=st.booleans())
    def verify(self, deep):
        """No false positives: any history of upserts, replacements, deletes and reopens
        verifies clean (checksums, ids <-> rows <-> records, field indexes, bundles)."""
        report = self.db.verify(deep=deep)
        assert report.ok, report.problems
        assert report.checked["rows"] == len(self.model)

    @invariant()
    def matches_model(self):
        if self.db is None:
            return
        assert self.ns.count() == len(self.model)
        ids = list(self.model)
        missing = [i for i in ID_POOL if i not in self.model]
        got = self.ns.get(ids + missing, include=("vectors", "metadata", "documents"))
        for extid, rec in zip(ids, got):
            vec, md, doc = self.model[extid]
            assert rec is not None and rec.id == extid and type(rec.id) is type(extid)
            if self.metric == "cosine":     # stored (and returned) as the unit row
                unit = vec.astype(np.float64) / np.linalg.norm(vec.astype(np.float64))
                np.testing.assert_allclose(rec.vector, unit, rtol=1e-6, atol=1e-7)
            else:
                np.testing.assert_array_equal(rec.vector, vec)
            assert rec.metadata == md and rec.document == doc
        assert all(rec is None for rec in got[len(ids):])

    def teardown(self):
        if self.db is not None:
            self.db.close()


def test_state_machine_with_reopen_matches_dict_model(tmp_path):
    ReopenMachine.base = tmp_path
    run_state_machine_as_test(
        ReopenMachine,
        settings=settings(max_examples=30, stateful_step_count=25, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow]))


# -- lifecycle state machine: compaction, snapshots, point-in-time restore ------------------------
class LifecycleMachine(ReopenMachine):
    """The reopen machine plus compactions, snapshots and restores: a snapshot restored to
    any LSN the WAL archive holds (up to the newest one, or through the archive to a chosen
    LSN) equals the dict model as it was at that LSN, across compactions and reopens."""

    def _open(self):
        return sv.open(self.path, checkpoint_interval=0, compact_ratio=0,
                       wal_archive=str(self.path) + "-archive")

    @initialize(metric=st.sampled_from(METRICS), dim=st.integers(1, 6),
                seed=st.integers(0, 2**32 - 1))
    def open_db(self, metric, dim, seed):
        self.metric, self.dim = metric, dim
        self.rng = np.random.default_rng(seed)
        self.db = self._open()
        self.ns = self.db.create_namespace("m", dim=dim, metric=metric)
        self.lsn = self.db.lsn
        self.history = {self.lsn: {}}           # LSN -> the model after it
        self.snaps = []                         # (path, lsn)
        self.sealed = self.lsn                  # the archive holds every record up to here
        self.restores = 0

    def _record(self):
        self.lsn = max(self.lsn, self.db.lsn)
        self.history[self.lsn] = dict(self.model)

    @rule(ids=st.lists(st.sampled_from(ID_POOL), min_size=1, max_size=6, unique=True),
          data=st.data())
    def upsert(self, ids, data):
        super().upsert(ids, data)
        self._record()

    @rule(ids=st.lists(st.sampled_from(ID_POOL), min_size=1, max_size=5, unique=True))
    def delete_ids(self, ids):
        super().delete_ids(ids)
        self._record()

    @rule(where=filter_st)
    def delete_where(self, where):
        # every rule that writes records the model at its LSN: a snapshot taken right
        # after an unrecorded write had no history point to restore to
        super().delete_where(where)
        self._record()

    @rule()
    def compact(self):
        report = self.ns.compact()
        assert report.versions[0].rows == len(self.model)
        self._record()

    @rule()
    def snapshot(self):
        info = self.db.snapshot()
        self.snaps.append((info.path, info.lsn))
        self.sealed = self.db.lsn

    @rule()
    def reopen(self):
        self.db.close()
        self.sealed = self.lsn                  # a clean close seals the active segment
        self.db = self._open()
        self.ns = self.db.namespace("m")

    @rule(data=st.data())
    def restore(self, data):
        if not self.snaps:
            return
        snap, snap_lsn = data.draw(st.sampled_from(self.snaps), label="snapshot")
        points = sorted(lsn for lsn in self.history if snap_lsn <= lsn <= self.sealed)
        to_lsn = data.draw(st.sampled_from(points), label="to_lsn")
        target = str(self.path) + f"-restored{self.restores}"
        self.restores += 1
        sv.restore(snap, target, to_lsn=to_lsn, wal_archive=str(self.path) + "-archive")
        expect = self.history[max(lsn for lsn in self.history if lsn <= to_lsn)]
        with sv.open(target, readonly=True, checkpoint_interval=0) as r:
            rns = r.namespace("m")
            assert rns.count() == len(expect)
            got = rns.get(ID_POOL, include=("metadata", "documents"))
            assert [None if g is None else (g.metadata, g.document) for g in got] == [
                (expect[i][1], expect[i][2]) if i in expect else None for i in ID_POOL]


def test_lifecycle_state_machine_restores_the_model_at_every_lsn(tmp_path):
    LifecycleMachine.base = tmp_path
    run_state_machine_as_test(
        LifecycleMachine,
        settings=settings(max_examples=12, stateful_step_count=25, deadline=None,
                          database=None, suppress_health_check=[HealthCheck.too_slow]))
