"""Ops commands for the ``simplevector`` CLI: latency, metrics, health, alerts, events, probe.

:class:`simplevector._cli.Command` commands; :func:`register` adds them to a click group
(the main CLI does so). They share the main CLI's conventions (:mod:`simplevector._cli`):
``--db PATH`` (env SIMPLEVECTOR_DB), ``--json``, one-line ``error: ... (hint: ...)`` and
exit 1 for a library error, the traceback with ``simplevector --debug`` (or
SIMPLEVECTOR_DEBUG=1), and the same way of opening the database. Reading commands open it
read-only, so they work while a server or another writer holds the lock; ``alerts`` and
``probe`` open it as the writer to record events and results, and fall back to read-only
(nothing recorded) when another process holds the lock.

``events`` prints times as ISO-8601 UTC (``2026-12-01T21:31:24Z``); its JSON keeps ``ts``
(epoch seconds) and adds ``time`` (the same instant in ISO-8601 UTC).

Latency recorded by a CLI process dies with it except for the lifetime totals persisted at
checkpoints, so ``latency`` shows those totals (plus this process's, i.e. none); windows
(--window) are only meaningful inside a long-running process such as the server.

``health`` exits 0 / 1 / 2 for ok / warning / critical.
"""

from __future__ import annotations

import datetime
import json
import math

import click

from simplevector._cli import Command, db_option, open_db, output_option
from simplevector._output import dumps, emit, format_table, iso_utc

OPS = ("query", "upsert", "get", "delete")


def _ms(seconds):
    return None if seconds is None else round(seconds * 1e3, 3)


def text_histogram(h, width: int = 40) -> str:
    """One line per power-of-two range of the histogram: range, count and a bar."""
    rows = {}
    for lo, _, n in h.nonzero():
        octave = int(math.floor(math.log2(max(lo, 1e-6) * 1e6) + 1e-9))
        rows[octave] = rows.get(octave, 0) + n
    if not rows:
        return "(no operations recorded)"
    top = max(rows.values())
    lines = []
    for octave in range(min(rows), max(rows) + 1):
        n = rows.get(octave, 0)
        lo, hi = (1 << octave) / 1e3, (1 << (octave + 1)) / 1e3
        bar = "#" * (max(1, round(width * n / top)) if n else 0)
        lines.append(f"{lo:>10.3f} - {hi:<10.3f} ms {n:>8}  {bar}")
    return "\n".join(lines)


@click.command("latency", cls=Command)
@db_option()
@click.option("--namespace", "-n", default=None, help="Only this namespace.")
@click.option("--op", type=click.Choice(OPS), default=None, help="Only this operation.")
@click.option("--window", default=None,
              help="1m, 5m, 1h or seconds (default: lifetime totals).")
@output_option
def latency_cmd(db_path, namespace, op, window, as_json):
    """Latency per namespace and operation (ms) and a text histogram."""
    with open_db(db_path, readonly=True) as db:
        rows = db.latency(namespace=namespace, op=op, window=window)
        if as_json:
            click.echo(dumps([r.to_dict() for r in rows], indent=2))
            return
        if not rows:
            click.echo("no operations recorded")
            return
        table = [{"namespace": r.namespace, "op": r.op, "count": r.count, "errors": r.errors,
                  "p50_ms": _ms(r.p50), "p95_ms": _ms(r.p95), "p99_ms": _ms(r.p99),
                  "p999_ms": _ms(r.p999), "max_ms": _ms(r.max)} for r in rows]
        click.echo(format_table(table, list(table[0])))
        click.echo("")
        click.echo(text_histogram(db.latency_histogram(namespace, op, window)))


@click.command("metrics", cls=Command)
@click.argument("path", required=False, type=click.Path(file_okay=False, dir_okay=True))
@db_option()
def metrics_cmd(path, db_path):
    """Print the Prometheus text exposition of the database at PATH (or --db)."""
    with open_db(path or db_path, readonly=True) as db:
        click.echo(db.metrics_text(), nl=False)


