"""FAISS (faiss-cpu): an in-memory library. ``build`` is add (+ train); nothing is on disk
until ``persist`` writes the index with ``faiss.write_index`` (timed apart, not in build).
Cosine = inner product on vectors this adapter normalises. Single queries run on one OpenMP
thread, batches on all of them."""

from __future__ import annotations

import os

import numpy as np

from .base import NPROBE_SWEEP, REFINE_SWEEP, System, ivf_defaults, normalize


class _Faiss(System):
    package = "faiss-cpu"
    kind = "library"

    def __init__(self, metric, dim, n, workdir, **config):
        super().__init__(metric, dim, n, workdir, **config)
        import faiss
        self.faiss = faiss
        self.index = None
        self.path = os.path.join(workdir, "index.faiss")
        self.threads = faiss.omp_get_max_threads()

    def _metric(self):
        return self.faiss.METRIC_L2 if self.metric == "l2" else self.faiss.METRIC_INNER_PRODUCT

    def _prep(self, X):
        X = np.ascontiguousarray(X, np.float32)
        return normalize(X) if self.metric == "cosine" else X

    def _make(self):
        raise NotImplementedError

    def build(self, train, base):
        self.index = self._make()
        if not self.index.is_trained:
            self.index.train(self._prep(train))
        self.index.add(self._prep(base))
        return {}

    def persist(self):
        os.makedirs(self.workdir, exist_ok=True)
        self.faiss.write_index(self.index, self.path)

    def query_one(self, q, k):
        # one query per call runs on one OpenMP thread (as ann-benchmarks does): on a busy
        # machine OpenMP's spinning workers otherwise cost more than the search itself
        self.faiss.omp_set_num_threads(1)
        try:
            _, ids = self.index.search(self._prep(q[None, :]), k)
        finally:
            self.faiss.omp_set_num_threads(self.threads)
        r = ids[0]
        return r[r >= 0]

    def query_batch(self, Q, k):
        _, ids = self.index.search(self._prep(Q), k)
        return ids.astype(np.int64)

    def reopen(self):
        self.index = self.faiss.read_index(self.path)
        if self.params:
            self.set_search_params(**self.params)

    def close(self):
        self.index = None


class FaissFlat(_Faiss):
    name = "faiss-flat"

    def _make(self):
        return self.faiss.IndexFlat(self.dim, self._metric())


class FaissIVFFlat(_Faiss):
    name = "faiss-ivfflat"

    def __init__(self, metric, dim, n, workdir, **config):
        super().__init__(metric, dim, n, workdir, **config)
        nlist, _ = ivf_defaults(n, dim)
        self.config.setdefault("nlist", nlist)
        self.config["factory"] = f"IVF{self.config['nlist']},Flat"

    def _make(self):
        return self.faiss.index_factory(self.dim, self.config["factory"], self._metric())

    def sweep(self):
        return [{"nprobe": p} for p in NPROBE_SWEEP if p <= self.config["nlist"]]

    def default_params(self):
        return {"nprobe": 32}

    def set_search_params(self, **params):
        super().set_search_params(**params)
        if self.index is not None and "nprobe" in params:
            self.faiss.extract_index_ivf(self.index).nprobe = int(params["nprobe"])


class FaissIVFPQRefine(FaissIVFFlat):
    """IndexIVFPQ wrapped in IndexRefineFlat: ``refine`` is its k_factor (re-rank k*refine
    ADC candidates with exact distances), the same knob as SimpleVector's RefineN. "np": no
    polysemous training (SimpleVector has none, searches do not use it, and it costs FAISS
    8x the training time)."""
    name = "faiss-ivfpq"

    def __init__(self, metric, dim, n, workdir, **config):
        super().__init__(metric, dim, n, workdir, **config)
        _, m = ivf_defaults(n, dim)
        self.config.setdefault("pq_m", m)
        self.config["factory"] = f"IVF{self.config['nlist']},PQ{self.config['pq_m']}x8np,RFlat"

    def sweep(self):
        return [{"nprobe": p, "refine": r} for p in NPROBE_SWEEP if p <= self.config["nlist"]
                for r in REFINE_SWEEP]

    def default_params(self):
        return {"nprobe": 32, "refine": 4}

    def set_search_params(self, **params):
        super().set_search_params(**params)
        if self.index is not None and "refine" in params:
            self.faiss.downcast_index(self.index).k_factor = float(params["refine"])


class FaissIVFRaBitQRefine(FaissIVFPQRefine):
    """IndexIVFRaBitQ (FAISS >= 1.11) wrapped in IndexRefineFlat, ``refine`` its k_factor.
    The query is quantized to ``qb`` bits (FAISS 1.15's default 4, as SimpleVector's,
    unless the config sets one)."""
    name = "faiss-rabitq"

    def __init__(self, metric, dim, n, workdir, **config):
        super().__init__(metric, dim, n, workdir, **config)
        if not hasattr(self.faiss, "IndexIVFRaBitQ"):
            from .base import Unavailable
            raise Unavailable(f"faiss {self.faiss.__version__} has no IndexIVFRaBitQ")
        self.config["factory"] = f"IVF{self.config['nlist']},RaBitQ,RFlat"

    def _make(self):
        index = super()._make()
        if "qb" in self.config:
            ivf = self.faiss.downcast_index(self.faiss.extract_index_ivf(index))
            ivf.qb = int(self.config["qb"])
        return index

    def sweep(self):
        from .simplevector_ import RABITQ_REFINE_SWEEP
        return [{"nprobe": p, "refine": r} for p in NPROBE_SWEEP if p <= self.config["nlist"]
                for r in RABITQ_REFINE_SWEEP]

    def default_params(self):
        return {"nprobe": 32, "refine": 8}
