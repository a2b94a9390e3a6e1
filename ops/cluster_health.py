"""Health and metrics of a cluster (``sv.cluster``), built from each shard's own.

Each shard is an ordinary embedded database with its own ops layer; this module only
aggregates what the shards report:

- :func:`cluster_report`: one :class:`~simplevector.ops.health.HealthReport` holding every
  shard's findings (as :class:`ClusterFinding`, with the shard's index), plus the cluster's
  own checks: ``shard_down`` (critical: a shard did not answer) and ``shard_balance`` (the
  largest shard's rows against the mean; a stable hash of the id keeps shards within a few
  per cent of each other, so a large ratio means the shards hold different data sets,
  e.g. a restore of one shard from an older snapshot).
- :func:`cluster_metrics_text`: the Prometheus text of every shard merged into one
  exposition, each series labelled ``shard="<i>"`` (one HELP/TYPE per family, as the
  format requires), plus ``simplevector_cluster_shard_up`` and
  ``simplevector_cluster_shard_rows``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from .health import SEVERITIES, Finding, HealthReport

__all__ = ["ClusterFinding", "cluster_report", "cluster_metrics_text", "BALANCE_WARNING",
           "BALANCE_MIN_ROWS"]

#: largest shard's rows / mean rows above which ``shard_balance`` warns
BALANCE_WARNING = 1.5
#: below this many rows in the whole cluster the balance is not graded (hashing few ids
#: is uneven by chance)
BALANCE_MIN_ROWS = 1000
#: where the cluster's own findings point (the README section on scaling out)
CLUSTER_DOC = "README.md#scaling-past-one-machine"
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass
class ClusterFinding(Finding):
    """A :class:`Finding` with the index of the shard it was measured on (None: the
    cluster's own check)."""

    shard: int | None = None


def _status(findings) -> str:
    worst = max((_RANK[f.severity] for f in findings), default=0)
    return {0: "ok", 1: "ok", 2: "warning", 3: "critical"}[worst]


def cluster_report(reports: dict, counts: dict, errors: dict) -> HealthReport:
    """``reports``: shard index -> that shard's HealthReport (answered shards);
    ``counts``: shard index -> rows (answered shards); ``errors``: shard index -> why the
    shard did not answer."""
    findings = []
    for i in sorted(reports):
        for f in reports[i].findings:
            fields = dict(f.to_dict())
            fields["message"] = f"shard {i}: {f.message}"
            findings.append(ClusterFinding(**fields, shard=i))
    for i in sorted(errors):
        findings.append(ClusterFinding(
            "shard_down", "critical", None, errors[i], None,
            f"shard {i} did not answer: {errors[i]}", CLUSTER_DOC, shard=i))
    if not errors:
        findings.append(ClusterFinding("shard_down", "ok", None, 0, 0,
                                       f"all {len(reports)} shards answered", CLUSTER_DOC))
    total = sum(counts.values())
    ratio = None
    if counts and total:
        ratio = max(counts.values()) / (total / len(counts))
    graded = ratio is not None and total >= BALANCE_MIN_ROWS and len(counts) > 1
    severity = "warning" if graded and ratio > BALANCE_WARNING else "ok"
    if ratio is None:
        message = "no rows stored"
    elif not graded:
        message = (f"largest shard holds {ratio:.2f}x the mean of {total} rows (not graded "
                   f"below {BALANCE_MIN_ROWS} rows or with one shard)")
    else:
        big = max(counts, key=counts.get)
        message = (f"shard {big} holds {counts[big]} rows, {ratio:.2f}x the mean "
                   f"{total / len(counts):.0f}")
    findings.append(ClusterFinding("shard_balance", severity, None,
                                   None if ratio is None else round(ratio, 4),
                                   BALANCE_WARNING, message, CLUSTER_DOC))
    return HealthReport(status=_status(findings), findings=findings,
                        stats={"shards": {i: reports[i].stats for i in sorted(reports)},
                               "counts": dict(sorted(counts.items())),
                               "down": sorted(errors)},
                        at=time.time())


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?(\s.*)$")
_COMMENT = re.compile(r"^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*)")


def _labelled(line: str, shard: int) -> str:
    m = _SAMPLE.match(line)
    if m is None:
        return line
    name, _, labels, rest = m.groups()
    inner = f'shard="{shard}"' + (f",{labels}" if labels else "")
    return f"{name}{{{inner}}}{rest}"


def cluster_metrics_text(texts: dict, up: dict, counts: dict) -> str:
    """Merge the shards' expositions (``texts``: shard -> text) into one, every sample
    labelled with its shard, plus the cluster's up/rows gauges (``up``: shard -> bool)."""
    families: dict = {}          # name -> {"help": line, "type": line, "samples": [...]}
    order = []
    for shard in sorted(texts):
        current = None
        for line in texts[shard].splitlines():
            if not line.strip():
                continue
            m = _COMMENT.match(line)
            if m:
                kind, name = m.groups()
                if name not in families:
                    families[name] = {"HELP": None, "TYPE": None, "samples": []}
                    order.append(name)
                families[name][kind] = families[name][kind] or line
                current = name
                continue
            if line.startswith("#"):
                continue
            if current is None:             # a sample without a family header
                current = _SAMPLE.match(line).group(1) if _SAMPLE.match(line) else line
                families.setdefault(current, {"HELP": None, "TYPE": None, "samples": []})
                if current not in order:
                    order.append(current)
            families[current]["samples"].append(_labelled(line, shard))
    out = []
    for name in order:
        fam = families[name]
        out += [h for h in (fam["HELP"], fam["TYPE"]) if h]
        out += fam["samples"]
    out.append("# HELP simplevector_cluster_shard_up Whether the shard answered (1) or not (0).")
    out.append("# TYPE simplevector_cluster_shard_up gauge")
    out += [f'simplevector_cluster_shard_up{{shard="{i}"}} {1.0 if up[i] else 0.0}'
            for i in sorted(up)]
    out.append("# HELP simplevector_cluster_shard_rows Rows stored on the shard.")
    out.append("# TYPE simplevector_cluster_shard_rows gauge")
    out += [f'simplevector_cluster_shard_rows{{shard="{i}"}} {float(counts[i])}'
            for i in sorted(counts)]
    return "\n".join(out) + "\n"
