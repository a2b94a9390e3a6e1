"""Alert rules over the ops metrics, their evaluation, and the recorded state changes.

A rule compares one metric with a threshold: ``AlertRule("slow_queries",
"query_latency_p99", ">", 0.05, window="5m", severity="warning")``; with ``critical=``
a second level on the same side, past which a firing instance is ``critical`` (a change of
severity while firing is recorded as an event too). Metrics:

- ``<op>_latency_<stat>``: seconds over ``window`` (op: query, upsert, get, delete;
  stat: p50, p95, p99, p999, mean, max); per namespace when the rule names one, else all
  namespaces merged. ``<op>_errors``, ``<op>_count``: failed / all operations in ``window``.
- ``recall``: the latest probe's recall@k, per live namespace.
- ``tombstone_ratio``, ``index_drift``, ``index_list_imbalance`` (the IVF imbalance factor,
  engine/ivf.py ``imbalance_factor``), ``index_empty_lists``: per namespace version.
- ``short_results``: short results in ``window`` (lifetime without one), per namespace.
- ``disk_free_ratio``, ``map_growth_headroom`` (free disk / what the LMDB map can still
  claim through its next growth), ``map_used_ratio`` (informational: the map grows by
  itself), ``wal_bytes``, ``wal_records_since_checkpoint``, ``checkpoint_age_seconds``
  (0 while no record waits), ``days_until_full``: the database.

The default rules are one per row of ops/thresholds.py, built from the database's
``HealthThresholds`` (:func:`default_rules`): they fire at the severity the health report
gives the same value.

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
    critical = 0.2          # optional: above this the firing instance is critical
"""

from __future__ import annotations

import operator
import threading
import time
from dataclasses import asdict, dataclass, replace

from simplevector.engine.errors import InvalidInput

from .histogram import parse_window
from .thresholds import TABLE, HealthThresholds, fmt_level

SEVERITIES = ("critical", "warning", "info")
COMPARE = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
OPS = ("query", "upsert", "get", "delete")
LATENCY_STATS = {"p50": 0.5, "p95": 0.95, "p99": 0.99, "p999": 0.999, "mean": None, "max": None}
#: metrics read from a health finding (metric -> check); latency and short results are
#: measured over the rule's own window instead
FROM_HEALTH = {row.metric: row.check for row in TABLE
               if row.metric not in ("query_latency_p99", "short_results")}
FROM_HEALTH["map_used_ratio"] = "map_used"
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
    critical: float | None = None

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
        if self.critical is not None:
            if isinstance(self.critical, bool) or not isinstance(self.critical, (int, float)):
                raise InvalidInput(f"alert critical level {self.critical!r} is not a number")
            if COMPARE[self.op](self.threshold, self.critical):
                raise InvalidInput(
                    f"alert critical level {self.critical!r} is not past the threshold "
                    f"{self.threshold!r} on the {self.op} side; expected a worse value")
        try:
            object.__setattr__(self, "window", parse_window(self.window))
        except ValueError as e:
            raise InvalidInput(str(e)) from None

    def to_dict(self) -> dict:
        return asdict(self)

    def severity_of(self, value) -> str:
        """The severity of a firing instance at ``value``."""
        if self.critical is not None and COMPARE[self.op](value, self.critical):
            return "critical"
        return self.severity


def default_rules(t: HealthThresholds | None = None) -> tuple:
    """One AlertRule per row of the thresholds table, at the levels of ``t``."""
    t = t or HealthThresholds()
    out = []
    for row in TABLE:
        warning, critical = row.levels(t)
        window = None if row.window is None else getattr(t, row.window)
        levels = f"{row.op} {fmt_level(warning)}"
        if critical is not None:
            levels += f" (critical {row.op} {fmt_level(critical)})"
        out.append(AlertRule(row.alert, row.metric, row.op, warning, window=window,
                             severity="warning", critical=critical,
                             description=f"{row.meaning} {levels}; runbook: {row.runbook}"))
    return tuple(out)


