"""The health report: one dataclass a person and an alert rule can both read.

Every check yields a :class:`Finding` (also when all is well, severity "ok", so the
report shows each measured value beside its threshold); the overall status is the worst
severity ("info" never raises it). Each finding points to a section of docs/runbook.md.

Checks: per namespace version rows and tombstone ratio, index state (training errors,
an IVF spec still searching exact), IVF list balance (largest / mean list, empty lists),
drift (quantization error of the rows added since training against the error measured at
training time), measured recall (the latest probe), short results, model versions in use;
WAL bytes, records not yet checkpointed, checkpoint age; LMDB map use, disk free, the
capacity forecast; p99 query latency over 5 minutes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


from simplevector.engine.indexspec import IndexSpec

from . import capacity

RUNBOOK = "docs/runbook.md"
SEVERITIES = ("ok", "info", "warning", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


def runbook(anchor: str) -> str:
    return f"{RUNBOOK}#{anchor}"


@dataclass
class HealthThresholds:
    """Where a check turns warning / critical. Ratios are fractions, times seconds."""

    tombstone_warning: float = 0.20
    tombstone_critical: float = 0.50
    imbalance_warning: float = 5.0          # largest list / mean list
    empty_lists_warning: float = 0.10       # share of lists that are empty
    # new-row quantization error / training error. train_error is measured on rows held out
    # of PQ training, but small training sets still vary by ~1.3-2x between samples: warn
    # at 3x, not at the first excess.
    drift_warning: float = 3.0
    drift_critical: float = 10.0
    drift_min_rows: int = 32                # rows added since training before drift counts
    recall_warning: float = 0.90
    recall_critical: float = 0.80
    wal_bytes_warning: int = 1 << 30
    wal_records_warning: int = 100_000
    checkpoint_age_warning: float = 900.0   # only while records wait for a checkpoint
    map_used_warning: float = 0.90
    disk_free_warning: float = 0.10
    disk_free_critical: float = 0.05
    days_full_warning: float = 30.0
    days_full_critical: float = 7.0
    p99_query_warning: float = 0.050
    latency_window: float = 300.0


@dataclass
class Finding:
    """One check's result: ``value`` measured against ``threshold`` (None = not measured)."""

    check: str
    severity: str
    namespace: str | None
    value: object
    threshold: object
    message: str
    runbook: str
    version: int | None = None      # the namespace version a per-version check measured

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HealthReport:
    """Overall status (``ok | warning | critical``), the findings, and raw figures."""

    status: str
    findings: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    at: float = 0.0

    def problems(self) -> list:
        return [f for f in self.findings if f.severity in ("warning", "critical")]

    def find(self, check: str, namespace: str | None = None) -> list:
        return [f for f in self.findings
                if f.check == check and (namespace is None or f.namespace == namespace)]

    def to_dict(self) -> dict:
        return {"status": self.status, "at": self.at,
                "findings": [f.to_dict() for f in self.findings], "stats": self.stats}


def _grade(value, warning, critical=None, *, below=False) -> str:
    if value is None:
        return "ok"
    worse = (lambda v, t: v < t) if below else (lambda v, t: v > t)
    if critical is not None and worse(value, critical):
        return "critical"
    if worse(value, warning):
        return "warning"
    return "ok"


def drift_ratio(db, status, sample: int = 2000, seed: int = 0):
    """(ratio, new rows) for a version's IVF index (``Namespace.index_drift``): the
    quantization error of live rows added since training over the training error."""
    if status.index_info is None:
        return None, 0
    return db.namespace(status.name, status.version).index_drift(sample, seed=seed)


