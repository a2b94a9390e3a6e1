"""SimpleVector, embedded: one database directory, one namespace.

Ingest is ``upsert`` in batches with ``durability="sync"``: every batch returns only after its
WAL record is fdatasync'ed, so the build figure is durable ingest. The IVF-PQ index is trained
by ``build_index()`` right after ingest (``auto_index=False``: no background training races the
measurement) and is part of the build time; ``persist()`` checkpoints (bundles written, the WAL
cut to its default retention), so the disk figure is after a checkpoint and reopen loads it.
"""

from __future__ import annotations

import time

import numpy as np

from .base import NPROBE_SWEEP, REFINE_SWEEP, System, Unavailable, ivf_defaults

BATCH = 5000


def _open(path):
    import simplevector as sv
    try:
        return sv.open(path, durability="sync", checkpoint_interval=0, auto_index=False)
    except TypeError:       # sv.open without auto_index: go to the engine class directly
        from simplevector.engine.database import Database
        return Database(path, durability="sync", checkpoint_interval=0, auto_index=False)


class SimpleVectorFlat(System):
    name = "simplevector-flat"
    package = "simplevector"
    kind = "engine"
    durability = "durable: each upsert batch is fdatasync'ed in the WAL before it returns"
    spec = "Flat"

    def __init__(self, metric, dim, n, workdir, **config):
        super().__init__(metric, dim, n, workdir, **config)
        # imported here, as the FAISS adapter imports faiss in its __init__: the timed
        # reopen then measures the open and the first answer, not the package import
        import simplevector  # noqa: F401
        self.db = None
        self.ns = None
        self.config.setdefault("batch", BATCH)
        self.config.setdefault("index", self._spec())

    def _spec(self) -> str:
        return self.spec

    def build(self, train, base):
        self.db = _open(self.workdir)
        self.ns = self.db.create_namespace("bench", dim=self.dim, metric=self.metric,
                                           index=self.config["index"])
        batch = self.config["batch"]
        t0 = time.perf_counter()
        for s in range(0, len(base), batch):
            self.ns.upsert(list(range(s, min(s + batch, len(base)))), base[s:s + batch])
        info = {"ingest_s": time.perf_counter() - t0}
        if self.config["index"] != "Flat":
            t1 = time.perf_counter()
            try:
                index_info = self.ns.build_index()
            except ImportError as e:
                raise Unavailable(f"IVF-PQ kernels are not importable yet: {e}") from e
            info["index_s"] = time.perf_counter() - t1
            info["index_info"] = {k: v for k, v in index_info.items()
                                  if isinstance(v, (int, float, str, type(None)))}
        return info

    def query_one(self, q, k):
        hits = self.ns.query(q, k=k, include=(), **self.params)
        return np.fromiter((h.id for h in hits), np.int64, count=len(hits))

    def settle(self):
        # the first queries are answered in numpy while the kernels load on a background
        # thread (engine/warmup.py); time the kernels, not that thread's competition
        from simplevector.engine import warmup
        warmup.wait(timeout=120.0)

    def query_batch(self, Q, k):
        # Namespace.search: the same query as fixed-shape arrays (FAISS's contract, what the
        # FAISS adapter returns), no Hit object per result
        _, ids = self.ns.search(Q, k=k, **self.params)
        return np.where(ids == None, -1, ids).astype(np.int64)  # noqa: E711

    def persist(self):
        # the engine is durable without it; a checkpoint is what its own checkpointer (or a
        # clean close) does next, and the state the disk figure is asked "after" (issue 10):
        # bundles written, the WAL cut to its default retention. FAISS's write_index is its
        # persist step, timed the same way (persist_s, not in the build time).
        self.db.checkpoint()

    def reopen(self):
        self.close()
        self.db = _open(self.workdir)
        self.ns = self.db.namespace("bench")

    def close(self):
        if self.db is not None:
            self.db.close()
        self.db = self.ns = None


class SimpleVectorIVFPQ(SimpleVectorFlat):
    name = "simplevector-ivfpq"

    def _spec(self) -> str:
        nlist, m = ivf_defaults(self.n, self.dim)
        nlist = self.config.get("nlist", nlist)
        m = self.config.get("pq_m", m)
        return f"IVF{nlist},PQ{m}x8,Refine4"

    def sweep(self):
        nlist = int(self.config["index"].split(",")[0][3:])
        return [{"nprobe": p, "refine": r} for p in NPROBE_SWEEP if p <= nlist
                for r in REFINE_SWEEP]

    def default_params(self):
        return {"nprobe": 32, "refine": 4}


#: RaBitQ's refine sweep: 1-bit estimates rank coarsely, so every point re-ranks.
RABITQ_REFINE_SWEEP = (4, 8, 16)


class SimpleVectorRaBitQ(SimpleVectorFlat):
    """IVF-RaBitQ (engine/rabitq.py): the same nlist as the IVF-PQ adapter, 1-bit codes."""
    name = "simplevector-rabitq"

    def _spec(self) -> str:
        nlist, _ = ivf_defaults(self.n, self.dim)
        nlist = self.config.get("nlist", nlist)
        return f"IVF{nlist},RaBitQ"

    def sweep(self):
        nlist = int(self.config["index"].split(",")[0][3:])
        return [{"nprobe": p, "refine": r} for p in NPROBE_SWEEP if p <= nlist
                for r in RABITQ_REFINE_SWEEP]

    def default_params(self):
        return {"nprobe": 32, "refine": 8}
