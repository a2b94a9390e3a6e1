"""RaBitQ kernels: 1-bit codes of rotated residuals, a 4-bit query, AND + popcount scans.

After Gao & Long, "RaBitQ: Quantizing High-Dimensional Vectors with a Theoretical Error
Bound for Approximate Nearest Neighbor Search" (SIGMOD 2024), as FAISS's IndexIVFRaBitQ
uses it inside IVF lists.

Encoding (:func:`encode`, reference :func:`encode_ref`): a row x of list l has the residual
r = x - c_l. One random orthogonal matrix R (D' x D', D' = dim rounded up to a multiple of
64; rows are zero-padded to D') rotates it, r' = R r, and the code keeps the sign bits of
r' (bit i of word i // 64 is 1 where r'_i > 0) plus :data:`FACTORS` float32 per row:

- ``sq``    ||r||^2
- ``scale`` ||r||^2 / sum_i |r'_i|: with x_b the bits and xbar = (2 x_b - 1) / sqrt(D'),
  <xbar, o> = sum |r'_i| / (sqrt(D') ||r||) for the unit residual o = r' / ||r||, and the
  estimator <r, y> ~ ||r|| <xbar, y> / <xbar, o> = scale * (2 <x_b, y> - sum_i y_i)
- ``err``   ||r|| sqrt(1 - <xbar, o>^2) / <xbar, o> / sqrt(D' - 1): the paper's bound says
  |<xbar, y>/<xbar, o> - <o, y>| <= eps0 ||y|| sqrt(1 - a^2) / a / sqrt(D' - 1) with high
  probability (eps0 ~ 1.9), so the error of the estimated <r, y> is within eps0 * err * ||y||
- ``ones``  the number of set bits (popcount of the code)

A code row is ``code_bytes(dim)`` = D' / 8 + 16 bytes, stored as uint8 so that the IVF lists
(sealed CSR, delta, checkpoints, compaction) carry it like a PQ code; the kernels read it
through two zero-copy views, ``words`` (uint64 (N, D'/64 + 2)) and ``fac`` (float32
(N, D'/32 + 4)) (:func:`views`).

Search: the query is rotated once (q' = R q) and quantized once, for every probed list:
y = q' - g' with g' the rotated centre (``rcenter``: the mean of the rotated centroids
R c_l, ``rcent``, for l2; zero for ip), to 4 bits (:func:`quantize_query`), kept as 4 bit
planes, and <x_b, ybar> = lo * ones + delta * sum_j 2^j popcount(x_b AND plane_j) over
the uint64 words. With est(v) = scale (2 <x_b, v> - sum v) the estimator of <r, v>,
estimated distances (lower is nearer):

- l2 (and cosine, whose rows are unit): ||q' - R c_l||^2 + sq - 2 (est(ybar) - t), where
  t = est(R c_l - g') is a per-row term (:func:`list_terms`, :func:`row_terms`; derived
  from the code, stored with the lists). The estimator is linear in its argument, so
  est(y) - t = est(q' - R c_l): the list's own residual estimate, with the error bound of
  the residual (below), while only the query quantization sees y instead of the residual.
  Quantizing once instead of per list took a widened filtered query over 245 lists from
  455 to 308 us, 60k x 384 (recall unchanged to 0.001; unfiltered recall equal).
- ip: -(<q', R c_l> + est(ybar)) with y = q'.

The best ``kk`` estimates are then re-ranked exactly from the stored rows in order of
their lower bounds, estimate - eps0 x err x ||q' - R c_l|| (x 2 for l2; ||q'|| for ip),
and the re-rank stops at the
first bound farther than the k-th exact distance found (:func:`rerank_bounded`): ``kk``
(refine) caps the rows read, the bound decides how many are. Lists, delta, mask, widening
and the heap are the IVF scaffolding of :mod:`.ivfscan` / :mod:`.topk`. :func:`search_ref`
is the numpy reference of the whole search, :func:`estimate_ref` of the estimator.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .bitset import NO_BITS, cttz as _cttz, list_bits, list_bits_ref, popcount
from .bitset import word_of_list as _word_of_list
from .distances import COSINE, IP, _dot, _l2sq, distance, distances_to_ref
from .ivfscan import allowed, chunk_probes, probe, widen_target
from .topk import heap_consider, heap_consider_payload, heap_sort

__all__ = [
    "FACTORS",
    "QUERY_BITS",
    "padded_dim",
    "code_bytes",
    "rotation_signs",
    "random_rotation",
    "random_rotation_of",
    "rotate",
    "views",
    "encode",
    "encode_ref",
    "decode_ref",
    "popcount",
    "quantize_query",
    "quantize_query_ref",
    "estimate",
    "estimate_ref",
    "list_terms",
    "row_terms",
    "terms_ref",
    "rabitq_scan",
    "list_bits",
    "list_bits_ref",
    "NO_BITS",
    "rerank_bounded",
    "rabitq_search_serial",
    "rabitq_search_batch",
    "search_ref",
]

#: float32 factors per code row: ||r||^2, scale, error factor, popcount.
FACTORS = 4
#: Rows :func:`encode` rotates at a time (8192 x 768 float64 temporaries: 50 MB).
ENCODE_BLOCK = 8192
#: Rounds of (random signs, fast Hadamard transform, Kac butterfly) in the rotation.
ROTATION_ROUNDS = 4
#: eps0 of the error bound (module docstring): a candidate whose estimate minus
#: ``BOUND_EPS`` x its error factor x ||y|| is already farther than the k-th exact distance
#: found is not re-ranked. The paper uses 1.9; on 1,000 queries of 60k x 768 spectral rows
#: (nprobe 8, 80 candidates) 1.9 lost 0.0009 of recall@10 against re-ranking every
#: candidate, 2.5 and 3.0 nothing, re-ranking 49, 54 and 57 of the 80. Negative: re-rank
#: every candidate.
BOUND_EPS = 3.0
#: Candidate rows :func:`rerank_bounded` prefetches at a time (their loads overlap).
RERANK_BLOCK = 8
#: Bits of the scalar-quantized query residual (B_q in the paper; 4 loses < 1% of recall).
QUERY_BITS = 4
_LEVELS = (1 << QUERY_BITS) - 1
_NO_BITS = NO_BITS


def padded_dim(dim: int) -> int:
    """D': dim rounded up to a multiple of 64 (the code's bit count)."""
    return (int(dim) + 63) // 64 * 64


def code_bytes(dim: int) -> int:
    """Bytes of one code row: D' / 8 bits + FACTORS float32."""
    return padded_dim(dim) // 8 + 4 * FACTORS


