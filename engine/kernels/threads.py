"""Thread control for small calls: one BLAS thread and one numba thread.

On a busy 2-core machine, waking OpenBLAS's and numba's thread pools for a small matrix
product costs far more than the product: measured here, a 1000x50 @ 50x1024 float32
product took 16 ms with OpenBLAS's 2 threads and 1.2 ms with one. The engine's write path
(assigning and encoding a batch of new vectors) therefore runs small calls on one thread,
as scikit-learn does around its OpenMP loops. threadpoolctl (a well-kept library, also
used by scikit-learn) sets the BLAS thread count; numba's count is set with try/finally.
"""

from __future__ import annotations

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


@contextlib.contextmanager
def single_threaded():
    """Run the block with one BLAS thread and one numba thread (restored afterwards)."""
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with _blas_controller().limit(limits=1, user_api="blas"):
            yield
    finally:
        numba.set_num_threads(previous)
