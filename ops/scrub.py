"""Verify, repair and the background scrub, as the ops layer keeps them.

The engine checks (``Database.verify``, ``Database.repair``, ``Database.scrubber``;
simplevector/engine/integrity.py); this module remembers what they found:

* the last result (:data:`LAST_KEY` in the engine's ``ops_store``, and in memory for a
  read-only process): source (``verify``, ``scrub`` or ``repair``), time, ok, the problems
  (the first :data:`KEPT_PROBLEMS`, as dicts) and their count. The health report's
  ``integrity`` finding reads it: critical on any problem, with the result's age.
* one event per verify and repair run, per scrub slice that finds something new, and per
  completed scrub cycle that is this process's first or whose problems differ from the
  cycle before (``alert_events()``, rules ``verify``, ``repair``, ``scrub``).

Scrub (``sv.open(..., scrub_interval=seconds, scrub_rows=4096)``): every interval one
:meth:`~simplevector.engine.scrub.Scrubber.step` checks one bounded slice (``scrub_rows``
positions or id entries of one version, or one version's counts, IVF lists, bundle and a
deep sample: 256 rows re-encoded, 32 queries re-ranked, another sample each cycle). A
problem found stays in the result until a whole cycle passes without it. It is off by
default: each slice reads rows and LMDB pages that compete with queries for the page cache
and the disk, and holds the version's writes off while it compares (milliseconds per
slice), so the interval is the operator's trade-off (a full cycle takes about
``rows / scrub_rows`` slices per version); a CLI process lives for one command anyway.
"""

from __future__ import annotations

import threading
import time

from . import alerts as alerts_mod

LAST_KEY = "integrity:last"
KEPT_PROBLEMS = 50


def _key(p) -> tuple:
    return (p.kind, p.namespace, p.version, repr(p.id), p.key)


class IntegrityTracker:
    """The last verify/scrub/repair result of one ObservedDatabase, its events and the
    scrub's cycle state."""

    def __init__(self, db, scrub_rows: int = 4096):
        self.db = db
        self.scrub_rows = scrub_rows
        self.last: dict | None = None
        self._lock = threading.Lock()
        self._scrubber = None
        self._previous: dict = {}           # problems of the last complete scrub cycle
        self._current: dict = {}            # problems of the cycle under way

    def load(self):
        self.last = self.db.engine.ops_store.get(LAST_KEY, None)

    # -- recording -----------------------------------------------------------------------
    def record(self, source: str, problems: list, *, checked: dict, seconds: float,
               deep: bool = False, complete: bool = True, event: bool = True,
               extra: dict | None = None) -> dict:
        now = time.time()
        result = {"source": source, "at": now, "ok": not problems,
                  "problem_count": len(problems),
                  "problems": [p.to_dict() for p in problems[:KEPT_PROBLEMS]],
                  "checked": dict(checked), "seconds": round(seconds, 6), "deep": deep,
                  "complete": complete, **(extra or {})}
        self.last = result
        engine = self.db.engine
        if engine.writable:
            try:
                engine.ops_store.put(LAST_KEY, result)
                if event:
                    self._event(now, source, problems, result)
            except Exception:           # recording must never fail the check itself
                pass
        return result

    def _event(self, now, source, problems, result):
        first = "; ".join(str(p) for p in problems[:3])
        message = (f"{source}: no problems ({_checked_text(result['checked'])})"
                   if not problems else
                   f"{source}: {len(problems)} problem(s): {first}"
                   + ("; ..." if len(problems) > 3 else ""))
        event = {"ts": now, "rule": source, "state": "ok" if not problems else "problems",
                 "severity": "info" if not problems else "critical",
                 "value": len(problems), "message": message, "metric": None,
                 "namespace": problems[0].namespace if problems else None,
                 "version": problems[0].version if problems else None, "threshold": 0}
        self.db.engine.ops_store.put(
            f"{alerts_mod.EVENT_PREFIX}{now:020.6f}:000:{source}:", event)

    # -- runs --------------------------------------------------------------------------------
    def verify(self, deep: bool = False, progress=None):
        report = self.db.engine.verify(deep, progress=progress)
        self.record("verify", list(report.problems), checked=report.checked,
                    seconds=report.seconds, deep=deep,
                    extra={"omitted": report.omitted, "lsn": report.lsn})
        return report

    def repair(self, progress=None, rows_from_wal: bool = False):
        report = self.db.engine.repair(progress=progress, rows_from_wal=rows_from_wal)
        self.record("repair", list(report.after.problems), checked=report.after.checked,
                    seconds=report.seconds,
                    extra={"damaged": [p.to_dict() for p in report.damaged[:KEPT_PROBLEMS]],
                           "restored_from_wal": len(report.restored_from_wal)})
        return report

    def scrub_step(self):
        """One slice; the recorded result holds the problems of this cycle so far and of
        the last complete one (until a cycle passes without them)."""
        with self._lock:
            if self._scrubber is None:
                self._scrubber = self.db.engine.scrubber(self.scrub_rows)
            report = self._scrubber.step()
            new = [p for p in report.problems if _key(p) not in self._current
                   and _key(p) not in self._previous]
            for p in report.problems:
                self._current[_key(p)] = p
            changed = False
            if report.complete:
                # a cycle is an event when it is this process's first or its problems
                # differ from the last cycle's (not every quiet cycle: they would pile up)
                changed = self._scrubber.cycles == 1 or set(self._current) != set(
                    self._previous)
                self._previous, self._current = self._current, {}
                shown = list(self._previous.values())
            else:
                merged = dict(self._previous)
                merged.update(self._current)
                shown = list(merged.values())
            self.record("scrub", shown, checked=report.checked, seconds=report.seconds,
                        complete=report.complete, event=changed or bool(new),
                        extra={"cycles": self._scrubber.cycles})
        return report


def _checked_text(checked: dict) -> str:
    return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in checked.items() if v)


def finding(last: dict | None, now: float, t):
    """The health report's ``integrity`` finding for the last recorded result (graded by
    the thresholds table row ``integrity``: any problem is critical by default)."""
    from .health import Finding, runbook
    from .thresholds import grade
    anchor = runbook("recover-from-a-corruption-finding")
    if last is None:
        return Finding("integrity", "ok", None, None, 0,
                       "not verified yet (run `simplevector verify`, or open with "
                       "scrub_interval=seconds)", anchor)
    age = now - last["at"]
    n = last["problem_count"]
    source = last["source"] + ("" if last.get("complete", True) else " (cycle under way)")
    sev = grade("integrity", n, t)
    if not n:
        return Finding("integrity", sev, None, 0, t.integrity_warning,
                       f"last {source} {age:.0f}s ago: no problems "
                       f"({_checked_text(last.get('checked', {}))})", anchor)
    first = last["problems"][0]
    ns = first.get("namespace")
    where = f"{ns} v{first.get('version')}" if ns else "database"
    ident = f" id {first['id']!r}" if first.get("id") is not None else ""
    return Finding("integrity", sev, ns, n, t.integrity_warning,
                   f"last {source} {age:.0f}s ago found {n} problem(s), e.g. "
                   f"{first['kind']}: {where}{ident}: {first['detail']}; run `simplevector "
                   "repair`, then restore damaged primary data", anchor,
                   version=first.get("version") if ns else None)
