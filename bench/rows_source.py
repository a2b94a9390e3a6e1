"""Rows read in place from the row file's mapping against the same rows in the heap: the
same index, the same process, interleaved.

    python -m bench.rows_source [--dataset glove] [--spec IVF1024,PQ25x8,Refine4]
        [--nprobe 8,16,32,64] [--refine 1,4] [--rounds 15] [--block 200] [--out FILE]

Issue 10 asks that nothing gets slower now that queries read the float32 rows from the
mapping (storage format 2) where format 1 held a heap copy. Comparing two commits in two
processes (``bench.versus``) moves a point by 20% between runs on a shared 2-core machine,
more than the 5% band. This isolates the one thing that changed: one namespace is built
(durable ingest, trained, checkpointed) and reopened, then at every (nprobe, refine) point
the index's own search calls, the ones the query path makes (``index.search`` for one
query, ``index.search_batch_padded`` for all), run with ``X`` = the mapped rows and with
``X`` = ``np.array`` of them (a heap copy), alternating: a block of ``--block`` single
queries and one batch call of every query on one side, then the other, ``--rounds``
times. Both sides must return the same positions (checked). Reported per point: median
microseconds per single query and median batch QPS of each side, and the ratios map /
heap (QPS: above 1 = the map is faster). Prints the machine (CPU, load).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import numpy as np

from . import datasets, env


def _single(index, X, Q, k, nprobe, refine, alive):
    t = time.perf_counter()
    for q in Q:
        index.search(X, q, k, nprobe, refine, alive, True, -1)
    return (time.perf_counter() - t) / len(Q)


def _batch(index, X, Q, k, nprobe, refine, alive):
    t = time.perf_counter()
    index.search_batch_padded(X, Q, k, nprobe, refine, alive, True, -1)
    return len(Q) / (time.perf_counter() - t)


def run(dataset: str, spec: str, nprobes: list[int], refines: list[int], rounds: int = 15,
        block: int = 200, k: int = 10, cache_dir: str | None = None) -> dict:
    """``cache_dir``: the data set cache (bench/datasets.py) and the namespace's parent."""
    import simplevector as sv

    ds = datasets.load(dataset, cache_dir=cache_dir)
    path = tempfile.mkdtemp(prefix="sv-rows-source-", dir=cache_dir)
    try:
        with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
            ns = db.create_namespace("v", dim=ds.dim, metric=ds.metric, index=spec)
            ids = np.arange(ds.n)
            t = time.perf_counter()
            for s in range(0, ds.n, 10_000):
                ns.upsert(ids[s:s + 10_000].tolist(), ds.base[s:s + 10_000])
            ns.build_index()
            build_s = time.perf_counter() - t
            db.checkpoint()
        db = sv.open(path, checkpoint_interval=0, auto_index=False, readonly=True)
        try:
            ns = db.namespace("v")
            e = ns.engine_ns
            state = e._db._state(e._config().vid)
            view, index = state.view(), state.index
            mapped = view.X
            heap = np.array(mapped)
            Q = state.prepare(np.ascontiguousarray(ds.queries, np.float32))
            alive = view.alive
            rows = []
            for nprobe in nprobes:
                for refine in refines:
                    for X in (mapped, heap):    # load the kernels, fault the pages in
                        _single(index, X, Q[:block], k, nprobe, refine, alive)
                        _batch(index, X, Q, k, nprobe, refine, alive)
                    a = index.search_batch_padded(mapped, Q, k, nprobe, refine, alive,
                                                  True, -1)[1]
                    b = index.search_batch_padded(heap, Q, k, nprobe, refine, alive,
                                                  True, -1)[1]
                    if not np.array_equal(a, b):
                        raise AssertionError(f"nprobe {nprobe} refine {refine}: the mapped "
                                             "and heap rows gave different results")
                    times = {"map": ([], []), "heap": ([], [])}
                    for r in range(rounds):
                        lo = (r * block) % max(1, len(Q) - block + 1)
                        sides = (("map", mapped), ("heap", heap))
                        for name, X in (sides if r % 2 == 0 else sides[::-1]):
                            times[name][0].append(
                                _single(index, X, Q[lo:lo + block], k, nprobe, refine, alive))
                            times[name][1].append(_batch(index, X, Q, k, nprobe, refine,
                                                         alive))
                    med = {name: (float(np.median(s)) * 1e6, float(np.median(b)))
                           for name, (s, b) in times.items()}
                    rows.append({"nprobe": nprobe, "refine": refine,
                                 "single_us_map": med["map"][0], "single_us_heap": med["heap"][0],
                                 "batch_qps_map": med["map"][1], "batch_qps_heap": med["heap"][1],
                                 "single_qps_ratio": med["heap"][0] / med["map"][0],
                                 "batch_qps_ratio": med["map"][1] / med["heap"][1]})
        finally:
            db.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return {"command": "rows_source", "dataset": ds.describe(), "spec": spec,
            "machine": env.machine(), "versions": env.versions(), "build_s": build_s,
            "params": {"rounds": rounds, "block": block, "k": k}, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rows_source", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="glove")
    p.add_argument("--spec", default="IVF1024,PQ25x8,Refine4")
    p.add_argument("--nprobe", default="8,16,32,64")
    p.add_argument("--refine", default="1,4")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--block", type=int, default=200, help="single queries a block")
    p.add_argument("--out", help="write the JSON result here")
    a = p.parse_args(argv)
    res = run(a.dataset, a.spec, [int(v) for v in a.nprobe.split(",")],
              [int(v) for v in a.refine.split(",")], a.rounds, a.block)
    m = res["machine"]
    print(f"{res['dataset']['name']} {a.spec}; {m.get('cpu_model')}, "
          f"load {m.get('loadavg_at_start')}")
    print("nprobe refine  single us map / heap   QPS x   batch QPS map / heap   QPS x")
    for r in res["rows"]:
        print(f"{r['nprobe']:6d} {r['refine']:6d}  {r['single_us_map']:8.1f} / "
              f"{r['single_us_heap']:8.1f}  {r['single_qps_ratio']:5.2f}  "
              f"{r['batch_qps_map']:9,.0f} / {r['batch_qps_heap']:9,.0f}  "
              f"{r['batch_qps_ratio']:5.2f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
