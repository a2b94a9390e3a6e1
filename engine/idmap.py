"""External id <-> row position of one version, without a Python object per row.

Two halves:

* the base, as of the last checkpoint, as arrays (views of the checkpoint bundle), in one
  of two forms:

  - int ids (every id of the version an int): ``id_int`` holds each position's id; when
    it is non-decreasing over positions (ids written in increasing order, the usual bulk
    load) a lookup is ``np.searchsorted`` on it directly, else ``id_skeys``/``id_spos``
    hold the live ids sorted with their positions (8 to 24 bytes a row in all);
  - any ids: ``id_off``/``id_blob`` hold each position's encoded id
    (:func:`schema.encode_id`), and ``id_h1``/``id_h2``/``id_hpos`` the 128-bit BLAKE2b
    hash of each live id sorted, with its position;

* the tail: ids written since (a list by position and a dict id -> newest position).

A lookup tries the tail, then the base; a position counts only while ``alive`` says so
(deletes and replacements just clear ``alive``), so the base never changes between
checkpoints. With the hashed form, two ids colliding in 128 bits (2^-128 per pair) is not
planned for; the id at the found position is compared anyway.
"""

from __future__ import annotations

import hashlib

import numpy as np

from . import schema
from .errors import CorruptionError

_EMPTY_U64 = np.zeros(0, np.uint64)
_EMPTY_I64 = np.zeros(0, np.int64)
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def hash_id(extid) -> tuple[int, int]:
    d = hashlib.blake2b(schema.encode_id(extid), digest_size=16).digest()
    return int.from_bytes(d[:8], "little"), int.from_bytes(d[8:], "little")


def _hashes(ids) -> tuple[np.ndarray, np.ndarray]:
    pairs = [hash_id(x) for x in ids]
    if not pairs:
        return _EMPTY_U64, _EMPTY_U64
    h = np.array(pairs, dtype=np.uint64)
    return h[:, 0].copy(), h[:, 1].copy()


def _is_int(x) -> bool:
    return type(x) is int and _I64_MIN <= x <= _I64_MAX


