"""A full disk (engine/database.py): DiskFullError before the WAL append while free space is
under the reserve, writes resuming by themselves, a failed apply after the append applied
without a reopen; a real 40 MB tmpfs; docs/runbook.md "Disk full" run as written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import simplevector as sv
from simplevector.engine import store as store_mod
from simplevector.engine.database import DISK_RESERVE_FLOOR

from _runbook import runbook_commands  # noqa: E402

DIM = 16


class Disk:
    """An injectable free-space probe: ``free`` bytes, whatever the real disk says."""

    def __init__(self, free):
        self.free = free
        self.calls = 0

    def __call__(self, path):
        self.calls += 1
        return self.free


def _rows(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def test_a_write_under_the_reserve_raises_disk_full_before_the_wal_append(tmp_path):
    disk = Disk(1 << 40)
    with sv.open(tmp_path / "db", checkpoint_interval=0, disk_free_probe=disk) as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        X = _rows(20)
        ns.upsert([f"a{i}" for i in range(10)], X[:10])
        before = db.status()
        disk.free = DISK_RESERVE_FLOOR                  # under floor + 3x any batch
        with pytest.raises(sv.DiskFullError, match="nothing was written") as info:
            ns.upsert([f"b{i}" for i in range(10)], X[10:])
        err = info.value
        assert isinstance(err, sv.StorageError)
        assert (err.code, err.http_status) == ("disk_full", 507)
        assert str(DISK_RESERVE_FLOOR) in str(err)
        with pytest.raises(sv.DiskFullError):
            db.create_namespace("other", dim=DIM)       # catalog changes too
        after = db.status()
        assert (after.lsn, after.logged_lsn, after.wal_bytes) == (
            before.lsn, before.logged_lsn, before.wal_bytes)   # not in the WAL
        assert after.disk_full_refusals == 2 and after.failed is None and db.writable
        assert ns.count() == 10                         # reads go on
        assert ns.query(X[0], k=1)[0].id == "a0"
        disk.free = 1 << 40                             # space returns: no reopen needed
        lsn = ns.upsert([f"b{i}" for i in range(10)], X[10:])
        assert lsn == before.lsn + 1 and ns.count() == 20
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        assert db.namespace("docs").count() == 20 and "other" not in [
            n.name for n in db.list_namespaces()]


def test_the_reserve_is_sized_to_the_batch_and_disk_reserve_zero_turns_it_off(tmp_path):
    disk = Disk(0)
    with sv.open(tmp_path / "db", checkpoint_interval=0, disk_free_probe=disk,
                 disk_reserve=1 << 20) as db:
        assert db.disk_reserve_for(1000) == (1 << 20) + 3000
        disk.free = (1 << 20) + 100_000
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        ns.upsert(["small"], _rows(1))                  # ~100 bytes x3 fits
        with pytest.raises(sv.DiskFullError):
            ns.upsert([f"r{i}" for i in range(2000)], _rows(2000))   # 128 KB x3 does not
        assert ns.count() == 1
    with sv.open(tmp_path / "db2", checkpoint_interval=0, disk_free_probe=Disk(0),
                 disk_reserve=0) as db:
        assert db.disk_reserve_for(10**9) == 0
        db.create_namespace("docs", dim=DIM).upsert(["x"], _rows(1))
    for bad in ({"disk_reserve": -1}, {"disk_reserve": 2.5}, {"disk_free_probe": 3}):
        with pytest.raises(sv.InvalidInput):
            sv.open(tmp_path / "bad", **bad)


def test_health_reports_the_free_space_the_probe_sees(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0, disk_free_probe=Disk(12345)) as db:
        assert db.status().disk_free == 12345 and db.disk_free() == 12345


class FailingApply:
    """Make every LMDB write of the process fail while ``on`` (a full disk after the WAL
    append), through the store's one write path."""

    def __init__(self, monkeypatch):
        self.on = False
        real = store_mod.Store.write_with_retry

        def write_with_retry(store, fn):
            if self.on:
                raise sv.StorageError("LMDB write failed: No space left on device (injected)")
            return real(store, fn)
        monkeypatch.setattr(store_mod.Store, "write_with_retry", write_with_retry)


def test_a_failed_apply_is_durable_and_applied_by_the_next_write_without_reopen(
        tmp_path, monkeypatch):
    fail = FailingApply(monkeypatch)
    X = _rows(30)
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        ns.upsert([f"a{i}" for i in range(10)], X[:10])
        fail.on = True
        with pytest.raises(sv.StorageError, match="durable") as info:
            ns.upsert([f"b{i}" for i in range(10)], X[10:20])
        err = info.value
        assert err.durable is True and err.lsn == db.status().logged_lsn == db.lsn + 1
        assert str(err.lsn) in str(err)
        assert db.writable and db.status().unapplied == 1
        finding = db.health().find("unapplied_writes")[0]
        assert finding.severity == "critical" and finding.value == 1
        logged = db.status().logged_lsn
        with pytest.raises(sv.StorageError, match="refused before it was logged"):
            ns.upsert(["c0"], X[20:21])                 # still failing: not logged at all
        assert db.status().logged_lsn == logged
        assert ns.count() == 10                         # reads go on
        fail.on = False
        lsn = ns.upsert(["c0"], X[20:21])               # applies b* first, then itself
        assert lsn == logged + 1 and db.status().unapplied == 0
        assert ns.count() == 21
        got = ns.get([f"b{i}" for i in range(10)], include=("vectors",))
        np.testing.assert_array_equal(np.stack([r.vector for r in got]), X[10:20])
        assert db.counters["writes"] == 4
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        assert db.namespace("docs").count() == 21 and db.lsn == lsn


