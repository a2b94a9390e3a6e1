"""verify / repair / scrub against real damage planted in a closed database's files.

Each planted fault is written with the database closed, through LMDB or the row and bundle
files directly (no mocks): verify must name it, health must report it (critical) from the
last verify or scrub result, and repair must fix it (derived state) or name the id (primary
data, which comes back from a snapshot and the WAL archive)."""

import json
import os
import time
from pathlib import Path

import lmdb
import numpy as np
import pytest
from click.testing import CliRunner

import simplevector as sv
from simplevector.cli import main
from simplevector.engine import schema, segments

DIM = 16
N = 3000


def _build(path, *, ivf: bool = True):
    """A namespace of N rows with metadata and documents, deletes, replacements and a
    trained IVF-PQ index, plus a small flat one; closed (so checkpointed)."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((N, DIM)).astype(np.float32)
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("docs", dim=DIM, metric="cosine",
                                 index="IVF16,PQ4" if ivf else "Flat")
        ns.upsert(list(range(N)), X,
                  metadata=[{"i": i, "tag": f"t{i % 4}", "l": [i % 3, "x"], "n": {"a": i % 2}}
                            for i in range(N)],
                  documents=[f"doc {i}" for i in range(N)])
        if ivf:
            ns.build_index()
        ns.delete(list(range(0, N, 9)))
        ns.upsert(list(range(1, 400, 9)), X[:45] * 2,
                  metadata=[{"i": -i, "tag": "replaced"} for i in range(45)])
        ns.upsert([f"s{i}" for i in range(50)], X[:50], documents=[f"s{i}" for i in range(50)])
        small = db.create_namespace("small", dim=4, metric="l2")
        small.upsert(["a", "b", "c"], rng.standard_normal((3, 4)).astype(np.float32),
                     metadata=[{"k": 1}, None, {"k": 3}])
        vid = db.version_status("docs").vid
    return vid


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("integrity") / "base"
    vid = _build(base)
    return base, vid


@pytest.fixture
def db_path(built, tmp_path):
    import shutil
    base, vid = built
    path = tmp_path / "db"
    shutil.copytree(base, path)
    return path, vid


# -- planting -------------------------------------------------------------------------------
def _env(path):
    return lmdb.open(str(path / "lmdb"), max_dbs=16)


def _rowid(path, vid, extid) -> int:
    env = _env(path)
    try:
        with env.begin() as txn:
            key = schema.id_key(vid, extid)
            raw = txn.get(key, db=env.open_db(b"ids", txn=txn))
            return schema.parse_id_value(key, raw)[0]
    finally:
        env.close()


def _edit(path, sub: bytes, fn):
    env = _env(path)
    try:
        with env.begin(write=True) as txn:
            fn(txn, env.open_db(sub, txn=txn))
        env.sync(True)
    finally:
        env.close()


def plant_row(path, vid, extid):
    rowid = _rowid(path, vid, extid)
    with open(segments.row_path(str(path), vid), "r+b") as f:
        f.seek(rowid * DIM * 4)
        f.write(np.full(DIM, 0.25, np.float32).tobytes())


def plant_record_deleted(path, vid, extid):
    rowid = _rowid(path, vid, extid)
    _edit(path, b"records", lambda txn, db: txn.delete(schema.row_key(vid, rowid), db=db))


def plant_id_deleted(path, vid, extid):
    _edit(path, b"ids", lambda txn, db: txn.delete(schema.id_key(vid, extid), db=db))


def plant_record_corrupt(path, vid, extid):
    rowid = _rowid(path, vid, extid)
    key = schema.row_key(vid, rowid)

    def fn(txn, db):
        raw = bytearray(txn.get(key, db=db))
        raw[-2] ^= 0x5A                 # a byte of the msgpack body
        txn.put(key, bytes(raw), db=db)
    _edit(path, b"records", fn)


def plant_bundle_flip(path, vid, _extid):
    ckpt = path / segments.CKPT_DIR
    (name,) = os.listdir(ckpt)
    bundle = ckpt / name / f"v{vid}.arr"
    with open(bundle, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    return str(bundle)


def plant_stray_id(path, vid, extid):
    key = schema.id_key(vid, extid)
    _edit(path, b"ids", lambda txn, db: txn.put(key, schema.id_value(key, N * 10, 0), db=db))


# kind verify reports, the id planted on, whether it is primary data
PLANTS = {
    "row_overwritten": (plant_row, 17, "row_checksum", True),
    "record_deleted": (plant_record_deleted, 23, "record_missing", True),
    "id_entry_deleted": (plant_id_deleted, 25, "id_entry_missing", True),
    "record_corrupted": (plant_record_corrupt, 29, "record_corrupt", True),
    "bundle_byte_flipped": (plant_bundle_flip, None, "bundle_checksum", False),
    "stray_id_entry": (plant_stray_id, "ghost", "id_entry_stray", True),
}


def _named(report, kind, extid):
    return [p for p in report.problems if p.kind == kind and p.namespace == "docs"
            and (extid is None or p.id == extid)]


# -- a clean database -------------------------------------------------------------------------
def test_a_clean_database_verifies_ok_shallow_and_deep(db_path):
    path, _ = db_path
    with sv.open(path, checkpoint_interval=0) as db:
        for deep in (False, True):
            report = db.verify(deep=deep)
            assert report.ok, report.problems
            assert report.checked["rows"] == db.namespace("docs").count() + 3
            assert report.checked["id_entries"] == report.checked["rows"]
            assert report.checked["bundles"] == 2
            assert report.checked["ivf_rows"] >= db.namespace("docs").count()
        assert report.checked["deep_rows"] > 0 and report.checked["deep_queries"] > 0
        # writes after the checkpoint (tail rows, a replaced and a deleted row) too
        db.namespace("docs").upsert([5, 100000], np.ones((2, DIM), np.float32),
                                    metadata=[{"i": 5}, None])
        db.namespace("docs").delete([7])
        assert db.verify(deep=True).ok
        assert db.health().find("integrity")[0].severity == "ok"


READER = r"""
import json, sys
import simplevector as sv
with sv.open(sys.argv[1], readonly=True, checkpoint_interval=0) as db:
    report = db.verify(deep=True)
    print(json.dumps({"ok": report.ok, "problems": [str(p) for p in report.problems],
                      "rows": report.checked["rows"], "last": db.last_verify()["ok"]}))
