"""The engine's public surface: status objects, observers, the planner, the WAL format rule,
and the ops layer using nothing else (issue 9, part 2)."""

import dataclasses
import os
import re
import time
from pathlib import Path

import numba
import numpy as np
import pytest

import simplevector as sv
from simplevector.engine import namespace as namespace_mod
from simplevector.engine import planner, walformat
from simplevector.engine.database import Database as EngineDatabase
from simplevector.engine.observer import Observer, compile_clock
from simplevector.engine.wal import WriteAheadLog

ROOT = Path(__file__).resolve().parent.parent


def rows(n, dim=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


class Recorder(Observer):
    def __init__(self):
        self.operations, self.queries, self.checkpoints = [], [], []

    def on_operation(self, op, namespace, seconds, ok, compile_seconds=0.0):
        self.operations.append((op, namespace, seconds, ok, compile_seconds))

    def on_query(self, namespace, plan, queries):
        self.queries.append((namespace, plan, None if queries is None else queries.shape))

    def on_checkpoint(self, lsn):
        self.checkpoints.append(lsn)


class Exploding(Observer):
    def on_operation(self, *args):
        raise RuntimeError("observer bug")

    def on_query(self, *args):
        raise RuntimeError("observer bug")


# --------------------------------------------------------------------------- status

def test_status_objects_match_what_was_written(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("docs", dim=8, metric="l2", model="enc@1.0.0")
        ns.upsert(list(range(10)), rows(10))
        ns.delete([0, 1, 2])
        ns.upsert([3], rows(1, seed=1))                  # a replace: one more tombstone
        st = db.version_status("docs")
        assert (st.name, st.version, st.live, st.dim, st.metric, st.model) == \
            ("docs", 1, True, 8, "l2", "enc@1.0.0")
        assert (st.rows, st.tombstones, st.positions) == (7, 4, 11)
        assert st.tombstone_ratio == pytest.approx(4 / 11)
        assert st.index_active == "Flat" and st.index_info is None
        assert db.version_statuses() == [st]
        status = db.status()
        assert status.lsn == db.lsn == status.logged_lsn == 4
        assert status.checkpoint_lsn == 0 and status.records_since_checkpoint == 4
        assert db.checkpoint() == 4
        status = db.status()
        assert status.checkpoint_lsn == 4 and status.records_since_checkpoint == 0
        assert status.checkpoint_time is not None
        assert status.counters["vectors_written"] == 11
        assert status.wal_segments >= 1 and status.wal_bytes > 0
        assert status.failed is None and status.namespaces == 1 and status.versions == 1
        with pytest.raises(dataclasses.FrozenInstanceError):
            status.lsn = 0


def test_version_status_of_a_trained_index_counts_rows_since_training(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("v", dim=8, metric="l2", index="IVF8,PQ4x8")
        ns.upsert(list(range(2000)), rows(2000))
        ns.build_index()
        ns.upsert(list(range(2000, 2050)), rows(50, seed=3))
        st = db.version_status("v")
        assert st.index_active == "IVF8,PQ4x8" and st.index_info["nlist"] == 8
        assert st.rows_since_training == 50
        ratio, new = ns.index_drift(100)
        assert new == 50 and ratio > 0


def test_version_status_names_a_missing_namespace(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        with pytest.raises(sv.NamespaceNotFound, match="nope"):
            db.version_status("nope")


# --------------------------------------------------------------------------- observers

def test_observer_sees_operations_queries_and_checkpoints(tmp_path):
    db = EngineDatabase(tmp_path / "db", checkpoint_interval=0, auto_index=False)
    try:
        rec = Recorder()
        db.add_observer(rec)
        db.add_observer(rec)                            # registered once
        ns = db.create_namespace("docs", dim=8, metric="l2")
        ns.upsert([1, 2, 3], rows(3))
        ns.query(rows(1)[0], k=2)
        ns.get([1])
        ns.delete([2])
        with pytest.raises(sv.DimensionMismatch):
            ns.query(np.ones(3, np.float32))
        ops = [(op, name, ok) for op, name, _, ok, _ in rec.operations]
        assert ops == [("upsert", "docs", True), ("query", "docs", True), ("get", "docs", True),
                       ("delete", "docs", True), ("query", "docs", False)]
        assert all(s >= 0 and c >= 0 for _, _, s, _, c in rec.operations)
        assert len(rec.queries) == 1
        name, plan, shape = rec.queries[0]
        assert name == "docs" and plan.index == "flat" and shape == (1, 8)
        assert db.checkpoint() == rec.checkpoints[-1] == db.lsn
        db.remove_observer(rec)
        ns.get([1])
        assert len(rec.operations) == 5
    finally:
        db.close()


def test_an_exploding_observer_never_fails_the_operation(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        db.add_observer(Exploding())
        ns = db.create_namespace("docs", dim=8)
        ns.upsert(["a"], rows(1))
        assert ns.query(rows(1)[0], k=1)[0].id == "a"
        status = db.status()
        assert status.observer_errors == 3              # upsert, query record, query timing
        assert "Exploding" in status.observer_last_error and "observer bug" in \
            status.observer_last_error
        assert db.latency(op="query")[0].count == 1     # the ops observer still ran


def test_add_observer_rejects_what_is_not_an_observer(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        with pytest.raises(sv.InvalidInput, match="Observer"):
            db.add_observer(lambda *a: None)


def test_ops_wraps_the_engine_instead_of_subclassing_it(tmp_path):
    assert not issubclass(sv.Database, EngineDatabase)
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        assert isinstance(db, sv.Database) and isinstance(db.engine, EngineDatabase)
        assert db.path == db.engine.path and db.lsn == db.engine.lsn
        ns = db.create_namespace("docs", dim=4)
        ns.upsert(["a"], np.ones((1, 4), np.float32))
        assert db.status().lsn == db.engine.status().lsn == db.lsn == 2
    assert db.closed and db.engine.closed
    with pytest.raises(sv.ClosedError):
        db.health()


def test_ops_and_bindings_touch_no_private_name_of_another_layer():
    """docs/architecture.md, "The boundary between layers": `grep -rn "\\._[a-z]" ops/
    bindings/` finds only an object's own private names (``self._x``) and the package's
    own private modules (``simplevector._output``)."""
    offenders = []
    for folder in ("ops", "bindings"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#")[0]
                for m in re.finditer(r"([\w\]\)]+)\._[a-z]\w*", code):
                    if m.group(1) in ("self", "simplevector", "cls"):
                        continue
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert offenders == []


# --------------------------------------------------------------------------- JIT time

def test_jit_compilation_is_excluded_from_the_latency_and_counted_apart(tmp_path, monkeypatch):
    """An operation that compiles a kernel reports the compile time separately: the
    recorded latency is the wall time minus the compilation."""
    @numba.njit(cache=False)
    def fresh_kernel(x):                    # a new function: its first call compiles
        return x * 2 + 1

    real = namespace_mod.compile_filter

    def compiling_filter(where):
        fresh_kernel(np.arange(3.0))
        return real(where)
    monkeypatch.setattr(namespace_mod, "compile_filter", compiling_filter)
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        rec = Recorder()
        db.add_observer(rec)
        ns = db.create_namespace("docs", dim=4)
        ns.upsert(["a"], np.ones((1, 4), np.float32), metadata=[{"k": 1}])
        before = compile_clock.total_seconds
        t0 = time.perf_counter()
        ns.query(np.ones(4, np.float32), k=1, where={"k": 1})
        wall = time.perf_counter() - t0
        op, _, seconds, ok, compiled = rec.operations[-1]
        assert op == "query" and ok
        assert compiled > 0 and compile_clock.total_seconds - before >= compiled
        assert seconds + compiled <= wall
        recorded = db.latency(op="query")[0]
        assert recorded.count == 1
        assert recorded.max == pytest.approx(seconds, rel=0.01)
        text = db.metrics_text()
        line = next(x for x in text.splitlines()
                    if x.startswith("simplevector_process_kernel_compile_seconds_total"))
        assert float(line.split()[-1]) >= compiled


# --------------------------------------------------------------------------- counters

def test_every_total_counter_is_a_lifetime_total_across_reopen(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns = db.create_namespace("docs", dim=4, metric="l2")
        ns.upsert(list(range(300)), rows(300, 4))
        ns.query(rows(1, 4)[0], k=3)
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns = db.namespace("docs")
        ns.upsert(list(range(300, 305)), rows(5, 4))
        ns.delete([0])
        text = db.metrics_text()
    assert "simplevector_queries_total" not in text     # counted once, as operations_total
    values = {line.split()[0]: float(line.split()[-1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["simplevector_vectors_written_total"] == 305
    assert values["simplevector_vectors_deleted_total"] == 1
    assert values["simplevector_writes_total"] == 4
    assert values['simplevector_operations_total{namespace="docs",op="query"}'] == 1


# --------------------------------------------------------------------------- planner

def test_planner_rules():
    assert planner.flat_plan(False, 10, 100) == "flat"
    assert planner.flat_plan(True, 24, 100) == "flat-subset"
    assert planner.flat_plan(True, 25, 100) == "flat"
    common = dict(k=10, nprobe=None, refine=None, spec_nprobe=8, spec_refine=4, nlist=64,
                  has_codes=True, dim=16, list_cost=4 * 256 + 16, code_cost=4, live=10_000)

    def plan(**kw):
        c = planner.ivf_plan(**{**common, **kw})
        return c.index, c.nprobe, c.refine, c.candidates, c.max_lists, c.min_lists

    assert plan(filtered=False, matched=10_000) == ("ivf", 8, 4, 40, 8, -1)
    # a filter matching every row: widened (at most 2 x 8 / 1 lists), IVF cheaper than exact
    assert plan(filtered=True, matched=10_000) == ("ivf", 8, 4, 40, 16, 8)
    # 5% match: ~160 lists > nlist would be opened; exact over 500 rows is cheaper
    assert plan(filtered=True, matched=500) == ("flat-subset", 8, 4, 500, 0, -1)
    # no more rows match than k x refine candidates: exact
    assert plan(filtered=True, matched=40)[0] == "flat-subset"
    assert plan(filtered=False, matched=10, nprobe=999, refine=2) == ("ivf", 64, 2, 20, 64, -1)
    assert planner.default_nprobe(1024) == 64 and planner.default_nprobe(64) == 8
    assert planner.default_nprobe(4) == 4 and planner.default_nprobe(1024, 5) == 5
    assert planner.use_blas_scan(1 << 20) and not planner.use_blas_scan((1 << 20) - 1)


# --------------------------------------------------------------------------- WAL rule

def _segment(tmp_path, n=5):
    with WriteAheadLog(tmp_path / "wal") as wal:
        for lsn in range(1, n + 1):
            wal.append(lsn, bytes([lsn]) * 100)
        wal.sync()
    (path, _), = walformat._list_segments(str(tmp_path / "wal"))
    return path


def _damage_last_frame(path):
    with open(path, "r+b") as f:
        f.seek(-3, os.SEEK_END)
        f.write(b"\xff\xff\xff")


def _scan(path):
    stop = walformat._Stop()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        assert walformat._read_header(f, path, 1, size)
        got = [lsn for lsn, *_ in walformat._frames(f, path, walformat._HEADER.size, size, 0,
                                                    1, stop)]
    return got, stop


def test_wal_rule_a_damaged_last_frame_is_a_torn_tail(tmp_path):
    path = _segment(tmp_path)
    _damage_last_frame(path)
    got, stop = _scan(path)
    assert got == [1, 2, 3, 4] and stop.reason == "fails its checksum"
    assert walformat.bad_frame_error(path, stop, 4, None) is None


def test_wal_rule_a_damaged_middle_frame_is_corruption_naming_file_and_offset(tmp_path):
    path = _segment(tmp_path)
    frame = walformat._FRAME.size + 100
    with open(path, "r+b") as f:
        f.seek(walformat._HEADER.size + 2 * frame + 20)     # inside record 3's payload
        f.write(b"\x00\x01\x02")
    got, stop = _scan(path)
    assert got == [1, 2]
    err = walformat.bad_frame_error(path, stop, 2, None)
    assert isinstance(err, sv.CorruptionError)
    assert path in str(err) and f"offset {stop.offset}" in str(err)
    assert "not a torn tail" in str(err)


def test_wal_rule_a_bad_frame_before_a_later_segment_is_corruption(tmp_path):
    path = _segment(tmp_path)
    _damage_last_frame(path)
    _, stop = _scan(path)
    err = walformat.bad_frame_error(path, stop, 4, "later.wal")
    assert isinstance(err, sv.CorruptionError) and "later segment later.wal" in str(err)


def test_compile_clock_installed_mid_compilation_ignores_the_end_it_did_not_see():
    """A thread whose compilation began before the clock was installed sees only its end
    event: the clock counts nothing for it and does not raise inside numba's compiler
    lock (which would fail that compilation)."""
    from simplevector.engine.observer import CompileClock
    clock = CompileClock()
    clock._end()                            # no _start seen on this thread
    assert (clock.total_seconds, clock.compilations, clock.thread_seconds()) == (0.0, 0, 0.0)
    clock._start()
    clock._start()                          # nested: only the outermost counts
    clock._end()
    assert clock.compilations == 0
    clock._end()
    assert clock.compilations == 1 and clock.thread_seconds() > 0.0
    clock._end()                            # one end too many: still nothing
    assert clock.compilations == 1
