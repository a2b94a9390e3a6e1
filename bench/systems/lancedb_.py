"""LanceDB, embedded (local directory): an engine. Ingest is ``add`` of Arrow batches (each
one a committed table version: new data files plus a manifest); the IVF_PQ index is built by
``create_index`` after ingest and is part of the build time. Lance does not document an fsync
per commit on the local file system, so its durability against an OS crash is unverified.
The sweep is ``nprobes`` x ``refine_factor``."""

from __future__ import annotations

import time

import numpy as np

from .base import NPROBE_SWEEP, REFINE_SWEEP, System, ivf_defaults

BATCH = 50_000


class LanceDB(System):
    name = "lancedb-ivfpq"
    package = "lancedb"
    kind = "engine"
    durability = ("on disk after each add() commit (versioned files + manifest); "
                  "fsync on commit is not documented")

    def __init__(self, metric, dim, n, workdir, **config):
        super().__init__(metric, dim, n, workdir, **config)
        import lancedb
        import pyarrow as pa
        self.lancedb, self.pa = lancedb, pa
        nlist, m = ivf_defaults(n, dim)
        self.config.setdefault("num_partitions", nlist)
        self.config.setdefault("num_sub_vectors", m)
        self.dmetric = {"l2": "l2", "ip": "dot", "cosine": "cosine"}[metric]
        self.db = self.tbl = None

    def _batch(self, X, start):
        pa = self.pa
        flat = pa.array(np.ascontiguousarray(X, np.float32).ravel(), pa.float32())
        vec = pa.FixedSizeListArray.from_arrays(flat, self.dim)
        ids = pa.array(np.arange(start, start + len(X), dtype=np.int64))
        return pa.table({"id": ids, "vector": vec})

    def build(self, train, base):
        self.db = self.lancedb.connect(self.workdir)
        t0 = time.perf_counter()
        self.tbl = self.db.create_table("bench", data=self._batch(base[:BATCH], 0))
        for s in range(BATCH, len(base), BATCH):
            self.tbl.add(self._batch(base[s:s + BATCH], s))
        t1 = time.perf_counter()
        self.tbl.create_index(metric=self.dmetric, num_partitions=self.config["num_partitions"],
                              num_sub_vectors=self.config["num_sub_vectors"],
                              index_type="IVF_PQ", vector_column_name="vector")
        return {"ingest_s": t1 - t0, "index_s": time.perf_counter() - t1}

    def sweep(self):
        return [{"nprobe": p, "refine": r} for p in NPROBE_SWEEP
                if p <= self.config["num_partitions"] for r in REFINE_SWEEP]

    def default_params(self):
        return {"nprobe": 32, "refine": 4}

    def _search(self, q):
        s = self.tbl.search(q, vector_column_name="vector").distance_type(self.dmetric)
        if "nprobe" in self.params:
            s = s.nprobes(int(self.params["nprobe"]))
        if self.params.get("refine", 1) > 1:
            s = s.refine_factor(int(self.params["refine"]))
        return s

    def query_one(self, q, k):
        t = self._search(q).select(["id", "_distance"]).limit(k).to_arrow()
        return t.column("id").to_numpy().astype(np.int64)

    def query_batch(self, Q, k):
        try:
            t = self._search(list(Q)).select(["id", "_distance"]).limit(k).to_arrow()
        except Exception:                     # no multi-vector search in this version
            return super().query_batch(Q, k)
        qi = t.column("query_index").to_numpy()
        ids = t.column("id").to_numpy()
        rows = [ids[qi == i] for i in range(len(Q))]
        out = np.full((len(Q), k), -1, np.int64)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r[:k]
        return out

    def reopen(self):
        self.db = self.lancedb.connect(self.workdir)
        self.tbl = self.db.open_table("bench")

    def close(self):
        self.db = self.tbl = None
