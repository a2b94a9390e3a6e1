"""Thread control for small calls: one BLAS thread and one numba thread.

On a busy 2-core machine, waking OpenBLAS's and numba's thread pools for a small matrix
product costs far more than the product: measured here, a 1000x50 @ 50x1024 float32
product took 16 ms with OpenBLAS's 2 threads and 1.2 ms with one. The engine's write path
(assigning and encoding a batch of new vectors) therefore runs small calls on one thread,
as scikit-learn does around its OpenMP loops. threadpoolctl (a well-kept library, also
used by scikit-learn) sets the BLAS thread count; numba's count is set with try/finally.

Bulk work that mixes BLAS products with numba loops (the k-means assignment of training)
splits its rows over a few Python threads instead, each calling BLAS with one thread and a
serial numba kernel: the two libraries' pools never wait on each other. Measured on GloVe
(80k x 50 rows against 2,048 centroids, 2 cores): BLAS's and numba's own pools 0.40 s, one
thread 0.26 s, two Python threads 0.15 s.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading

import numba

_controller = None
_lock = threading.Lock()


def _blas_controller():
    global _controller
    if _controller is None:
        with _lock:
            if _controller is None:
                from threadpoolctl import ThreadpoolController
                _controller = ThreadpoolController()
    return _controller


_blas_users = 0
_blas_limit = None


def _take_blas_control(controller):
    """threadpoolctl (3.8) lets only one Python thread, the first to set a limit, change
    OpenBLAS's process-wide count and silently ignores the others. Every change here is
    serialised under _lock and reference-counted, so the thread making it takes control."""
    for lib in controller.lib_controllers:
        clear = getattr(lib, "clear_controlling_thread", None)
        if clear is not None:
            clear(force=True)


@contextlib.contextmanager
def one_blas_thread():
    """Run the block with one BLAS thread. The limit is process-wide (OpenBLAS has one
    thread pool), so nested and concurrent users share it: the first to enter sets it, the
    last to leave restores the previous count."""
    global _blas_users, _blas_limit
    controller = _blas_controller()
    with _lock:
        if _blas_users == 0:
            _take_blas_control(controller)
            _blas_limit = controller.limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _lock:
            _blas_users -= 1
            if _blas_users == 0:
                _take_blas_control(controller)
                _blas_limit.restore_original_limits()
                _blas_limit = None


@contextlib.contextmanager
def single_threaded():
    """Run the block with one BLAS thread and one numba thread (numba's count is per
    calling thread and restored afterwards)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with one_blas_thread():
            yield
    finally:
        numba.set_num_threads(previous)


_pool = None


def worker_pool() -> concurrent.futures.ThreadPoolExecutor:
    """A shared pool of numba's configured thread count, for bulk work split by rows."""
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = concurrent.futures.ThreadPoolExecutor(
                    max_workers=max(1, numba.config.NUMBA_NUM_THREADS),
                    thread_name_prefix="simplevector-kernel")
    return _pool
