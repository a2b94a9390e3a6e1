"""The health report: one dataclass a person and an alert rule can both read.

Every check yields a :class:`Finding` (also when all is well, severity "ok", so the
report shows each measured value beside its threshold); the overall status is the worst
severity ("info" never raises it). Each finding points to a section of docs/runbook.md.

Checks: per namespace version rows and tombstone ratio, index state (training errors,
an IVF spec still searching exact), IVF list balance (largest / mean list, empty lists),
drift (quantization error of the rows added since training against the error measured at
training time), measured recall (the latest probe), short results, model versions in use;
freshness (ops/freshness.py: rows by another model, old rows, source changed after
embedding, backlog and ETA, migrations), budget use and cost spikes;
WAL bytes, records not yet checkpointed, checkpoint age; LMDB map use (informational:
the map grows by itself), disk free, disk headroom for the next map growth, the capacity
forecast; p99 query latency over 5 minutes; the last verify / scrub / repair result
(``integrity``, ops/scrub.py: critical on any problem).

Thresholds and severities of the graded checks come from one table, ops/thresholds.py,
which the default alert rules read too.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


from simplevector.engine.errors import CorruptionError
from simplevector.engine.indexspec import IndexSpec

from simplevector.engine.store import next_map_size

from . import capacity, freshness
from .thresholds import HealthThresholds, grade

__all__ = ["Finding", "HealthReport", "HealthThresholds", "build_report"]

RUNBOOK = "docs/runbook.md"
SEVERITIES = ("ok", "info", "warning", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


def runbook(anchor: str) -> str:
    return f"{RUNBOOK}#{anchor}"


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


def drift_ratio(db, status, sample: int = 2000, seed: int = 0):
    """(ratio, new rows) for a version's IVF index (``Namespace.index_drift``): the
    quantization error of live rows added since training over the training error."""
    if status.index_info is None:
        return None, 0
    return db.namespace(status.name, status.version).index_drift(sample, seed=seed)


#: how recall_message names a probe's sample source (ProbeResult.source)
PROBE_SOURCES = {"stored": "stored vectors", "queries": "recent queries"}


def recall_message(label: str, p, now: float) -> str:
    """The recall finding's text for ProbeResult ``p`` measured ``now - p.at`` s ago."""
    source = PROBE_SOURCES.get(p.source, f"{p.source} samples")
    return (f"{label}: recall@{p.k} {p.recall:.3f} (95% CI {p.ci_low:.3f}-{p.ci_high:.3f}, "
            f"{p.samples} {source}, index {p.index}, {now - p.at:.0f}s ago)")


def _window_text(seconds) -> str:
    return "ever" if seconds is None else f"in the last {seconds:.0f}s"


