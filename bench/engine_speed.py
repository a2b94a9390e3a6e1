"""End-to-end engine speed: durable ingest and flat query latency, each against a baseline
run in the same process (docs/architecture.md: speed is a ratio against a same-run baseline).

    python -m bench.engine_speed [--n 100000] [--dim 128] [--batch 1000] [--queries 200]
                                 [--repeats 5] [--dir PARENT]
                                 [--out bench/results/engine_speed.json]

What is measured (bench/README.md explains every figure):

1. Ingest, vectors/s, through the public API: ``simplevector.open(d, durability=...,
   checkpoint_interval=0)``, ``create_namespace("bench", dim, metric="l2", index="flat")``
   and ``upsert`` of ``n`` seeded float32 rows in batches of ``batch`` int ids, no metadata,
   for durability "sync" and "async". Baselines: raw LMDB puts of the same bytes (key = 8-byte
   big-endian row number, value = the float32 row), one write transaction per batch, with
   LMDB's durable commit (``sync=True``) and without (``sync=False``).
2. Flat query on the n x dim set: single-query latency of ``Namespace.query(q, k, include=())``
   against numpy brute force (``xn2 - 2 X@q``, argpartition, sort of the k), and one batch call
   of all queries against numpy's batch form; p50/p95 latency, QPS and ratios. Recall@k of
   our results against numpy's, tie-aware (exact float64 distances are compared, not ids).

Every configuration is repeated ``--repeats`` times, interleaved with its baseline so the
noise of a shared machine falls on both; the figures are medians over repeats.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from .env import proc_field

K = 10
#: Every namespace is created with index="flat": from 50k rows the default "auto" starts
#: training an IVF index in a background thread, which competes for the cores with the
#: ingest being measured (and outlives close()), and would make query() approximate.
INDEX = "flat"
DATA_SEED = 0
QUERY_SEED = 1
RECALL_RTOL = 1e-6   # tie tolerance on exact float64 squared distances (relative)
LMDB_MAP_SLACK = 64 << 20


# ----------------------------------------------------------------------------- environment
def _fs_type(path: str):
    """The file system type of the mount holding ``path`` (fsync cost depends on it)."""
    path = os.path.realpath(path)
    best, fstype = "", None
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    mnt = parts[1]
                    inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
                    if inside and len(mnt) > len(best):
                        best, fstype = mnt, parts[2]
    except OSError:
        pass
    return fstype


def machine_info(bench_dir: str) -> dict:
    mem = proc_field("/proc/meminfo", "MemTotal")
    mem_bytes = int(mem.split()[0]) * 1024 if mem else None
    return {
        "cpu_model": proc_field("/proc/cpuinfo", "model name") or platform.processor(),
        "cores": os.cpu_count(),
        "mem_total_bytes": mem_bytes,
        "mem_total_gib": round(mem_bytes / 2**30, 1) if mem_bytes else None,
        "platform": platform.platform(),
        "bench_dir": bench_dir,
        "bench_dir_fs": _fs_type(bench_dir),
        "loadavg_at_start": list(os.getloadavg()),
    }


def versions() -> dict:
    import lmdb
    import numba

    import simplevector

    try:
        commit = subprocess.run(
            ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "describe", "--always",
             "--dirty"], capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "lmdb": lmdb.__version__,
        "lmdb_c": ".".join(map(str, lmdb.version())),
        "simplevector": simplevector.__version__,
        "git": commit,
    }


def threads_info() -> dict:
    import numba
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                      "MKL_NUM_THREADS", "NUMBA_NUM_THREADS") if k in os.environ}
    return {"numba": numba.get_num_threads(), "env": env}


# ----------------------------------------------------------------------------- helpers
def _median(xs):
    return float(np.median(xs)) if len(xs) else None


def _pct(xs, q):
    return float(np.percentile(xs, q)) if len(xs) else None


def _batches(n: int, batch: int):
    for start in range(0, n, batch):
        yield start, min(start + batch, n)


# ----------------------------------------------------------------------------- ingest
def ingest_simplevector(X: np.ndarray, batch: int, durability: str, parent: str) -> dict:
    """Upsert X through the public API into a fresh database; the timed part is the upsert
    loop (each call returns acknowledged: for "sync", its WAL record is fdatasync'ed)."""
    import simplevector as sv

    n, dim = X.shape
    d = tempfile.mkdtemp(prefix=f"sv-{durability}-", dir=parent)
    try:
        gc.collect()
        t0 = time.perf_counter()
        db = sv.open(d, durability=durability, checkpoint_interval=0)
        try:
            ns = db.create_namespace("bench", dim=dim, metric="l2", index=INDEX)
            t1 = time.perf_counter()
            for start, stop in _batches(n, batch):
                ns.upsert(list(range(start, stop)), X[start:stop])
            t2 = time.perf_counter()
            count = ns.count()
        finally:
            db.close()
        t3 = time.perf_counter()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if count != n:
        raise RuntimeError(
            f"simplevector ({durability}) holds {count} rows after ingest; expected {n}")
    return {"seconds": t2 - t1, "vectors_per_s": n / (t2 - t1), "open_s": t1 - t0,
            "close_s": t3 - t2}


def ingest_lmdb(X: np.ndarray, batch: int, sync: bool, parent: str) -> dict:
    """Raw LMDB: the same row bytes under 8-byte big-endian row numbers, one write txn per
    batch, putmulti through a cursor (the call the engine uses). ``sync=True`` is LMDB's
    default durable commit (fsync per commit); ``sync=False`` commits without any flush."""
    import lmdb

    n, dim = X.shape
    d = tempfile.mkdtemp(prefix=f"lmdb-{'sync' if sync else 'nosync'}-", dir=parent)
    try:
        gc.collect()
        t0 = time.perf_counter()
        env = lmdb.open(d, map_size=2 * X.nbytes + LMDB_MAP_SLACK, sync=sync)
        try:
            t1 = time.perf_counter()
            for start, stop in _batches(n, batch):
                with env.begin(write=True) as txn:
                    txn.cursor().putmulti(
                        [(i.to_bytes(8, "big"), X[i].tobytes()) for i in range(start, stop)])
            t2 = time.perf_counter()
            count = env.stat()["entries"]
        finally:
            env.close()
        t3 = time.perf_counter()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if count != n:
        raise RuntimeError(f"raw LMDB holds {count} entries after ingest; expected {n}")
    return {"seconds": t2 - t1, "vectors_per_s": n / (t2 - t1), "open_s": t1 - t0,
            "close_s": t3 - t2}


INGEST_RUNS = {
    "simplevector_sync": lambda X, b, p: ingest_simplevector(X, b, "sync", p),
    "simplevector_async": lambda X, b, p: ingest_simplevector(X, b, "async", p),
    "lmdb_sync": lambda X, b, p: ingest_lmdb(X, b, True, p),
    "lmdb_nosync": lambda X, b, p: ingest_lmdb(X, b, False, p),
}


def bench_ingest(X, batch, repeats, parent, log) -> dict:
    samples = {name: [] for name in INGEST_RUNS}
    for rep in range(repeats):
        # rotate the order each repeat so no configuration always runs first (page cache, disk)
        names = list(INGEST_RUNS)
        names = names[rep % len(names):] + names[:rep % len(names)]
        for name in names:
            r = INGEST_RUNS[name](X, batch, parent)
            samples[name].append(r)
            log(f"  ingest rep {rep + 1}/{repeats} {name:<19} {r['vectors_per_s']:>10,.0f} vec/s")
    out = {}
    for name, runs in samples.items():
        vps = [r["vectors_per_s"] for r in runs]
        out[name] = {
            "vectors_per_s": _median(vps),
            "seconds": _median([r["seconds"] for r in runs]),
            "open_s": _median([r["open_s"] for r in runs]),
            "close_s": _median([r["close_s"] for r in runs]),
            "samples_vectors_per_s": vps,
        }

    def ratio(a, b):
        paired = [x["vectors_per_s"] / y["vectors_per_s"] for x, y in zip(samples[a], samples[b])]
        return {"ratio": out[a]["vectors_per_s"] / out[b]["vectors_per_s"],
                "paired_median": _median(paired), "paired": paired}

    ratios = {
        "simplevector_sync_over_lmdb_sync": ratio("simplevector_sync", "lmdb_sync"),
        "simplevector_sync_over_lmdb_nosync": ratio("simplevector_sync", "lmdb_nosync"),
        "simplevector_async_over_lmdb_nosync": ratio("simplevector_async", "lmdb_nosync"),
    }
    goal = 0.5
    return {"runs": out, "ratios": ratios, "goal": {
        "statement": "durable ingest at least half of raw LMDB",
        "min_ratio_simplevector_sync_over_lmdb_sync": goal,
        "met": ratios["simplevector_sync_over_lmdb_sync"]["ratio"] >= goal,
    }}


# ----------------------------------------------------------------------------- queries
def numpy_one(X, xn2, q, k):
    d = xn2 - 2.0 * (X @ q)
    idx = np.argpartition(d, k - 1)[:k]
    return idx[np.argsort(d[idx], kind="stable")]


def numpy_batch(X, xn2, Q, k):
    D = xn2[None, :] - 2.0 * (Q @ X.T)
    idx = np.argpartition(D, k - 1, axis=1)[:, :k]
    order = np.argsort(np.take_along_axis(D, idx, axis=1), axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1)


def _exact_d2(X, q, ids):
    diff = X[ids].astype(np.float64) - q.astype(np.float64)
    return np.einsum("ij,ij->i", diff, diff)


def recall_tie_aware(X, Q, ours: list, ref: np.ndarray, k: int) -> dict:
    """Per query: the fraction of our k results whose exact distance is within the k-th
    exact distance of numpy's results (so a tie broken the other way still counts)."""
    recalls, exact_match = [], 0
    for q, got, want in zip(Q, ours, ref):
        got = np.asarray(got, dtype=np.int64)
        kth = _exact_d2(X, q, want).max()
        ok = int((_exact_d2(X, q, got) <= kth * (1 + RECALL_RTOL)).sum()) if len(got) else 0
        recalls.append(ok / k)
        exact_match += int(len(got) == len(want) and np.array_equal(got, want))
    return {"recall_at_k": float(np.mean(recalls)), "min_recall_at_k": float(np.min(recalls)),
            "exact_id_order_match": exact_match / len(Q)}


def _lat_stats(seconds: list) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": _pct(ms, 50), "p95_ms": _pct(ms, 95), "mean_ms": float(ms.mean()),
            "qps": len(ms) / float(np.sum(seconds))}


