"""The first queries of a process, answered while numba loads the query kernels.

numba loads each compiled kernel from its on-disk cache on the kernel's first call in a
process. On the 2-core machines this project runs on that is ~0.2 s of numba's own
start-up plus 0.15-0.3 s for the IVF query kernels: more than reopening a 1M-row database
takes (tens of milliseconds, engine/segments.py). So until the kernels a query needs are
loaded, a single query over at most :data:`COLD_EXACT_VALUES` stored float32 values is
answered by :func:`exact`, an exact scan in numpy (one BLAS product, numpy selection, exact
distances for the selected rows, ties by lower position: what the flat kernels return), and
the same query runs once through the kernels on a background thread, which loads them.
Exact results are the recall reference, so a cold answer is never worse than the index's;
``explain`` names the path (``exact-numpy``) and the reason. Bigger versions wait for the
kernels as before (a scan of more values would take longer than loading them).

A kind of query counts as loaded once its background run finished, or when its numba
dispatchers already hold a compiled signature in this process (any earlier query, a test).
``SIMPLEVECTOR_COLD_QUERIES=0`` in the environment turns the numpy path off: every query
then runs through the kernels, the first ones waiting for them (the test suite does this,
so that a plan does not depend on which test ran first).

Loading the kernels is mostly Python (numba importing its target registries), so the
background thread competes for the GIL with the queries it is there to keep fast: on the
2-core demo machine the first filtered query after a reopen took 21-26 ms with the thread
running against 6-8 ms once it was done. So the background thread steps aside: a trace
hook on that thread alone (``sys.settrace``, called on each Python call it makes) waits,
GIL released, while a query runs in any other thread (:func:`foreground`), at most
:data:`MAX_PAUSE_S` per query, so a query that needs a lock the loader holds (numba's
compiler lock, an import lock) is delayed by that bound, never deadlocked; and at most
:data:`STEP_ASIDE_SHARE` of the load's time in all, so queries arriving back to back (a
server under load) cannot keep the kernels from loading. The hook is removed when the load
ends.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import sys
import threading
import time

import numpy as np

from .kernels import flat, ivffused, rabitq, topk
from .kernels.distances import IP, L2

#: An exact numpy scan answers cold queries over up to this many stored values (rows x dim):
#: 2**27 = 1M x 128, a 512 MiB scan, ~50-60 ms memory-bound here.
COLD_EXACT_VALUES = 1 << 27

#: The numba dispatchers each kind of query calls (all must be loaded).
_DISPATCHERS = {
    "ivfpq": (ivffused, ("probe_and_count", "pq_search_serial")),
    "ivfflat": (ivffused, ("flat_lists_serial",)),
    "rabitq": (rabitq, ("rabitq_search_serial",)),
    "flat": (flat, ("_search_serial",)),
    "flat-blas": (topk, ("_topk_smallest_kernel",)),
}

#: The longest a background load waits for one foreground query (see the module docstring).
MAX_PAUSE_S = 0.05
#: The share of its wall time a background load may spend waiting for queries (past a first
#: MAX_PAUSE_S): queries back to back would otherwise let it make one Python call per query,
#: and every query of a loaded server would stay on the numpy path (GloVe 400k, one thread
#: querying without a pause: 1,704 queries in 8 s, every one numpy, the kernels never in).
STEP_ASIDE_SHARE = 0.5

_lock = threading.Lock()
_started: set = set()
_done: set = set()
_loading = 0                    # background loads running
_foreground = 0                 # queries running outside the background threads
_episode = 0                    # counts the times _foreground went 0 -> 1
_clear = threading.Event()      # set while no query runs in the foreground
_clear.set()
_NO_LOAD = contextlib.nullcontext()


@contextlib.contextmanager
def _query_running():
    global _foreground, _episode
    with _lock:
        _foreground += 1
        if _foreground == 1:
            _episode += 1
            _clear.clear()
    try:
        yield
    finally:
        with _lock:
            _foreground -= 1
            if _foreground == 0:
                _clear.set()


def foreground():
    """A context for one query in a caller's thread: background loads wait while it runs.
    Costs one check while none runs (the usual case)."""
    return _query_running() if _loading else _NO_LOAD


def _step_aside():
    """A trace function for the background thread: wait while a foreground query runs, at
    most MAX_PAUSE_S per query and, past the first MAX_PAUSE_S, at most STEP_ASIDE_SHARE of
    the time since the load began."""
    waited = -1
    began = time.perf_counter()
    paused = 0.0

    def trace(frame, event, arg):
        nonlocal waited, paused
        if _foreground and waited != _episode:
            now = time.perf_counter()
            if paused < STEP_ASIDE_SHARE * (now - began) + MAX_PAUSE_S:
                waited = _episode
                _clear.wait(MAX_PAUSE_S)
                paused += time.perf_counter() - now
        return None                 # no per-line tracing
    return trace


def kind_of(index, values: int) -> str:
    """The kernel family a single query of this version runs through."""
    if index is None:
        from .planner import use_blas_scan
        return "flat-blas" if use_blas_scan(values) else "flat"
    if index.spec.rabitq:
        return "rabitq"
    return "ivfpq" if index.m else "ivfflat"


def enabled() -> bool:
    return os.environ.get("SIMPLEVECTOR_COLD_QUERIES", "1") != "0"


def loaded(kind: str) -> bool:
    if kind in _done or not enabled():
        return True
    module, names = _DISPATCHERS[kind]
    for name in names:
        dispatcher = getattr(module, name, None)
        if dispatcher is None or not getattr(dispatcher, "signatures", None):
            return False
    _done.add(kind)
    return True


def wait(timeout: float | None = None) -> bool:
    """Block until no background kernel load runs: True, or False when ``timeout`` seconds
    passed first. For benchmarks and tests that time the kernels' steady state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while _loading:
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.002)
    return True


