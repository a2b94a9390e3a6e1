"""IVF-PQ at embedding-model dimensions: SimpleVector against FAISS, same parameters.

    python -m bench.ivf_dims --dim 384 --n 60000 [--nlist 256 --m 48 --refine 8]
        [--nprobe 8,16,32,64,128] [--queries 1000] [--single 200] [--repeats 3]
        [--per-list] [--out FILE]
    python -m bench.ivf_dims --tables-sweep [--n 60000] [--data glove --nlist 1024 --m 25]

Data is SYNTHETIC (nothing is downloaded): clustered rows with an embedding-like spectrum
(singular values decaying as i^-0.6, a random rotation, 1,000 clusters), unit length,
cosine. SimpleVector runs through the public API (``create_namespace(index=
"IVF<nlist>,PQ<m>x8,Refine<refine>")``, upsert, ``build_index``, ``query``); FAISS is
``IndexIVFPQ`` (inner product over the same unit rows, no polysemous training) inside
``IndexRefineFlat`` with ``k_factor = refine``. Single queries: FAISS on one OpenMP thread
(as the harness and ann-benchmarks do), SimpleVector as it runs by default (one thread,
two for scans of more than 10k codes); batches: both on every thread. Each repeat times
ours then FAISS's or the other way round (alternating). ``--per-list`` also times the
previous per-list l2 tables on the same index (``before``). ``--tables-sweep`` times the
two l2 table strategies on the same index at several sub-vector widths (the measurement
behind ``kernels/adctables.PRECOMPUTED_MIN_DSUB``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np

from . import env


def embedding_like(n: int, dim: int, seed: int, nclusters: int = 1000) -> np.ndarray:
    """Synthetic unit rows: cluster centres and within-cluster noise share a decaying
    spectrum (like sentence embeddings, whose variance sits in few directions)."""
    rng = np.random.default_rng(seed)
    spec = np.arange(1, dim + 1, dtype=np.float64) ** -0.6
    rot, _ = np.linalg.qr(np.random.default_rng(12345).standard_normal((dim, dim)))
    centres = np.random.default_rng(777).standard_normal((nclusters, dim)) * spec
    lab = rng.integers(0, nclusters, n)
    X = centres[lab] + 0.6 * rng.standard_normal((n, dim)) * spec
    X = (X @ rot).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return X


def exact_topk(X, Q, k):
    out = np.empty((len(Q), k), np.int64)
    for s in range(0, len(Q), 256):
        S = Q[s:s + 256] @ X.T
        part = np.argpartition(-S, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(S, part, 1), axis=1)
        out[s:s + 256] = np.take_along_axis(part, order, 1)
    return out


def recall(I, gt, X, Q, k):
    """Tie-aware recall@k: a hit counts if its exact similarity reaches the k-th true one."""
    hits = 0
    for i in range(len(Q)):
        kth = float(X[gt[i, k - 1]] @ Q[i])
        got = [j for j in I[i][:k] if j >= 0]
        hits += min(k, sum(1 for j in got if float(X[j] @ Q[i]) >= kth - 1e-6))
    return hits / (k * len(Q))


def live_index(ns):
    """The namespace's live IVFIndex (bench only: to switch its table strategy)."""
    db = ns._db
    return db._state(ns._config().vid).index


def per_list_tables(index):
    m, ksub, _ = index.codebooks.shape
    return np.zeros((0, m, ksub), np.float32)


#: l2 table strategies the bench can switch a live index to (kernels/adctables.py)
STRATEGIES = ("row_terms", "precomputed", "per_list")


def set_tables(index, name, pre=None):
    """Switch a live index's l2 ADC tables: "row_terms" (the engine's), "precomputed" (the
    previous default from 4-dim sub-vectors; ``pre`` reuses computed terms) or "per_list"."""
    index._row_terms = name == "row_terms"
    index._pre = (pre if pre is not None else index._precomputed()) if name == "precomputed" \
        else per_list_tables(index)
    assert index.table_strategy == name, (index.table_strategy, name)


