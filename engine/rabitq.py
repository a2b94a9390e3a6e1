"""IVF-RaBitQ: inverted lists of 1-bit codes of randomly rotated residuals (spec
``IVF<nlist>,RaBitQ[,Refine<r>]``; the codes and the scan: engine/kernels/rabitq.py).

It is an :class:`~.ivf.IVFIndex` whose code rows are RaBitQ codes instead of PQ codes: each
row is ``code_bytes(dim)`` = D'/8 + 16 bytes (D' = dim rounded up to 64) held as uint8 in
the same lists, so the IVF scaffolding is shared as it is: sealed CSR plus delta, incremental
``add`` and ``seal``, the alive mask and filters, the widened filtered scan, checkpoints (the
lists are views of the bundle) and compaction (positions remapped, codes untouched). What it
adds is trained state (the rotation: its random signs (4, D') and R itself (D', D') dense,
the rotated centroids R c_l (nlist, D') and their mean g' (l2; zero for ip), checkpointed as
the bundle arrays ``ivf.rotation_signs``, ``ivf.rotation``, ``ivf.rcentroids`` and
``ivf.rcenter``) and its own encode and scan. Queries are estimated by AND + popcount
against one 4-bit query, q' - g', for every list, then the best ``k * refine`` are
re-ranked exactly from the stored float32 rows. For l2 and cosine each code row has a term
(kernels/rabitq.py ``list_terms``: derived from the code, like IVF-PQ's row terms kept in
``_Lists.terms`` / ``_Delta.terms`` and stored with a checkpoint as ``ivf.terms``; a bundle
written before them gets them on the first kernel query, not at open).

A single query is one compiled call (probe, rotate, scan, re-rank) on one thread (a widened
filtered scan may split, :meth:`RaBitQIndex.search`); a batch
rotates and probes by BLAS and scans its queries in parallel. The cold numpy path of
engine/warmup.py runs :meth:`RaBitQIndex.search_numpy`, the same search in numpy.
"""

from __future__ import annotations

import math
import time

import numba
import numpy as np

from . import planner
from .indexspec import IndexSpec
from . import ivf
from .ivf import (HELD_OUT_POINTS, IVFIndex, TrainingCancelled, _Lists, _delta, _stored_end,
                  train_coarse)
from .kernels import adctables, ivfscan, kmeans as kmeans_k, rabitq as rq
from .kernels.distances import L2
from .kernels.threads import one_blas_thread

#: The rotation's seed offset from the build seed (any fixed value; stored with the index).
ROTATION_SEED = 3
#: Rows of the held-out sample the training error is measured on.
ERROR_SAMPLE = HELD_OUT_POINTS
#: Masks whose list-order bits (kernels/bitset.py ``list_bits``) an index keeps, most
#: recent first out last; a mask gets them the second time a widened scan sees it.
LIST_BITS_ENTRIES = 4


