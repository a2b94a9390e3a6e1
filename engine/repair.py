"""``db.repair()``: rebuild every derived structure from LMDB, the rows and the WAL.

The checks are engine/integrity.py; this module acts on what they find. Derived state (id
maps, alive masks, norms, field indexes, IVF lists and codes, checkpoint bundles) is
rebuilt; primary data (rows, records, id entries) is never dropped, invented or silently
fixed: it is named in the :class:`RepairReport`, to restore from a snapshot and the WAL
archive (docs/runbook.md, "Recover from a corruption finding"). The report also says which
damaged rows the WAL still holds (a record whose bytes match the CRC-32 the row's id entry
carries); only when asked (``rows_from_wal=True``, ``simplevector repair --rows-from-wal``)
are those rows rewritten from it, and then listed as such.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import schema
from .apply import unpack
from .errors import CorruptionError, InvalidInput, ReadOnlyError
from .integrity import RESTORE_HINT, Problem, VerifyReport, verify


@dataclass(frozen=True)
class RepairReport:
    """What ``repair`` rebuilt, and the primary damage it could not fix.

    ``damaged``: problems of primary data still present or lost (their ids come back from a
    snapshot and the WAL archive, see ``hint``); ``in_wal``: (namespace, version, id) of
    damaged rows a WAL record still holds, with the very bytes the CRC in their id entry
    names; ``restored_from_wal``: those rewritten from it (``rows_from_wal=True``);
    ``rebuilt``: one line per rebuilt structure."""

    ok: bool
    damaged: list
    restored_from_wal: tuple
    rebuilt: tuple
    before: VerifyReport
    after: VerifyReport
    checkpoint_lsn: int
    seconds: float
    hint: str | None = None
    in_wal: tuple = ()

    def to_dict(self) -> dict:
        return {"ok": self.ok, "damaged": [p.to_dict() for p in self.damaged],
                "in_wal": [list(x) for x in self.in_wal],
                "restored_from_wal": [list(x) for x in self.restored_from_wal],
                "rebuilt": list(self.rebuilt), "before": self.before.to_dict(),
                "after": self.after.to_dict(), "checkpoint_lsn": self.checkpoint_lsn,
                "seconds": self.seconds, "hint": self.hint}

    @classmethod
    def from_dict(cls, d: dict) -> "RepairReport":
        """The report :meth:`to_dict` gave (the HTTP client rebuilds it so)."""
        return cls(ok=d["ok"], damaged=[Problem.from_dict(p) for p in d["damaged"]],
                   restored_from_wal=tuple(tuple(x) for x in d["restored_from_wal"]),
                   rebuilt=tuple(d["rebuilt"]), before=VerifyReport.from_dict(d["before"]),
                   after=VerifyReport.from_dict(d["after"]), checkpoint_lsn=d["checkpoint_lsn"],
                   seconds=d["seconds"], hint=d["hint"],
                   in_wal=tuple(tuple(x) for x in d.get("in_wal", ())))


def repair(db, *, progress=None, rows_from_wal: bool = False) -> RepairReport:
    """Rebuild every derived structure from LMDB, the rows and the WAL, then checkpoint.

    Under the sequence lock (writes wait): with ``rows_from_wal``, rows whose bytes fail
    their CRC are rewritten from a WAL record that still holds them (the CRC proves the
    bytes; without it they are only looked up and listed in ``in_wal``), every version's
    state is rebuilt from LMDB's ids and records and its row file (id map, alive mask,
    norms, field indexes), each IVF index is re-encoded with its trained centroids and
    codebooks when those are intact (finite, and their bundle arrays pass the CRC) or
    trained again, and a checkpoint writes fresh bundles. Primary damage that remains (a bad
    id entry or record, a row no WAL record holds) is reported, never dropped or invented."""
    if db.readonly:
        raise ReadOnlyError(f"repair needs the writer; the database at {db.path} is open "
                            "read-only", hint="close other writers and open it writable")
    db._check_writable()
    if not isinstance(rows_from_wal, bool):
        raise InvalidInput(f"rows_from_wal {rows_from_wal!r} is not valid; expected True or "
                           "False")
    t0 = time.perf_counter()
    before = verify(db)
    rebuilt: list = []
    with db._seq_lock:
        db._wait_applied()
        in_wal = _rows_from_wal(db, [p for p in before.problems if p.kind == "row_checksum"],
                                write=rows_from_wal)
        restored = in_wal if rows_from_wal else set()
        if restored:
            rebuilt.append(f"{len(restored)} damaged rows rewritten from the WAL")
        trained = _trained_indexes(db, before)
        with db._apply_cond:
            db._applier.load()
        rebuilt.append("id maps, alive masks, norms and field indexes of "
                       f"{len(db._applier.states)} versions rebuilt from LMDB and the rows")
        for vid, state in list(db._applier.states.items()):
            old = trained.get(vid)
            label = f"{state.config.name} v{state.config.version}"
            if old is None:
                continue
            with state.mutate_lock:
                if old[1] is not None:
                    _reencode(state, old[1])
                    rebuilt.append(f"{label}: IVF lists and codes re-encoded with the "
                                   "trained centroids and codebooks")
                    continue
            from . import indexer
            try:
                indexer.build(state, should_stop=db._stop.is_set)
                rebuilt.append(f"{label}: IVF index trained again ({old[0]})")
            except Exception as e:
                state.training_error = f"{type(e).__name__}: {e}"
                rebuilt.append(f"{label}: IVF training failed ({e}); queries stay exact")
        lsn = db.checkpoint()
        rebuilt.append(f"checkpoint bundles written at LSN {lsn}")
    after = verify(db, progress=progress)
    damaged = [p for p in before.primary
               if (p.namespace, p.version, p.id, p.kind) not in restored]
    seen = {(p.kind, p.namespace, p.version, p.id, p.key) for p in damaged}
    damaged += [p for p in after.primary if (p.kind, p.namespace, p.version, p.id, p.key)
                not in seen]
    return RepairReport(ok=not damaged and after.ok, damaged=list(damaged),
                        restored_from_wal=tuple(sorted((x[:3] for x in restored), key=repr)),
                        in_wal=tuple(sorted((x[:3] for x in in_wal), key=repr)),
                        rebuilt=tuple(rebuilt), before=before, after=after,
                        checkpoint_lsn=lsn, seconds=time.perf_counter() - t0,
                        hint=RESTORE_HINT if damaged else None)


def _trained_indexes(db, before: VerifyReport) -> dict:
    """vid -> (spec, index to keep or None to train again) of every version with an index.
    Kept when its centroids and codebooks are finite and, if they came from a bundle, no
    array of that bundle's IVF part failed its checksum."""
    damaged = {(p.namespace, p.version) for p in before.problems
               if p.kind == "bundle_checksum" and "'ivf." in p.detail}
    out = {}
    for vid, state in db._applier.states.items():
        index = state.index
        if index is None:
            continue
        ok = index.trained_finite()
        key = (state.config.name, state.config.version)
        out[vid] = (str(index.spec), index if ok and key not in damaged else None)
    return out


