"""Index specs: one FAISS-like string parsed to a dataclass and printed back.

    "auto"                      flat while small, IVF-PQ trained online past a threshold
    "Flat"                      exact search only
    "IVF1024,Flat"              inverted lists of full vectors (exact distances in the lists)
    "IVF1024,PQ16x8"            inverted lists of 16 8-bit product-quantizer codes
    "IVF1024,PQ16x8,Refine4"    ... then re-rank the top k*4 candidates exactly
    "IVF1024,RaBitQ"            inverted lists of 1-bit RaBitQ codes of rotated residuals,
                                re-ranked exactly from k*RABITQ_DEFAULT_REFINE candidates
    "IVF1024,RaBitQ,Refine20"   ... from k*20 candidates

``IndexSpec.parse(text)`` and ``str(spec)`` round-trip.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Optional

from .errors import InvalidInput

_IVF_RE = re.compile(r"^IVF(\d+)$", re.I)
_PQ_RE = re.compile(r"^PQ(\d+)(?:x(\d+))?$", re.I)
_REFINE_RE = re.compile(r"^Refine(\d+)$", re.I)
_RABITQ = "rabitq"

#: "auto" stays flat below this many live rows, then trains IVF-PQ in the background.
AUTO_THRESHOLD = 50_000
#: k-means needs this many training points per list (FAISS warns below 39).
TRAIN_POINTS_PER_LIST = 39
#: Refine of "IVF<n>,RaBitQ" without a Refine part: 1-bit codes rank coarsely, so they are
#: always re-ranked. Measured (docs/perf/rabitq.md, `python -m bench run`, IVF256, 2-core
#: Xeon): refine 4 -> 8 gains 0.011 recall@10 on minilm 60k x 384 (nprobe 32: 0.953 ->
#: 0.964) and 0.010 on spectral 60k x 768 (nprobe 8: 0.990 -> 0.9996) for 5% and 15% of
#: single-query QPS; 8 -> 16 gains <= 0.002 unfiltered. Filtered scans reach lists far
#: from the query, where the estimate's error (which grows with ||q - c||) is larger:
#: tests/test_rabitq.py's 30% category filter lost 0.035 recall at refine 8 and keeps it
#: at 10, so the default is 10.
RABITQ_DEFAULT_REFINE = 10


@dataclass(frozen=True)
class IndexSpec:
    """How a namespace version indexes its vectors.

    kind: "auto", "flat" or "ivf".
    nlist: number of inverted lists (coarse k-means centroids). More lists scan fewer
        vectors per probe (faster) but need more training data and more probes for recall.
    pq_m: product-quantizer sub-vectors per code (0 = lists hold full vectors, "Flat").
        Larger m is more accurate and costs m bytes a vector; dim must divide by m.
    pq_bits: bits per sub-code; only 8 is supported (256 centroids per sub-space).
    refine: re-rank the best k*refine ADC candidates with exact distances from the stored
        float32 vectors (1 = no re-ranking). Refine 4 recovers most of PQ's recall loss.
    nprobe: lists probed per query by default (search-time; override per call).
    rabitq: the lists hold RaBitQ codes (1 bit a dimension of the rotated residual, padded
        to a multiple of 64, plus 16 bytes of per-row factors: dim/8 + 16 bytes a row,
        engine/kernels/rabitq.py) instead of PQ codes; any dim works. Its refine defaults
        to :data:`RABITQ_DEFAULT_REFINE`.
    """

    kind: str = "auto"
    nlist: int = 0
    pq_m: int = 0
    pq_bits: int = 8
    refine: int = 1
    nprobe: int = 0
    rabitq: bool = False

    @classmethod
    def parse(cls, text) -> "IndexSpec":
        if isinstance(text, IndexSpec):
            return text
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(f"index spec {text!r} is not valid; expected 'auto', 'Flat' or "
                               "e.g. 'IVF1024,PQ16x8,Refine4'")
        s = text.strip()
        if s.lower() == "auto":
            return cls(kind="auto")
        if s.lower() == "flat":
            return cls(kind="flat")
        parts = [p.strip() for p in s.split(",")]
        m = _IVF_RE.match(parts[0])
        if not m:
            raise InvalidInput(f"index spec {text!r}: {parts[0]!r} is not valid; expected "
                               "'IVF<nlist>' first, e.g. 'IVF1024,PQ16x8'")
        nlist = int(m.group(1))
        if not 1 <= nlist <= 65536:
            raise InvalidInput(f"index spec {text!r}: nlist {nlist} is not in 1..65536")
        if len(parts) < 2:
            raise InvalidInput(f"index spec {text!r} needs a list encoding after {parts[0]}: "
                               "'Flat', 'PQ<m>x8' or 'RaBitQ'")
        pq_m, bits = 0, 8
        rabitq = parts[1].lower() == _RABITQ
        if parts[1].lower() != "flat" and not rabitq:
            pm = _PQ_RE.match(parts[1])
            if not pm:
                raise InvalidInput(f"index spec {text!r}: {parts[1]!r} is not valid; expected "
                                   "'Flat', 'PQ<m>x8' or 'RaBitQ'")
            pq_m = int(pm.group(1))
            bits = int(pm.group(2) or 8)
            if bits != 8:
                raise InvalidInput(f"index spec {text!r}: PQ with {bits} bits is not "
                                   "supported; expected 8")
            if not 1 <= pq_m <= 1024:
                raise InvalidInput(f"index spec {text!r}: PQ m={pq_m} is not in 1..1024")
        refine = RABITQ_DEFAULT_REFINE if rabitq else 1
        for extra in parts[2:]:
            rm = _REFINE_RE.match(extra)
            if not rm or not 1 <= int(rm.group(1)) <= 1000:
                raise InvalidInput(f"index spec {text!r}: {extra!r} is not valid; expected "
                                   "'Refine<factor>' with factor in 1..1000")
            refine = int(rm.group(1))
        if len(parts) > 3:
            raise InvalidInput(f"index spec {text!r} has too many parts")
        return cls(kind="ivf", nlist=nlist, pq_m=pq_m, pq_bits=bits, refine=refine,
                   rabitq=rabitq)

    def __str__(self) -> str:
        if self.kind == "auto":
            return "auto"
        if self.kind == "flat":
            return "Flat"
        if self.rabitq:
            text = f"IVF{self.nlist},RaBitQ"
            if self.refine != RABITQ_DEFAULT_REFINE:
                text += f",Refine{self.refine}"
            return text
        text = f"IVF{self.nlist}," + (f"PQ{self.pq_m}x{self.pq_bits}" if self.pq_m else "Flat")
        if self.refine > 1:
            text += f",Refine{self.refine}"
        return text

    def check_dim(self, dim: int) -> "IndexSpec":
        if self.kind == "ivf" and self.pq_m and dim % self.pq_m:
            raise InvalidInput(f"index spec '{self}': dim {dim} is not divisible by PQ m="
                               f"{self.pq_m}; choose m among the divisors of {dim}")
        return self

    @property
    def min_train_rows(self) -> int:
        """Live rows needed before an IVF spec trains: max(nlist * 39, 256 for PQ)."""
        if self.kind != "ivf":
            return 0
        need = self.nlist * TRAIN_POINTS_PER_LIST
        return max(need, 256) if self.pq_m else need

    @property
    def encoding(self) -> str:
        """What the lists hold: "pq", "rabitq" or "flat" (full vectors; also auto/Flat)."""
        return "rabitq" if self.rabitq else "pq" if self.pq_m else "flat"

    def default_nprobe(self) -> int:
        """The spec's nprobe, or the planner's default for its nlist (engine/planner.py).
        Kept on the instance after the first call (every default query asks)."""
        value = self.__dict__.get("_default_nprobe")
        if value is None:
            from .planner import default_nprobe
            value = default_nprobe(self.nlist, self.nprobe)
            self.__dict__["_default_nprobe"] = value    # frozen: not a field, not compared
        return value


#: auto's lists: the power of two nearest AUTO_LISTS_PER_SQRT_N * sqrt(n). Measured
#: (``python -m bench.auto_sweep``, bench/README.md): GloVe 400k x 50, query time at
#: recall@10 >= 0.9: IVF1024 (2 sqrt n) 308 us at nprobe 32, IVF2048 (the former 4 sqrt n)
#: 804 us at nprobe 64 with its largest list 5.3x the mean (the health warning is at 5.0),
#: IVF512 566 us; minilm 60k x 384: IVF512 267 us, IVF1024 229 us, within the noise.
AUTO_LISTS_PER_SQRT_N = 2.0


#: From this many dims up, "auto" trains IVF-RaBitQ instead of IVF-PQ. Measured
#: (docs/perf/rabitq.md, `python -m bench run`, recall@10 >= 0.95, same run as FAISS
#: IVFPQ + RefineFlat): RaBitQ's best single-query QPS was 1.31x our IVF-PQ's at 60k x 384
#: (minilm), 1.40x at 60k x 768, 1.16x at 60k x 1536 and 1.50x at 200k x 384 (spectral),
#: with builds 1.5-2x faster and codes no larger; below 384 dims it is not measured.
AUTO_RABITQ_MIN_DIM = 384


def auto_spec(n: int, dim: int) -> IndexSpec:
    """The IVF spec "auto" trains for ``n`` rows of ``dim``: about 2*sqrt(n) lists (a
    power of two, 64..4096, fewer when n < 64 * 39 rows; :data:`AUTO_LISTS_PER_SQRT_N`);
    from :data:`AUTO_RABITQ_MIN_DIM` dims RaBitQ codes with its default refine
    (:data:`RABITQ_DEFAULT_REFINE`), below it PQ with sub-vectors of 2 dims (4 when
    dim > 64) and refine 4. PQ needs m to divide dim; where no divisor keeps sub-vectors
    within twice that width (a prime dim such as 127 would get PQ1x8, one 127-dim
    sub-vector that barely ranks), RaBitQ codes, which take any dim."""
    want = AUTO_LISTS_PER_SQRT_N * math.sqrt(max(n, 1))
    nlist = 2 ** int(round(math.log2(max(64.0, min(4096.0, want)))))
    while nlist > 1 and nlist * TRAIN_POINTS_PER_LIST > n:
        nlist //= 2     # small namespaces (a low auto threshold): fewer lists, still trainable
    sub = 2 if dim <= 64 else 4
    m = max(1, dim // sub)
    while m > 1 and dim % m:
        m -= 1
    if dim >= AUTO_RABITQ_MIN_DIM or dim // m > 2 * sub:
        return IndexSpec(kind="ivf", nlist=nlist, rabitq=True, refine=RABITQ_DEFAULT_REFINE)
    return IndexSpec(kind="ivf", nlist=nlist, pq_m=m, refine=4)


def with_nprobe(spec: IndexSpec, nprobe: Optional[int]) -> IndexSpec:
    return spec if nprobe is None else replace(spec, nprobe=nprobe)
