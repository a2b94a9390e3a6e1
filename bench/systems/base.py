"""The adapter interface every benchmarked system implements.

One adapter instance is one index (or collection) of one system, living in its own
``workdir``. The runner calls, in order and in one child process per system:

    sys = Adapter(metric, dim, n, workdir, **config)
    info = sys.build(train, base)      # ingest + index build; ids are the row positions 0..n-1
    sys.persist()                      # libraries: save the index file (timed apart)
    for params in sys.sweep():         # search-parameter grid for recall-QPS curves
        sys.set_search_params(**params)
        sys.query_one(q, k) / sys.query_batch(Q, k)
    sys.size_bytes(); sys.close()

and, in a fresh child process, ``Adapter(...same...).reopen()`` then ``query_one``: the cold
reopen time to the first answer.

Vectors arrive float32 C-contiguous; for ``metric="cosine"`` they are NOT normalised: an
adapter that needs unit vectors (FAISS inner product, ...) normalises them itself, so the cost
is part of its figures. ``query_one`` returns int64 ids (length <= k); ``query_batch`` returns
an (nq, k) int64 array padded with -1.
"""

from __future__ import annotations

import os

import numpy as np


class Unavailable(RuntimeError):
    """The system cannot run here (package missing, dataset too large for it, ...)."""


class System:
    #: registry name, e.g. "faiss-ivfpq"
    name = "?"
    #: the package that must be importable (for the skip message and the versions block)
    package = None
    #: "library" (in-memory, saved explicitly) or "engine" (stores data itself)
    kind = "library"
    #: one honest sentence on what "build" leaves on disk and when
    durability = "in-memory: nothing is on disk until the index is saved explicitly"
    #: datasets larger than this are skipped with a message (None = no limit)
    max_n = None

    def __init__(self, metric: str, dim: int, n: int, workdir: str, **config):
        self.metric = metric
        self.dim = dim
        self.n = n
        self.workdir = workdir
        self.config = dict(config)
        self.params: dict = {}

    # -- the interface ---------------------------------------------------------------------
    def build(self, train: np.ndarray, base: np.ndarray) -> dict:
        """Store ``base`` (ids 0..n-1) and build the index; return extra figures, e.g.
        ``{"ingest_s": ..., "index_s": ...}`` when the two phases are separable."""
        raise NotImplementedError

    def persist(self) -> None:
        """Make the index reopenable from ``workdir`` (libraries save a file; engines no-op)."""

    def sweep(self) -> list[dict]:
        """Search-parameter settings to measure, cheapest first; ``[{}]`` = defaults only."""
        return [{}]

    def default_params(self) -> dict:
        """The setting used for the reopen figure."""
        grid = self.sweep()
        return grid[len(grid) // 2] if grid else {}

    def set_search_params(self, **params) -> None:
        self.params = dict(params)

    def query_one(self, q: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def settle(self) -> None:
        """Wait for work a system's first queries started in the background (a JIT's
        kernel load) before the timed queries: a sweep point measures the steady state.
        The first-query cost is the reopen figure's."""

    def query_batch(self, Q: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(Q), k), -1, np.int64)
        for i, q in enumerate(Q):
            r = self.query_one(q, k)
            out[i, : len(r)] = r
        return out

    def size_bytes(self) -> int:
        """Bytes on disk under ``workdir`` (after ``persist``)."""
        return dir_size(self.workdir)

    def reopen(self) -> None:
        """Open the persisted index from ``workdir`` (in a fresh process)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release files and memory. Idempotent."""

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "durability": self.durability,
                "config": self.config}


def dir_size(path: str) -> int:
    """Bytes the files under ``path`` occupy on disk: allocated blocks (``st_blocks`` x 512),
    not the apparent size, so a sparse tail (SimpleVector's row file grows by ``ftruncate``
    in chunks and is trimmed at close) counts as what it costs; a file written whole (a
    library's saved index) occupies its size rounded up to the block."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total


def normalize(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float32)
    norms = np.linalg.norm(X, axis=-1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(X / norms, dtype=np.float32)


def pad_ids(rows, k: int) -> np.ndarray:
    out = np.full((len(rows), k), -1, np.int64)
    for i, r in enumerate(rows):
        r = np.asarray(r, np.int64)[:k]
        out[i, : len(r)] = r
    return out


def ivf_defaults(n: int, dim: int) -> tuple[int, int]:
    """(nlist, pq_m) used by every IVF system unless overridden: nlist = the power of two
    at or below 2*sqrt(n) (1024 for 400k rows), kept to >= 39 training points per list;
    pq_m = the largest divisor of dim that is <= min(dim/2, 64) (25 for 50-d: 2 dims a code)."""
    nlist = 1 << max(2, int(np.floor(np.log2(max(4.0, 2.0 * np.sqrt(n))))))
    while nlist > 4 and n < 39 * nlist:
        nlist //= 2
    cap = max(1, min(dim // 2, 64))
    m = max(d for d in range(1, cap + 1) if dim % d == 0)
    return nlist, m


NPROBE_SWEEP = (8, 16, 32, 64)
#: refine 8 too: on the minilm set (384-d) refine 4 stops short of recall@10 0.95
REFINE_SWEEP = (1, 4, 8)
EF_SWEEP = (16, 32, 64, 128, 256)