def version_checks(db, t: HealthThresholds, drift_sample: int):
    """Findings and stats for every namespace version."""
    findings, stats = [], []
    probes = db.latest_probes()
    short = db.short_results(t.short_results_window)
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
        # graded on the reported (rounded) value, the one the alert rules compare
        sev = grade("tombstone_ratio", round(ratio, 4), t)
        policy = db.compaction_status()
        advice = ""
        if sev != "ok":
            advice = ("; compact it (`simplevector compact`, or turn the compact_ratio policy on)"
                      if not policy["ratio"] else
                      f"; the policy compacts at {policy['ratio']:.0%}"
                      + (f" (last run failed: {policy['last']['error']})"
                         if policy["last"] and not policy["last"].get("ok", True) else ""))
        findings.append(Finding(
            "tombstone_ratio", sev, ns, round(ratio, 4), t.tombstone_warning,
            f"{label}: {rows} rows, {tomb} tombstones ({ratio:.0%} of positions)" + advice,
            runbook("tombstones-and-compaction")))
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
            # graded by the imbalance factor (the scan-cost excess queries pay); the largest
            # list over the mean says little on its own (one big list among 1024 is cheap)
            imb = info["imbalance_factor"]
            empty_share = info["empty_lists"] / info["nlist"] if info["nlist"] else 0.0
            findings.append(Finding(
                "index_balance", grade("index_balance", imb, t), ns, imb, t.imbalance_warning,
                f"{label}: imbalance factor {imb} (queries scan x{imb} the codes of balanced "
                f"lists); largest list {info['list_size_max']} rows vs mean "
                f"{info['list_size_mean']} (x{info['list_imbalance']})",
                runbook("drift-and-re-training")))
            findings.append(Finding(
                "index_empty_lists", grade("index_empty_lists", round(empty_share, 4), t), ns,
                round(empty_share, 4), t.empty_lists_warning,
                f"{label}: {info['empty_lists']} of {info['nlist']} lists empty",
                runbook("drift-and-re-training")))
            ratio_d, new_rows = drift_ratio(db, config, drift_sample)
            entry["drift_ratio"], entry["rows_since_training"] = ratio_d, new_rows
            if ratio_d is None or new_rows < t.drift_min_rows:
                # value None: not measured, so no alert fires on a handful of rows either
                sev, value = "ok", None
                msg = (f"{label}: {new_rows} rows added since training; too few to measure "
                       f"drift (needs {t.drift_min_rows})")
            else:
                value = round(ratio_d, 3)
                sev = grade("index_drift", value, t)
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
                findings.append(Finding(
                    "recall", grade("recall", round(p.recall, 4), t), ns, round(p.recall, 4),
                    t.recall_warning, recall_message(label, p, time.time()),
                    runbook("recall-probes")))
            n_short = short.get(ns, 0)
            within = _window_text(t.short_results_window)
            findings.append(Finding(
                "short_results", grade("short_results", n_short, t), ns, n_short,
                t.short_results_warning,
                f"{ns}: {n_short} queries returned fewer than k hits while more rows matched"
                f" {within}" if n_short else f"{ns}: no short results {within}",
                runbook("short-results-and-filters")))
        for f in findings[first:]:
            f.version = config.version
        stats.append(entry)
    findings.append(_dead_space(db))
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


def _dead_space(db) -> Finding:
    """Informational: row-file bytes held by tombstones (given back by a compaction) and
    the compaction policy's last run; graded by ``tombstone_ratio`` per version."""
    dead = sum(v.tombstones * v.dim * 4 for v in db.version_statuses())
    policy = db.compaction_status()
    last = policy["last"]
    if not policy["ratio"]:
        when = "automatic compaction is off (compact_ratio=0)"
    else:
        when = f"the policy compacts a version at {policy['ratio']:.0%} tombstones"
    if last is not None:
        when += ("; last compaction "
                 + (f"gave back {last['bytes_before'] - last['bytes_after']} bytes"
                    if last.get("ok") else f"failed: {last.get('error')}"))
    return Finding("dead_space", "ok", None, dead, None,
                   f"{dead} bytes of row files hold tombstones; {when}",
                   runbook("tombstones-and-compaction"))


def _restorable(snapshots, archive, now: float) -> Finding:
    """Informational: the last snapshot's age and how far back a restore can go."""
    if not snapshots:
        return Finding("restorable_window", "ok", None, None, None,
                       "no snapshots in <db>/snapshots: nothing to restore from",
                       runbook("back-up-and-restore"))
    oldest, newest = snapshots[0], snapshots[-1]
    age = round(now - _epoch(newest.created_at), 1)
    reach = (f"point-in-time restore reaches any LSN from {oldest.lsn} "
             f"({oldest.created_at}) on through the WAL archive"
             if archive is not None and archive["first_lsn"] is not None
             and archive["first_lsn"] <= oldest.lsn + 1 else
             f"restores reach the {len(snapshots)} snapshot LSN(s) "
             f"{', '.join(str(s.lsn) for s in snapshots[-5:])}"
             + ("" if archive is None else " (the archive does not reach back to them)"))
    return Finding("restorable_window", "ok", None, age, None,
                   f"last snapshot {age:.0f}s ago at LSN {newest.lsn}; {reach}",
                   runbook("point-in-time-restore"))


