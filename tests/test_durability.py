"""Durability: kill -9 crash loops, recovery from torn and corrupt WAL, read-only followers,
locking, closing, checkpoints and replay, the change feed, format versions, map growth."""

import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time

import lmdb
import msgpack
import numpy as np
import pytest

import simplevector as sv
from simplevector.engine import schema

sys.path.insert(0, os.path.dirname(__file__))
import _crash_child as child  # noqa: E402

CHILD = os.path.join(os.path.dirname(__file__), "_crash_child.py")
WAL_HEADER = 14          # magic(5) version(1) first_lsn(8)
FRAME_HEAD = 17          # length u32, crc u32, lsn u64, flags u8


def spawn(*args, stdin=None):
    return subprocess.Popen([sys.executable, CHILD, *map(str, args)], stdout=subprocess.PIPE,
                            stdin=stdin, stderr=subprocess.PIPE, text=True, bufsize=1)


class LineReader:
    """Drains a child's stdout on a thread so the pipe never fills."""

    def __init__(self, proc):
        self.lines = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(proc.stdout,), daemon=True)
        self._thread.start()

    def _run(self, stream):
        for line in stream:
            if not line.endswith("\n"):     # a line cut short by the kill is not an ack
                break
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self.lines.append(None)
            self._cond.notify_all()

    def wait_for(self, count, timeout=60.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.lines) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"child printed only {self.lines!r}"
                self._cond.wait(left)
            line = self.lines[count - 1]
            assert line is not None, "child exited early"
            return line

    def finish(self):
        self._thread.join(30)
        return [line for line in self.lines if line is not None]


def kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def wal_frames(path):
    """(segment path, offset, length, lsn) of every frame, by the documented WAL format."""
    out = []
    waldir = os.path.join(path, "wal")
    for name in sorted(os.listdir(waldir)):
        if not name.endswith(".wal"):
            continue
        seg = os.path.join(waldir, name)
        data = open(seg, "rb").read()
        off = WAL_HEADER
        while off + FRAME_HEAD <= len(data):
            length, _crc, lsn, _flags = struct.unpack_from("<IIQB", data, off)
            if off + 8 + length > len(data):
                break
            out.append((seg, off, length, lsn))
            off += 8 + length
    return out


def flip_byte(seg, offset):
    with open(seg, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))


def write_batches(ns, batches):
    lsns = []
    for b in batches:
        lsns.append(ns.upsert(child.batch_ids(b), child.batch_vectors(b),
                              metadata=[{"batch": b}] * child.BATCH_ROWS))
    return lsns


def assert_batches_present(ns, batches):
    for b in batches:
        recs = ns.get(child.batch_ids(b), include=("vectors", "metadata"))
        assert all(r is not None for r in recs), f"batch {b} is missing rows"
        got = np.stack([r.vector for r in recs])
        np.testing.assert_array_equal(got, child.batch_vectors(b))
        assert all(r.metadata == {"batch": b} for r in recs)


# -- crash loop -------------------------------------------------------------------------
def test_kill9_loop_keeps_every_acknowledged_batch_and_never_a_partial_one(tmp_path):
    path = tmp_path / "db"
    rng = random.Random(1234)
    next_batch = 0
    acked_max_lsn = 0
    present = set()          # batches the database holds after the last reopen
    replayed = []
    for round_no in range(8):
        interval = 0 if round_no % 2 == 0 else 0.02   # odd rounds checkpoint (and truncate)
        first = next_batch
        proc = spawn("loop", path, first, interval)
        reader = LineReader(proc)
        assert reader.wait_for(1) == "ready"
        time.sleep(rng.uniform(0.05, 0.5))
        kill(proc)
        lines = reader.finish()[1:]
        acked = [tuple(map(int, line.split())) for line in lines]
        assert [b for b, _ in acked] == list(range(first, first + len(acked)))
        lsns = [lsn for _, lsn in acked]
        assert lsns == sorted(set(lsns)), "LSNs of one run must strictly increase"
        if lsns:
            assert lsns[0] > acked_max_lsn, "an LSN was reused after a crash"
            acked_max_lsn = lsns[-1]

        with sv.open(path, checkpoint_interval=0) as db:
            replayed.append(db.replayed_records)
            assert db.replayed_records >= 0
            assert db.lsn >= acked_max_lsn
            ns = db.namespace(child.NS)
            assert_batches_present(ns, [b for b, _ in acked])
            # the batch in flight at the kill: all of it or none of it
            inflight = first + len(acked)
            rows = ns.get(child.batch_ids(inflight))
            assert all(r is None for r in rows) or all(r is not None for r in rows), \
                f"batch {inflight} is partially present"
            present.update(b for b, _ in acked)
            if rows[0] is not None:
                assert_batches_present(ns, [inflight])
                present.add(inflight)
            assert ns.count() == len(present) * child.BATCH_ROWS
            # the checksums written with each batch agree with what survived the kill
            report = db.verify()
            assert report.ok, report.problems
            next_batch = inflight + 1
            acked_max_lsn = max(acked_max_lsn, db.lsn)
    print(f"replayed_records per reopen: {replayed}")
    with sv.open(path, checkpoint_interval=0) as db:
        assert_batches_present(db.namespace(child.NS), sorted(present))
        assert db.namespace(child.NS).upsert(["after"], np.ones((1, child.DIM))) > acked_max_lsn


