"""usearch: an in-memory HNSW library (connectivity 16, expansion_add 128). ``persist`` is
``Index.save`` (timed apart); the sweep is ``expansion_search`` (its ef)."""

from __future__ import annotations

import os

import numpy as np

from .base import EF_SWEEP, System


class USearch(System):
    name = "usearch"
    package = "usearch"
    kind = "library"

    def __init__(self, metric, dim, n, workdir, **config):
        super().__init__(metric, dim, n, workdir, **config)
        from usearch.index import Index
        self.Index = Index
        self.config.setdefault("connectivity", 16)
        self.config.setdefault("expansion_add", 128)
        self.umetric = {"l2": "l2sq", "ip": "ip", "cosine": "cos"}[metric]
        self.index = None
        self.path = os.path.join(workdir, "index.usearch")

    def build(self, train, base):
        self.index = self.Index(ndim=self.dim, metric=self.umetric, dtype="f32",
                                connectivity=self.config["connectivity"],
                                expansion_add=self.config["expansion_add"])
        self.index.add(np.arange(len(base), dtype=np.uint64), base)
        return {}

    def persist(self):
        os.makedirs(self.workdir, exist_ok=True)
        self.index.save(self.path)

    def sweep(self):
        return [{"ef": ef} for ef in EF_SWEEP]

    def default_params(self):
        return {"ef": 128}

    def set_search_params(self, **params):
        super().set_search_params(**params)
        if self.index is not None and "ef" in params:
            self.index.expansion_search = int(params["ef"])

    def query_one(self, q, k):
        m = self.index.search(q, k)
        return np.asarray(m.keys, np.int64)

    def query_batch(self, Q, k):
        m = self.index.search(Q, k)
        keys = np.asarray(m.keys).astype(np.int64)
        counts = np.asarray(m.counts)
        for i, c in enumerate(counts):
            keys[i, c:] = -1
        return keys

    def reopen(self):
        self.index = self.Index.restore(self.path)

    def close(self):
        self.index = None
