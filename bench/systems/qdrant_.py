"""Qdrant client, local mode (``QdrantClient(path=...)``): the in-process Python
implementation meant for tests and prototypes. Points are kept in memory and each point
is committed to a SQLite file in its own transaction (one commit, so one fsync, per point:
ingest is bound by the disk's sync latency); search is exact (numpy brute force, no HNSW),
so it is slow and skipped above 50,000 rows (pass a smaller --n, or run the Qdrant
server)."""

from __future__ import annotations

import numpy as np

from .base import System


class QdrantLocal(System):
    name = "qdrant-local"
    package = "qdrant-client"
    kind = "engine"
    durability = "durable per point: each point is its own SQLite commit (local mode)"
    max_n = 50_000

    def __init__(self, metric, dim, n, workdir, **config):
        super().__init__(metric, dim, n, workdir, **config)
        from qdrant_client import QdrantClient, models
        self.QdrantClient, self.models = QdrantClient, models
        self.distance = {"l2": models.Distance.EUCLID, "ip": models.Distance.DOT,
                         "cosine": models.Distance.COSINE}[metric]
        self.client = None

    def build(self, train, base):
        m = self.models
        self.client = self.QdrantClient(path=self.workdir)
        self.client.create_collection("bench", vectors_config=m.VectorParams(
            size=self.dim, distance=self.distance))
        step = 2000
        for s in range(0, len(base), step):
            X = base[s:s + step]
            self.client.upsert("bench", points=m.Batch(ids=list(range(s, s + len(X))),
                                                       vectors=X.tolist()), wait=True)
        return {}

    def query_one(self, q, k):
        res = self.client.query_points("bench", query=q.tolist(), limit=k)
        return np.array([p.id for p in res.points], np.int64)

    def query_batch(self, Q, k):
        reqs = [self.models.QueryRequest(query=q.tolist(), limit=k) for q in Q]
        res = self.client.query_batch_points("bench", requests=reqs)
        out = np.full((len(Q), k), -1, np.int64)
        for i, r in enumerate(res):
            ids = [p.id for p in r.points][:k]
            out[i, : len(ids)] = ids
        return out

    def reopen(self):
        self.client = self.QdrantClient(path=self.workdir)

    def close(self):
        if self.client is not None:
            self.client.close()
        self.client = None
