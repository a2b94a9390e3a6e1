"""Storage format 2: rows once in a mapped row file, checkpoints as mapped array bundles,
the id map and field indexes persisted; crash safety of the new write paths."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import simplevector as sv
from simplevector.engine import arrayfile, fieldindex, segments
from simplevector.engine.filters import compile_filter, matches

sys.path.insert(0, os.path.dirname(__file__))
import _storage_child as child  # noqa: E402
from _numeric import assert_same_hits  # noqa: E402

CHILD = os.path.join(os.path.dirname(__file__), "_storage_child.py")


# -- the two file kinds -----------------------------------------------------------------------
def test_row_file_grows_sparse_remaps_and_keeps_old_views_valid(tmp_path):
    f = arrayfile.RowFile(str(tmp_path / "r.f32"), 4)
    first = np.arange(8, dtype=np.float32).reshape(2, 4)
    f.write(0, first)
    old = f.rows(2)
    big = np.random.default_rng(1).standard_normal((10_000, 4)).astype(np.float32)
    f.write(2, big)                         # grows and remaps
    np.testing.assert_array_equal(old, first)          # a view taken before still reads
    np.testing.assert_array_equal(f.rows(10_002)[2:], big)
    f.sync()
    reader = arrayfile.RowFile(str(tmp_path / "r.f32"), 4, readonly=True)
    np.testing.assert_array_equal(reader.rows(10_002)[:2], first)
    assert not reader.rows(2).flags.writeable
    with pytest.raises(sv.CorruptionError, match="holds"):
        reader.rows(reader.capacity + 1)
    f.close()
    reader.close()


def test_bundle_round_trips_views_and_its_checksums_catch_damage(tmp_path):
    path = str(tmp_path / "b.arr")
    arrays = {"a": np.arange(10, dtype=np.int64), "empty": np.zeros((0, 3), np.uint8),
              "m": np.ones((3, 5), np.float32), "flags": np.array([True, False])}
    arrayfile.write_bundle(path, {"n": 10, "s": "x"}, arrays)
    meta, got = arrayfile.read_bundle(path, check=True)
    assert meta == {"n": 10, "s": "x"}
    for name, want in arrays.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        np.testing.assert_array_equal(got[name], want)
    with open(path, "r+b") as fh:              # flip one byte of "m"'s data
        fh.seek(-1, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(sv.CorruptionError, match="'flags'|'m'"):
        arrayfile.read_bundle(path, check=True)
    (tmp_path / "junk.arr").write_bytes(b"not a bundle at all")
    with pytest.raises(sv.CorruptionError):
        arrayfile.read_bundle(str(tmp_path / "junk.arr"))


# -- layout on disk ------------------------------------------------------------------------------
def _fill(db, n=3000, dim=16, seed=0, index="Flat"):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim)).astype(np.float32)
    ns = db.create_namespace("t", dim=dim, metric="l2", index=index)
    ids = [f"id{i}" if i % 3 else i for i in range(n)]
    ns.upsert(ids, X, metadata=[{"g": i % 10, "r": float(i), "w": f"w{i}"} for i in range(n)])
    return ns, ids, X


def test_each_row_is_stored_once_and_checkpoints_hold_no_rows(tmp_path):
    path = tmp_path / "db"
    n, dim = 20_000, 64
    X = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("t", dim=dim, metric="l2", index="Flat")
        ns.upsert(list(range(n)), X)
        db.checkpoint()
    rows = os.path.getsize(segments.row_path(str(path), 1))
    assert rows >= X.nbytes
    ckpt = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path / "ckpt")
               for f in fs)
    # derived state only: alive (1 byte), norm (4), id offset (8) and bytes (9), id hash
    # and position (24) per row; the 256-byte rows are not in it
    assert ckpt / n < 64, ckpt / n
    # LMDB holds the ids and the catalog, not the rows
    assert os.path.getsize(path / "lmdb" / "data.mdb") < X.nbytes / 2


def test_reopen_and_first_filtered_query_do_no_per_row_python_work(tmp_path, monkeypatch):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns, ids, X = _fill(db)
        want = ns.query(X[:5], k=7, where={"g": {"$in": [1, 2]}, "r": {"$lt": 2000.0}})
        want_ne = ns.query(X[5], k=7, where={"w": {"$ne": "w5"}, "g": 5})
    calls = []
    real_add = fieldindex.FieldIndex.add
    monkeypatch.setattr(fieldindex.FieldIndex, "add",
                        lambda self, pos, md: (calls.append(pos), real_add(self, pos, md)))
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.namespace("t")
        got = ns.query(X[:5], k=7, where={"g": {"$in": [1, 2]}, "r": {"$lt": 2000.0}})
        got_ne = ns.query(X[5], k=7, where={"w": {"$ne": "w5"}, "g": 5})
        assert calls == []                  # nothing indexed row by row, at open or query
        for a, b in zip(want, got):
            assert_same_hits(a, b)
        assert_same_hits(want_ne, got_ne)
        assert ns.get(["id1", 0, "id2999"])[0].metadata == {"g": 1, "r": 1.0, "w": "w1"}


def test_reopen_maps_alive_norms_and_list_ends_and_deletes_never_touch_the_bundle(
        tmp_path, monkeypatch):
    """Opening reads no array row by row: the alive flags and norms are the bundle's private
    copy-on-write mapping (not copies) and the lists' end position comes from the bundle's
    meta (not a max over every position). A delete after the reopen writes a private page:
    the bundle file is byte for byte unchanged, and the next open (replaying the delete
    from the WAL) and the next checkpoint both see it."""
    import glob
    import hashlib
    from simplevector.engine import ivf

    def digest():
        return {f: hashlib.sha256(open(f, "rb").read()).hexdigest()
                for f in glob.glob(str(tmp_path / "db" / "ckpt" / "**" / "*.arr"),
                                   recursive=True)}

    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns, ids, X = _fill(db, n=4000, index="IVF16,PQ4x8")
        ns.build_index()
        db.checkpoint()
    before = digest()
    assert before
    monkeypatch.setattr(ivf, "_end", lambda pos: pytest.fail("open read every list position"))
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.namespace("t")
        e = ns.engine_ns
        state = e._db._state(e._config().vid)
        assert not state._alive.flags.owndata and not state._xnorm2.flags.owndata
        assert state._alive.base is not None and len(state._alive) == 4000
        assert state.index is not None and state.index.snapshot()[0].end == 4000
        monkeypatch.undo()
        assert ns.delete([ids[7], ids[3999]]) == 2
        assert digest() == before           # the delete wrote no byte of the bundle
        hits = ns.query(X[7], k=3, include=())
        assert ids[7] not in [h.id for h in hits]
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.namespace("t")
        assert ns.count() == 3998 and ns.get([ids[7], ids[3999]]) == [None, None]
        e = ns.engine_ns
        state = e._db._state(e._config().vid)
        assert not state._alive.flags.owndata      # still the bundle's mapping
        assert ns.delete([ids[9]]) == 1
        db.checkpoint()
        # the checkpoint rewrote them: owned copies now, so the replaced bundle (unlinked)
        # is not held mapped by this process
        assert state._alive.flags.owndata and state._xnorm2.flags.owndata
        state.view()                        # the cached view held the old arrays
        import gc
        gc.collect()
        with open("/proc/self/maps") as f:
            held = [line for line in f if ".arr" in line and "(deleted)" in line]
        assert held == []
        assert ns.count() == 3997 and ns.get([ids[7], ids[9]]) == [None, None]
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.namespace("t")
        assert ns.count() == 3997 and ns.get([ids[7], ids[9], ids[3999]]) == [None] * 3
        assert ns.get(ids[8]) is not None


@pytest.mark.parametrize("spec", ["IVF16,PQ4x8,Refine4", "IVF16,RaBitQ,Refine4"])
def test_a_checkpoint_rebases_the_ivf_lists_on_its_bundle_and_keeps_later_rows(
        tmp_path, spec):
    """After a checkpoint the index's sealed lists are the new bundle's (views of it, the
    delta folded in) and its delta holds only rows written since: queries answer the
    same before and after, through more writes, deletes and checkpoints, and after a
    reopen; no replaced bundle stays mapped."""
    import gc
    rng = np.random.default_rng(5)
    path = tmp_path / "db"

    def answers(ns, Q):
        return [[h.id for h in row] for row in ns.query(Q, k=10, include=(), nprobe=16)]

    def held():
        gc.collect()
        with open("/proc/self/maps") as f:
            return [line for line in f if ".arr" in line and "(deleted)" in line]

    Q = rng.standard_normal((20, 16)).astype(np.float32)
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns, ids, X = _fill(db, n=3000, index=spec)
        ns.build_index()
        ns.upsert([f"late{i}" for i in range(500)],
                  rng.standard_normal((500, 16)).astype(np.float32))
        e = ns.engine_ns
        index = e._db._state(e._config().vid).index
        assert index.snapshot()[1].n == 500                 # the delta before the checkpoint
        before = answers(ns, Q)
        db.checkpoint()
        sealed, delta = index.snapshot()
        assert delta.n == 0 and len(sealed.pos) == 3500     # folded into the bundle's lists
        assert not sealed.codes.flags.owndata               # a view of the bundle
        assert answers(ns, Q) == before
        ns.delete([ids[i] for i in range(0, 3000, 7)])
        ns.upsert([f"later{i}" for i in range(300)],
                  rng.standard_normal((300, 16)).astype(np.float32))
        mid = answers(ns, Q)
        db.checkpoint()
        sealed, delta = index.snapshot()
        assert delta.n == 0 and len(sealed.pos) == 3500 - len(range(0, 3000, 7)) + 300
        assert answers(ns, Q) == mid
        assert held() == []
        ns.upsert(["after"], rng.standard_normal((1, 16)).astype(np.float32))
        assert index.snapshot()[1].n == 1                   # written since: in the delta
        last = answers(ns, Q)
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        assert answers(db.namespace("t"), Q) == last


def test_writes_after_a_checkpoint_combine_with_the_persisted_base(tmp_path):
    """Deletes and replacements of checkpointed rows, new rows, then a reopen (replaying
    the tail on top of the bundle) and another checkpoint (rebasing): every path agrees
    with a dict model, filters included."""
    path = tmp_path / "db"
    rng = np.random.default_rng(3)
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns, ids, X = _fill(db, n=2000)
        model = {extid: (X[i], {"g": i % 10, "r": float(i), "w": f"w{i}"})
                 for i, extid in enumerate(ids)}
        db.checkpoint()

        def churn(ns):
            gone = rng.choice(len(ids), 100, replace=False)
            ns.delete([ids[i] for i in gone[:50]])
            for i in gone[:50]:
                model.pop(ids[i], None)
            rep = [ids[i] for i in gone[50:]] + [f"new{j}" for j in range(rng.integers(0, 99))]
            V = rng.standard_normal((len(rep), 16)).astype(np.float32)
            mds = [{"g": 99, "r": -1.0, "w": str(x)} for x in rep]
            ns.upsert(rep, V, metadata=mds)
            model.update({x: (v, md) for x, v, md in zip(rep, V, mds)})

        def check(ns):
            assert ns.count() == len(model)
            assert sorted(map(str, ns.ids())) == sorted(map(str, model))
            for extid in list(model)[::97]:
                rec = ns.get(extid, include=("metadata", "vectors"))
                np.testing.assert_array_equal(rec.vector, model[extid][0])
                assert rec.metadata == model[extid][1]
            for where in ({"g": 99}, {"g": {"$ne": 99}}, {"r": {"$gte": 1500.0}},
                          {"$or": [{"g": 3}, {"w": "w7"}]}):
                got = ns.query(np.zeros(16, np.float32), k=5000, where=where, include=())
                node = compile_filter(where)
                want = [x for x, (_, md) in model.items() if matches(node, md)]
                assert sorted(map(str, (h.id for h in got))) == sorted(map(str, want))

        churn(ns)
        check(ns)
        db.checkpoint()                      # rebases on the new bundle
        churn(ns)
        check(ns)
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        check(db.namespace("t"))
        churn(db.namespace("t"))
        check(db.namespace("t"))


def test_old_checkpoints_are_removed_and_clean_versions_linked(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        _fill(db, n=500)                                     # vid 1
        other = db.create_namespace("o", dim=4, metric="l2")  # vid 2
        other.upsert([1], np.ones((1, 4), np.float32))
        db.checkpoint()
        (first,) = os.listdir(path / "ckpt")
        inodes = {v: os.stat(path / "ckpt" / first / f"v{v}.arr").st_ino for v in (1, 2)}
        db.namespace("t").delete([0])
        db.checkpoint()
        (second,) = os.listdir(path / "ckpt")               # the first one is gone
        assert second != first
        again = {v: os.stat(path / "ckpt" / second / f"v{v}.arr").st_ino for v in (1, 2)}
        assert again[2] == inodes[2]        # "o" did not change: the same file, linked
        assert again[1] != inodes[1]        # "t" did: written anew
    (path / "ckpt" / "00000000000000000001-1.tmp").mkdir()
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        assert len(os.listdir(path / "ckpt")) == 1          # the stray one was removed
        assert db.namespace("t").count() == 499


# -- crash safety --------------------------------------------------------------------------------
def _model_from(lines, model):
    for line in lines:
        parts = line.split()
        if parts[0] == "u":
            ids = [int(x) for x in parts[1].split(",")]
            seed = int(parts[2])
            for extid, v in zip(ids, child.rows(ids, seed)):
                model[extid] = (v, child.meta(extid, seed))
        elif parts[0] == "d":
            for extid in map(int, parts[1].split(",")):
                model.pop(extid, None)


def _check_against(ns, model):
    assert ns.count() == len(model)
    ids = sorted(model)
    recs = ns.get(ids, include=("metadata", "vectors"))
    for extid, rec in zip(ids, recs):
        assert rec is not None, extid
        np.testing.assert_array_equal(rec.vector, model[extid][0])
        assert rec.metadata == model[extid][1]
    absent = [i for i in range(600) if i not in model]
    assert all(r is None for r in ns.get(absent))
    for k in range(7):                      # persisted + tail field indexes
        got = ns.query(np.zeros(child.DIM, np.float32), k=1000, where={"k": k}, include=())
        assert sorted(h.id for h in got) == sorted(i for i in model if i % 7 == k)
    # the IVF lists (persisted, rebased, replayed) hold every live row once and no dead
    # one: scanning all 4 lists for k = every row returns exactly the live ids, with no
    # exact fallback filling in what the lists missed
    hits, plan = ns.query(np.zeros(child.DIM, np.float32), k=len(model), nprobe=4,
                          include=(), explain=True)
    assert plan.index.startswith("ivf") and "fallback" not in plan.index, plan.index
    assert sorted(h.id for h in hits) == ids


@pytest.mark.parametrize("mode", ["churn", "compact", "rabitq"])
def test_kill9_during_churn_with_checkpoints_every_10ms_loses_nothing(tmp_path, mode):
    """Upserts, replacements and deletes on an IVF-PQ namespace with metadata while the
    checkpointer writes bundles, links, renames and rebases every 10 ms (and, in "compact"
    mode, versions are compacted by the policy and explicitly; in "rabitq" mode the index
    is IVF-RaBitQ, whose bundles also hold the codes' row terms); SIGKILL at random points.
    Every acknowledged operation is there after reopen, nothing else is, and a RaBitQ
    index's row terms after reopen are the ones its codes give."""
    path = tmp_path / "db"
    rng = random.Random(7)
    model = {}
    compactions = 0
    for round_no in range(6):
        proc = subprocess.Popen([sys.executable, CHILD, mode, str(path), str(round_no + 1)],
                                stdout=subprocess.PIPE, text=True, bufsize=1)
        lines = []
        while True:
            line = proc.stdout.readline()
            assert line, "the child died before it was ready"
            if line.strip() == "ready":
                break
            lines.append(line)
        time.sleep(rng.uniform(0.2, 0.8))
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        proc.wait(30)
        lines += [x for x in rest.splitlines(keepends=True) if x.endswith("\n")]
        acked = [x for x in lines if x.strip() and not x.startswith("try ")]
        compactions += sum(1 for x in acked if x.strip() == "c")
        tried = [x[4:] for x in lines if x.startswith("try ")]
        inflight = tried[-1] if tried and (not acked or tried[-1] != acked[-1]) else None
        # the operation in flight at the kill may or may not have committed: it must be
        # there entirely or not at all
        _model_from(acked, model)
        with_it = dict(model)
        if inflight is not None:
            _model_from([inflight], with_it)
        with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
            ns = db.namespace("s")
            try:
                _check_against(ns, model)
            except AssertionError:
                if inflight is None:
                    raise
                _check_against(ns, with_it)
                model = with_it
            if mode == "compact":
                generation = db.engine._state(db.engine._resolve("s").vid).gen
                report = db.verify()
                assert report.ok, report.problems
            if mode == "rabitq":
                _check_rabitq_terms(db.engine._state(db.engine._resolve("s").vid).index)
    assert len(model) > 100
    if mode == "compact":
        assert compactions > 0 and generation > 0, (compactions, generation)


def _check_rabitq_terms(index):
    """The sealed and delta row terms the kernels read equal those computed from the codes
    (kernels/rabitq.py list_terms / row_terms), whether loaded from a bundle or not."""
    from simplevector.engine.kernels import rabitq as rq
    assert index.spec.rabitq
    sealed, d, *_, st, dt = index._code_views()
    words, fac = rq.views(sealed.codes)
    np.testing.assert_array_equal(
        st, rq.list_terms(sealed.offsets, words, fac, index.rcentroids, index.rcenter))
    if d.n:
        dwords, dfac = rq.views(d.codes[: d.n])
        np.testing.assert_array_equal(
            dt[: d.n], rq.row_terms(np.ascontiguousarray(d.lists[: d.n], np.int64), dwords,
                                    dfac, index.rcentroids, index.rcenter))


def test_rows_lost_from_the_page_cache_after_a_checkpoint_are_rewritten_from_the_wal(tmp_path):
    """An OS crash can lose row-file pages written after the last checkpoint (they are
    synced only by a checkpoint). Recovery rewrites every row of the WAL tail."""
    path = tmp_path / "db"
    rng = np.random.default_rng(5)
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("p", dim=8, metric="l2")
        A = rng.standard_normal((100, 8)).astype(np.float32)
        ns.upsert(list(range(100)), A)
        db.checkpoint()
        B = rng.standard_normal((50, 8)).astype(np.float32)
        ns.upsert(list(range(100, 150)), B)
        ns.upsert([3], B[:1])
        row_file = segments.row_path(str(path), 1)
        db.engine._stop.set()               # no checkpoint at close: simulate a crash
        db.engine._checkpointer = None
        # what a power loss may leave: the rows after the checkpoint never reached disk
        with open(row_file, "r+b") as fh:
            fh.seek(100 * 8 * 4)
            fh.write(b"\0" * (51 * 8 * 4))
        db.engine._closed = True            # abandon the handle as a killed process would
        db.engine._release_handles()
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.namespace("p")
        got = np.stack([r.vector for r in ns.get(list(range(150)), include=("vectors",))])
        want = np.concatenate([A, B])
        want[3] = B[0]
        np.testing.assert_array_equal(got, want)
        assert ns.query(B[7], k=1)[0].id == 107


@pytest.mark.parametrize("kind", ["int-increasing", "int-shuffled", "str", "mixed"])
def test_id_map_agrees_with_a_dict_through_checkpoints(kind):
    """The id map against a dict model over appends, replacements and deletes, with the
    base rebuilt from to_arrays() every few steps (int form sorted or not, hashed form,
    and the switch from int to hashed when a str id arrives)."""
    from simplevector.engine.idmap import IdMap
    rng = np.random.default_rng({"int-increasing": 1, "int-shuffled": 2, "str": 3,
                                 "mixed": 4}[kind])
    pool = list(range(0, 3000, 3))
    if kind == "int-shuffled":
        rng.shuffle(pool)
    elif kind == "str":
        pool = [f"k{i}" for i in pool]
    elif kind == "mixed":
        pool = [i if i % 2 else f"s{i}" for i in pool]
    ids, alive, model = IdMap(), np.zeros(0, bool), {}
    cursor = 0
    for step in range(40):
        new = pool[cursor:cursor + 20]
        cursor += 20
        again = [x for x in rng.choice(list(model), min(5, len(model)), replace=False)] \
            if model else []
        batch = list(dict.fromkeys(new + [x.item() if hasattr(x, "item") else x
                                          for x in again]))
        old = ids.lookup_many(batch, alive)
        assert old == [model.get(x, -1) for x in batch]
        start = ids.n
        alive = np.concatenate([alive, np.ones(len(batch), bool)])
        for p in old:
            if p >= 0:
                alive[p] = False
        ids.append(batch, start)
        model.update({x: start + i for i, x in enumerate(batch)})
        for x in list(model)[:: 7][:2]:                       # deletes
            alive[model[x]] = False
            ids.forget(x, model.pop(x))
        if step % 5 == 4:
            base = IdMap(ids.to_arrays(ids.n, alive))
            assert ("id_int" in ids.to_arrays(ids.n, alive)) == kind.startswith("int")
            base.tail, base.recent = [], {}
            ids = base
        for x in pool[:cursor]:
            assert ids.lookup(x, alive) == model.get(x, -1), (step, x)
        live = np.flatnonzero(alive)
        assert sorted(map(str, ids.at_many(live))) == sorted(map(str, model))
        assert ids.lookup(10**12, alive) == -1 and ids.lookup("absent", alive) == -1


def test_queries_during_checkpoints_see_a_complete_state(tmp_path):
    """A checkpoint rebases the id map, field indexes and IVF lists on its new bundle while
    rows keep arriving and queries run: a query sees the old structures or the new ones,
    never a half-built one. Rows are only added here, so the number of rows a filter finds
    never goes down, and every hit has its id."""
    import threading
    rng = np.random.default_rng(9)
    with sv.open(tmp_path / "db", checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("c", dim=8, metric="l2")
        ns.upsert(list(range(300)), rng.standard_normal((300, 8)).astype(np.float32),
                  metadata=[{"stable": True}] * 300)
        errors, stop = [], threading.Event()

        def reader():
            seen = 0
            while not stop.is_set():
                try:
                    hits = ns.query(np.zeros(8, np.float32), k=100_000,
                                    where={"stable": True}, include=())
                    assert len(hits) >= max(seen, 300), (len(hits), seen)
                    assert all(h.id is not None for h in hits)
                    seen = len(hits)
                except Exception as e:          # reported below, with the test's assertion
                    errors.append(e)
                    return

        def writer():
            for r in range(60):
                ids = list(range(1000 + 20 * r, 1020 + 20 * r))
                ns.upsert(ids, rng.standard_normal((20, 8)).astype(np.float32),
                          metadata=[{"stable": True}] * 20)

        threads = [threading.Thread(target=reader) for _ in range(2)]
        threads.append(threading.Thread(target=writer))
        for t in threads:
            t.start()
        while threads[-1].is_alive():
            db.checkpoint()
        stop.set()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert ns.count() == 300 + 60 * 20