def start(kind: str, fn) -> None:
    """Run ``fn`` (a query through the kernels) once per kind on a background thread."""
    global _loading
    with _lock:
        if kind in _started:
            return
        _started.add(kind)

    def run():
        global _loading
        threading.current_thread().name = f"simplevector-warmup-{kind}"
        sys.settrace(_step_aside())
        try:
            fn()
        except Exception:       # the next query loads the kernels on its own thread
            pass
        finally:
            sys.settrace(None)
            _done.add(kind)
            with _lock:
                _loading -= 1
    with _lock:
        _loading += 1
    # not threading.Thread.start(): it waits until the new thread has run, and a new thread
    # that starts importing numba holds the GIL for a switch interval (5 ms) or more, which
    # the query that asked for it would pay. start_new_thread returns at once; the thread
    # is a daemon (never joined, like the background numba load it is).
    _thread.start_new_thread(run, ())


def exact(X, xnorm2, q, metric: int, k: int, mask=None):
    """Exact top-k of one query in numpy: ``(dist float32, pos int64)`` sorted by distance
    then position. Rows are selected by ``||x||^2 - 2 x.q`` (l2), ``-x.q`` (ip) or
    ``1 - x.q`` (cosine, unit rows), every row tied with the k-th kept, then their
    distances computed exactly; ``mask`` (bool, n) allows rows. A selective mask scores
    only the allowed rows (gathered), a wide one every row (one BLAS product)."""
    n = X.shape[0]
    rows = None
    if mask is not None and np.count_nonzero(mask) * 4 < n:
        rows = np.flatnonzero(mask)
        scores = np.asarray(X[rows]) @ q
        norms = xnorm2[rows] if metric == L2 else None
    else:
        scores = X @ q
        norms = xnorm2[:n] if metric == L2 else None
    if metric == L2:
        d = norms - np.float32(2.0) * scores
    elif metric == IP:
        d = -scores
    else:
        d = np.float32(1.0) - scores
    if mask is not None and rows is None:
        d[~mask] = np.inf
    m = len(d)
    kk = min(k, m)
    if kk <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    if kk < m:
        bound = d[np.argpartition(d, kk - 1)[:kk]].max()
        cand = np.flatnonzero(d <= bound)
    else:
        cand = np.arange(m)
    cand = cand[np.isfinite(d[cand])]
    if rows is not None:
        cand = rows[cand]
    return _rank(X, q, metric, k, cand)


