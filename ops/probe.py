"""Recall probe: the live index against exact search, on stored vectors or recent queries.

Silent failures (drift away from the trained centroids and codebooks, a bad re-train, a
too small nprobe) show up here first. A probe runs ``samples`` query vectors through the
live index (``ns.query``) and through exact flat search (``exact=True``) and counts, for
each query, the returned ids that are correct. Tie-aware: a returned hit counts when its
id is in the exact top k or its distance is within 1e-5 of the k-th exact distance (the
index returns exact distances for what it returns: PQ candidates are re-ranked). Recall
is the correct hits over the expected ones (min(k, rows) per query), with a Wilson score
interval at 95 %; the worst queries are listed by id (stored vectors) or as "query:<i>".

With ``where``, both sides run with the filter: recall of filtered queries against exact
search over the matching rows, the measure the planner's widened IVF scan is held to
(engine/planner.py). A filtered probe is returned but not kept as the namespace's latest
probe (health reports the unfiltered one).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from simplevector.engine.errors import InvalidInput

TIE_TOLERANCE = 1e-5
Z95 = 1.959963984540054
SOURCES = ("auto", "stored", "queries")


@dataclass
class ProbeResult:
    """recall@k of the live index with a 95 % Wilson interval over the hits.

    index: the live index spec the probe measured ("Flat" means recall is 1 by design).
    where: the filter both sides ran with (None: unfiltered). matched: rows it matched.
    plan: the plan the filtered queries took ("ivf", "flat-subset", ...), None unfiltered.
    source: "stored" (sampled stored vectors) or "queries" (the recent-query reservoir).
    worst: up to 5 (id, recall) pairs, lowest recall first. at: epoch seconds.
    """

    namespace: str
    version: int
    recall: float
    ci_low: float
    ci_high: float
    samples: int
    k: int
    hits: int
    expected: int
    index: str
    source: str
    seconds: float
    at: float
    worst: list = field(default_factory=list)
    where: dict | None = None
    matched: int | None = None
    plan: str | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out["worst"] = [[i, r] for i, r in self.worst]
        return out

    @classmethod
    def from_dict(cls, msg: dict) -> "ProbeResult":
        msg = dict(msg)
        msg["worst"] = [tuple(w) for w in msg.get("worst", [])]
        return cls(**msg)


def wilson(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n``."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # the interval always contains p; clamp the float rounding at the ends (p = 0 or 1)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def count_correct(approx_hits, exact_hits, k: int) -> tuple[int, int]:
    """(correct, expected) for one query, tie-aware."""
    expected = min(k, len(exact_hits))
    if expected == 0:
        return 0, 0
    kth = exact_hits[expected - 1].distance
    truth = {(type(h.id), h.id) for h in exact_hits[:expected]}
    correct = sum(1 for h in approx_hits[:k]
                  if (type(h.id), h.id) in truth or h.distance <= kth + TIE_TOLERANCE)
    return min(correct, expected), expected


def probe_recall(db, namespace, *, samples: int = 200, k: int = 10, source: str = "auto",
                 seed: int = 0, where: dict | None = None) -> ProbeResult:
    """Measure recall@k of ``namespace``'s live index (see the module docstring).

    source="auto" uses the recent-query reservoir when it holds at least ``samples``
    vectors (real traffic), else stored vectors; "stored" / "queries" force one.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise InvalidInput(f"samples {samples!r} is not valid; expected an int >= 1")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidInput(f"k {k!r} is not valid; expected an int >= 1")
    if source not in SOURCES:
        raise InvalidInput(f"source {source!r} is not valid; expected one of {SOURCES}")
    t0 = time.perf_counter()
    ns = db.namespace(namespace)
    config = db.version_status(namespace)       # the live version, as the engine holds it
    queries, labels, used = None, None, "stored"
    if source in ("auto", "queries"):
        recent = db.recent_queries(namespace, dim=config.dim)
        if recent is not None and (source == "queries" or len(recent) >= samples):
            rng = np.random.default_rng(seed)
            pick = rng.choice(len(recent), min(samples, len(recent)), replace=False)
            queries = np.ascontiguousarray(recent[np.sort(pick)])
            labels = [f"query:{int(i)}" for i in np.sort(pick)]
            used = "queries"
        elif source == "queries":
            raise InvalidInput(f"namespace {namespace!r} has no recent queries to probe with",
                               hint="use source='stored', or run queries first")
    if queries is None:
        if config.rows == 0:
            labels, queries = [], np.zeros((0, config.dim), np.float32)
        else:
            labels, queries = ns.sample(samples, seed=seed)
    index_name = config.index_active
    hits = expected = 0
    per_query = []
    matched = plan_index = None
    if len(queries):
        approx, plan = ns.query(queries, k=k, where=where, include=(), explain=True)
        exact = ns.query(queries, k=k, where=where, include=(), exact=True)
        if where is not None:
            matched, plan_index = plan.matched, plan.index
        for label, a, e in zip(labels, approx, exact):
            c, n = count_correct(a, e, k)
            hits += c
            expected += n
            if n:
                per_query.append((label, c / n))
    recall = hits / expected if expected else 1.0
    lo, hi = wilson(hits, expected) if expected else (1.0, 1.0)
    per_query.sort(key=lambda t: t[1])
    return ProbeResult(namespace=config.name, version=config.version, recall=recall,
                       ci_low=lo, ci_high=hi, samples=len(queries), k=k, hits=hits,
                       expected=expected, index=index_name, source=used,
                       seconds=time.perf_counter() - t0, at=time.time(),
                       worst=[(i, r) for i, r in per_query[:5] if r < 1.0], where=where,
                       matched=matched, plan=plan_index)