def load_data(args):
    """(base, queries): the minilm set (bench/textsets.py, real embeddings) or synthetic."""
    if args.data == "minilm":
        from .textsets import minilm_vectors
        V, _ = minilm_vectors(args.n + args.queries)
        return np.ascontiguousarray(V[:args.n]), np.ascontiguousarray(V[args.n:])
    if args.data == "glove":            # the harness's held-out split, unit rows (cosine)
        from .datasets import glove, normalize
        ds = glove(n=args.n, queries=args.queries)
        return normalize(ds.base), normalize(ds.queries)
    return embedding_like(args.n, args.dim, 0), embedding_like(args.queries, args.dim, 1)


class SV:
    def __init__(self, X, spec, workdir):
        import simplevector as sv
        self.dir = tempfile.mkdtemp(dir=workdir)
        self.db = sv.open(self.dir, durability="async", checkpoint_interval=0, auto_index=False)
        self.ns = self.db.create_namespace("b", dim=X.shape[1], metric="cosine", index=spec)
        for s in range(0, len(X), 10_000):
            self.ns.upsert(ids=list(range(s, min(len(X), s + 10_000))), vectors=X[s:s + 10_000])
        t = time.perf_counter()
        self.ns.build_index()
        self.build_s = time.perf_counter() - t
        self.index = live_index(self.ns)

    def one(self, q, k, nprobe):
        return [h.id for h in self.ns.query(q, k=k, include=(), nprobe=nprobe)]

    def batch(self, Q, k, nprobe):
        res = self.ns.query(Q, k=k, include=(), nprobe=nprobe)
        out = np.full((len(Q), k), -1, np.int64)
        for i, hits in enumerate(res):
            out[i, :len(hits)] = [h.id for h in hits]
        return out

    def close(self):
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class FAISS:
    def __init__(self, X, nlist, m, refine):
        import faiss
        self.faiss = faiss
        self.threads = faiss.omp_get_max_threads()
        t = time.perf_counter()
        self.index = faiss.index_factory(X.shape[1], f"IVF{nlist},PQ{m}x8np,RFlat",
                                         faiss.METRIC_INNER_PRODUCT)
        self.index.train(X)
        self.index.add(X)
        self.build_s = time.perf_counter() - t
        faiss.downcast_index(self.index).k_factor = float(refine)
        self.ivf = faiss.extract_index_ivf(self.index)

    def one(self, q, k, nprobe):
        self.ivf.nprobe = nprobe
        self.faiss.omp_set_num_threads(1)
        try:
            _, ids = self.index.search(q[None, :], k)
        finally:
            self.faiss.omp_set_num_threads(self.threads)
        return ids[0]

    def batch(self, Q, k, nprobe):
        self.ivf.nprobe = nprobe
        return self.index.search(Q, k)[1]


def time_single(fn, Q, k, nprobe):
    t = time.perf_counter()
    out = [fn(q, k, nprobe) for q in Q]
    return len(Q) / (time.perf_counter() - t), out


def time_batch(fn, Q, k, nprobe):
    t = time.perf_counter()
    out = fn(Q, k, nprobe)
    return len(Q) / (time.perf_counter() - t), out


def pad(rows, k):
    out = np.full((len(rows), k), -1, np.int64)
    for i, r in enumerate(rows):
        r = list(r)[:k]
        out[i, :len(r)] = r
    return out