def bench_query(X, Q, batch, repeats, parent, log) -> dict:
    """Build a durable database of X, reopen it (state loaded from LMDB), then time queries."""
    import simplevector as sv

    n, dim = X.shape
    k = min(K, n)
    xn2 = np.einsum("ij,ij->i", X, X)
    d = tempfile.mkdtemp(prefix="sv-query-", dir=parent)
    try:
        with sv.open(d, durability="sync", checkpoint_interval=0) as db:
            ns = db.create_namespace("bench", dim=dim, metric="l2", index=INDEX)
            for start, stop in _batches(n, batch):
                ns.upsert(list(range(start, stop)), X[start:stop])
        gc.collect()
        t0 = time.perf_counter()
        db = sv.open(d, durability="sync", checkpoint_interval=0)
        ns = db.namespace("bench")
        reopen_s = time.perf_counter() - t0
        try:
            return _time_queries(ns, X, xn2, Q, k, repeats, reopen_s, log)
        finally:
            db.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _time_queries(ns, X, xn2, Q, k, repeats, reopen_s, log) -> dict:
    nq = len(Q)
    # warm-up: numba compilation (or cache load), BLAS threads, page cache
    for q in Q[: min(10, nq)]:
        ns.query(q, k=k, include=())
        numpy_one(X, xn2, q, k)
    ns.query(Q, k=k, include=())
    numpy_batch(X, xn2, Q, k)
    plan = _plan_of(ns, Q[0], k)

    # single queries: ours and numpy alternate per query (order flipped each query)
    per_rep = {"simplevector": [], "numpy": []}
    ours_single, ref_single = [None] * nq, [None] * nq
    perf = time.perf_counter
    for rep in range(repeats):
        t_ours, t_np = [], []
        for i, q in enumerate(Q):
            for who in (("ours", "np") if (i + rep) % 2 == 0 else ("np", "ours")):
                if who == "ours":
                    t = perf()
                    hits = ns.query(q, k=k, include=())
                    t_ours.append(perf() - t)
                    ours_single[i] = [h.id for h in hits]
                else:
                    t = perf()
                    idx = numpy_one(X, xn2, q, k)
                    t_np.append(perf() - t)
                    ref_single[i] = idx
        per_rep["simplevector"].append(_lat_stats(t_ours))
        per_rep["numpy"].append(_lat_stats(t_np))
        log(f"  single rep {rep + 1}/{repeats} simplevector p50 "
            f"{per_rep['simplevector'][-1]['p50_ms']:.3f} ms, numpy p50 "
            f"{per_rep['numpy'][-1]['p50_ms']:.3f} ms")
    single = {who: _median_stats(stats) for who, stats in per_rep.items()}
    single["qps_ratio_simplevector_over_numpy"] = (
        single["simplevector"]["qps"] / single["numpy"]["qps"])
    single["p50_ratio_simplevector_over_numpy"] = (
        single["simplevector"]["p50_ms"] / single["numpy"]["p50_ms"])

    # one batch call of all queries; more repeats, it is cheap
    brep = max(repeats, 5)
    b_ours, b_np = [], []
    ours_batch = ref_batch = None
    for rep in range(brep):
        for who in (("ours", "np") if rep % 2 == 0 else ("np", "ours")):
            if who == "ours":
                t = perf()
                res = ns.query(Q, k=k, include=())
                b_ours.append(perf() - t)
                ours_batch = [[h.id for h in hits] for hits in res]
            else:
                t = perf()
                ref_batch = numpy_batch(X, xn2, Q, k)
                b_np.append(perf() - t)
    batch = {}
    for who, ts in (("simplevector", b_ours), ("numpy", b_np)):
        ms = np.asarray(ts) * 1e3
        batch[who] = {"p50_ms": _pct(ms, 50), "p95_ms": _pct(ms, 95),
                      "qps": nq / _median(ts), "samples_ms": ms.tolist()}
    batch["qps_ratio_simplevector_over_numpy"] = (
        batch["simplevector"]["qps"] / batch["numpy"]["qps"])
    batch["repeats"] = brep

    recall = {"single": recall_tie_aware(X, Q, ours_single, ref_single, k),
              "batch": recall_tie_aware(X, Q, ours_batch, ref_batch, k),
              "rtol": RECALL_RTOL}
    recall["recall_at_k"] = min(recall["single"]["recall_at_k"], recall["batch"]["recall_at_k"])
    return {"k": k, "plan": plan, "reopen_s": reopen_s, "single": single, "batch": batch,
            "recall": recall}


