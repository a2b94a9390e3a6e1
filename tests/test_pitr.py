"""The WAL archive and point-in-time restore (engine/archive.py, engine/snapshot.py, the CLI,
docs/runbook.md "Point-in-time restore"), including kill -9 during writes and restores."""

from __future__ import annotations

import datetime
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

import simplevector as sv
from simplevector.cli import main
from simplevector.engine import snapshot as snapmod
from simplevector.engine.apply import unpack
from simplevector.engine.archive import iter_archived
from simplevector.engine.wal import WriteAheadLog

sys.path.insert(0, os.path.dirname(__file__))
import _life_child as child  # noqa: E402

CHILD = os.path.join(os.path.dirname(__file__), "_life_child.py")
from _runbook import runbook_commands  # noqa: E402

DIM = 8
SMALL = 4 << 10          # WAL segment bytes: a few records each, so segments roll over


def _open(path, archive=None, **kw):
    kw.setdefault("checkpoint_interval", 0)
    kw.setdefault("auto_index", False)
    return sv.open(path, wal_archive=archive, **kw)


def _leftovers(target):
    parent, base = os.path.split(str(target))
    return [n for n in os.listdir(parent) if n.startswith(base + ".restore-")]


def _archived_lsns(archive):
    return [lsn for lsn, _ in iter_archived(archive, 0)]


def _state(db, name="docs"):
    """id -> (vector bytes, metadata) of every live row."""
    ns = db.namespace(name)
    out = {}
    for r in ns.get([f"k{i}" for i in range(60)], include=("vectors", "metadata")):
        if r is not None:           # get() keeps the order and gives None for a missing id
            out[r.id] = (np.asarray(r.vector, np.float32).tobytes(), r.metadata)
    return out


# --------------------------------------------------------------------------- the archive

def test_clean_close_leaves_every_committed_record_in_the_archive(tmp_path):
    with _open(tmp_path / "db", tmp_path / "arch", wal_segment_bytes=SMALL) as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        rng = np.random.default_rng(0)
        for i in range(40):
            ns.upsert([f"k{i}"], rng.standard_normal((1, DIM)).astype(np.float32))
        last = db.lsn
    assert _archived_lsns(tmp_path / "arch") == list(range(1, last + 1))
    archived = dict(iter_archived(tmp_path / "arch", 0))
    local = WriteAheadLog(tmp_path / "db" / "wal", readonly=True)
    kept = list(local.iter_records(0))
    local.close()
    assert kept and all(archived[lsn] == payload for lsn, payload in kept)  # same bytes
    assert unpack(archived[last])["ids"] == ["k39"]


def test_snapshot_seals_the_active_segment_so_the_archive_reaches_its_lsn(tmp_path):
    with _open(tmp_path / "db", tmp_path / "arch") as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        ns.upsert(["a", "b"], np.ones((2, DIM), np.float32))
        assert _archived_lsns(tmp_path / "arch") == []          # 64 MiB segment: not sealed
        info = db.snapshot()
        assert _archived_lsns(tmp_path / "arch") == list(range(1, info.lsn + 1))
        ns.upsert(["c"], np.ones((1, DIM), np.float32))         # goes to a new segment
        assert db.status().wal_segments == 2
        assert db.wal_retention()["archive"]["segments"] == 1
    assert _archived_lsns(tmp_path / "arch") == list(range(1, info.lsn + 2))


