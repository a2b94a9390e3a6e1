"""Alert rules over the ops metrics, their evaluation, and the recorded state changes.

A rule compares one metric with a threshold: ``AlertRule("slow_queries",
"query_latency_p99", ">", 0.05, window="5m", severity="warning")``. Metrics:

- ``<op>_latency_<stat>``: seconds over ``window`` (op: query, upsert, get, delete;
  stat: p50, p95, p99, p999, mean, max); per namespace when the rule names one, else all
  namespaces merged. ``<op>_errors``, ``<op>_count``: failed / all operations in ``window``.
- ``recall``: the latest probe's recall@k, per live namespace.
- ``tombstone_ratio``, ``index_drift``, ``index_list_imbalance``: per namespace version.
- ``short_results``: short results in ``window`` (lifetime without one), per namespace.
- ``disk_free_ratio``, ``map_used_ratio``, ``wal_bytes``, ``wal_records_since_checkpoint``,
  ``checkpoint_age_seconds``, ``days_until_full``: the database.

``db.alerts()`` evaluates every rule; an instance (rule, namespace, version) that starts or
stops crossing its threshold is recorded as an event ("firing" / "resolved", epoch
seconds) in the ops sub-database under ``event:<ts>:<rule>``; the set of firing instances
is stored too, so a new process does not report the same alert as new. A metric without
data (no queries in the window, no probe yet) never fires.

TOML rule files (``db.load_alert_rules(path)``)::

    [[rule]]
    name = "slow_queries"
    metric = "query_latency_p99"
    op = ">"
    threshold = 0.05
    window = "5m"
    severity = "critical"
"""

from __future__ import annotations

import operator
import threading
import time
from dataclasses import asdict, dataclass, replace

from simplevector.engine.errors import InvalidInput

from .histogram import parse_window

SEVERITIES = ("critical", "warning", "info")
COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
OPS = ("query", "upsert", "get", "delete")
LATENCY_STATS = {"p50": 0.5, "p95": 0.95, "p99": 0.99, "p999": 0.999, "mean": None, "max": None}
FROM_HEALTH = {"recall": "recall", "tombstone_ratio": "tombstone_ratio",
               "index_drift": "index_drift", "index_list_imbalance": "index_balance",
               "disk_free_ratio": "disk_free", "map_used_ratio": "map_used",
               "wal_bytes": "wal_bytes", "wal_records_since_checkpoint":
               "wal_records_since_checkpoint", "checkpoint_age_seconds": "checkpoint_age",
               "days_until_full": "capacity"}
FIRING_KEY = "alerts:firing"
EVENT_PREFIX = "event:"


def _is_metric(metric: str) -> bool:
    if metric in FROM_HEALTH or metric == "short_results":
        return True
    op, _, rest = metric.partition("_")
    if op not in OPS:
        return False
    if rest in ("errors", "count"):
        return True
    kind, _, stat = rest.partition("_")
    return kind == "latency" and stat in LATENCY_STATS


