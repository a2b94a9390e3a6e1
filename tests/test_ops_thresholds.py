"""The thresholds table: health and default alerts grade every metric the same way."""

import pathlib

import numpy as np
import pytest

import simplevector as sv
from simplevector.engine.store import next_map_size
from simplevector.ops import capacity, thresholds
from simplevector.ops.alerts import AlertRule
from simplevector.ops.database import ObservedDatabase
from simplevector.ops.health import HealthThresholds, disk_findings, recall_message
from simplevector.ops.probe import ProbeResult

MAP = 273_498_112


def open_db(path, **kw):
    return ObservedDatabase(path, checkpoint_interval=0, auto_index=False, **kw)


def by_check(findings, check):
    return next(f for f in findings if f.check == check)


def test_full_map_with_plenty_of_disk_is_not_a_warning():
    found = disk_findings("/db", MAP, MAP, 10**12, 5 * 10**11, HealthThresholds())
    assert {f.check: f.severity for f in found} == {
        "map_used": "ok", "disk_free": "ok", "map_growth": "ok"}


@pytest.mark.parametrize("free, severity", [
    ((next_map_size(MAP) - MAP) // 2, "critical"),         # the next growth does not fit
    (int(1.5 * (next_map_size(MAP) - MAP)), "warning"),    # it fits, little more does
    (3 * (next_map_size(MAP) - MAP), "ok")])
def test_disk_headroom_against_the_next_map_growth(free, severity):
    found = disk_findings("/db", MAP, MAP, 10**15, free, HealthThresholds())
    assert by_check(found, "map_growth").severity == severity


def test_map_growth_headroom_grades_health_and_alert_alike(tmp_path, monkeypatch):
    step = next_map_size(64 << 20)
    monkeypatch.setattr(capacity, "disk_usage", lambda path: (10**15, 10))
    with open_db(tmp_path / "db") as db:
        assert by_check(db.health().findings, "map_growth").severity == "critical"
        alert = next(a for a in db.alerts() if a.rule == "map_growth_disk")
        assert alert.state == "firing" and alert.severity == "critical"
        monkeypatch.setattr(capacity, "disk_usage", lambda path: (10**15, 10 * step))
        assert by_check(db.health().findings, "map_growth").severity == "ok"
        assert next(a for a in db.alerts() if a.rule == "map_growth_disk").state == "ok"


def test_recall_message_names_the_sample_source_once():
    p = ProbeResult(namespace="docs", version=1, recall=0.864, ci_low=0.8, ci_high=0.91,
                    samples=100, k=10, hits=864, expected=1000, index="IVF16,PQ8x8",
                    source="queries", seconds=0.1, at=1000.0)
    assert recall_message("docs v1 (live)", p, 1005.0) == (
        "docs v1 (live): recall@10 0.864 (95% CI 0.800-0.910, 100 recent queries, "
        "index IVF16,PQ8x8, 5s ago)")


def test_runbook_holds_the_table_of_default_thresholds():
    text = (pathlib.Path(__file__).parent.parent / "docs" / "runbook.md").read_text()
    assert thresholds.markdown_table() in text


def test_critical_level_on_the_wrong_side_is_invalid_input():
    with pytest.raises(sv.InvalidInput):
        AlertRule("r", "recall", "<", 0.9, critical=0.95)


def test_threshold_overrides_move_the_default_alert_rules(tmp_path):
    with open_db(tmp_path / "db", thresholds=HealthThresholds(recall_warning=0.97)) as db:
        rule = next(r for r in db.alert_rules() if r.name == "recall_low")
        assert (rule.threshold, rule.critical, rule.severity) == (0.97, 0.80, "warning")
        db.thresholds = HealthThresholds(recall_critical=0.5)
        rule = next(r for r in db.alert_rules() if r.name == "recall_low")
        assert (rule.threshold, rule.critical) == (0.90, 0.5)


@pytest.fixture(scope="module")
def busy_db(tmp_path_factory):
    """A database where every metric of the table has a measured value."""
    from simplevector.engine.namespace import Plan

    root = tmp_path_factory.mktemp("busy")
    db = open_db(root / "db", wal_archive=root / "archive")
    db.changes(0, consumer="feed")                        # a named consumer that lags
    rng = np.random.default_rng(3)
    X = rng.standard_normal((3000, 16)).astype(np.float32)
    ns = db.create_namespace("v", dim=16, metric="l2")
    ns.upsert(ids=list(range(2000)), vectors=X[:2000])
    ns.build_index("IVF16,PQ8x8,Refine2")
    ns.upsert(ids=list(range(2000, 3000)), vectors=X[2000:])
    ns.delete(ids=list(range(100)))
    ns.query(X[0], k=5)
    db.probe_recall("v", samples=50, k=5)
    plan = Plan(index="ivf", short=1, matched=50, selectivity=0.25)
    db.engine._notify_query("v", plan, X[:1])
    db.checkpoint()
    ns.upsert(ids=[5000], vectors=X[:1])
    db.engine.checkpoint_time -= 100.0                    # records have waited 100 s
    now = db.checkpoint_time + 100.0
    db.growth.add(now - 3600, written=10_000, nbytes=640_000)
    db.verify()                                           # the integrity finding: 0 problems
    yield db
    db.close()


def _levels(row, v, case):
    d = max(abs(v) * 0.5, 1e-3)
    sign = 1 if row.direction == "above" else -1
    if case == "warning":
        return v - sign * d, v + sign * d
    return v - sign * 2 * d, v - sign * d


CASES = [(row, "warning") for row in thresholds.TABLE] + [
    (row, "critical") for row in thresholds.TABLE if row.critical is not None]


@pytest.mark.parametrize("row, case", CASES, ids=[f"{r.metric}-{c}" for r, c in CASES])
def test_health_and_default_alert_agree_for_every_table_row(busy_db, row, case):
    db = busy_db
    db.thresholds = HealthThresholds()
    v = next(f for f in db.health().findings if f.check == row.check).value
    assert v is not None, f"{row.check} not measured"
    warning, critical = _levels(row, v, case)
    overrides = {row.warning: warning}
    if row.critical is not None:
        overrides[row.critical] = critical
    db.thresholds = HealthThresholds(**overrides)
    f = next(f for f in db.health().findings if f.check == row.check)
    assert f.severity == case
    alert = next(a for a in db.alerts() if a.rule == row.alert)
    assert alert.state == "firing" and alert.severity == case, alert


def test_add_alert_rule_takes_a_critical_level(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:
        ns = db.create_namespace("docs", dim=4, metric="l2")
        ns.upsert(list(range(10)), np.ones((10, 4), np.float32))
        ns.delete(list(range(6)))
        rule = db.add_alert_rule("tomb", "tombstone_ratio", ">", 0.2, critical=0.5)
        assert rule.critical == 0.5
        alert = next(a for a in db.alerts() if a.rule == "tomb")
        assert alert.state == "firing" and alert.severity == "critical"
