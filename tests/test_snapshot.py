"""Online snapshots and restore from a snapshot (engine/snapshot.py, sv.restore, the CLI)."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import simplevector as sv
from simplevector.cli import main
from simplevector.engine import snapshot as snapmod

from _runbook import runbook_commands  # noqa: E402

DIM = 8


def _fill(db, name="docs", n=300, seed=0, dim=DIM, **kwargs):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, dim)).astype(np.float32)
    ns = db.create_namespace(name, dim=dim, **kwargs)
    ns.upsert(ids=[f"r{i}" for i in range(n)], vectors=X,
              metadata=[{"i": i, "even": i % 2 == 0} for i in range(n)],
              documents=[f"doc {i}" for i in range(n)])
    return ns, X


def _vectors_by_id(ns, ids):
    return {r.id: r.vector for r in ns.get(list(ids), include=("vectors",))}


def _leftovers(target):
    parent, base = os.path.split(str(target))
    return [n for n in os.listdir(parent) if n.startswith(base + ".restore-")]


def test_snapshot_while_writer_upserts_restores_exactly_rows_committed_at_its_lsn(tmp_path):
    db = sv.open(tmp_path / "db", checkpoint_interval=0)
    ns = db.create_namespace("live", dim=DIM, metric="l2")
    log = []                              # (lsn, ids, vectors) of acknowledged upserts
    stop = threading.Event()

    def writer():
        rng = np.random.default_rng(1)
        batch = 0
        while not stop.is_set():
            ids = [f"b{batch}-{i}" for i in range(8)]
            if batch % 5 == 4:            # rewrite earlier rows too: the latest wins
                ids[:2] = ["b0-0", "b0-1"]
            X = rng.standard_normal((8, DIM)).astype(np.float32)
            log.append((ns.upsert(ids=ids, vectors=X), ids, X))
            batch += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(log) < 20:
            time.sleep(0.01)
        info = db.snapshot(tmp_path / "snap")
        while len(log) < 40:
            time.sleep(0.01)
    finally:
        stop.set()
        thread.join()
    db.close()
    assert any(lsn > info.lsn for lsn, _, _ in log)
    expected = {}
    for lsn, ids, X in sorted(log, key=lambda e: e[0]):
        if lsn <= info.lsn:
            for i, row in zip(ids, X):
                expected[i] = row
    report = sv.restore(info.path, tmp_path / "restored")
    assert report.verified and report.lsn == info.lsn
    with sv.open(tmp_path / "restored", checkpoint_interval=0) as restored:
        rns = restored.namespace("live")
        assert restored.lsn == info.lsn
        assert rns.count() == len(expected)
        assert set(rns.ids()) == set(expected)
        got = _vectors_by_id(rns, expected)
        for i, row in expected.items():
            np.testing.assert_array_equal(got[i], row)


def test_restore_round_trip_keeps_rows_metadata_documents_catalog_and_queries(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns, X = _fill(db, model="minilm@2.0.0", index="Flat")
        db.create_version("docs", model="minilm@3.0.0")
        db.namespace("docs", 2).upsert(ids=["v2a"], vectors=X[:1])
        ns.delete(["r5"])
        info = db.snapshot()
        expected_ns = [n.to_dict() for n in db.list_namespaces()]
        expected_hits = ns.query(X[:5], k=7, include=("metadata", "documents"), exact=True)
        expected_rows = ns.get([f"r{i}" for i in range(300)],
                               include=("metadata", "documents", "vectors"))
    report = sv.restore(info.path, tmp_path / "out")
    assert {(n["name"], n["version"]): n["count"] for n in report.namespaces} == \
        {("docs", 1): 299, ("docs", 2): 1}
    assert report.seconds >= 0 and report.target == str(tmp_path / "out")
    with sv.open(tmp_path / "out", checkpoint_interval=0) as db:
        assert [n.to_dict() for n in db.list_namespaces()] == expected_ns
        ns = db.namespace("docs")
        rows = ns.get([f"r{i}" for i in range(300)],
                      include=("metadata", "documents", "vectors"))
        assert rows[5] is None and expected_rows[5] is None          # r5 was deleted
        rows, expected_rows = rows[:5] + rows[6:], expected_rows[:5] + expected_rows[6:]
        assert [(r.id, r.metadata, r.document) for r in rows] == \
            [(r.id, r.metadata, r.document) for r in expected_rows]
        for a, b in zip(rows, expected_rows):
            np.testing.assert_array_equal(a.vector, b.vector)
        hits = ns.query(X[:5], k=7, include=("metadata", "documents"), exact=True)
        for got, want in zip(hits, expected_hits):
            np.testing.assert_allclose([h.distance for h in got], [h.distance for h in want],
                                       rtol=1e-5, atol=1e-6)
            assert {h.id for h in got[:-1]} <= {h.id for h in want}   # tie-aware at the edge
        ns.upsert(ids=["new"], vectors=X[:1])          # the restored copy takes writes
        assert db.lsn == info.lsn + 1


def test_ivf_trained_namespace_restores_and_queries(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0, auto_index=False) as db:
        ns, X = _fill(db, n=3000, dim=16, metric="l2")
        ns.build_index("IVF16,PQ4x8")
        db.checkpoint()
        info = db.snapshot()
        want = ns.query(X[:20], k=5, exact=True)
    assert info.namespaces[0]["count"] == 3000
    sv.restore(info.path, tmp_path / "out")
    with sv.open(tmp_path / "out", checkpoint_interval=0, auto_index=False) as db:
        ns = db.namespace("docs")
        assert ns.count() == 3000
        assert db.version_status("docs").index_configured.startswith("IVF16")
        exact = ns.query(X[:20], k=5, exact=True)
        for g, w in zip(exact, want):
            np.testing.assert_allclose([h.distance for h in g], [h.distance for h in w],
                                       rtol=1e-5, atol=1e-5)
        ns.build_index()
        approx = ns.query(X[:20], k=5)
        recall = np.mean([len({h.id for h in a} & {h.id for h in w}) / 5
                          for a, w in zip(approx, want)])
        assert recall >= 0.5


def test_damaged_snapshot_raises_corruption_naming_the_file_and_leaves_nothing(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        _fill(db)
        info = db.snapshot()
    data = Path(info.path) / "lmdb" / "data.mdb"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(sv.CorruptionError, match="data.mdb"):
        snapmod.verify(info.path)
    target = tmp_path / "out"
    with pytest.raises(sv.CorruptionError, match=re.escape(str(data))):
        sv.restore(info.path, target)
    assert not target.exists()
    assert _leftovers(target) == []


def test_existing_target_is_refused_without_force_and_replaced_with_force(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        _fill(db, n=50)
        info = db.snapshot()
    target = tmp_path / "out"
    with sv.open(target, checkpoint_interval=0) as other:
        _fill(other, name="other", n=10)
    with pytest.raises(sv.TargetExists) as err:
        sv.restore(info.path, target)
    assert err.value.code == "target_exists" and err.value.http_status == 409
    with sv.open(target, checkpoint_interval=0) as other:
        assert [n.name for n in other.list_namespaces()] == ["other"]
    sv.restore(info.path, target, force=True)
    with sv.open(target, checkpoint_interval=0) as db:
        assert [n.name for n in db.list_namespaces()] == ["docs"]
        assert db.namespace("docs").count() == 50
    assert _leftovers(target) == []


def test_empty_existing_target_directory_is_filled(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        _fill(db, n=20)
        info = db.snapshot()
    (tmp_path / "out").mkdir()
    sv.restore(info.path, tmp_path / "out")
    with sv.open(tmp_path / "out", checkpoint_interval=0) as db:
        assert db.namespace("docs").count() == 20


_RESTORE_CHILD = """
import sys
import simplevector as sv
print("start", flush=True)
sv.restore(sys.argv[1], sys.argv[2])
print("done", flush=True)
"""


def test_kill9_during_restore_leaves_no_target_or_a_complete_one(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        _fill(db, n=20000, dim=32)
        info = db.snapshot()
    rng = random.Random(7)
    for round_ in range(3):
        target = tmp_path / f"out{round_}"
        proc = subprocess.Popen([sys.executable, "-c", _RESTORE_CHILD, info.path, str(target)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "start"
        time.sleep(rng.uniform(0.0, 1.0))    # the restore takes about 1 s
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        if target.exists():
            with sv.open(target, checkpoint_interval=0, auto_index=False) as db:
                assert db.lsn == info.lsn
                assert db.namespace("docs").count() == 20000
        snapmod.sweep_restore_leftovers(target)
        assert _leftovers(target) == []
        if not target.exists():           # a later restore to the same target succeeds
            sv.restore(info.path, target)
            assert target.exists() and _leftovers(target) == []


def test_snapshots_lists_complete_snapshots_only_oldest_first(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns, X = _fill(db, n=10)
        first = db.snapshot()
        ns.upsert(ids=["x"], vectors=X[:1])
        second = db.snapshot()
        stray = tmp_path / "db" / "snapshots" / "00000000000000000099-x.999999999.tmp"
        (stray / "lmdb").mkdir(parents=True)
        listed = db.snapshots()
        assert [s.path for s in listed] == [first.path, second.path]
        assert [s.lsn for s in listed] == [first.lsn, first.lsn + 1]
        assert all(s.bytes > 0 and os.path.isfile(s.manifest_path) for s in listed)
    assert stray.exists()
    sv.open(tmp_path / "db", checkpoint_interval=0).close()   # the writer's open sweeps it
    assert not stray.exists()


def test_point_in_time_arguments_that_cannot_be_met_raise_invalid_input_and_create_nothing(
        tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        _fill(db, n=10)
        info = db.snapshot()
    (tmp_path / "arch").mkdir()
    bad = ({"to_lsn": 3},                                   # no archive given
           {"to_time": time.time()},                        # no archive given
           {"to_lsn": info.lsn - 1, "wal_archive": tmp_path / "arch"},   # before snapshot
           {"to_time": 1.0, "wal_archive": tmp_path / "arch"},           # before snapshot
           {"to_lsn": 5, "to_time": time.time(), "wal_archive": tmp_path / "arch"},
           {"to_lsn": -1, "wal_archive": tmp_path / "arch"},
           {"to_time": "yesterday", "wal_archive": tmp_path / "arch"},
           {"wal_archive": tmp_path / "no-such-dir"})
    for kwargs in bad:
        with pytest.raises(sv.InvalidInput):
            sv.restore(info.path, tmp_path / "out", **kwargs)
        assert not (tmp_path / "out").exists() and _leftovers(tmp_path / "out") == []


def test_snapshot_of_readonly_database_works_and_of_closed_one_raises(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        _fill(db, n=10)
        lsn = db.lsn
    with sv.open(tmp_path / "db", readonly=True) as ro:
        assert ro.snapshot(tmp_path / "ro-snap").lsn == lsn
    db = sv.open(tmp_path / "db", checkpoint_interval=0)
    db.close()
    with pytest.raises(sv.ClosedError):
        db.snapshot()
    with pytest.raises(sv.ClosedError):
        db.snapshots()


def test_snapshot_into_existing_non_empty_path_is_refused(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("x")
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        with pytest.raises(sv.TargetExists):
            db.snapshot(tmp_path / "taken")


def test_manifest_holds_lsn_catalog_checksums_and_fingerprint(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        _fill(db, n=40, model="m@1.0.0")
        info = db.snapshot()
    manifest = snapmod.read_manifest(info.path)
    assert manifest["lsn"] == info.lsn and manifest["created_at"] == info.created_at
    assert manifest["namespaces"][0]["model"] == "m@1.0.0"
    assert manifest["namespaces"][0]["count"] == 40
    vid = manifest["namespaces"][0]["vid"]
    assert set(manifest["files"]) == {"lmdb/data.mdb", f"rows/{vid}.f32"}
    assert len(manifest["files"]["lmdb/data.mdb"]["sha256"]) == 64
    # the row file holds exactly the rows written up to the snapshot's LSN
    assert manifest["files"][f"rows/{vid}.f32"]["bytes"] == 40 * DIM * 4
    assert len(manifest["fingerprint"]["docs"]["ids"]) == snapmod.FINGERPRINT_PROBES
    assert sorted(os.listdir(info.path)) == ["lmdb", "manifest.json", "rows"]


# --------------------------------------------------------------------------- CLI and runbook

def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_snapshot_verify_exits_1_on_a_damaged_snapshot(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        _fill(db, n=10)
        info = db.snapshot()
    assert _cli("snapshot", "verify", info.path, "--db", tmp_path / "db").exit_code == 0
    name = os.path.basename(info.path)
    assert _cli("snapshot", "verify", name, "--db", tmp_path / "db").exit_code == 0
    data = Path(info.path) / "lmdb" / "data.mdb"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0x01
    data.write_bytes(bytes(raw))
    result = _cli("snapshot", "verify", info.path, "--db", tmp_path / "db")
    assert result.exit_code == 1 and "data.mdb" in result.stderr


def test_cli_restore_refuses_existing_target_without_force(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        _fill(db, n=10)
        info = db.snapshot()
    assert _cli("restore", info.path, tmp_path / "out", "--db", tmp_path / "db").exit_code == 0
    result = _cli("restore", info.path, tmp_path / "out", "--db", tmp_path / "db")
    assert result.exit_code == 1 and "already exists" in result.stderr
    result = _cli("restore", info.path, tmp_path / "out", "--force", "--db", tmp_path / "db")
    assert result.exit_code == 0, result.output


def test_runbook_back_up_and_restore_commands_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with sv.open("data", checkpoint_interval=0) as db:
        _fill(db, n=30)
    commands = runbook_commands("Back up and restore")
    assert len(commands) >= 5
    for argv in commands:
        assert argv[0] == "simplevector"
        result = CliRunner().invoke(main, argv[1:])
        assert result.exit_code == 0, (argv, result.output, result.exception)
    assert len(os.listdir("data/snapshots")) == 1
    with sv.open("data-restored", checkpoint_interval=0) as db:
        assert db.namespace("docs").count() == 30


def test_a_snapshot_of_an_lmdb_bigger_than_lmdbs_default_map_restores(tmp_path):
    """The snapshot's LMDB copy is compacted to its data's size; dropping the checkpoint
    record from it must not need py-lmdb's default 10 MiB map (it raised MDB_MAP_FULL)."""
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns = db.create_namespace("big", dim=4, metric="l2", index="Flat")
        X = np.ones((4000, 4), np.float32)
        for lo in range(0, 40000, 4000):
            ns.upsert(list(range(lo, lo + 4000)), X, documents=["x" * 400] * 4000)
        db.checkpoint()
        info = db.snapshot()
    assert os.path.getsize(os.path.join(info.path, "lmdb", "data.mdb")) > 12 << 20
    sv.restore(info.path, tmp_path / "r")
    with sv.open(tmp_path / "r", readonly=True) as r:
        assert r.namespace("big").count() == 40000
        assert r.namespace("big").get(39999).document == "x" * 400