def run(args) -> dict:
    from simplevector.engine.kernels.threads import single_threaded  # noqa: F401 (warm)
    k = 10
    X, Q = load_data(args)
    gt = exact_topk(X, Q, k)
    spec = f"IVF{args.nlist},PQ{args.m}x8,Refine{args.refine}"
    ours = SV(X, spec, args.dir)
    theirs = FAISS(X, args.nlist, args.m, args.refine)
    strategies = {"after": "row_terms"}
    if args.per_list:
        strategies["before"] = "per_list"
    if args.before:
        strategies["before"] = "precomputed"
    pre = ours.index._precomputed() if args.before else None
    Qs = Q[:args.single]
    rows = []
    for nprobe in args.nprobe:
        row = {"nprobe": nprobe, "loadavg": list(os.getloadavg())}
        for fn in (theirs.one, theirs.batch, ours.one, ours.batch):       # warm-up
            fn(Q[:50], k, nprobe) if fn.__name__ == "batch" else fn(Q[0], k, nprobe)
        for name, tables in strategies.items():
            set_tables(ours.index, tables, pre)
            s_ours, s_f, b_ours, b_f = [], [], [], []
            for rep in range(args.repeats):
                pairs = [(time_single, ours.one, s_ours), (time_single, theirs.one, s_f),
                         (time_batch, ours.batch, b_ours), (time_batch, theirs.batch, b_f)]
                order = [0, 1, 2, 3] if rep % 2 == 0 else [1, 0, 3, 2]
                for i in order:
                    timer, fn, acc = pairs[i]
                    acc.append(timer(fn, Qs if timer is time_single else Q, k, nprobe))
            med = lambda acc: float(np.median([a[0] for a in acc]))  # noqa: E731
            r_single = [a[0] / b[0] for a, b in zip(s_ours, s_f)]
            r_batch = [a[0] / b[0] for a, b in zip(b_ours, b_f)]
            row[name] = {
                "single_qps": med(s_ours), "faiss_single_qps": med(s_f),
                "single_ratio": float(np.median(r_single)),
                "batch_qps": med(b_ours), "faiss_batch_qps": med(b_f),
                "batch_ratio": float(np.median(r_batch)),
                "recall_single": recall(pad(s_ours[0][1], k), gt[:args.single], X, Qs, k),
                "recall_batch": recall(b_ours[0][1], gt, X, Q, k),
                "faiss_recall_single": recall(pad(s_f[0][1], k), gt[:args.single], X, Qs, k),
                "faiss_recall_batch": recall(b_f[0][1], gt, X, Q, k),
                "samples": {"single": r_single, "batch": r_batch},
            }
        row["loadavg_end"] = list(os.getloadavg())
        rows.append(row)
        print_row(row, strategies)
    set_tables(ours.index, "row_terms")
    info = ours.index.info()
    out = {"machine": env.machine(), "versions": env.versions(), "blas": blas_info(),
           "threads": {"numba": numba_threads(), "faiss_batch": theirs.threads,
                       "faiss_single": 1},
           "params": {**vars(args), "spec": spec, "metric": "cosine",
                      "data": (args.data if args.data != "synthetic" else
                               "synthetic embedding-like (bench/ivf_dims.embedding_like)"),
                      "strategies": strategies},
           "adc_tables": info["adc_tables"], "row_terms_bytes": info["row_terms_bytes"],
           "build_s": {"simplevector": ours.build_s, "faiss": theirs.build_s},
           "rows": rows}
    ours.close()
    return out


def print_row(row, strategies):
    la = row["loadavg"][0]
    for name in strategies:
        r = row[name]
        print(f"{name:6s} nprobe {row['nprobe']:4d}  single {r['single_qps']:8.0f} vs "
              f"{r['faiss_single_qps']:8.0f} = {r['single_ratio']:.2f}x  batch "
              f"{r['batch_qps']:8.0f} vs {r['faiss_batch_qps']:8.0f} = {r['batch_ratio']:.2f}x  "
              f"recall {r['recall_single']:.3f}/{r['recall_batch']:.3f} faiss "
              f"{r['faiss_recall_single']:.3f}  load {la:.2f}", flush=True)