def test_checkpoint_then_kill_replays_nothing(tmp_path):
    path = tmp_path / "db"
    proc = spawn("ckpt", path, 3, 0)
    reader = LineReader(proc)
    assert reader.wait_for(1).startswith("done")
    kill(proc)
    with sv.open(path, checkpoint_interval=0) as db:
        assert db.replayed_records == 0
        assert_batches_present(db.namespace(child.NS), range(3))


def test_lmdb_behind_the_wal_replays_the_tail(tmp_path):
    # A crash of the OS may lose LMDB commits made after the last checkpoint (LMDB runs
    # without its own sync): restore LMDB as of the checkpoint and recovery must replay them.
    path = tmp_path / "db"
    proc = spawn("ckpt", path, 3, 4)
    reader = LineReader(proc)
    line = reader.wait_for(1)
    assert line.startswith("done")
    last_lsn = int(line.split()[1])
    kill(proc)
    os.replace(path / "data.mdb.ckpt", path / "lmdb" / "data.mdb")
    with sv.open(path, checkpoint_interval=0) as db:
        assert db.replayed_records == 4
        assert db.lsn == last_lsn
        ns = db.namespace(child.NS)
        assert_batches_present(ns, range(7))
        assert ns.count() == 7 * child.BATCH_ROWS
    with sv.open(path, checkpoint_interval=0) as db:
        assert db.replayed_records == 0


# -- reopen, close, lock, read-only ---------------------------------------------------------
def test_reopen_keeps_namespaces_rows_metadata_and_documents(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0) as db:
        ns = db.create_namespace("docs", dim=3, metric="ip", model="m@1.2.3")
        ns.upsert([1, "a"], [[1, 2, 3], [4, 5, 6]], metadata=[{"k": [1, {"n": None}]}, None],
                  documents=["one", None])
        ns.delete([1])
        ns.upsert(["b"], [[0, 0, 1]])
        lsn = db.lsn
    with sv.open(path, checkpoint_interval=0) as db:
        assert db.lsn == lsn
        ns = db.namespace("docs")
        assert (ns.dim, ns.metric, ns.model) == (3, "ip", "m@1.2.3")
        assert ns.count() == 2
        a, one, b = ns.get(["a", 1, "b"], include=("metadata", "documents", "vectors"))
        assert one is None
        assert a.metadata is None and a.document is None
        np.testing.assert_array_equal(a.vector, [4, 5, 6])
        np.testing.assert_array_equal(b.vector, [0, 0, 1])
        assert [h.id for h in ns.query([1, 1, 1], k=5)] == ["a", "b"]


def test_reopen_keeps_metadata_and_documents_of_live_rows(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0) as db:
        ns = db.create_namespace("docs", dim=2)
        ns.upsert([7], [[1, 0]], metadata=[{"k": [1, {"n": None}], "s": "x"}],
                  documents=["seven"])
    with sv.open(path, checkpoint_interval=0) as db:
        rec = db.namespace("docs").get(7)
        assert rec.metadata == {"k": [1, {"n": None}], "s": "x"}
        assert rec.document == "seven"
        assert [h.id for h in db.namespace("docs").query([1, 0], k=1, where={"s": "x"})] == [7]


def test_second_writer_process_gets_locked_error_immediately(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0):
        proc = spawn("try-writer", path)
        out, err = proc.communicate(timeout=120)
        name, is_storage, seconds = out.split()
        assert name == "LockedError", err
        assert is_storage == "True"
        assert float(seconds) < 5.0   # flock(LOCK_NB): fails instead of waiting


def test_second_writer_in_same_process_gets_locked_error(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0):
        with pytest.raises(sv.LockedError):
            sv.open(tmp_path / "db", checkpoint_interval=0)


