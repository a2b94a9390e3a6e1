"""Query planning: which search a query runs, and with which nprobe and refine.

Every rule and constant of the choice lives here (docs/architecture.md, "Data flow of a
query"); :class:`~.namespace.Namespace` executes the plan.

* ``flat``: no IVF index (or ``exact=True``), and no filter or a filter matching at least
  ``SUBSET_FRACTION`` of the rows: an exact scan with the filter as a row mask.
* ``flat-subset``: a filter matching fewer rows: an exact scan of just those rows. With an
  IVF index also when the probed lists are expected to hold fewer than
  ``IVF_FILTER_MARGIN`` x k x refine matching rows, or fewer rows match than that.
* ``ivf``: an IVF index probed with ``nprobe`` lists, re-ranked from k x refine candidates.
* ``ivf+exact-fallback``: an ``ivf`` query whose lists could not yield k matches; those
  queries go exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

#: Below this fraction of matching rows, a filtered flat search gathers the matching rows
#: and scans only those; above it, it scans everything with the filter as a row mask.
SUBSET_FRACTION = 0.25
#: An unfiltered (or mask-filtered) exact single query over at least this many values
#: (rows x dim) takes its scores from one BLAS product; smaller scans use the fused numba
#: scan (no temporary array, no BLAS thread wake-up).
BLAS_SCAN_ELEMENTS = 1 << 20
#: A filtered IVF query switches to exact search over the matching rows when the probed
#: lists are expected to hold fewer than this many times k*refine matching rows.
IVF_FILTER_MARGIN = 2.0
#: Default nprobe when the spec names none: nlist / NPROBE_DIVISOR, at least NPROBE_MIN.
NPROBE_DIVISOR = 16
NPROBE_MIN = 8

FLAT, FLAT_SUBSET, IVF, IVF_FALLBACK = "flat", "flat-subset", "ivf", "ivf+exact-fallback"


@dataclass
class Plan:
    """What a query did (``query(..., explain=True)`` returns it beside the hits).

    index: "flat", "flat-subset" (exact over the rows matching a selective filter), "ivf"
        or "ivf+exact-fallback" (the lists could not yield k matches, so the query went exact).
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


def ivf_plan(*, filtered: bool, matched: int, k: int, nprobe: int | None, refine: int | None,
             spec_nprobe: int, spec_refine: int, nlist: int, has_codes: bool):
    """(plan, nprobe, refine, candidates) for a query on an IVF index.

    ``nprobe``/``refine`` are the caller's overrides (None: the spec's defaults);
    ``has_codes``: the lists hold PQ codes (re-ranked from k x refine candidates).
    """
    nprobe = min(nprobe or spec_nprobe, nlist)
    refine = refine or spec_refine
    kk = max(k, k * refine) if has_codes else k
    expected = matched * nprobe / nlist
    if filtered and (matched <= kk or expected < IVF_FILTER_MARGIN * kk):
        return FLAT_SUBSET, nprobe, refine, matched
    return IVF, nprobe, refine, kk


def use_blas_scan(values: int) -> bool:
    """Whether an exact single query over ``values`` (rows x dim) scores through BLAS."""
    return values >= BLAS_SCAN_ELEMENTS