def tables_sweep(args) -> dict:
    """Per-list against precomputed l2 tables on one index per (dim, dsub), one thread."""
    from simplevector.engine.indexspec import IndexSpec
    from simplevector.engine.ivf import IVFIndex
    from simplevector.engine.kernels.adctables import precompute_l2_terms
    from simplevector.engine.kernels.distances import COSINE
    from simplevector.engine.kernels.threads import single_threaded
    out = []
    shapes = ((48, 2), (48, 4), (96, 2), (96, 4), (384, 8))
    if args.data != "synthetic":        # the real set at its own dim, --m and --nlist
        X0, Q0 = load_data(args)
        shapes = ((X0.shape[1], X0.shape[1] // args.m),)
    for dim, dsub in shapes:
        m = dim // dsub
        if args.data != "synthetic":
            X, Q, nlist = X0, Q0[:200], args.nlist
        else:
            X, Q, nlist = embedding_like(args.n, dim, 0), embedding_like(200, dim, 1), 256
        index = IVFIndex.train(IndexSpec.parse(f"IVF{nlist},PQ{m}x8,Refine1"),
                               X[:100_000], COSINE)
        lists, codes = index.encode(X)
        index.load_lists(np.arange(len(X)), lists, codes)
        mask = np.ones(len(X), bool)
        pre = precompute_l2_terms(index.centroids, index.codebooks)
        for nprobe in (8, 32):
            t = {name: [] for name in STRATEGIES}
            with single_threaded():
                for name in STRATEGIES:                     # warm-up (kernel load)
                    set_tables(index, name, pre)
                    for q in Q[:20]:
                        index.search(X, q, 10, nprobe, 1, mask, True)
                for rep in range(args.repeats + 2 * (args.repeats // 2)):
                    for name in STRATEGIES[rep % 3:] + STRATEGIES[:rep % 3]:  # rotate
                        set_tables(index, name, pre)
                        s = time.perf_counter()
                        for q in Q:
                            index.search(X, q, 10, nprobe, 1, mask, True)
                        t[name].append((time.perf_counter() - s) / len(Q) * 1e6)
            r = {"dim": dim, "dsub": dsub, "m": m, "nprobe": nprobe,
                 "loadavg": list(os.getloadavg())}
            for name in STRATEGIES:
                r[f"{name}_us"] = float(np.median(t[name]))
            r["per_list_over_precomputed"] = r["per_list_us"] / r["precomputed_us"]
            r["precomputed_over_row_terms"] = r["precomputed_us"] / r["row_terms_us"]
            r["per_list_over_row_terms"] = r["per_list_us"] / r["row_terms_us"]
            print(f"dim {dim:4d} dsub {dsub:2d} m {m:4d} nprobe {nprobe:3d}: per-list "
                  f"{r['per_list_us']:7.1f} us, precomputed {r['precomputed_us']:7.1f} us, "
                  f"row terms {r['row_terms_us']:7.1f} us; per-list/row "
                  f"{r['per_list_over_row_terms']:.2f} precomputed/row "
                  f"{r['precomputed_over_row_terms']:.2f}  load {r['loadavg'][0]:.2f}",
                  flush=True)
            out.append(r)
    return {"machine": env.machine(), "blas": blas_info(), "tables_sweep": out}


def blas_info() -> str:
    try:
        from threadpoolctl import threadpool_info
        return "; ".join(f"{i.get('internal_api')} {i.get('version')} "
                         f"{i.get('architecture')} threads={i.get('num_threads')}"
                         for i in threadpool_info() if i.get("user_api") == "blas")
    except ImportError:
        cfg = np.show_config(mode="dicts") if hasattr(np, "show_config") else {}
        return str(cfg.get("Build Dependencies", {}).get("blas", ""))


def numba_threads() -> int:
    import numba
    return numba.get_num_threads()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.ivf_dims", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--nlist", type=int, default=256)
    p.add_argument("--m", type=int, default=48)
    p.add_argument("--refine", type=int, default=8)
    p.add_argument("--nprobe", default="8,16,32,64,128",
                   type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--queries", type=int, default=1000, help="batch size and query pool")
    p.add_argument("--single", type=int, default=200, help="single queries per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--per-list", action="store_true",
                   help="also time per-list l2 tables (the previous code) on the same index")
    p.add_argument("--before", action="store_true",
                   help="also time precomputed l2 tables (the previous default at 384-d) on the "
                        "same index")
    p.add_argument("--data", choices=("synthetic", "minilm", "glove"), default="synthetic",
                   help="minilm: the real 384-d set of bench/textsets.py; glove: GloVe 50-d "
                        "(--dim is then the data's)")
    p.add_argument("--tables-sweep", action="store_true")
    p.add_argument("--dir", default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    m = env.machine()
    print(f"CPU {m['cpu_model']}, {m['cores']} cores, load {os.getloadavg()}, "
          f"numpy {np.__version__}, BLAS {blas_info()}", flush=True)
    res = tables_sweep(args) if args.tables_sweep else run(args)
    res["loadavg_end"] = list(os.getloadavg())
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
