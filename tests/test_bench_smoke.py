"""Smoke test of bench/engine_speed.py: it runs end to end at tiny sizes, writes every figure
to the JSON and finds flat search exact. No timing assertions (speed lives in bench/,
docs/architecture.md)."""

from __future__ import annotations

import json
import os
import sys

import pytest

try:
    from bench import engine_speed
except ImportError:  # bench/ is not an installed package; it lives at the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import engine_speed

INGEST_RUNS = ("simplevector_sync", "simplevector_async", "lmdb_sync", "lmdb_nosync")
INGEST_RATIOS = ("simplevector_sync_over_lmdb_sync", "simplevector_sync_over_lmdb_nosync",
                 "simplevector_async_over_lmdb_nosync")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "engine_speed.json"
    engine_speed.main(["--n", "2000", "--dim", "16", "--batch", "500", "--queries", "10",
                       "--repeats", "1", "--dir", str(tmp / "dbs"), "--out", str(out),
                       "--quiet"])
    with open(out) as f:
        data = json.load(f)
    return tmp, data


def test_engine_speed_json_has_machine_versions_and_params(result):
    _, data = result
    assert {"cpu_model", "cores", "mem_total_bytes", "bench_dir_fs"} <= set(data["machine"])
    assert {"python", "numpy", "numba", "lmdb", "simplevector"} <= set(data["versions"])
    assert data["params"]["n"] == 2000 and data["params"]["dim"] == 16
    assert data["params"]["batch"] == 500 and data["params"]["queries"] == 10


def test_engine_speed_json_has_every_ingest_figure(result):
    _, data = result
    runs = data["ingest"]["runs"]
    for name in INGEST_RUNS:
        assert runs[name]["vectors_per_s"] > 0
        assert len(runs[name]["samples_vectors_per_s"]) == 1
    for name in INGEST_RATIOS:
        assert data["ingest"]["ratios"][name]["ratio"] > 0
    assert isinstance(data["ingest"]["goal"]["met"], bool)


def test_engine_speed_json_has_every_query_figure(result):
    _, data = result
    query = data["query"]
    for mode in ("single", "batch"):
        for who in ("simplevector", "numpy"):
            assert {"p50_ms", "p95_ms", "qps"} <= set(query[mode][who])
        assert query[mode]["qps_ratio_simplevector_over_numpy"] > 0


def test_engine_speed_flat_query_recall_is_exact(result):
    _, data = result
    recall = data["query"]["recall"]
    assert recall["single"]["recall_at_k"] == 1.0
    assert recall["batch"]["recall_at_k"] == 1.0
    assert recall["recall_at_k"] == 1.0


def test_engine_speed_leaves_no_database_directories(result):
    tmp, _ = result
    assert os.listdir(tmp / "dbs") == []


def test_ivf_ingest_script_runs_on_a_small_slice(tmp_path):
    from bench import ivf_ingest

    X = ivf_ingest.load_glove()[:6000]
    res = ivf_ingest.measure(X, train=3000, batch=500, spec="IVF16,PQ25x8,Refine4",
                             workdir=str(tmp_path))
    assert res["reopened_index"] == "IVF16,PQ25x8,Refine4"
    assert res["simplevector_vectors_per_s"] > 0 and res["reopen_to_first_answer_seconds"] > 0


def test_ivf_ingest_build_all_reports_both_systems(tmp_path):
    from bench import ivf_ingest

    X = ivf_ingest.load_glove()[:4000]
    res = ivf_ingest.measure_build_all(X, "IVF16,PQ25x8,Refine4", str(tmp_path),
                                       polysemous=False)
    assert res["build_all_rows"] == 4000
    assert "faiss_train_add_polysemous_seconds" not in res
    for key in ("simplevector_build_index_all_seconds", "faiss_train_add_seconds"):
        assert res[key] > 0, key
    assert res["ratio_build_all_over_faiss"] == pytest.approx(
        res["simplevector_build_index_all_seconds"] / res["faiss_train_add_seconds"])


