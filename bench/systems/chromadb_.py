"""Chroma, embedded (``PersistentClient``): an engine. Records go to SQLite (WAL-mode
journal) as each ``add`` returns; the HNSW index (hnswlib) is persisted from that log in the
background/on batch thresholds. Cosine uses its ``cosine`` space. The sweep is HNSW
``ef_search`` where this Chroma version lets a collection change it; else defaults only."""

from __future__ import annotations

import numpy as np

from .base import System

EF_SWEEP = (16, 32, 64, 128, 256)


class Chroma(System):
    name = "chroma"
    package = "chromadb"
    kind = "engine"
    durability = ("records are in SQLite (WAL journal) when add() returns; "
                  "the HNSW index is rebuilt from that log / flushed in the background")

    def __init__(self, metric, dim, n, workdir, **config):
        super().__init__(metric, dim, n, workdir, **config)
        import chromadb
        self.chromadb = chromadb
        self.space = {"l2": "l2", "ip": "ip", "cosine": "cosine"}[metric]
        self.client = self.col = None
        self.tunable = True

    def _client(self):
        from chromadb.config import Settings
        return self.chromadb.PersistentClient(path=self.workdir,
                                              settings=Settings(anonymized_telemetry=False))

    def build(self, train, base):
        self.client = self._client()
        try:
            self.col = self.client.create_collection(
                "bench", configuration={"hnsw": {"space": self.space, "ef_construction": 200,
                                                 "max_neighbors": 16}})
        except Exception:
            self.col = self.client.create_collection(
                "bench", metadata={"hnsw:space": self.space, "hnsw:construction_ef": 200,
                                   "hnsw:M": 16})
        step = min(5000, self.client.get_max_batch_size())
        for s in range(0, len(base), step):
            X = base[s:s + step]
            self.col.add(ids=[str(i) for i in range(s, s + len(X))], embeddings=X)
        return {}

    def sweep(self):
        return [{"ef": ef} for ef in EF_SWEEP] if self.tunable else [{}]

    def default_params(self):
        return {"ef": 128} if self.tunable else {}

    def set_search_params(self, **params):
        super().set_search_params(**params)
        if self.col is not None and "ef" in params:
            try:
                self.col.modify(configuration={"hnsw": {"ef_search": int(params["ef"])}})
            except Exception as e:
                self.tunable = False
                raise RuntimeError(f"chroma cannot change ef_search here: {e}") from e

    def query_batch(self, Q, k):
        res = self.col.query(query_embeddings=np.ascontiguousarray(Q), n_results=k, include=[])
        out = np.full((len(Q), k), -1, np.int64)
        for i, ids in enumerate(res["ids"]):
            out[i, : len(ids)] = [int(x) for x in ids]
        return out

    def query_one(self, q, k):
        res = self.col.query(query_embeddings=q[None, :], n_results=k, include=[])
        return np.array([int(x) for x in res["ids"][0]], np.int64)

    def reopen(self):
        self.client = self._client()
        self.col = self.client.get_collection("bench")

    def close(self):
        self.client = self.col = None
