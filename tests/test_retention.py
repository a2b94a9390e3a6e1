"""WAL retention (engine/database.py): the checkpoint, named change-feed consumers, the
oldest snapshot and the archive pin the WAL; past them a tail sized to the database is
kept; health, status and an alert rule say who holds what; scheduled snapshots."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import simplevector as sv
from simplevector.engine import snapshot as snapmod
from simplevector.engine.database import (WAL_KEEP_FLOOR, WAL_KEEP_FRACTION,
                                          default_wal_keep_bytes)
from simplevector.ops.thresholds import HealthThresholds

sys.path.insert(0, os.path.dirname(__file__))
import _life_child as child  # noqa: E402

CHILD = os.path.join(os.path.dirname(__file__), "_life_child.py")
DIM = 8
SMALL = 2 << 10


def _open(path, **kw):
    kw.setdefault("checkpoint_interval", 0)
    kw.setdefault("auto_index", False)
    kw.setdefault("wal_segment_bytes", SMALL)
    return sv.open(path, **kw)


def _write(ns, n, start=0, seed=0):
    X = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    for i in range(n):
        ns.upsert([f"k{start + i}"], X[i:i + 1])


def _first(db):
    return db.status().wal_first_lsn


def test_default_wal_retention_is_sized_to_the_database_and_wal_keep_bytes_overrides(tmp_path):
    assert default_wal_keep_bytes(0) == WAL_KEEP_FLOOR == 4 << 20
    assert default_wal_keep_bytes(4 << 30) == int((4 << 30) * WAL_KEEP_FRACTION) == 1 << 30
    with _open(tmp_path / "a") as db:
        used = db.status().map_used
        assert db.wal_keep_bytes is None
        assert db.wal_keep_target() == default_wal_keep_bytes(used)
        assert db.wal_retention()["keep_bytes"] == db.wal_keep_target()
    with _open(tmp_path / "b", wal_keep_bytes=0) as db:
        assert db.wal_keep_target() == 0
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        _write(ns, 60)
        assert db.status().wal_segments > 3
        db.checkpoint()                                 # nothing pins: every segment goes
        assert db.status().wal_segments == 0
    with _open(tmp_path / "c") as db:                   # default: 4 MiB floor keeps it all
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        _write(ns, 60)
        db.checkpoint()
        assert _first(db) == 1
    for bad in (-1, 1.5, "big", True):
        with pytest.raises(sv.InvalidInput, match="wal_keep_bytes"):
            sv.open(tmp_path / "d", wal_keep_bytes=bad)


def test_the_active_segment_is_sealed_and_removed_when_it_alone_exceeds_the_tail(tmp_path):
    """A 64 MiB segment must not outlive a small database's data: once every record is
    checkpointed and unpinned, an active segment over the tail is sealed and removed."""
    with sv.open(tmp_path / "db", checkpoint_interval=0, auto_index=False,
                 wal_keep_bytes=1 << 20) as db:                 # default 64 MiB segments
        ns = db.create_namespace("docs", dim=256, metric="l2")
        X = np.random.default_rng(0).standard_normal((3000, 256)).astype(np.float32)
        for i in range(0, 3000, 500):
            ns.upsert(list(range(i, i + 500)), X[i:i + 500])
        assert db.status().wal_segments == 1 and db.status().wal_bytes > 2 << 20
        db.checkpoint()
        assert db.status().wal_bytes == 0 and db.status().wal_first_lsn is None
        ns.upsert([9999], X[:1])                        # the next write starts a segment
        assert db.status().wal_first_lsn == db.lsn
        with pytest.raises(sv.ChangeFeedGap):
            db.changes(0)
    with sv.open(tmp_path / "db", checkpoint_interval=0, auto_index=False) as db:
        assert db.namespace("docs").count() == 3001
        np.testing.assert_array_equal(db.namespace("docs").get([7], include=("vectors",))[0]
                                      .vector, X[7])
    with sv.open(tmp_path / "small", checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("docs", dim=256, metric="l2")  # default tail: 4 MiB
        ns.upsert(list(range(500)), X[:500])
        db.checkpoint()
        assert db.status().wal_first_lsn == 1           # under the tail: kept for readers


def test_a_named_consumer_holds_the_wal_until_it_moves_on(tmp_path):
    with _open(tmp_path / "db", wal_keep_bytes=0) as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        assert list(db.changes(0, consumer="indexer"))[0].op == "create_namespace"
        _write(ns, 60)
        db.checkpoint()
        assert _first(db) == 1                          # the consumer still needs LSN 1
        pins = {p["kind"]: p for p in db.wal_retention()["pins"]}
        assert pins["consumer"]["name"] == "indexer" and pins["consumer"]["lsn"] == 1
        assert pins["consumer"]["bytes"] == db.status().wal_bytes
        assert db.consumers() == [{"name": "indexer", "lsn": 0,
                                   "at": db.consumers()[0]["at"], "lag": db.lsn}]
        seen = [c.lsn for c in db.changes(30, consumer="indexer")]
        assert seen == list(range(31, db.lsn + 1))
        db.checkpoint()
        assert 1 < _first(db) <= 31                     # released up to its position
        with pytest.raises(sv.ChangeFeedGap, match="consumer"):
            db.changes(0)                               # an anonymous reader is not kept
        db.drop_consumer("indexer")
        db.checkpoint()
        assert db.status().wal_segments == 0
        with pytest.raises(sv.InvalidInput, match="not known"):
            db.drop_consumer("indexer")


def test_consumer_position_is_durable_across_reopen_and_kill9(tmp_path):
    with _open(tmp_path / "db") as db:                  # the default tail keeps it all
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        _write(ns, 30)
    proc = subprocess.Popen([sys.executable, CHILD, "consumer", str(tmp_path / "db"), "feed",
                             "7"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "recorded"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()
    proc.stderr.close()
    with _open(tmp_path / "db", wal_keep_bytes=0) as db:
        assert [(c["name"], c["lsn"]) for c in db.consumers()] == [("feed", 7)]
        db.checkpoint()
        assert _first(db) <= 8
        assert [c.lsn for c in db.changes(7)][0] == 8


def test_consumer_arguments_are_validated(tmp_path):
    with _open(tmp_path / "db") as db:
        for bad in ("", 5, "x" * 201, "tab\there"):
            with pytest.raises(sv.InvalidInput, match="consumer"):
                db.changes(0, consumer=bad)
        with pytest.raises(sv.InvalidInput, match="past the last committed"):
            db.changes(99, consumer="ahead")
        assert db.consumers() == []
    with sv.open(tmp_path / "db", readonly=True) as db:
        with pytest.raises(sv.ReadOnlyError):
            db.changes(0, consumer="reader")


def test_a_lagging_consumer_is_reported_by_health_and_an_alert_never_skipped(tmp_path):
    with _open(tmp_path / "db", wal_keep_bytes=0,
               thresholds=HealthThresholds(consumer_lag_warning=20,
                                           consumer_lag_critical=50)) as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        db.changes(0, consumer="slow")
        db.changes(0, consumer="fast")
        _write(ns, 30)
        db.changes(db.lsn, consumer="fast")
        f = db.health().find("consumer_lag")[0]
        assert (f.severity, f.value) == ("warning", 31) and "'slow'" in f.message
        alert = next(a for a in db.alerts() if a.rule == "consumer_lag")
        assert alert.state == "firing" and alert.severity == "warning"
        _write(ns, 30, start=30)
        assert db.health().find("consumer_lag")[0].severity == "critical"
        db.checkpoint()
        assert _first(db) == 1                          # still held: reported, not skipped
        retention = db.health().find("wal_retention")[0]
        assert "consumer slow needs LSN >= 1" in retention.message
        assert db.health().stats["storage"]["wal_retention"]["pins"]


def test_metrics_export_consumer_lag_pins_and_unapplied_writes(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families
    with _open(tmp_path / "db", wal_archive=tmp_path / "arch") as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        db.changes(0, consumer="feed")
        _write(ns, 5)
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for f in text_string_to_metric_families(db.metrics_text())
                   for s in f.samples}
        assert samples[("simplevector_consumer_lag_records", (("consumer", "feed"),))] == 6
        assert samples[("simplevector_wal_pinned_bytes",
                        (("kind", "consumer"), ("name", "feed")))] == db.status().wal_bytes
        assert samples[("simplevector_unapplied_writes", ())] == 0
        assert samples[("simplevector_wal_archive_failing", ())] == 0


def test_the_oldest_snapshot_pins_the_wal_when_there_is_no_archive(tmp_path):
    with _open(tmp_path / "db", wal_keep_bytes=0) as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        _write(ns, 20)
        old = db.snapshot()
        _write(ns, 20, start=20)
        db.snapshot()
        _write(ns, 40, start=40)
        db.checkpoint()
        assert _first(db) <= old.lsn + 1
        pins = [p for p in db.wal_retention()["pins"] if p["kind"] == "snapshot"]
        assert pins == [{"kind": "snapshot", "name": os.path.basename(old.path),
                         "lsn": old.lsn + 1, "bytes": pins[0]["bytes"]}]
        removed = db.prune_snapshots(1)
        assert [r.path for r in removed] == [old.path] and not os.path.exists(old.path)
        db.checkpoint()
        assert _first(db) > old.lsn + 1                 # the newer snapshot pins less


def test_with_an_archive_snapshots_do_not_pin_the_wal(tmp_path):
    with _open(tmp_path / "db", wal_keep_bytes=0, wal_archive=tmp_path / "arch") as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        _write(ns, 20)
        db.snapshot()
        _write(ns, 40, start=20)
        db.checkpoint()
        assert db.status().wal_segments == 0
        assert {p["kind"] for p in db.wal_retention()["pins"]} == {"checkpoint"}


# --------------------------------------------------------------------------- scheduled snapshots

def test_scheduled_snapshots_keep_the_newest_n_and_record_each_run_as_an_event(tmp_path):
    with _open(tmp_path / "db", snapshot_keep=2) as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        lsns = []
        for i in range(4):
            _write(ns, 3, start=3 * i)
            event = db.scheduled_snapshot()
            assert event["state"] == "done" and event["value"] == db.lsn
            lsns.append(db.lsn)
        assert [s.lsn for s in db.snapshots()] == lsns[-2:]
        events = [e for e in db.alert_events() if e["rule"] == "scheduled_snapshot"]
        assert len(events) == 4 and all(e["state"] == "done" for e in events)
        assert len(events[-1]["removed"]) == 1


def test_the_snapshot_scheduler_runs_in_the_background(tmp_path):
    db = _open(tmp_path / "db", snapshot_interval=0.1, snapshot_keep=3)
    try:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        deadline = time.monotonic() + 30
        while len(db.snapshots()) < 3:
            _write(ns, 1, start=len(db.snapshots()))
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        db.close()
    with _open(tmp_path / "db") as db:
        assert 1 <= len(db.snapshots()) <= 3
        for info in db.snapshots():
            snapmod.verify(info.path)
    for bad in ({"snapshot_keep": 0}, {"snapshot_interval": -1}, {"snapshot_keep": "2"}):
        with pytest.raises(sv.InvalidInput):
            sv.open(tmp_path / "x", **bad)


def test_kill9_during_scheduled_snapshots_loses_nothing_and_lists_no_half_snapshot(tmp_path):
    path = str(tmp_path / "db")
    proc = subprocess.Popen([sys.executable, CHILD, "autosnap", path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    acked = []
    deadline = time.monotonic() + 60
    # at least 150 acknowledged batches and one complete scheduled snapshot before the kill
    # (on a loaded machine the first snapshot can take longer than 150 batches)
    while len(acked) < 150 or not snapmod.list_snapshots(path):
        line = proc.stdout.readline()
        assert line.endswith("\n") and time.monotonic() < deadline, proc.stderr.read()
        acked.append(tuple(map(int, line.split())))
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()
    proc.stderr.close()
    with _open(path) as db:
        ns = db.namespace(child.NS)
        for batch, _ in acked:
            assert None not in ns.get(child.batch_ids(batch)), batch
        infos = db.snapshots()
        assert infos and len(infos) <= 3                # keep 2 (+1 mid-prune at the kill)
        for info in infos:
            snapmod.verify(info.path)
        assert not [n for n in os.listdir(os.path.join(path, "snapshots"))
                    if n.endswith(".tmp")]