def test_a_failing_archive_copy_keeps_the_segments_and_is_reported_then_recovers(tmp_path):
    arch = tmp_path / "arch"
    db = _open(tmp_path / "db", arch, wal_segment_bytes=SMALL, wal_keep_bytes=0)
    try:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        X = np.random.default_rng(1).standard_normal((200, DIM)).astype(np.float32)
        for i in range(0, 100, 5):
            ns.upsert([f"k{j}" for j in range(i, i + 5)], X[i:i + 5])
        db.checkpoint()
        assert db.status().wal_segments <= 2                    # archived, then removed
        shutil.rmtree(arch)
        arch.write_text("not a directory")                      # every copy now fails
        for i in list(range(100, 200, 5)) * 3:
            ns.upsert([f"k{j}" for j in range(i, i + 5)], X[i:i + 5])
        before = [os.path.basename(p) for p in sorted(os.listdir(tmp_path / "db" / "wal"))]
        db.checkpoint()
        after = sorted(os.listdir(tmp_path / "db" / "wal"))
        assert after == sorted(before) and len(after) > 3       # nothing removed
        ret = db.wal_retention()
        assert ret["archive"]["error"] and "arch" in ret["archive"]["error"]
        assert any(p["kind"] == "archive" for p in ret["pins"])
        finding = db.health().find("wal_archive")[0]
        assert finding.severity == "critical" and finding.value == 1
        alert = next(a for a in db.alerts() if a.rule == "wal_archive_failing")
        assert alert.state == "firing" and alert.severity == "critical"
        assert any(e["rule"] == "wal_archive_failing" for e in db.alert_events())
        arch.unlink()                                           # fixed: the next copy works
        db.checkpoint()
        assert db.health().find("wal_archive")[0].severity == "ok"
        assert db.status().wal_segments <= 2
    finally:
        db.close()
    first = int(sorted(os.listdir(arch))[0][:20])               # the old archive was removed
    lsns = [lsn for lsn, _ in iter_archived(arch, first - 1)]   # contiguous from there on
    assert lsns == list(range(first, db.engine.checkpoint_lsn + 1))


def test_an_archived_copy_is_never_overwritten_by_another_databases_segment(tmp_path):
    arch = tmp_path / "arch"
    with _open(tmp_path / "a", arch) as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        ns.upsert(["x"], np.ones((1, DIM), np.float32))
    theirs = {n: (arch / n).read_bytes() for n in os.listdir(arch)}
    with _open(tmp_path / "b", arch, wal_keep_bytes=0) as db:   # same LSNs, other bytes
        ns = db.create_namespace("other", dim=DIM, metric="l2")
        ns.upsert(["y", "z"], np.zeros((2, DIM), np.float32))
        db.snapshot()                                           # seals: the copy is tried
        err = db.wal_retention()["archive"]["error"]
        assert err and "already holds a different" in err
        db.checkpoint()
        assert db.status().wal_first_lsn == 1                   # kept, not lost
        assert db.health().find("wal_archive")[0].severity == "critical"
    assert {n: (arch / n).read_bytes() for n in theirs} == theirs   # untouched
    with _open(tmp_path / "a", arch) as db:                     # the owner still matches
        assert db.wal_retention()["archive"]["error"] is None


def test_health_reports_the_last_snapshot_and_the_restorable_window(tmp_path):
    with _open(tmp_path / "db", tmp_path / "arch") as db:
        assert db.health().find("restorable_window")[0].value is None
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        ns.upsert(["a"], np.ones((1, DIM), np.float32))
        first = db.snapshot()
        ns.upsert(["b"], np.ones((1, DIM), np.float32))
        db.snapshot()
        f = db.health().find("restorable_window")[0]
        assert f.severity == "ok" and 0 <= f.value < 60
        assert f"any LSN from {first.lsn}" in f.message
    with _open(tmp_path / "plain") as db:                       # no archive: snapshots only
        db.create_namespace("docs", dim=DIM).upsert(["a"], np.ones((1, DIM), np.float32))
        info = db.snapshot()
        assert f"snapshot LSN(s) {info.lsn}" in db.health().find("restorable_window")[0].message


def test_wal_archive_inside_the_databases_own_wal_is_refused(tmp_path):
    with pytest.raises(sv.InvalidInput, match="wal_archive"):
        sv.open(tmp_path / "db", wal_archive=tmp_path / "db" / "wal" / "a")
    with pytest.raises(sv.InvalidInput, match="wal_archive"):
        sv.open(tmp_path / "db2", wal_archive=3)


# --------------------------------------------------------------------------- point in time

