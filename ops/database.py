"""The ops-enabled database: the engine's Database plus latency histograms, a health
report, recall probes, alerts, a capacity forecast, and (ops/freshdb.py) embedding
functions, sync, freshness, the cost ledger, budgets, rate limits and model migration.

:class:`ObservedDatabase` wraps an engine :class:`~simplevector.engine.database.Database`
(``db.engine``) and offers its whole public API, forwarded, plus the ops methods. It
watches the engine only through the engine's public surface (docs/architecture.md, "The
boundary between layers"): an :class:`OpsObserver` registered with ``add_observer``
receives every operation timing (into a per-(namespace, operation) histogram, failures
into a separate one; numba compile time is excluded and counted apart), every query record
(short results are counted; a small reservoir of recent query vectors feeds the recall
probe) and every checkpoint (lifetime histogram totals, counters, short-result counts, the
growth history and the alert state are written to the engine's ``ops_store``, and read
back on open, so a restart keeps the history). Status comes from ``db.status()`` and
``db.version_statuses()``.

Background loops (recall probe, alert evaluation) take an interval; 0, the default, turns
them off. They stop before the engine closes.
"""

from __future__ import annotations

import functools
import math
import os
import random
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

from simplevector.engine import snapshot as snapshot_mod
from simplevector.engine.database import Database
from simplevector.engine.errors import ClosedError, InvalidInput
from simplevector.engine.observer import Observer, compile_clock

from . import alerts as alerts_mod
from . import capacity, health as health_mod, metrics, probe as probe_mod, scrub as scrub_mod
from .freshdb import FreshnessMixin
from .health import HealthThresholds
from .histogram import Histogram, RollingHistogram, parse_window

OPS = ("query", "upsert", "get", "delete")
LATENCY_KEY = "latency:v1"
COUNTERS_KEY = "counters:v1"
RESERVOIR_SIZE = 256
#: rows of one query batch offered to the reservoir (keeps big batches cheap)
RESERVOIR_PER_BATCH = 4


@dataclass
class LatencySummary:
    """Latency of one (namespace, operation) over a window (None = lifetime), seconds."""

    namespace: str | None
    op: str | None
    window: float | None
    count: int
    errors: int
    sum: float
    min: float | None
    max: float | None
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    p999: float | None

    def to_dict(self) -> dict:
        return asdict(self)


class _Series:
    __slots__ = ("ok", "err")

    def __init__(self, clock, ok_base=None, err_base=None):
        self.ok = RollingHistogram(clock, ok_base)
        self.err = RollingHistogram(clock, err_base)


class OpsObserver(Observer):
    """The ops layer's observer of one engine database: forwards each callback to the
    function it was given (the :class:`ObservedDatabase` that owns it)."""

    def __init__(self, on_operation, on_query, on_checkpoint, on_compact):
        self.on_operation = on_operation
        self.on_query = on_query
        self.on_checkpoint = on_checkpoint
        self.on_compact = on_compact