def test_a_failed_apply_is_applied_by_the_background_checkpointer(tmp_path, monkeypatch):
    fail = FailingApply(monkeypatch)
    with sv.open(tmp_path / "db", checkpoint_interval=0.05) as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        fail.on = True
        with pytest.raises(sv.StorageError, match="durable"):
            ns.upsert(["x"], _rows(1))
        fail.on = False
        deadline = time.monotonic() + 30
        while db.status().unapplied:                    # no write, no reopen
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert ns.count() == 1


def test_a_failed_catalog_change_is_applied_before_the_next_write(tmp_path, monkeypatch):
    fail = FailingApply(monkeypatch)
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        fail.on = True
        with pytest.raises(sv.StorageError, match="durable"):
            db.create_namespace("docs", dim=DIM, metric="l2")
        fail.on = False
        ns = db.create_namespace("other", dim=DIM)      # drains the create of docs first
        assert sorted(n.name for n in db.list_namespaces()) == ["docs", "other"]
        ns.upsert(["x"], _rows(1))
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        assert sorted(n.name for n in db.list_namespaces()) == ["docs", "other"]


def _mount_tmpfs(path, size="40m"):
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr   # this test only exists where mount works
    return path


def test_a_real_full_tmpfs_refuses_writes_before_the_wal_and_resumes_when_space_is_freed(
        tmp_path):
    mnt = _mount_tmpfs(tmp_path / "mnt")
    try:
        (mnt / "filler").write_bytes(b"\0" * (20 << 20))
        acked = []
        with sv.open(mnt / "db", checkpoint_interval=0, auto_index=False) as db:
            ns = db.create_namespace("docs", dim=128, metric="l2")
            err = None
            for b in range(200):
                X = _rows(256, seed=b).repeat(8, axis=1)
                try:
                    ns.upsert([f"b{b}-{i}" for i in range(256)], X)
                except sv.DiskFullError as e:
                    err = e
                    break
                acked.append(b)
            assert err is not None and "bytes free" in str(err), "the disk never filled"
            assert db.writable and db.status().unapplied == 0
            assert ns.count() == 256 * len(acked)       # reads go on
            (mnt / "filler").unlink()                   # free space: writes resume
            ns.upsert([f"b{b}-{i}" for i in range(256)], _rows(256, seed=b).repeat(8, axis=1))
            acked.append(b)
            assert ns.count() == 256 * len(acked)
        with sv.open(mnt / "db", checkpoint_interval=0, auto_index=False) as db:
            assert db.namespace("docs").count() == 256 * len(acked)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _du(path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


def test_runbook_disk_full_commands_run_as_written_and_writes_resume(tmp_path, monkeypatch):
    """The writer sees a disk of ``budget`` bytes holding its own directory; the runbook's
    commands run as separate processes beside it (read-only, as an operator would)."""
    monkeypatch.chdir(tmp_path)
    budget = [1 << 40]
    probe = lambda path: budget[0] - _du("data")        # noqa: E731
    db = sv.open("data", checkpoint_interval=0, auto_index=False, disk_free_probe=probe,
                 disk_reserve=64 << 10)
    try:
        ns = db.create_namespace("docs", dim=64, metric="l2")
        ns.upsert([f"r{i}" for i in range(2000)], _rows(2000).repeat(4, axis=1))
        for _ in range(3):
            db.snapshot()
        budget[0] = _du("data") + (64 << 10)            # the disk is full now
        with pytest.raises(sv.DiskFullError):
            ns.upsert(["late"], _rows(1).repeat(4, axis=1))
        exe = shutil.which("simplevector", path=os.path.dirname(sys.executable))
        assert exe is not None
        for argv in runbook_commands("Disk full", level="###"):
            assert argv[0] == "simplevector"
            result = subprocess.run([exe, *argv[1:]], capture_output=True, text=True)
            ok = {0, 1, 2} if argv[1] == "health" else {0}   # health: 1/2 while not ok
            assert result.returncode in ok, (argv, result.stdout, result.stderr)
        assert len(db.snapshots()) == 1
        ns.upsert(["late"], _rows(1).repeat(4, axis=1))  # resumed, same process, no reopen
        assert ns.count() == 2001
    finally:
        db.close()
