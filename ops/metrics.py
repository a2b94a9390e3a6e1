"""Prometheus text exposition of the ops metrics, through prometheus_client.

A custom collector reads our own histograms and the engine's figures at scrape time and
yields metric families; :func:`metrics_text` renders them with ``generate_latest`` on a
private ``CollectorRegistry`` (nothing is registered globally, so several databases in one
process do not collide).

Latency histograms are exported in seconds with ``le`` bounds at powers of two of
microseconds (1 us .. 67 s), which are bucket edges of our log-linear histograms, so the
cumulative counts are exact.

Every ``*_total`` counter has one meaning: the lifetime total of the database, including
what earlier processes persisted at their checkpoints (operations, errors, short results,
vectors written and deleted, write batches). The exceptions say so in their name:
``simplevector_process_*`` counts this process only (numba compile time, observer errors).
Queries are counted once, as ``simplevector_operations_total{op="query"}``.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from . import capacity
from .health import drift_ratio
from .histogram import OCTAVES

PREFIX = "simplevector"
LE_BOUNDS = [(1 << e) * 1e-6 for e in range(OCTAVES + 1)]


def _le(bound: float) -> str:
    return repr(float(bound))


class OpsCollector:
    """Yields every SimpleVector metric family for one database at collect time."""

    def __init__(self, db, *, drift_sample: int = 1000):
        self.db = db
        self.drift_sample = drift_sample

    def describe(self):
        return []       # collected lazily; no duplicate-name checks needed at registration

    def collect(self):
        db = self.db
        yield from self._operations(db)
        yield from self._versions(db)
        yield from self._storage(db)
        yield from self._freshness(db)

    def _operations(self, db):
        hist = HistogramMetricFamily(
            f"{PREFIX}_operation_duration_seconds",
            "Latency of public data operations (errors included), seconds.",
            labels=["namespace", "op"])
        ops = CounterMetricFamily(f"{PREFIX}_operations",
                                  "Public data operations, including failed ones.",
                                  labels=["namespace", "op"])
        errors = CounterMetricFamily(f"{PREFIX}_operation_errors",
                                     "Public data operations that raised an error.",
                                     labels=["namespace", "op"])
        for ns, op, n_ok, n_err, ok, err in db.operation_counts():
            h = ok.copy().merge(err)
            cum = h.cumulative(LE_BOUNDS)
            buckets = [(_le(b), c) for b, c in zip(LE_BOUNDS, cum)] + [("+Inf", h.count)]
            hist.add_metric([ns, op], buckets, h.sum)
            ops.add_metric([ns, op], n_ok + n_err)
            errors.add_metric([ns, op], n_err)
        yield hist
        yield ops
        yield errors
        short = CounterMetricFamily(
            f"{PREFIX}_short_results",
            "Queries that returned fewer than k hits while more rows matched their filter.",
            labels=["namespace"])
        for ns, n in sorted(db.short_results().items()):
            short.add_metric([ns], n)
        yield short
        lifetime = db.lifetime_counters()
        for key, help_ in (("vectors_written", "Vectors written (upserted), lifetime."),
                           ("vectors_deleted", "Vectors deleted, lifetime."),
                           ("writes", "Write batches committed, lifetime.")):
            c = CounterMetricFamily(f"{PREFIX}_{key}", help_)
            c.add_metric([], lifetime.get(key, 0))
            yield c
        comp = db.compile_stats()
        c = CounterMetricFamily(
            f"{PREFIX}_process_kernel_compile_seconds",
            "Seconds this process spent compiling numba kernels (excluded from the "
            "operation latency histograms).")
        c.add_metric([], comp["seconds"])
        yield c
        c = CounterMetricFamily(f"{PREFIX}_process_kernel_compilations",
                                "numba kernel compilations in this process.")
        c.add_metric([], comp["compilations"])
        yield c
        c = CounterMetricFamily(f"{PREFIX}_process_observer_errors",
                                "Exceptions raised by engine observers in this process.")
        c.add_metric([], db.status().observer_errors)
        yield c

    def _freshness(self, db):
        yield from _freshness_families(db)

    def _versions(self, db):
        labels = ["namespace", "version", "model", "live"]
        rows = GaugeMetricFamily(f"{PREFIX}_vectors", "Rows stored (live).", labels=labels)
        tomb = GaugeMetricFamily(f"{PREFIX}_tombstones", "Tombstoned positions.", labels=labels)
        ratio = GaugeMetricFamily(f"{PREFIX}_tombstone_ratio",
                                  "Tombstones over all positions.", labels=labels)
        imb = GaugeMetricFamily(f"{PREFIX}_index_list_imbalance",
                                "Largest IVF list over the mean list.", labels=labels)
        factor = GaugeMetricFamily(
            f"{PREFIX}_index_imbalance_factor",
            "IVF imbalance factor: nlist * sum(size^2) / rows^2 (1 = balanced lists).",
            labels=labels)
        empty = GaugeMetricFamily(f"{PREFIX}_index_empty_lists", "Empty IVF lists.",
                                  labels=labels)
        drift = GaugeMetricFamily(
            f"{PREFIX}_index_drift_ratio",
            "Quantization error of rows added since training over the training error.",
            labels=labels)
        for st in db.version_statuses():
            lv = [st.name, str(st.version), str(st.model or ""),
                  "true" if st.live else "false"]
            rows.add_metric(lv, st.rows)
            tomb.add_metric(lv, st.tombstones)
            ratio.add_metric(lv, st.tombstone_ratio)
            if st.index_info is not None:
                info = st.index_info
                imb.add_metric(lv, info["list_imbalance"])
                factor.add_metric(lv, info["imbalance_factor"])
                empty.add_metric(lv, info["empty_lists"])
                value, _ = drift_ratio(db, st, self.drift_sample)
                if value is not None:
                    drift.add_metric(lv, value)
        yield from (rows, tomb, ratio, imb, factor, empty, drift)
        recall = GaugeMetricFamily(f"{PREFIX}_recall",
                                   "Recall@k measured by the latest probe.",
                                   labels=["namespace", "version", "k"])
        low = GaugeMetricFamily(f"{PREFIX}_recall_ci_low",
                                "Lower end of the recall probe's 95% interval.",
                                labels=["namespace", "version", "k"])
        age = GaugeMetricFamily(f"{PREFIX}_recall_probe_age_seconds",
                                "Seconds since the latest recall probe.",
                                labels=["namespace", "version", "k"])
        now = time.time()
        for ns, p in sorted(db.latest_probes().items()):
            lv = [ns, str(p.version), str(p.k)]
            recall.add_metric(lv, p.recall)
            low.add_metric(lv, p.ci_low)
            age.add_metric(lv, max(0.0, now - p.at))
        yield from (recall, low, age)

    def _storage(self, db):
        info = db.info()
        lag = db.status().records_since_checkpoint
        total, free = capacity.disk_usage(db.path)
        fc = capacity.forecast(db)
        gauges = [
            ("lsn", "Last committed log sequence number.", info["lsn"]),
            ("checkpoint_lsn", "LSN of the last checkpoint.", info["checkpoint_lsn"]),
            ("wal_bytes", "Bytes in WAL segment files.", info["wal_bytes"]),
            ("wal_segments", "WAL segment files.", info["wal_segments"]),
            ("wal_records_since_checkpoint",
             "WAL records not yet in a checkpoint (replayed on open).", lag),
            ("checkpoint_age_seconds", "Seconds since the last checkpoint of this process.",
             None if db.checkpoint_time is None else time.time() - db.checkpoint_time),
            ("map_size_bytes", "LMDB map size.", info["map_size"]),
            ("map_used_bytes", "LMDB map bytes in use.", info["map_used"]),
            ("disk_total_bytes", "Size of the disk holding the database.", total),
            ("disk_free_bytes", "Free bytes on the disk holding the database.", free),
            ("memory_vectors_bytes", "Bytes of in-memory row arrays.", fc.memory_used),
            ("growth_vectors_per_day", "Net vectors added per day (write history).",
             fc.vectors_per_day),
            ("growth_bytes_per_day", "Estimated disk bytes added per day.", fc.bytes_per_day),
            ("integrity_problems", "Problems the last verify, scrub or repair found.",
             None if db.last_verify() is None else db.last_verify()["problem_count"]),
            ("integrity_age_seconds", "Seconds since the last verify, scrub or repair.",
             None if db.last_verify() is None else time.time() - db.last_verify()["at"]),
        ]
        for name, help_, value in gauges:
            if value is None:
                continue
            g = GaugeMetricFamily(f"{PREFIX}_{name}", help_)
            g.add_metric([], float(value))
            yield g
        status = db.status()
        archive = (status.wal_retention or {}).get("archive")
        for name, help_, value in (
                ("unapplied_writes", "Durable writes waiting to be applied (a full disk).",
                 status.unapplied),
                ("disk_full_refusals", "Writes refused by the disk reserve in this process.",
                 status.disk_full_refusals),
                ("wal_archive_failing", "1 while copying WAL segments to the archive fails.",
                 None if archive is None else (1 if archive["error"] else 0))):
            if value is not None:
                g = GaugeMetricFamily(f"{PREFIX}_{name}", help_)
                g.add_metric([], float(value))
                yield g
        pinned = GaugeMetricFamily(f"{PREFIX}_wal_pinned_bytes",
                                   "WAL bytes each pin holds (checkpoint, archive, snapshot, "
                                   "consumer).", labels=["kind", "name"])
        for pin in (status.wal_retention or {}).get("pins", ()):
            pinned.add_metric([pin["kind"], pin["name"] or ""], float(pin["bytes"]))
        yield pinned
        lag = GaugeMetricFamily(f"{PREFIX}_consumer_lag_records",
                                "Committed records a named change-feed consumer has not "
                                "acknowledged.", labels=["consumer"])
        for c in db.consumers():
            lag.add_metric([c["name"]], float(c["lag"]))
        yield lag
        days = GaugeMetricFamily(f"{PREFIX}_days_until_full",
                                 "Projected days until a resource is full at current growth.",
                                 labels=["resource"])
        for resource, value in (("map", fc.days_until_map_full),
                                ("disk", fc.days_until_disk_full),
                                ("memory", fc.days_until_memory_full)):
            if value is not None:
                days.add_metric([resource], value)
        yield days


def _freshness_families(db):
    """Freshness, backlog, the cost ledger, budgets and migrations (ops/freshness.py)."""
    ns = ["namespace"]
    fams = {
        "stale": GaugeMetricFamily(f"{PREFIX}_rows_stale_model",
                                   "Rows embedded by a model other than the live one.", labels=ns),
        "old": GaugeMetricFamily(f"{PREFIX}_rows_older_than_max_age",
                                 "Rows embedded longer than freshness_max_age ago.", labels=ns),
        "changed": GaugeMetricFamily(f"{PREFIX}_rows_source_changed",
                                     "Rows whose source changed after embedding (incl. "
                                     "pending).", labels=ns),
        "backlog": GaugeMetricFamily(f"{PREFIX}_freshness_backlog_rows",
                                     "Rows to (re-)embed: pending, other model, back-fill.",
                                     labels=ns),
        "eta": GaugeMetricFamily(f"{PREFIX}_freshness_backlog_eta_seconds",
                                 "Backlog / measured embedding rate, seconds.", labels=ns),
        "migrating": GaugeMetricFamily(f"{PREFIX}_migration_in_progress",
                                       "1 while a model migration of the namespace runs.",
                                       labels=ns),
    }
    for r in db.freshness():
        lab = [r.namespace]
        fams["stale"].add_metric(lab, r.stale_model)
        fams["old"].add_metric(lab, r.older_than_max_age)
        fams["changed"].add_metric(lab, r.source_changed)
        fams["backlog"].add_metric(lab, r.backlog)
        if r.eta_seconds is not None:
            fams["eta"].add_metric(lab, r.eta_seconds)
        fams["migrating"].add_metric(lab, 1 if r.migration else 0)
    yield from fams.values()
    labels = ["namespace", "model"]
    calls = CounterMetricFamily(f"{PREFIX}_embedding_calls", "Embedding model calls (ledger).",
                                labels=labels)
    texts = CounterMetricFamily(f"{PREFIX}_embedding_texts", "Texts embedded (ledger).",
                                labels=labels)
    tokens = CounterMetricFamily(f"{PREFIX}_embedding_tokens", "Tokens billed (ledger).",
                                 labels=labels)
    cost = CounterMetricFamily(f"{PREFIX}_embedding_cost", "Embedding cost (ledger).",
                               labels=labels)
    for name, model in db.ledger.keys():
        t = db.ledger.totals(0.0, name, model or "-")
        lab = [name, model or ""]
        calls.add_metric(lab, t["calls"])
        texts.add_metric(lab, t["texts"])
        tokens.add_metric(lab, t["tokens"])
        cost.add_metric(lab, t["cost"])
    yield from (calls, texts, tokens, cost)
    used = GaugeMetricFamily(f"{PREFIX}_budget_used_ratio",
                             "Share of each budget used in its current period.",
                             labels=["namespace", "model", "period"])
    for u in db.budgets():
        used.add_metric([u["namespace"] or "*", u["model"] or "*", u["period"]],
                        min(u["used_ratio"], 1e9))
    yield used


def metrics_text(db) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(OpsCollector(db))
    return generate_latest(registry).decode("utf-8")
