"""ops/cluster_health.py on real shard reports (embedded databases standing in for the
shards' own ops layers; no Ray needed): findings carry their shard, the cluster's own
checks grade a down shard and an unbalanced cluster, and the merged Prometheus text labels
every series with its shard under one HELP/TYPE per family."""

from __future__ import annotations

import numpy as np
import pytest

import simplevector as sv
from simplevector.ops.cluster_health import (BALANCE_MIN_ROWS, BALANCE_WARNING,
                                             ClusterFinding, cluster_metrics_text,
                                             cluster_report)


@pytest.fixture
def shard_dbs(tmp_path):
    dbs = [sv.open(tmp_path / f"shard-{i}", checkpoint_interval=0) for i in range(2)]
    for i, db in enumerate(dbs):
        ns = db.create_namespace("docs", dim=2, metric="l2")
        ns.upsert(list(range(10 * (i + 1))), np.ones((10 * (i + 1), 2), np.float32))
        ns.query(np.ones(2, np.float32), k=1)
    yield dbs
    for db in dbs:
        db.close()


def test_every_shard_finding_is_kept_with_its_shard(shard_dbs):
    reports = {i: db.health() for i, db in enumerate(shard_dbs)}
    report = cluster_report(reports, {0: 600, 1: 600}, {})
    per_shard = [f for f in report.findings if f.shard is not None]
    assert len(per_shard) == sum(len(r.findings) for r in reports.values())
    assert all(isinstance(f, ClusterFinding) and f.message.startswith(f"shard {f.shard}: ")
               for f in per_shard)
    assert report.find("shard_down")[0].severity == "ok"
    assert report.find("shard_balance")[0].value == 1.0
    assert report.to_dict()["findings"][0]["shard"] == 0


def test_a_down_shard_is_critical_and_names_the_shard(shard_dbs):
    report = cluster_report({0: shard_dbs[0].health()}, {0: 10}, {1: "ActorDiedError: gone"})
    down = report.find("shard_down")
    assert report.status == "critical"
    assert [(f.severity, f.shard) for f in down] == [("critical", 1)]
    assert "shard 1" in down[0].message and "ActorDiedError" in down[0].message


def test_shards_out_of_balance_warn_only_past_the_threshold_and_the_minimum_rows():
    big = BALANCE_MIN_ROWS * 3
    unbalanced = cluster_report({}, {0: big, 1: big // 10}, {})
    f = unbalanced.find("shard_balance")[0]
    assert f.severity == "warning" and f.value > BALANCE_WARNING and "shard 0" in f.message
    assert unbalanced.status == "warning"
    balanced = cluster_report({}, {0: big, 1: big + 10}, {})
    assert balanced.find("shard_balance")[0].severity == "ok"
    small = cluster_report({}, {0: 50, 1: 1}, {})           # too few rows to grade
    assert small.find("shard_balance")[0].severity == "ok"
    assert "not graded" in small.find("shard_balance")[0].message


def test_merged_metrics_label_every_sample_once_per_family(shard_dbs):
    texts = {i: db.metrics_text() for i, db in enumerate(shard_dbs)}
    merged = cluster_metrics_text(texts, {0: True, 1: True, 2: False}, {0: 10, 1: 20})
    lines = merged.splitlines()
    helps = [line for line in lines if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps))
    shard_helps = dict.fromkeys(line for t in texts.values() for line in t.splitlines()
                                if line.startswith("# HELP "))
    assert helps[:-2] == list(shard_helps)          # then the cluster's two gauges
    samples = [line for line in lines if line and not line.startswith("#")]
    one = [line for line in texts[0].splitlines() if line and not line.startswith("#")]
    assert len([s for s in samples if 'shard="0"' in s and "cluster_shard" not in s]) == len(one)
    for s in samples:
        assert s.split("{", 1)[1].startswith('shard="'), s
    # a family's samples follow its own TYPE line, for every shard
    name = "simplevector_operations_total"
    at = lines.index(f"# TYPE {name} counter")
    block = []
    for line in lines[at + 1:]:
        if line.startswith("#"):
            break
        block.append(line)
    assert {line.split('"')[1] for line in block} == {"0", "1"}
    assert 'simplevector_cluster_shard_up{shard="2"} 0.0' in lines
    assert 'simplevector_cluster_shard_rows{shard="1"} 20.0' in lines
