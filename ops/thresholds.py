"""One table of thresholds and severities, read by the health report and the alert rules.

Each :class:`Threshold` row names a metric, the :class:`HealthThresholds` fields that hold
its warning and critical levels (critical None: the metric is only ever a warning), which
side is bad, the default alert rule that watches it and the runbook section. The health
report grades a finding with :func:`grade`; :func:`simplevector.ops.alerts.default_rules`
builds one alert rule per row from the same levels, firing at ``warning`` past the warning
level and at ``critical`` past the critical one. So a value is graded the same way in both,
and ``sv.open(..., thresholds=HealthThresholds(recall_warning=0.95))`` moves both.

docs/runbook.md holds :func:`markdown_table` of the defaults; a test keeps it current.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class HealthThresholds:
    """Where a check turns warning / critical. Ratios are fractions, times seconds.

    The rows of :data:`TABLE` say which field is which metric's warning or critical level;
    the alert rules derive from the same fields, so an override applies to both.
    """

    tombstone_warning: float = 0.20
    tombstone_critical: float = 0.50
    # IVF imbalance factor: nlist * sum(size^2) / rows^2, the scan cost over balanced lists
    # (engine/ivf.py imbalance_factor; it was largest list / mean list, 5.0, until 2026-12)
    imbalance_warning: float = 2.0
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
    #: no longer graded: the LMDB map grows by itself, so a full map is not a problem;
    #: ``map_growth_*`` below watches what can fail. Kept so existing callers still work.
    map_used_warning: float = 0.90
    disk_free_warning: float = 0.10
    disk_free_critical: float = 0.05
    # free disk / the bytes the map can still claim up to the end of its next growth step
    # (the unused map plus one step, engine/store.py next_map_size): below 1 that growth
    # cannot be backed by the disk, below 2 there is room for it and little more.
    map_growth_warning: float = 2.0
    map_growth_critical: float = 1.0
    days_full_warning: float = 30.0
    days_full_critical: float = 7.0
    p99_query_warning: float = 0.050
    latency_window: float = 300.0
    short_results_warning: int = 0          # short results within the window
    short_results_window: float = 3600.0
    # committed records a named change-feed consumer has not acknowledged: it holds the WAL
    # (never skipped), so past these it is reported; the warning matches wal_records_warning
    consumer_lag_warning: int = 100_000
    consumer_lag_critical: int = 1_000_000
    # the WAL archive copy is failing (1) or not (0): any failure is critical, since the
    # segments it blocks stay on disk and point-in-time restore cannot reach past them
    wal_archive_warning: int = 0
    wal_archive_critical: int = 0
    # freshness (ops/freshness.py): rows counted, any is a warning
    stale_model_warning: int = 0            # rows embedded by another model than the live one
    source_drift_warning: int = 0           # rows whose source changed after embedding
    freshness_max_age: float = 30 * 86400.0  # seconds after which a row counts as old
    stale_age_warning: float = 0.25         # share of rows older than freshness_max_age
    backlog_eta_warning: float = 3600.0     # seconds to embed the backlog at the measured rate
    # costs (ops/costs.py)
    budget_warning: float = 0.8             # share of a budget used in its period
    budget_critical: float = 1.0
    cost_spike_warning: float = 3.0         # tokens this hour / mean hour of the last 24
    cost_spike_floor_tokens: int = 50_000   # the mean hour is at least this many tokens
    # problems the last verify / scrub / repair found (ops/scrub.py): any is critical, since
    # each is damaged data or derived state that disagrees with it
    integrity_warning: int = 0
    integrity_critical: int = 0


@dataclass(frozen=True)
class Threshold:
    """One row: ``metric`` (alert metric) graded into finding ``check``.

    warning / critical: names of HealthThresholds fields. direction: "above" or "below",
    the bad side of the level (strictly past it). window: a HealthThresholds field with
    the seconds the metric is measured over (None: a current value).
    """

    metric: str
    check: str
    direction: str
    warning: str
    critical: str | None
    alert: str
    runbook: str
    meaning: str
    window: str | None = None

    @property
    def op(self) -> str:
        return ">" if self.direction == "above" else "<"

    def levels(self, t: HealthThresholds) -> tuple:
        """(warning, critical) levels of this row in ``t`` (critical None: none)."""
        return getattr(t, self.warning), (None if self.critical is None
                                          else getattr(t, self.critical))


TABLE = (
    Threshold("recall", "recall", "below", "recall_warning", "recall_critical",
              "recall_low", "recall-probes", "measured recall@k (latest probe)"),
    Threshold("index_drift", "index_drift", "above", "drift_warning", "drift_critical",
              "index_drift", "drift-and-re-training",
              "quantization error of new rows / at training"),
    Threshold("index_list_imbalance", "index_balance", "above", "imbalance_warning", None,
              "index_imbalance", "drift-and-re-training",
              "IVF imbalance factor (scan cost over balanced lists)"),
    Threshold("index_empty_lists", "index_empty_lists", "above", "empty_lists_warning", None,
              "index_empty_lists", "drift-and-re-training", "share of IVF lists empty"),
    Threshold("tombstone_ratio", "tombstone_ratio", "above", "tombstone_warning",
              "tombstone_critical", "tombstones_high", "tombstones-and-compaction",
              "tombstones / positions"),
    Threshold("short_results", "short_results", "above", "short_results_warning", None,
              "short_results", "short-results-and-filters",
              "queries with fewer than k hits while more rows matched",
              window="short_results_window"),
    Threshold("query_latency_p99", "query_latency_p99", "above", "p99_query_warning", None,
              "query_latency_p99", "latency", "p99 query latency, seconds",
              window="latency_window"),
    Threshold("wal_bytes", "wal_bytes", "above", "wal_bytes_warning", None, "wal_bytes",
              "wal-and-checkpoints", "WAL size, bytes"),
    Threshold("wal_records_since_checkpoint", "wal_records_since_checkpoint", "above",
              "wal_records_warning", None, "wal_lag", "wal-and-checkpoints",
              "WAL records not checkpointed"),
    Threshold("checkpoint_age_seconds", "checkpoint_age", "above", "checkpoint_age_warning",
              None, "checkpoint_stale", "wal-and-checkpoints",
              "seconds since the last checkpoint while records wait (else 0)"),
    Threshold("consumer_lag_records", "consumer_lag", "above", "consumer_lag_warning",
              "consumer_lag_critical", "consumer_lag", "wal-and-checkpoints",
              "records the most lagging named change-feed consumer has not acknowledged"),
    Threshold("wal_archive_failing", "wal_archive", "above", "wal_archive_warning",
              "wal_archive_critical", "wal_archive_failing", "point-in-time-restore",
              "1 while copying sealed WAL segments to the archive fails, else 0"),
    Threshold("disk_free_ratio", "disk_free", "below", "disk_free_warning",
              "disk_free_critical", "disk_free_low", "disk-full", "free / total disk"),
    Threshold("map_growth_headroom", "map_growth", "below", "map_growth_warning",
              "map_growth_critical", "map_growth_disk", "scaling-and-capacity",
              "free disk / (unused map + next map growth step)"),
    Threshold("days_until_full", "capacity", "below", "days_full_warning",
              "days_full_critical", "capacity", "scaling-and-capacity",
              "days until disk or memory budget is full"),
    Threshold("stale_model_rows", "stale_model", "above", "stale_model_warning", None,
              "stale_model", "model-updates",
              "rows embedded by a model other than the live version's"),
    Threshold("source_changed_rows", "source_drift", "above", "source_drift_warning", None,
              "source_drift", "source-drift",
              "rows whose source changed after they were embedded (incl. pending)"),
    Threshold("stale_age_ratio", "stale_age", "above", "stale_age_warning", None,
              "rows_too_old", "source-drift",
              "share of rows embedded longer than freshness_max_age ago"),
    Threshold("backlog_eta_seconds", "freshness_backlog", "above", "backlog_eta_warning", None,
              "backlog_slow", "source-drift",
              "seconds to embed the freshness backlog at the measured embedding rate"),
    Threshold("budget_used_ratio", "budget", "above", "budget_warning", "budget_critical",
              "budget_high", "cost-spike", "largest share of a budget used in its period"),
    Threshold("integrity_problems", "integrity", "above", "integrity_warning",
              "integrity_critical", "integrity_problems", "recover-from-a-corruption-finding",
              "problems the last verify, scrub or repair found (any is critical)"),
    Threshold("cost_spike_ratio", "cost_spike", "above", "cost_spike_warning", None,
              "cost_spike", "cost-spike",
              "embedding tokens this hour / mean hour of the previous 24"),
)

BY_CHECK = {row.check: row for row in TABLE}
BY_METRIC = {row.metric: row for row in TABLE}


def grade(check: str, value, t: HealthThresholds) -> str:
    """"ok", "warning" or "critical" for ``value`` of the table row ``check`` in ``t``
    (None, not measured, is "ok")."""
    row = BY_CHECK[check]
    if value is None:
        return "ok"
    warning, critical = row.levels(t)
    worse = (lambda v, x: v > x) if row.direction == "above" else (lambda v, x: v < x)
    if critical is not None and worse(value, critical):
        return "critical"
    if worse(value, warning):
        return "warning"
    return "ok"


def fmt_level(x) -> str:
    """A level as the docs and alert descriptions print it."""
    if x is None:
        return "-"
    if isinstance(x, int) and x >= 1 << 20 and x % (1 << 20) == 0:
        return f"{x >> 30} GiB" if x % (1 << 30) == 0 else f"{x >> 20} MiB"
    if isinstance(x, int) and x >= 10_000:
        return f"{x:_}".replace("_", " ")
    return f"{x:g}"


def markdown_table(t: HealthThresholds | None = None) -> str:
    """The table as Markdown (docs/runbook.md embeds it for the defaults)."""
    t = t or HealthThresholds()
    out = ["| metric (finding) | meaning | bad when | warning | critical | alert rule |",
           "|---|---|---|---|---|---|"]
    for row in TABLE:
        warning, critical = row.levels(t)
        check = "" if row.check == row.metric else f" (`{row.check}`)"
        window = "" if row.window is None else f", over {fmt_level(getattr(t, row.window))} s"
        out.append(f"| `{row.metric}`{check} | {row.meaning}{window} | {row.op} | "
                   f"{fmt_level(warning)} | {fmt_level(critical)} | `{row.alert}` |")
    return "\n".join(out) + "\n"


def _check_table():
    names = {f.name for f in fields(HealthThresholds)}
    for row in TABLE:
        for name in (row.warning, row.critical, row.window):
            if name is not None and name not in names:  # pragma: no cover - a typo in TABLE
                raise AttributeError(f"thresholds table row {row.metric}: no field {name}")


_check_table()