def _epoch(iso: str) -> float:
    import datetime
    return datetime.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def retention_findings(status, consumers, t: HealthThresholds, db_snapshots=(),
                       now: float = 0.0) -> list:
    """wal_retention (informational: what holds the WAL), consumer_lag, wal_archive."""
    ret = status.wal_retention or {}
    pins = ret.get("pins", [])
    held = [p for p in pins if p["bytes"]]
    why = "; ".join(f"{p['kind']}{' ' + p['name'] if p['name'] else ''} needs LSN "
                    f">= {p['lsn']} ({p['bytes']} bytes)" for p in held) or "nothing pinned"
    out = [Finding("wal_retention", "ok", None, ret.get("bytes"), ret.get("keep_bytes"),
                   f"WAL {ret.get('bytes')} bytes in {ret.get('segments')} segment(s); "
                   f"kept past the pins: up to {ret.get('keep_bytes')} bytes; {why}",
                   runbook("wal-and-checkpoints"))]
    worst = max(consumers, key=lambda c: c["lag"], default=None)
    lag = None if worst is None else worst["lag"]
    out.append(Finding(
        "consumer_lag", grade("consumer_lag", lag, t), None, lag, t.consumer_lag_warning,
        "no named change-feed consumers" if worst is None else
        "; ".join(f"consumer {c['name']!r} at LSN {c['lsn']}, {c['lag']} records behind"
                  for c in sorted(consumers, key=lambda c: -c["lag"]))
        + ("; it holds the WAL: catch it up or drop it (db.drop_consumer)"
           if grade("consumer_lag", lag, t) != "ok" else ""),
        runbook("wal-and-checkpoints")))
    out.append(_restorable(db_snapshots, ret.get("archive"), now))
    archive = ret.get("archive")
    if archive is not None:
        failing = 1 if archive["error"] else 0
        out.append(Finding(
            "wal_archive", grade("wal_archive", failing, t), None, failing,
            t.wal_archive_warning,
            f"WAL archive {archive['path']}: {archive['error']}; the segments it has not "
            "copied stay in the WAL" if failing else
            f"WAL archive {archive['path']}: {archive['segments']} segment(s), "
            f"{archive['bytes']} bytes, from LSN {archive['first_lsn']}",
            runbook("point-in-time-restore")))
    return out


def storage_checks(db, t: HealthThresholds):
    info = db.info()
    findings = []
    status = db.status()
    findings += retention_findings(status, db.consumers(), t, db.snapshots(), time.time())
    if status.unapplied:
        findings.append(Finding(
            "unapplied_writes", "critical", None, status.unapplied, 0,
            f"{status.unapplied} durable write(s) are not applied yet "
            f"({status.unapplied_error}); they are applied by the next write or checkpoint "
            "once the cause is fixed", runbook("disk-full")))
    lag = status.records_since_checkpoint
    age = None if db.checkpoint_time is None else time.time() - db.checkpoint_time
    findings.append(Finding(
        "wal_bytes", grade("wal_bytes", info["wal_bytes"], t), None, info["wal_bytes"],
        t.wal_bytes_warning, f"WAL holds {info['wal_bytes']} bytes in {info['wal_segments']} "
        "segment(s)", runbook("wal-and-checkpoints")))
    findings.append(Finding(
        "wal_records_since_checkpoint", grade("wal_records_since_checkpoint", lag, t), None,
        lag, t.wal_records_warning, f"{lag} WAL records are not checkpointed yet (replayed on "
        "open)", runbook("wal-and-checkpoints")))
    # the age counts only while records wait: with nothing to checkpoint it is 0, so the
    # alert on checkpoint_age_seconds agrees with this finding
    waiting = None if age is None else (round(age, 1) if lag > 0 else 0.0)
    findings.append(Finding(
        "checkpoint_age", grade("checkpoint_age", waiting, t), None, waiting,
        t.checkpoint_age_warning,
        "no checkpoint in this process yet" if age is None
        else f"last checkpoint {age:.0f}s ago, {lag} records since",
        runbook("wal-and-checkpoints")))
    total, free = capacity.disk_usage(db.path)
    findings += disk_findings(db.path, info["map_size"], info["map_used"], total, free, t)
    fc = capacity.forecast(db)
    days = fc.days_until_full
    days = None if days is None else round(days, 1)
    findings.append(Finding(
        "capacity", grade("capacity", days, t), None,
        days, t.days_full_warning,
        "growth not estimated yet (needs 10 minutes of write history)"
        if fc.vectors_per_day is None else
        f"growing {fc.vectors_per_day:.0f} vectors/day; "
        + (f"{fc.limiting} full in {days:.1f} days" if days is not None else "no limit in sight"),
        runbook("scaling-and-capacity")))
    stats = dict(info)
    stats.update({"wal_retention": status.wal_retention, "unapplied": status.unapplied,
                  "wal_records_since_checkpoint": lag, "checkpoint_age": age,
                  "disk_total": total, "disk_free": free, "capacity": fc.to_dict(),
                  "counters": dict(db.counters), "query_stats": {
                      k: v for k, v in db.query_stats.items() if k != "plans"}})
    return findings, stats