class ObservedDatabase(FreshnessMixin):
    """A Database that watches itself (see the module docstring and docs/runbook.md).

    probe_interval: seconds between background recall probes of every live namespace
        (0 = off). alert_interval: seconds between background alert evaluations (0 = off).
    alert_rules: a TOML path or a list of AlertRule added to the default rules.
    memory_budget: bytes the in-memory vectors may use (capacity forecast; None = none).
    thresholds: HealthThresholds overriding the health report's defaults.
    snapshot_interval: seconds between scheduled snapshots into ``<db>/snapshots`` (0 =
        off); after each, snapshots beyond the newest ``snapshot_keep`` are removed, and the
        run is recorded as an event (``alert_events()``, rule ``scheduled_snapshot``).
    scrub_interval: seconds between background scrub slices (0 = off, the default: see
        ops/scrub.py), each checking ``scrub_rows`` positions or id entries of one version;
        the last result is recorded for the health report, cycles as events.
    """

    def __init__(self, path, *, probe_interval: float = 0.0, alert_interval: float = 0.0,
                 alert_rules=None, memory_budget: int | None = None,
                 thresholds: HealthThresholds | None = None, clock=time.monotonic,
                 snapshot_interval: float = 0.0, snapshot_keep: int = 3,
                 scrub_interval: float | None = 0.0, scrub_rows: int = 4096, **kwargs):
        scrub_interval = 0.0 if scrub_interval is None else scrub_interval
        if isinstance(scrub_rows, bool) or not isinstance(scrub_rows, int) or scrub_rows < 1:
            raise InvalidInput(f"scrub_rows {scrub_rows!r} is not valid; expected an int >= 1 "
                               "(positions or id entries one scrub slice checks)")
        if isinstance(snapshot_keep, bool) or not isinstance(snapshot_keep, int) or \
                snapshot_keep < 1:
            raise InvalidInput(f"snapshot_keep {snapshot_keep!r} is not valid; expected an "
                               "int >= 1 (snapshots the scheduler leaves)")
        for name, value in (("probe_interval", probe_interval),
                            ("alert_interval", alert_interval),
                            ("snapshot_interval", snapshot_interval),
                            ("scrub_interval", scrub_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InvalidInput(f"{name} {value!r} is not valid; expected seconds >= 0 "
                                   "(0 turns the loop off)")
        # everything the hooks touch exists before the engine starts its threads
        self._ops_clock = clock
        self._ops_lock = threading.Lock()
        self._series: dict = {}
        self._short: dict = {}                  # namespace -> short results (lifetime)
        self._short_times: deque = deque(maxlen=4096)   # (monotonic ts, namespace, n)
        self._reservoir: dict = {}              # namespace -> [seen, [vectors]]
        self._rng = random.Random(0)
        self._probes: dict = {}                 # namespace -> latest ProbeResult
        self._ops_loaded = False
        self.ops_persist_error = None
        self.memory_budget = memory_budget
        self.thresholds = thresholds or HealthThresholds()
        self._internal = threading.local()
        self._loops: list = []
        self._loop_stop = threading.Event()
        self._counter_base: dict = {}
        self.engine = Database(path, **kwargs)
        self.integrity = scrub_mod.IntegrityTracker(self, scrub_rows)
        self._init_fresh()
        self.growth = capacity.GrowthTracker()
        self._alerts = alerts_mod.AlertManager(self)
        self.ops_observer = OpsObserver(self._on_operation, self._on_query,
                                        self._on_checkpoint, self._on_compact)
        try:
            self._load_ops_state()
            if alert_rules is not None:
                if isinstance(alert_rules, (list, tuple)):
                    for rule in alert_rules:
                        self._alerts.add(rule)
                else:
                    self.load_alert_rules(alert_rules)
        except BaseException:
            self.engine.close()
            raise
        self.engine.add_observer(self.ops_observer)
        self._start_loop("probe", probe_interval, self._probe_all)
        self._start_loop("alerts", alert_interval, self.alerts)
        self.snapshot_keep = snapshot_keep
        self._start_loop("snapshots", snapshot_interval, self.scheduled_snapshot)
        self._start_loop("scrub", scrub_interval, self.scrub_step, readonly_ok=True)

    def _check_open(self):
        if self.engine.closed:
            raise ClosedError(f"the database at {self.engine.path} is closed",
                              hint="open the database again with simplevector.open(path)")

    # -- persisted state -------------------------------------------------------------------
    def _load_ops_state(self):
        store = self.engine.ops_store
        saved = store.get(LATENCY_KEY, None) or {}
        for item in saved.get("series", ()):
            key = (item["ns"], item["op"])
            self._series[key] = _Series(self._ops_clock, Histogram.from_msg(item["ok"]),
                                        Histogram.from_msg(item["err"]))
        self._short = dict(saved.get("short", {}))
        for ns, msg in store.items("probe:"):
            self._probes[msg["namespace"]] = probe_mod.ProbeResult.from_dict(msg)
        self._counter_base = dict(store.get(COUNTERS_KEY, None) or {})
        self.growth.load(store.get(capacity.GROWTH_KEY, None))
        self._alerts.load()
        self.integrity.load()
        self._load_fresh_state()
        self._ops_loaded = True

    # -- observer callbacks (engine -> ops) ---------------------------------------------
    def _on_operation(self, op, namespace, seconds, ok, compile_seconds=0.0):
        if getattr(self._internal, "active", False):
            return
        series = self._series_for(namespace, op)
        (series.ok if ok else series.err).record(seconds)

    def _on_query(self, namespace, plan, queries=None):
        if getattr(self._internal, "active", False):
            return
        if plan.short:
            with self._ops_lock:
                self._short[namespace] = self._short.get(namespace, 0) + int(plan.short)
                self._short_times.append((self._ops_clock(), namespace, int(plan.short)))
        if queries is not None and len(queries):
            self._offer_queries(namespace, queries)

    def _on_checkpoint(self, lsn):
        if not self._ops_loaded:
            return
        try:
            self._persist_ops_state()
            self.ops_persist_error = None
        except Exception as e:      # the checkpoint itself succeeded; report, don't fail it
            self.ops_persist_error = f"{type(e).__name__}: {e}"

    def _persist_ops_state(self):
        with self._ops_lock:
            series = list(self._series.items())
            short = dict(self._short)
        payload = {"series": [{"ns": ns, "op": op, "ok": s.ok.snapshot().to_msg(),
                               "err": s.err.snapshot().to_msg()} for (ns, op), s in series],
                   "short": short, "saved_at": time.time()}
        store = self.engine.ops_store
        store.put(LATENCY_KEY, payload)
        store.put(COUNTERS_KEY, self.lifetime_counters())
        self.growth.update(self)
        store.put(capacity.GROWTH_KEY, self.growth.to_msg())
        self._persist_fresh_state()

    def lifetime_counters(self) -> dict:
        """vectors_written, vectors_deleted, writes: totals over the database's life
        (persisted at each checkpoint) plus this process's since then."""
        out = dict(self._counter_base)
        for key, value in self.engine.counters.items():
            out[key] = out.get(key, 0) + value
        return out

    @staticmethod
    def compile_stats() -> dict:
        """numba compilation in this process: seconds and count (excluded from latency)."""
        return {"seconds": compile_clock.total_seconds,
                "compilations": compile_clock.compilations}

    # -- hooks -----------------------------------------------------------------------------
    def _series_for(self, namespace: str, op: str) -> _Series:
        key = (namespace, op)
        series = self._series.get(key)
        if series is None:
            with self._ops_lock:
                series = self._series.get(key)
                if series is None:
                    series = self._series[key] = _Series(self._ops_clock)
        return series

    def _offer_queries(self, namespace, queries):
        """Reservoir sampling of recent query vectors per namespace: algorithm L (Li, 1994),
        which draws how many rows to skip before the next one it keeps, so a query the
        sample does not take costs a counter (algorithm R drew a random number for each)."""
        slot = self._reservoir.get(namespace)
        if slot is None:                    # [seen, rows, seen count of the next take, w]
            slot = self._reservoir.setdefault(namespace, [0, [], RESERVOIR_SIZE, 1.0])
        rows = queries if len(queries) <= RESERVOIR_PER_BATCH else \
            queries[self._rng.sample(range(len(queries)), RESERVOIR_PER_BATCH)]
        with self._ops_lock:
            if len(slot[1]) == RESERVOIR_SIZE and slot[0] + len(rows) < slot[2]:
                slot[0] += len(rows)        # none of these is taken
                return
            for row in rows:
                slot[0] += 1
                if len(slot[1]) < RESERVOIR_SIZE:
                    slot[1].append(np.array(row, np.float32))
                    if len(slot[1]) == RESERVOIR_SIZE:
                        self._next_take(slot)
                elif slot[0] == slot[2]:
                    slot[1][self._rng.randrange(RESERVOIR_SIZE)] = np.array(row, np.float32)
                    self._next_take(slot)

    def _next_take(self, slot):
        """Algorithm L's step: shrink w and draw the seen count of the next row kept."""
        rng = self._rng
        slot[3] *= math.exp(math.log(1.0 - rng.random()) / RESERVOIR_SIZE)
        skip = math.floor(math.log(1.0 - rng.random()) / math.log1p(-slot[3])) \
            if slot[3] < 1.0 else 0
        slot[2] = slot[0] + skip + 1

    def recent_queries(self, namespace: str, dim: int | None = None) -> np.ndarray | None:
        """The reservoir of recent (prepared) query vectors of ``namespace``, or None."""
        with self._ops_lock:
            slot = self._reservoir.get(namespace)
            rows = list(slot[1]) if slot else []
        if dim is not None:
            rows = [r for r in rows if r.shape[0] == dim]
        return np.stack(rows) if rows else None

    # -- latency -----------------------------------------------------------------------------
    def _matching(self, namespace, op):
        if op is not None and op not in OPS:
            raise InvalidInput(f"op {op!r} is not valid; expected one of {', '.join(OPS)}")
        with self._ops_lock:
            items = list(self._series.items())
        return sorted(((k, s) for k, s in items
                       if (namespace is None or k[0] == namespace) and (op is None or k[1] == op)),
                      key=lambda kv: kv[0])

    def _window(self, window):
        try:
            return parse_window(window)
        except ValueError as e:
            raise InvalidInput(str(e)) from None

    def latency_histogram(self, namespace=None, op=None, window=None, *,
                          errors: bool = True) -> Histogram:
        """One Histogram merging every matching series (ok and, by default, failed ops)."""
        self._check_open()
        seconds = self._window(window)
        out = Histogram()
        for _, series in self._matching(namespace, op):
            out.merge(series.ok.snapshot(seconds))
            if errors:
                out.merge(series.err.snapshot(seconds))
        return out

    def latency(self, namespace=None, op=None, window=None) -> list:
        """LatencySummary per (namespace, operation) matching the filters; ``window`` None
        (lifetime, including totals persisted before this process), seconds or "1m"/"5m"/"1h".
        Percentiles are within 0.8 % of a recorded value (see ops/histogram.py)."""
        self._check_open()
        seconds = self._window(window)
        out = []
        for (ns, op_), series in self._matching(namespace, op):
            err = series.err.snapshot(seconds)
            h = series.ok.snapshot(seconds).merge(err)
            out.append(LatencySummary(namespace=ns, op=op_, window=seconds, errors=err.count,
                                      **h.summary()))
        return out

    def operation_counts(self) -> list:
        """(namespace, op, ok count, error count, ok histogram, error histogram), lifetime."""
        out = []
        for (ns, op), series in self._matching(None, None):
            ok, err = series.ok.snapshot(), series.err.snapshot()
            out.append((ns, op, ok.count, err.count, ok, err))
        return out

    def short_results(self, window=None) -> dict:
        """Short results per namespace: lifetime (incl. persisted) or within ``window``."""
        seconds = self._window(window)
        with self._ops_lock:
            if seconds is None:
                return dict(self._short)
            cutoff = self._ops_clock() - seconds
            out: dict = {}
            for ts, ns, n in self._short_times:
                if ts >= cutoff:
                    out[ns] = out.get(ns, 0) + n
            return out

    # -- metrics, health, probes, alerts, capacity -------------------------------------------
    def metrics_text(self) -> str:
        """The Prometheus text exposition of every metric (see ops/metrics.py)."""
        self._check_open()
        return metrics.metrics_text(self)

    def health(self, *, drift_sample: int = 2000):
        """A HealthReport: overall status and findings with runbook pointers."""
        self._check_open()
        return health_mod.build_report(self, drift_sample=drift_sample)

    def probe_recall(self, namespace, samples: int = 200, k: int = 10, *,
                     source: str = "auto", seed: int = 0, where=None):
        """Recall@k of the live index against exact search (see ops/probe.py); with
        ``where``, of filtered queries against exact search over the matching rows (not
        kept as the namespace's latest probe)."""
        self._check_open()
        self._internal.active = True
        try:
            result = probe_mod.probe_recall(self, namespace, samples=samples, k=k,
                                            source=source, seed=seed, where=where)
        finally:
            self._internal.active = False
        if where is not None:
            return result
        self._probes[result.namespace] = result
        if self.engine.writable:
            try:
                self.engine.ops_store.put(f"probe:{result.namespace}", result.to_dict())
            except Exception:
                pass
        return result

    def latest_probes(self) -> dict:
        """namespace -> the latest ProbeResult (this process or persisted)."""
        return dict(self._probes)

    def _probe_all(self):
        for info in self.list_namespaces():
            if info.live_version is None:
                continue
            try:
                self.probe_recall(info.name)
            except Exception:       # a failing probe must not stop the loop
                continue

    def add_alert_rule(self, name, metric, op, threshold, *, window=None,
                       severity="warning", description="", namespace=None, critical=None):
        """Add (or replace, by name) an alert rule; returns the AlertRule. ``critical``: a
        second level past which the rule fires at critical severity (ops/thresholds.py)."""
        rule = alerts_mod.AlertRule(name=name, metric=metric, op=op, threshold=threshold,
                                    window=window, severity=severity,
                                    description=description, namespace=namespace,
                                    critical=critical)
        return self._alerts.add(rule)

    def remove_alert_rule(self, name) -> None:
        self._alerts.remove(name)

    def alert_rules(self) -> list:
        return self._alerts.list_rules()

    def load_alert_rules(self, path) -> list:
        """Add the rules of a TOML file ([[rule]] tables); returns them."""
        rules = alerts_mod.load_rules(path)
        for rule in rules:
            self._alerts.add(rule)
        return rules

    def alerts(self) -> list:
        """Evaluate every rule now; returns the Alert list (firing or not) and records
        state changes (firing / resolved) as events."""
        self._check_open()
        return self._alerts.evaluate()

    def alert_events(self, since: float | None = None) -> list:
        """Recorded alert state changes, oldest first (``since``: epoch seconds)."""
        self._check_open()
        return self._alerts.events(since)

    @property
    def keys(self):
        """The API keys of this database (:class:`simplevector.ops.keys.KeyStore`):
        ``create(role, namespaces=, expires=)``, ``list()``, ``revoke(id)``."""
        from simplevector.ops.keys import KeyStore
        return KeyStore(self)

    def capacity(self):
        """Growth rate and days until the map, the disk or the memory budget is full."""
        self._check_open()
        return capacity.forecast(self)

    # -- scheduled snapshots -------------------------------------------------------------------
    def _on_compact(self, report):
        """Each compaction that rewrote a version is an event (rule ``compaction``)."""
        now = time.time()
        names = ", ".join(f"{v.namespace} v{v.version} ({v.tombstones_removed} tombstones)"
                          for v in report.versions if v.lsn)
        event = {"state": "done", "severity": "info", "value": report.tombstones_removed,
                 "message": f"{'automatic ' if report.automatic else ''}compaction of {names}: "
                            f"{report.bytes_before} -> {report.bytes_after} bytes on disk "
                            f"in {report.seconds:.3f} s",
                 "automatic": report.automatic, "bytes_before": report.bytes_before,
                 "bytes_after": report.bytes_after, "ts": now, "rule": "compaction",
                 "metric": "tombstones_removed", "namespace": None, "version": None,
                 "threshold": None}
        if self.engine.writable:
            self.engine.ops_store.put(f"{alerts_mod.EVENT_PREFIX}{now:020.6f}:000:compaction:",
                                      event)

    def scheduled_snapshot(self) -> dict:
        """One run of the snapshot scheduler: ``db.snapshot()``, then remove the snapshots
        beyond the newest ``snapshot_keep``; the run (or its failure) is recorded as an
        event. Returns the event."""
        self._check_open()
        now = time.time()
        try:
            info = self.engine.snapshot()
            removed = self.engine.prune_snapshots(self.snapshot_keep)
            event = {"state": "done", "severity": "info", "value": info.lsn,
                     "message": f"snapshot {info.path} at LSN {info.lsn} ({info.bytes} "
                                f"bytes); removed {len(removed)} older: "
                                + (", ".join(r.path for r in removed) or "none"),
                     "path": info.path, "removed": [r.path for r in removed]}
        except Exception as e:
            event = {"state": "failed", "severity": "warning", "value": None,
                     "message": f"scheduled snapshot failed: {type(e).__name__}: {e}"}
        event.update({"ts": now, "rule": "scheduled_snapshot", "metric": None,
                      "namespace": None, "version": None, "threshold": None})
        if self.engine.writable:
            try:
                self.engine.ops_store.put(f"{alerts_mod.EVENT_PREFIX}{now:020.6f}:000:"
                                          "scheduled_snapshot:", event)
            except Exception:
                pass
        return event

    def verify_snapshot(self, path):
        """Check the snapshot ``path`` (a snapshot directory, or the name of one in
        ``<db>/snapshots``) against its manifest: every file's size and SHA-256. Returns its
        SnapshotInfo; a damaged file raises CorruptionError naming it, a directory that is
        not a snapshot InvalidInput. Reads files only (works read-only)."""
        self._check_open()
        return verify_snapshot_dir(self.path, path)

    # -- integrity (ops/scrub.py; the checks are engine/integrity.py) ---------------------
    def verify(self, deep: bool = False, *, progress=None):
        """``engine.verify`` (a VerifyReport), with its result recorded for the health
        report (``last_verify()``) and as an event."""
        self._check_open()
        return self.integrity.verify(deep, progress)

    def repair(self, *, progress=None, rows_from_wal: bool = False):
        """``engine.repair`` (a RepairReport), recorded like :meth:`verify`."""
        self._check_open()
        return self.integrity.repair(progress, rows_from_wal)

    def scrub_step(self):
        """One background scrub slice now (what the scrub loop runs each interval)."""
        self._check_open()
        return self.integrity.scrub_step()

    def last_verify(self) -> dict | None:
        """The last verify / scrub / repair result (source, at, ok, problems, ...)."""
        return self.integrity.last

    # -- background loops ---------------------------------------------------------------------
    def _start_loop(self, name, interval, fn, readonly_ok: bool = False):
        if not interval or (self.readonly and not readonly_ok):
            return

        def loop():
            while not self._loop_stop.wait(interval):
                try:
                    fn()
                except Exception:
                    continue
        thread = threading.Thread(target=loop, name=f"simplevector-{name}", daemon=True)
        self._loops.append(thread)
        thread.start()

    def close(self) -> None:
        """Stop the ops loops, then close the engine (which checkpoints and persists)."""
        self._loop_stop.set()
        for thread in self._loops:
            thread.join()
        self._loops = []
        self.engine.close()

    def __enter__(self):
        self.engine.__enter__()
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return repr(self.engine).replace("simplevector.Database", "simplevector.ObservedDatabase")


# The engine's public API, forwarded unchanged (same signatures and docstrings).
# create_namespace and namespace are FreshnessMixin's (they return TextNamespace handles).
_ENGINE_METHODS = ("create_version", "promote", "drop_namespace", "list_namespaces", "changes",
                   "checkpoint", "refresh", "info", "status", "version_statuses",
                   "version_status", "add_observer", "remove_observer", "snapshot", "snapshots",
                   "prune_snapshots", "consumers", "drop_consumer", "wal_retention",
                   "wal_keep_target", "disk_free", "disk_reserve_for", "compact",
                   "compaction_status")
_ENGINE_ATTRIBUTES = ("path", "readonly", "durability", "wal_keep_bytes", "wal_archive",
                      "disk_reserve", "auto_index",
                      "auto_index_threshold", "checkpoint_lsn", "checkpoint_time",
                      "replayed_records", "memory_replayed_records", "counters",
                      "query_stats", "lsn", "writable", "closed", "ops_store", "limits")


def verify_snapshot_dir(db_path: str, path):
    """:meth:`ObservedDatabase.verify_snapshot`: ``path`` as given, or the snapshot of that
    name in ``<db_path>/snapshots``; InvalidInput unless it holds a manifest (so a wrong
    name is the caller's error, not a storage fault), then the engine's verify."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise InvalidInput(f"snapshot path {path!r} is not valid; expected a snapshot "
                           "directory or the name of one in the database's snapshots")
    given = os.fspath(path)
    named = os.path.join(db_path, snapshot_mod.SNAPSHOTS_DIR, given)
    where = given if os.path.isdir(given) or not os.path.isdir(named) else named
    where = os.path.abspath(where)
    if not os.path.isfile(os.path.join(where, snapshot_mod.MANIFEST)):
        raise InvalidInput(f"{where} is not a SimpleVector snapshot (no "
                           f"{snapshot_mod.MANIFEST})",
                           hint="list the snapshots with db.snapshots()")
    manifest = snapshot_mod.verify(where)
    return snapshot_mod.SnapshotInfo(
        path=where, lsn=int(manifest["lsn"]), created_at=manifest["created_at"],
        bytes=sum(int(f["bytes"]) for f in manifest["files"].values()),
        namespaces=tuple(manifest["namespaces"]),
        manifest_path=os.path.join(where, snapshot_mod.MANIFEST))


def _forward_method(name):
    target = getattr(Database, name)

    @functools.wraps(target)
    def method(self, *args, **kwargs):
        return getattr(self.engine, name)(*args, **kwargs)
    return method


def _forward_attribute(name):
    doc = getattr(getattr(Database, name, None), "__doc__", None)
    return property(lambda self: getattr(self.engine, name),
                    doc=doc if isinstance(getattr(Database, name, None), property) else None)


for _name in _ENGINE_METHODS:
    setattr(ObservedDatabase, _name, _forward_method(_name))
for _name in _ENGINE_ATTRIBUTES:
    setattr(ObservedDatabase, _name, _forward_attribute(_name))
del _name
