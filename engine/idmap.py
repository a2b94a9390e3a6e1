"""External id <-> row position of one version, without a Python object per row.

Two halves:

* the base, as of the last checkpoint, as arrays (views of the checkpoint bundle):
  ``off``/``blob`` hold every position's encoded id (:func:`schema.encode_id`), and
  ``h1``/``h2``/``hpos`` the 128-bit BLAKE2b hash of each live id sorted, with its position,
  for lookups by ``np.searchsorted``;
* the tail: ids written since (a list by position and a dict id -> newest position).

A lookup tries the tail, then the base; a position counts only while ``alive`` says so
(deletes and replacements just clear ``alive``), so the base never changes between
checkpoints. The 128-bit hash makes a collision between two ids (2^-128 per pair)
something the engine does not plan for; the id at the found position is compared anyway.
"""

from __future__ import annotations

import hashlib

import numpy as np

from . import schema

_EMPTY_U64 = np.zeros(0, np.uint64)
_EMPTY_I64 = np.zeros(0, np.int64)


def hash_id(extid) -> tuple[int, int]:
    d = hashlib.blake2b(schema.encode_id(extid), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


def _hashes(ids) -> tuple[np.ndarray, np.ndarray]:
    pairs = [hash_id(x) for x in ids]
    if not pairs:
        return _EMPTY_U64, _EMPTY_U64
    h = np.array(pairs, dtype=np.uint64)
    return h[:, 0].copy(), h[:, 1].copy()


class IdMap:
    def __init__(self, base: dict | None = None):
        base = base or {}
        self.off = base.get("id_off", np.zeros(1, np.int64))
        self.blob = base.get("id_blob", np.zeros(0, np.uint8))
        self.h1 = base.get("id_h1", _EMPTY_U64)
        self.h2 = base.get("id_h2", _EMPTY_U64)
        self.hpos = base.get("id_hpos", _EMPTY_I64)
        self.base_n = len(self.off) - 1
        self.tail: list = []             # ids of positions base_n, base_n + 1, ...
        self.recent: dict = {}           # id -> newest tail position

    @property
    def n(self) -> int:
        return self.base_n + len(self.tail)

    # -- position -> id ----------------------------------------------------------------------
    def at(self, pos: int):
        if pos >= self.base_n:
            return self.tail[pos - self.base_n]
        return schema.decode_id(self.blob[self.off[pos]:self.off[pos + 1]].tobytes())

    def at_many(self, positions) -> list:
        return [self.at(p) for p in np.asarray(positions).tolist()]

    # -- id -> position ----------------------------------------------------------------------
    def _base_lookup(self, extid, alive) -> int:
        if not len(self.h1):
            return -1
        a, b = hash_id(extid)
        i = int(np.searchsorted(self.h1, np.uint64(a)))
        h1, h2, hpos = self.h1, self.h2, self.hpos
        while i < len(h1) and int(h1[i]) == a:
            if int(h2[i]) == b:
                pos = int(hpos[i])
                if alive[pos] and self.at(pos) == extid:
                    return pos
            i += 1
        return -1

    def lookup(self, extid, alive) -> int:
        """The live position of ``extid``, or -1."""
        pos = self.recent.get(extid)
        if pos is not None:
            return pos if alive[pos] else -1
        return self._base_lookup(extid, alive)

    def lookup_many(self, ids: list, alive) -> list:
        """:meth:`lookup` of each id; the base is searched for all misses at once."""
        out = [-1] * len(ids)
        misses = []
        recent = self.recent
        for i, extid in enumerate(ids):
            pos = recent.get(extid)
            if pos is not None:
                out[i] = pos if alive[pos] else -1
            else:
                misses.append(i)
        if not misses or not len(self.h1):
            return out
        h1, h2 = _hashes([ids[i] for i in misses])
        idx = np.searchsorted(self.h1, h1)
        inside = idx < len(self.h1)
        hit = np.zeros(len(misses), bool)
        hit[inside] = self.h1[idx[inside]] == h1[inside]
        for j in np.flatnonzero(hit).tolist():
            i = misses[j]
            out[i] = self._base_lookup(ids[i], alive)
        return out

    # -- writing -------------------------------------------------------------------------------
    def append(self, ids: list, start: int):
        """Positions ``start..`` now hold ``ids`` (``start`` must be :attr:`n`)."""
        assert start == self.n, (start, self.n)
        self.tail.extend(ids)
        self.recent.update(zip(ids, range(start, start + len(ids))))

    def forget(self, extid, pos: int):
        """``extid`` at ``pos`` was deleted: drop it from the tail's dict."""
        if self.recent.get(extid) == pos:
            del self.recent[extid]

    # -- checkpoint ------------------------------------------------------------------------------
    def to_arrays(self, n: int, alive: np.ndarray) -> dict:
        """The base for a checkpoint at ``n`` rows: this base plus the first tail rows."""
        tail = self.tail[: n - self.base_n]
        enc = [schema.encode_id(x) for x in tail]
        lens = np.fromiter((len(e) for e in enc), np.int64, len(enc))
        off = np.empty(n + 1, np.int64)
        off[: self.base_n + 1] = self.off
        np.cumsum(lens, out=off[self.base_n + 1:])
        off[self.base_n + 1:] += self.off[-1]
        blob = np.concatenate([self.blob, np.frombuffer(b"".join(enc), np.uint8)])
        # live ids only: dead base entries are dropped, live tail ones hashed (O(tail))
        keep = alive[self.hpos] if len(self.hpos) else np.zeros(0, bool)
        t1, t2 = _hashes(tail)
        tpos = np.arange(self.base_n, n, dtype=np.int64)
        tkeep = alive[self.base_n:n]
        h1 = np.concatenate([self.h1[keep], t1[tkeep]])
        h2 = np.concatenate([self.h2[keep], t2[tkeep]])
        hpos = np.concatenate([self.hpos[keep], tpos[tkeep]])
        order = np.lexsort((h2, h1))
        return {"id_off": off, "id_blob": blob, "id_h1": h1[order], "id_h2": h2[order],
                "id_hpos": hpos[order]}
