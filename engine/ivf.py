"""IVF and IVF-PQ indexes over one version's rows.

Inverted lists are kept as a sealed CSR (``offsets``, ``codes``, ``pos``, sorted by list)
plus a small unsorted delta that new rows are appended to as they are written, so the
index reflects every committed write at once. When the delta grows past a fraction of the
sealed part it is merged (``seal``), dropping tombstoned rows; the merge builds new arrays
and swaps a reference, so a concurrent query sees the old lists or the new, never a mix.

Rows are identified by their position in the version's in-memory matrix. Tombstones are
skipped inside the scan through the ``alive`` mask; filters use the same mask.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace

import numba
import numpy as np

from . import planner
from .indexspec import IndexSpec
from .kernels import adctables, ivffused, ivfscan, kmeans as kmeans_k, pq as pq_k
from .kernels.threads import one_blas_thread, single_threaded
from .kernels.distances import COSINE, IP, L2

#: k-means trains on at most this many points per list (FAISS's default is 256).
MAX_TRAIN_POINTS_PER_LIST = 128
#: Lloyd iterations of the coarse quantizer and of each PQ sub-quantizer, and the PQ
#: training sample (128 points per codeword). Measured on GloVe 400k x 50, IVF1024,PQ25:
#: more iterations or points cost training time without a measurable recall gain.
COARSE_NITER = 10
PQ_NITER = 15
PQ_TRAIN_POINTS = 32768
HELD_OUT_POINTS = 8192
#: Merge the delta into the sealed lists once it holds this share of the sealed rows.
SEAL_FRACTION = 0.1
MIN_SEAL_ROWS = 16384
#: A single query whose probed lists hold more codes than this may split them across the
#: numba threads; smaller scans stay on one thread (waking the pool costs more). Decided per
#: query from the probed lists' real sizes: queries land in populous lists, which hold
#: 2-3x the average (1M x 128 synthetic, IVF1024, nprobe 8: 21.8k codes against 7.8k).
#: Whether a scan past it splits is measured, not fixed (:class:`ScanChooser`): on a quiet
#: machine the split wins (GloVe 400k, IVF1024,PQ25, nprobe 64, ~25k codes: 1,770 QPS on
#: one thread, 2,690 on two), on a busy one it loses badly, since it waits for the second
#: thread (60k x 384, IVF256,PQ48x8, nprobe 64, 2-core Xeon at load 2.5-11: serial 1.1-1.8
#: ms a query, split 2.1-18.5 ms). A fixed threshold of 100k codes (the second case's fix)
#: cost GloVe 0.67-0.78x of the split's QPS at nprobe 32-64 (bench/versus.py).
PARALLEL_SCAN_CODES = 10_000
#: Tests and benchmarks force the choice: True (split), False (serial); None measures.
SCAN_SPLIT: bool | None = None


class ScanChooser:
    """Serial or split scan for the single queries of one index, by measurement.

    Keeps a moving average of the seconds per scanned code of each way (the kernel call
    timed around it; a way's first call, which loads its kernel, is not counted) and takes
    the cheaper; the other way is tried again every
    ``EXPLORE_SERIAL`` queries while the split is preferred and every ``EXPLORE_SPLIT``
    while serial is, so a change in the machine's load is noticed. A split that waits for
    a busy core can cost 10x, so it is retried rarely: at most 1 in 256 eligible queries,
    under the 1% a p99 would show. Races between query threads only blur the averages."""

    EXPLORE_SERIAL = 64
    EXPLORE_SPLIT = 256
    ALPHA = 0.2

    def __init__(self):
        self.cost = [None, None]        # seconds per code: serial, split
        self.seen = [0, 0]              # calls timed per way (the first is not counted)
        self.calls = 0

    def forced(self) -> bool | None:
        return SCAN_SPLIT

    def split(self) -> bool:
        forced = self.forced()
        if forced is not None:
            return forced
        self.calls += 1
        serial, split = self.cost
        if serial is None:
            return False
        if split is None:
            return True             # until a split is measured (its first call is not)
        if split < serial:
            return self.calls % self.EXPLORE_SERIAL != 0
        return self.calls % self.EXPLORE_SPLIT == 0

    def record(self, split: bool, seconds: float, codes: int) -> None:
        if codes <= 0:
            return
        i = 1 if split else 0
        self.seen[i] += 1
        if self.seen[i] == 1:
            return      # a way's first call loads its kernel (and wakes the thread pool)
        c = seconds / codes
        old = self.cost[i]
        # a faster measurement is taken at once (what the way costs when it is not
        # disturbed), a slower one moves the average a step: one lucky call cannot hold
        # a slow way, a few slow ones move it off
        self.cost[i] = c if old is None or c < old else old + self.ALPHA * (c - old)

    def info(self) -> dict:
        serial, split = self.cost
        return {"serial_ns_per_code": None if serial is None else round(serial * 1e9, 3),
                "split_ns_per_code": None if split is None else round(split * 1e9, 3)}


class BatchTableChooser(ScanChooser):
    """Where a batch's query-only ADC tables (ip, and l2/cosine row terms) are built, by
    measurement, as :class:`ScanChooser` picks a scan (here "split" means BLAS): inside the
    parallel scan, one query at a time (``ivffused.pq_search_batch``), or
    ``BATCH_TABLE_BYTES`` of them at once by BLAS (``ivfscan.query_tables``, then
    ``pq_search_batch_tables``). Which is cheaper depends on the CPU and its BLAS: on a
    2-core Intel Xeon BLAS made minilm batches 1.16x faster at nprobe 32 (commit 0a1f6e9);
    on a 2-core AMD EPYC at 2.0 GHz the tables of 1,000 queries took 24-135 ms by BLAS and
    2.6-34 ms in numba (PQ25x8 to PQ192x4), and whole batches ran 15-25% faster in-kernel
    at 7 of 8 points (GloVe and 384-d, nprobe 8-64). Costs are seconds per probed list;
    batches are few and long, so the other way is retried every 16 of them."""

    EXPLORE_SERIAL = 16
    EXPLORE_SPLIT = 16

    def forced(self) -> bool | None:
        return None if BATCH_TABLES is None else BATCH_TABLES == "blas"


#: A BLAS table batch computes this many bytes of tables at a time (128 queries at PQ64,
#: 256 x 4-byte entries per sub-quantizer).
BATCH_TABLE_BYTES = 8 << 20
#: Tests and benchmarks force the batch tables: "blas" or "kernel"; None measures.
BATCH_TABLES: str | None = None
#: Encodes of at most this many rows (a write batch) run on one thread.
SMALL_ENCODE_ROWS = 16384


class TrainingCancelled(Exception):
    """A background build noticed that its database is closing."""


def train_coarse(spec: IndexSpec, X: np.ndarray, metric: int, seed: int) -> np.ndarray:
    """The coarse quantizer's centroids (nlist, dim) trained on rows X (every IVF kind)."""
    max_points = spec.nlist * MAX_TRAIN_POINTS_PER_LIST
    # ip and cosine train like FAISS's ip quantizer (unit-norm "spherical" centroids,
    # assignment by inner product); l2 uses plain L2 k-means
    coarse_metric = IP if metric in (IP, COSINE) else L2
    return kmeans_k.kmeans(X, spec.nlist, niter=COARSE_NITER, seed=seed,
                           max_points=max_points, metric=coarse_metric)


@dataclass(frozen=True)
class _Lists:
    offsets: np.ndarray   # int64 (nlist + 1)
    codes: np.ndarray     # uint8 (N, m) or (N, 0) for IVF-Flat
    pos: np.ndarray       # int64 (N,)
    end: int = 0          # 1 + the largest position held (0 when empty)
    terms: np.ndarray = field(default_factory=lambda: adctables.NO_TERMS)  # float32 (N,)


@dataclass(frozen=True)
class _Delta:
    codes: np.ndarray
    pos: np.ndarray
    lists: np.ndarray     # int32
    n: int
    order: np.ndarray     # the first n delta rows bucketed by list (counting sort) ...
    offsets: np.ndarray   # ... list l's rows are order[offsets[l]:offsets[l+1]]
    end: int = 0          # 1 + the largest position held (0 when empty)
    terms: np.ndarray = field(default_factory=lambda: adctables.NO_TERMS)  # as long as codes


def _end(pos) -> int:
    return int(pos.max()) + 1 if len(pos) else 0


def _stored_end(meta: dict, arrays: dict) -> int:
    """:func:`_end` of a bundle's lists: saved in its meta since the bundle has it (reading
    every position at open made the open grow with n), computed for older bundles."""
    end = meta.get("end")
    return int(end) if end is not None else _end(arrays["pos"])


def _delta(codes, pos, lists, n, nlist, terms=adctables.NO_TERMS) -> _Delta:
    if n == 0:                          # the empty delta of a new or reopened index
        return _Delta(codes, pos, lists, 0, np.zeros(0, np.int64),
                      np.zeros(nlist + 1, np.int64), 0, terms)
    order, offsets = ivfscan.build_csr(lists[:n].astype(np.int64), nlist)
    return _Delta(codes, pos, lists, n, order, offsets, _end(pos[:n]), terms)


def _scan_mask(mask, all_alive: bool, sealed: _Lists, d: _Delta) -> bool:
    """Whether the scan must consult ``mask`` (the view's alive rows, or a filter): not
    when every row of the view is allowed and the lists hold no row past the view (rows
    written after the query took its view). Skipping the per-row lookup saves ~10% of a
    scan (1M x 128, nprobe 8)."""
    return not (all_alive and sealed.end <= len(mask) and d.end <= len(mask))


def imbalance_factor(sizes) -> float:
    """nlist * sum(size^2) / (sum size)^2: how many times the codes of perfectly balanced
    lists a query scans when queries fall like the rows (FAISS's
    ``InvertedLists.imbalance_factor``); 1.0 is balanced, 0.0 for no rows. Unlike the
    largest list over the mean it counts how many rows sit in big lists, not the single
    biggest: the 400k GloVe demo's IVF1024 has a list 7.2x the mean and a factor of 1.26."""
    sizes = np.asarray(sizes, np.float64)
    total = sizes.sum()
    if not total:
        return 0.0
    return round(float(len(sizes) * (sizes * sizes).sum() / (total * total)), 3)


class IVFIndex:
    """Coarse quantizer + (optional) product quantizer + inverted lists."""

    def __init__(self, spec: IndexSpec, dim: int, metric: int, centroids: np.ndarray,
                 codebooks: np.ndarray | None, *, train_seconds: float = 0.0,
                 trained_rows: int = 0, train_error: float = 0.0):
        self.spec = spec
        self.spec_text = str(spec)
        self.dim = dim
        self.metric = metric
        self.centroids = np.ascontiguousarray(centroids, np.float32)
        self.codebooks = None if codebooks is None else np.ascontiguousarray(codebooks, np.float32)
        self.m = 0 if codebooks is None else codebooks.shape[0]
        # ip: lists assigned, probed and scanned by inner product. l2 and cosine: by squared
        # L2 (cosine rows are unit length and its centroids are trained spherical, so L2
        # ranks like cosine; measured on GloVe 400k with IVF1024, inner-product lists for
        # cosine had a 4x larger largest list and scanned 60-95% more codes per query)
        self.list_metric = IP if metric == IP else L2
        # (m, dsub, ksub): table loops run over codewords innermost (numpy, not a kernel:
        # a reopen then loads no compiled code before the first query needs it)
        self._cbT = (None if self.codebooks is None
                     else np.ascontiguousarray(self.codebooks.transpose(0, 2, 1)))
        # l2 and cosine ADC tables (kernels/adctables.py table_strategy): one query-only
        # table plus a term per stored row (``_Lists.terms``, ``_Delta.terms``: derived
        # state, computed whenever lists are built, loaded or appended to, never stored).
        # ``_pre`` (precomputed per-list terms) stays empty: a checkpoint still writes it, as
        # an empty array, and a stored one from an older build is not used. Setting
        # ``_row_terms`` false (bench, tests) scans with per-list or ``_pre`` tables instead.
        self._row_terms = adctables.table_strategy(self.list_metric, self.m) == "row_terms"
        self._pre = self._no_pre()
        self._seals = 0                 # bumps whenever the sealed lists are replaced
        self.train_seconds = train_seconds
        self.trained_rows = trained_rows
        self.train_error = train_error
        self.trained_upto = 0
        self._lock = threading.Lock()
        self._chooser = ScanChooser()    # serial or split single-query scans
        self._tables = BatchTableChooser()  # BLAS or in-kernel batch tables
        nlist = self.centroids.shape[0]
        self._lists = _Lists(np.zeros(nlist + 1, np.int64), np.zeros((0, self.m), np.uint8),
                             np.zeros(0, np.int64))
        self._delta = _delta(np.zeros((0, self.m), np.uint8), np.zeros(0, np.int64),
                             np.zeros(0, np.int32), 0, nlist, self._no_delta_terms())

    def _no_pre(self) -> np.ndarray:
        if self.codebooks is None:
            return np.zeros((0, 0, 0), np.float32)
        m, ksub, _ = self.codebooks.shape
        return np.zeros((0, m, ksub), np.float32)

    def _precomputed(self) -> np.ndarray:
        """Precomputed per-list l2 terms (bench/ivf_dims.py times them against row terms)."""
        if self.codebooks is None:
            return np.zeros((0, 0, 0), np.float32)
        return adctables.precompute_l2_terms(self.centroids, self.codebooks)

    def _sealed_terms(self, offsets, codes) -> np.ndarray:
        if not self._row_terms:
            return adctables.NO_TERMS
        return adctables.row_l2_terms(offsets, codes, self.centroids, self._cbT)

    def _delta_terms(self, lists, codes) -> np.ndarray:
        """The row terms of loose rows (a write batch) with these list ids and codes."""
        return adctables.delta_l2_terms(lists, codes, self.centroids, self.codebooks)

    def _terms(self, sealed: _Lists, d: _Delta):
        """(sealed, delta) row terms for the scan kernels, or NO_TERMS for both."""
        if not self._row_terms or self._pre.shape[0]:
            return adctables.NO_TERMS, adctables.NO_TERMS
        return self._with_terms(sealed).terms, d.terms

    def _with_terms(self, sealed: _Lists) -> _Lists:
        """``sealed`` with its row terms. Lists loaded from a checkpoint without stored
        terms (an older bundle) get them here, on first use by a kernel query, not at open:
        a reopen then runs no numba code and does no per-row work."""
        if sealed.terms is not None:
            return sealed
        terms = self._sealed_terms(sealed.offsets, sealed.codes)
        done = replace(sealed, terms=terms)
        with self._lock:
            if self._lists is sealed:
                self._lists = done
        return done

    def _stored_terms(self, arrays: dict, codes) -> np.ndarray | None:
        """The checkpoint's row terms when they fit these codes, else None (lazy)."""
        if not self._row_terms:
            return adctables.NO_TERMS
        terms = arrays.get("terms")
        if terms is None or len(terms) != len(codes):
            return None
        return terms

    @property
    def table_strategy(self) -> str:
        """How the ADC scan builds its tables: "query" (ip), "row_terms" (l2, cosine), or
        (set by bench/tests) "precomputed" / "per_list"."""
        if not self.m:
            return "none"
        if self.list_metric == IP:
            return "query"
        if self._pre.shape[0]:
            return "precomputed"
        return "row_terms" if self._row_terms else "per_list"

    def _no_delta_terms(self) -> np.ndarray:
        """The terms of an empty delta: as long as its codes (0) when row terms are on."""
        return np.zeros(0, np.float32) if self._row_terms else adctables.NO_TERMS

    @property
    def nlist(self) -> int:
        return self.centroids.shape[0]

    # -- training and encoding ---------------------------------------------------------------
    @classmethod
    def train(cls, spec: IndexSpec, X: np.ndarray, metric: int, *, seed: int = 0,
              should_stop=None) -> "IVFIndex":
        """Train the coarse quantizer (and PQ codebooks on residuals) on rows of X.

        ``should_stop()`` is checked between stages; when it turns true the build raises
        :class:`TrainingCancelled` (a database closing does not wait for a whole build).
        ``train_error`` is measured on rows held out of PQ training, so that data from the
        training distribution scores about 1x it (the drift baseline).
        """
        def check():
            if should_stop is not None and should_stop():
                raise TrainingCancelled()
        if spec.rabitq and cls is IVFIndex:
            from .rabitq import RaBitQIndex
            return RaBitQIndex.train(spec, X, metric, seed=seed, should_stop=should_stop)
        t0 = time.perf_counter()
        X = np.ascontiguousarray(X, np.float32)
        centroids = train_coarse(spec, X, metric, seed)
        check()
        codebooks = None
        rng = np.random.default_rng(seed + 1)
        take = min(len(X), PQ_TRAIN_POINTS + HELD_OUT_POINTS)
        sample = X[np.sort(rng.choice(len(X), take, replace=False))] if take < len(X) else X
        sample = sample[rng.permutation(len(sample))]
        fit, held = sample[:PQ_TRAIN_POINTS], sample[PQ_TRAIN_POINTS:]
        if len(held) < 256:             # small data: no rows to spare, measure on the fit
            held = fit
        if spec.pq_m:
            labels, _ = kmeans_k.assign(fit, centroids, IP if metric == IP else L2)
            residuals = np.ascontiguousarray(fit - centroids[labels])
            codebooks = pq_k.pq_train(residuals, spec.pq_m, niter=PQ_NITER, seed=seed,
                                      max_points=PQ_TRAIN_POINTS)
            check()
        index = cls(spec, X.shape[1], metric, centroids, codebooks,
                    train_seconds=time.perf_counter() - t0, trained_rows=len(X))
        index.train_error = index.quantization_error(np.ascontiguousarray(held))
        return index

    def encode(self, X: np.ndarray):
        """Lists (int32) and PQ codes (uint8 (n, m)) for rows X as the index stores them.

        A write-sized batch runs on one thread (see kernels/threads.py); bulk encodes
        (training, re-indexing) use every thread.
        """
        X = np.ascontiguousarray(X, np.float32)
        if len(X) <= SMALL_ENCODE_ROWS:
            with single_threaded():
                return self._encode(X)
        return self._encode(X)

    def _encode(self, X: np.ndarray):
        labels, _ = kmeans_k.assign(X, self.centroids, self.list_metric)
        if self.m:
            residuals = np.ascontiguousarray(X - self.centroids[labels])
            codes = pq_k.pq_encode(residuals, self.codebooks)
        else:
            codes = np.zeros((len(X), 0), np.uint8)
        return labels.astype(np.int32), codes

    def quantization_error(self, X: np.ndarray) -> float:
        """Mean squared error of rows X against their encoding (nearest centroid plus the
        decoded PQ residual; the centroid alone for IVF-Flat). Drift: compare with
        ``train_error``, the same measure on the training sample."""
        if len(X) == 0:
            return 0.0
        X = np.ascontiguousarray(X, np.float32)
        lists, codes = self.encode(X)
        recon = self.centroids[lists]
        if self.m:
            recon = recon + pq_k.pq_decode(codes, self.codebooks)
        return float(np.mean(np.sum((X - recon) ** 2, axis=1)))

    def reconstruct(self, lists: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """float64 (n, dim): what list ids and codes stand for (the centroid plus the decoded
        PQ residual; the centroid alone for IVF-Flat). verify compares stored and fresh
        encodings by it."""
        out = self.centroids[lists].astype(np.float64)
        if self.m:
            out += pq_k.pq_decode(np.ascontiguousarray(codes), self.codebooks)
        return out

    def empty_like(self) -> "IVFIndex":
        """A new index with this one's trained quantizers and no rows (repair re-encodes
        into it)."""
        return type(self)(self.spec, self.dim, self.metric, np.array(self.centroids),
                          None if self.codebooks is None else np.array(self.codebooks),
                          train_seconds=self.train_seconds, trained_rows=self.trained_rows,
                          train_error=self.train_error)

    def trained_finite(self) -> bool:
        """Whether the trained arrays hold only finite values (repair keeps the index)."""
        return bool(np.isfinite(self.centroids).all()) and (
            self.codebooks is None or bool(np.isfinite(self.codebooks).all()))

    # -- lists ---------------------------------------------------------------------------------
    def load_lists(self, positions: np.ndarray, lists: np.ndarray, codes: np.ndarray):
        """Replace the sealed lists with these rows (used after training and on reopen)."""
        order, offsets = ivfscan.build_csr(lists.astype(np.int64), self.nlist)
        codes = np.ascontiguousarray(codes[order])
        sealed = _Lists(offsets, codes, np.ascontiguousarray(positions[order].astype(np.int64)),
                        _end(positions), self._sealed_terms(offsets, codes))
        with self._lock:
            self._lists = sealed
            self._delta = _delta(np.zeros((0, self.m), np.uint8), np.zeros(0, np.int64),
                                 np.zeros(0, np.int32), 0, self.nlist, self._no_delta_terms())
            self._seals += 1

    def add(self, positions: np.ndarray, lists: np.ndarray, codes: np.ndarray, alive=None):
        """Append encoded rows to the delta (writes are serialised by the caller)."""
        d = self._delta
        m = len(positions)
        need = d.n + m
        if need > len(d.pos):
            cap = max(1024, 2 * len(d.pos), need)
            dc = np.zeros((cap, self.m), np.uint8)
            dp = np.full(cap, -1, np.int64)
            dl = np.zeros(cap, np.int32)
            dc[: d.n] = d.codes[: d.n]
            dp[: d.n] = d.pos[: d.n]
            dl[: d.n] = d.lists[: d.n]
            dt = adctables.NO_TERMS
            if self._row_terms:
                dt = np.zeros(cap, np.float32)
                dt[: d.n] = d.terms[: d.n]
        else:
            dc, dp, dl, dt = d.codes, d.pos, d.lists, d.terms
        dc[d.n:need] = codes
        dp[d.n:need] = positions
        dl[d.n:need] = lists
        if self._row_terms:
            dt[d.n:need] = self._delta_terms(lists, dc[d.n:need])
        new = _delta(dc, dp, dl, need, self.nlist, dt)
        with self._lock:
            self._delta = new
        if alive is not None and need > max(MIN_SEAL_ROWS, SEAL_FRACTION * len(self._lists.pos)):
            self.seal(alive)

    def seal(self, alive: np.ndarray):
        """Merge the delta into the sealed lists, dropping rows that are no longer alive."""
        with self._lock:
            sealed, d = self._lists, self._delta
        sizes = np.diff(sealed.offsets)
        lists = np.concatenate([np.repeat(np.arange(self.nlist, dtype=np.int64), sizes),
                                d.lists[: d.n].astype(np.int64)])
        pos = np.concatenate([sealed.pos, d.pos[: d.n]])
        codes = np.concatenate([sealed.codes, d.codes[: d.n]])
        keep = alive[pos] if len(pos) else np.zeros(0, bool)
        self.load_lists(pos[keep], lists[keep], codes[keep])

    def snapshot(self):
        with self._lock:
            return self._lists, self._delta

    def sizes(self) -> np.ndarray:
        sealed, d = self.snapshot()
        sizes = np.diff(sealed.offsets).copy()
        if d.n:
            sizes += np.bincount(d.lists[: d.n], minlength=self.nlist)
        return sizes

    # -- search --------------------------------------------------------------------------------
    def search(self, X, q, k: int, nprobe: int, refine: int, mask, all_alive: bool = False,
               min_lists: int = -1, target_share: float = 1.0):
        """Top-k (distance, position) for one query, exact distances for what is returned.

        Probe (one compiled call), then the ADC scan of the probed lists (rows not allowed
        by ``mask`` are skipped inside the scan; ``all_alive`` lets it skip the lookup, see
        :func:`_scan_mask`) and exact re-ranking of the best ``k * refine`` (a second one).
        ``min_lists`` >= 0 widens a filtered scan: ``nprobe`` lists are probed in order and
        the scan stops, after the first ``min_lists``, once it has seen ``target_share`` as
        many allowed rows as those first lists hold (kernels/ivfscan.py ``widen_target``).
        Returns (dist, pos, lists scanned, whether the widened scan saw that many rows).
        """
        nprobe = min(nprobe, self.nlist)
        sealed, d = self.snapshot()
        use_mask = _scan_mask(mask, all_alive, sealed, d)
        if self.m:
            kk = max(k * refine, k)
            probes, count = ivffused.probe_and_count(q, self.centroids, nprobe,
                                                     self.list_metric, sealed.offsets, d.offsets)
            threads = numba.get_num_threads() if count > PARALLEL_SCAN_CODES else 1
            st, dt = self._terms(sealed, d)
            if threads > 1:
                split = self._chooser.split()
                t0 = time.perf_counter()
                if split:
                    out = ivffused.pq_search_parallel(
                        q, X, self.centroids, self._cbT, self._pre, probes, sealed.offsets,
                        sealed.codes, sealed.pos, st, d.codes, d.pos, dt, d.order, d.offsets,
                        mask, use_mask, self.list_metric, self.metric, kk, k, threads,
                        min_lists, target_share)
                else:
                    out = ivffused.pq_search_serial(
                        q, X, self.centroids, self._cbT, self._pre, probes, sealed.offsets,
                        sealed.codes, sealed.pos, st, d.codes, d.pos, dt, d.order, d.offsets,
                        mask, use_mask, self.list_metric, self.metric, kk, k, min_lists,
                        target_share)
                self._chooser.record(split, time.perf_counter() - t0, count)
                return out
            return ivffused.pq_search_serial(
                q, X, self.centroids, self._cbT, self._pre, probes, sealed.offsets,
                sealed.codes, sealed.pos, st, d.codes, d.pos, dt, d.order, d.offsets, mask,
                use_mask, self.list_metric, self.metric, kk, k, min_lists, target_share)
        return ivffused.flat_lists_serial(
            q, X, self.centroids, nprobe, self.list_metric, sealed.offsets, sealed.pos, d.pos,
            d.order, d.offsets, mask, use_mask, self.metric, k, min_lists, target_share)

    def search_batch_padded(self, X, Q, k: int, nprobe: int, refine: int, mask,
                            all_alive: bool = False, min_lists: int = -1,
                            target_share: float = 1.0):
        """:meth:`search` for every row of Q, queries in parallel: ``(D (nq, k) float32,
        I (nq, k) int64 positions, lists scanned (nq,), reached (nq,) bool)`` padded with
        +inf / -1."""
        nprobe = min(nprobe, self.nlist)
        sealed, d = self.snapshot()
        use_mask = _scan_mask(mask, all_alive, sealed, d)
        # the probe product is small: on one BLAS thread it does not wait for numba's pool
        # (GloVe, 1,000 queries, nprobe 8: probe + scan 77 ms with OpenBLAS's 2 threads,
        # 42 ms with one)
        with one_blas_thread():
            probes = ivfscan.probe_lists_batch(Q, self.centroids, nprobe, self.list_metric)
        if self.m:
            kk = max(k * refine, k)
            st, dt = self._terms(sealed, d)
            if self.list_metric == IP or len(st) == len(sealed.codes) and \
                    len(dt) == len(d.codes) and not self._pre.shape[0]:
                blas = self._tables.split()
                t0 = time.perf_counter()
                if blas:
                    out = self._batch_with_tables(X, Q, probes, sealed, d, st, dt, mask,
                                                  use_mask, kk, k, min_lists, target_share)
                else:
                    out = ivffused.pq_search_batch(
                        Q, X, self.centroids, self._cbT, self._pre, probes, sealed.offsets,
                        sealed.codes, sealed.pos, st, d.codes, d.pos, dt, d.order, d.offsets,
                        mask, use_mask, self.list_metric, self.metric, kk, k, min_lists,
                        target_share)
                self._tables.record(blas, time.perf_counter() - t0, probes.size)
                return out
            return ivffused.pq_search_batch(
                Q, X, self.centroids, self._cbT, self._pre, probes, sealed.offsets, sealed.codes,
                sealed.pos, st, d.codes, d.pos, dt, d.order, d.offsets, mask, use_mask,
                self.list_metric, self.metric, kk, k, min_lists, target_share)
        return ivffused.flat_lists_batch(
            Q, X, probes, sealed.offsets, sealed.pos, d.pos, d.order, d.offsets, mask, use_mask,
            self.metric, k, min_lists, target_share)

    def _batch_with_tables(self, X, Q, probes, sealed, d, st, dt, mask, use_mask, kk, k,
                           min_lists, target_share):
        """ip and row-terms batches: the query tables of BATCH_TABLE_BYTES worth of queries
        at a time by BLAS (kernels/ivfscan.query_tables), then the parallel scan."""
        m, ksub, _ = self.codebooks.shape
        step = max(1, BATCH_TABLE_BYTES // (m * ksub * 4))
        scale = -1.0 if self.list_metric == IP else -2.0
        parts = []
        for s in range(0, len(Q), step):
            with one_blas_thread():
                tables = ivfscan.query_tables(Q[s:s + step], self._cbT, scale)
            parts.append(ivffused.pq_search_batch_tables(
                Q[s:s + step], tables, X, self.centroids, self._cbT, self._pre,
                probes[s:s + step], sealed.offsets, sealed.codes, sealed.pos, st, d.codes, d.pos,
                dt, d.order, d.offsets, mask, use_mask, self.list_metric, self.metric, kk, k,
                min_lists, target_share))
        if len(parts) == 1:
            return parts[0]
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))

    def search_batch(self, X, Q, k: int, nprobe: int, refine: int, mask,
                     all_alive: bool = False, min_lists: int = -1, target_share: float = 1.0):
        """:meth:`search_batch_padded` as a list of (dist, pos) per query, padding cut."""
        D, I, _, _ = self.search_batch_padded(X, Q, k, nprobe, refine, mask, all_alive,
                                              min_lists, target_share)
        out = []
        for i in range(len(Q)):
            keep = I[i] >= 0
            out.append((D[i][keep], I[i][keep]))
        return out

    def row_cost(self) -> float:
        """The planner's cost of one row a masked scan passes (engine/planner.py): the
        engine's own IVF-PQ scans (query-only tables, "query" / "row_terms") have their
        measured cost; per-list tables and IVF-Flat keep MASK_COST."""
        if self.m and self.table_strategy in ("query", "row_terms"):
            return planner.PQ_MASK_COST
        return planner.MASK_COST

    def scan_costs(self) -> tuple[int, int]:
        """(cost of opening one probed list, cost of scoring one allowed code) in the
        planner's units (multiply-adds or table reads; engine/planner.py)."""
        if not self.m:
            return 0, self.dim
        m, ksub, _ = self.codebooks.shape
        strategy = self.table_strategy
        if strategy in ("query", "row_terms"):
            return self.dim, m
        if strategy == "precomputed":
            return m * ksub + self.dim, m
        return ksub * self.dim, m

    # -- persistence ----------------------------------------------------------------------------
    def to_arrays(self, alive: np.ndarray) -> tuple[dict, dict]:
        """(meta, arrays) for a checkpoint: the lists in sealed (CSR) form, delta folded
        in and dead rows dropped, so that :meth:`from_arrays` uses them as they are. The
        meta's ``seals`` is the seal count of the lists captured (:meth:`rebase`)."""
        with self._lock:
            sealed, d, seals = self._lists, self._delta, self._seals
        if self._row_terms:
            sealed = self._with_terms(sealed)
        sizes = np.diff(sealed.offsets)
        lists = np.concatenate([np.repeat(np.arange(self.nlist, dtype=np.int64), sizes),
                                d.lists[: d.n].astype(np.int64)])
        pos = np.concatenate([sealed.pos, d.pos[: d.n]])
        codes = np.concatenate([sealed.codes, d.codes[: d.n]])
        keep = alive[pos] if len(pos) else np.zeros(0, bool)
        pos, lists, codes = pos[keep], lists[keep], codes[keep]
        order, offsets = ivfscan.build_csr(lists, self.nlist)
        meta = {"spec": str(self.spec), "dim": self.dim, "metric": self.metric,
                "train_seconds": self.train_seconds, "trained_rows": self.trained_rows,
                "train_error": self.train_error, "m": self.m, "trained_upto": self.trained_upto,
                "covers": int(len(alive)), "end": _end(pos), "seals": seals}
        arrays = {"centroids": self.centroids, "offsets": offsets,
                  "pos": pos[order], "codes": codes[order], "pre": self._pre}
        if self._row_terms:
            terms = np.concatenate([sealed.terms, d.terms[: d.n]])[keep]
            arrays["terms"] = np.ascontiguousarray(terms[order], np.float32)
        if self.m:
            arrays["codebooks"] = self.codebooks
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict) -> "IVFIndex":
        """The index saved by :meth:`to_arrays`; its lists and codes are the arrays
        themselves (views of a checkpoint bundle), not copies, and so are the row terms
        (derived state stored with them; computed on first use when a bundle lacks them). A
        stored ``pre`` (older builds wrote non-empty ones) is not used."""
        spec = IndexSpec.parse(meta["spec"])
        if spec.rabitq and cls is IVFIndex:
            from .rabitq import RaBitQIndex
            return RaBitQIndex.from_arrays(meta, arrays)
        codebooks = arrays.get("codebooks")
        index = cls(spec, meta["dim"], meta["metric"],
                    np.array(arrays["centroids"], np.float32),
                    None if codebooks is None else np.array(codebooks, np.float32),
                    train_seconds=meta["train_seconds"], trained_rows=meta["trained_rows"],
                    train_error=meta["train_error"])
        index.trained_upto = meta.get("trained_upto", 0)
        codes = index._codes2d(arrays["codes"])
        index._lists = _Lists(arrays["offsets"], codes, arrays["pos"], _stored_end(meta, arrays),
                              index._stored_terms(arrays, codes))
        return index

    def _codes2d(self, codes):
        return codes.reshape(-1, self.m) if self.m else np.zeros((len(codes), 0), np.uint8)

    def rebase(self, meta: dict, arrays: dict, n0: int):
        """After a checkpoint that captured this index over positions below ``n0`` (its
        :meth:`to_arrays` ``meta`` and ``arrays``): its lists become the sealed part (views
        of the bundle), the delta keeps later rows. Skipped when the lists were sealed again
        since the capture (they are then newer). Until this ran at all (``seals`` was
        compared with a count nothing set), the index kept its pre-checkpoint lists and a
        delta that grew until the next training, and held the replaced bundle mapped."""
        with self._lock:
            d = self._delta
            if self._seals != meta.get("seals", -1):
                return
            keep = np.flatnonzero(d.pos[: d.n] >= n0)
            codes = self._codes2d(arrays["codes"])
            self._lists = _Lists(arrays["offsets"], codes, arrays["pos"],
                                 _stored_end(meta, arrays), self._stored_terms(arrays, codes))
            self._delta = _delta(np.ascontiguousarray(d.codes[keep]),
                                 np.ascontiguousarray(d.pos[keep]),
                                 np.ascontiguousarray(d.lists[keep]), len(keep), self.nlist,
                                 np.ascontiguousarray(d.terms[keep]) if self._row_terms
                                 else adctables.NO_TERMS)

    def info(self) -> dict:
        sizes = self.sizes()
        mean = float(sizes.mean()) if len(sizes) else 0.0
        return {
            "spec": str(self.spec),
            "nlist": self.nlist,
            "pq_m": self.m,
            "code_bytes": self.m,
            "adc_tables": self.table_strategy,
            "precomputed_bytes": int(self._pre.nbytes),
            "row_terms_bytes": int(getattr(self.snapshot()[0].terms, "nbytes", 0)),
            "refine": self.spec.refine,
            "default_nprobe": self.spec.default_nprobe(),
            "train_seconds": round(self.train_seconds, 3),
            "trained_rows": self.trained_rows,
            "train_error": self.train_error,
            "trained_upto": self.trained_upto,
            "rows_in_lists": int(sizes.sum()),
            "delta_rows": self.snapshot()[1].n,
            "list_size_min": int(sizes.min()) if len(sizes) else 0,
            "list_size_max": int(sizes.max()) if len(sizes) else 0,
            "list_size_mean": round(mean, 2),
            "list_imbalance": round(float(sizes.max()) / mean, 3) if mean else 0.0,
            "imbalance_factor": imbalance_factor(sizes),
            "empty_lists": int((sizes == 0).sum()),
        }
