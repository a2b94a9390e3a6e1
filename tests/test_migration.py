"""Model migration (ops/migration.py): plan, resumable back-fill, dual-write, shadow,
promote, rollback, abort; kill -9 during run()."""

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import simplevector as sv
from simplevector.ops.sync import content_hash

sys.path.insert(0, os.path.dirname(__file__))
from _fresh_child import NEW, OLD, Counting, records, vector_of  # noqa: E402

CHILD = os.path.join(os.path.dirname(__file__), "_fresh_child.py")


def _open(path):
    return sv.open(path, checkpoint_interval=0)


def _filled(path, n=300):
    db = _open(path)
    old = Counting(OLD)
    db.create_namespace("docs", embedding=old, metric="l2").sync(records(n))
    return db, old


def _assert_new_version_matches_old(db, version):
    """Every row of the live old version is in ``version`` with NEW's vector of its text."""
    old = db.engine.namespace("docs", 1)
    new = db.engine.namespace("docs", version)
    assert sorted(old.ids()) == sorted(new.ids())
    ids = old.ids()
    docs = [r.document for r in old.get(ids, include=("documents",))]
    rows = new.get(ids, include=("documents", "vectors"))
    for extid, doc, row in zip(ids, docs, rows):
        assert row.document == doc, extid
        np.testing.assert_allclose(row.vector, vector_of(doc, NEW), rtol=1e-6, atol=1e-6)


def test_plan_run_promote_rollback(tmp_path):
    db, old = _filled(tmp_path / "db")
    with db:
        new = Counting(NEW)
        m = db.migrate("docs", embedding=new)
        assert (m.state, m.from_version, m.to_version) == ("backfilling", 1, 2)
        plan = m.plan()
        assert (plan["rows"], plan["migratable"], plan["not_migratable"]) == (300, 300, 0)
        assert plan["estimated_tokens"] == 900 and plan["embed_rate"] > 0
        assert plan["estimated_seconds"] is not None and new.texts == []
        status = m.run(batch_size=64)
        assert status["state"] == "ready" and status["embedded"] == 300
        assert len(new.texts) == 300 and status["remaining"] == 0
        _assert_new_version_matches_old(db, 2)
        prov = db.engine.namespace("docs", 2).provenance(["r7"])[0]
        assert prov["m"] == NEW and prov["h"] == content_hash("record 7 text", {"src": "s3"},
                                                              NEW)
        m.promote()
        ns = db.namespace("docs")
        assert ns.model == NEW and ns.version == 2
        assert ns.query_text("record 9 text", k=1)[0].id == "r9"
        with pytest.raises(sv.ModelMismatch):
            ns.query(vector_of("record 9 text", OLD), k=1, model=OLD)
        ns.sync([{"id": "r9", "text": "record 9 rewritten", "metadata": {"src": "s1"}}])
        ns.delete(ids=["r8"])                  # both reach the old version too
        m.rollback()
        assert db.namespace("docs").model == OLD and m.state == "rolled_back"
        back = db.namespace("docs")
        assert back.get("r8") is None and back.get("r9").document == "record 9 rewritten"
        np.testing.assert_allclose(back.get("r9", include=("vectors",)).vector,
                                   vector_of("record 9 rewritten", OLD), rtol=1e-6)
        assert back.query_text("record 7 text", k=1)[0].id == "r7"


def test_dual_write_from_the_start_reaches_the_new_version_and_is_not_embedded_again(tmp_path):
    db, old = _filled(tmp_path / "db", n=100)
    with db:
        new = Counting(NEW)
        m = db.migrate("docs", embedding=new)
        ns = db.namespace("docs")
        r = ns.sync(records(100, changed={10, 11, 12})[5:], mode="full")   # 3 changed, 5 gone
        assert (r.updated, r.deleted, r.dual_written) == (3, 5, 3)
        ns.delete(ids=["r50"])
        ns.upsert(["x1"], vector_of("raw row", OLD)[None], documents=["raw row"])
        v2 = db.engine.namespace("docs", 2)
        assert v2.get(["r0", "r50"]) == [None, None] and v2.get("x1").document == "raw row"
        assert v2.get("r10").document == "record 10 text changed"
        m.run(batch_size=32)
        assert sorted(new.texts) == sorted(set(new.texts))       # no text embedded twice
        assert len(new.texts) == 95                              # 94 records + "raw row"
        _assert_new_version_matches_old(db, 2)