def rotation_signs(dim: int, seed: int = 0) -> np.ndarray:
    """The random part of the rotation: ROTATION_ROUNDS rows of D' random signs (float32)."""
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, (ROTATION_ROUNDS, padded_dim(dim))) * 2 - 1
    return np.ascontiguousarray(signs, np.float32)


def random_rotation(dim: int, seed: int = 0) -> np.ndarray:
    """The dense D' x D' orthogonal matrix of :func:`rotate` with :func:`rotation_signs`
    (``R @ x_padded == rotate(signs, x)``): for BLAS encodes and batches."""
    return random_rotation_of(rotation_signs(dim, seed))


def random_rotation_of(signs: np.ndarray) -> np.ndarray:
    """The dense matrix of :func:`rotate` with these signs (its columns are R e_j)."""
    signs = np.ascontiguousarray(signs, np.float32)
    dp = signs.shape[1]
    eye = np.eye(dp, dtype=np.float32)
    cols = np.empty((dp, dp), np.float32)
    for j in range(dp):
        rotate(signs, eye[j], cols[j])
    return np.ascontiguousarray(cols.T)


def views(codes: np.ndarray):
    """(words uint64 (N, W + 2), fac float32 (N, 2 W + 4)) over code rows uint8 (N, B):
    zero-copy (read-only stays read-only). Bits are ``words[:, :W]``, factor j is
    ``fac[:, 2 W + j]``."""
    codes = np.ascontiguousarray(codes)
    return codes.view(np.uint64), codes.view(np.float32)


def _factors(Rr: np.ndarray) -> np.ndarray:
    """(n, FACTORS) float32 of rotated residuals (n, D') (float64 maths)."""
    Rr = np.asarray(Rr, np.float64)
    dp = Rr.shape[1]
    sq = np.einsum("ij,ij->i", Rr, Rr)
    l1 = np.abs(Rr).sum(axis=1)
    norm = np.sqrt(sq)
    out = np.zeros((len(Rr), FACTORS), np.float64)
    ok = l1 > 0
    out[:, 0] = sq
    out[ok, 1] = sq[ok] / l1[ok]
    a = np.zeros(len(Rr))
    a[ok] = l1[ok] / (norm[ok] * np.sqrt(dp))
    a = np.clip(a, 0.0, 1.0)
    out[ok, 2] = norm[ok] * np.sqrt(1.0 - a[ok] ** 2) / a[ok] / np.sqrt(max(dp - 1, 1))
    out[:, 3] = (Rr > 0).sum(axis=1)
    return out.astype(np.float32)