class IdMap:
    def __init__(self, base: dict | None = None):
        base = base or {}
        self.id_int = base.get("id_int")
        if self.id_int is not None:
            self.base_n = len(self.id_int)
            self.skeys = base.get("id_skeys")      # None: id_int itself is sorted
            self.spos = base.get("id_spos")
        else:
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
        if self.id_int is not None:
            return int(self.id_int[pos])
        return schema.decode_id(self.blob[self.off[pos]:self.off[pos + 1]].tobytes())

    def at_many(self, positions) -> list:
        positions = np.asarray(positions, np.int64)
        if not len(positions):
            return []
        if self.id_int is not None:
            # a query's k positions: Python's max of the list beats numpy's reduction
            small = len(positions) <= 64
            top = max(positions.tolist()) if small else int(positions.max())
            if top < self.base_n:
                return self.id_int[positions].tolist()
        return [self.at(p) for p in positions.tolist()]

    # -- id -> position ----------------------------------------------------------------------
    def _base_lookup(self, extid, alive) -> int:
        if self.id_int is not None:
            if not _is_int(extid):
                return -1
            keys = self.id_int if self.skeys is None else self.skeys
            i = int(np.searchsorted(keys, extid))
            while i < len(keys) and int(keys[i]) == extid:
                pos = i if self.skeys is None else int(self.spos[i])
                if alive[pos]:
                    return pos
                i += 1
            return -1
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
        if not misses or not self.base_n:
            return out
        if self.id_int is not None:
            cand = [i for i in misses if _is_int(ids[i])]
            if not cand:
                return out
            keys = self.id_int if self.skeys is None else self.skeys
            want = np.array([ids[i] for i in cand], np.int64)
            idx = np.searchsorted(keys, want)
            inside = idx < len(keys)
            hit = np.zeros(len(cand), bool)
            hit[inside] = keys[idx[inside]] == want[inside]
        else:
            cand = misses
            h1, _ = _hashes([ids[i] for i in cand])
            idx = np.searchsorted(self.h1, h1)
            inside = idx < len(self.h1)
            hit = np.zeros(len(cand), bool)
            hit[inside] = self.h1[idx[inside]] == h1[inside]
        for j in np.flatnonzero(hit).tolist():
            i = cand[j]
            out[i] = self._base_lookup(ids[i], alive)
        return out

    # -- writing -------------------------------------------------------------------------------
    def append(self, ids: list, start: int):
        """Positions ``start..`` now hold ``ids`` (``start`` must be :attr:`n`)."""
        if start != self.n:
            raise CorruptionError(f"id map: rows appended at position {start}, but the map "
                                  f"holds {self.n} (positions must be dense)")
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
        base_ints = self.id_int is not None or self.base_n == 0
        if base_ints and all(_is_int(x) or (x is None) for x in tail):
            return self._int_arrays(n, alive, tail)
        return self._hashed_arrays(n, alive, tail)

    def _int_arrays(self, n, alive, tail) -> dict:
        base = self.id_int if self.id_int is not None else _EMPTY_I64
        # a dead position may hold None (rebuilt without a checkpoint): it takes the id
        # before it, which keeps the order (dead positions are never answered)
        fill, prev = [], int(base[-1]) if len(base) else _I64_MIN
        for x in tail:
            if x is not None:
                prev = x
            fill.append(prev)
        ids = np.concatenate([base, np.array(fill, np.int64)]) if fill else np.array(base)
        out = {"id_int": ids}
        if len(ids) > 1 and bool((ids[1:] < ids[:-1]).any()):
            live = np.flatnonzero(alive[:n])
            order = np.argsort(ids[live], kind="stable")
            out["id_skeys"] = ids[live][order]
            out["id_spos"] = live[order].astype(np.int64)
        return out

    def _hashed_arrays(self, n, alive, tail) -> dict:
        if self.id_int is not None:
            # switching from int ids (a str id arrived): encode the base once
            enc_base = [schema.encode_id(int(x)) for x in self.id_int.tolist()]
            lens = np.fromiter((len(e) for e in enc_base), np.int64, len(enc_base))
            base_off = np.zeros(self.base_n + 1, np.int64)
            np.cumsum(lens, out=base_off[1:])
            base_blob = np.frombuffer(b"".join(enc_base), np.uint8)
            live = np.flatnonzero(alive[: self.base_n])
            b1, b2 = _hashes(self.id_int[live].tolist())
            base_h1, base_h2, base_hpos = b1, b2, live.astype(np.int64)
        else:
            base_off, base_blob = self.off, self.blob
            keep = alive[self.hpos] if len(self.hpos) else np.zeros(0, bool)
            base_h1, base_h2, base_hpos = self.h1[keep], self.h2[keep], self.hpos[keep]
        enc = [schema.encode_id(x) if x is not None else b"" for x in tail]
        lens = np.fromiter((len(e) for e in enc), np.int64, len(enc))
        off = np.empty(n + 1, np.int64)
        off[: self.base_n + 1] = base_off
        np.cumsum(lens, out=off[self.base_n + 1:])
        off[self.base_n + 1:] += base_off[-1]
        blob = np.concatenate([base_blob, np.frombuffer(b"".join(enc), np.uint8)])
        tpos = np.arange(self.base_n, n, dtype=np.int64)
        tkeep = alive[self.base_n:n]
        t1, t2 = _hashes([x for x, k in zip(tail, tkeep.tolist()) if k])
        h1 = np.concatenate([base_h1, t1])
        h2 = np.concatenate([base_h2, t2])
        hpos = np.concatenate([base_hpos, tpos[tkeep]])
        order = np.lexsort((h2, h1))
        return {"id_off": off, "id_blob": blob, "id_h1": h1[order], "id_h2": h2[order],
                "id_hpos": hpos[order]}