def test_concurrent_writes_and_deletes_during_run_end_consistent_after_promote(tmp_path):
    db, old = _filled(tmp_path / "db", n=400)
    with db:
        new = Counting(NEW)
        new.delay = 0.005
        m = db.migrate("docs", embedding=new)
        ns = db.namespace("docs")
        stop = threading.Event()
        errors = []

        def writer():
            i = 0
            try:
                while not stop.is_set() and i < 60:
                    ns.sync([{"id": f"r{(i * 37) % 400}", "text": f"rewritten {i}",
                              "metadata": {"src": "w"}}])
                    ns.delete(ids=[f"r{(i * 53 + 11) % 400}"])
                    ns.sync([{"id": f"n{i}", "text": f"new row {i}"}])
                    i += 1
            except Exception as e:        # reported below
                errors.append(e)
        thread = threading.Thread(target=writer)
        thread.start()
        m.run(batch_size=25)
        stop.set()
        thread.join()
        assert errors == []
        m.run(batch_size=25)               # the verification pass catches up, if needed
        _assert_new_version_matches_old(db, 2)
        m.promote()
        assert db.namespace("docs").count() == db.engine.namespace("docs", 1).count()


def test_rows_without_text_are_not_migratable_and_block_promote_unless_forced(tmp_path):
    db, old = _filled(tmp_path / "db", n=20)
    with db:
        db.namespace("docs").upsert(["raw"], np.ones((1, 8), np.float32))    # no document
        m = db.migrate("docs", embedding=Counting(NEW))
        assert m.plan()["not_migratable"] == 1
        with pytest.raises(sv.MigrationError, match="backfilling; expected ready"):
            m.promote()
        status = m.run()
        assert status["not_migratable"] == 1 and status["not_migratable_ids"] == ["raw"]
        with pytest.raises(sv.MigrationError, match="1 rows .* have no text"):
            m.promote()
        m.promote(force=True)
        assert db.namespace("docs").count() == 20


def test_run_resumes_from_the_durable_cursor_after_reopen(tmp_path):
    path = tmp_path / "db"
    db, old = _filled(path, n=200)
    new = Counting(NEW)
    with db:
        m = db.migrate("docs", embedding=new)
        m.run(batch_size=50, max_batches=2)
        assert m.status()["cursor"] is not None and len(new.texts) == 100
    with _open(path) as db:
        (m,) = db.migrations()
        assert m.state == "backfilling" and m.status()["rows_done"] == 100
        with pytest.raises(sv.MigrationError, match="no embedding function attached"):
            m.run()
        again = Counting(NEW)
        assert db.migrate("docs", embedding=again) is m
        m.run(batch_size=50)
        assert len(again.texts) == 100 and not set(again.texts) & set(new.texts)
        _assert_new_version_matches_old(db, 2)


def test_shadow_compares_both_versions_with_recent_query_texts(tmp_path):
    db, old = _filled(tmp_path / "db", n=200)
    with db:
        ns = db.namespace("docs")
        for i in range(0, 40, 2):
            ns.query_text(f"record {i} text", k=5)
        m = db.migrate("docs", embedding=Counting(NEW))
        m.run()
        rep = m.shadow(k=5, samples=10)
        assert rep.source == "recent queries" and rep.samples == 10 and rep.k == 5
        # each text is stored, so both versions find it first: overlap is at least 1/5
        assert 0.2 <= rep.overlap_at_k <= 1.0
        assert rep.recall_new == pytest.approx(1.0)            # flat: exact
        assert rep.latency_old > 0 and rep.latency_new > 0
        assert m.status()["shadow"]["overlap_at_k"] == rep.overlap_at_k


def test_abort_drops_the_new_version_and_stops_dual_write(tmp_path):
    db, old = _filled(tmp_path / "db", n=20)
    with db:
        new = Counting(NEW)
        m = db.migrate("docs", embedding=new)
        m.abort()
        assert m.state == "aborted" and db.active_migration("docs") is None
        assert [v.version for v in db.list_namespaces()[0].versions] == [1]
        db.namespace("docs").sync(records(25))
        assert new.texts == []
        with pytest.raises(sv.MigrationError, match="aborted"):
            m.run()


def test_migrate_refuses_the_same_model_and_a_second_target(tmp_path):
    db, old = _filled(tmp_path / "db", n=5)
    with db:
        with pytest.raises(sv.MigrationError, match="already uses"):
            db.migrate("docs", embedding=Counting(OLD))
        db.migrate("docs", embedding=Counting(NEW))
        with pytest.raises(sv.MigrationError, match="already migrating"):
            db.migrate("docs", embedding=Counting("count-c@3.0.0"))
        with pytest.raises(sv.InvalidInput):
            db.migrate("docs", embedding="not a function")