def disk_findings(path, map_size: int, map_used: int, disk_total: int, disk_free: int,
                  t: HealthThresholds) -> list:
    """map_used (informational), disk_free and map_growth for the figures given.

    The map grows by itself on a full write (engine/store.py), so a full map is fine as
    long as the disk can back the growth: LMDB's file holds the used pages only, so the
    map can still claim its unused part plus the next growth step. map_growth is free
    disk over that (None when the disk size is unknown)."""
    map_ratio = map_used / map_size if map_size else 0.0
    step = next_map_size(map_size) - map_size
    need = max(map_size - map_used, 0) + step
    known = disk_total > 0
    headroom = round(disk_free / need, 2) if known and need else None
    free_ratio = disk_free / disk_total if known else None
    return [
        Finding("map_used", "ok", None, round(map_ratio, 4), None,
                f"LMDB map {map_used} of {map_size} bytes used; it grows by itself, next by "
                f"{step} bytes", runbook("scaling-and-capacity")),
        Finding("disk_free", grade("disk_free", free_ratio, t), None,
                None if free_ratio is None else round(free_ratio, 4), t.disk_free_warning,
                f"disk holding {path}: {disk_free} of {disk_total} bytes free",
                runbook("disk-full")),
        Finding("map_growth", grade("map_growth", headroom, t), None, headroom,
                t.map_growth_warning,
                "disk size unknown; map growth headroom not measured" if headroom is None else
                f"{disk_free} bytes free on disk for the {need} bytes the LMDB map can still "
                f"claim (its unused {need - step} plus the next growth of {step}): "
                f"x{headroom:.2f}", runbook("scaling-and-capacity"))]


def latency_checks(db, t: HealthThresholds):
    h = db.latency_histogram(op="query", window=t.latency_window)
    p99 = h.percentile(0.99)
    value = None if p99 is None else round(p99, 6)
    return [Finding(
        "query_latency_p99", grade("query_latency_p99", value, t), None,
        value, t.p99_query_warning,
        f"no queries in the last {t.latency_window:.0f}s" if p99 is None else
        f"p99 query latency {p99 * 1e3:.2f} ms over the last {t.latency_window:.0f}s "
        f"({h.count} queries)", runbook("latency"))]


def build_report(db, *, drift_sample: int = 2000) -> HealthReport:
    t = db.thresholds
    db.refresh()
    findings, versions = version_checks(db, t, drift_sample)
    more, storage = storage_checks(db, t)
    findings += more + latency_checks(db, t)
    try:
        fresh, fresh_stats = freshness.health_checks(db, t)
    except CorruptionError as e:    # a damaged record: the integrity finding names it
        fresh, fresh_stats = [Finding(
            "freshness", "warning", None, None, None, f"freshness not measured: {e.message}",
            runbook("recover-from-a-corruption-finding"))], {}
    findings += fresh
    from .scrub import finding as integrity_finding
    findings.append(integrity_finding(db.last_verify(), time.time(), t))
    if db.ops_persist_error:
        findings.append(Finding("ops_persist", "warning", None, db.ops_persist_error, None,
                                "ops state could not be saved at the last checkpoint",
                                runbook("incidents")))
    worst = max((_RANK[f.severity] for f in findings), default=0)
    status = {0: "ok", 1: "ok", 2: "warning", 3: "critical"}[worst]
    return HealthReport(status=status, findings=findings,
                        stats={"versions": versions, "storage": storage, **fresh_stats},
                        at=time.time())
