"""Freshness in health, metrics and alerts (ops/freshness.py)."""

import os
import sys
import time

import pytest

import simplevector as sv
from simplevector.ops.health import HealthThresholds
from simplevector.ops.sync import content_hash, provenance_of

sys.path.insert(0, os.path.dirname(__file__))
from _fresh_child import NEW, OLD, Counting, records, vector_of  # noqa: E402


def _firing(db, rule):
    return [a for a in db.alerts() if a.rule == rule and a.state == "firing"]


def _gauge(db, name, namespace="docs"):
    line = next(ln for ln in db.metrics_text().splitlines()
                if ln.startswith(f'{name}{{namespace="{namespace}"}}'))
    return float(line.split()[-1])


def test_rows_embedded_by_another_model_are_counted_graded_and_alerted(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns = db.create_namespace("docs", embedding=Counting(), metric="l2")
        ns.sync(records(20))
        assert db.freshness()[0].stale_model == 0
        assert db.health().find("stale_model", "docs")[0].severity == "ok"
        other = "count-z@0.1.0"
        ns.upsert(["o1", "o2"], [vector_of("x", other), vector_of("y", other)],
                  documents=["x", "y"],
                  provenance=[provenance_of(content_hash(t, None, other), other, time.time())
                              for t in "xy"])
        r = db.freshness("docs")[0]
        assert (r.stale_model, r.models) == (2, {OLD: 20, other: 2})
        assert r.backlog == 2
        f = db.health().find("stale_model", "docs")[0]
        assert f.severity == "warning" and f.value == 2
        assert f.runbook == "docs/runbook.md#model-updates"
        assert _firing(db, "stale_model")
        assert _gauge(db, "simplevector_rows_stale_model") == 2


def test_rows_older_than_max_age_are_counted_and_alerted(tmp_path):
    t = HealthThresholds(freshness_max_age=3600.0)
    with sv.open(tmp_path / "db", checkpoint_interval=0, thresholds=t) as db:
        ns = db.create_namespace("docs", embedding=Counting(), metric="l2")
        ns.sync(records(10))
        assert db.freshness()[0].older_than_max_age == 0
        assert db.freshness(max_age=0.0)[0].older_than_max_age == 10
        assert not _firing(db, "rows_too_old")
        db.thresholds = HealthThresholds(freshness_max_age=0.0)
        f = db.health().find("stale_age", "docs")[0]
        assert f.value == 1.0 and f.severity == "warning"
        assert f.runbook == "docs/runbook.md#source-drift"
        assert _firing(db, "rows_too_old")


def test_rows_whose_source_changed_after_embedding_are_source_drift(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns = db.create_namespace("docs", embedding=Counting(), metric="l2")
        recs = records(10)
        for r in recs[:3]:
            r["updated_at"] = time.time() + 3600    # the source says it changed later
        ns.sync(recs)
        r = db.freshness("docs")[0]
        assert (r.source_changed, r.pending) == (3, 0)
        assert db.health().find("source_drift", "docs")[0].severity == "warning"
        assert _firing(db, "source_drift")
        assert _gauge(db, "simplevector_rows_source_changed") == 3


def test_backlog_and_eta_of_a_migration_in_progress(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns = db.create_namespace("docs", embedding=Counting(), metric="l2")
        ns.sync(records(120))
        m = db.migrate("docs", embedding=Counting(NEW))
        m.run(batch_size=50, max_batches=1)
        r = db.freshness("docs")[0]
        assert (r.migration, r.migration_remaining, r.backlog) == ("backfilling", 70, 70)
        assert r.embed_rate > 0 and r.eta_seconds == pytest.approx(70 / r.embed_rate)
        report = db.health()
        backlog = report.find("freshness_backlog", "docs")[0]
        assert backlog.value == round(r.eta_seconds, 3) and "70 rows to (re-)embed" in \
            backlog.message
        assert report.find("migration", "docs")[0].value == "backfilling"
        assert _gauge(db, "simplevector_migration_in_progress") == 1
        m.run()
        r = db.freshness("docs")[0]
        assert (r.migration, r.backlog, r.eta_seconds) == ("ready", 0, 0.0)


def test_freshness_of_an_unknown_namespace_is_namespace_not_found(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        with pytest.raises(sv.NamespaceNotFound):
            db.freshness("nope")


def test_a_slow_scan_serves_newer_lsns_for_a_while_and_says_how_old_it_is(tmp_path,
                                                                          monkeypatch):
    """Health, metrics and freshness calls during continuous writes do not rescan every
    record at each new LSN: a scan that took long serves later calls for RESCAN_FACTOR x its
    duration, each report naming the LSN its figures are of; after that it is redone."""
    from simplevector.ops import freshness as fr
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns = db.create_namespace("docs", embedding=Counting(), metric="l2")
        ns.sync(records(20))
        first = db.freshness("docs")[0]
        assert first.as_of_lsn == db.lsn and first.scan_age_s == 0.0
        monkeypatch.setattr(fr, "RESCAN_MIN_S", 0.0)
        monkeypatch.setattr(fr, "RESCAN_FACTOR", 1e9)     # every scan counts as slow
        db.freshness("docs")                               # cached at this LSN
        other = "count-z@0.1.0"
        ns.upsert(["o1"], [vector_of("x", other)], documents=["x"],
                  provenance=[provenance_of(content_hash("x", None, other), other,
                                            time.time())])
        stale = db.freshness("docs")[0]
        assert stale.as_of_lsn == first.as_of_lsn < db.lsn
        assert (stale.stale_model, stale.rows) == (0, 20)  # the figures of that LSN
        assert stale.scan_age_s >= 0.0
        monkeypatch.setattr(fr, "RESCAN_FACTOR", 0.0)     # the window is over
        fresh = db.freshness("docs")[0]
        assert fresh.as_of_lsn == db.lsn and (fresh.stale_model, fresh.rows) == (1, 21)