def _reencode(state, old):
    """A new index with ``old``'s trained centroids and codebooks over the live rows."""
    from .indexer import ENCODE_CHUNK
    index = old.empty_like()
    view = state.view()
    positions = np.flatnonzero(view.alive)
    lists = np.empty(len(positions), np.int32)
    codes = np.empty((len(positions), index.m), np.uint8)
    for lo in range(0, len(positions), ENCODE_CHUNK):
        part = positions[lo:lo + ENCODE_CHUNK]
        lists[lo:lo + len(part)], codes[lo:lo + len(part)] = index.encode(
            np.ascontiguousarray(view.X[part]))
    index.load_lists(positions.astype(np.int64), lists, codes)
    index.trained_upto = min(old.trained_upto, view.n)
    state.index = index
    state.mutations += 1


def _rows_from_wal(db, problems: list, *, write: bool) -> set:
    """Rows that fail their CRC and that a WAL upsert still holds with the bytes the CRC
    names (rewritten when ``write``): {(namespace, version, id, "row_checksum")}."""
    if not problems:
        return set()
    applier = db._applier
    want = {}                       # (vid, extid) -> (position, crc, problem)
    with db._store.read() as txn:
        for p in problems:
            config = next((c for c in applier.configs.values()
                           if (c.name, c.version) == (p.namespace, p.version)), None)
            if config is None:
                continue
            key = schema.id_key(config.vid, p.id)
            raw = txn.get(key, db=db._store.dbs[b"ids"])
            if raw is None:
                continue
            try:
                rowid, crc = schema.parse_id_value(key, raw)
            except CorruptionError:
                continue
            want[(config.vid, p.id)] = (rowid, crc, p)
    done = set()
    for _lsn, payload in db._wal.iter_records(0):
        op = unpack(payload)
        if op.get("op") != "upsert":
            continue
        vid = op["vid"]
        state = applier.states.get(vid)
        if state is None:
            continue
        hits = [i for i, extid in enumerate(op["ids"]) if (vid, extid) in want]
        if not hits:
            continue
        X = np.frombuffer(op["vec"], dtype="<f4").reshape(len(op["ids"]), state.dim)
        for i in hits:
            rowid, crc, p = want[(vid, op["ids"][i])]
            row = state.prepare(X[i:i + 1].astype(np.float32))
            if schema.row_crc(row[0]) == crc:
                if write:
                    state.rows.write(rowid, row)
                done.add((p.namespace, p.version, p.id, "row_checksum"))
                del want[(vid, op["ids"][i])]
    if done and write:
        applier.sync_rows()
    return done