def ivf_search(index, X, q, metric: int, k: int, nprobe: int, refine: int, mask=None):
    """The IVF kernels' single-query search in numpy: ``(dist, pos)`` like :func:`exact`.

    Probe the ``nprobe`` lists nearest to ``q`` (as the kernels do); with PQ codes, score
    every allowed code of those lists by ADC (per-list tables of ``q - c_l`` against the
    codebooks for l2, ``q . c_l`` plus query tables for ip) and re-rank the best
    ``k * refine`` exactly; without codes (IVF-Flat) score the listed rows exactly. The
    same algorithm as kernels/ivffused.py, in float32 numpy (ties may resolve otherwise).
    An IVF-RaBitQ index runs its own numpy search (``RaBitQIndex.search_numpy``: the same
    probes, 1-bit estimates and exact re-rank as its kernel, in float64).
    """
    if index.spec.rabitq:
        return index.search_numpy(X, q, metric, k, nprobe, refine, mask)
    sealed, delta = index.snapshot()
    C = index.centroids
    if index.list_metric == L2:
        dc = np.einsum("ij,ij->i", C, C) - np.float32(2.0) * (C @ q)
    else:
        dc = -(C @ q)
    nprobe = min(nprobe, len(C))
    probes = np.argpartition(dc, nprobe - 1)[:nprobe] if nprobe < len(C) else np.arange(len(C))
    offsets = sealed.offsets
    pos, codes, which = [], [], []
    for j, lst in enumerate(probes.tolist()):
        lo, hi = offsets[lst], offsets[lst + 1]
        pos.append(sealed.pos[lo:hi])
        codes.append(sealed.codes[lo:hi])
        which.append(np.full(hi - lo, j, np.int64))
    if delta.n:
        slot = np.full(len(C), -1, np.int64)
        slot[probes] = np.arange(len(probes))
        js = slot[delta.lists[:delta.n]]
        keep = js >= 0
        pos.append(delta.pos[:delta.n][keep])
        codes.append(delta.codes[:delta.n][keep])
        which.append(js[keep])
    cand = np.concatenate(pos)
    codes = np.concatenate(codes) if index.m else None
    which = np.concatenate(which)
    if mask is not None:
        allowed = mask[cand]
        cand, which = cand[allowed], which[allowed]
        codes = None if codes is None else codes[allowed]
    if not len(cand):
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    if index.m:
        cb = index.codebooks                        # (m, ksub, dsub)
        m, ksub, dsub = cb.shape
        # one gather per sub-quantizer over contiguous tables (a single fancy index over
        # (rows, m) builds an index array 8x the codes: ~6x slower here)
        codes_t = np.ascontiguousarray(codes.T)
        if index.list_metric == L2:
            pre = index._pre
            if pre.shape[0]:
                # ||q - c - r||^2 = ||q - c||^2 + sum_m (||cb||^2 + 2 c_m.cb) - 2 q_m.cb, the
                # middle term precomputed per list (kernels/adctables.py)
                qt = np.matmul(cb, q.reshape(m, dsub, 1))[:, :, 0]      # (m, ksub)
                tables = np.ascontiguousarray(
                    pre[probes].transpose(1, 0, 2) - np.float32(2.0) * qt[:, None, :])
                R = q[None, :] - C[probes]
                adc = np.einsum("pd,pd->p", R, R).astype(np.float32)[which]
            else:
                R = (q[None, :] - C[probes]).reshape(len(probes), m, dsub).transpose(1, 0, 2)
                tables = (np.einsum("mpd,mpd->mp", R, R)[:, :, None]
                          - np.float32(2.0) * np.matmul(R, cb.transpose(0, 2, 1))
                          + np.einsum("mjd,mjd->mj", cb, cb)[:, None, :])
                adc = np.zeros(len(cand), np.float32)
            tables = tables.reshape(m, -1)
            base = which * ksub
            for j in range(m):
                adc += tables[j][base + codes_t[j]]
        else:
            qt = -np.einsum("md,mjd->mj", q.reshape(m, dsub), cb)
            adc = dc[probes][which].astype(np.float32)
            for j in range(m):
                adc += qt[j][codes_t[j]]
        kk = min(max(k * refine, k), len(cand))
        if kk < len(cand):
            top = np.argpartition(adc, kk - 1)[:kk]
            cand = cand[top]
    return _rank(X, q, metric, k, cand)


def _rank(X, q, metric: int, k: int, cand: np.ndarray):
    """The k nearest of the rows ``cand`` by exact float32 distance, ties by position."""
    rows = np.asarray(X[cand])
    if metric == L2:
        diff = rows - q
        dist = np.einsum("ij,ij->i", diff, diff)
    elif metric == IP:
        dist = -(rows @ q)
    else:
        dist = np.float32(1.0) - rows @ q
    dist = dist.astype(np.float32)
    order = np.lexsort((cand, dist))[:k]
    return dist[order], cand[order].astype(np.int64)