def test_readonly_process_sees_commits_and_catches_up(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0) as db:
        ns = db.create_namespace("live", dim=4)
        ns.upsert(list(range(10)), np.random.default_rng(0).standard_normal((10, 4)))
        proc = spawn("reader", path, stdin=subprocess.PIPE)
        reader = LineReader(proc)
        try:
            assert reader.wait_for(1) == "ready"
            proc.stdin.write("live\n")
            proc.stdin.flush()
            assert reader.wait_for(2) == "10"
            ns.upsert(list(range(10, 25)), np.random.default_rng(1).standard_normal((15, 4)))
            ns.delete([0, 1])
            db.create_namespace("later", dim=2).upsert(["x"], [[1, 2]])
            proc.stdin.write("live\nlater\nlsn\n")
            proc.stdin.flush()
            assert reader.wait_for(3) == "23"
            assert reader.wait_for(4) == "1"
            assert int(reader.wait_for(5)) == db.lsn
        finally:
            proc.stdin.close()
            proc.wait(30)
    assert proc.returncode == 0, proc.stderr.read()


def test_writes_on_readonly_database_raise_read_only_error(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0) as db:
        db.create_namespace("ns", dim=2).upsert(["a"], [[1, 0]])
    with sv.open(path, readonly=True) as db:
        ns = db.namespace("ns")
        lsn = db.lsn
        with pytest.raises(sv.ReadOnlyError):
            ns.upsert(["b"], [[0, 1]])
        with pytest.raises(sv.ReadOnlyError):
            ns.delete(["a"])
        with pytest.raises(sv.ReadOnlyError):
            db.create_namespace("other", dim=2)
        with pytest.raises(sv.ReadOnlyError):
            db.drop_namespace("ns")
        with pytest.raises(sv.ReadOnlyError):
            db.checkpoint()
        assert db.lsn == lsn
        assert ns.count() == 1
        assert ns.query([1, 0], k=1)[0].id == "a"


def test_readonly_open_of_missing_database_raises_storage_error(tmp_path):
    with pytest.raises(sv.StorageError):
        sv.open(tmp_path / "nothing", readonly=True)
    assert not (tmp_path / "nothing").exists()


def test_use_after_close_raises_closed_error(tmp_path):
    db = sv.open(tmp_path / "db", checkpoint_interval=0)
    ns = db.create_namespace("ns", dim=2)
    ns.upsert(["a"], [[1, 0]])
    db.close()
    for call in (lambda: ns.upsert(["b"], [[0, 1]]), lambda: ns.query([1, 0]),
                 lambda: ns.get(["a"]), lambda: ns.count(), lambda: ns.delete(["a"]),
                 lambda: db.lsn, lambda: db.namespace("ns"), lambda: db.list_namespaces(),
                 lambda: db.create_namespace("x", dim=2), lambda: db.checkpoint(),
                 lambda: db.changes(), lambda: db.info()):
        with pytest.raises(sv.ClosedError):
            call()


def test_double_close_is_harmless(tmp_path):
    db = sv.open(tmp_path / "db", checkpoint_interval=0)
    db.close()
    db.close()
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db2:
        db2.close()


# -- WAL damage -------------------------------------------------------------------------------
def _db_with_batches(path, n):
    db = sv.open(path, checkpoint_interval=0)
    ns = db.create_namespace(child.NS, dim=child.DIM, metric="l2")
    lsns = write_batches(ns, range(n))
    db.close()
    return lsns