def _history(tmp_path, seed=0, steps=45):
    """A history of upserts, replacements and deletes with a model of the rows after each
    LSN; a snapshot is taken after the first third. Returns (snapshot, models, ts)."""
    rng = random.Random(seed)
    nprng = np.random.default_rng(seed)
    models, ts = {}, {}
    model: dict = {}
    with _open(tmp_path / "db", tmp_path / "arch", wal_segment_bytes=SMALL) as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        models[db.lsn] = dict(model)
        snap = None
        for step in range(steps):
            if step == steps // 3:
                snap = db.snapshot()
            if model and rng.random() < 0.3:
                doomed = rng.sample(sorted(model), min(len(model), rng.randint(1, 3)))
                ns.delete(doomed)
                for k in doomed:
                    model.pop(k)
            else:
                ids = rng.sample([f"k{i}" for i in range(60)], rng.randint(1, 4))
                X = nprng.standard_normal((len(ids), DIM)).astype(np.float32)
                meta = [{"step": step} for _ in ids]
                ns.upsert(ids, X, metadata=meta)
                for k, x, m in zip(ids, X, meta):
                    model[k] = (x.tobytes(), m)
            models[db.lsn] = dict(model)
        for c in db.changes(0):
            ts[c.lsn] = c.ts
    return snap, models, ts


def test_restore_to_several_lsns_equals_the_model_of_the_data_at_that_lsn(tmp_path):
    snap, models, _ = _history(tmp_path)
    last = max(models)
    for to in sorted({snap.lsn, snap.lsn + 1, (snap.lsn + last) // 2, last - 1, last}):
        target = tmp_path / f"r{to}"
        report = sv.restore(snap.path, target, to_lsn=to, wal_archive=tmp_path / "arch")
        want = (to, snap.lsn, to - snap.lsn)
        assert (report.lsn, report.snapshot_lsn, report.wal_records) == want
        assert report.verified and report.to_lsn == to
        with _open(target) as db:
            assert db.lsn == to
            assert _state(db) == models[to], to
            assert db.namespace("docs").count() == len(models[to])
        assert _leftovers(target) == []
    report = sv.restore(snap.path, tmp_path / "end", wal_archive=tmp_path / "arch")
    assert report.lsn == last                                   # no point: the archive's end


def test_restore_to_a_time_keeps_every_write_stamped_at_or_before_it(tmp_path):
    snap, models, ts = _history(tmp_path, seed=1, steps=30)
    pick = sorted(lsn for lsn in ts if lsn > snap.lsn)[len(ts) // 3]
    report = sv.restore(snap.path, tmp_path / "t1", to_time=ts[pick],
                        wal_archive=tmp_path / "arch")
    assert report.lsn == pick and report.to_time == ts[pick]
    with _open(tmp_path / "t1") as db:
        assert _state(db) == models[pick]
    iso = datetime.datetime.fromtimestamp(ts[pick] + 1e-6, datetime.timezone.utc).isoformat()
    report = sv.restore(snap.path, tmp_path / "t2", to_time=iso, wal_archive=tmp_path / "arch")
    assert report.lsn == pick
    naive = datetime.datetime.fromtimestamp(ts[pick] + 1e-6, datetime.timezone.utc).replace(
        tzinfo=None)                                            # a naive datetime is UTC
    report = sv.restore(snap.path, tmp_path / "t3", to_time=naive, wal_archive=tmp_path / "arch")
    assert report.lsn == pick


def test_a_gap_in_the_archive_leaves_no_target_and_no_staging_directory(tmp_path):
    snap, models, _ = _history(tmp_path, seed=2)
    segs = sorted(os.listdir(tmp_path / "arch"))
    firsts = [int(n[:20]) for n in segs]
    middle = next(n for n, f in zip(segs, firsts) if f > snap.lsn + 1)
    os.unlink(tmp_path / "arch" / middle)
    with pytest.raises(sv.ChangeFeedGap, match="gap"):
        sv.restore(snap.path, tmp_path / "out", wal_archive=tmp_path / "arch",
                   to_lsn=max(models))
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path / "out") == []
    before_gap = int(middle[:20]) - 1                           # up to the gap still works
    report = sv.restore(snap.path, tmp_path / "ok", wal_archive=tmp_path / "arch",
                        to_lsn=before_gap)
    assert report.lsn == before_gap


def test_a_bad_checksum_in_the_archive_raises_corruption_naming_the_segment(tmp_path):
    snap, models, _ = _history(tmp_path, seed=3)
    segs = sorted(os.listdir(tmp_path / "arch"))
    victim = tmp_path / "arch" / segs[-1]                       # even the last one: a copy
    raw = bytearray(victim.read_bytes())
    raw[-3] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(sv.CorruptionError, match=segs[-1]):
        sv.restore(snap.path, tmp_path / "out", wal_archive=tmp_path / "arch")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path / "out") == []


def test_a_target_past_the_end_of_the_archive_raises_change_feed_gap(tmp_path):
    snap, models, _ = _history(tmp_path, seed=4, steps=12)
    with pytest.raises(sv.ChangeFeedGap, match=f"ends at LSN {max(models)}"):
        sv.restore(snap.path, tmp_path / "out", wal_archive=tmp_path / "arch",
                   to_lsn=max(models) + 5)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path / "out") == []


