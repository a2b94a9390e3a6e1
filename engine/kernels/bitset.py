"""Bit sets over code rows for the RaBitQ kernels (kernels/rabitq.py): LLVM's popcount and
count-trailing-zeros as numba intrinsics, and a filter mask in the rows' list order, whose
set bits a widened filtered scan walks instead of looking every visited row up."""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

__all__ = ["popcount", "cttz", "NO_BITS", "list_bits", "word_of_list", "list_bits_ref"]

#: The ``lbits`` of a scan without them.
NO_BITS = np.zeros(0, np.uint64)


@intrinsic
def _ctpop(typingctx, x):
    """LLVM's ctpop on an integer (one popcnt instruction where the CPU has it)."""
    if not isinstance(x, types.Integer):
        return None
    sig = x(x)

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return sig, codegen


@intrinsic
def cttz(typingctx, x):
    """LLVM's cttz on an integer: the index of the lowest set bit (x != 0)."""
    if not isinstance(x, types.Integer):
        return None
    sig = x(x)

    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], context.get_constant(types.boolean, True))
    return sig, codegen


@njit(cache=True, nogil=True, inline="always")
def popcount(x):
    """Set bits of a uint64."""
    return _ctpop(x)


@njit(cache=True, nogil=True)
def list_bits(pos, mask):
    """The row mask in list order: uint64 (ceil(N / 64),), bit r of sealed code row r set
    where its position passes ``mask`` (positions past the mask do not, as
    :func:`.ivfscan.allowed`). A scan given it walks each list's set bits instead of
    looking up every row's position (:func:`.rabitq.rabitq_scan`)."""
    n = pos.shape[0]
    bits = np.zeros((n + 63) >> 6, np.uint64)
    m = mask.shape[0]
    for r in range(n):
        p = pos[r]
        if p < m and mask[p] != 0:
            bits[r >> 6] |= np.uint64(1) << np.uint64(r & 63)
    return bits


@njit(cache=True, nogil=True, inline="always")
def word_of_list(lbits, w, lo, hi):
    """Word w of ``lbits`` cut to the rows lo..hi-1 of one list."""
    x = lbits[w]
    if w == lo >> 6:
        x &= np.uint64(0xFFFFFFFFFFFFFFFF) << np.uint64(lo & 63)
    end = hi - (w << 6)
    if end < 64:
        x &= (np.uint64(1) << np.uint64(end)) - np.uint64(1)
    return x


def list_bits_ref(pos, mask):
    """numpy reference of :func:`list_bits`."""
    pos = np.asarray(pos, np.int64)
    mask = np.asarray(mask)
    ok = np.zeros(len(pos), bool)
    inside = pos < len(mask)
    ok[inside] = mask[pos[inside]] != 0
    padded = np.zeros(((len(pos) + 63) // 64) * 64, bool)
    padded[: len(pos)] = ok
    return np.packbits(padded, bitorder="little").view(np.uint64)
