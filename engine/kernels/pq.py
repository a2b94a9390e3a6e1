"""Product quantization: codebooks, encoding and decoding.

A d-dim vector is cut into m sub-vectors of dsub = d / m dims; each is replaced by the index
of its nearest codeword (squared L2) among ksub <= 256 codewords of that sub-space, so a
vector becomes m uint8 codes. Codebooks are (m, ksub, dsub) float32, trained by
:func:`..kmeans.kmeans` on each sub-space (seed + j for sub-space j) on a shared seeded
sample of at most max_points rows.

In IVF-PQ the vectors encoded are residuals (x - its coarse centroid).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..errors import InvalidInput
from .distances import L2, check_float32, readonly_view
from .kmeans import DIRECT_BLOCK_ROWS, direct_scratch, kmeans, nearest_direct_block

__all__ = [
    "pq_train",
    "pq_encode",
    "pq_encode_ref",
    "pq_decode",
    "pq_decode_ref",
]


# --------------------------------------------------------------------------- kernels


@njit(cache=True, nogil=True)
def transpose_codebooks(codebooks):
    """(m, dsub, ksub) copy of the codebooks: table loops run over codewords innermost."""
    m, ksub, dsub = codebooks.shape
    cbT = np.empty((m, dsub, ksub), np.float32)
    for j in range(m):
        for t in range(ksub):
            for u in range(dsub):
                cbT[j, u, t] = codebooks[j, t, u]
    return cbT


@njit(cache=True, nogil=True, parallel=True)
def _encode_kernel(R, codebooks):
    """Blocks of rows in parallel; per block and sub-space, the nearest codeword of every
    row by :func:`..kmeans.nearest_direct_block` (rows innermost, so it vectorises)."""
    n = R.shape[0]
    m, ksub, dsub = codebooks.shape
    cbT = transpose_codebooks(codebooks)
    codes = np.empty((n, m), np.uint8)
    B = DIRECT_BLOCK_ROWS
    nblocks = (n + B - 1) // B
    for b in prange(nblocks):
        xs, acc, best, arg = direct_scratch(dsub)
        s = b * B
        e = min(n, s + B)
        for j in range(m):
            nearest_direct_block(R, s, e, j * dsub, cbT[j], L2, xs, acc, best, arg)
            for i in range(e - s):
                codes[s + i, j] = arg[i]
    return codes


@njit(cache=True, nogil=True, parallel=True)
def _decode_kernel(codes, codebooks):
    n = codes.shape[0]
    m, ksub, dsub = codebooks.shape
    out = np.empty((n, m * dsub), np.float32)
    for i in prange(n):
        for j in range(m):
            cw = codebooks[j, codes[i, j]]
            for t in range(dsub):
                out[i, j * dsub + t] = cw[t]
    return out


# --------------------------------------------------------------------------- entry points


def check_codebooks(codebooks, d=None):
    """InvalidInput unless *codebooks* is (m, ksub<=256, dsub) float32 C-contiguous, with
    m * dsub == d when d is given. Returns a read-only view."""
    check_float32("codebooks", codebooks, 3)
    m, ksub, dsub = codebooks.shape
    if not 1 <= ksub <= 256 or m < 1 or dsub < 1:
        raise InvalidInput(
            f"codebooks have shape {codebooks.shape}; expected (m >= 1, ksub in 1..256, dsub >= 1)"
        )
    if d is not None and m * dsub != d:
        raise InvalidInput(
            f"codebooks cover {m} x {dsub} = {m * dsub} dims; expected {d} like the vectors"
        )
    return readonly_view(codebooks)


def pq_train(R, m, *, ksub=256, niter=20, seed=0, max_points=65536):
    """Codebooks (m, ksub, dsub) float32 for the rows of R (n, d); d must divide by m.

    Trains on a seeded sample of at most max_points rows; needs at least ksub rows.
    """
    check_float32("R", R, 2)
    n, d = R.shape
    if isinstance(m, (bool, np.bool_)) or not isinstance(m, (int, np.integer)) or m < 1:
        raise InvalidInput(f"m is {m!r}; expected an integer >= 1")
    if d % m != 0:
        raise InvalidInput(f"dim {d} is not divisible by m={m}; expected m to divide the dim")
    if not isinstance(ksub, (int, np.integer)) or not 1 <= ksub <= 256:
        raise InvalidInput(f"ksub is {ksub!r}; expected an integer in 1..256 (uint8 codes)")
    if n < ksub:
        raise InvalidInput(
            f"PQ training got {n} rows; needs at least ksub={ksub} rows to train {ksub} "
            "codewords per sub-space"
        )
    if max_points is not None and max_points < ksub:
        raise InvalidInput(f"max_points is {max_points!r}; expected None or >= ksub ({ksub})")
    rng = np.random.default_rng(seed)
    if max_points is not None and n > max_points:
        R = R[np.sort(rng.choice(n, int(max_points), replace=False))]
    dsub = d // m
    codebooks = np.empty((m, ksub, dsub), np.float32)
    for j in range(m):
        sub = np.ascontiguousarray(R[:, j * dsub : (j + 1) * dsub])
        codebooks[j] = kmeans(sub, int(ksub), niter=niter, seed=seed + j)
    return codebooks


def pq_encode(R, codebooks):
    """uint8 codes (n, m): per sub-space the index of the nearest codeword (squared L2)."""
    check_float32("R", R, 2)
    codebooks = check_codebooks(codebooks, R.shape[1])
    return _encode_kernel(readonly_view(R), codebooks)


def _check_codes(codes, m):
    if not isinstance(codes, np.ndarray) or codes.dtype != np.uint8 or codes.ndim != 2:
        got = type(codes)
        if isinstance(codes, np.ndarray):
            got = f"{codes.dtype} {codes.ndim}-D array"
        raise InvalidInput(f"codes is {got}; expected a 2-D uint8 array")
    if codes.shape[1] != m:
        raise InvalidInput(f"codes have {codes.shape[1]} columns; expected m={m}")
    if not codes.flags.c_contiguous:
        raise InvalidInput("codes is not C-contiguous; expected a C-contiguous array")
    return readonly_view(codes)


def pq_decode(codes, codebooks):
    """Reconstructed vectors (n, m * dsub) float32 of uint8 codes (n, m)."""
    codebooks = check_codebooks(codebooks)
    codes = _check_codes(codes, codebooks.shape[0])
    if codes.size and int(codes.max()) >= codebooks.shape[1]:
        raise InvalidInput(
            f"codes reach {int(codes.max())}; expected values below ksub={codebooks.shape[1]}"
        )
    return _decode_kernel(codes, codebooks)


# --------------------------------------------------------------------------- references


def pq_encode_ref(R, codebooks):
    """numpy reference of :func:`pq_encode` (float64)."""
    R = np.asarray(R, dtype=np.float64)
    m, ksub, dsub = codebooks.shape
    codes = np.empty((R.shape[0], m), np.uint8)
    for j in range(m):
        sub = R[:, j * dsub : (j + 1) * dsub]
        cb = codebooks[j].astype(np.float64)
        D = ((sub[:, None, :] - cb[None, :, :]) ** 2).sum(-1)
        codes[:, j] = np.argmin(D, axis=1)
    return codes


def pq_decode_ref(codes, codebooks):
    """numpy reference of :func:`pq_decode`."""
    m = codebooks.shape[0]
    parts = [codebooks[j][codes[:, j].astype(np.int64)] for j in range(m)]
    return np.concatenate(parts, axis=1).astype(np.float32).reshape(codes.shape[0], -1)