def test_cli_restore_to_lsn_and_to_time(tmp_path):
    snap, models, ts = _history(tmp_path, seed=5, steps=15)
    to = snap.lsn + 2
    result = CliRunner().invoke(main, ["restore", snap.path, str(tmp_path / "c1"),
                                       "--wal-archive", str(tmp_path / "arch"),
                                       "--to-lsn", str(to), "--json"])
    assert result.exit_code == 0, result.output
    assert f'"lsn": {to}' in result.output
    iso = datetime.datetime.fromtimestamp(ts[to] + 1e-6,  # ISO keeps whole microseconds
                                          datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")
    result = CliRunner().invoke(main, ["restore", snap.path, str(tmp_path / "c2"),
                                       "--wal-archive", str(tmp_path / "arch"),
                                       "--to-time", iso])
    assert result.exit_code == 0, result.output
    with _open(tmp_path / "c2") as db:
        assert db.lsn == to
    result = CliRunner().invoke(main, ["restore", snap.path, str(tmp_path / "c3"),
                                       "--wal-archive", str(tmp_path / "arch"),
                                       "--to-lsn", str(max(models) + 9)])
    assert result.exit_code == 1 and "ends at LSN" in result.stderr


# --------------------------------------------------------------------------- kill -9

class _Lines:
    def __init__(self, proc):
        self.lines, self._cond = [], threading.Condition()
        threading.Thread(target=self._run, args=(proc.stdout,), daemon=True).start()

    def _run(self, stream):
        for line in stream:
            if not line.endswith("\n"):
                break
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait(self, n, timeout=60.0):
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.lines) < n:
                left = deadline - time.monotonic()
                assert left > 0, f"child printed only {self.lines!r}"
                self._cond.wait(left)
            return list(self.lines)