@click.command("health", cls=Command)
@db_option()
@click.option("--all", "show_all", is_flag=True, help="Also list the checks that are ok.")
@output_option
def health_cmd(db_path, show_all, as_json):
    """Health report; exit code 0 ok, 1 warning, 2 critical."""
    with open_db(db_path, readonly=True) as db:
        report = db.health()
    if as_json:
        click.echo(dumps(report.to_dict(), indent=2))
    else:
        click.echo(f"status: {report.status}")
        shown = [f for f in report.findings if show_all or f.severity != "ok"]
        if shown:
            emit([{"severity": f.severity, "check": f.check, "namespace": f.namespace,
                   "value": f.value, "threshold": f.threshold, "message": f.message,
                   "runbook": f.runbook} for f in shown], False,
                 columns=["severity", "check", "namespace", "value", "threshold", "message",
                          "runbook"])
    raise SystemExit({"ok": 0, "warning": 1, "critical": 2}[report.status])


@click.command("alerts", cls=Command)
@db_option()
@click.option("--rules", "rules_path", type=click.Path(dir_okay=False, exists=True),
              default=None, help="A TOML file of extra [[rule]] tables.")
@click.option("--all", "show_all", is_flag=True, help="Also list rules that are not firing.")
@output_option
def alerts_cmd(db_path, rules_path, show_all, as_json):
    """Evaluate the alert rules now and record state changes."""
    with open_db(db_path, must_exist=True, fallback_readonly=True) as db:
        if rules_path:
            db.load_alert_rules(rules_path)
        alerts = db.alerts()
    shown = [a for a in alerts if show_all or a.state == "firing"]
    emit([a.to_dict() for a in shown], as_json,
         columns=["state", "severity", "rule", "namespace", "value", "threshold", "message"],
         empty="no alerts firing")


class _Instant(click.ParamType):
    """Epoch seconds, or ISO-8601 (``2026-12-01T21:31:24Z``; no zone means UTC)."""

    name = "TIME"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return float(value)
        except ValueError:
            pass
        try:
            when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is neither epoch seconds nor ISO-8601 "
                      "(e.g. 2026-12-01T21:31:24Z)", param, ctx)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return when.timestamp()


@click.command("events", cls=Command)
@db_option()
@click.option("--since", type=_Instant(), default=None,
              help="Only events at or after this time: epoch seconds or ISO-8601 UTC.")
@output_option
def events_cmd(db_path, since, as_json):
    """Recorded alert state changes (firing, resolved), oldest first; times in UTC."""
    with open_db(db_path, readonly=True) as db:
        events = db.alert_events(since)
    rows = [{**e, "time": iso_utc(e["ts"])} for e in events]
    emit(rows, as_json,
         columns=["time", "state", "severity", "rule", "namespace", "value", "message"],
         empty="no alert events")


@click.command("probe", cls=Command)
@click.argument("namespace")
@db_option()
@click.option("--samples", type=click.IntRange(min=1), default=200, show_default=True,
              help="Query vectors to probe with.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Recall@k.")
@click.option("--where", "where_json", default=None,
              help='Probe filtered queries: a metadata filter as JSON, e.g. \'{"lang": "en"}\' '
              '(recall against exact search over the matching rows).')
@output_option
def probe_cmd(namespace, db_path, samples, k, where_json, as_json):
    """Measure recall@k of NAMESPACE's live index against exact search."""
    where = None
    if where_json is not None:
        try:
            where = json.loads(where_json)
        except json.JSONDecodeError as e:
            raise click.BadParameter(f"{where_json!r} is not valid JSON: {e}",
                                     param_hint="--where")
    with open_db(db_path, must_exist=True, fallback_readonly=True) as db:
        result = db.probe_recall(namespace, samples=samples, k=k, where=where)
    data = result.to_dict()
    if as_json:
        click.echo(dumps(data, indent=2))
        return
    keys = ["namespace", "version", "index", "recall", "ci_low", "ci_high", "samples", "k",
            "source", "seconds", "worst"]
    if where is not None:
        keys[3:3] = ["where", "matched", "plan"]
    emit({key: data[key] for key in keys}, False)


COMMANDS = (latency_cmd, metrics_cmd, health_cmd, alerts_cmd, events_cmd, probe_cmd)


def register(group: click.Group) -> click.Group:
    """Add the ops commands to ``group`` (the main ``simplevector`` CLI)."""
    for command in COMMANDS:
        group.add_command(command)
    return group
