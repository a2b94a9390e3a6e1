"""Filtered search sweep: recall@10 and QPS by selectivity, SimpleVector against FAISS.

    python -m bench filtered [--dim 384 --n 60000 --nlist 256 --m 48 --refine 8]
        [--nprobe 16] [--selectivity 1,0.3,0.1,0.03,0.01,0.001,0.0001] [--queries 300]
        [--single 100] [--kind bucket|cluster] [--out FILE]

Data is SYNTHETIC (bench/ivf_dims.embedding_like: clustered unit rows with an
embedding-like spectrum, cosine). Each row gets a ``bucket`` (uniform 0..9999, so a
filter ``bucket < s * 10000`` matches a share s of rows scattered over every list) and a
``cluster`` (its generating cluster, 1,000 of them: ``--kind cluster`` filters on
``cluster < s * 1000``, rows that sit together, usually far from the query).

The first row runs without a filter (``where=None``): the unfiltered query the filtered
rows are compared with (the 100% row still evaluates its filter on every call). Each
filtered row also reports ``single_vs_unfiltered`` / ``batch_vs_unfiltered``: the median
over ``ROUNDS`` interleaved rounds (filtered, then unfiltered, same queries) of their QPS
ratio, which the machine's drift between rows does not move.

Recall@10 is tie-aware against exact search over the matching rows (numpy, float32 dot
products on the unit rows). Systems, same index parameters:

- ``simplevector``: ``IVF<nlist>,PQ<m>x8,Refine<refine>`` (or ``--spec``) through the public API,
  ``ns.query(q, where=..., nprobe=nprobe)``; the planner widens the scan or goes exact
  (the plan it took is reported). The filter is evaluated inside every call.
- ``faiss-ivfpq``: ``IVF<nlist>,PQ<m>x8np,RFlat`` with ``k_factor = refine`` and an
  ``IDSelectorBitmap`` of the matching ids in ``SearchParametersIVF`` (built once per
  selectivity, outside the timing), at the same nprobe: FAISS's own filtered search.
- ``faiss-flat``: ``IndexFlatIP`` with the same selector (exact; the QPS of brute force).
- with ``--peers chroma,lancedb``: ``chroma`` (HNSW M16, ``query(where=...)``) and
  ``lancedb-ivfpq`` (IVF_PQ, same nlist and M, ``nprobes``/``refine_factor`` as ours,
  ``where(..., prefilter=True)``; single queries only: its filtered search has no batch
  call, so its batch figure is the loop's).

Single queries run one per call (FAISS on one OpenMP thread), batches as one call.
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
from .ivf_dims import blas_info, embedding_like

K = 10
#: interleaved filtered / unfiltered rounds a row's QPS ratio is the median of
ROUNDS = 5


def exact_filtered(X, Q, allowed, k):
    """(ids, kth similarity) of the exact top-k among allowed rows, per query."""
    rows = np.flatnonzero(allowed)
    S = Q @ X[rows].T
    kk = min(k, len(rows))
    part = np.argpartition(-S, kk - 1, axis=1)[:, :kk]
    order = np.argsort(-np.take_along_axis(S, part, 1), axis=1)
    top = np.take_along_axis(part, order, 1)
    kth = np.take_along_axis(S, top[:, -1:], 1)[:, 0]
    return rows[top], kth


def recall(I, kth, X, Q, allowed, k):
    """Tie-aware: a returned allowed id counts when its similarity reaches the k-th one."""
    want = min(k, int(allowed.sum()))
    good = 0
    for i in range(len(Q)):
        got = [int(j) for j in I[i][:k] if j >= 0 and allowed[j]]
        good += min(want, sum(1 for j in got if float(X[j] @ Q[i]) >= kth[i] - 1e-5))
    return good / (want * len(Q))


def _pad(rows, k):
    out = np.full((len(rows), k), -1, np.int64)
    for i, r in enumerate(rows):
        r = list(r)[:k]
        out[i, :len(r)] = r
    return out


class Ours:
    def __init__(self, X, metadata, spec, workdir):
        import simplevector as sv
        self.dir = tempfile.mkdtemp(dir=workdir)
        self.db = sv.open(self.dir, durability="async", checkpoint_interval=0, auto_index=False)
        self.ns = self.db.create_namespace("f", dim=X.shape[1], metric="cosine", index=spec)
        for s in range(0, len(X), 10_000):
            e = min(len(X), s + 10_000)
            self.ns.upsert(ids=list(range(s, e)), vectors=X[s:e], metadata=metadata[s:e])
        t = time.perf_counter()
        self.ns.build_index()
        self.build_s = time.perf_counter() - t

    def single(self, Q, where, nprobe):
        t = time.perf_counter()
        out = [[h.id for h in self.ns.query(q, k=K, where=where, include=(), nprobe=nprobe)]
               for q in Q]
        qps = len(Q) / (time.perf_counter() - t)
        # the plan a single query takes (a batch may take another: planner.BATCH_QUERIES)
        self.single_plan = self.ns.query(Q[0], k=K, where=where, include=(), nprobe=nprobe,
                                         explain=True)[1]
        return qps, _pad(out, K)

    def batch(self, Q, where, nprobe):
        t = time.perf_counter()
        hits, plan = self.ns.query(Q, k=K, where=where, include=(), nprobe=nprobe,
                                   explain=True)
        qps = len(Q) / (time.perf_counter() - t)
        self.plan = plan
        return qps, _pad([[h.id for h in row] for row in hits], K)

    def close(self):
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Faiss:
    def __init__(self, X, factory, refine=None):
        import faiss
        self.faiss = faiss
        self.threads = faiss.omp_get_max_threads()
        t = time.perf_counter()
        self.index = faiss.index_factory(X.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not self.index.is_trained:
            self.index.train(X)
        self.index.add(X)
        self.build_s = time.perf_counter() - t
        self.refine = refine

    def params(self, allowed, nprobe):
        faiss = self.faiss
        if allowed is None:                  # unfiltered: no selector
            if self.refine is None:
                return None
            self._base = faiss.SearchParametersIVF(nprobe=nprobe)
            return faiss.IndexRefineSearchParameters(k_factor=float(self.refine),
                                                     base_index_params=self._base)
        self._bits = np.packbits(allowed.astype(np.uint8), bitorder="little")
        sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(self._bits))
        self._sel = sel
        if self.refine is None:
            return faiss.SearchParameters(sel=sel)
        base = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        self._base = base
        return faiss.IndexRefineSearchParameters(k_factor=float(self.refine),
                                                 base_index_params=base)

    def single(self, Q, params):
        self.faiss.omp_set_num_threads(1)
        try:
            t = time.perf_counter()
            out = [self.index.search(q[None, :], K, params=params)[1][0] for q in Q]
            qps = len(Q) / (time.perf_counter() - t)
        finally:
            self.faiss.omp_set_num_threads(self.threads)
        return qps, np.array(out)

    def batch(self, Q, params):
        t = time.perf_counter()
        I = self.index.search(Q, K, params=params)[1]
        return len(Q) / (time.perf_counter() - t), I


class ChromaPeer:
    """Chroma (HNSW, M16, ef_construction 200, cosine) with its ``where`` metadata filter;
    its query has no batch form faster than the loop, so batch is one call of all queries."""

    def __init__(self, X, metadata, workdir):
        import chromadb
        from chromadb.config import Settings
        self.dir = tempfile.mkdtemp(dir=workdir)
        self.client = chromadb.PersistentClient(path=self.dir,
                                                settings=Settings(anonymized_telemetry=False))
        t = time.perf_counter()
        try:
            self.col = self.client.create_collection("filtered", configuration={"hnsw": {
                "space": "cosine", "ef_construction": 200, "max_neighbors": 16}})
        except Exception:                     # older Chroma: collection metadata
            self.col = self.client.create_collection(
                "filtered", metadata={"hnsw:space": "cosine", "hnsw:construction_ef": 200,
                                      "hnsw:M": 16})
        step = min(5000, self.client.get_max_batch_size())
        for s in range(0, len(X), step):
            e = min(len(X), s + step)
            self.col.add(ids=[str(i) for i in range(s, e)], embeddings=X[s:e],
                         metadatas=metadata[s:e])
        self.build_s = time.perf_counter() - t

    def _ids(self, res):
        return _pad([[int(x) for x in ids] for ids in res["ids"]], K)

    def single(self, Q, where):
        t = time.perf_counter()
        out = [self._ids(self.col.query(query_embeddings=q[None, :], n_results=K,
                                        where=where, include=[]))[0] for q in Q]
        return len(Q) / (time.perf_counter() - t), np.array(out)

    def batch(self, Q, where):
        t = time.perf_counter()
        res = self.col.query(query_embeddings=Q, n_results=K, where=where, include=[])
        return len(Q) / (time.perf_counter() - t), self._ids(res)

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


class LancePeer:
    """LanceDB IVF_PQ (the same nlist and M, refine_factor = refine, nprobes = nprobe) with
    ``where(..., prefilter=True)``: the filter applied before the vector search."""

    def __init__(self, X, bucket, cluster, nlist, m, workdir):
        import lancedb
        import pyarrow as pa
        self.dir = tempfile.mkdtemp(dir=workdir)
        db = lancedb.connect(self.dir)
        flat = pa.array(np.ascontiguousarray(X, np.float32).ravel(), pa.float32())
        table = pa.table({"id": pa.array(np.arange(len(X), dtype=np.int64)),
                          "vector": pa.FixedSizeListArray.from_arrays(flat, X.shape[1]),
                          "bucket": pa.array(bucket.astype(np.int64)),
                          "cluster": pa.array(cluster.astype(np.int64))})
        t = time.perf_counter()
        self.tbl = db.create_table("f", data=table)
        self.tbl.create_index(metric="cosine", num_partitions=nlist, num_sub_vectors=m,
                              index_type="IVF_PQ", vector_column_name="vector")
        self.build_s = time.perf_counter() - t

    def _one(self, q, sql, nprobe, refine):
        s = self.tbl.search(q, vector_column_name="vector").distance_type("cosine")
        if sql is not None:
            s = s.where(sql, prefilter=True)
        s = s.nprobes(nprobe).refine_factor(refine)
        return s.select(["id", "_distance"]).limit(K).to_arrow().column("id").to_numpy()

    def single(self, Q, sql, nprobe, refine):
        t = time.perf_counter()
        out = [self._one(q, sql, nprobe, refine) for q in Q]
        return len(Q) / (time.perf_counter() - t), _pad(out, K)

    def close(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def run(args) -> dict:
    from simplevector.engine import warmup
    X = embedding_like(args.n, args.dim, 0)
    Q = embedding_like(args.queries, args.dim, 1)
    rng = np.random.default_rng(3)
    bucket = rng.integers(0, 10_000, args.n)
    # embedding_like draws cluster labels first from its seed-0 generator: the same labels
    cluster = np.random.default_rng(0).integers(0, 1000, args.n)
    metadata = [{"bucket": int(b), "cluster": int(c)} for b, c in zip(bucket, cluster)]
    spec = args.spec or f"IVF{args.nlist},PQ{args.m}x8,Refine{args.refine}"
    ours = Ours(X, metadata, spec, args.dir)
    ivf = Faiss(X, f"IVF{args.nlist},PQ{args.m}x8np,RFlat", args.refine)
    flat = Faiss(X, "Flat")
    peers = {}
    if "chroma" in args.peers:
        peers["chroma"] = ChromaPeer(X, metadata, args.dir)
    if "lancedb" in args.peers:
        peers["lancedb-ivfpq"] = LancePeer(X, bucket, cluster, args.nlist, args.m, args.dir)
    Qs = Q[:args.single]
    rows = []
    # the first row has no filter at all: the unfiltered query the filtered rows are held
    # against (a filter matching every row still pays its evaluation)
    for s in [None] + list(args.selectivity):
        if s is None:
            cut, where, allowed = None, None, np.ones(args.n, bool)
        elif args.kind == "bucket":
            cut = max(1, int(round(s * 10_000)))
            where, allowed = {"bucket": {"$lt": cut}}, bucket < cut
        else:
            cut = max(1, int(round(s * 1000)))
            where, allowed = {"cluster": {"$lt": cut}}, cluster < cut
        gt, kth = exact_filtered(X, Q, allowed, K)
        sel = None if where is None else allowed
        p_ivf, p_flat = ivf.params(sel, args.nprobe), flat.params(sel, args.nprobe)
        # warm-up: compile or load the kernels this selectivity's plans use (single and
        # batch, fallbacks included), then wait for the background load the first single
        # queries start (engine/warmup.py), so the timed calls run the kernels
        ours.single(Qs[:5], where, args.nprobe)
        ours.batch(Q, where, args.nprobe)
        warmup.wait(timeout=120.0)
        row = {"selectivity": float(allowed.mean()), "matched": int(allowed.sum()),
               "where": where, "loadavg": list(os.getloadavg())}
        for name, single, batch in (
                ("simplevector", lambda: ours.single(Qs, where, args.nprobe),
                 lambda: ours.batch(Q, where, args.nprobe)),
                ("faiss-ivfpq", lambda: ivf.single(Qs, p_ivf), lambda: ivf.batch(Q, p_ivf)),
                ("faiss-flat", lambda: flat.single(Qs, p_flat), lambda: flat.batch(Q, p_flat))):
            sq, sI = single()
            bq, bI = batch()
            row[name] = {"single_qps": sq, "batch_qps": bq,
                         "recall_single": recall(sI, kth[:len(Qs)], X, Qs, allowed, K),
                         "recall_batch": recall(bI, kth, X, Q, allowed, K)}
        column = "bucket" if args.kind == "bucket" else "cluster"
        for name, peer in peers.items():
            if name == "chroma":
                sq, sI = peer.single(Qs, where)
                bq, bI = peer.batch(Q, where)
            else:                             # no batch call with a filter: the loop
                sql = None if where is None else f"{column} < {cut}"
                sq, sI = peer.single(Qs, sql, args.nprobe, args.refine)
                bq, bI = sq, sI
            row[name] = {"single_qps": sq, "batch_qps": bq,
                         "recall_single": recall(sI, kth[:len(Qs)], X, Qs, allowed, K),
                         "recall_batch": recall(bI, kth[:len(bI)], X, Q[:len(bI)], allowed, K)}
            print(f"    {name:14s} recall {row[name]['recall_batch']:.3f} single "
                  f"{sq:7.0f} batch {bq:7.0f}", flush=True)
        if where is not None:
            # the filtered/unfiltered QPS ratio from interleaved rounds (this machine moves
            # a row's QPS by 1.5x between minutes; a ratio of neighbouring blocks does not)
            ss, bb = [], []
            for _ in range(ROUNDS):
                f1, _ = ours.single(Qs, where, args.nprobe)
                u1, _ = ours.single(Qs, None, args.nprobe)
                fb, _ = ours.batch(Q, where, args.nprobe)
                ub, _ = ours.batch(Q, None, args.nprobe)
                ss.append(f1 / u1)
                bb.append(fb / ub)
            row["simplevector"]["single_vs_unfiltered"] = float(np.median(ss))
            row["simplevector"]["batch_vs_unfiltered"] = float(np.median(bb))
            ours.batch(Q, where, args.nprobe)          # its plan, for the row
            ours.single(Qs[:1], where, args.nprobe)
        plan, splan = ours.plan, ours.single_plan
        row["simplevector"].update({"plan": plan.index, "lists": plan.lists,
                                    "max_lists": plan.max_lists, "reason": plan.reason,
                                    "plan_single": splan.index, "lists_single": splan.lists,
                                    "reason_single": splan.reason})
        rows.append(row)
        o, f, e = row["simplevector"], row["faiss-ivfpq"], row["faiss-flat"]
        label = "no filter" if where is None else f"{row['selectivity']:8.4%}"
        print(f"s {label:9s} ({row['matched']:6d} rows)  ours {o['plan']:18s} "
              f"(single {o['plan_single']}) "
              f"lists {o['lists']:6.1f}  recall {o['recall_batch']:.3f}  single "
              f"{o['single_qps']:7.0f}  batch {o['batch_qps']:7.0f} | faiss-ivfpq recall "
              f"{f['recall_batch']:.3f} single {f['single_qps']:7.0f} batch "
              f"{f['batch_qps']:7.0f} | faiss-flat single {e['single_qps']:6.0f} batch "
              f"{e['batch_qps']:7.0f}  load {row['loadavg'][0]:.2f}", flush=True)
        if "single_vs_unfiltered" in o:
            print(f"    ours / unfiltered, interleaved: single {o['single_vs_unfiltered']:.2f}x "
                  f"batch {o['batch_vs_unfiltered']:.2f}x", flush=True)
    out = {"machine": env.machine(), "versions": env.versions(), "blas": blas_info(),
           "params": {**vars(args), "spec": spec, "metric": "cosine",
                      "data": "synthetic embedding-like (bench/ivf_dims.embedding_like)"},
           "build_s": {"simplevector": ours.build_s, "faiss-ivfpq": ivf.build_s,
                       "faiss-flat": flat.build_s,
                       **{name: peer.build_s for name, peer in peers.items()}},
           "rows": rows, "loadavg_end": list(os.getloadavg())}
    ours.close()
    for peer in peers.values():
        peer.close()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench filtered", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    return execute(p.parse_args(argv))


def add_arguments(p):
    floats = lambda s: [float(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--n", type=int, default=60_000)
    p.add_argument("--nlist", type=int, default=256)
    p.add_argument("--m", type=int, default=48)
    p.add_argument("--refine", type=int, default=8)
    p.add_argument("--spec", default=None,
                   help="SimpleVector's index spec instead of IVF<nlist>,PQ<m>x8,Refine<refine> "
                        "(e.g. IVF256,RaBitQ,Refine8, or auto); the peers keep theirs")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--selectivity", type=floats,
                   default=[1.0, 0.3, 0.1, 0.03, 0.01, 0.001, 0.0001])
    p.add_argument("--kind", choices=("bucket", "cluster"), default="bucket")
    p.add_argument("--queries", type=int, default=300, help="batch size and query pool")
    p.add_argument("--single", type=int, default=100, help="single queries per selectivity")
    p.add_argument("--peers", type=lambda s: [x for x in s.split(",") if x], default=[],
                   help="also chroma and/or lancedb (bench extra): chroma,lancedb")
    p.add_argument("--dir", default=None)
    p.add_argument("--out", default=None)


def execute(args) -> int:
    m = env.machine()
    print(f"CPU {m['cpu_model']}, {m['cores']} cores, load {os.getloadavg()}, "
          f"numpy {np.__version__}, BLAS {blas_info()}", flush=True)
    res = run(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