"""


def test_a_read_only_process_verifies_while_the_writer_is_open(db_path):
    import subprocess
    import sys
    path, _ = db_path
    with sv.open(path, checkpoint_interval=0) as writer:
        writer.namespace("docs").upsert([424242], np.ones((1, DIM), np.float32))
        out = subprocess.run([sys.executable, "-c", READER, str(path)], check=True,
                             capture_output=True, text=True).stdout
        data = json.loads(out)
        assert data["ok"], data["problems"]
        assert data["rows"] == writer.namespace("docs").count() + 3 and data["last"] is True


def test_verify_and_repair_reject_non_bool_flags(db_path):
    path, _ = db_path
    with sv.open(path, checkpoint_interval=0) as db:
        with pytest.raises(sv.InvalidInput, match="deep"):
            db.verify(deep="yes")
        with pytest.raises(sv.InvalidInput, match="rows_from_wal"):
            db.repair(rows_from_wal=1)


# -- planted damage -------------------------------------------------------------------------------
@pytest.mark.parametrize("plant", list(PLANTS))
def test_planted_damage_is_named_by_verify_and_health_and_handled_by_repair(db_path, plant):
    path, vid = db_path
    fn, extid, kind, primary = PLANTS[plant]
    fn(path, vid, extid)
    with sv.open(path, checkpoint_interval=0) as db:
        report = db.verify()
        assert not report.ok
        hits = _named(report, kind, extid)
        assert hits, (kind, report.problems)
        assert all(p.primary == primary for p in hits)
        assert all(p.version == 1 for p in hits)
        health = db.health()
        (finding,) = health.find("integrity")
        assert finding.severity == "critical" and health.status == "critical"
        assert finding.value == len(report.problems)

        repaired = db.repair()
        if primary:
            # primary damage is named, never silently fixed
            assert (kind, extid) in [(p.kind, p.id) for p in repaired.damaged]
            assert not repaired.ok and "simplevector restore" in repaired.hint
            assert not repaired.restored_from_wal
            if plant == "row_overwritten":
                # the WAL still holds the row: listed, and rewritten only when asked
                assert repaired.in_wal == (("docs", 1, extid),)
                assert _named(db.verify(), "row_checksum", extid)
                again = db.repair(rows_from_wal=True)
                assert again.restored_from_wal == (("docs", 1, extid),)
                assert again.ok and again.after.ok and not again.damaged
                repaired = again
        else:
            assert repaired.ok and repaired.after.ok and not repaired.damaged
            assert any("checkpoint" in line for line in repaired.rebuilt)
        # derived state agrees with LMDB after the repair; what stays is the primary damage
        assert all(p.primary for p in repaired.after.problems)
        assert repaired.after.problems == db.verify().problems
    # and a reopen sees the repaired state
    with sv.open(path, checkpoint_interval=0) as db:
        again = db.verify(deep=True)
        assert all(p.primary for p in again.problems), again.problems
        if plant in ("record_deleted", "bundle_byte_flipped", "row_overwritten"):
            assert again.ok
        if plant == "id_entry_deleted":
            # the row is gone with its id entry; its record stays, named, until a restore
            assert {(p.kind, p.id) for p in again.problems} == {("record_stray", 25)}


def test_repair_after_a_flipped_bundle_byte_keeps_queries_answering(db_path):
    path, vid = db_path
    bundle = plant_bundle_flip(path, vid, None)
    with sv.open(path, checkpoint_interval=0) as db:
        (p,) = _named(db.verify(), "bundle_checksum", None)
        assert p.key == bundle
        report = db.repair()
        assert report.ok
        ns = db.namespace("docs")
        rec = ns.get(10, include=("vectors",))
        hits = ns.query(rec.vector, k=1, include=())
        assert hits[0].id == 10


def test_deep_verify_finds_codes_that_no_longer_match_their_rows(db_path):
    """A row overwritten in place also no longer matches its PQ code (deep)."""
    path, vid = db_path
    for extid in range(2, 200, 9):
        plant_row(path, vid, extid)
    with sv.open(path, checkpoint_interval=0) as db:
        report = db.verify(deep=True)
        kinds = {p.kind for p in report.problems}
        assert "row_checksum" in kinds
        assert "ivf_codes" in kinds, kinds


# -- scrub ---------------------------------------------------------------------------------
def _wait(cond, seconds=60.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_scrub_finds_planted_damage_in_the_background_and_health_reports_it(db_path):
    path, vid = db_path
    plant_row(path, vid, 44)
    with sv.open(path, checkpoint_interval=0, scrub_interval=0.01, scrub_rows=500) as db:
        assert _wait(lambda: (db.last_verify() or {}).get("problem_count"))
        last = db.last_verify()
        assert last["source"] == "scrub"
        assert any(p["kind"] == "row_checksum" and p["id"] == 44 for p in last["problems"])
        (finding,) = db.health().find("integrity")
        assert finding.severity == "critical" and "scrub" in finding.message
        events = [e for e in db.alert_events() if e["rule"] == "scrub"]
        assert events and events[-1]["severity"] == "critical"


def test_scrub_of_a_clean_database_completes_cycles_without_problems(db_path):
    path, _ = db_path
    with sv.open(path, checkpoint_interval=0) as db:
        reports = [db.scrub_step() for _ in range(40)]
        assert any(r.complete for r in reports)
        assert all(r.ok for r in reports), [r.problems for r in reports if not r.ok]
        assert sum(r.checked["rows"] for r in reports) >= db.namespace("docs").count()
        assert sum(r.checked["deep_rows"] for r in reports) > 0    # a deep sample per cycle
        assert db.last_verify()["source"] == "scrub" and db.last_verify()["ok"]
        assert any(e["rule"] == "scrub" for e in db.alert_events())


def test_scrub_options_are_checked(tmp_path):
    with pytest.raises(sv.InvalidInput, match="scrub_interval"):
        sv.open(tmp_path / "x", scrub_interval=-1)
    with pytest.raises(sv.InvalidInput, match="scrub_rows"):
        sv.open(tmp_path / "x", scrub_rows=0)


def test_the_last_result_survives_a_reopen(db_path):
    path, vid = db_path
    plant_record_corrupt(path, vid, 29)
    with sv.open(path, checkpoint_interval=0) as db:
        assert not db.verify().ok
    with sv.open(path, checkpoint_interval=0, readonly=True) as db:
        last = db.last_verify()
        assert last["source"] == "verify" and not last["ok"]
        assert db.health().find("integrity")[0].severity == "critical"


# -- CLI --------------------------------------------------------------------------------
def test_cli_verify_and_repair_exit_codes_and_json(db_path):
    path, vid = db_path
    ok = CliRunner().invoke(main, ["verify", "--db", str(path), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output[ok.output.index("{"):])["ok"] is True
    plant_record_deleted(path, vid, 23)
    bad = CliRunner().invoke(main, ["verify", "--deep", "--db", str(path)])
    assert bad.exit_code == 1, bad.output
    assert "record_missing" in bad.output and "23" in bad.output
    fixed = CliRunner().invoke(main, ["repair", "--db", str(path), "--json"])
    assert fixed.exit_code == 1, fixed.output          # primary damage: restore needed
    data = json.loads(fixed.output[fixed.output.index("{"):])
    assert [(d["kind"], d["id"]) for d in data["damaged"]] == [("record_missing", 23)]
    assert "restore" in data["hint"]
    after = CliRunner().invoke(main, ["verify", "--db", str(path)])
    assert after.exit_code == 0, after.output
    for command in ("verify", "repair"):
        result = CliRunner().invoke(main, [command, "-h"])
        assert result.exit_code == 0 and "--db" in result.output


def test_runbook_corruption_procedure_runs_as_written(db_path, tmp_path, monkeypatch):
    """docs/runbook.md "Recover from a corruption finding": verify, repair, and for damaged
    primary data a restore from the snapshot and the WAL archive."""
    from _runbook import runbook_commands
    path, vid = db_path
    monkeypatch.chdir(tmp_path)
    os.rename(path, tmp_path / "data")
    # the snapshot and WAL archive the procedure restores from, taken before the damage
    with sv.open("data", checkpoint_interval=0, wal_archive="wal-archive") as db:
        db.snapshot("backup/snap")
        db.namespace("docs").upsert([777], np.ones((1, DIM), np.float32), metadata=[{"i": 7}])
    plant_record_corrupt(Path("data"), vid, 29)
    commands = runbook_commands("Recover from a corruption finding")
    assert [c[1] for c in commands] == ["verify", "repair", "restore", "verify"]
    codes = {"verify": [1, 0], "repair": [1], "restore": [0]}
    for argv in commands:
        result = CliRunner().invoke(main, argv[1:])
        assert result.exit_code == codes[argv[1]].pop(0), (argv, result.output)
    with sv.open("data", checkpoint_interval=0, readonly=True) as db:
        ns = db.namespace("docs")
        assert ns.get(29).metadata == {"i": 29, "tag": "t1", "l": [2, "x"], "n": {"a": 1}}
        assert ns.get(777).metadata == {"i": 7}
        assert db.verify().ok


def test_metrics_export_the_last_result(db_path):
    path, vid = db_path
    plant_stray_id(path, vid, "ghost")
    with sv.open(path, checkpoint_interval=0) as db:
        assert "simplevector_integrity_problems" not in db.metrics_text()
        db.verify()
        text = db.metrics_text()
        assert "simplevector_integrity_problems 1.0" in text
        assert "simplevector_integrity_age_seconds" in text
        alert = next(a for a in db.alerts() if a.rule == "integrity_problems")
        assert alert.state == "firing" and alert.severity == "critical"


def test_a_damaged_row_the_wal_no_longer_holds_is_named_for_a_restore(tmp_path):
    """With the WAL truncated past the row's record, repair cannot prove any bytes for it:
    the id is reported, the row is left as it is (not dropped, not invented)."""
    path = tmp_path / "db"
    rng = np.random.default_rng(5)
    opts = dict(checkpoint_interval=0, auto_index=False, wal_keep_bytes=0,
                wal_segment_bytes=4096)
    with sv.open(path, **opts) as db:
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        for lo in range(0, 600, 50):
            ns.upsert(list(range(lo, lo + 50)),
                      rng.standard_normal((50, DIM)).astype(np.float32))
        db.checkpoint()
        vid = db.version_status("docs").vid
    plant_row(path, vid, 3)
    with sv.open(path, **opts) as db:
        assert db.wal_retention()["segments"] < 12      # the first upserts' segments are gone
        report = db.repair(rows_from_wal=True)
        assert not report.restored_from_wal and not report.in_wal
        assert [(p.kind, p.id) for p in report.damaged] == [("row_checksum", 3)]
        assert not report.ok and "restore" in report.hint
        # the row is still there, as damaged as it was: nothing was dropped
        assert db.namespace("docs").get(3, include=("vectors",)).vector.tolist() == [0.25] * DIM


def test_verify_and_scrub_during_concurrent_writes_report_nothing(db_path):
    import threading
    path, _ = db_path
    with sv.open(path, checkpoint_interval=0.2) as db:
        ns = db.namespace("docs")
        stop = threading.Event()
        errors = []

        def writer():
            rng = np.random.default_rng(9)
            i = 0
            while not stop.is_set():
                try:
                    ids = [f"w{i + j}" for j in range(20)]
                    ns.upsert(ids, rng.standard_normal((20, DIM)).astype(np.float32),
                              metadata=[{"w": i + j} for j in range(20)])
                    ns.delete([f"w{i}", 1 + (i % N)])
                    i += 20
                except Exception as e:      # pragma: no cover - reported below
                    errors.append(e)
                    return
        thread = threading.Thread(target=writer)
        thread.start()
        try:
            for _ in range(3):
                report = db.verify(deep=True)
                assert report.ok, report.problems
            for _ in range(60):
                step = db.scrub_step()
                assert step.ok, step.problems
        finally:
            stop.set()
            thread.join()
        assert not errors
        assert db.verify().ok


def test_verify_reads_a_bundle_that_a_later_checkpoint_removes_meanwhile(db_path, monkeypatch):
    """A checkpoint that replaces the one verify read from the record removes its directory:
    before verify maps the bundle (nothing to read: not damage) or after (the mapping stays
    readable). Both are what a checkpoint in another thread does during verify."""
    import shutil
    from simplevector.engine import arrayfile, integrity
    path, _ = db_path
    with sv.open(path) as db:
        ns = db.namespace("docs")
        real_record, real_map = integrity.check_checkpoint_record, arrayfile._map_bundle

        def record_then_replace(engine, found):
            name = real_record(engine, found)
            ns.upsert(["late"], np.ones((1, DIM), np.float32))
            db.checkpoint()                         # the named directory is gone now
            assert integrity._checkpoint_dir(engine) != name
            assert not os.path.isdir(os.path.join(segments.ckpt_root(str(path)), name))
            return name

        monkeypatch.setattr(integrity, "check_checkpoint_record", record_then_replace)
        report = db.verify()
        assert report.ok, report.problems
        assert report.checked["bundles"] == 0
        monkeypatch.setattr(integrity, "check_checkpoint_record", real_record)

        moved = str(path / "moved-away")

        def map_then_remove(bundle, check):
            out = real_map(bundle, check)
            shutil.move(os.path.dirname(bundle), moved)    # as the next checkpoint removes it
            return out

        monkeypatch.setattr(arrayfile, "_map_bundle", map_then_remove)
        name = integrity._checkpoint_dir(db.engine)
        report = db.verify()
        assert report.ok, report.problems
        assert report.checked["bundles"] >= 1       # read, checksums and lists checked
        assert os.path.isdir(moved)
        shutil.move(moved, os.path.join(segments.ckpt_root(str(path)), name))


def test_cli_repair_rows_from_wal_rewrites_only_when_asked(db_path):
    path, vid = db_path
    plant_row(path, vid, 17)
    first = CliRunner().invoke(main, ["repair", "--db", str(path)])
    assert first.exit_code == 1 and "--rows-from-wal" in first.output, first.output
    second = CliRunner().invoke(main, ["repair", "--db", str(path), "--rows-from-wal",
                                       "--json"])
    assert second.exit_code == 0, second.output
    data = json.loads(second.output[second.output.index("{"):])
    assert data["restored_from_wal"] == [["docs", 1, 17]] and data["ok"]
    assert CliRunner().invoke(main, ["verify", "--db", str(path)]).exit_code == 0


def test_quiet_scrub_cycles_do_not_pile_up_events(db_path):
    path, _ = db_path
    with sv.open(path, checkpoint_interval=0) as db:
        steps = [db.scrub_step() for _ in range(200)]
        assert sum(s.complete for s in steps) >= 3
        assert len([e for e in db.alert_events() if e["rule"] == "scrub"]) == 1


def test_a_field_index_that_disagrees_with_the_metadata_is_named_and_rebuilt(db_path):
    """A checkpoint bundle rewritten (valid CRCs) with one row left out of a field's
    exists list: derived state that disagrees with the records."""
    from simplevector.engine.arrayfile import read_bundle, write_bundle
    path, vid = db_path
    ckpt = path / segments.CKPT_DIR
    (name,) = os.listdir(ckpt)
    bundle = str(ckpt / name / f"v{vid}.arr")
    meta, arrays = read_bundle(bundle)
    arrays = {k: np.array(v) for k, v in arrays.items()}
    i = [tuple(p) for p in meta["fields"]["paths"]].index(("tag",))
    exists = arrays[f"fields.f{i}.exists"]
    rowid = _rowid(path, vid, 38)
    arrays[f"fields.f{i}.exists"] = exists[exists != rowid]
    write_bundle(bundle, meta, arrays)
    with sv.open(path, checkpoint_interval=0) as db:
        report = db.verify()
        hits = _named(report, "field_index", 38)
        assert hits and not hits[0].primary and "'tag'" in hits[0].detail, report.problems
        steps = [db.scrub_step() for _ in range(40)]     # the slice check names it too
        assert any(_named(step, "field_index", 38) for step in steps)
        repaired = db.repair()
        assert repaired.ok and repaired.after.ok
        ns = db.namespace("docs")
        hits = ns.query(ns.get(38, include=("vectors",)).vector, k=5, where={"tag": "t2"},
                        include=())
        assert 38 in [h.id for h in hits]


def test_a_live_row_missing_from_the_ivf_lists_is_named_and_rebuilt(db_path):
    """A bundle rewritten (valid CRCs) with one live row taken out of its IVF list."""
    from simplevector.engine.arrayfile import read_bundle, write_bundle
    path, vid = db_path
    ckpt = path / segments.CKPT_DIR
    (name,) = os.listdir(ckpt)
    bundle = str(ckpt / name / f"v{vid}.arr")
    meta, arrays = read_bundle(bundle)
    arrays = {k: np.array(v) for k, v in arrays.items()}
    rowid = _rowid(path, vid, 50)
    pos, offsets = arrays["ivf.pos"], arrays["ivf.offsets"]
    j = int(np.flatnonzero(pos == rowid)[0])
    lst = int(np.searchsorted(offsets, j, side="right")) - 1
    arrays["ivf.pos"] = np.delete(pos, j)
    assert arrays["ivf.codes"].shape[0] == len(pos)        # (rows, m) codes
    arrays["ivf.codes"] = np.delete(arrays["ivf.codes"], j, axis=0)
    offsets = offsets.copy()
    offsets[lst + 1:] -= 1
    arrays["ivf.offsets"] = offsets
    write_bundle(bundle, meta, arrays)
    with sv.open(path, checkpoint_interval=0) as db:
        report = db.verify()
        assert _named(report, "ivf_missing", 50), report.problems
        assert any(p.kind == "bundle" and "none of its IVF lists" in p.detail
                   for p in report.problems)
        repaired = db.repair()
        assert repaired.ok and repaired.after.ok
        assert any("re-encoded" in line for line in repaired.rebuilt)
        assert db.verify(deep=True).ok


def test_a_read_only_process_scrubs_and_keeps_the_result_in_memory(db_path):
    path, vid = db_path
    plant_record_deleted(path, vid, 23)
    with sv.open(path, readonly=True, checkpoint_interval=0, scrub_interval=0.01,
                 scrub_rows=1000) as db:
        assert _wait(lambda: (db.last_verify() or {}).get("problem_count"))
        last = db.last_verify()
        assert last["source"] == "scrub"
        assert [(p["kind"], p["id"]) for p in last["problems"]] == [("record_missing", 23)]
        assert db.health().find("integrity")[0].severity == "critical"
    with sv.open(path, readonly=True, checkpoint_interval=0) as db:
        assert db.last_verify() is None            # nothing was written by the reader


def test_a_bundle_header_damaged_is_rebuilt_at_open_and_reported(db_path):
    """A flipped byte in a bundle's header (its own CRC-32): the open does not use the
    bundle (it rebuilds from LMDB and the rows), and verify says so until a checkpoint."""
    path, vid = db_path
    ckpt = path / segments.CKPT_DIR
    (name,) = os.listdir(ckpt)
    with open(ckpt / name / f"v{vid}.arr", "r+b") as f:
        f.seek(40)
        byte = f.read(1)
        f.seek(40)
        f.write(bytes([byte[0] ^ 0xFF]))
    with sv.open(path, checkpoint_interval=0) as db:
        report = db.verify()
        assert [p.kind for p in report.problems] == ["bundle_missing"], report.problems
        assert name in report.problems[0].key and not report.problems[0].primary
        assert db.namespace("docs").get(10) is not None
        assert db.repair().ok
        assert db.verify(deep=True).ok


def test_wal_damage_below_the_checkpoint_does_not_stop_the_open_and_verify_names_it(tmp_path):
    """An open reads only the WAL past the checkpoint (engine/wal.py scan_from); a damaged
    frame in an older retained segment is found by verify, and the change feed refuses to
    read across it, while the state and queries are unaffected."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((400, DIM)).astype(np.float32)
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0, auto_index=False, wal_segment_bytes=4096,
                 wal_keep_bytes=1 << 30) as db:             # keep every segment
        ns = db.create_namespace("docs", dim=DIM, metric="l2")
        for i in range(0, 400, 10):
            ns.upsert(list(range(i, i + 10)), X[i:i + 10])
        segs = db.engine._wal.segments()
    assert len(segs) > 4
    victim = segs[1][0]
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) - 3)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.namespace("docs")
        assert ns.count() == 400
        hit = ns.query(X[123], k=1, exact=True)[0]
        assert hit.id == 123
        report = db.verify()
        kinds = [p.kind for p in report.problems]
        assert kinds == ["wal_segment"] and not report.ok and not report.primary
        assert os.path.basename(victim) in report.problems[0].detail
        with pytest.raises(sv.CorruptionError):
            list(db.changes(0))
    with sv.open(tmp_path / "clean", checkpoint_interval=0) as db:
        db.create_namespace("x", dim=4, metric="l2").upsert([1], np.ones((1, 4), np.float32))
        report = db.verify()
        assert report.ok and report.checked["wal_segments"] == 1


def test_cosine_rows_normalise_bit_for_bit_alike_one_at_a_time_and_in_a_batch(tmp_path):
    """repair's WAL check re-derives a stored row from its logged vector one row at a time:
    a single row's normalisation must equal the batch's exactly (a float32 shortcut for
    single rows once made repair miss rows the WAL still held)."""
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        db.create_namespace("c", dim=97, metric="cosine")
        state = db.engine._state(db.engine._resolve("c").vid)
        X = np.random.default_rng(4).standard_normal((64, 97)).astype(np.float32) * 3.7
        batch = state.prepare(X)
        for i in range(len(X)):
            assert state.prepare(X[i:i + 1])[0].tobytes() == batch[i].tobytes()
