"""Ingest and query throughput of sv.cluster for 1, 2 and 4 shards on this machine, against
one embedded database in the same run (the coordinator's overhead).

    python -m bench.cluster [--n 50000] [--dim 64] [--batch 1000] [--queries 300]
                            [--clients 4] [--k 10] [--shards 1,2,4] [--out FILE]

Data: seeded clustered float32 rows (l2, Flat index: every figure is exact search, so the
shard counts do the same work). Each configuration gets a fresh directory and ingests the
same rows in batches of ``--batch`` with ``durability="sync"`` from one client; queries are
single vectors, first from one client (latency: the round trip through the coordinator and
Ray), then from ``--clients`` threads at once (throughput). The baseline is ``sv.open`` on
the same rows in the same process, measured the same way; the ratios are cluster / baseline.
Ray runs locally (``num_cpus`` = the cores, loopback, no dashboard); every shard is a
separate process, so on one machine the shards share its cores with the coordinator. Ray
starts its workers with one OpenMP/BLAS thread, so the embedded baseline is measured twice:
with the default BLAS threads and under ``threadpool_limits(1)``, the like-for-like one.
Results go to bench/results/cluster.json with the CPU model, versions and load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

from bench.env import machine, versions


def data(n: int, dim: int, queries: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    C = rng.standard_normal((64, dim)).astype(np.float32) * 3
    X = C[rng.integers(0, 64, n)] + rng.standard_normal((n, dim)).astype(np.float32)
    Q = C[rng.integers(0, 64, queries)] + rng.standard_normal((queries, dim)).astype(np.float32)
    return X.astype(np.float32), Q.astype(np.float32)


def _ingest(ns, X, batch) -> float:
    t0 = time.perf_counter()
    for s in range(0, len(X), batch):
        ns.upsert(list(range(s, min(s + batch, len(X)))), X[s:s + batch])
    return len(X) / (time.perf_counter() - t0)


def _latency(ns, Q, k) -> dict:
    ns.query(Q[0], k=k)                         # warm (JIT, connections)
    times = []
    for q in Q:
        t0 = time.perf_counter()
        ns.query(q, k=k)
        times.append(time.perf_counter() - t0)
    t = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95)),
            "qps_one_client": float(len(Q) / (t.sum() / 1e3))}


def _throughput(ns, Q, k, clients) -> float:
    parts = np.array_split(np.arange(len(Q)), clients)

    def run(rows):
        for r in rows:
            ns.query(Q[r], k=k)
    threads = [threading.Thread(target=run, args=(p,)) for p in parts]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(Q) / (time.perf_counter() - t0)


def measure(ns, X, Q, args) -> dict:
    out = {"ingest_rows_per_s": _ingest(ns, X, args.batch)}
    out.update(_latency(ns, Q, args.k))
    out["qps_clients"] = _throughput(ns, Q, args.k, args.clients)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50_000, help="rows (default 50000)")
    p.add_argument("--dim", type=int, default=64, help="dimensions (default 64)")
    p.add_argument("--batch", type=int, default=1000, help="rows per upsert (default 1000)")
    p.add_argument("--queries", type=int, default=300, help="query vectors (default 300)")
    p.add_argument("--clients", type=int, default=4, help="query threads (default 4)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    p.add_argument("--shards", default="1,2,4", help="shard counts (default 1,2,4)")
    p.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    p.add_argument("--out", default=os.path.join("bench", "results", "cluster.json"))
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    import ray

    import simplevector as sv
    shard_counts = [int(s) for s in args.shards.split(",")]
    X, Q = data(args.n, args.dim, args.queries)
    work = tempfile.mkdtemp(prefix="sv-bench-cluster-", dir=args.dir)
    result = {"machine": machine(), "versions": {**versions(), "ray": ray.__version__},
              "params": {"n": args.n, "dim": args.dim, "batch": args.batch,
                         "queries": args.queries, "clients": args.clients, "k": args.k,
                         "metric": "l2", "index": "Flat", "durability": "sync",
                         "shards": shard_counts},
              "runs": {}}
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
        result["blas_default"] = [(i["internal_api"], i["num_threads"])
                                  for i in threadpool_info()]
        with sv.open(os.path.join(work, "embedded"), checkpoint_interval=0) as db:
            ns = db.create_namespace("bench", dim=args.dim, metric="l2", index="Flat")
            result["runs"]["embedded"] = measure(ns, X, Q, args)
        # the shard actors run with one BLAS/OpenMP thread each (Ray sets OMP_NUM_THREADS
        # for its workers): the same embedded run with one thread is the like-for-like
        # baseline of the coordinator's overhead
        with threadpool_limits(1), sv.open(os.path.join(work, "embedded-1"),
                                           checkpoint_interval=0) as db:
            ns = db.create_namespace("bench", dim=args.dim, metric="l2", index="Flat")
            result["runs"]["embedded_1thread"] = measure(ns, X, Q, args)
        t0 = time.perf_counter()
        own_ray = not ray.is_initialized()      # a caller's Ray (the tests') is reused
        if own_ray:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
        result["ray_init_s"] = time.perf_counter() - t0 if own_ray else None
        try:
            for shards in shard_counts:
                t0 = time.perf_counter()
                cl = sv.cluster(os.path.join(work, f"cluster-{shards}"), shards=shards,
                                checkpoint_interval=0)
                opened = time.perf_counter() - t0
                try:
                    ns = cl.create_namespace("bench", dim=args.dim, metric="l2",
                                             index="Flat")
                    run = measure(ns, X, Q, args)
                    run["open_s"] = opened
                    run["rows_per_shard"] = [s.count for s in cl.shards()]
                    run["shard_env"] = ray.get(cl.actor(0).__ray_call__.remote(
                        lambda actor: {v: os.environ.get(v) for v in
                                       ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                        "NUMBA_NUM_THREADS")}))
                    run["ingest_rows_per_s_per_shard"] = run["ingest_rows_per_s"] / shards
                    result["runs"][f"cluster_{shards}"] = run
                finally:
                    cl.close()
        finally:
            if own_ray:
                ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = result["runs"]["embedded_1thread"]
    result["ratios_over_embedded_1thread"] = {
        name: {"ingest": r["ingest_rows_per_s"] / base["ingest_rows_per_s"],
               "p50_latency": r["p50_ms"] / base["p50_ms"],
               "qps_clients": r["qps_clients"] / base["qps_clients"]}
        for name, r in result["runs"].items() if name.startswith("cluster")}
    one = result["runs"].get("cluster_1")
    if one is not None:
        result["coordinator_overhead"] = {
            "p50_ms_added": one["p50_ms"] - base["p50_ms"],
            "ingest_ratio": one["ingest_rows_per_s"] / base["ingest_rows_per_s"]}
    result["loadavg_at_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    if not args.quiet:
        print(f"{result['machine']['cpu_model']}, {result['machine']['cores']} cores, "
              f"load {result['machine']['loadavg_at_start']}")
        print(f"{'run':<17}{'ingest rows/s':>15}{'p50 ms':>9}{'p95 ms':>9}"
              f"{'qps x1':>9}{'qps x' + str(args.clients):>9}")
        for name, r in result["runs"].items():
            print(f"{name:<17}{r['ingest_rows_per_s']:>15.0f}{r['p50_ms']:>9.2f}"
                  f"{r['p95_ms']:>9.2f}{r['qps_one_client']:>9.0f}{r['qps_clients']:>9.0f}")
        print(f"written to {args.out}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