def test_migration_run_killed_with_kill_9_resumes_and_embeds_no_batch_twice(tmp_path):
    path, log = tmp_path / "db", tmp_path / "new.log"
    db, old = _filled(path, n=300)
    db.close()
    batch = 20
    proc = subprocess.Popen([sys.executable, CHILD, "migrate", str(path), str(log), str(batch)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1)
    seen = 0
    for line in proc.stdout:
        if line.startswith("batch"):
            seen += 1
            if seen >= 4:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = open(log).read().splitlines()
    assert batch * 4 <= len(first) < 300
    proc = subprocess.run([sys.executable, CHILD, "migrate", str(path), str(log), str(batch)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    every = open(log).read().splitlines()
    again = every[len(first):]
    assert len(set(first) & set(again)) <= batch       # only the batch in flight
    assert set(every) == {r["text"] for r in records(300)}
    with _open(path) as db:
        (m,) = db.migrations()
        assert m.state == "ready"
        _assert_new_version_matches_old(db, 2)


def test_rollback_after_writes_the_old_version_missed_needs_and_uses_its_function(tmp_path):
    path = tmp_path / "db"
    db, old = _filled(path, n=30)
    with db:
        m = db.migrate("docs", embedding=Counting(NEW))
        m.run()
        m.promote()
    with _open(path) as db:                   # a restart: only the new model attached
        ns = db.namespace("docs", embedding=Counting(NEW))
        ns.sync([{"id": "r3", "text": "record 3 rewritten", "metadata": {"src": "s3"}}])
        (m,) = db.migrations()
        assert m.status()["mirror_behind"] == 1
        assert db.engine.namespace("docs", 1).get("r3").document == "record 3 text"
        with pytest.raises(sv.MigrationError, match="1 writes reached only the new version"):
            m.rollback()
        db.namespace("docs", version=1, embedding=Counting(OLD))
        m.rollback()
        back = db.namespace("docs")
        assert back.model == OLD and back.get("r3").document == "record 3 rewritten"
        np.testing.assert_allclose(back.get("r3", include=("vectors",)).vector,
                                   vector_of("record 3 rewritten", OLD), rtol=1e-6)


def test_a_migrate_killed_after_creating_its_version_is_adopted_not_duplicated(tmp_path):
    path = tmp_path / "db"
    db, old = _filled(path, n=10)
    # what a migrate() killed between the version's creation and its own record leaves
    db.engine.create_version("docs", dim=8, model=NEW)
    db.close()
    with _open(path) as db:
        assert db.migrations() == []
        m = db.migrate("docs", embedding=Counting(NEW))
        assert m.to_version == 2
        assert [v.version for v in db.list_namespaces()[0].versions] == [1, 2]


def test_a_state_save_lost_after_promote_or_rollback_is_reconciled_at_open(tmp_path):
    path = tmp_path / "db"
    db, old = _filled(path, n=10)
    with db:
        m = db.migrate("docs", embedding=Counting(NEW))
        m.run()
        saved = dict(m.doc)                 # the record as it was before promote()
        m.promote()
        db.ops_store.put(m.key, saved)      # as if killed before promote() saved its state
    with _open(path) as db:
        (m,) = db.migrations()
        assert m.state == "promoted" and db.namespace("docs").version == 2
        saved = dict(m.doc)
        db.namespace("docs", version=1, embedding=Counting(OLD))
        m.rollback()
        db.ops_store.put(m.key, saved)
    with _open(path) as db:
        (m,) = db.migrations()
        assert m.state == "rolled_back" and db.namespace("docs").version == 1


@pytest.mark.parametrize("marker, nth", [("written", 1), ("batch", 2), ("promoted", 1)])
def test_kill_9_at_each_step_of_a_migration_recovers_and_promotes(tmp_path, marker, nth):
    path, log = tmp_path / "db", tmp_path / "new.log"
    db, old = _filled(path, n=150)
    db.close()
    batch = 30
    proc = subprocess.Popen([sys.executable, CHILD, "steps", str(path), str(log), str(batch)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            bufsize=1)
    seen = 0
    for line in proc.stdout:
        if line.strip() == marker:
            seen += 1
            if seen >= nth:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with _open(path) as db:
        db.namespace("docs", version=1, embedding=Counting(OLD))
        new = Counting(NEW, str(log))
        m = db.active_migration("docs")
        if m is not None and m.state != "promoted":
            m = db.migrate("docs", embedding=new)
            m.run(batch_size=batch)
            m.promote()
        if m is None:                       # killed before the migration recorded itself
            m = db.migrate("docs", embedding=new)
            m.run(batch_size=batch)
            m.promote()
        assert db.namespace("docs").version == 2 and m.state == "promoted"
        _assert_new_version_matches_old(db, 2)
    every = open(log).read().splitlines()
    dup = len(every) - len(set(every))
    assert dup <= batch, f"{dup} texts embedded twice"
