"""Lifecycle costs, same data, same run: snapshot against copying the directory, restore,
compaction (rate and bytes given back), and query latency while each runs against idle.

    python -m bench.lifecycle [--n 200000] [--dim 128] [--delete 0.3] [--seconds 2]
                              [--workdir DIR] [--json]

Builds an l2 namespace of ``--n`` random float32 rows of ``--dim`` (IVF-PQ trained, with a
small metadata map per row), checkpoints and closes it, then in one process:

1. idle: single queries for ``--seconds`` (the latency baseline);
2. ``shutil.copytree`` of the directory (the naive backup), its time and bytes;
3. ``db.snapshot()`` while a thread runs the same queries: time, bytes, query p50/p99;
4. ``sv.restore`` of that snapshot into a new directory: time;
5. deletes ``--delete`` of the rows, checkpoints, then ``ns.compact()`` while the query
   thread runs: time, rows kept per second, directory bytes before and after, p50/p99.

Latencies are wall times of ``ns.query(q, k=10)`` (nprobe default, refine from the spec),
each from a fixed set of 256 query vectors drawn from the data. Prints the machine (CPU,
load): on a shared 2-core machine the query thread and the operation compete for cores,
which is what a user of an embedded database sees.
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

from .env import machine

MIB = 1 << 20


def _du(path: str) -> int:
    return sum(os.stat(os.path.join(root, f)).st_blocks * 512
               for root, _dirs, files in os.walk(path) for f in files)


def _lat(samples: list) -> dict:
    a = np.array(samples) * 1e3
    if not len(a):
        return {"queries": 0}
    return {"queries": int(len(a)), "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max())}


class _Queries:
    """A thread running single queries until stopped, recording each one's wall time."""

    def __init__(self, ns, Q):
        self.ns, self.Q = ns, Q
        self.samples: list = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        i = 0
        while not self._stop.is_set():
            t0 = time.perf_counter()
            self.ns.query(self.Q[i % len(self.Q)], k=10, include=())
            self.samples.append(time.perf_counter() - t0)
            i += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run(n: int, dim: int, delete: float, seconds: float, workdir: str | None) -> dict:
    import simplevector as sv
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, dim)).astype(np.float32)
    Q = X[rng.choice(n, 256, replace=False)] + 0.01
    root = tempfile.mkdtemp(prefix="sv-lifecycle-", dir=workdir)
    out = {"machine": machine(), "n": n, "dim": dim, "raw_vector_bytes": int(X.nbytes)}
    try:
        path = os.path.join(root, "db")
        with sv.open(path, checkpoint_interval=0, auto_index=False, compact_ratio=0,
                     durability="async") as db:
            ns = db.create_namespace("v", dim=dim, metric="l2")
            for lo in range(0, n, 10_000):
                ids = list(range(lo, min(n, lo + 10_000)))
                ns.upsert(ids, X[lo:lo + 10_000], metadata=[{"g": i % 10} for i in ids])
            t0 = time.perf_counter()
            out["index"] = ns.build_index()["active"]
            out["build_seconds"] = time.perf_counter() - t0
        with sv.open(path, checkpoint_interval=0, auto_index=False, compact_ratio=0) as db:
            ns = db.namespace("v")
            for q in Q[:32]:                    # numba's cache and the page cache, once
                ns.query(q, k=10, include=())
            idle = _Queries(ns, Q)
            with idle:
                time.sleep(seconds)
            out["idle"] = _lat(idle.samples)
            out["dir_bytes"] = _du(path)
            t0 = time.perf_counter()
            shutil.copytree(path, os.path.join(root, "copy"))
            out["copytree"] = {"seconds": time.perf_counter() - t0,
                               "bytes": _du(os.path.join(root, "copy"))}
            shutil.rmtree(os.path.join(root, "copy"))
            with _Queries(ns, Q) as during:
                t0 = time.perf_counter()
                info = db.snapshot(os.path.join(root, "snap"))
                snap_seconds = time.perf_counter() - t0
            out["snapshot"] = {"seconds": snap_seconds, "bytes": info.bytes,
                               "queries_during": _lat(during.samples)}
            t0 = time.perf_counter()
            sv.restore(info.path, os.path.join(root, "restored"))
            out["restore"] = {"seconds": time.perf_counter() - t0,
                              "bytes": _du(os.path.join(root, "restored"))}
            shutil.rmtree(os.path.join(root, "restored"))
            shutil.rmtree(info.path)
            gone = np.sort(rng.choice(n, int(n * delete), replace=False)).tolist()
            for lo in range(0, len(gone), 20_000):
                ns.delete(gone[lo:lo + 20_000])
            db.checkpoint()
            parts_before = {p: _du(os.path.join(path, p)) for p in ("rows", "ckpt", "lmdb", "wal")}
            with _Queries(ns, Q) as during:
                report = ns.compact()
            parts_after = {p: _du(os.path.join(path, p)) for p in ("rows", "ckpt", "lmdb", "wal")}
            entry = report.versions[0]
            out["compact"] = {"seconds": report.seconds, "rows_kept": entry.rows,
                              "tombstones_removed": entry.tombstones_removed,
                              "rows_per_second": entry.rows / max(entry.seconds, 1e-9),
                              "version_seconds": entry.seconds,
                              "bytes_before": report.bytes_before,
                              "bytes_after": report.bytes_after,
                              "parts_before": parts_before, "parts_after": parts_after,
                              "queries_during": _lat(during.samples)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lifecycle", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--delete", type=float, default=0.3, help="share of rows deleted")
    p.add_argument("--seconds", type=float, default=2.0, help="idle query window")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", action="store_true", help="Print the result as JSON.")
    args = p.parse_args(argv)
    res = run(args.n, args.dim, args.delete, args.seconds, args.workdir)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    m = res["machine"]
    print(f"{m['cpu_model']}, {m['cores']} cores, load {m['loadavg_at_start']}")
    print(f"{res['n']} x {res['dim']} float32 ({res['raw_vector_bytes'] / MIB:.1f} MiB raw), "
          f"{res['index']}; directory {res['dir_bytes'] / MIB:.1f} MiB")
    ct, sn, rs, cp = res["copytree"], res["snapshot"], res["restore"], res["compact"]
    print(f"copytree          {ct['seconds']:7.2f} s  {ct['bytes'] / MIB:8.1f} MiB")
    print(f"snapshot          {sn['seconds']:7.2f} s  {sn['bytes'] / MIB:8.1f} MiB  "
          f"({sn['seconds'] / ct['seconds']:.2f}x the copy's time, "
          f"{sn['bytes'] / ct['bytes']:.2f}x its bytes)")
    print(f"restore           {rs['seconds']:7.2f} s  {rs['bytes'] / MIB:8.1f} MiB")
    print(f"compact           {cp['seconds']:7.2f} s  {cp['rows_per_second']:,.0f} rows kept/s, "
          f"{cp['bytes_before'] / MIB:.1f} -> {cp['bytes_after'] / MIB:.1f} MiB")
    print("  by part (MiB, before -> after): " + ", ".join(
        f"{p} {cp['parts_before'][p] / MIB:.1f} -> {cp['parts_after'][p] / MIB:.1f}"
        for p in cp["parts_before"]))
    for label, lat in (("idle", res["idle"]), ("during snapshot", sn["queries_during"]),
                       ("during compact", cp["queries_during"])):
        if lat["queries"]:
            print(f"query {label:16s} p50 {lat['p50_ms']:.3f} ms  p99 {lat['p99_ms']:.3f} ms  "
                  f"({lat['queries']} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