def test_first_answer_measures_an_existing_namespace_and_a_filtered_query(tmp_path):
    import numpy as np

    import simplevector as sv
    from bench import first_answer
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3000, 16)).astype(np.float32)
    with sv.open(tmp_path / "db", checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("words", dim=16, metric="cosine", index="IVF16,PQ4")
        ns.upsert(list(range(3000)), X, metadata=[{"rank": i} for i in range(3000)])
        ns.build_index()
    res = first_answer.run(0, 0, 1, str(tmp_path / "db"), namespace="words",
                           where={"rank": {"$lt": 300}})
    row = res["runs"][0]
    assert row["same_hits"] and row["same_filtered_hits"]
    for label in ("numpy first", "kernels first"):
        x = row[label]
        assert len(x["ids"]) == 10 and all(i < 300 for i in x["filtered_ids"])
        assert len(x["filtered_ids"]) == 10 and x["filtered_s"] > 0
        assert {"filter", "search"} <= set(x["filtered_stages_s"])
    assert row["numpy first"]["plan"] == "ivf-numpy"
    assert row["numpy first"]["filtered_plan"] == "exact-numpy"
    # the filtered hits are the exact nearest among the matching rows (cosine)
    q = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    V = X[:300] / np.linalg.norm(X[:300], axis=1, keepdims=True)
    assert row["numpy first"]["filtered_ids"] == np.argsort(-(V @ q), kind="stable")[:10].tolist()


def test_rabitq_bound_reports_recall_and_rows_re_ranked_per_eps(tmp_path):
    from bench import rabitq_bound
    res = rabitq_bound.run("spectral:n=3000,dim=128,queries=50,clusters=50", 16, 4, 4,
                           [1.0, 3.0], cache_dir=str(tmp_path))
    rows = {r["eps0"]: r for r in res["rows"]}
    assert set(rows) == {-1.0, 1.0, 3.0}
    # the reference re-ranks every candidate; a bound never reads more
    assert rows[-1.0]["reranked"] == rows[-1.0]["candidates"] == 40
    assert rows[-1.0]["same_as_all"] == 1.0
    assert rows[1.0]["reranked"] <= rows[3.0]["reranked"] <= 40
    for r in rows.values():
        assert 0.0 <= r["recall"] <= 1.0 and r["us_per_query"] > 0


def test_rows_source_times_mapped_and_heap_rows_at_every_point(tmp_path):
    from bench import rows_source
    res = rows_source.run("spectral:n=3000,dim=64,queries=40", "IVF16,PQ8x8,Refine4",
                          [2, 8], [1, 4], rounds=2, block=10, cache_dir=str(tmp_path))
    assert [(r["nprobe"], r["refine"]) for r in res["rows"]] == [(2, 1), (2, 4), (8, 1), (8, 4)]
    for r in res["rows"]:
        assert r["single_us_map"] > 0 and r["single_us_heap"] > 0
        assert r["batch_qps_map"] > 0 and r["batch_qps_heap"] > 0
        assert r["single_qps_ratio"] == r["single_us_heap"] / r["single_us_map"]
        assert r["batch_qps_ratio"] == r["batch_qps_map"] / r["batch_qps_heap"]
    assert res["machine"]["cpu_model"] and res["spec"] == "IVF16,PQ8x8,Refine4"


def test_filtered_sweep_has_an_unfiltered_row_and_both_plans(tmp_path):
    """bench filtered: a first row without a filter, then one row a selectivity, each with
    our recall against exact over the matching rows and the plan single queries and
    batches took (FAISS is in the dev extra)."""
    import argparse
    from bench import filtered
    args = argparse.Namespace(dim=32, n=3000, nlist=16, m=8, refine=4, spec=None, nprobe=4,
                              selectivity=[1.0, 0.3, 0.01], kind="bucket", queries=40,
                              single=10, peers=[], dir=str(tmp_path), out=None)
    res = filtered.run(args)
    rows = res["rows"]
    assert [r["where"] for r in rows][0] is None and len(rows) == 4
    assert rows[1]["where"] == {"bucket": {"$lt": 10000}} and rows[1]["matched"] == 3000
    for r in rows:
        ours = r["simplevector"]
        assert 0.0 <= ours["recall_batch"] <= 1.0 and ours["single_qps"] > 0
        assert ours["plan"] and ours["plan_single"]
    assert rows[0]["simplevector"]["plan"] == "ivf" and rows[0]["matched"] == 3000
    assert rows[3]["simplevector"]["plan"] == "flat-subset"       # 30 rows: exact
    assert rows[3]["simplevector"]["recall_batch"] == 1.0
    assert "single_vs_unfiltered" not in rows[0]["simplevector"]
    for r in rows[1:]:
        assert r["simplevector"]["single_vs_unfiltered"] > 0
        assert r["simplevector"]["batch_vs_unfiltered"] > 0
