"""The observer interface: how the layers above the engine watch it without reaching in.

An :class:`Observer` is registered with ``Database.add_observer(obs)``. The engine calls it
synchronously, on the thread that did the work, after the work is done:

* ``on_operation(op, namespace, seconds, ok, compile_seconds)`` after every public data
  operation (``query``, ``upsert``, ``get``, ``delete``). ``seconds`` is the wall time of
  the call *minus* the numba JIT time it triggered; ``compile_seconds`` is that time
  (compiling on the first call of a fresh install, loading from numba's cache on the first
  call of a later process), reported separately so a latency histogram is not polluted by
  one-off start-up cost.
* ``on_query(namespace, plan, queries)`` after every query, with its :class:`~.planner.Plan`
  and the prepared query rows.
* ``on_checkpoint(lsn)`` after every checkpoint (the place to persist derived totals).
* ``on_compact(report)`` after every compaction that rewrote a version, with its
  :class:`~.compact.CompactReport` (``report.automatic``: started by the policy).

Observers must be quick and must not call back into writes of the same database from
``on_operation``/``on_query``. An exception raised by an observer never fails the engine
operation: it is counted (``DatabaseStatus.observer_errors``) and the last one is kept
(``DatabaseStatus.observer_last_error``). See docs/architecture.md, "The boundary between
layers".
"""

from __future__ import annotations

import threading
import time

__all__ = ["Observer", "CompileClock", "compile_clock"]


class Observer:
    """Base class with no-op callbacks; override the ones you need."""

    def on_operation(self, op: str, namespace: str, seconds: float, ok: bool,
                     compile_seconds: float = 0.0) -> None:
        pass

    def on_query(self, namespace: str, plan, queries) -> None:
        pass

    def on_checkpoint(self, lsn: int) -> None:
        pass

    def on_compact(self, report) -> None:
        pass


class CompileClock:
    """Seconds spent in numba's JIT (compiling a kernel, or loading it from numba's on-disk
    cache, including waiting for another thread doing so), per thread and in total.

    Read from numba's event API: every first call of a kernel signature holds numba's
    global compiler lock, which emits ``numba:compiler_lock`` events; only the outermost
    event of a thread counts (compiling a kernel compiles the functions it calls, nested).
    Calls of an already-loaded kernel never take the lock and cost nothing here.
    """

    def __init__(self):
        self._tls = threading.local()
        self._lock = threading.Lock()
        self.total_seconds = 0.0
        self.compilations = 0
        self.installed = False

    def thread_seconds(self) -> float:
        """Compile seconds of the calling thread so far (read before and after a call)."""
        return getattr(self._tls, "seconds", 0.0)

    def _start(self):
        tls = self._tls
        depth = getattr(tls, "depth", 0)
        if depth == 0:
            tls.t0 = time.perf_counter()
        tls.depth = depth + 1

    def _end(self):
        tls = self._tls
        depth = getattr(tls, "depth", 0)
        if depth <= 0:      # the end of a compilation whose start came before install():
            return          # nothing to time, and raising here would fail that compile
        tls.depth = depth - 1
        if tls.depth == 0:
            spent = time.perf_counter() - tls.t0
            tls.seconds = getattr(tls, "seconds", 0.0) + spent
            with self._lock:
                self.total_seconds += spent
                self.compilations += 1

    def install(self) -> None:
        if self.installed:
            return
        from numba.core import event

        clock = self

        class _Listener(event.Listener):
            def on_start(self, ev):
                clock._start()

            def on_end(self, ev):
                clock._end()

        event.register("numba:compiler_lock", _Listener())
        self.installed = True


#: the process-wide clock (numba's compiler is process-wide too)
compile_clock = CompileClock()
compile_clock.install()
