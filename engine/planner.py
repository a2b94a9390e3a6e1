"""Query planning: which search a query runs, and with which nprobe and refine.

Every rule and constant of the choice lives here (docs/architecture.md, "Data flow of a
query"); :class:`~.namespace.Namespace` executes the plan.

* ``flat``: no IVF index (or ``exact=True``), and no filter or a filter matching at least
  ``SUBSET_FRACTION`` of the rows: an exact scan with the filter as a row mask.
* ``flat-subset``: a filter matching fewer rows: an exact scan of just those rows. With an
  IVF index also when that is cheaper than the widened IVF scan below (by the cost model
  :func:`filtered_costs`), or when no more than k x refine rows match.
* ``ivf``: an IVF index probed with ``nprobe`` lists, re-ranked from k x refine candidates.
  A filtered ``ivf`` query is *widened*: a filter matching a share s of the rows leaves an
  unfiltered-size scan only s of its candidates, and the nearest matching rows sit further
  out (the k nearest of a 3% sample are about the 330 nearest of all rows), so recall falls
  (measured: 0.954 unfiltered, 0.873 at 10%, 0.667 at 3%). The widened scan probes up to
  ``max_lists`` = min(nlist, ``WIDEN_HEADROOM`` x nprobe / s) lists nearest first and stops,
  after the first nprobe, once it has seen s^(1/3) as many matching rows as those nprobe
  lists hold rows (the candidates an unfiltered query scores; :func:`widen_share`).
  Scattered filters then scan about nprobe / s^(2/3) lists, filters that match the query's
  neighbourhood stay at nprobe. Why not all of them: the k nearest matching rows are about
  the k / s nearest of all rows, which sit in far fewer than nprobe / s lists; waiting for
  a full target bought recall the unfiltered query does not have. At 30% of rows matching
  (60k x 384, IVF512,RaBitQ, nprobe 32, AMD EPYC) the full target opened 160 lists for
  recall 0.996 against the unfiltered 0.991, sent the queries that reached max_lists first
  to the exact fallback, and ran at 0.4x the unfiltered QPS; s^(1/3) opens 96 for 0.991.
  Why not less: with s^(1/2) a filter matching one cluster far from the query (1% of rows,
  tests/test_filtered_recall.py) lost 0.05 recall; s^(1/3) keeps it within 0.02.
* ``ivf+exact-fallback``: an ``ivf`` query whose lists could not yield k matches; those
  queries go exact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

#: Below this fraction of matching rows, a filtered flat search gathers the matching rows
#: and scans only those; above it, it scans everything with the filter as a row mask.
SUBSET_FRACTION = 0.25
#: An unfiltered (or mask-filtered) exact single query over at least this many values
#: (rows x dim) takes its scores from one BLAS product; smaller scans use the fused numba
#: scan (no temporary array, no BLAS thread wake-up).
BLAS_SCAN_ELEMENTS = 1 << 20
#: Widened filtered IVF scans probe at most this many times nprobe / selectivity lists
#: (the scan usually stops near nprobe / selectivity; the headroom serves queries whose
#: neighbourhood holds fewer matching rows than the average).
WIDEN_HEADROOM = 2.0
#: A widened scan stops once it has seen s ** WIDEN_EXPONENT as many matching rows as the
#: first nprobe lists hold rows (module docstring, "ivf"; :func:`widen_share`).
WIDEN_EXPONENT = 1.0 / 3.0
#: Cost-model weights (engine/planner.py:filtered_costs), in multiply-adds or table reads:
#: one mask lookup per row a widened scan passes, and one exact distance term per matching
#: row value an exact scan of the matching rows computes. Exact terms stream through
#: contiguous rows while table entries are gathered and built per list, so an exact term
#: counts half: ``python -m bench filtered`` (60k x 384, IVF256,PQ48x8,Refine8, nprobe 16,
#: 2-core Xeon at load 11) at 1.0 judged the two equal at 10% selectivity (IVF ~2.25M, exact
#: ~2.35M) and took the widened scan, which opened 231 lists (157 estimated) and ran at 21
#: single-query QPS, while exact over the 3% rows ran at 412.
MASK_COST = 1.0
EXACT_VALUE_COST = 0.5
#: The RaBitQ scan's cost of one row a widened masked scan passes (its position, the mask
#: lookup, the branch, and the per-list work the list estimate misses: the nearest lists
#: hold more rows than the average, so a widened scan opens 1.3-1.6x the lists
#: :func:`filtered_costs` expects), in the same units, fitted to single queries on 60k x
#: 384, IVF512,RaBitQ,Refine10, nprobe 32, AMD EPYC (scattered and clustered filters, each
#: plan forced): time of the widened scan over exact over the matching rows 2.0-2.4 at 3%,
#: 0.48-0.86 at 10%, 0.30-0.38 at 20%, 0.26-0.33 at 30%; at 30 a passed row the model says
#: 4.7, 0.70, 0.24, 0.14, and the crossover near 8% where the measured one is near 7%.
RABITQ_MASK_COST = 30.0
#: The same for the IVF-PQ scan with query-only tables (the engine's "row_terms" / "query"
#: strategies, whose list cost is only dim), fitted the same way: 60k x 384,
#: IVF256,PQ48x8,Refine8, nprobe 16, AMD EPYC, single queries, each plan forced: the widened
#: scan over exact over the matching rows 0.35 at 30%, 2.3-3.1 at 10%, 6-10 at 3% (with
#: MASK_COST the model priced the widened scan at 0.1-0.8x exact and took it at 10% and 3%,
#: 2-10x slower); at 120 a passed row it says 0.34, 1.9, 13 (exact below ~17%).
PQ_MASK_COST = 120.0
#: A batch of at least BATCH_QUERIES queries computes its exact distances over the matching
#: rows as one BLAS product, at BATCH_EXACT_VALUE_COST a value instead of EXACT_VALUE_COST;
#: fitted on the shape above (300 queries): the widened scan's batch time over the exact
#: batch's was 1.9-3.2 at 10%, 1.5-1.8 at 20%, 0.64-0.77 at 30%, and the model at 0.085 says
#: 4.1, 1.4, 0.8 (crossover near 25%: single queries go exact below ~8%, batches below ~25%).
BATCH_QUERIES = 32
BATCH_EXACT_VALUE_COST = 0.085
#: Default nprobe when the spec names none: nlist / NPROBE_DIVISOR, at least NPROBE_MIN.
NPROBE_DIVISOR = 16
NPROBE_MIN = 8

FLAT, FLAT_SUBSET, IVF, IVF_FALLBACK = "flat", "flat-subset", "ivf", "ivf+exact-fallback"


@dataclass
class Plan:
    """What a query did (``query(..., explain=True)`` returns it beside the hits).

    index: "flat", "flat-subset" (exact over the rows matching a selective filter), "ivf"
        or "ivf+exact-fallback" (the lists could not yield k matches, so the query went exact).
    nprobe: the unfiltered nprobe (the spec's or the caller's); max_lists: the lists a
        widened filtered scan may probe; lists: the mean lists the queries scanned.
    reason: why this index was chosen (the filtered cost comparison, when one was made).
    """

    index: str = FLAT
    spec: str = "Flat"
    nprobe: int = 0
    refine: int = 1
    candidates: int = 0
    rows: int = 0
    matched: int | None = None
    selectivity: float | None = None
    short: int = 0
    max_lists: int = 0
    lists: float = 0.0
    reason: str = ""
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def default_nprobe(nlist: int, configured: int | None = None) -> int:
    """The spec's nprobe, or nlist / 16 (at least 8, at most nlist)."""
    if configured:
        return configured
    return max(1, min(nlist, max(NPROBE_MIN, nlist // NPROBE_DIVISOR)))


def flat_plan(filtered: bool, matched: int, n: int) -> str:
    """``flat`` or ``flat-subset`` for an exact search over ``n`` positions."""
    return FLAT_SUBSET if filtered and matched < SUBSET_FRACTION * n else FLAT


@dataclass(frozen=True)
class IvfChoice:
    """What :func:`ivf_plan` decided: the plan name, nprobe, refine, candidates, the lists
    to probe (``max_lists``), the widening base (``min_lists``, -1: not widened), why, and
    the share of the base's rows a widened scan must see matching (``target_share``)."""

    index: str
    nprobe: int
    refine: int
    candidates: int
    max_lists: int
    min_lists: int
    reason: str = ""
    target_share: float = 1.0


def filtered_costs(*, matched: int, live: int, dim: int, nprobe: int, nlist: int, kk: int,
                   list_cost: int, code_cost: int, row_cost: float = MASK_COST,
                   queries: int = 1) -> tuple[float, float, int]:
    """(cost of the widened IVF scan, cost of exact search over the matching rows, lists
    the widened scan is expected to open), in multiply-adds or table reads.

    IVF: each opened list costs ``list_cost`` (its ADC table), each row passed
    ``row_cost`` (its mask lookup), each matching row ``code_cost``, and the re-rank kk
    exact distances. Exact: every matching row's distance (dim terms).
    """
    s = matched / live if live else 1.0
    lists = min(nlist, math.ceil(nprobe * widen_share(s) / max(s, 1e-12)))
    share = lists / nlist
    ivf = (lists * list_cost + share * live * row_cost + share * matched * code_cost
           + kk * dim)
    value = BATCH_EXACT_VALUE_COST if queries >= BATCH_QUERIES else EXACT_VALUE_COST
    exact = matched * dim * value
    return float(ivf), float(exact), int(lists)


def ivf_plan(*, filtered: bool, matched: int, live: int, k: int, nprobe: int | None,
             refine: int | None, spec_nprobe: int, spec_refine: int, nlist: int,
             has_codes: bool, dim: int = 0, list_cost: int = 0,
             code_cost: int = 0, row_cost: float = MASK_COST,
             queries: int = 1) -> IvfChoice:
    """The plan for a query on an IVF index (module docstring).

    ``nprobe``/``refine`` are the caller's overrides (None: the spec's defaults);
    ``has_codes``: the lists hold PQ codes (re-ranked from k x refine candidates);
    ``list_cost``/``code_cost``/``row_cost``: the index's scan costs
    (``IVFIndex.scan_costs``); ``queries``: how many queries the call answers (a batch's
    exact search is cheaper a value, :data:`BATCH_EXACT_VALUE_COST`).
    """
    nprobe = min(nprobe or spec_nprobe, nlist)
    refine = refine or spec_refine
    kk = max(k, k * refine) if has_codes else k
    if not filtered:
        return IvfChoice(IVF, nprobe, refine, kk, nprobe, -1)
    if matched <= kk:
        return IvfChoice(FLAT_SUBSET, nprobe, refine, matched, 0, -1,
                         f"{matched} matching rows <= {kk} candidates: exact over them")
    s = matched / live if live else 1.0
    ivf_cost, exact_cost, lists = filtered_costs(
        matched=matched, live=live, dim=dim, nprobe=nprobe, nlist=nlist, kk=kk,
        list_cost=list_cost, code_cost=code_cost, row_cost=row_cost, queries=queries)
    costs = f"exact over {matched} matching rows ~{exact_cost:.3g} ops, IVF over " \
            f"~{lists} of {nlist} lists ~{ivf_cost:.3g} ops"
    if exact_cost <= ivf_cost:
        return IvfChoice(FLAT_SUBSET, nprobe, refine, matched, 0, -1,
                         f"filter matches {s:.2%}: {costs}: exact")
    max_lists = min(nlist, max(nprobe, math.ceil(WIDEN_HEADROOM * nprobe / s)))
    return IvfChoice(IVF, nprobe, refine, kk, max_lists, nprobe,
                     f"filter matches {s:.2%}: {costs}: IVF widened to <= {max_lists} lists",
                     widen_share(s))


def widen_share(s: float) -> float:
    """The share of the first nprobe lists' rows a widened scan must see matching, for a
    filter matching a share ``s`` of the rows: s ** WIDEN_EXPONENT (module docstring,
    "ivf")."""
    return min(1.0, max(s, 0.0) ** WIDEN_EXPONENT)


def use_blas_scan(values: int) -> bool:
    """Whether an exact single query over ``values`` (rows x dim) scores through BLAS."""
    return values >= BLAS_SCAN_ELEMENTS
