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
  after the first nprobe, once it has seen as many matching rows as those nprobe lists hold
  rows: the candidates an unfiltered query scores. Scattered filters then scan about
  nprobe / s lists, filters that match the query's neighbourhood stay near nprobe.
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
#: lookup, the branch), in the same units, fitted to one measurement: ``python -m bench
#: filtered --spec auto --nlist 512 --nprobe 32 --refine 10`` (60k x 384, IVF512,RaBitQ,
#: AMD EPYC) at 10% selectivity ran the widened scan (471 of 512 lists) at 475 single-query
#: QPS, where exact over the matching rows ran at 829 (1.75x); with MASK_COST the model had
#: priced the widened scan at half the exact one, and 41 a passed row makes its price 1.75x
#: the exact one's. The crossover then sits near 14% of rows matching (unmeasured between
#: 10% and 30%, where the widened scan is the faster by far).
RABITQ_MASK_COST = 41.0
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
    to probe (``max_lists``), the widening base (``min_lists``, -1: not widened) and why."""

    index: str
    nprobe: int
    refine: int
    candidates: int
    max_lists: int
    min_lists: int
    reason: str = ""


def filtered_costs(*, matched: int, live: int, dim: int, nprobe: int, nlist: int, kk: int,
                   list_cost: int, code_cost: int,
                   row_cost: float = MASK_COST) -> tuple[float, float, int]:
    """(cost of the widened IVF scan, cost of exact search over the matching rows, lists
    the widened scan is expected to open), in multiply-adds or table reads.

    IVF: each opened list costs ``list_cost`` (its ADC table), each row passed
    ``row_cost`` (its mask lookup), each matching row ``code_cost``, and the re-rank kk
    exact distances. Exact: every matching row's distance (dim terms).
    """
    s = matched / live if live else 1.0
    lists = min(nlist, math.ceil(nprobe / max(s, 1e-12)))
    share = lists / nlist
    ivf = (lists * list_cost + share * live * row_cost + share * matched * code_cost
           + kk * dim)
    exact = matched * dim * EXACT_VALUE_COST
    return float(ivf), float(exact), int(lists)


def ivf_plan(*, filtered: bool, matched: int, live: int, k: int, nprobe: int | None,
             refine: int | None, spec_nprobe: int, spec_refine: int, nlist: int,
             has_codes: bool, dim: int = 0, list_cost: int = 0,
             code_cost: int = 0, row_cost: float = MASK_COST) -> IvfChoice:
    """The plan for a query on an IVF index (module docstring).

    ``nprobe``/``refine`` are the caller's overrides (None: the spec's defaults);
    ``has_codes``: the lists hold PQ codes (re-ranked from k x refine candidates);
    ``list_cost``/``code_cost``/``row_cost``: the index's scan costs
    (``IVFIndex.scan_costs``).
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
        list_cost=list_cost, code_cost=code_cost, row_cost=row_cost)
    costs = f"exact over {matched} matching rows ~{exact_cost:.3g} ops, IVF over " \
            f"~{lists} of {nlist} lists ~{ivf_cost:.3g} ops"
    if exact_cost <= ivf_cost:
        return IvfChoice(FLAT_SUBSET, nprobe, refine, matched, 0, -1,
                         f"filter matches {s:.2%}: {costs}: exact")
    max_lists = min(nlist, max(nprobe, math.ceil(WIDEN_HEADROOM * nprobe / s)))
    return IvfChoice(IVF, nprobe, refine, kk, max_lists, nprobe,
                     f"filter matches {s:.2%}: {costs}: IVF widened to <= {max_lists} lists")


def use_blas_scan(values: int) -> bool:
    """Whether an exact single query over ``values`` (rows x dim) scores through BLAS."""
    return values >= BLAS_SCAN_ELEMENTS