DEFAULT_RULES = default_rules()


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
    """Rules, the set of firing instances, and the event log of one database.

    The default rules follow ``db.thresholds`` (also when it is changed after open) until
    a rule of the same name is added or removed."""

    def __init__(self, db):
        self.db = db
        self._lock = threading.Lock()
        self._rules: dict = {}
        self._defaults: set = set()      # names still built from the thresholds table
        self._built_from = None          # copy of the thresholds the defaults came from
        self._firing: dict = {}          # instance key -> since
        self._severity: dict = {}        # instance key -> severity it fires at (this process)
        self._mem_events: list = []      # events not persisted (read-only process)
        self._sync_defaults(initial=True)

    def _sync_defaults(self, initial: bool = False):
        t = getattr(self.db, "thresholds", None) or HealthThresholds()
        if t == self._built_from:
            return
        for rule in default_rules(t):
            if initial or rule.name in self._defaults:
                self._rules[rule.name] = rule
                self._defaults.add(rule.name)
        self._built_from = replace(t)

    def load(self):
        self._firing = dict(self.db.ops_store.get(FIRING_KEY, {}) or {})

    def add(self, rule: AlertRule) -> AlertRule:
        if not isinstance(rule, AlertRule):
            raise InvalidInput(f"{rule!r} is not an AlertRule")
        with self._lock:
            self._rules[rule.name] = rule
            self._defaults.discard(rule.name)
        return rule

    def remove(self, name: str) -> None:
        with self._lock:
            self._defaults.discard(name)
            if self._rules.pop(name, None) is None:
                raise InvalidInput(f"alert rule {name!r} does not exist; rules: "
                                   f"{', '.join(sorted(self._rules))}")

    def list_rules(self) -> list:
        with self._lock:
            self._sync_defaults()
            return list(self._rules.values())

    def evaluate(self) -> list:
        db = self.db
        report = db.health()
        now = time.time()
        alerts, events = [], []
        with self._lock:
            self._sync_defaults()
            rules = list(self._rules.values())
            seen = set()
            for rule in rules:
                for ns, version, value in _values(db, rule, report):
                    key = f"{rule.name}|{ns or ''}|{'' if version is None else version}"
                    seen.add(key)
                    firing = value is not None and COMPARE[rule.op](value, rule.threshold)
                    severity = rule.severity_of(value) if firing else rule.severity
                    where = "" if ns is None else f" ({ns}" + (
                        f" v{version})" if version is not None else ")")
                    if not firing:
                        msg = f"{rule.metric}{where} = {value!r}"
                    elif severity != rule.severity:
                        msg = (f"{rule.metric}{where} = {value!r} {rule.op} "
                               f"{rule.critical!r} (critical)")
                    else:
                        msg = f"{rule.metric}{where} = {value!r} {rule.op} {rule.threshold!r}"
                    if rule.description:
                        msg += f": {rule.description}"
                    was = key in self._firing
                    if firing and not was:
                        self._firing[key] = now
                        events.append(self._event(now, rule, "firing", ns, version, value, msg,
                                                  severity))
                    elif firing and self._severity.get(key, severity) != severity:
                        change = ("escalated" if SEVERITIES.index(severity)
                                  < SEVERITIES.index(self._severity[key]) else "de-escalated")
                        events.append(self._event(now, rule, change, ns, version, value, msg,
                                                  severity))
                    elif not firing and was and value is not None:
                        del self._firing[key]
                        events.append(self._event(now, rule, "resolved", ns, version, value,
                                                  msg, self._severity.get(key, severity)))
                    if firing:
                        self._severity[key] = severity
                    else:
                        self._severity.pop(key, None)
                    alerts.append(Alert(
                        rule=rule.name, metric=rule.metric, severity=severity,
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
                                          f"{name}: no longer evaluated",
                                          self._severity.pop(key, rule.severity)))
            self._save(events)
        return alerts

    @staticmethod
    def _event(ts, rule, state, ns, version, value, msg, severity) -> dict:
        return {"ts": ts, "rule": rule.name, "state": state, "severity": severity,
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
