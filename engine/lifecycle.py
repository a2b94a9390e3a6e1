"""The lifecycle half of :class:`~.database.Database`: the change feed and its named
consumers, read-only processes following the writer, checkpoints, compaction, snapshots,
integrity checks and WAL retention. A mixin, so that database.py keeps opening, the write
pipeline, namespaces and status; every method here works on the same private state
(``_applier``, ``_store``, ``_wal``, the locks) that database.py sets up.
"""

from __future__ import annotations

import contextlib
import time

from . import compact, retention, schema, segments, snapshot, validate
from .apply import StaleRowFile, pack, unpack
from .errors import ChangeFeedGap, InvalidInput
from .types import Change


class LifecycleMixin:
    """Methods of :class:`~.database.Database` (see the module docstring)."""

    # -- the log -------------------------------------------------------------------------------
    @property
    def lsn(self) -> int:
        """The last committed (applied and acknowledged) LSN."""
        self._check_open()
        self.refresh()
        return self._applied_lsn

    def changes(self, since: int = 0, consumer: str | None = None):
        """Iterate committed changes with LSN > ``since``, read from the WAL.

        ``consumer="name"``: a named consumer acknowledges everything up to ``since``; its
        position is recorded durably (the ops sub-database, synced) and WAL truncation
        keeps every record after it until the consumer moves on or is dropped
        (:meth:`drop_consumer`). Needs a writable database."""
        self._check_open()
        if isinstance(since, bool) or not isinstance(since, int) or since < 0:
            raise InvalidInput(f"since {since!r} is not valid; expected an LSN (int >= 0)")
        if consumer is not None:
            consumer = retention.consumer_name(consumer)
            self._check_writable()
        self.refresh()
        # a consumer: no truncation between the gap check and the recorded position
        with self._checkpoint_lock if consumer is not None else contextlib.nullcontext():
            upto = self._applied_lsn
            if consumer is not None and since > upto:
                raise InvalidInput(f"since {since} is past the last committed LSN {upto}; a "
                                   "consumer acknowledges only committed changes")
            first = self._wal.first_lsn
            if since < upto and (first is None or first > since + 1):
                raise ChangeFeedGap(
                    f"the change feed starts at LSN "
                    f"{first if first is not None else upto + 1}; changes after {since} "
                    "were truncated at a checkpoint",
                    hint="read it as a named consumer (changes(since, consumer='name')) so "
                         "the WAL is kept for it, or resynchronise from a full export")
            if consumer is not None:
                retention.record_consumer(self, consumer, since)
        return self._iter_changes(since, upto)

    def consumers(self) -> list[dict]:
        """The named change-feed consumers: ``name``, ``lsn`` (acknowledged up to), ``at``
        (epoch seconds of the last acknowledgement), ``lag`` (committed records after it)."""
        self._check_open()
        self.refresh()
        return retention.consumers(self, self._applied_lsn)

    def drop_consumer(self, name: str) -> None:
        """Forget the named consumer: its position no longer holds the WAL."""
        name = retention.consumer_name(name)
        self._check_writable()
        retention.drop_consumer(self, name)

    def _iter_changes(self, since: int, upto: int):
        for lsn, payload in self._wal.iter_records(since):
            if lsn > upto:
                break
            op = unpack(payload)
            yield Change(lsn=lsn, op=op["op"], namespace=op.get("ns"), version=op.get("v"),
                         ids=tuple(op.get("ids") or ()), ts=op.get("ts"))

    # -- read-only processes follow the writer through the WAL ------------------------------------
    def refresh(self) -> None:
        """In a read-only process, catch up with what the writer has committed since."""
        if not self.readonly or self._closed:
            return
        with self._store.read() as txn:
            raw = txn.get(schema.META_APPLIED_LSN, db=self._store.dbs[b"meta"])
        target = unpack(raw) if raw else 0
        if target <= self._applied_lsn:
            return
        with self._refresh_lock:
            if target <= self._applied_lsn:
                return
            first = self._wal.first_lsn
            if first is None or first > self._applied_lsn + 1:
                # the WAL no longer reaches back: start again from the writer's checkpoint
                applier = self._applier
                if not (applier.load_snapshot() and applier.applied_lsn <= target):
                    applier.load()
                for lsn, payload in self._wal.iter_records(applier.applied_lsn,
                                                           upto_lsn=target):
                    applier.apply(lsn, unpack(payload), persist=False)
            else:
                try:
                    for lsn, payload in self._wal.iter_records(self._applied_lsn,
                                                               upto_lsn=target):
                        self._applier.apply(lsn, unpack(payload), persist=False)
                except StaleRowFile:
                    # a compaction's rows were replaced by a later one: use the checkpoint
                    applier = self._applier
                    if not (applier.load_snapshot() and applier.applied_lsn <= target):
                        applier.load()
                    for lsn, payload in self._wal.iter_records(applier.applied_lsn,
                                                               upto_lsn=target):
                        applier.apply(lsn, unpack(payload), persist=False)
            self._applied_lsn = self._last_lsn = self._applier.applied_lsn

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint(self) -> int:
        """Persist the derived state of every changed version as array bundles at one
        LSN (engine/segments.py), flush the row files and LMDB, and drop WAL segments
        nobody needs any more. Returns the checkpoint LSN."""
        self._check_writable()
        if self._backlog:
            self._drain_backlog()           # applied first where possible; never blocks
        applier = self._applier
        with self._checkpoint_lock:
            with self._apply_cond:
                applied = self._applied_lsn
                previous = applier.checkpoint_dir
                snapshot = {"lsn": applied, "next_vid": applier.next_vid,
                            "configs": [c.to_msg() for c in applier.configs.values()],
                            "gens": {vid: st.gen for vid, st in applier.states.items()}}
                dirty, clean = {}, []
                for vid, st in applier.states.items():
                    if (st.mutations == st.checkpointed_mutations and previous is not None
                            and segments.has(self.path, previous, vid)):
                        clean.append(vid)
                    else:
                        dirty[vid] = (st.mutations, st.capture(), st)
            self._wal.sync(self._last_lsn)
            # every row the checkpoint counts is on disk before LMDB records it
            applier.sync_rows()
            name, _ = segments.write(self.path, applied,
                                     {v: c for v, (_, c, _) in dirty.items()}, previous, clean)
            snapshot["dir"] = name
            dbs = self._store.dbs

            def txn_fn(txn):
                txn.put(schema.META_SNAPSHOT, pack(snapshot), db=dbs[b"meta"])
                txn.put(schema.META_CHECKPOINT_LSN, pack(applied), db=dbs[b"meta"])
            self._store.write_with_retry(txn_fn)
            self._store.sync()
            for vid, (mutations, _, captured) in dirty.items():
                state = applier.states.get(vid)
                # a compaction may have replaced the state since: it is not this bundle's
                if state is captured:
                    state.checkpointed_mutations = mutations
                    # the state now rests on the new bundle: its tail holds later rows only
                    state.rebase(*segments.read(self.path, name, vid))
            applier.checkpoint_dir = name
            segments.remove_others(self.path, name)
            with self._apply_cond:          # no compaction is between its file and its swap
                # generations a compaction replaced, but those this checkpoint names (a
                # compaction after its LSN is replayed from them)
                applier.remove_orphans(keep=set(snapshot["gens"].items()))
            self.checkpoint_lsn = applied
            self.checkpoint_time = time.time()
            self._truncate_wal(applied)
        self._notify("on_checkpoint", applied)
        return applied

    # -- compaction (engine/compact.py) ----------------------------------------------------------
    def compact(self, namespace=None, version=None, *, progress=None) -> "compact.CompactReport":
        """Rewrite versions without their tombstones, online: every version (``namespace``
        None), the live one of ``namespace``, or ``(namespace, version)``. Each goes through
        the WAL and is swapped in atomically (queries see the old layout or the new one);
        then a checkpoint drops the old rows and bundles, so the directory shrinks.
        Writes wait while a version's live rows are copied; reads go on. ``progress``:
        ``callable(rows_done, rows_total)`` while rows are copied (the CLI's bar)."""
        self._check_writable()
        if namespace is None:
            if version is not None:
                raise InvalidInput(f"version {version!r} given without a namespace; expected "
                                   "compact(namespace, version)")
            configs = sorted(self._applier.configs.values(), key=lambda c: (c.name, c.version))
        else:
            configs = [self._resolve(validate.namespace_name(namespace), version)]
        if progress is None:
            return self._compact_configs(configs)
        total = sum(st.live for st in (self._applier.states.get(c.vid) for c in configs)
                    if st is not None and st.tombstones)
        copied = [0]

        def step(rows):
            copied[0] += rows
            progress(copied[0], total)
        self._applier.compact_progress.fn = step
        try:
            return self._compact_configs(configs)
        finally:
            self._applier.compact_progress.fn = None

    def _compact_configs(self, configs, *, automatic: bool = False):
        t0 = time.perf_counter()
        before = compact.engine_bytes(self.path)
        done = tuple(compact.compact_version(self, c, automatic=automatic) for c in configs)
        if any(v.lsn for v in done):
            self.checkpoint()
        report = compact.CompactReport(done, before, compact.engine_bytes(self.path),
                                       time.perf_counter() - t0, automatic)
        if any(v.lsn for v in done):
            self._compactor.record(report)
            self._notify("on_compact", report)
        return report

    def compaction_status(self) -> dict:
        """The ``compact_ratio`` policy and its last run (engine/compact.py Compactor)."""
        return self._compactor.status()

    # -- snapshots (engine/snapshot.py) ---------------------------------------------------------
    def snapshot(self, path=None) -> "snapshot.SnapshotInfo":
        """An online, consistent copy of the database as of one LSN, taken while reads and
        writes continue: ``<path>/lmdb/data.mdb`` + ``<path>/manifest.json``. Without
        ``path`` it goes to ``<db>/snapshots/<lsn:020d>-<UTC time>/``. Works read-only."""
        self._check_open()
        info = snapshot.take(self, path)
        if self._archive is not None and self.writable:
            try:
                self._wal.seal()            # every record so far goes to the archive
                with self._checkpoint_lock:
                    self._archive.copy_sealed(self._wal.sealed_segments())
            except Exception:               # reported by status()["wal_archive"]
                pass
        return info

    def snapshots(self) -> list:
        """The complete snapshots in ``<db>/snapshots``, oldest first."""
        self._check_open()
        return snapshot.list_snapshots(self.path)

    def prune_snapshots(self, keep: int) -> list:
        """Remove the snapshots in ``<db>/snapshots`` older than the newest ``keep``;
        returns the removed ones' SnapshotInfo. Works read-only (files only)."""
        self._check_open()
        return snapshot.prune(self.path, keep)

    # -- integrity (engine/integrity.py) -------------------------------------------------------
    def verify(self, deep: bool = False, *, progress=None):
        """Check checksums and cross-references of everything stored (engine/integrity.py):
        a VerifyReport (``ok``, ``problems`` naming namespace, version, id or key). Works
        read-only. ``deep=True`` also re-encodes and re-ranks a sample per version."""
        from . import integrity
        self._check_open()
        return integrity.verify(self, deep=deep, progress=progress)

    def repair(self, *, progress=None, rows_from_wal: bool = False):
        """Rebuild all derived state from LMDB, the rows and the WAL, then checkpoint; a
        RepairReport names the ids whose primary data is damaged (engine/repair.py)."""
        from . import repair
        self._check_writable()
        return repair.repair(self, progress=progress, rows_from_wal=rows_from_wal)

    def scrubber(self, rows: int = 4096, *, deep: bool = True):
        """An incremental verify, one bounded slice per ``step()`` (scrub.Scrubber)."""
        from . import scrub
        self._check_open()
        return scrub.Scrubber(self, rows, deep=deep)

    def wal_keep_target(self) -> int:
        """WAL bytes kept past every pin: ``wal_keep_bytes`` when given, else
        :func:`~.retention.default_wal_keep_bytes` of the LMDB bytes used now."""
        return retention.keep_target(self)

    def wal_retention(self) -> dict:
        """WAL bytes and why they are kept (engine/retention.py): ``bytes``, ``segments``,
        ``keep_bytes`` (the tail kept past the pins), ``pins`` (checkpoint, archive, oldest
        snapshot, consumers), each with the LSN it needs from and the ``bytes`` of the
        segments it holds, and ``archive`` (engine/archive.py status, or None)."""
        self._check_open()
        return retention.report(self)

    def _truncate_wal(self, checkpoint_lsn: int):
        retention.truncate(self, checkpoint_lsn)

    def _checkpoint_loop(self, interval: float):
        while not self._stop.wait(interval):
            try:
                if self._backlog:
                    self._drain_backlog()
                if self.durability == "async":
                    self._wal.sync(self._last_lsn)
                self.checkpoint()
            except Exception:   # the next write reports a failing store; keep the loop alive
                continue