def encode(residuals: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Code rows uint8 (n, code_bytes(dim)) of residuals (n, dim) float32: the rotation by
    BLAS, the sign bits packed little-endian, then the factors."""
    residuals = np.ascontiguousarray(residuals, np.float32)
    n, dim = residuals.shape
    dp = R.shape[0]
    RT = np.ascontiguousarray(R[:, :dim].T)
    out = np.zeros((n, dp // 8 + 4 * FACTORS), np.uint8)
    for lo in range(0, n, ENCODE_BLOCK):         # bounded temporaries (float64 factors)
        Rr = residuals[lo:lo + ENCODE_BLOCK] @ RT                  # (rows, D')
        out[lo:lo + len(Rr), : dp // 8] = np.packbits(Rr > 0, axis=1, bitorder="little")
        out[lo:lo + len(Rr), dp // 8:] = _factors(Rr).view(np.uint8)
    return out


def encode_ref(residuals: np.ndarray, R: np.ndarray) -> np.ndarray:
    """numpy reference of :func:`encode`: float64 rotation, one bit at a time."""
    residuals = np.asarray(residuals, np.float64)
    n, dim = residuals.shape
    dp = R.shape[0]
    W = dp // 64
    Rr = residuals @ np.asarray(R, np.float64)[:, :dim].T
    out = np.zeros((n, dp // 8 + 4 * FACTORS), np.uint8)
    for i in range(n):
        words = np.zeros(W, np.uint64)
        for d in range(dp):
            if Rr[i, d] > 0:
                words[d // 64] |= np.uint64(1) << np.uint64(d % 64)
        out[i, : dp // 8] = words.view(np.uint8)
    out[:, dp // 8:] = _factors(Rr).view(np.uint8)
    return out


def decode_ref(codes: np.ndarray, R: np.ndarray, dim: int) -> np.ndarray:
    """The residuals the codes stand for (n, dim) float64: ||r|| R^T xbar (the reconstruction
    verify compares a stored code with a fresh one by)."""
    dp = R.shape[0]
    _, fac = views(codes)
    bits = np.unpackbits(np.ascontiguousarray(codes[:, : dp // 8]), axis=1,
                         bitorder="little").astype(np.float64)
    xbar = (2.0 * bits - 1.0) / np.sqrt(dp)
    norm = np.sqrt(np.asarray(fac[:, dp // 32], np.float64))
    return (norm[:, None] * xbar) @ np.asarray(R, np.float64)[:, :dim]


# --------------------------------------------------------------------------- query


@njit(cache=True, nogil=True)
def quantize_query(y, planes):
    """Quantize y (D',) float32 to QUERY_BITS unsigned levels ybar_i = lo + delta * u_i
    (u_i = floor((y_i - lo) / delta + 0.5), delta = (max - min) / 15), writing the bit
    planes of u into ``planes`` (QUERY_BITS, W) uint64. Returns (lo, delta, sum u)."""
    dp = y.shape[0]
    lo = y[0]
    hi = y[0]
    for i in range(1, dp):
        v = y[i]
        lo = min(lo, v)
        hi = max(hi, v)
    delta = (hi - lo) / np.float32(_LEVELS)
    inv = np.float32(1.0) / delta if delta > 0 else np.float32(0.0)
    one = np.uint64(1)
    total = 0
    for w in range(dp >> 6):
        p0 = np.uint64(0)
        p1 = np.uint64(0)
        p2 = np.uint64(0)
        p3 = np.uint64(0)
        for b in range(64):
            # non-negative: truncation is the floor
            u = int((y[(w << 6) + b] - lo) * inv + np.float32(0.5))
            u = min(u, _LEVELS)
            total += u
            ub = np.uint64(u)
            sh = np.uint64(b)
            p0 |= (ub & one) << sh
            p1 |= ((ub >> one) & one) << sh
            p2 |= ((ub >> np.uint64(2)) & one) << sh
            p3 |= ((ub >> np.uint64(3)) & one) << sh
        planes[0, w] = p0
        planes[1, w] = p1
        planes[2, w] = p2
        planes[3, w] = p3
    return lo, delta, total


def quantize_query_ref(y):
    """numpy reference of :func:`quantize_query`: (u int64 (D',), lo, delta) in float32."""
    y = np.asarray(y, np.float32)
    lo, hi = y.min(), y.max()
    delta = np.float32((hi - lo) / np.float32(_LEVELS))
    inv = np.float32(1.0) / delta if delta > 0 else np.float32(0.0)
    u = np.minimum(np.floor((y - lo) * inv + np.float32(0.5)), _LEVELS).astype(np.int64)
    return u, lo, delta


@njit(cache=True, nogil=True, inline="always")
def _bq(words, r, W, planes):
    """sum_j 2^j popcount(x_b AND plane_j) of code row r."""
    s = 0
    for w in range(W):
        x = words[r, w]
        s += (popcount(x & planes[0, w]) + 2 * popcount(x & planes[1, w])
              + 4 * popcount(x & planes[2, w]) + 8 * popcount(x & planes[3, w]))
    return s


@njit(cache=True, nogil=True, inline="always")
def estimate(words, fac, r, W, planes, lo, delta, ysum, base, term, metric):
    """The estimated distance of code row r (module docstring): ``ysum`` = sum ybar,
    ``base`` = ||q' - R c_l||^2 (l2) or -<q', R c_l> (ip), ``term`` the row's t (l2)."""
    f = 2 * W
    ip = lo * fac[r, f + 3] + delta * np.float32(_bq(words, r, W, planes))
    xy = fac[r, f + 1] * (np.float32(2.0) * ip - ysum)
    if metric == IP:
        return base - xy
    return base + fac[r, f] - np.float32(2.0) * (xy - term)


def estimate_ref(codes, y, dp, metric, base, terms=None, ynorm=None):
    """numpy reference of :func:`estimate` for every code row (float64), with the same
    4-bit query (:func:`quantize_query_ref`): (estimates, error bounds at eps0 = 1).
    ``terms``: the rows' t (l2; none: 0, y is then the residual itself); ``ynorm``: the
    norm the bound scales with (default ||y||; the residual's when y is centred)."""
    _, fac = views(codes)
    W = dp // 64
    fac = np.asarray(fac[:, 2 * W:], np.float64)
    bits = np.unpackbits(np.ascontiguousarray(codes[:, : dp // 8]), axis=1,
                         bitorder="little").astype(np.float64)
    u, lo, delta = quantize_query_ref(y)
    ybar = np.float64(lo) + np.float64(delta) * u.astype(np.float64)
    xy = fac[:, 1] * (2.0 * bits @ ybar - ybar.sum())
    if ynorm is None:
        ynorm = float(np.linalg.norm(np.asarray(y, np.float64)))
    err = fac[:, 2] * ynorm
    if metric == IP:
        return base - xy, err
    t = 0.0 if terms is None else np.asarray(terms, np.float64)
    return base + fac[:, 0] - 2.0 * (xy - t), 2.0 * err


def terms_ref(codes, v, dp):
    """numpy reference of the row terms: est(v) = scale (2 <x_b, v> - sum v) of every code
    row (float64) for one float vector v (D',) (R c_l - g' for the rows of list l)."""
    _, fac = views(codes)
    bits = np.unpackbits(np.ascontiguousarray(codes[:, : dp // 8]), axis=1,
                         bitorder="little").astype(np.float64)
    v = np.asarray(v, np.float64)
    return np.asarray(fac[:, dp // 32 + 1], np.float64) * (2.0 * bits @ v - v.sum())


@njit(cache=True, nogil=True, inline="always")
def _term(words, fac, r, W, v, vsum):
    """est(v) of code row r (float32 v (D',), vsum its sum; module docstring)."""
    s = np.float32(0.0)
    for w in range(W):
        x = words[r, w]
        base = w << 6
        while x:
            b = _cttz(x)
            s += v[base + b]
            x &= x - np.uint64(1)
    return fac[r, 2 * W + 1] * (np.float32(2.0) * s - vsum)


@njit(cache=True, nogil=True)
def list_terms(offsets, words, fac, rcent, rcenter):
    """t (float32 (N,)) of CSR lists (list l's rows ``offsets[l]:offsets[l+1]``): est of
    R c_l - g' per row, one pass over each code's set bits."""
    n = words.shape[0]
    W = rcent.shape[1] // 64
    out = np.empty(n, np.float32)
    v = np.empty(rcent.shape[1], np.float32)
    for l in range(offsets.shape[0] - 1):
        if offsets[l] == offsets[l + 1]:
            continue
        vsum = np.float32(0.0)
        for i in range(v.shape[0]):
            v[i] = rcent[l, i] - rcenter[i]
            vsum += v[i]
        for r in range(offsets[l], offsets[l + 1]):
            out[r] = _term(words, fac, r, W, v, vsum)
    return out


@njit(cache=True, nogil=True)
def row_terms(lists, words, fac, rcent, rcenter):
    """t (float32 (n,)) of loose rows (list ids ``lists`` (n,), a write batch)."""
    n = lists.shape[0]
    W = rcent.shape[1] // 64
    out = np.empty(n, np.float32)
    v = np.empty(rcent.shape[1], np.float32)
    for r in range(n):
        l = lists[r]
        vsum = np.float32(0.0)
        for i in range(v.shape[0]):
            v[i] = rcent[l, i] - rcenter[i]
            vsum += v[i]
        out[r] = _term(words, fac, r, W, v, vsum)
    return out


# --------------------------------------------------------------------------- scans


@njit(cache=True, nogil=True, fastmath=True)
def _fht(x, start, h):
    """Orthonormal fast Walsh-Hadamard transform of x[start:start + h] (h a power of 2).
    The first three butterfly stages run on 8 values held in registers (the stages of
    stride 1, 2 and 4 do not vectorize as loops), in the same order and with the same
    operations as the stage-by-stage loop (:func:`_fht_loop`), so the result is the same
    bit for bit; the stages of stride >= 8 are contiguous loops the compiler vectorizes."""
    step = 1
    if h >= 8:
        for i in range(start, start + h, 8):
            a0 = x[i] + x[i + 1]
            a1 = x[i] - x[i + 1]
            a2 = x[i + 2] + x[i + 3]
            a3 = x[i + 2] - x[i + 3]
            a4 = x[i + 4] + x[i + 5]
            a5 = x[i + 4] - x[i + 5]
            a6 = x[i + 6] + x[i + 7]
            a7 = x[i + 6] - x[i + 7]
            b0 = a0 + a2
            b2 = a0 - a2
            b1 = a1 + a3
            b3 = a1 - a3
            b4 = a4 + a6
            b6 = a4 - a6
            b5 = a5 + a7
            b7 = a5 - a7
            x[i] = b0 + b4
            x[i + 4] = b0 - b4
            x[i + 1] = b1 + b5
            x[i + 5] = b1 - b5
            x[i + 2] = b2 + b6
            x[i + 6] = b2 - b6
            x[i + 3] = b3 + b7
            x[i + 7] = b3 - b7
        step = 8
    while step < h:
        for i in range(start, start + h, 2 * step):
            lo = x[i:i + step]              # views: indices from 0 carry no wraparound
            hi = x[i + step:i + 2 * step]   # test, and the loop vectorizes
            for j in range(step):
                a = lo[j]
                b = hi[j]
                lo[j] = a + b
                hi[j] = a - b
        step *= 2
    scale = np.float32(1.0 / np.sqrt(h))
    y = x[start:start + h]
    for j in range(h):
        y[j] *= scale


@njit(cache=True, nogil=True, fastmath=True)
def _fht_loop(x, start, h):
    """:func:`_fht` stage by stage (the reference its register stages must match)."""
    step = 1
    while step < h:
        for i in range(start, start + h, 2 * step):
            for j in range(i, i + step):
                a = x[j]
                b = x[j + step]
                x[j] = a + b
                x[j + step] = a - b
        step *= 2
    scale = np.float32(1.0 / np.sqrt(h))
    for j in range(start, start + h):
        x[j] *= scale


@njit(cache=True, nogil=True, fastmath=True)
def rotate(signs, q, out):
    """out = R q_padded (D'), R the random orthogonal matrix of ``signs`` (ROTATION_ROUNDS,
    D'): each round flips signs, applies the orthonormal Hadamard transform to the leading
    (even rounds) or trailing (odd rounds) h = the largest power of two <= D' coordinates,
    and, when h < D', a Kac butterfly between the two halves ((a + b, a - b) / sqrt 2).
    Every step is orthogonal; O(D' log D') and no matrix read (a dense 768 x 768 one is
    2.4 MB streamed per query)."""
    dp = signs.shape[1]
    dim = q.shape[0]
    for i in range(dim):
        out[i] = q[i]
    for i in range(dim, dp):
        out[i] = np.float32(0.0)
    h = 1
    while h * 2 <= dp:
        h *= 2
    half = dp // 2
    inv2 = np.float32(1.0 / np.sqrt(2.0))
    for t in range(signs.shape[0]):
        st = signs[t]
        for i in range(dp):
            out[i] *= st[i]
        _fht(out, 0 if t % 2 == 0 else dp - h, h)
        if h < dp:
            for i in range(half):
                a = out[i]
                b = out[i + half]
                out[i] = (a + b) * inv2
                out[i + half] = (a - b) * inv2


@njit(cache=True, nogil=True)
def rabitq_scan(qr, rcent, rcenter, probes, offsets, words, fac, pos, terms, dwords, dfac,
                dpos, dterms, dorder, doffsets, mask, use_mask, lbits, use_lbits, metric, hd,
                hi, hl, eps, min_lists, target_share):
    """Estimated-distance scan of the probed lists (sealed rows, then delta rows) of the
    rotated query ``qr`` (D') into the heap hd/hi (capacity ``hd.shape[0]``), each entry
    carrying its lower distance bound (estimate - eps x err x ||q' - R c_l||, -inf when
    eps < 0) in ``hl``; returns (heap size (unsorted), lists scanned, widening target
    reached), like :func:`.ivfscan.adc_scan_table`. ``min_lists``: as there. ``terms`` /
    ``dterms``: the sealed and delta rows' t (l2; unused for ip). ``use_lbits``: the
    sealed rows allowed are the set bits of ``lbits`` (:func:`list_bits` of ``mask``), the
    delta rows still look ``mask`` up; the same rows either way."""
    dp = qr.shape[0]
    W = dp // 64
    f = 2 * W
    bounded = eps >= 0
    planes = np.empty((4, W), np.uint64)
    y = np.empty(dp, np.float32)
    for i in range(dp):
        y[i] = qr[i] - rcenter[i]
    # one quantized query serves every list (module docstring)
    lo, delta, total = quantize_query(y, planes)
    ysum = np.float32(dp) * lo + delta * np.float32(total)
    slack = np.float32(eps) * np.sqrt(_dot(qr, qr))     # ip: eps x ||q'||
    size = 0
    worst = np.float32(np.inf)
    target = widen_target(probes, offsets, doffsets, min_lists, target_share)
    seen = 0
    scanned = 0
    for p in range(probes.shape[0]):
        if p >= min_lists >= 0 and seen >= target:
            break
        scanned += 1
        l = probes[p]
        if offsets[l] == offsets[l + 1] and doffsets[l] == doffsets[l + 1]:
            continue
        if metric == IP:
            base = -_dot(qr, rcent[l])
        else:
            base = _l2sq(qr, rcent[l])
            # 2 eps ||q' - R c_l||: the estimate's error is the residual's (module docstring)
            slack = np.float32(2.0 * eps) * np.sqrt(base)
        ip = metric == IP
        start = offsets[l]
        stop = offsets[l + 1]
        if use_lbits:
            # the list's allowed rows are the set bits of its words: no per-row lookup
            for w in range(start >> 6, ((stop + 63) >> 6) if stop > start else 0):
                x = _word_of_list(lbits, w, start, stop)
                seen += popcount(x)
                while x:
                    r = (w << 6) + _cttz(x)
                    x &= x - np.uint64(1)
                    d = estimate(words, fac, r, W, planes, lo, delta, ysum, base,
                                 np.float32(0.0) if ip else terms[r], metric)
                    if d <= worst:
                        b = d - slack * fac[r, f + 2] if bounded else -np.inf
                        size, worst = heap_consider_payload(hd, hi, hl, size, worst, d,
                                                            pos[r], b)
        else:
            for r in range(start, stop):
                pr = pos[r]
                if allowed(mask, use_mask, pr):
                    seen += 1
                    d = estimate(words, fac, r, W, planes, lo, delta, ysum, base,
                                 np.float32(0.0) if ip else terms[r], metric)
                    if d <= worst:
                        b = d - slack * fac[r, f + 2] if bounded else -np.inf
                        size, worst = heap_consider_payload(hd, hi, hl, size, worst, d, pr, b)
        for t in range(doffsets[l], doffsets[l + 1]):
            r = dorder[t]
            pr = dpos[r]
            if allowed(mask, use_mask, pr):
                seen += 1
                d = estimate(dwords, dfac, r, W, planes, lo, delta, ysum, base,
                             np.float32(0.0) if ip else dterms[r], metric)
                if d <= worst:
                    b = d - slack * dfac[r, f + 2] if bounded else -np.inf
                    size, worst = heap_consider_payload(hd, hi, hl, size, worst, d, pr, b)
    return size, scanned, seen >= target


@njit(cache=True, nogil=True)
def rerank_bounded(X, q, metric, hi, hl, size, k):
    """The k nearest (exact ``metric`` distance, ties by lower position) of the ``size``
    candidates at positions ``hi``, re-ranked in order of their lower bounds ``hl`` (in the
    estimate's units: squared l2, or -ip) and stopped at the first whose bound is already
    farther than the k-th exact distance found: every later one is farther still. Rows are
    prefetched RERANK_BLOCK at a time. Returns (dist, pos, rows re-ranked)."""
    scale = np.float32(0.5) if metric == COSINE else np.float32(1.0)   # 1 - cos = l2^2 / 2
    order = np.argsort(hl[:size], kind="mergesort")
    buf = np.empty(k + 1, np.float32)
    od = buf[:k]
    oi = np.empty(k, np.int64)
    n = 0
    worst = np.float32(np.inf)
    done = 0
    acc = np.float32(0.0)
    for b in range(0, size, RERANK_BLOCK):
        e = min(size, b + RERANK_BLOCK)
        if hl[order[b]] * scale > worst:
            break
        for t in range(b, e):               # independent loads: their misses overlap
            row = X[hi[order[t]]]
            for u in range(0, row.shape[0], 16):
                acc += row[u]
        for t in range(b, e):
            j = order[t]
            if hl[j] * scale > worst:
                break
            p = hi[j]
            d = distance(X[p], q, metric)
            done += 1
            if d <= worst:
                n, worst = heap_consider(od, oi, n, worst, d, p)
    buf[k] = acc                            # stored past the heap: keeps the loads alive
    heap_sort(od, oi, n)
    return od[:n].copy(), oi[:n].copy(), done


@njit(cache=True, nogil=True)
def rabitq_search_serial(q, X, signs, centroids, rcent, rcenter, nprobe, probe_metric, offsets,
                         words, fac, pos, terms, dwords, dfac, dpos, dterms, dorder, doffsets,
                         mask, use_mask, lbits, use_lbits, metric, kk, k, min_lists,
                         target_share, eps):
    """One query in one compiled call: probe, rotate (:func:`rotate`), estimate-scan into
    the top kk, exact re-rank to the top k, bounded by ``eps`` (:func:`rerank_bounded`).
    ``probe_metric`` is also the estimate's (l2 for cosine), ``metric`` the exact one.
    Returns (dist, pos, lists scanned, target reached, rows re-ranked)."""
    probes = probe(q, centroids, nprobe, probe_metric)
    qr = np.empty(signs.shape[1], np.float32)
    rotate(signs, q, qr)
    hd = np.empty(kk, np.float32)
    hi = np.empty(kk, np.int64)
    hl = np.empty(kk, np.float32)
    size, scanned, reached = rabitq_scan(qr, rcent, rcenter, probes, offsets, words, fac, pos,
                                         terms, dwords, dfac, dpos, dterms, dorder, doffsets,
                                         mask, use_mask, lbits, use_lbits, probe_metric, hd,
                                         hi, hl, eps, min_lists, target_share)
    od, oi, done = rerank_bounded(X, q, metric, hi, hl, size, k)
    return od, oi, scanned, reached, done


@njit(cache=True, nogil=True, parallel=True)
def rabitq_search_parallel(q, X, signs, rcent, rcenter, probes, offsets, words, fac, pos, terms,
                           dwords, dfac, dpos, dterms, dorder, doffsets, mask, use_mask,
                           lbits, use_lbits, probe_metric, metric, kk, k, nchunks, min_lists,
                           target_share, eps):
    """:func:`rabitq_search_serial` of one query with its ``probes`` given and split across
    ``nchunks`` threads (interleaved; a widened scan gives each chunk its share of
    ``min_lists``, as :func:`.ivffused.pq_search_parallel`), the chunks' top kk merged with
    their bounds, then re-ranked. Returns (dist, pos, lists scanned, target reached (every
    chunk), rows re-ranked)."""
    qr = np.empty(signs.shape[1], np.float32)
    rotate(signs, q, qr)
    HD = np.empty((nchunks, kk), np.float32)
    HI = np.empty((nchunks, kk), np.int64)
    HL = np.empty((nchunks, kk), np.float32)
    sizes = np.zeros(nchunks, np.int64)
    scanned = np.zeros(nchunks, np.int64)
    reached = np.zeros(nchunks, np.bool_)
    for c in prange(nchunks):
        sub, share = chunk_probes(probes, nchunks, c, min_lists)
        size, lists, ok = rabitq_scan(qr, rcent, rcenter, sub, offsets, words, fac, pos, terms,
                                      dwords, dfac, dpos, dterms, dorder, doffsets, mask,
                                      use_mask, lbits, use_lbits, probe_metric, HD[c], HI[c],
                                      HL[c], eps, share, target_share)
        sizes[c] = size
        scanned[c] = lists
        reached[c] = ok
    hd = np.empty(kk, np.float32)
    hi = np.empty(kk, np.int64)
    hl = np.empty(kk, np.float32)
    size = 0
    worst = np.float32(np.inf)
    for c in range(nchunks):
        for t in range(sizes[c]):
            d = HD[c, t]
            if d <= worst:
                size, worst = heap_consider_payload(hd, hi, hl, size, worst, d, HI[c, t],
                                                    HL[c, t])
    od, oi, done = rerank_bounded(X, q, metric, hi, hl, size, k)
    return od, oi, scanned.sum(), reached.all(), done


@njit(cache=True, nogil=True, parallel=True)
def rabitq_search_batch(Q, QR, X, rcent, rcenter, probes2d, offsets, words, fac, pos, terms,
                        dwords, dfac, dpos, dterms, dorder, doffsets, mask, use_mask,
                        probe_metric, metric, kk, k, min_lists, target_share, eps):
    """Every query in parallel, rotated queries ``QR`` (nq, D') and probes given (both by
    BLAS): (D (nq, k), I (nq, k)) padded with +inf / -1, lists scanned, target reached,
    rows re-ranked."""
    nq = Q.shape[0]
    D = np.full((nq, k), np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    scanned = np.zeros(nq, np.int64)
    reached = np.zeros(nq, np.bool_)
    done = np.zeros(nq, np.int64)
    for r in prange(nq):
        hd = np.empty(kk, np.float32)
        hi = np.empty(kk, np.int64)
        hl = np.empty(kk, np.float32)
        size, scanned[r], reached[r] = rabitq_scan(
            QR[r], rcent, rcenter, probes2d[r], offsets, words, fac, pos, terms, dwords, dfac,
            dpos, dterms, dorder, doffsets, mask, use_mask, _NO_BITS, False, probe_metric, hd,
            hi, hl, eps, min_lists, target_share)
        od, oi, done[r] = rerank_bounded(X, Q[r], metric, hi, hl, size, k)
        for j in range(od.shape[0]):
            D[r, j] = od[j]
            I[r, j] = oi[j]
    return D, I, scanned, reached, done


# --------------------------------------------------------------------------- reference


def search_ref(q, X, R, centroids, rcent, rcenter, probes, offsets, codes, pos, dcodes, dpos,
               dlist, dn, mask, probe_metric, metric, kk, k, eps=BOUND_EPS):
    """numpy reference of :func:`rabitq_search_serial` over the given probes: the estimates
    of every allowed row of the probed lists (:func:`estimate_ref`, the row terms by
    :func:`terms_ref` from the codes), the kk smallest (ties
    by lower position), exact distances from X for those taken in order of their lower
    bounds (estimate - eps x error bound) until a bound exceeds the k-th exact distance
    (all of them when eps < 0), the k nearest. Returns (dist float32, pos, estimated top-kk
    positions, positions re-ranked)."""
    dp = R.shape[0]
    qr = np.asarray(R, np.float32)[:, : len(q)] @ np.asarray(q, np.float32)
    est, bound, where = [], [], []
    dl = np.asarray(dlist)[:dn]
    for l in probes:
        l = int(l)
        rows = np.arange(offsets[l], offsets[l + 1])
        drows = np.flatnonzero(dl == l)
        c = np.concatenate([np.asarray(codes)[rows], np.asarray(dcodes)[drows]])
        w = np.concatenate([np.asarray(pos)[rows], np.asarray(dpos)[drows]])
        if mask is not None:
            keep = np.asarray(mask, bool)[w]
            c, w = c[keep], w[keep]
        if not len(w):
            continue
        c = c.reshape(-1, codes.shape[1])
        y = (qr - np.asarray(rcenter, np.float32)).astype(np.float32)
        if probe_metric == IP:
            base = -float(np.dot(qr.astype(np.float64), np.asarray(rcent[l], np.float64)))
            e, err = estimate_ref(c, y, dp, probe_metric, base)
        else:
            res = qr.astype(np.float64) - np.asarray(rcent[l], np.float64)
            base = float(res @ res)
            t = terms_ref(c, np.asarray(rcent[l], np.float64) - np.asarray(rcenter, np.float64),
                          dp)
            e, err = estimate_ref(c, y, dp, probe_metric, base, t, float(np.sqrt(base)))
        est.append(e)
        bound.append(e - eps * err if eps >= 0 else np.full(len(e), -np.inf))
        where.append(w)
    if not est:
        empty = np.zeros(0, np.int64)
        return np.zeros(0, np.float32), empty, empty, empty
    est, where = np.concatenate(est), np.concatenate(where).astype(np.int64)
    top = np.lexsort((where, est))[:kk]
    cand, lower = where[top], np.concatenate(bound)[top]
    if metric == COSINE:
        lower = lower / 2.0                      # 1 - cos = ||x - q||^2 / 2 for unit rows
    X = np.asarray(X)
    done, dist = [], []
    for t in np.argsort(lower, kind="stable"):
        if len(dist) >= k and lower[t] > np.sort(dist)[k - 1]:
            break
        done.append(cand[t])
        dist.append(float(distances_to_ref(X[cand[t]][None].astype(np.float64), q, metric)[0]))
    done, dist = np.asarray(done, np.int64), np.asarray(dist)
    order = np.lexsort((done, dist))[:k]
    return dist[order].astype(np.float32), done[order], cand, done
