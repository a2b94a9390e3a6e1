"""Freshness of the stored embeddings, from the provenance stored with each row.

Per live namespace version (:class:`FreshnessReport`): rows with provenance, rows embedded
by a model other than the version's (``stale_model``), rows embedded longer ago than
``max_age`` (``older_than_max_age``), rows whose source changed after they were embedded
(``source_changed``: a stored source ``updated_at`` later than the embedding, plus the
*pending* rows a sync could not embed, ops/sync.py), the back-fill backlog of a migration in
progress, and an ETA for the backlog from the embedding rate the ledger measured.

The per-row figures come from one scan of the version's records, cached per version and
LSN. A scan reads every record (~2-4 s at 400k rows), so while writes continue its figures
answer later calls at newer LSNs for up to ``RESCAN_FACTOR`` times the seconds it took:
health checks, metric scrapes and ``freshness`` calls then spend at most about
1 / RESCAN_FACTOR of the time rescanning, however often they come, and figures are never
older than ``RESCAN_MAX_S``. A scan shorter than ``RESCAN_MIN_S`` (a version of up to
some tens of thousands of rows) is redone at every new LSN. Each report says which LSN its
figures are of (``as_of_lsn``) and how old they are (``scan_age_s``).

The health report turns them into findings ``stale_model``, ``stale_age`` and
``source_drift``, ``freshness_backlog`` (the backlog's ETA) (graded by ops/thresholds.py,
so the default alert rules watch them), plus ``budget``, ``cost_spike`` and the
informational ``migration``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from .sync import PENDING_PREFIX

__all__ = ["FreshnessReport", "freshness", "health_checks"]

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()

#: a scan's figures serve newer LSNs for this many times the seconds the scan took ...
RESCAN_FACTOR = 20.0
#: ... when it took at least this long (a shorter scan is redone at every new LSN) ...
RESCAN_MIN_S = 0.25
#: ... and for at most this long (a 10M-row scan of ~a minute is redone every 5 minutes)
RESCAN_MAX_S = 300.0


@dataclass
class FreshnessReport:
    """Freshness of one live namespace version (see the module docstring)."""

    namespace: str
    version: int
    model: str | None
    rows: int
    with_provenance: int
    stale_model: int
    models: dict
    max_age: float
    older_than_max_age: int
    oldest_embedded_at: float | None
    source_changed: int
    pending: int
    migration: str | None
    migration_remaining: int
    backlog: int
    embed_rate: float | None
    eta_seconds: float | None
    as_of_lsn: int = 0
    scan_age_s: float = 0.0

    @property
    def stale_age_ratio(self) -> float:
        return self.older_than_max_age / self.rows if self.rows else 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["stale_age_ratio"] = round(self.stale_age_ratio, 4)
        return out


def _scan(db, name: str, version: int, lsn: int):
    """(figures, the LSN they are of, seconds since the scan) of one version; a cached
    scan serves a newer LSN while it is younger than RESCAN_FACTOR x its own duration (and
    RESCAN_MAX_S)."""
    ns = db.engine.namespace(name, version)
    # version_id is never reused: a namespace dropped and created again inherits nothing
    key = (db.path, name, version, ns.version_id)
    now = time.monotonic()
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None:
        hit_lsn, figures, done_at, took = hit
        if hit_lsn == lsn or (hit_lsn < lsn and took >= RESCAN_MIN_S
                              and now - done_at < min(RESCAN_FACTOR * took, RESCAN_MAX_S)):
            return figures, hit_lsn, now - done_at
    t0 = time.monotonic()
    times, models, changed_ids = [], {}, 0
    cursor = None
    while True:
        page, cursor = ns.scan(after=cursor, limit=5000)
        for rec in page:
            p = rec.provenance
            if not p:
                continue
            times.append(p.get("t", 0.0))
            models[p.get("m")] = models.get(p.get("m"), 0) + 1
            u = p.get("u")
            if u is not None and u > p.get("t", 0.0):
                changed_ids += 1
        if cursor is None:
            break
    figures = (np.sort(np.asarray(times, np.float64)), models, changed_ids, ns.count())
    done = time.monotonic()
    with _CACHE_LOCK:
        _CACHE[key] = (lsn, figures, done, done - t0)
    return figures, lsn, 0.0


def freshness(db, namespace=None, max_age=None, now=None) -> list:
    """One FreshnessReport per live namespace (or just ``namespace``)."""
    now = time.time() if now is None else now
    max_age = float(db.thresholds.freshness_max_age if max_age is None else max_age)
    out = []
    lsn = db.lsn
    for info in db.list_namespaces():
        if info.live_version is None or (namespace is not None and info.name != namespace):
            continue
        live = next(v for v in info.versions if v.version == info.live_version)
        (times, models, changed, rows), as_of, age = _scan(db, info.name, live.version, lsn)
        stale_model = sum(n for m, n in models.items() if m != live.model)
        older = int(np.searchsorted(times, now - max_age, side="left"))
        pending = len(db.ops_store.get(PENDING_PREFIX + info.name, None) or ())
        migration = db.active_migration(info.name)
        remaining = migration.remaining() if migration is not None else 0
        backlog = pending + stale_model + remaining
        rate = db.ledger.embed_rate(info.name)
        out.append(FreshnessReport(
            namespace=info.name, version=live.version, model=live.model, rows=rows,
            with_provenance=len(times), stale_model=stale_model,
            models={str(k): v for k, v in models.items()}, max_age=max_age,
            older_than_max_age=older,
            oldest_embedded_at=float(times[0]) if len(times) else None,
            source_changed=changed + pending, pending=pending,
            migration=None if migration is None else migration.state,
            migration_remaining=remaining, backlog=backlog, embed_rate=rate,
            eta_seconds=(backlog / rate if rate else None) if backlog else 0.0,
            as_of_lsn=as_of, scan_age_s=round(age, 3)))
    return out


def health_checks(db, t):
    """Findings and stats for freshness, budgets and cost spikes (see the module)."""
    from .health import Finding, runbook
    from .thresholds import grade

    findings, stats = [], []
    for r in freshness(db):
        stats.append(r.to_dict())
        ns = r.namespace
        findings.append(Finding(
            "stale_model", grade("stale_model", r.stale_model, t), ns, r.stale_model,
            t.stale_model_warning,
            f"{ns} v{r.version}: {r.stale_model} of {r.with_provenance} rows embedded by a "
            f"model other than {r.model} ({r.models or 'no provenance'})",
            runbook("model-updates"), r.version))
        ratio = round(r.stale_age_ratio, 4)
        findings.append(Finding(
            "stale_age", grade("stale_age", ratio, t), ns, ratio, t.stale_age_warning,
            f"{ns} v{r.version}: {r.older_than_max_age} of {r.rows} rows embedded more than "
            f"{r.max_age:.0f}s ago", runbook("source-drift"), r.version))
        findings.append(Finding(
            "source_drift", grade("source_drift", r.source_changed, t), ns, r.source_changed,
            t.source_drift_warning,
            f"{ns} v{r.version}: {r.source_changed} rows whose source changed after they "
            f"were embedded ({r.pending} pending re-embeds)", runbook("source-drift"),
            r.version))
        eta = None if r.eta_seconds is None else round(r.eta_seconds, 3)
        rate = "no embedding rate measured yet" if r.embed_rate is None else \
            f"{r.embed_rate:.1f} texts/s"
        findings.append(Finding(
            "freshness_backlog", grade("freshness_backlog", eta, t),
            ns, eta, t.backlog_eta_warning,
            f"{ns}: {r.backlog} rows to (re-)embed ({r.pending} pending, {r.stale_model} by "
            f"another model, {r.migration_remaining} to back-fill); ETA "
            f"{'unknown' if eta is None else f'{eta:.0f}s'} at {rate}",
            runbook("source-drift"), r.version))
        if r.migration is not None:
            findings.append(Finding(
                "migration", "info", ns, r.migration, None,
                f"{ns}: migration {r.migration}, {r.migration_remaining} rows to back-fill",
                runbook("model-updates"), r.version))
    usages = [db.ledger.budget_usage(b) for b in db.ledger.budgets.values()]
    worst = max((u["used_ratio"] for u in usages), default=0.0)
    worst = round(min(worst, 1e9), 4)
    findings.append(Finding(
        "budget", grade("budget", worst, t), None, worst, t.budget_warning,
        "no budgets set" if not usages else "; ".join(
            f"{u['period']} budget {u['namespace'] or '*'}/{u['model'] or '*'}: "
            f"{u['used_ratio']:.0%} used ({u['used_tokens']} tokens, cost "
            f"{u['used_cost']:.4g})" for u in usages), runbook("cost-spike")))
    rows = db.ledger.hourly(None, 25)
    *before, (_, tokens, _) = rows
    base = max(sum(t_ for _, t_, _ in before) / len(before), t.cost_spike_floor_tokens)
    spike = round(tokens / base, 4)
    findings.append(Finding(
        "cost_spike", grade("cost_spike", spike, t), None, spike, t.cost_spike_warning,
        f"{tokens} embedding tokens this hour, x{spike:.2f} the mean hour of the previous "
        f"24 (floor {t.cost_spike_floor_tokens} tokens/hour)", runbook("cost-spike")))
    return findings, {"freshness": stats, "budgets": usages}
