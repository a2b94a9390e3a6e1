"""Run every system on the same data, queries and ground truth, one system at a time.

Each system runs in its own child process (multiprocessing "spawn"), so its peak RSS is its
own, a crash or a hang (``timeout``) costs only its row, and its imports do not slow the
others. A second fresh child measures the cold reopen: open the stored index, answer one
query. HARNESS.md explains every figure.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone

import numpy as np

from . import datasets as dsets
from . import env
from .systems import REGISTRY, Unavailable, load_class

SCHEMA = 1
WARMUP_QUERIES = 10
REOPEN_RECALL_QUERIES = 100
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- figures
def recall_at_k(metric, base, queries, gt_dist, ids, k) -> float:
    """Tie-aware recall@k: a returned id counts when its exact distance is within the k-th
    exact distance (+1e-5, relative above 1); each id counts once; -1 (missing) never counts."""
    ids = np.asarray(ids, np.int64)[:, :k]
    kth = gt_dist[:, k - 1]
    d = dsets.true_distances(metric, base, queries, ids)
    ok = (d <= (kth + 1e-5 * np.maximum(1.0, np.abs(kth)))[:, None]) & (ids >= 0)
    srt = np.sort(np.where(ids >= 0, ids, -1 - np.arange(ids.shape[1])), axis=1)
    dup_rows = (srt[:, 1:] == srt[:, :-1]).sum(axis=1)      # duplicates never count twice
    hits = np.maximum(ok.sum(axis=1) - dup_rows, 0)
    return float(hits.sum() / (len(ids) * k))


def latency_stats(seconds: np.ndarray) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"queries": int(len(ms)), "qps": float(len(ms) / (ms.sum() / 1e3)),
            "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max())}


# ------------------------------------------------------------------------- child: measure
def _load_stage(stage: str, mmap: bool = False) -> dict:
    mode = "r" if mmap else None
    return {name: np.load(os.path.join(stage, f"{name}.npy"), mmap_mode=mode)
            for name in ("train", "base", "queries", "gt_ids", "gt_dist")}


def _measure(job: dict) -> dict:
    name, k = job["system"], job["k"]
    out = {"system": name, "status": "ok", "message": None}
    data = _load_stage(job["stage"])
    base, Q, gt_dist = data["base"], data["queries"], data["gt_dist"]
    n, dim = base.shape
    out["rss_data_bytes"] = env.rss_bytes()
    cls = load_class(name)
    out.update(kind=cls.kind, durability=cls.durability, package=cls.package)
    if cls.max_n is not None and n > cls.max_n:
        raise Unavailable(f"{name} runs on at most {cls.max_n} rows here (dataset has {n}); "
                          "see its adapter docstring")
    system = cls(job["metric"], dim, n, job["workdir"], **job.get("config", {}))
    out["config"] = system.config
    log(f"{name}: build {n} x {dim} ...")
    t0 = time.perf_counter()
    info = system.build(data["train"], base) or {}
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    system.persist()
    persist_s = time.perf_counter() - t1
    out["build"] = {"seconds": build_s, "vectors_per_s": n / build_s if build_s > 0 else None,
                    "persist_s": persist_s, **info}
    if "ingest_s" in info and info["ingest_s"]:
        out["build"]["ingest_vectors_per_s"] = n / info["ingest_s"]
    out["size_bytes"] = system.size_bytes()
    out["config"] = system.config
    log(f"{name}: built in {build_s:.1f} s ({n / build_s:,.0f} vectors/s), "
        f"{out['size_bytes'] / 2**20:.1f} MiB on disk")

    nq_single = min(len(Q), job.get("single_queries") or len(Q))
    sweep = []
    grid = system.sweep()
    for i, params in enumerate(grid):
        try:
            system.set_search_params(**params)
        except Exception as e:
            log(f"{name}: params {params} not settable: {e}")
            continue
        for q in Q[:WARMUP_QUERIES]:
            system.query_one(q, k)
        if i == 0:      # first call of the batch path: compile / load caches / wake threads
            system.query_batch(np.ascontiguousarray(Q[:WARMUP_QUERIES]), k)
        system.settle()
        lat = np.empty(nq_single)
        ids = np.full((nq_single, k), -1, np.int64)
        for j in range(nq_single):
            s = time.perf_counter()
            r = system.query_one(Q[j], k)
            lat[j] = time.perf_counter() - s
            r = np.asarray(r, np.int64)[:k]
            ids[j, : len(r)] = r
        single = latency_stats(lat)
        rec = recall_at_k(job["metric"], base, Q[:nq_single], gt_dist[:nq_single], ids, k)
        times = []
        bids = None
        for _ in range(job.get("batch_repeats", 3)):
            s = time.perf_counter()
            bids = system.query_batch(Q, k)
            times.append(time.perf_counter() - s)
        med = float(np.median(times))
        batch = {"queries": int(len(Q)), "seconds": med, "seconds_all": times,
                 "qps": len(Q) / med if med > 0 else None}
        rec_b = recall_at_k(job["metric"], base, Q, gt_dist, bids, k)
        sweep.append({"params": params, "recall": rec, "recall_batch": rec_b,
                      "single": single, "batch": batch})
        log(f"{name}: [{i + 1}/{len(grid)}] {params or 'defaults'}: recall@{k} {rec:.4f}, "
            f"{single['qps']:,.0f} QPS single (p99 {single['p99_ms']:.2f} ms), "
            f"{batch['qps']:,.0f} QPS batch")
    out["sweep"] = sweep
    out["default_params"] = system.default_params()
    system.close()
    out["peak_rss_bytes"] = env.peak_rss_bytes()
    return out


def _measure_reopen(job: dict) -> dict:
    name, k = job["system"], job["k"]
    data = _load_stage(job["stage"], mmap=True)
    base, Q, gt_dist = data["base"], data["queries"], data["gt_dist"]
    n, dim = base.shape
    system = load_class(name)(job["metric"], dim, n, job["workdir"], **job.get("config", {}))
    params = job.get("params") or {}
    q0 = np.ascontiguousarray(Q[0])
    t0 = time.perf_counter()
    system.reopen()
    t1 = time.perf_counter()
    system.set_search_params(**params)
    system.query_one(q0, k)
    t2 = time.perf_counter()
    m = min(REOPEN_RECALL_QUERIES, len(Q))
    ids = system.query_batch(np.ascontiguousarray(Q[:m]), k)
    rec = recall_at_k(job["metric"], base, Q[:m], gt_dist[:m], ids, k)
    system.close()
    return {"open_s": t1 - t0, "first_answer_s": t2 - t0, "params": params,
            "recall": rec, "recall_queries": m, "peak_rss_bytes": env.peak_rss_bytes()}


def _child(kind: str, job_path: str, result_path: str) -> None:
    with open(job_path) as f:
        job = json.load(f)
    try:
        res = _measure(job) if kind == "measure" else _measure_reopen(job)
    except (ImportError, Unavailable) as e:
        res = {"system": job["system"], "status": "skipped", "message": str(e)}
    except Exception as e:
        res = {"system": job["system"], "status": "error",
               "message": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc()[-4000:]}
    with open(result_path + ".tmp", "w") as f:
        json.dump(res, f, default=_json_default)
    os.replace(result_path + ".tmp", result_path)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _run_child(kind: str, job: dict, scratch: str, timeout: float | None, isolate: bool) -> dict:
    tag = f"{job['system']}-{kind}"
    job_path = os.path.join(scratch, f"{tag}.job.json")
    result_path = os.path.join(scratch, f"{tag}.result.json")
    with open(job_path, "w") as f:
        json.dump(job, f, default=_json_default)
    if isolate:
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=_child, args=(kind, job_path, result_path),
                           name=f"bench-{tag}")
        proc.start()
        proc.join(timeout)
        if proc.is_alive():
            proc.terminate()
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
            return {"system": job["system"], "status": "error",
                    "message": f"{kind} did not finish within {timeout:.0f} s (killed)"}
        if not os.path.exists(result_path):
            return {"system": job["system"], "status": "error",
                    "message": f"{kind} child exited with code {proc.exitcode} and no result"}
    else:
        _child(kind, job_path, result_path)
    with open(result_path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------- orchestration
def _stage_dataset(ds: dsets.Dataset, k: int, stage: str) -> None:
    os.makedirs(stage, exist_ok=True)
    gt_ids, gt_dist = ds.gt(k)
    for name, arr in (("train", ds.train), ("base", ds.base), ("queries", ds.queries),
                      ("gt_ids", np.ascontiguousarray(gt_ids)),
                      ("gt_dist", np.ascontiguousarray(gt_dist))):
        np.save(os.path.join(stage, f"{name}.npy"), arr)


def run_dataset(ds: dsets.Dataset, systems, *, k: int = 10, scratch: str,
                single_queries: int | None = None, batch_repeats: int = 3,
                timeout: float | None = None, isolate: bool = True,
                configs: dict | None = None) -> dict:
    log(f"dataset {ds.name}: {ds.n} x {ds.dim}, {ds.metric}, {ds.nq} queries; ground truth ...")
    stage = os.path.join(scratch, f"data-{ds.name}")
    t = time.perf_counter()
    _stage_dataset(ds, k, stage)
    log(f"dataset {ds.name}: ground truth {'from cache' if ds.gt_cached else 'computed'} "
        f"({time.perf_counter() - t:.1f} s)")
    results = []
    for name in systems:
        workdir = os.path.join(scratch, f"{ds.name}-{name}")
        job = {"system": name, "stage": stage, "workdir": workdir, "metric": ds.metric, "k": k,
               "single_queries": single_queries, "batch_repeats": batch_repeats,
               "config": (configs or {}).get(name, {})}
        t = time.perf_counter()
        res = _run_child("measure", job, scratch, timeout, isolate)
        res["elapsed_s"] = time.perf_counter() - t
        if res["status"] == "ok":
            job["params"] = res.get("default_params") or {}
            job["config"] = res.get("config", job["config"])
            log(f"{name}: cold reopen ...")
            reopen = _run_child("reopen", job, scratch, timeout, isolate)
            if reopen.get("status", "ok") == "ok":
                res["reopen"] = reopen
                log(f"{name}: reopen to first answer {reopen['first_answer_s']:.3f} s "
                    f"(recall {reopen['recall']:.4f})")
            else:
                res["reopen"] = None
                res["reopen_error"] = reopen.get("message")
                log(f"{name}: reopen failed: {reopen.get('message')}")
        else:
            log(f"{name}: {res['status']}: {res['message']}")
        shutil.rmtree(workdir, ignore_errors=True)
        results.append(res)
    return {"dataset": ds.describe(), "k": k, "systems": results}


def run(dataset_specs, systems, *, name: str = "run", n: int | None = None,
        queries: int | None = None, k: int = 10, single_queries: int | None = None,
        batch_repeats: int = 3, out_dir: str | None = None, workdir: str | None = None,
        cache_dir: str | None = None, timeout: float | None = None, isolate: bool = True,
        configs: dict | None = None, target_recall: float = 0.9, argv=None) -> str:
    """Run ``systems`` on each dataset spec; write and return the result JSON's path."""
    from . import report

    for s in systems:
        if s not in REGISTRY:
            raise ValueError(f"system {s!r} is not known; expected one of {', '.join(REGISTRY)}")
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    out_dir = out_dir or RESULTS_DIR
    os.makedirs(out_dir, exist_ok=True)
    doc = {"schema": SCHEMA, "name": name, "created": started.isoformat(timespec="seconds"),
           "command": list(argv if argv is not None else sys.argv),
           "machine": env.machine(), "versions": env.versions(),
           "params": {"datasets": list(dataset_specs), "systems": list(systems), "n": n,
                      "queries": queries, "k": k, "single_queries": single_queries,
                      "batch_repeats": batch_repeats, "timeout_s": timeout,
                      "isolated": isolate, "target_recall": target_recall,
                      "configs": configs or {}, "warmup_queries": WARMUP_QUERIES},
           "datasets": []}
    scratch = tempfile.mkdtemp(prefix="svbench-", dir=workdir)
    try:
        for spec in dataset_specs:
            ds = dsets.load(spec, n=n, queries=queries, cache_dir=cache_dir)
            ds_res = run_dataset(ds, systems, k=k, scratch=scratch,
                                 single_queries=single_queries, batch_repeats=batch_repeats,
                                 timeout=timeout, isolate=isolate, configs=configs)
            ds_res["spec"] = spec
            ds_res["ratios"] = report.ratios(ds_res, target_recall)
            doc["datasets"].append(ds_res)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    doc["elapsed_s"] = time.perf_counter() - t0
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(out_dir, f"{stamp}-{name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(doc, f, indent=1, default=_json_default)
    os.replace(path + ".tmp", path)
    log(f"wrote {path} ({doc['elapsed_s']:.0f} s)")
    return path
