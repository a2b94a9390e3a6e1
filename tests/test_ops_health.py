"""Health report: empty, fresh and reopened databases; planted drift; short results."""

import numpy as np
import pytest

from simplevector.engine.namespace import Plan
from simplevector.ops.database import ObservedDatabase
from simplevector.ops.health import HealthReport
from simplevector.ops.probe import count_correct, wilson
from simplevector.engine.types import Hit

SPEC = "IVF16,PQ8x8,Refine2"
DIM = 16


def open_db(path, **kw):
    return ObservedDatabase(path, checkpoint_interval=0, auto_index=False, **kw)


@pytest.fixture
def db(tmp_path):
    handle = open_db(tmp_path / "db")
    yield handle
    handle.close()


def clustered(rng, centres, n):
    labels = rng.integers(0, len(centres), n)
    return (centres[labels] + rng.standard_normal((n, centres.shape[1]))).astype(np.float32)


def planted(db, shifted: bool, seed: int = 7):
    """An IVF-PQ index trained on clusters A, then 2000 more rows from A or from B (far)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((8, DIM)) * 6
    B = A + 40.0
    ns = db.create_namespace("v", dim=DIM, metric="l2")
    ns.upsert(ids=list(range(2000)), vectors=clustered(rng, A, 2000))
    ns.build_index(SPEC)
    ns.upsert(ids=list(range(2000, 4000)), vectors=clustered(rng, B if shifted else A, 2000))
    return ns


def by_check(report, check, namespace=None):
    found = report.find(check, namespace)
    assert found, f"no {check} finding"
    return found[0]


def test_health_of_an_empty_database_is_ok(db):
    report = db.health()
    assert isinstance(report, HealthReport)
    assert report.status == "ok"
    assert not report.problems()
    assert by_check(report, "wal_records_since_checkpoint").value == 0
    d = report.to_dict()
    assert d["status"] == "ok" and all(f["runbook"].startswith("docs/runbook.md#")
                                       for f in d["findings"])


def test_health_of_a_fresh_namespace_reports_counts_and_unmeasured_recall(db):
    ns = db.create_namespace("docs", dim=4, metric="cosine", model="mini@1.0.0")
    X = np.random.default_rng(2).standard_normal((10, 4)).astype(np.float32)
    ns.upsert(ids=[f"d{i}" for i in range(10)], vectors=X)
    ns.delete(ids=["d9"])
    report = db.health()
    assert report.status == "ok", report.problems()
    tomb = by_check(report, "tombstone_ratio", "docs")
    assert tomb.severity == "ok" and tomb.value == 0.1 and tomb.version == 1
    assert by_check(report, "recall", "docs").value is None
    assert by_check(report, "model_versions", "docs").value == ["mini@1.0.0"]
    v = report.stats["versions"][0]
    assert (v["rows"], v["tombstones"]) == (9, 1)
    assert by_check(report, "wal_records_since_checkpoint").value == db.status().logged_lsn


def test_tombstone_ratio_above_threshold_is_a_warning(db):
    ns = db.create_namespace("docs", dim=4, metric="l2")
    ns.upsert(ids=list(range(10)), vectors=np.arange(40, dtype=np.float32).reshape(10, 4))
    ns.delete(ids=[0, 1, 2])
    f = by_check(db.health(), "tombstone_ratio", "docs")
    assert f.severity == "warning" and f.value == 0.3
    assert f.runbook == "docs/runbook.md#tombstones-and-compaction"


def test_health_of_a_reopened_database_keeps_counts_and_checkpoint(tmp_path):
    path = tmp_path / "db"
    with open_db(path) as db:
        ns = db.create_namespace("docs", dim=4, metric="l2")
        ns.upsert(ids=list(range(5)), vectors=np.ones((5, 4), np.float32))
        db.probe_recall("docs", samples=5, k=2)
    with open_db(path) as db:
        report = db.health()
        assert report.status in ("ok", "warning")
        assert report.stats["versions"][0]["rows"] == 5
        assert by_check(report, "wal_records_since_checkpoint").value == 0
        assert by_check(report, "recall", "docs").value == 1.0     # persisted probe
        assert db.latency("docs", "upsert")[0].count == 1


def test_model_versions_in_use_are_listed_as_info(db):
    ns = db.create_namespace("docs", dim=4, metric="l2", model="a@1.0.0")
    ns.upsert(ids=[1], vectors=np.ones((1, 4), np.float32))
    db.create_version("docs", model="b@2.0.0")
    f = by_check(db.health(), "model_versions", "docs")
    assert f.severity == "info" and f.value == ["a@1.0.0", "b@2.0.0"]
    assert db.health().status == "ok"


def test_healthy_index_has_no_drift_high_recall_and_no_alert(db):
    planted(db, shifted=False)
    report = db.health()
    drift = by_check(report, "index_drift", "v")
    assert drift.severity == "ok" and drift.value < db.thresholds.drift_warning
    probe = db.probe_recall("v", samples=200, k=10)
    assert probe.recall >= 0.95 and probe.ci_low <= probe.recall <= probe.ci_high
    firing = {a.rule for a in db.alerts() if a.state == "firing"}
    assert not firing & {"index_drift", "recall_low"}
    assert not [e for e in db.alert_events() if e["rule"] in ("index_drift", "recall_low")]


def test_shifted_data_crosses_drift_and_recall_thresholds_and_fires_alerts(db):
    planted(db, shifted=True)
    probe = db.probe_recall("v", samples=200, k=10)
    assert probe.recall < 0.9 and probe.ci_high < 0.9
    assert probe.worst and probe.worst[0][1] < 0.5
    report = db.health()
    assert report.status == "critical"
    drift = by_check(report, "index_drift", "v")
    assert drift.severity == "critical" and drift.value > db.thresholds.drift_critical
    assert by_check(report, "recall", "v").severity == "critical"
    assert drift.runbook == "docs/runbook.md#drift-and-re-training"
    firing = {a.rule for a in db.alerts() if a.state == "firing"}
    assert {"index_drift", "recall_low"} <= firing
    events = db.alert_events()
    assert {(e["rule"], e["state"]) for e in events} >= {("index_drift", "firing"),
                                                         ("recall_low", "firing")}


def test_filtered_query_reported_short_is_detected(db):
    # The engine's planner falls back to exact search when the probed lists cannot yield
    # k matches, so a real query does not come back short; the detection path is fed a
    # plan with short=1 as the engine would report it.
    ns = db.create_namespace("docs", dim=4, metric="l2")
    X = np.random.default_rng(0).standard_normal((200, 4)).astype(np.float32)
    ns.upsert(ids=list(range(200)), vectors=X, metadata=[{"g": i % 4} for i in range(200)])
    hits, plan = ns.query(X[0], k=20, where={"g": 1}, explain=True)
    assert len(hits) == 20 and plan.short == 0
    assert by_check(db.health(), "short_results", "docs").severity == "ok"
    plan = Plan(index="ivf", short=1, matched=50, selectivity=0.25)
    db.engine._notify_query("docs", plan, X[:1])
    f = by_check(db.health(), "short_results", "docs")
    assert f.severity == "warning" and f.value == 1
    assert db.query_stats["short"] == 1
    alert = next(a for a in db.alerts() if a.rule == "short_results" and a.namespace == "docs")
    assert alert.state == "firing"


def test_recall_probe_can_use_the_recent_query_reservoir(db):
    ns = db.create_namespace("docs", dim=4, metric="l2")
    X = np.random.default_rng(1).standard_normal((100, 4)).astype(np.float32)
    ns.upsert(ids=list(range(100)), vectors=X)
    for i in range(30):                     # a batch offers only a few rows to the reservoir
        ns.query(X[i] + 0.01, k=3)
    result = db.probe_recall("docs", samples=10, k=3, source="queries")
    assert result.source == "queries" and result.samples == 10 and result.recall == 1.0


def test_tie_aware_counting_accepts_equal_distance_substitutes():
    exact = [Hit(id=i, distance=d) for i, d in [(1, 0.1), (2, 0.2), (3, 0.3)]]
    approx = [Hit(id=1, distance=0.1), Hit(id=9, distance=0.3), Hit(id=8, distance=0.5)]
    assert count_correct(approx, exact, 3) == (2, 3)
    lo, hi = wilson(90, 100)
    assert lo < 0.9 < hi


def test_cli_ops_commands_run_and_health_exit_code_follows_status(tmp_path):
    import json

    import click
    from click.testing import CliRunner

    from simplevector.cli_ops import COMMANDS, register

    path = tmp_path / "db"
    with open_db(path) as db:
        ns = db.create_namespace("docs", dim=4, metric="l2")
        ns.upsert(ids=list(range(10)), vectors=np.eye(10, 4, dtype=np.float32))
        ns.query(np.ones(4, np.float32), k=2)
    group = register(click.Group("main"))
    assert {c.name for c in COMMANDS} <= set(group.commands)
    runner = CliRunner()
    for name in group.commands:
        assert runner.invoke(group, [name, "-h"]).exit_code == 0
    db_args = ["--db", str(path)]
    out = runner.invoke(group, ["health", "--json", *db_args])
    assert out.exit_code == {"ok": 0, "warning": 1}[json.loads(out.output)["status"]]
    out = runner.invoke(group, ["latency", "--json", *db_args])
    assert out.exit_code == 0, out.output
    assert {r["op"] for r in json.loads(out.output)} == {"upsert", "query"}
    out = runner.invoke(group, ["latency", *db_args])
    assert out.exit_code == 0 and " ms " in out.output
    out = runner.invoke(group, ["metrics", str(path)])
    assert out.exit_code == 0 and "simplevector_vectors{" in out.output
    out = runner.invoke(group, ["probe", "docs", "--samples", "5", "-k", "2", *db_args])
    assert out.exit_code == 0 and "recall" in out.output
    assert runner.invoke(group, ["alerts", "--all", *db_args]).exit_code == 0
    assert runner.invoke(group, ["events", "--json", *db_args]).exit_code == 0
    out = runner.invoke(group, ["probe", "nope", *db_args])
    assert out.exit_code == 1 and "nope" in out.output
    with open_db(path) as db:
        ns = db.namespace("docs")
        ns.delete(ids=list(range(6)))                   # 60 % tombstones: critical
    assert runner.invoke(group, ["health", *db_args]).exit_code == 2


def test_every_runbook_link_points_to_a_section_of_the_runbook(db):
    import pathlib
    import re

    text = (pathlib.Path(__file__).parent.parent / "docs" / "runbook.md").read_text()
    anchors = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#{2,3} (.+)$", text, re.M)}
    source = "".join(p.read_text() for p in
                     (pathlib.Path(__file__).parent.parent / "ops").glob("health.py"))
    used = set(re.findall(r'runbook\("([a-z0-9-]+)"\)', source))
    assert used and used <= anchors, used - anchors
    db.create_namespace("docs", dim=4, metric="l2")
    assert {f.runbook.split("#")[1] for f in db.health().findings} <= anchors


def test_imbalance_factor_is_the_scan_cost_over_balanced_lists():
    """nlist * sum(size^2) / rows^2 (FAISS's imbalance_factor): 1 when balanced, nlist when
    one list holds every row, 0 without rows; one big list among many costs little."""
    from simplevector.engine.ivf import imbalance_factor
    assert imbalance_factor([5, 5, 5, 5]) == 1.0
    assert imbalance_factor([20, 0, 0, 0]) == 4.0
    assert imbalance_factor([0, 0, 0]) == 0.0
    sizes = np.array([720] + [99] * 1023)           # largest list 7.2x the mean
    assert sizes.max() / sizes.mean() > 7
    want = len(sizes) * float((sizes.astype(float) ** 2).sum()) / float(sizes.sum()) ** 2
    assert imbalance_factor(sizes) == round(want, 3) and imbalance_factor(sizes) < 1.1


def test_index_balance_is_graded_by_the_imbalance_factor(db):
    """Rows that pile into a few lists (new data far from every centroid) raise the factor
    past the warning and fire index_imbalance; the same index on data like its training
    set stays ok. The value is the index's own imbalance_factor."""
    ns = planted(db, shifted=False)
    info = ns.index_info()
    f = by_check(db.health(), "index_balance", "v")
    assert f.value == info["imbalance_factor"] < db.thresholds.imbalance_warning
    assert f.severity == "ok" and "imbalance factor" in f.message
    db.drop_namespace("v")
    ns = planted(db, shifted=True)
    info = ns.index_info()
    f = by_check(db.health(), "index_balance", "v")
    assert f.value == info["imbalance_factor"] > db.thresholds.imbalance_warning
    assert f.severity == "warning"
    assert "index_imbalance" in {a.rule for a in db.alerts() if a.state == "firing"}


def test_query_reservoir_is_a_uniform_sample_of_every_query_offered(db):
    """Algorithm L (ops/database.py): after 20,000 single queries the 256 kept are spread
    over the whole stream (not the first 256, not only the latest), none twice, and a
    later batch offers at most RESERVOIR_PER_BATCH rows."""
    from simplevector.ops.database import RESERVOIR_PER_BATCH, RESERVOIR_SIZE

    n = 20_000
    for i in range(n):
        db._offer_queries("docs", np.array([[float(i), 0.0]], np.float32))
    kept = db.recent_queries("docs", dim=2)[:, 0].astype(int)
    assert len(kept) == RESERVOIR_SIZE == len(set(kept.tolist()))
    assert db._reservoir["docs"][0] == n
    # a uniform sample of 0..n-1: mean n/2 (sd of the mean ~ n / sqrt(12 * 256) = 361)
    assert abs(kept.mean() - n / 2) < 4 * n / np.sqrt(12 * RESERVOIR_SIZE)
    quarters = np.bincount(kept * 4 // n, minlength=4)
    assert quarters.min() >= 40, quarters          # ~64 expected in each quarter
    db._offer_queries("docs", np.zeros((50, 2), np.float32))
    assert db._reservoir["docs"][0] == n + RESERVOIR_PER_BATCH