@dataclass(frozen=True)
class AlertRule:
    """``metric op threshold`` over ``window`` (seconds or "5m"; latency, error and short
    result metrics only), optionally for one namespace."""

    name: str
    metric: str
    op: str
    threshold: float
    window: float | None = None
    severity: str = "warning"
    description: str = ""
    namespace: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise InvalidInput(f"alert rule name {self.name!r} is not valid; expected a "
                               "non-empty string")
        if not isinstance(self.metric, str) or not _is_metric(self.metric):
            raise InvalidInput(f"alert metric {self.metric!r} is not known; expected e.g. "
                               "query_latency_p99, recall, tombstone_ratio, disk_free_ratio "
                               "(see ops/alerts.py)")
        if self.op not in COMPARE:
            raise InvalidInput(f"alert op {self.op!r} is not valid; expected one of "
                               f"{', '.join(COMPARE)}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)):
            raise InvalidInput(f"alert threshold {self.threshold!r} is not a number")
        if self.severity not in SEVERITIES:
            raise InvalidInput(f"alert severity {self.severity!r} is not valid; expected one "
                               f"of {', '.join(SEVERITIES)}")
        try:
            object.__setattr__(self, "window", parse_window(self.window))
        except ValueError as e:
            raise InvalidInput(str(e)) from None

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_RULES = (
    AlertRule("query_latency_p99", "query_latency_p99", ">", 0.050, window="5m",
              severity="warning", description="p99 query latency over 5 minutes above 50 ms"),
    AlertRule("recall_low", "recall", "<", 0.90, severity="critical",
              description="measured recall@k below 0.9"),
    AlertRule("index_drift", "index_drift", ">", 3.0, severity="warning",
              description="new rows quantize 3x worse than at training: re-train"),
    AlertRule("tombstones_high", "tombstone_ratio", ">", 0.20, severity="warning",
              description="more than 20% of positions are tombstones: compact"),
    AlertRule("disk_free_low", "disk_free_ratio", "<", 0.10, severity="critical",
              description="less than 10% of the disk is free"),
    AlertRule("wal_lag", "wal_records_since_checkpoint", ">", 100_000, severity="warning",
              description="more than 100k WAL records wait for a checkpoint"),
    AlertRule("short_results", "short_results", ">", 0, window="1h", severity="warning",
              description="queries returned fewer than k hits while more rows matched"),
    AlertRule("capacity", "days_until_full", "<", 7, severity="critical",
              description="disk or memory budget full within 7 days at the current growth"),
)


@dataclass
class Alert:
    """One rule instance as evaluated now."""

    rule: str
    metric: str
    severity: str
    state: str              # "firing", "ok" or "no_data"
    value: object
    threshold: float
    namespace: str | None
    version: int | None
    since: float | None     # when it started firing (epoch seconds)
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def load_rules(path) -> list:
    """AlertRules from a TOML file with ``[[rule]]`` tables."""
    try:
        import tomllib                      # Python 3.11+
    except ImportError:                     # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise InvalidInput(f"cannot read alert rules from {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"alert rules file {path} is not valid TOML: {e}") from e
    tables = doc.get("rule", doc.get("rules", []))
    if not isinstance(tables, list):
        raise InvalidInput(f"alert rules file {path}: expected [[rule]] tables")
    out = []
    for i, table in enumerate(tables):
        try:
            out.append(AlertRule(**table))
        except TypeError as e:
            raise InvalidInput(f"alert rules file {path}, rule {i + 1}: {e}") from None
    return out


def _values(db, rule: AlertRule, report):
    """[(namespace, version, value)] for a rule's metric (value None = no data)."""
    metric = rule.metric
    if metric in FROM_HEALTH:
        out = []
        for f in report.find(FROM_HEALTH[metric]):
            if rule.namespace is None or f.namespace == rule.namespace:
                out.append((f.namespace, f.version, f.value))
        return out
    if metric == "short_results":
        counts = db.short_results(rule.window)
        names = [rule.namespace] if rule.namespace else sorted(
            {i.name for i in db.list_namespaces()} | set(counts))
        return [(ns, None, counts.get(ns, 0)) for ns in names]
    op, _, rest = metric.partition("_")
    h = db.latency_histogram(rule.namespace, op, rule.window)
    if rest == "count":
        value = h.count
    elif rest == "errors":
        value = db.latency_histogram(rule.namespace, op, rule.window, errors=True).count - \
            db.latency_histogram(rule.namespace, op, rule.window, errors=False).count
    else:
        stat = rest.partition("_")[2]
        q = LATENCY_STATS[stat]
        value = h.percentile(q) if q else (h.mean if stat == "mean" else
                                           (h.max if h.count else None))
    return [(rule.namespace, None, value)]


class AlertManager:
    """Rules, the set of firing instances, and the event log of one database."""

    def __init__(self, db):
        self.db = db
        self._lock = threading.Lock()
        self._rules = {r.name: r for r in DEFAULT_RULES}
        self._firing: dict = {}          # instance key -> since
        self._mem_events: list = []      # events not persisted (read-only process)

    def load(self):
        self._firing = dict(self.db.ops_store.get(FIRING_KEY, {}) or {})

    def add(self, rule: AlertRule) -> AlertRule:
        if not isinstance(rule, AlertRule):
            raise InvalidInput(f"{rule!r} is not an AlertRule")
        with self._lock:
            self._rules[rule.name] = rule
        return rule

    def remove(self, name: str) -> None:
        with self._lock:
            if self._rules.pop(name, None) is None:
                raise InvalidInput(f"alert rule {name!r} does not exist; rules: "
                                   f"{', '.join(sorted(self._rules))}")

    def list_rules(self) -> list:
        with self._lock:
            return list(self._rules.values())

    def evaluate(self) -> list:
        db = self.db
        report = db.health()
        now = time.time()
        alerts, events = [], []
        with self._lock:
            rules = list(self._rules.values())
            seen = set()
            for rule in rules:
                for ns, version, value in _values(db, rule, report):
                    key = f"{rule.name}|{ns or ''}|{'' if version is None else version}"
                    seen.add(key)
                    firing = value is not None and COMPARE[rule.op](value, rule.threshold)
                    where = "" if ns is None else f" ({ns}" + (
                        f" v{version})" if version is not None else ")")
                    msg = (f"{rule.metric}{where} = {value!r} {rule.op} {rule.threshold!r}"
                           if firing else f"{rule.metric}{where} = {value!r}")
                    if rule.description:
                        msg += f": {rule.description}"
                    was = key in self._firing
                    if firing and not was:
                        self._firing[key] = now
                        events.append(self._event(now, rule, "firing", ns, version, value, msg))
                    elif not firing and was and value is not None:
                        del self._firing[key]
                        events.append(self._event(now, rule, "resolved", ns, version, value,
                                                  msg))
                    alerts.append(Alert(
                        rule=rule.name, metric=rule.metric, severity=rule.severity,
                        state="firing" if firing else ("no_data" if value is None else "ok"),
                        value=value, threshold=rule.threshold, namespace=ns, version=version,
                        since=self._firing.get(key), message=msg))
            # instances that vanished (a rule removed, a namespace dropped) resolve
            for key in [k for k in self._firing if k not in seen]:
                name, ns, version = key.split("|")
                rule = self._rules.get(name) or replace(DEFAULT_RULES[0], name=name)
                del self._firing[key]
                events.append(self._event(now, rule, "resolved", ns or None,
                                          int(version) if version else None, None,
                                          f"{name}: no longer evaluated"))
            self._save(events)
        return alerts

    @staticmethod
    def _event(ts, rule, state, ns, version, value, msg) -> dict:
        return {"ts": ts, "rule": rule.name, "state": state, "severity": rule.severity,
                "metric": rule.metric, "namespace": ns, "version": version,
                "value": value, "threshold": rule.threshold, "message": msg}

    def _save(self, events):
        db = self.db
        if db.writable:
            try:
                for i, e in enumerate(events):
                    key = (f"{EVENT_PREFIX}{e['ts']:020.6f}:{i:03d}:{e['rule']}:"
                           f"{e['namespace'] or ''}")
                    db.ops_store.put(key, e)
                db.ops_store.put(FIRING_KEY, dict(self._firing))
                return
            except Exception:
                pass
        self._mem_events.extend(events)

    def events(self, since=None) -> list:
        stored = [v for _, v in self.db.ops_store.items(EVENT_PREFIX)]
        with self._lock:
            out = stored + list(self._mem_events)
        out.sort(key=lambda e: e["ts"])
        return [e for e in out if since is None or e["ts"] >= since]