class RaBitQIndex(IVFIndex):
    """Coarse quantizer + random rotation + RaBitQ codes in inverted lists."""

    def __init__(self, spec: IndexSpec, dim: int, metric: int, centroids: np.ndarray,
                 signs: np.ndarray, rotation: np.ndarray | None = None,
                 rcentroids: np.ndarray | None = None, rcenter: np.ndarray | None = None, *,
                 train_seconds: float = 0.0, trained_rows: int = 0, train_error: float = 0.0):
        super().__init__(spec, dim, metric, centroids, None, train_seconds=train_seconds,
                         trained_rows=trained_rows, train_error=train_error)
        # the rotation: its random signs (single queries rotate by the fast transform) and
        # the same matrix dense (encodes and batches rotate by BLAS)
        self.signs = np.ascontiguousarray(signs, np.float32)
        if rotation is None:
            rotation = rq.random_rotation_of(self.signs)
        self.rotation = np.ascontiguousarray(rotation, np.float32)
        self.dpad = self.rotation.shape[0]
        self.words = self.dpad // 64
        if rcentroids is None:
            rcentroids = self.centroids @ self.rotation[:, :dim].T
        self.rcentroids = np.ascontiguousarray(rcentroids, np.float32)
        # the centre the one quantized query is taken from (kernels/rabitq.py): l2 the mean
        # rotated centroid, ip zero (its estimate needs no residual)
        if rcenter is None:
            rcenter = (self.rcentroids.mean(axis=0, dtype=np.float64)
                       if self.list_metric == L2 and len(self.rcentroids)
                       else np.zeros(self.dpad))
        self.rcenter = np.ascontiguousarray(rcenter, np.float32)
        self.m = rq.code_bytes(dim)      # bytes of a code row (the lists' column count)
        #: eps0 of the re-rank's error bound (kernels/rabitq.py BOUND_EPS; < 0: re-rank all)
        self.bound_eps = rq.BOUND_EPS
        self._row_terms = self.list_metric == L2
        nlist = self.centroids.shape[0]
        self._lists = _Lists(np.zeros(nlist + 1, np.int64), np.zeros((0, self.m), np.uint8),
                             np.zeros(0, np.int64), 0, self._no_delta_terms())
        self._delta = _delta(np.zeros((0, self.m), np.uint8), np.zeros(0, np.int64),
                             np.zeros(0, np.int32), 0, nlist, self._no_delta_terms())
        self._views_cache = None        # (sealed, delta, their code views): _code_views
        self._bits = {}                 # id(mask) -> (mask, sealed, bits or None): _list_bits

    # -- training and encoding ---------------------------------------------------------------
    @classmethod
    def train(cls, spec: IndexSpec, X: np.ndarray, metric: int, *, seed: int = 0,
              should_stop=None) -> "RaBitQIndex":
        """Train the coarse quantizer on rows of X and draw the rotation (RaBitQ itself
        learns nothing); ``train_error`` is the reconstruction error on held-out rows."""
        t0 = time.perf_counter()
        X = np.ascontiguousarray(X, np.float32)
        centroids = train_coarse(spec, X, metric, seed)
        if should_stop is not None and should_stop():
            raise TrainingCancelled()
        signs = rq.rotation_signs(X.shape[1], seed + ROTATION_SEED)
        index = cls(spec, X.shape[1], metric, centroids, signs,
                    train_seconds=time.perf_counter() - t0, trained_rows=len(X))
        rng = np.random.default_rng(seed + 1)
        held = X if len(X) <= ERROR_SAMPLE else X[np.sort(rng.choice(len(X), ERROR_SAMPLE,
                                                                     replace=False))]
        index.train_error = index.quantization_error(held)
        return index

    def _encode(self, X: np.ndarray):
        labels, _ = kmeans_k.assign(X, self.centroids, self.list_metric)
        residuals = np.ascontiguousarray(X - self.centroids[labels])
        return labels.astype(np.int32), rq.encode(residuals, self.rotation)

    def reconstruct(self, lists: np.ndarray, codes: np.ndarray) -> np.ndarray:
        return (self.centroids[lists].astype(np.float64)
                + rq.decode_ref(np.ascontiguousarray(codes), self.rotation, self.dim))

    def quantization_error(self, X: np.ndarray) -> float:
        if len(X) == 0:
            return 0.0
        X = np.ascontiguousarray(X, np.float32)
        lists, codes = self.encode(X)
        recon = self.reconstruct(lists, codes)
        return float(np.mean(np.sum((X - recon) ** 2, axis=1)))

    def empty_like(self) -> "RaBitQIndex":
        return RaBitQIndex(self.spec, self.dim, self.metric, np.array(self.centroids),
                           np.array(self.signs), np.array(self.rotation),
                           np.array(self.rcentroids), np.array(self.rcenter),
                           train_seconds=self.train_seconds, trained_rows=self.trained_rows,
                           train_error=self.train_error)

    def trained_finite(self) -> bool:
        return bool(np.isfinite(self.centroids).all() and np.isfinite(self.rotation).all()
                    and np.isfinite(self.rcentroids).all() and np.isfinite(self.rcenter).all())

    # -- row terms (l2, cosine) ----------------------------------------------------------------
    def _sealed_terms(self, offsets, codes) -> np.ndarray:
        if not self._row_terms:
            return adctables.NO_TERMS
        words, fac = rq.views(codes)
        return rq.list_terms(offsets, words, fac, self.rcentroids, self.rcenter)

    def _delta_terms(self, lists, codes) -> np.ndarray:
        words, fac = rq.views(codes)
        return rq.row_terms(np.ascontiguousarray(lists, np.int64), words, fac,
                            self.rcentroids, self.rcenter)

    def _stored_terms(self, arrays: dict, codes) -> np.ndarray | None:
        """As :meth:`IVFIndex._stored_terms`; terms are only those of the stored centre (a
        bundle without ``rcenter`` predates them)."""
        if self._row_terms and "rcenter" not in arrays:
            return None
        return super()._stored_terms(arrays, codes)

    # -- search --------------------------------------------------------------------------------
    def search(self, X, q, k: int, nprobe: int, refine: int, mask, all_alive: bool = False,
               min_lists: int = -1, target_share: float = 1.0):
        """As :meth:`IVFIndex.search`: (dist, pos, lists scanned, target reached).

        A widened filtered scan over many lists may split them over the numba threads
        (:func:`.kernels.rabitq.rabitq_search_parallel`) when this index's
        :class:`~.ivf.ScanChooser` for its selectivity measures that faster; unfiltered
        queries stay on one thread (the 1-thread figure the bench compares)."""
        nprobe = min(nprobe, self.nlist)
        sealed, d, words, fac, dwords, dfac, st, dt = self._code_views()
        use_mask = ivf._scan_mask(mask, all_alive, sealed, d)
        kk = max(k * refine, k)
        chooser = threads = None
        if (min_lists >= 0 and nprobe * (len(sealed.pos) + int(d.n))
                > ivf.PARALLEL_SCAN_CODES * self.nlist):
            threads = numba.get_num_threads()
            chooser = self._widen_chooser(target_share) if threads > 1 else None
        split = chooser is not None and chooser.split()
        lbits = self._list_bits(mask, sealed) if use_mask and min_lists >= 0 else None
        use_lbits = lbits is not None
        if lbits is None:
            lbits = rq.NO_BITS
        t0 = time.perf_counter() if chooser is not None else 0.0
        if split:
            probes = ivfscan.probe(q, self.centroids, nprobe, self.list_metric)
            dist, pos, scanned, reached, _ = rq.rabitq_search_parallel(
                q, X, self.signs, self.rcentroids, self.rcenter, probes, sealed.offsets, words,
                fac, sealed.pos, st, dwords, dfac, d.pos, dt, d.order, d.offsets, mask,
                use_mask, lbits, use_lbits, self.list_metric, self.metric, kk, k, threads,
                min_lists, target_share, self.bound_eps)
        else:
            dist, pos, scanned, reached, _ = rq.rabitq_search_serial(
                q, X, self.signs, self.centroids, self.rcentroids, self.rcenter, nprobe,
                self.list_metric, sealed.offsets, words, fac, sealed.pos, st, dwords, dfac,
                d.pos, dt, d.order, d.offsets, mask, use_mask, lbits, use_lbits, self.metric,
                kk, k, min_lists, target_share, self.bound_eps)
        if chooser is not None:
            # cost per list opened: both ways stop early, at different lists
            chooser.record(split, time.perf_counter() - t0, int(scanned))
        return dist, pos, scanned, reached

    def _list_bits(self, mask, sealed):
        """The list-order bits of ``mask`` over ``sealed`` (kernels/bitset.py ``list_bits``),
        or None. A widened filtered scan visits many lists and looks every row's position
        up in the mask (~4 ns a row at 60k x 384); walking set bits skips that. Building them
        costs a pass over every sealed row, so a mask gets them on its second widened scan:
        a repeated filter (the same read-only array from the field index's result reuse)
        pays once, a filter seen once pays nothing. Entries hold their mask, so its id is
        not reused while kept; only read-only masks qualify (one written in place would
        leave stale bits)."""
        if mask.flags.writeable:
            return None
        key = id(mask)
        with self._lock:
            hit = self._bits.pop(key, None)
            if hit is not None and (hit[0] is not mask or hit[1] is not sealed):
                hit = None
            if hit is not None:
                self._bits[key] = hit            # most recent last
            if hit is not None and hit[2] is not None:
                return hit[2]
        if hit is None:                          # first sight: remember it, no bits yet
            entry = (mask, sealed, None)
        else:
            entry = (mask, sealed, rq.list_bits(sealed.pos, mask))
        with self._lock:
            self._bits.pop(key, None)
            while len(self._bits) >= LIST_BITS_ENTRIES:
                self._bits.pop(next(iter(self._bits)))
            self._bits[key] = entry
        return entry[2]

    def _widen_chooser(self, target_share: float) -> "ivf.ScanChooser":
        """This index's serial-or-split chooser for widened scans of one selectivity
        octave (target_share = s ** (1/3)): a list's cost depends on how many of its rows
        match, so only like scans are compared."""
        octave = int(round(-3.0 * math.log2(max(target_share, 1e-3))))
        choosers = self.__dict__.setdefault("_widen_choosers", {})
        chooser = choosers.get(octave)
        if chooser is None:
            chooser = choosers[octave] = ivf.ScanChooser()
        return chooser

    def _code_views(self):
        """(sealed, delta, their words and factors, their row terms): the views of this
        snapshot's codes, made once per snapshot (every query needs them; four numpy views
        cost more than the check). Sealed lists without terms get them here."""
        sealed, d = self.snapshot()
        cached = self._views_cache
        if cached is None or cached[0] is not sealed or cached[1] is not d:
            if self._row_terms:
                sealed = self._with_terms(sealed)
            cached = (sealed, d) + rq.views(sealed.codes) + rq.views(d.codes) + (
                sealed.terms, d.terms)
            self._views_cache = cached
        return cached

    def rotate(self, Q: np.ndarray) -> np.ndarray:
        """Rows of Q (nq, dim) in the rotated space (nq, D'), by BLAS."""
        return np.ascontiguousarray(Q @ self.rotation[:, : self.dim].T, np.float32)

    def search_batch_padded(self, X, Q, k: int, nprobe: int, refine: int, mask,
                            all_alive: bool = False, min_lists: int = -1,
                            target_share: float = 1.0):
        """As :meth:`IVFIndex.search_batch_padded`: (D, I, lists scanned, reached)."""
        nprobe = min(nprobe, self.nlist)
        sealed, d, words, fac, dwords, dfac, st, dt = self._code_views()
        use_mask = ivf._scan_mask(mask, all_alive, sealed, d)
        with one_blas_thread():
            probes = ivfscan.probe_lists_batch(Q, self.centroids, nprobe, self.list_metric)
            QR = self.rotate(Q)
        D, I, scanned, reached, _ = rq.rabitq_search_batch(
            Q, QR, X, self.rcentroids, self.rcenter, probes, sealed.offsets, words, fac,
            sealed.pos, st, dwords, dfac, d.pos, dt, d.order, d.offsets, mask, use_mask,
            self.list_metric, self.metric, max(k * refine, k), k, min_lists, target_share,
            self.bound_eps)
        return D, I, scanned, reached

    def search_numpy(self, X, q, metric: int, k: int, nprobe: int, refine: int, mask=None):
        """The single-query search in numpy, no numba (engine/warmup.py's cold path): the
        same probes, estimates and re-rank as :meth:`search`, in float64 numpy
        (:func:`.kernels.rabitq.search_ref`); (dist, pos)."""
        sealed, d = self.snapshot()
        probes = ivfscan.probe_lists_ref(q, self.centroids, min(nprobe, self.nlist),
                                         self.list_metric)
        if mask is not None and len(mask) < max(sealed.end, d.end):
            grown = np.zeros(max(sealed.end, d.end), bool)
            grown[: len(mask)] = mask
            mask = grown
        dist, pos, _, _ = rq.search_ref(q, X, self.rotation, self.centroids, self.rcentroids,
                                        self.rcenter, probes, sealed.offsets, sealed.codes,
                                        sealed.pos, d.codes, d.pos, d.lists, d.n, mask,
                                        self.list_metric, metric, max(k * refine, k), k,
                                        self.bound_eps)
        return dist, pos

    def scan_costs(self) -> tuple[int, int]:
        """(opening a probed list: ||q' - R c_l||, one vectorised pass over D' (the 4-bit
        query is made once, not per list); scoring a code: five popcounts a 64-bit word),
        in the planner's units."""
        return self.dpad // 2, 5 * self.words + 4

    def row_cost(self) -> float:
        """A passed row's position, mask lookup and branch (measured: planner.py)."""
        return planner.RABITQ_MASK_COST

    @property
    def table_strategy(self) -> str:
        return "rabitq"

    # -- persistence ----------------------------------------------------------------------------
    def to_arrays(self, alive: np.ndarray) -> tuple[dict, dict]:
        meta, arrays = super().to_arrays(alive)
        arrays.pop("codebooks", None)
        arrays["rotation_signs"] = self.signs
        arrays["rotation"] = self.rotation
        arrays["rcentroids"] = self.rcentroids
        arrays["rcenter"] = self.rcenter
        return meta, arrays

    @classmethod
    def from_arrays(cls, meta: dict, arrays: dict) -> "RaBitQIndex":
        """The index saved by :meth:`to_arrays`: lists, codes, rotation and rotated centroids
        are the bundle's arrays (mapped views), nothing is re-encoded."""
        index = cls(IndexSpec.parse(meta["spec"]), meta["dim"], meta["metric"],
                    np.array(arrays["centroids"], np.float32), arrays["rotation_signs"],
                    arrays["rotation"], arrays["rcentroids"], arrays.get("rcenter"),
                    train_seconds=meta["train_seconds"],
                    trained_rows=meta["trained_rows"], train_error=meta["train_error"])
        index.trained_upto = meta.get("trained_upto", 0)
        codes = index._codes2d(arrays["codes"])
        index._lists = _Lists(arrays["offsets"], codes, arrays["pos"], _stored_end(meta, arrays),
                              index._stored_terms(arrays, codes))
        return index

    def info(self) -> dict:
        out = super().info()
        out.update(quantizer="rabitq", pq_m=0, code_bytes=self.m, padded_dim=self.dpad,
                   query_bits=rq.QUERY_BITS, adc_tables="rabitq",
                   rotation_bytes=int(self.rotation.nbytes + self.signs.nbytes
                                      + self.rcentroids.nbytes + self.rcenter.nbytes))
        return out