def _spawn(*args):
    return subprocess.Popen([sys.executable, CHILD, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()
    proc.stderr.close()


def test_kill9_of_an_archiving_writer_loses_nothing_acknowledged_from_the_restore(tmp_path):
    db_path, arch = str(tmp_path / "db"), str(tmp_path / "arch")
    proc = _spawn("archive", db_path, arch)
    lines = _Lines(proc)
    snap_lsn = int(lines.wait(1)[0].split()[1])
    lines.wait(1 + random.Random(5).randint(40, 120))
    _kill(proc)
    acked = [tuple(map(int, line.split())) for line in lines.lines[1:]]
    with _open(db_path, arch, auto_index=False):                # recovery, seal, archive
        pass
    report = sv.restore(db_path + "-base", tmp_path / "out", wal_archive=arch)
    assert report.snapshot_lsn == snap_lsn and report.lsn >= acked[-1][1]
    with _open(tmp_path / "out") as db:
        ns = db.namespace(child.NS)
        for batch, _ in acked:
            got = ns.get(child.batch_ids(batch), include=("vectors",))
            assert None not in got, batch
            np.testing.assert_array_equal(np.stack([r.vector for r in got]),
                                          child.batch_vectors(batch))


def test_kill9_during_point_in_time_restore_leaves_nothing_and_is_cleaned_up(tmp_path):
    with _open(tmp_path / "db", tmp_path / "arch", wal_segment_bytes=64 << 10) as db:
        ns = db.create_namespace("docs", dim=32, metric="l2")
        snap = db.snapshot()
        X = np.random.default_rng(0).standard_normal((200 * 50, 32)).astype(np.float32)
        for b in range(200):
            ns.upsert([f"k{b}-{i}" for i in range(50)], X[b * 50:(b + 1) * 50])
        to = db.lsn - 10
    rng = random.Random(11)
    outcomes = set()
    for round_ in range(4):
        target = tmp_path / f"out{round_}"
        proc = _spawn("restore", snap.path, target, tmp_path / "arch", to)
        assert proc.stdout.readline().strip() == "start"
        time.sleep(rng.uniform(0.05, 0.8))
        _kill(proc)
        if target.exists():
            outcomes.add("complete")
            with _open(target) as db:
                assert db.lsn == to and db.namespace("docs").count() == (to - snap.lsn) * 50
            continue
        outcomes.add("absent")
        if round_ % 2 == 0:     # the rule: the next restore to the target cleans up
            report = sv.restore(snap.path, target, wal_archive=tmp_path / "arch", to_lsn=to)
            assert report.lsn == to
        else:                   # ... and so does the next writer's open of the target
            sv.open(target, checkpoint_interval=0).close()
        assert _leftovers(target) == []
    assert outcomes                                             # each round checked one


# --------------------------------------------------------------------------- runbook

def test_runbook_point_in_time_restore_commands_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with _open("data", "wal-archive") as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")          # LSN 1
        ns.upsert([f"r{i}" for i in range(10)], np.ones((10, DIM), np.float32))   # 2
        db.snapshot("backup/base")                                       # holds LSN 2
        ns.upsert(["extra"], np.ones((1, DIM), np.float32))              # 3
        ns.delete([f"r{i}" for i in range(10)])                          # 4: the mistake
    commands = runbook_commands("Point-in-time restore")
    assert len(commands) >= 4
    outputs = []
    for argv in commands:
        assert argv[0] == "simplevector"
        result = CliRunner().invoke(main, argv[1:])
        assert result.exit_code == 0, (argv, result.output, result.exception)
        outputs.append(result.output)
    assert "delete" in outputs[1]                                        # wal tail shows it
    with _open("data-pitr") as db:
        assert db.lsn == 3 and db.namespace("docs").count() == 11
    assert snapmod.read_manifest("backup/base")["lsn"] == 2


def test_restore_dry_run_verifies_and_leaves_the_target_untouched(tmp_path):
    with _open(tmp_path / "db", tmp_path / "arch") as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        ns.upsert(list(range(20)), np.ones((20, DIM), np.float32))
        snap = db.snapshot()
        ns.delete(list(range(5)))
    target = tmp_path / "restored"
    report = sv.restore(snap.path, target, wal_archive=tmp_path / "arch", dry_run=True)
    assert report.dry_run and report.verified and report.lsn == 3
    assert [n["count"] for n in report.namespaces] == [20]
    assert not target.exists() and not list(tmp_path.glob("restored.restore-*"))
    result = CliRunner().invoke(main, ["restore", snap.path, str(target), "--wal-archive",
                                       str(tmp_path / "arch"), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert '"dry_run": true' in result.output and not target.exists()
    # a damaged snapshot fails the dry run as it would fail the restore
    with open(os.path.join(snap.path, "lmdb", "data.mdb"), "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 16)
    result = CliRunner().invoke(main, ["restore", snap.path, str(target), "--dry-run"])
    assert result.exit_code == 1 and "data.mdb" in result.output
    assert not target.exists()