def version_checks(db, t: HealthThresholds, drift_sample: int):
    """Findings and stats for every namespace version."""
    findings, stats = [], []
    probes = db.latest_probes()
    short = db.short_results()
    for config in db.version_statuses():
        ns = config.name
        first = len(findings)
        label = f"{ns} v{config.version}" + (" (live)" if config.live else "")
        rows, tomb = config.rows, config.tombstones
        ratio = config.tombstone_ratio
        entry = {"namespace": ns, "version": config.version, "live": config.live,
                 "model": config.model, "dim": config.dim, "metric": config.metric,
                 "rows": rows, "tombstones": tomb, "tombstone_ratio": ratio,
                 "index": config.index_active, "configured_index": config.index_configured}
        sev = _grade(ratio, t.tombstone_warning, t.tombstone_critical)
        findings.append(Finding(
            "tombstone_ratio", sev, ns, round(ratio, 4), t.tombstone_warning,
            f"{label}: {rows} rows, {tomb} tombstones ({ratio:.0%} of positions)"
            + ("; compact it" if sev != "ok" else ""), runbook("tombstones-and-compaction")))
        if config.training_error:
            findings.append(Finding(
                "index_training", "warning", ns, config.training_error, None,
                f"{label}: the last index build failed ({config.training_error}); queries "
                "stay exact", runbook("drift-and-re-training")))
        spec = IndexSpec.parse(config.index_configured)
        if (config.index_info is None and spec.kind == "ivf" and not config.training
                and rows >= spec.min_train_rows):
            findings.append(Finding(
                "index_missing", "warning", ns, rows, spec.min_train_rows,
                f"{label}: configured {config.index_configured} but no index is trained; "
                "queries are exact (slow)", runbook("drift-and-re-training")))
        if config.index_info is not None:
            info = config.index_info
            entry["index_info"] = info
            imb = info["list_imbalance"]
            empty_share = info["empty_lists"] / info["nlist"] if info["nlist"] else 0.0
            sev = "warning" if (imb > t.imbalance_warning
                                or empty_share > t.empty_lists_warning) else "ok"
            findings.append(Finding(
                "index_balance", sev, ns, imb, t.imbalance_warning,
                f"{label}: largest list {info['list_size_max']} rows vs mean "
                f"{info['list_size_mean']} (x{imb}); {info['empty_lists']} of {info['nlist']} "
                "lists empty", runbook("drift-and-re-training")))
            ratio_d, new_rows = drift_ratio(db, config, drift_sample)
            entry["drift_ratio"], entry["rows_since_training"] = ratio_d, new_rows
            if ratio_d is None or new_rows < t.drift_min_rows:
                sev, msg = "ok", (f"{label}: {new_rows} rows added since training; too few "
                                  "to measure drift")
                value = None if ratio_d is None else round(ratio_d, 3)
            else:
                value = round(ratio_d, 3)
                sev = _grade(ratio_d, t.drift_warning, t.drift_critical)
                msg = (f"{label}: rows added since training quantize with x{ratio_d:.2f} the "
                       f"training error ({new_rows} new rows)"
                       + ("; re-train the index" if sev != "ok" else ""))
            findings.append(Finding("index_drift", sev, ns, value, t.drift_warning, msg,
                                    runbook("drift-and-re-training")))
        if config.live:
            p = probes.get(ns)
            if p is None or p.version != config.version:
                findings.append(Finding(
                    "recall", "ok", ns, None, t.recall_warning,
                    f"{label}: recall not measured yet (run probe_recall)",
                    runbook("recall-probes")))
            else:
                entry["recall"] = p.recall
                sev = _grade(p.recall, t.recall_warning, t.recall_critical, below=True)
                findings.append(Finding(
                    "recall", sev, ns, round(p.recall, 4), t.recall_warning,
                    f"{label}: recall@{p.k} {p.recall:.3f} (95% CI {p.ci_low:.3f}-"
                    f"{p.ci_high:.3f}, {p.samples} {p.source} queries, index {p.index}, "
                    f"{time.time() - p.at:.0f}s ago)", runbook("recall-probes")))
            n_short = short.get(ns, 0)
            findings.append(Finding(
                "short_results", "warning" if n_short else "ok", ns, n_short, 0,
                f"{ns}: {n_short} queries returned fewer than k hits while more rows matched"
                if n_short else f"{ns}: no short results", runbook("short-results-and-filters")))
        for f in findings[first:]:
            f.version = config.version
        stats.append(entry)
    models = {}
    for entry in stats:
        models.setdefault(entry["namespace"], []).append(
            {"version": entry["version"], "model": entry["model"], "live": entry["live"],
             "rows": entry["rows"]})
    for ns, versions in models.items():
        names = sorted({str(v["model"]) for v in versions})
        sev = "info" if len(versions) > 1 else "ok"
        findings.append(Finding(
            "model_versions", sev, ns, names, None,
            f"{ns}: {len(versions)} version(s), models {', '.join(names)}"
            + ("; finish or roll back the migration, drop unused versions" if sev != "ok"
               else ""), runbook("model-updates")))
    return findings, stats