def test_torn_wal_tail_cut_mid_record_recovers_everything_before_it(tmp_path):
    path = tmp_path / "db"
    lsns = _db_with_batches(path, 5)
    seg, off, length, lsn = wal_frames(path)[-1]
    assert lsn == lsns[-1]
    with open(seg, "r+b") as f:
        f.truncate(off + 8 + length // 2)
    with sv.open(path, checkpoint_interval=0) as db:
        ns = db.namespace(child.NS)
        assert_batches_present(ns, range(4))
        new_lsn = ns.upsert(["new"], np.ones((1, child.DIM)))
        assert new_lsn > lsns[-1]
    with sv.open(path, checkpoint_interval=0) as db:      # the log stays readable
        assert db.namespace(child.NS).get("new") is not None
        assert [c.lsn for c in db.changes()] == sorted({c.lsn for c in db.changes()})


def test_garbage_after_the_last_record_is_cut_off(tmp_path):
    path = tmp_path / "db"
    lsns = _db_with_batches(path, 3)
    seg = wal_frames(path)[-1][0]
    with open(seg, "ab") as f:
        f.write(struct.pack("<IIQB", 500, 0, lsns[-1] + 1, 0) + b"\x01" * 40)   # half a frame
    with sv.open(path, checkpoint_interval=0) as db:
        ns = db.namespace(child.NS)
        assert_batches_present(ns, range(3))
        assert ns.upsert(["new"], np.ones((1, child.DIM))) == lsns[-1] + 1
    with sv.open(path, checkpoint_interval=0) as db:
        assert db.namespace(child.NS).get("new") is not None


def test_flipped_byte_in_last_record_is_treated_as_torn_tail(tmp_path):
    path = tmp_path / "db"
    _db_with_batches(path, 4)
    seg, off, length, _lsn = wal_frames(path)[-1]
    flip_byte(seg, off + 8 + length - 3)
    with sv.open(path, checkpoint_interval=0) as db:
        assert_batches_present(db.namespace(child.NS), range(3))


def test_flipped_byte_in_older_record_raises_corruption_error_naming_segment(tmp_path):
    path = tmp_path / "db"
    _db_with_batches(path, 4)
    frames = wal_frames(path)
    seg, off, length, _lsn = frames[2]             # an upsert in the middle of the log
    flip_byte(seg, off + 8 + length - 5)
    with pytest.raises(sv.CorruptionError) as info:
        sv.open(path, checkpoint_interval=0)
    assert os.path.basename(seg) in str(info.value)
    assert str(off) in str(info.value)
    # the failed open released the lock: the directory is not left locked
    with pytest.raises(sv.CorruptionError):
        sv.open(path, checkpoint_interval=0)


def test_flipped_byte_in_older_record_is_detected_by_readonly_open(tmp_path):
    path = tmp_path / "db"
    _db_with_batches(path, 4)
    seg, off, length, _lsn = wal_frames(path)[1]
    flip_byte(seg, off + 8 + length - 5)
    with pytest.raises(sv.CorruptionError):
        sv.open(path, readonly=True)


# -- change feed, checkpoints -------------------------------------------------------------------
def test_changes_returns_committed_changes_in_lsn_order(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns = db.create_namespace("feed", dim=2)
        l1 = ns.upsert(["a", 1], [[1, 0], [0, 1]])
        l2 = ns.upsert(["b"], [[1, 1]])
        ns.delete(["a"])
        db.create_version("feed")
        db.promote("feed", 2)
        changes = list(db.changes())
        assert [c.lsn for c in changes] == list(range(1, db.lsn + 1))
        assert [c.op for c in changes] == [
            "create_namespace", "upsert", "upsert", "delete", "create_version", "promote"]
        assert changes[1].ids == ("a", 1) and changes[1].lsn == l1
        assert changes[3].ids == ("a",)
        assert all(c.namespace == "feed" for c in changes)
        assert [c.lsn for c in db.changes(since=l2)] == list(range(l2 + 1, db.lsn + 1))
        assert list(db.changes(since=db.lsn)) == []


def test_changes_survive_reopen(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0) as db:
        db.create_namespace("feed", dim=2).upsert(["a"], [[1, 0]])
    with sv.open(path, checkpoint_interval=0) as db:
        assert [(c.lsn, c.op) for c in db.changes()] == [(1, "create_namespace"), (2, "upsert")]


def test_changes_rejects_invalid_since(db):
    for bad in (-1, "0", 1.5, True):
        with pytest.raises(sv.InvalidInput):
            db.changes(since=bad)


def test_checkpoint_then_reopen_replays_nothing(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0) as db:
        ns = db.create_namespace("c", dim=2)
        ns.upsert(["a"], [[1, 0]])
        assert db.checkpoint() == db.lsn
        assert db.info()["checkpoint_lsn"] == db.lsn
    with sv.open(path, checkpoint_interval=0) as db:
        assert db.replayed_records == 0
        assert db.namespace("c").count() == 1


def test_checkpoint_with_small_wal_keep_truncates_and_feed_reports_gap(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0, wal_keep_bytes=0) as db:
        ns = db.create_namespace("c", dim=2)
        db.engine._wal._segment_bytes = 4096        # force several segments
        for i in range(60):
            ns.upsert([i], [[i, 1]], metadata=[{"pad": "x" * 100}])
        lsn = db.checkpoint()
        # nothing pins the WAL and no tail is kept: every segment goes, the active one too
        assert db.info()["wal_first_lsn"] is None and db.info()["wal_bytes"] == 0
        with pytest.raises(sv.ChangeFeedGap):
            db.changes(since=0)
        assert list(db.changes(since=lsn)) == []         # nothing missing at the head
    with sv.open(path, checkpoint_interval=0) as db:
        assert db.replayed_records == 0
        assert db.namespace("c").count() == 60
        assert db.namespace("c").upsert(["new"], [[1, 1]]) == lsn + 1


def test_background_checkpointer_records_checkpoint(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0.05) as db:
        db.create_namespace("c", dim=2).upsert(["a"], [[1, 0]])
        target = db.lsn
        deadline = time.monotonic() + 30
        while db.info()["checkpoint_lsn"] < target and time.monotonic() < deadline:
            time.sleep(0.02)
        assert db.info()["checkpoint_lsn"] == target


# -- format, map growth --------------------------------------------------------------------------
def test_format_version_mismatch_raises_format_version_error(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0) as db:
        db.create_namespace("f", dim=2)
    env = lmdb.open(str(path / "lmdb"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"format_version", msgpack.packb(99), db=env.open_db(b"meta", txn=txn))
    env.close()
    with pytest.raises(sv.FormatVersionError) as info:
        sv.open(path, checkpoint_interval=0)
    assert isinstance(info.value, sv.StorageError)
    assert "99" in str(info.value) and str(schema.FORMAT_VERSION) in str(info.value)
    # the failed open left nothing locked
    env = lmdb.open(str(path / "lmdb"), max_dbs=16)
    with env.begin(write=True) as txn:
        txn.put(b"format_version", msgpack.packb(schema.FORMAT_VERSION),
                db=env.open_db(b"meta", txn=txn))
    env.close()
    with sv.open(path, checkpoint_interval=0) as db:
        assert db.namespace("f").dim == 2


def test_ingest_beyond_the_initial_lmdb_map_grows_it(tmp_path):
    """Rows live in the row file; documents (here 500 bytes each, 100 MB in all) fill LMDB."""
    rng = np.random.default_rng(7)
    with sv.open(tmp_path / "db", durability="async", checkpoint_interval=0) as db:
        ns = db.create_namespace("big", dim=8, metric="l2", index="flat")
        initial = db.info()["map_size"]
        assert initial == 64 << 20
        batch = 20_000
        for start in range(0, 200_000, batch):
            X = rng.standard_normal((batch, 8), dtype=np.float32)
            ns.upsert(list(range(start, start + batch)), X,
                      documents=[f"{i:08d}" + "d" * 492 for i in range(start, start + batch)])
        assert ns.count() == 200_000
        assert ns.get(123_456).document.startswith("00123456")
        assert db.info()["map_size"] > initial
        last = ns.get([199_999], include=("vectors",))[0]
        np.testing.assert_array_equal(last.vector, X[-1])
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns = db.namespace("big")
        assert ns.count() == 200_000
        hit = ns.query(X[-1], k=1)[0]
        assert hit.id == 199_999


def test_a_write_that_fails_after_its_wal_append_says_it_is_durable(tmp_path, monkeypatch):
    """Disk full (or any I/O error) while applying a logged write: the error names the LSN
    and says the write is in the WAL (not lost, and not to be repeated); once the cause is
    gone the next write applies it first, without a reopen (tests/test_diskfull.py has
    more)."""
    from simplevector.engine import apply as apply_mod

    db = sv.open(tmp_path / "db", checkpoint_interval=0)
    ns = db.create_namespace("docs", dim=3, metric="l2")
    ns.upsert(["a"], [[1, 2, 3]])
    real = apply_mod.Applier._write

    def failing(self, lsn, fn):
        raise sv.StorageError("mdb_txn_commit: Input/output error")
    monkeypatch.setattr(apply_mod.Applier, "_write", failing)
    with pytest.raises(sv.StorageError, match="write 3 is durable in the write-ahead log") \
            as info:
        ns.upsert(["b"], [[4, 5, 6]])
    assert info.value.lsn == 3 and info.value.durable
    assert "do not repeat this write" in str(info.value)
    monkeypatch.setattr(apply_mod.Applier, "_write", real)
    assert ns.upsert(["c"], [[7, 8, 9]]) == 4          # b is applied first, then c
    assert db.namespace("docs").count() == 3
    db.close()
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        got = db.namespace("docs").get(["a", "b", "c"], include=("vectors",))
        np.testing.assert_array_equal(got[1].vector, [4, 5, 6])
        np.testing.assert_array_equal(got[2].vector, [7, 8, 9])
        assert db.lsn == 4
