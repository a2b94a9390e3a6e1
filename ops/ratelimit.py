"""Token-bucket rate limits, per (namespace, operation).

:class:`TokenBucket` is the reusable piece (a server can use one per API key)::

    bucket = TokenBucket(rate=100, burst=20)      # 100 tokens/s, at most 20 saved up
    wait = bucket.try_take(1)                     # 0.0: taken; > 0: seconds until it would be

A request for more tokens than ``burst`` is granted when the bucket is full and leaves it
in debt, so large batches are admitted at the configured long-run rate instead of never.

:class:`RateLimits` keeps one bucket per (namespace, op) with op one of ``query`` (one
token per query vector), ``write`` (one per row upserted or id deleted) and ``embed`` (one
per text sent to an embedding model), and persists the configuration in the ops store
(``ratelimit:<namespace>:<op>``); the buckets themselves start full in each process.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

from simplevector.engine.errors import InvalidInput, RateLimited

__all__ = ["TokenBucket", "RateLimit", "RateLimits", "LIMIT_OPS"]

LIMIT_OPS = ("query", "write", "embed")
KEY_PREFIX = "ratelimit:"


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst`` (default: one second's worth,
    at least 1). Thread-safe. ``clock`` is injectable for tests (default monotonic)."""

    def __init__(self, rate: float, burst: float | None = None, clock=time.monotonic):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
            raise InvalidInput(f"rate {rate!r} is not valid; expected tokens per second > 0")
        if burst is None:
            burst = max(1.0, float(rate))
        if isinstance(burst, bool) or not isinstance(burst, (int, float)) or not burst >= 1:
            raise InvalidInput(f"burst {burst!r} is not valid; expected a number >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.tokens = self.burst
        self.stamp = clock()
        self.lock = threading.Lock()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def try_take(self, n: float = 1) -> float:
        """Take ``n`` tokens if they are there and return 0.0; else take nothing and return
        the seconds until they would be (for n > burst: until the bucket is full)."""
        with self.lock:
            self._refill(self.clock())
            need = min(float(n), self.burst)
            if self.tokens >= need:
                self.tokens -= float(n)
                return 0.0
            return (need - self.tokens) / self.rate

    def take(self, n: float = 1, sleep=time.sleep) -> float:
        """Wait until ``n`` tokens are taken; returns the seconds waited."""
        waited = 0.0
        while True:
            wait = self.try_take(n)
            if wait <= 0:
                return waited
            sleep(wait)
            waited += wait


@dataclass(frozen=True)
class RateLimit:
    """A configured limit: ``per_second`` tokens, ``burst``; ``wait``: callers sleep until
    admitted instead of getting RateLimited."""

    namespace: str
    op: str
    per_second: float
    burst: float
    wait: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class RateLimits:
    """The rate limits of one database (configuration persisted in its ops store)."""

    def __init__(self, store, clock=time.monotonic, sleep=time.sleep):
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.limits: dict = {}
        self.buckets: dict = {}
        self.lock = threading.Lock()

    def load(self) -> None:
        for _key, msg in self.store.items(KEY_PREFIX):
            if msg is not None:             # None: a removed limit
                self._install(RateLimit(**msg))

    def _install(self, limit: RateLimit) -> None:
        with self.lock:
            self.limits[(limit.namespace, limit.op)] = limit
            self.buckets[(limit.namespace, limit.op)] = TokenBucket(
                limit.per_second, limit.burst, clock=self.clock)

    def set(self, namespace: str, op: str, per_second, burst=None, wait: bool = False,
            persist: bool = True) -> RateLimit | None:
        """Set (per_second > 0) or remove (per_second None or 0) a limit."""
        if not isinstance(namespace, str) or not namespace:
            raise InvalidInput(f"namespace {namespace!r} is not valid; expected a name")
        if op not in LIMIT_OPS:
            raise InvalidInput(f"op {op!r} is not valid; expected one of {', '.join(LIMIT_OPS)}")
        key = f"{KEY_PREFIX}{namespace}:{op}"
        if per_second is None or per_second == 0:
            with self.lock:
                self.limits.pop((namespace, op), None)
                self.buckets.pop((namespace, op), None)
            if persist:
                self.store.put(key, None)
            return None
        bucket = TokenBucket(per_second, burst)        # validates
        limit = RateLimit(namespace=namespace, op=op, per_second=bucket.rate,
                          burst=bucket.burst, wait=bool(wait))
        if persist:
            self.store.put(key, limit.to_dict())
        self._install(limit)
        return limit

    def list(self) -> list:
        with self.lock:
            return sorted(self.limits.values(), key=lambda lim: (lim.namespace, lim.op))

    def check(self, namespace: str, op: str, n: float = 1, *, wait: bool | None = None) -> float:
        """Admit ``n`` tokens of ``op`` on ``namespace``: returns seconds waited, or raises
        RateLimited (``retry_after``) when over the limit and not waiting."""
        bucket = self.buckets.get((namespace, op))
        if bucket is None or n <= 0:
            return 0.0
        limit = self.limits[(namespace, op)]
        retry = bucket.try_take(n)
        if retry <= 0:
            return 0.0
        if wait if wait is not None else limit.wait:
            self.sleep(retry)
            return retry + bucket.take(n, self.sleep)
        raise RateLimited(
            f"rate limit of {limit.per_second:g}/s (burst {limit.burst:g}) for {op} on "
            f"namespace {namespace!r} reached; retry after {retry:.3f}s",
            retry_after=retry, hint="slow down, or raise it with db.set_rate_limit(...)")


class KeyRateLimiter:
    """Per API key rate limit for the server (``create_app(db, rate_limiter=...)``): one
    :class:`TokenBucket` of ``per_second`` requests (``burst``) for each key. Over the limit
    a request gets ``RateLimited`` (429 with ``Retry-After``) before it runs. The anonymous
    loopback user of a database without keys is not limited."""

    def __init__(self, per_second: float, burst: float | None = None, clock=time.monotonic):
        TokenBucket(per_second, burst, clock)           # validates the two numbers
        self.per_second, self.burst, self.clock = per_second, burst, clock
        self._buckets: dict = {}
        self._lock = threading.Lock()

    def check(self, principal, operation: str) -> None:
        key_id = getattr(principal, "key_id", None)
        if key_id is None:
            return
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is None:
                bucket = self._buckets[key_id] = TokenBucket(self.per_second, self.burst,
                                                             self.clock)
        wait = bucket.try_take(1)
        if wait > 0:
            raise RateLimited(
                f"API key {key_id} is over its rate limit of {self.per_second:g} requests/s "
                f"({operation}); retry in {wait:.3f} s", retry_after=wait,
                hint="slow down, or ask an admin for a higher --key-rate")