def _plan_of(ns, q, k):
    """The index the engine says a query used (untimed; None if query() cannot explain)."""
    try:
        _, plan = ns.query(q, k=k, include=(), explain=True)
    except TypeError:
        return None
    return str(getattr(plan, "index", plan))


def _median_stats(stats: list) -> dict:
    out = {key: _median([s[key] for s in stats]) for key in stats[0]}
    out["per_repeat"] = stats
    return out


# ----------------------------------------------------------------------------- output
def _ratio(r: dict) -> str:
    """Ratio of the medians, and the median of the per-repeat (paired) ratios."""
    return f"{r['ratio']:.2f}x (paired {r['paired_median']:.2f}x)"


def _rows(res: dict) -> list:
    ing, qry = res["ingest"], res["query"]
    r, ratios = ing["runs"], ing["ratios"]
    s, b = qry["single"], qry["batch"]
    vps = "{:,.0f} vec/s".format
    return [
        ("Ingest", "SimpleVector durability=sync", vps(r["simplevector_sync"]["vectors_per_s"])),
        ("Ingest", "SimpleVector durability=async", vps(r["simplevector_async"]["vectors_per_s"])),
        ("Ingest", "raw LMDB sync=True (baseline)", vps(r["lmdb_sync"]["vectors_per_s"])),
        ("Ingest", "raw LMDB sync=False (baseline)", vps(r["lmdb_nosync"]["vectors_per_s"])),
        ("Ingest", "ratio SV-sync / LMDB-sync (goal >= 0.5)",
         _ratio(ratios["simplevector_sync_over_lmdb_sync"])),
        ("Ingest", "ratio SV-sync / LMDB-nosync",
         _ratio(ratios["simplevector_sync_over_lmdb_nosync"])),
        ("Ingest", "ratio SV-async / LMDB-nosync",
         _ratio(ratios["simplevector_async_over_lmdb_nosync"])),
        ("Query 1", "SimpleVector query() p50 / p95",
         f"{s['simplevector']['p50_ms']:.3f} / {s['simplevector']['p95_ms']:.3f} ms"),
        ("Query 1", "numpy brute force p50 / p95",
         f"{s['numpy']['p50_ms']:.3f} / {s['numpy']['p95_ms']:.3f} ms"),
        ("Query 1", "QPS SimpleVector / numpy",
         f"{s['simplevector']['qps']:,.0f} / {s['numpy']['qps']:,.0f}"),
        ("Query 1", "ratio QPS SV / numpy", f"{s['qps_ratio_simplevector_over_numpy']:.2f}x"),
        ("Batch", f"SimpleVector query({res['params']['queries']} q) p50 / p95",
         f"{b['simplevector']['p50_ms']:.1f} / {b['simplevector']['p95_ms']:.1f} ms"),
        ("Batch", "numpy batch p50 / p95",
         f"{b['numpy']['p50_ms']:.1f} / {b['numpy']['p95_ms']:.1f} ms"),
        ("Batch", "QPS SimpleVector / numpy",
         f"{b['simplevector']['qps']:,.0f} / {b['numpy']['qps']:,.0f}"),
        ("Batch", "ratio QPS SV / numpy", f"{b['qps_ratio_simplevector_over_numpy']:.2f}x"),
        ("Recall", f"recall@{qry['k']} single / batch (tie-aware, vs numpy)",
         f"{qry['recall']['single']['recall_at_k']:.4f} / "
         f"{qry['recall']['batch']['recall_at_k']:.4f}"),
    ]


