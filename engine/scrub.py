"""The background scrub: :func:`~.integrity.verify`'s checks, one bounded slice at a time
(the ops layer's scrub loop, ops/scrub.py, runs a :class:`Scrubber` step per interval)."""

from __future__ import annotations

import time

from . import segments
from .errors import CorruptionError, InvalidInput
from .integrity import (VerifyReport, _checkpoint_dir, _Found, _Held, _Version, check_deep,
                        check_checkpoint_record, check_lmdb, check_positions, check_structure,
                        scan_ids)


class Scrubber:
    """Incremental verify: each :meth:`step` checks one bounded slice and returns its
    :class:`VerifyReport` (``complete`` is True on the step that finishes a cycle over
    every version). Slices: ``rows`` positions of one version (rows, records, id entries,
    field indexes), then ``rows`` of its id entries in key order, then its counts, IVF
    lists and checkpoint bundle (numpy work over the version's arrays) and, with ``deep``,
    the deep sample (DEEP_SAMPLE rows re-encoded, DEEP_QUERIES re-ranked; another sample
    each cycle). The LMDB structure is checked at the start of each cycle."""

    def __init__(self, db, rows: int = 4096, *, deep: bool = True):
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise InvalidInput(f"scrub rows {rows!r} is not valid; expected an int >= 1 "
                               "(positions or id entries checked per step)")
        if not isinstance(deep, bool):
            raise InvalidInput(f"scrub deep {deep!r} is not valid; expected True or False")
        self.db, self.rows, self.deep = db, rows, deep
        self._plan: list = []
        self.cycles = 0
        self.cycle_problems: list = []

    def _next_task(self):
        if not self._plan:
            configs = sorted(self.db._applier.configs.values(),
                             key=lambda c: (c.name, c.version))
            self._plan = [("lmdb", None, None)] + [("positions", c.vid, 0) for c in configs]
            self.cycle_problems = []
        return self._plan.pop(0)

    def step(self) -> VerifyReport:
        db = self.db
        db._check_open()
        t0 = time.perf_counter()
        found = _Found()
        kind, vid, cursor = self._next_task()
        lsn = db._applier.applied_lsn
        if kind == "lmdb":
            check_lmdb(db, found)
            check_checkpoint_record(db, found)
        else:
            config = db._applier.configs.get(vid)
            if config is not None:
                with _Held(db, vid) as (txn, state):
                    if state is not None:
                        lsn = db._applier.applied_lsn
                        self._slice(found, kind, config, txn, state, cursor)
        self.cycle_problems += found.items
        complete = not self._plan
        if complete:
            self.cycles += 1
        return VerifyReport(ok=not found.items and not found.omitted,
                            problems=list(found.items), checked=dict(found.checked),
                            seconds=time.perf_counter() - t0, at=time.time(), lsn=lsn,
                            complete=complete, omitted=found.omitted)

    def _slice(self, found, kind, config, txn, state, cursor):
        try:
            v = _Version(self.db, txn, config, state)
        except CorruptionError as e:
            found.add("row_file", config, key=segments.row_path(self.db.path, config.vid),
                      detail=e.message, primary=True)
            return
        vid = config.vid
        if kind == "positions":
            found.count("versions")
            hi = min(cursor + self.rows, v.n)
            check_positions(v, found, cursor, hi)
            self._plan.insert(0, ("positions", vid, hi) if hi < v.n else ("ids", vid, None))
        elif kind == "ids":
            _, last = scan_ids(v, found, after=cursor, limit=self.rows)
            self._plan.insert(0, ("ids", vid, last) if last is not None
                              else ("structure", vid, None))
        else:
            check_structure(v, found, checkpoint_dir=_checkpoint_dir(self.db))
            if self.deep:
                check_deep(v, found, seed=self.cycles)
