"""The sweep behind ``index="auto"`` (engine/indexspec.py ``auto_spec``): nlist and PQ m per
(n, dim), on real data.

    python -m bench.auto_sweep [--data glove|minilm|both] [--nlist 512,1024,2048]
        [--queries 200] [--target 0.9] [--out FILE]

For each data set and candidate spec it trains an IVFIndex as ``build_index`` does
(engine/ivf.py, one process, one at a time), loads every row, and reports: training
seconds, the largest list over the mean (what the health report's imbalance check reads),
and single-query time at the smallest nprobe in 8..256 whose recall@10 (tie-aware, against
exact search) reaches ``--target``, refine 4, one thread. Times are from a shared machine:
compare specs within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from . import env

NPROBES = (8, 16, 32, 64, 128, 256)


def _data(name: str, queries: int):
    from .datasets import glove, normalize
    if name == "glove":
        ds = glove(queries=queries)
        return normalize(ds.base), normalize(ds.queries)
    from .textsets import minilm_vectors
    V, _ = minilm_vectors(60_000 + queries)
    return np.ascontiguousarray(V[:60_000]), np.ascontiguousarray(V[60_000:])


def _gt(X, Q, k):
    out = np.empty((len(Q), k), np.int64)
    for s in range(0, len(Q), 100):
        S = Q[s:s + 100] @ X.T
        part = np.argpartition(-S, k, axis=1)[:, :k]
        out[s:s + 100] = part
    return out


def _recall(X, Q, gt, got, k):
    hits = 0
    for i in range(len(Q)):
        kth = float(np.min(X[gt[i]] @ Q[i]))
        hits += min(k, sum(1 for p in got[i][:k] if float(X[p] @ Q[i]) >= kth - 1e-6))
    return hits / (k * len(Q))


def measure(X, Q, spec_text: str, target: float, k: int = 10) -> dict:
    from simplevector.engine.indexspec import IndexSpec
    from simplevector.engine.ivf import IVFIndex
    from simplevector.engine.kernels.distances import COSINE
    from simplevector.engine.kernels.threads import single_threaded
    spec = IndexSpec.parse(spec_text)
    t0 = time.perf_counter()
    # a seeded random sample, as build_index trains on (GloVe's first rows are its most
    # frequent words: training on them made lists 3-5x more imbalanced)
    train = X if len(X) <= 100_000 else \
        X[np.sort(np.random.default_rng(0).choice(len(X), 100_000, replace=False))]
    index = IVFIndex.train(spec, train, COSINE)
    lists, codes = index.encode(X)
    index.load_lists(np.arange(len(X)), lists, codes)
    train_s = time.perf_counter() - t0
    info = index.info()
    gt = _gt(X, Q, k)
    mask = np.ones(len(X), bool)
    row = {"spec": spec_text, "train_and_load_s": round(train_s, 1),
           "list_imbalance": info["list_imbalance"], "empty_lists": info["empty_lists"],
           "loadavg": os.getloadavg()[0]}
    with single_threaded():
        for nprobe in NPROBES:
            if nprobe > index.nlist:
                break
            for q in Q[:10]:
                index.search(X, q, k, nprobe, 4, mask, True)
            t = time.perf_counter()
            got = [index.search(X, q, k, nprobe, 4, mask, True)[1] for q in Q]
            us = (time.perf_counter() - t) / len(Q) * 1e6
            r = _recall(X, Q, gt, got, k)
            if r >= target:
                row.update(nprobe=nprobe, recall=round(r, 4), query_us=round(us, 1))
                break
        else:
            row.update(nprobe=None, recall=round(r, 4), query_us=round(us, 1))
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.auto_sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=("glove", "minilm", "both"), default="both")
    p.add_argument("--glove-specs", default="IVF512,PQ25x8,Refine4,IVF1024,PQ25x8,Refine4,"
                   "IVF2048,PQ25x8,Refine4")
    p.add_argument("--minilm-specs", default="IVF256,PQ96x8,Refine4,IVF512,PQ96x8,Refine4,"
                   "IVF1024,PQ96x8,Refine4")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    def specs(text):
        parts = text.split(",")
        return [",".join(parts[i:i + 3]) for i in range(0, len(parts), 3)]
    out = {"machine": env.machine(), "target": args.target, "rows": {}}
    for name in (("glove", "minilm") if args.data == "both" else (args.data,)):
        X, Q = _data(name, args.queries)
        out["rows"][name] = [measure(X, Q, s, args.target)
                             for s in specs(getattr(args, f"{name}_specs"))]
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