def _header(res: dict) -> str:
    p, m, v = res["params"], res["machine"], res["versions"]
    return (f"n={p['n']:,} dim={p['dim']} batch={p['batch']} queries={p['queries']} k={p['k']} "
            f"index={p['index']} "
            f"repeats={p['repeats']} (medians) | {m['cpu_model']}, {m['cores']} cores, "
            f"{m['mem_total_gib']} GiB, {m['bench_dir_fs']}, load avg "
            f"{m['loadavg_at_start'][0]:.1f} | python {v['python']}, numpy "
            f"{v['numpy']}, numba {v['numba']}, lmdb {v['lmdb']} (C {v['lmdb_c']}), "
            f"simplevector {v['simplevector']}")


def text_table(res: dict) -> str:
    rows = _rows(res)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    w2 = max(len(r[2]) for r in rows)
    line = "-" * (w0 + w1 + w2 + 6)
    out = [_header(res), line]
    last = None
    for a, b, c in rows:
        if last is not None and a != last:
            out.append(line)
        out.append(f"{a:<{w0}}   {b:<{w1}}   {c:>{w2}}")
        last = a
    out.append(line)
    return "\n".join(out)


def markdown_table(res: dict) -> str:
    out = [f"<!-- {_header(res)} -->", "", "| Phase | Measure | Result |", "|---|---|---:|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in _rows(res)]
    return "\n".join(out)


# ----------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.engine_speed",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="rows ingested and searched")
    p.add_argument("--dim", type=int, default=128, help="vector dimension")
    p.add_argument("--batch", type=int, default=1000, help="rows per upsert / LMDB write txn")
    p.add_argument("--queries", type=int, default=200, help="query vectors")
    p.add_argument("--repeats", type=int, default=5, help="repeats per measure (medians reported)")
    p.add_argument("--dir", default=None,
                   help="parent of the temporary databases (default: the system temp dir); "
                        "put it on the disk you care about, fsync cost depends on it")
    p.add_argument("--out", default="bench/results/engine_speed.json", help="JSON results file")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    a = p.parse_args(argv)
    for name in ("n", "dim", "batch", "queries", "repeats"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    return a


def main(argv=None) -> dict:
    """Run every measure once (with repeats), print the tables, write the JSON; return it."""
    args = parse_args(argv)
    log = (lambda *_: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    parent = os.path.abspath(args.dir or tempfile.gettempdir())
    os.makedirs(parent, exist_ok=True)
    started = time.time()
    t_start = time.perf_counter()

    X = np.random.default_rng(DATA_SEED).standard_normal((args.n, args.dim), dtype=np.float32)
    Q = np.random.default_rng(QUERY_SEED).standard_normal((args.queries, args.dim),
                                                          dtype=np.float32)
    res = {
        "benchmark": "bench.engine_speed",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "machine": machine_info(parent),
        "versions": versions(),
        "threads": threads_info(),
        "params": {"n": args.n, "dim": args.dim, "batch": args.batch, "queries": args.queries,
                   "k": min(K, args.n), "repeats": args.repeats, "metric": "l2",
                   "index": INDEX,
                   "data": f"np.random.default_rng({DATA_SEED}).standard_normal float32",
                   "queries_data": f"np.random.default_rng({QUERY_SEED}).standard_normal float32"},
    }
    log(f"ingest: {args.n:,} x {args.dim} in batches of {args.batch}, {args.repeats} repeats")
    res["ingest"] = bench_ingest(X, args.batch, args.repeats, parent, log)
    log(f"query: {args.queries} queries, k={min(K, args.n)}")
    res["query"] = bench_query(X, Q, args.batch, args.repeats, parent, log)
    res["elapsed_s"] = time.perf_counter() - t_start
    res["machine"]["loadavg_at_end"] = list(os.getloadavg())

    print(text_table(res))
    print()
    print(markdown_table(res))
    out = args.out
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out + ".tmp", "w") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
        os.replace(out + ".tmp", out)
        print(f"\nresults: {out}")
    if res["query"]["recall"]["recall_at_k"] < 1.0:
        print(f"WARNING: recall@{res['query']['k']} is "
              f"{res['query']['recall']['recall_at_k']:.4f}, expected 1.0 (flat search is exact)",
              file=sys.stderr)
    return res


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["query"]["recall"]["recall_at_k"] >= 1.0 else 1)
