"""hnswlib: an in-memory HNSW library (M=16, ef_construction=200). ``persist`` is
``save_index`` (timed apart); the sweep is ``ef`` (>= k)."""

from __future__ import annotations

import os

import numpy as np

from .base import EF_SWEEP, System, normalize


class Hnswlib(System):
    name = "hnswlib"
    package = "hnswlib"
    kind = "library"

    def __init__(self, metric, dim, n, workdir, **config):
        super().__init__(metric, dim, n, workdir, **config)
        import hnswlib
        self.hnswlib = hnswlib
        self.config.setdefault("M", 16)
        self.config.setdefault("ef_construction", 200)
        self.space = {"l2": "l2", "ip": "ip", "cosine": "ip"}[metric]
        self.index = None
        self.path = os.path.join(workdir, "index.hnsw")

    def _prep(self, X):
        X = np.ascontiguousarray(X, np.float32)
        return normalize(X) if self.metric == "cosine" else X

    def build(self, train, base):
        self.index = self.hnswlib.Index(space=self.space, dim=self.dim)
        self.index.init_index(max_elements=len(base), M=self.config["M"],
                              ef_construction=self.config["ef_construction"], random_seed=100)
        self.index.add_items(self._prep(base), np.arange(len(base)), num_threads=-1)
        return {}

    def persist(self):
        os.makedirs(self.workdir, exist_ok=True)
        self.index.save_index(self.path)

    def sweep(self):
        return [{"ef": ef} for ef in EF_SWEEP]

    def default_params(self):
        return {"ef": 128}

    def set_search_params(self, **params):
        super().set_search_params(**params)
        if self.index is not None and "ef" in params:
            self.index.set_ef(int(params["ef"]))

    def query_one(self, q, k):
        labels, _ = self.index.knn_query(self._prep(q[None, :]), k=k, num_threads=1)
        return labels[0].astype(np.int64)

    def query_batch(self, Q, k):
        labels, _ = self.index.knn_query(self._prep(Q), k=k, num_threads=-1)
        return labels.astype(np.int64)

    def reopen(self):
        self.index = self.hnswlib.Index(space=self.space, dim=self.dim)
        self.index.load_index(self.path, max_elements=self.n)

    def close(self):
        self.index = None