def storage_checks(db, t: HealthThresholds):
    info = db.info()
    findings = []
    lag = db.status().records_since_checkpoint
    age = None if db.checkpoint_time is None else time.time() - db.checkpoint_time
    findings.append(Finding(
        "wal_bytes", _grade(info["wal_bytes"], t.wal_bytes_warning), None, info["wal_bytes"],
        t.wal_bytes_warning, f"WAL holds {info['wal_bytes']} bytes in {info['wal_segments']} "
        "segment(s)", runbook("wal-and-checkpoints")))
    findings.append(Finding(
        "wal_records_since_checkpoint", _grade(lag, t.wal_records_warning), None, lag,
        t.wal_records_warning, f"{lag} WAL records are not checkpointed yet (replayed on "
        "open)", runbook("wal-and-checkpoints")))
    stale = age is not None and lag > 0 and age > t.checkpoint_age_warning
    findings.append(Finding(
        "checkpoint_age", "warning" if stale else "ok", None,
        None if age is None else round(age, 1), t.checkpoint_age_warning,
        "no checkpoint in this process yet" if age is None
        else f"last checkpoint {age:.0f}s ago, {lag} records since",
        runbook("wal-and-checkpoints")))
    map_ratio = info["map_used"] / info["map_size"] if info["map_size"] else 0.0
    findings.append(Finding(
        "map_used", _grade(map_ratio, t.map_used_warning), None, round(map_ratio, 4),
        t.map_used_warning, f"LMDB map {info['map_used']} of {info['map_size']} bytes used "
        "(grows by itself while the disk has room)", runbook("scaling-and-capacity")))
    total, free = capacity.disk_usage(db.path)
    free_ratio = free / total if total else None
    findings.append(Finding(
        "disk_free", _grade(free_ratio, t.disk_free_warning, t.disk_free_critical, below=True),
        None, None if free_ratio is None else round(free_ratio, 4), t.disk_free_warning,
        f"disk holding {db.path}: {free} of {total} bytes free", runbook("disk-full")))
    fc = capacity.forecast(db)
    days = fc.days_until_full
    findings.append(Finding(
        "capacity", _grade(days, t.days_full_warning, t.days_full_critical, below=True), None,
        None if days is None else round(days, 1), t.days_full_warning,
        "growth not estimated yet (needs 10 minutes of write history)"
        if fc.vectors_per_day is None else
        f"growing {fc.vectors_per_day:.0f} vectors/day; "
        + (f"{fc.limiting} full in {days:.1f} days" if days is not None else "no limit in sight"),
        runbook("scaling-and-capacity")))
    stats = dict(info)
    stats.update({"wal_records_since_checkpoint": lag, "checkpoint_age": age,
                  "disk_total": total, "disk_free": free, "capacity": fc.to_dict(),
                  "counters": dict(db.counters), "query_stats": {
                      k: v for k, v in db.query_stats.items() if k != "plans"}})
    return findings, stats


def latency_checks(db, t: HealthThresholds):
    h = db.latency_histogram(op="query", window=t.latency_window)
    p99 = h.percentile(0.99)
    return [Finding(
        "query_latency_p99", _grade(p99, t.p99_query_warning), None,
        None if p99 is None else round(p99, 6), t.p99_query_warning,
        f"no queries in the last {t.latency_window:.0f}s" if p99 is None else
        f"p99 query latency {p99 * 1e3:.2f} ms over the last {t.latency_window:.0f}s "
        f"({h.count} queries)", runbook("latency"))]


def build_report(db, *, drift_sample: int = 2000) -> HealthReport:
    t = db.thresholds
    db.refresh()
    findings, versions = version_checks(db, t, drift_sample)
    more, storage = storage_checks(db, t)
    findings += more + latency_checks(db, t)
    if db.ops_persist_error:
        findings.append(Finding("ops_persist", "warning", None, db.ops_persist_error, None,
                                "ops state could not be saved at the last checkpoint",
                                runbook("incidents")))
    worst = max((_RANK[f.severity] for f in findings), default=0)
    status = {0: "ok", 1: "ok", 2: "warning", 3: "critical"}[worst]
    return HealthReport(status=status, findings=findings,
                        stats={"versions": versions, "storage": storage}, at=time.time())
