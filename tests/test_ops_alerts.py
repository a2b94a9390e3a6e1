"""Alert rules (Python and TOML), state changes recorded as events, capacity forecast."""

import numpy as np
import pytest

import simplevector as sv
from simplevector.ops import capacity
from simplevector.ops.alerts import DEFAULT_RULES, AlertRule
from simplevector.ops.database import ObservedDatabase


class FakeClock:
    def __init__(self, t=5000.0):
        self.t = t

    def __call__(self):
        return self.t


def open_db(path, **kw):
    return ObservedDatabase(path, checkpoint_interval=0, auto_index=False, **kw)


@pytest.fixture
def db(tmp_path):
    handle = open_db(tmp_path / "db")
    yield handle
    handle.close()


def test_default_rules_cover_the_issue_list():
    metrics = {r.metric for r in DEFAULT_RULES}
    assert {"query_latency_p99", "recall", "tombstone_ratio", "disk_free_ratio",
            "wal_records_since_checkpoint", "short_results"} <= metrics
    p99 = next(r for r in DEFAULT_RULES if r.metric == "query_latency_p99")
    assert (p99.op, p99.threshold, p99.window) == (">", 0.05, 300.0)


@pytest.mark.parametrize("kwargs", [
    dict(metric="nonsense"), dict(op="!="), dict(severity="page"), dict(window="2d"),
    dict(threshold="high")])
def test_invalid_rules_raise_invalid_input(kwargs):
    base = dict(name="r", metric="recall", op="<", threshold=0.9)
    base.update(kwargs)
    with pytest.raises(sv.InvalidInput):
        AlertRule(**base)


def test_rule_added_in_python_fires_and_resolves_with_events(db):
    ns = db.create_namespace("docs", dim=4, metric="l2")
    ns.upsert(ids=list(range(10)), vectors=np.ones((10, 4), np.float32))
    db.add_alert_rule("many_upserts", "upsert_count", ">=", 2, window="1h",
                      severity="info", namespace="docs")
    alert = next(a for a in db.alerts() if a.rule == "many_upserts")
    assert alert.state == "ok" and alert.value == 1
    ns.upsert(ids=[11], vectors=np.ones((1, 4), np.float32))
    alert = next(a for a in db.alerts() if a.rule == "many_upserts")
    assert alert.state == "firing" and alert.since is not None
    db.alerts()                                   # still firing: no second event
    db.add_alert_rule("many_upserts", "upsert_count", ">=", 100, window="1h",
                      severity="info", namespace="docs")
    assert next(a for a in db.alerts() if a.rule == "many_upserts").state == "ok"
    events = [e for e in db.alert_events() if e["rule"] == "many_upserts"]
    assert [e["state"] for e in events] == ["firing", "resolved"]
    assert events[0]["ts"] <= events[1]["ts"] and events[0]["severity"] == "info"


def test_rules_load_from_toml(db, tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nname = "tomb"\nmetric = "tombstone_ratio"\nop = ">"\n'
                    'threshold = 0.05\nseverity = "critical"\n')
    rules = db.load_alert_rules(path)
    assert rules[0].name == "tomb" and rules[0].severity == "critical"
    ns = db.create_namespace("docs", dim=4, metric="l2")
    ns.upsert(ids=list(range(10)), vectors=np.ones((10, 4), np.float32))
    ns.delete(ids=[0])
    tomb = next(a for a in db.alerts() if a.rule == "tomb")
    assert tomb.state == "firing" and tomb.namespace == "docs" and tomb.version == 1


def test_bad_toml_is_invalid_input(db, tmp_path):
    path = tmp_path / "rules.toml"
    path.write_text("[[rule]]\nname = \n")
    with pytest.raises(sv.InvalidInput):
        db.load_alert_rules(path)


def test_latency_rule_over_a_window_resolves_when_the_window_passes(tmp_path):
    clock = FakeClock()
    db = open_db(tmp_path / "db", clock=clock)
    try:
        ns = db.create_namespace("docs", dim=4, metric="l2")
        ns.upsert(ids=[1], vectors=np.ones((1, 4), np.float32))
        db.ops_observer.on_operation("query", "docs", 0.2, True)   # a slow query
        assert next(a for a in db.alerts() if a.rule == "query_latency_p99").state == "firing"
        clock.t += 400                                 # past the 5-minute window
        db.ops_observer.on_operation("query", "docs", 0.001, True)
        assert next(a for a in db.alerts() if a.rule == "query_latency_p99").state == "ok"
        states = [e["state"] for e in db.alert_events() if e["rule"] == "query_latency_p99"]
        assert states == ["firing", "resolved"]
    finally:
        db.close()


def test_events_and_firing_state_survive_a_reopen(tmp_path):
    path = tmp_path / "db"
    with open_db(path) as db:
        db.add_alert_rule("always", "upsert_count", ">=", 0, window="1h")
        db.alerts()
    with open_db(path) as db:
        db.add_alert_rule("always", "upsert_count", ">=", 0, window="1h")
        db.alerts()                                    # still firing: not a new event
        events = [e for e in db.alert_events() if e["rule"] == "always"]
        assert [e["state"] for e in events] == ["firing"]


def test_capacity_rates_and_days_until_full_from_write_history():
    day = capacity.DAY
    now = 10 * day
    tracker = capacity.GrowthTracker()
    for d in range(5):                                  # 1000 vectors of 64 bytes per day
        tracker.add(now - (5 - d) * day, written=1000, nbytes=64_000)
    tracker.add(now - day, deleted=500)
    r = capacity.rates(tracker.buckets, now)
    assert r["net"] == pytest.approx(900, rel=0.01)     # (5000 - 500) over 5 days
    fc = capacity.project(r, map_size=10**9, map_used=10**6, disk_total=10**9,
                          disk_free=900 * 100 * 20, memory_used=10**6,
                          memory_budget=10**6 + 900 * 68 * 3, rows=1000)
    assert fc.bytes_per_vector == 1000                  # map_used / rows
    assert fc.days_until_disk_full == pytest.approx(2.0, rel=0.02)   # 1.8 MB at 900 kB/day
    assert fc.days_until_memory_full == pytest.approx(3.0, rel=0.02)
    assert fc.limiting == "disk" and fc.days_until_full == fc.days_until_disk_full


def test_capacity_needs_some_history_before_projecting(db):
    ns = db.create_namespace("docs", dim=4, metric="l2")
    ns.upsert(ids=list(range(10)), vectors=np.ones((10, 4), np.float32))
    fc = db.capacity()
    assert fc.vectors_per_day is None and fc.days_until_full is None
    assert db.growth.last_lsn == db.status().logged_lsn
    assert sum(b[0] for b in db.growth.buckets.values()) == 10


def test_background_probe_and_alert_loops_run_and_stop_on_close(tmp_path):
    import time

    path = tmp_path / "db"
    with open_db(path) as db:
        ns = db.create_namespace("docs", dim=4, metric="l2")
        ns.upsert(ids=list(range(20)), vectors=np.random.default_rng(0).standard_normal(
            (20, 4)).astype(np.float32))
    db = open_db(path, probe_interval=0.05, alert_interval=0.05)
    try:
        deadline = time.monotonic() + 30
        while "docs" not in db.latest_probes() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.latest_probes()["docs"].recall == 1.0
    finally:
        db.close()
    assert all(not t.is_alive() for t in db._loops) and db._loop_stop.is_set()


def test_negative_loop_interval_is_invalid_input(tmp_path):
    with pytest.raises(sv.InvalidInput):
        open_db(tmp_path / "db", probe_interval=-1)
