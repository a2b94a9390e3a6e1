"""End-to-end run of the benchmark harness (bench/) on a tiny synthetic set: the JSON holds
every figure, flat systems are exact, the report renders. No timing assertions (speed lives
in bench/, docs/architecture.md)."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

try:
    import bench  # noqa: F401
except ImportError:  # bench/ is not an installed package; it lives at the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import datasets, report, runner  # noqa: E402

try:
    import faiss  # noqa: F401
    HAVE_FAISS = True
except ImportError:
    HAVE_FAISS = False

try:
    import matplotlib  # noqa: F401
    HAVE_MPL = True
except ImportError:
    HAVE_MPL = False

SPEC = "synthetic:n=2000,dim=16,clusters=10,queries=50,seed=3"
SYSTEMS = ["simplevector-flat"] + (["faiss-flat"] if HAVE_FAISS else [])
SYSTEM_KEYS = {"system", "status", "kind", "durability", "config", "build", "size_bytes",
               "sweep", "default_params", "peak_rss_bytes", "rss_data_bytes", "reopen"}
POINT_KEYS = {"params", "recall", "recall_batch", "single", "batch"}
SINGLE_KEYS = {"queries", "qps", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "max_ms"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    path = runner.run([SPEC], SYSTEMS, name="test", out_dir=str(tmp / "results"),
                      workdir=str(tmp), cache_dir=str(tmp / "cache"), batch_repeats=1,
                      argv=["test"])
    with open(path) as f:
        return tmp, path, json.load(f)


def test_run_json_has_machine_versions_params_and_every_figure(run):
    _, path, doc = run
    assert os.path.basename(path).endswith("-test.json")
    assert {"schema", "name", "created", "command", "machine", "versions", "params",
            "datasets", "elapsed_s"} <= set(doc)
    assert {"cpu_model", "cores", "mem_total_bytes"} <= set(doc["machine"])
    assert {"python", "numpy", "numba", "simplevector"} <= set(doc["versions"])
    assert doc["params"]["systems"] == SYSTEMS and doc["params"]["k"] == 10
    (ds,) = doc["datasets"]
    assert ds["dataset"]["n"] == 2000 and ds["dataset"]["dim"] == 16
    assert ds["dataset"]["queries"] == 50
    assert [s["system"] for s in ds["systems"]] == SYSTEMS
    for s in ds["systems"]:
        assert s["status"] == "ok", s.get("traceback") or s.get("message")
        assert SYSTEM_KEYS <= set(s)
        assert {"seconds", "vectors_per_s", "persist_s"} <= set(s["build"])
        assert s["size_bytes"] > 0 and s["peak_rss_bytes"] > 0
        assert {"open_s", "first_answer_s", "recall"} <= set(s["reopen"])
        for p in s["sweep"]:
            assert POINT_KEYS <= set(p)
            assert SINGLE_KEYS <= set(p["single"])
            assert {"qps", "seconds", "queries"} <= set(p["batch"])


def test_flat_systems_have_recall_one_single_batch_and_after_reopen(run):
    _, _, doc = run
    for s in doc["datasets"][0]["systems"]:
        for p in s["sweep"]:
            assert p["recall"] == 1.0 and p["recall_batch"] == 1.0, s["system"]
        assert s["reopen"]["recall"] == 1.0, s["system"]


@pytest.mark.skipif(not HAVE_FAISS, reason="faiss is not installed")
def test_run_json_has_ratios_against_each_peer(run):
    _, _, doc = run
    (r,) = doc["datasets"][0]["ratios"]
    assert r["system"] == "simplevector-flat" and r["peer"] == "faiss-flat"
    assert {"ingest_x", "qps_x", "batch_qps_x", "p99_x", "size_x", "rss_x", "reopen_x"} <= set(r)


def test_report_writes_markdown_table_and_png(run):
    tmp, path, _ = run
    out = tmp / "report"
    ((text, md, pngs),) = report.report([path], str(out))
    assert os.path.exists(md) and open(md).read() == text
    assert "| system | kind | recall@10 |" in text
    for name in SYSTEMS:
        assert f"| {name} |" in text
    if HAVE_MPL:
        assert pngs and all(p.endswith(".png") and os.path.getsize(p) > 0 for p in pngs)
        assert any(p.endswith("-pareto.png") for p in pngs)
    else:
        assert pngs == []


def test_tie_aware_recall_counts_an_equally_distant_id():
    base = np.array([[0, 0], [1, 0], [0, 1], [5, 5]], np.float32)
    q = np.array([[0, 0]], np.float32)
    gt_dist = datasets.true_distances("l2", base, q, np.array([[0, 1]]))
    # id 2 is as far as id 1 (the k-th): it counts; a duplicate and a -1 do not
    assert runner.recall_at_k("l2", base, q, gt_dist, np.array([[0, 2]]), 2) == 1.0
    assert runner.recall_at_k("l2", base, q, gt_dist, np.array([[0, 3]]), 2) == 0.5
    assert runner.recall_at_k("l2", base, q, gt_dist, np.array([[0, 0]]), 2) == 0.5
    assert runner.recall_at_k("l2", base, q, gt_dist, np.array([[0, -1]]), 2) == 0.5


def test_ground_truth_is_cached_by_dataset_parameters(tmp_path):
    a = datasets.load("synthetic:n=500,dim=8,clusters=4,queries=5", cache_dir=str(tmp_path))
    ids, dist = a.gt(5)
    assert a.gt_cached is False and ids.shape == (5, 5)
    b = datasets.load("synthetic:n=500,dim=8,clusters=4,queries=5", cache_dir=str(tmp_path))
    ids_b, _ = b.gt(5)
    assert b.gt_cached is True and np.array_equal(ids, ids_b)
    c = datasets.load("synthetic:n=500,dim=8,clusters=4,queries=5,seed=1",
                      cache_dir=str(tmp_path))
    c.gt(5)
    assert c.gt_cached is False


def test_npy_dataset_holds_queries_out_of_the_base(tmp_path):
    X = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    ds = datasets.load(f"npy:{tmp_path / 'x.npy'},metric=l2,queries=20", cache_dir=str(tmp_path))
    assert ds.n == 280 and ds.nq == 20 and ds.metric == "l2"
    base_rows = {r.tobytes() for r in ds.base}
    assert not any(q.tobytes() in base_rows for q in ds.queries)
