"""The RaBitQ re-rank's error bound: recall and rows re-ranked at each eps0.

    python -m bench.rabitq_bound [--dataset spectral:n=60000,dim=768,queries=1000]
        [--nlist 256] [--nprobe 8] [--refine 8] [--eps=-1,1.5,1.9,2.5,3] [--out FILE]

One namespace (``IVF<nlist>,RaBitQ,Refine<refine>``, the data set's metric) is built
through the public API; then, for each eps0, every query runs through
``Namespace.search`` with the index's ``bound_eps`` set to it (engine/rabitq.py; a negative
eps0 re-ranks every candidate, the reference). Reported per eps0: recall@10 against the
data set's exact neighbours, the share of its ids equal to the reference's, the mean rows
re-ranked (counted by the kernel, ``kernels/rabitq.rabitq_search_serial``, on the same
queries) and the mean single-query time. This is the measurement behind
``kernels/rabitq.BOUND_EPS``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import numpy as np

from . import datasets, env


def _reranked(ns, queries, k, nprobe, refine) -> float:
    """Mean rows re-ranked by the kernel over ``queries`` at the index's bound_eps."""
    from simplevector.engine import ivf
    from simplevector.engine.kernels import rabitq as rq

    e = ns.engine_ns
    state = e._db._state(e._config().vid)
    view, index = state.view(), state.index
    sealed, d, words, fac, dwords, dfac, st, dt = index._code_views()
    use_mask = ivf._scan_mask(view.alive, view.live == view.n, sealed, d)
    total = 0
    for q in state.prepare(queries):
        total += rq.rabitq_search_serial(
            q, view.X, index.signs, index.centroids, index.rcentroids, index.rcenter, nprobe,
            index.list_metric, sealed.offsets, words, fac, sealed.pos, st, dwords, dfac, d.pos,
            dt, d.order, d.offsets, view.alive, use_mask, rq.NO_BITS, False, index.metric,
            k * refine, k, -1, 1.0, index.bound_eps)[4]
    return total / len(queries)


def run(dataset: str, nlist: int, nprobe: int, refine: int, eps: list[float],
        k: int = 10, cache_dir: str | None = None) -> dict:
    """``cache_dir``: where the exact neighbours are cached (bench/datasets.py)."""
    import simplevector as sv

    ds = datasets.load(dataset, cache_dir=cache_dir)
    gt = ds.gt(k)[0]
    Q = np.ascontiguousarray(ds.queries, np.float32)
    path = tempfile.mkdtemp(prefix="sv-rabitq-bound-", dir=cache_dir)
    rows = []
    try:
        db = sv.open(path, checkpoint_interval=0, auto_index=False)
        ns = db.create_namespace("v", dim=ds.dim, metric=ds.metric,
                                 index=f"IVF{nlist},RaBitQ,Refine{refine}")
        ids = np.arange(ds.n)
        for s in range(0, ds.n, 10_000):
            ns.upsert(ids[s:s + 10_000].tolist(), ds.base[s:s + 10_000])
        t = time.perf_counter()
        ns.build_index()
        build_s = time.perf_counter() - t
        e = ns.engine_ns
        index = e._db._state(e._config().vid).index
        for q in Q[:100]:                   # kernels loaded before anything is timed
            ns.search(q, k, nprobe=nprobe)
        reference = None
        for value in [-1.0] + [v for v in eps if v >= 0]:
            index.bound_eps = float(value)
            got = []
            t = time.perf_counter()
            for q in Q:
                got.append(ns.search(q, k, nprobe=nprobe)[1][0])
            seconds = (time.perf_counter() - t) / len(Q)
            got = np.array([[-1 if i is None else int(i) for i in row] for row in got])
            if reference is None:
                reference = got
            rows.append({
                "eps0": value,
                "recall": float(np.mean([len(set(g) & set(w)) / k for g, w in zip(got, gt)])),
                "same_as_all": float(np.mean([len(set(g) & set(r)) / k
                                              for g, r in zip(got, reference)])),
                "reranked": _reranked(ns, Q, k, nprobe, refine),
                "candidates": k * refine,
                "us_per_query": seconds * 1e6,
            })
        db.close()
    finally:
        shutil.rmtree(path, ignore_errors=True)
    return {"command": "rabitq_bound", "dataset": ds.describe(), "machine": env.machine(),
            "versions": env.versions(),
            "params": {"nlist": nlist, "nprobe": nprobe, "refine": refine, "k": k},
            "build_s": build_s, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.rabitq_bound", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="spectral:n=60000,dim=768,queries=1000")
    p.add_argument("--nlist", type=int, default=256)
    p.add_argument("--nprobe", type=int, default=8)
    p.add_argument("--refine", type=int, default=8)
    p.add_argument("--eps", default="1.5,1.9,2.5,3",
                   help="comma-separated eps0 values (the reference, -1, always runs)")
    p.add_argument("--out", help="write the JSON result here")
    a = p.parse_args(argv)
    res = run(a.dataset, a.nlist, a.nprobe, a.refine, [float(v) for v in a.eps.split(",")])
    print(f"{res['dataset']['name']}: nlist {a.nlist}, nprobe {a.nprobe}, "
          f"refine {a.refine}; {res['machine'].get('cpu_model')}")
    print("eps0    recall@10  same-as-all  re-ranked  us/query")
    for r in res["rows"]:
        print(f"{r['eps0']:5.2f}   {r['recall']:.4f}     {r['same_as_all']:.4f}      "
              f"{r['reranked']:5.1f}/{r['candidates']}  {r['us_per_query']:7.1f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
