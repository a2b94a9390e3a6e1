"""The database: one directory, one LMDB store, one write-ahead log, many namespaces.

Directory layout::

    <path>/LOCK          flock()ed by the one writer process
    <path>/lmdb/         LMDB environment (materialised state + applied LSN)
    <path>/wal/          write-ahead log segments, named by first LSN

Write pipeline (docs/architecture.md, "Data flow of a write"): validate -> assign LSN and
append the WAL record
(under the sequence lock) -> fdatasync shared with concurrent writers (group commit) ->
apply to LMDB and memory in LSN order -> acknowledge. Catalog changes (create, promote,
drop) hold the sequence lock until applied, so every later validation sees them.

Before the WAL append a write checks the free disk space against a reserve (the batch and
a floor, :meth:`Database.disk_reserve_for`) and raises :class:`~.errors.DiskFullError`
without writing anything while it is short; writes resume by themselves once space returns.
If applying a record that is already in the WAL fails (an I/O error, a full disk), the
record is durable: the caller gets a StorageError carrying its ``lsn`` (``durable=True``),
the record waits in LSN order with any later ones, and the next write, checkpoint or close
applies them first (no reopen; a write that arrives while they still cannot be applied is
refused before its append).

WAL retention (:meth:`Database.wal_retention`): a segment is removed only below the lowest
LSN still needed by the checkpoint, each named change-feed consumer
(``changes(since, consumer=...)``), the oldest snapshot in ``<db>/snapshots`` (when there is
no WAL archive) and the archive (a segment goes only once copied, engine/archive.py); past
those, the newest ``wal_keep_bytes`` are kept (default: sized to the database,
:func:`default_wal_keep_bytes`).

The layers above read :meth:`Database.status` / :meth:`Database.version_statuses`, register
an :class:`~.observer.Observer` (:meth:`Database.add_observer`) and keep their own small
persisted state in :attr:`Database.ops_store`; none of them touches a private name.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import os
import threading
import time

import numpy as np

from . import compact, indexer, retention, schema, segments, snapshot, upgrade, validate
from .apply import Applier, pack, unpack
from .archive import WalArchive
from .errors import (ClosedError, InvalidInput, LockedError, NamespaceExists,
                     NamespaceNotFound, ReadOnlyError, StorageError, VersionNotFound)
from .indexspec import AUTO_THRESHOLD, IndexSpec
from .kernels.distances import resolve_metric
from .lifecycle import LifecycleMixin
from .limits import limits_value
from .namespace import Namespace
from .observer import Observer
from .status import DatabaseStatus, VersionStatus
from .store import Store
from .types import NamespaceInfo, VersionConfig, VersionInfo
from .retention import (DISK_RESERVE_FLOOR, WAL_KEEP_FLOOR, WAL_KEEP_FRACTION,  # noqa: F401
                        default_wal_keep_bytes)
from .wal import WriteAheadLog

DURABILITY_MODES = ("sync", "async")


def _index_spec(index, dim: int) -> str:
    return str(IndexSpec.parse(index).check_dim(dim))


class Database(LifecycleMixin):
    """A SimpleVector database directory. Thread-safe; use as a context manager."""

    def __init__(self, path, *, durability: str = "sync", readonly: bool = False,
                 checkpoint_interval: float = 60.0, wal_keep_bytes: int | None = None,
                 auto_index: bool = True, auto_index_threshold: int = AUTO_THRESHOLD,
                 limits=None, wal_archive=None, disk_reserve: int | None = None,
                 disk_free_probe=None, wal_segment_bytes: int = 64 << 20,
                 compact_ratio: float = compact.DEFAULT_COMPACT_RATIO,
                 compact_min_rows: int = compact.DEFAULT_MIN_ROWS):
        if durability not in DURABILITY_MODES:
            raise InvalidInput(
                f"durability {durability!r} is not valid; expected 'sync' or 'async'")
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidInput(f"path {path!r} is not a path; expected a str or os.PathLike")
        if (isinstance(checkpoint_interval, bool)
                or not isinstance(checkpoint_interval, (int, float)) or checkpoint_interval < 0):
            raise InvalidInput(f"checkpoint_interval {checkpoint_interval!r} is not valid; "
                               "expected seconds >= 0 (0 turns the checkpointer off)")
        if (isinstance(compact_ratio, bool) or not isinstance(compact_ratio, (int, float))
                or not 0 <= compact_ratio < 1):
            raise InvalidInput(f"compact_ratio {compact_ratio!r} is not valid; expected a "
                               "tombstone ratio in [0, 1) (0 turns automatic compaction off)")
        if (isinstance(compact_min_rows, bool) or not isinstance(compact_min_rows, int)
                or compact_min_rows < 1):
            raise InvalidInput(f"compact_min_rows {compact_min_rows!r} is not valid; expected "
                               "an int >= 1 (tombstones a version needs before it is compacted)")
        self.limits = limits_value(limits)     # an open option, not persisted (limits.py)
        self.path = os.path.abspath(os.fspath(path))
        self.durability = durability
        self.readonly = bool(readonly)
        #: explicit WAL retention past the pins (None: default_wal_keep_bytes)
        self.wal_keep_bytes, self.disk_reserve, self.wal_archive, self._free_probe = \
            retention.open_options(self.path, wal_keep_bytes, disk_reserve, disk_free_probe,
                                   wal_archive)
        self._archive = None
        self._backlog: list = []            # (lsn, op) logged but not applied yet, in order
        self._apply_error: Exception | None = None
        self.disk_full_refusals = 0
        self._closed = False
        self._failed: Exception | None = None
        self._lock_fd = None
        self._seq_lock = threading.Lock()
        self._apply_cond = threading.Condition(threading.Lock())
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._checkpointer = None
        self.checkpoint_lsn = 0
        self.checkpoint_time = None
        self.replayed_records = 0           # WAL records applied to LMDB at open
        self.memory_replayed_records = 0    # WAL records applied on top of checkpoint segments
        self.auto_index = bool(auto_index)
        self.auto_index_threshold = int(auto_index_threshold)
        self._trainers: list[threading.Thread] = []
        self._encoder_pool = None
        self._checkpoint_lock = threading.Lock()
        self.query_stats = {"queries": 0, "short": 0, "plans": {}}
        # totals since open, for the ops layer's counters
        self.counters = {"vectors_written": 0, "vectors_deleted": 0, "writes": 0}
        self._observers: tuple = ()
        self.observer_errors = 0
        self.observer_last_error: str | None = None
        self.ops_store = OpsStore(self)
        self._compactor = compact.Compactor(self, 0 if readonly else compact_ratio,
                                            compact_min_rows)
        if not self.readonly:
            upgrade.finish_interrupted(self.path)   # an upgrade killed between its renames
        self._open_dirs()
        if not self.readonly:
            snapshot.sweep_tmp(self.path)   # half-made snapshots of a dead process
        try:
            self._store = Store(os.path.join(self.path, "lmdb"), readonly=self.readonly)
            self._wal = WriteAheadLog(os.path.join(self.path, "wal"), readonly=self.readonly,
                                      segment_bytes=wal_segment_bytes,
                                      scan_from=self._replay_floor())
            self._applier = Applier(self._store, self.path, readonly=self.readonly)
            self._recover()
            self._handled_lsn = self._applied_lsn  # applied, or waiting in the backlog
            if self.wal_archive is not None and not self.readonly:
                self._archive = WalArchive(self.wal_archive)
                self._wal.seal()                # this process appends to a new segment
                self._archive.copy_sealed(self._wal.sealed_segments())
        except BaseException:
            self._release_handles()
            raise
        if checkpoint_interval and not self.readonly:
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, args=(float(checkpoint_interval),),
                name="simplevector-checkpointer", daemon=True)
            self._checkpointer.start()
        for vid in list(self._applier.states):
            self._maybe_train(vid)

    # -- opening -------------------------------------------------------------------------------
    def _open_dirs(self):
        if self.readonly:
            if not os.path.isdir(os.path.join(self.path, "lmdb")):
                raise StorageError(f"no SimpleVector database at {self.path}",
                                   hint="create it by opening it once without readonly=True")
            return
        try:
            os.makedirs(self.path, exist_ok=True)
            fd = os.open(os.path.join(self.path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(f"cannot create the database directory {self.path}: {e}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            raise LockedError(f"the database at {self.path} is locked by another writer process"
                              ) from e
        self._lock_fd = fd

    def _replay_floor(self) -> int:
        """No WAL record at or below this LSN is replayed by :meth:`_recover`: the lower of
        LMDB's applied LSN and the checkpoint's (its bundles are loaded, then the WAL after
        it). The WAL's open reads only the headers of segments wholly below it."""
        meta = self._store.dbs[b"meta"]
        with self._store.read() as txn:
            raw_applied = txn.get(schema.META_APPLIED_LSN, db=meta)
            raw_snap = txn.get(schema.META_SNAPSHOT, db=meta)
        floor = unpack(raw_applied) if raw_applied else 0
        if raw_snap:
            floor = min(floor, int(unpack(raw_snap).get("lsn") or 0))
        return max(0, int(floor))

    def _recover(self):
        """Load the last checkpoint's segments and replay the WAL after them up to LMDB's
        applied LSN in memory (or rebuild from the LMDB rows when the segments cannot be
        used), then replay the WAL after LMDB's applied LSN into LMDB (writer only)."""
        applier = self._applier
        with self._store.read() as txn:
            raw = txn.get(schema.META_APPLIED_LSN, db=self._store.dbs[b"meta"])
        lmdb_lsn = unpack(raw) if raw else 0
        snap_lsn = applier.snapshot_lsn()
        loaded = False
        if snap_lsn is not None and snap_lsn <= lmdb_lsn:
            first = self._wal.first_lsn
            covered = snap_lsn == lmdb_lsn or (first is not None and first <= snap_lsn + 1)
            if covered and applier.load_snapshot():
                for lsn, payload in self._wal.iter_records(snap_lsn, upto_lsn=lmdb_lsn):
                    applier.apply(lsn, unpack(payload), persist=False)
                    self.memory_replayed_records += 1
                loaded = applier.applied_lsn == lmdb_lsn
        if not loaded:
            self.memory_replayed_records = 0
            applier.load()
        if not self.readonly:
            for lsn, payload in self._wal.iter_records(applier.applied_lsn):
                applier.apply(lsn, unpack(payload))
                self.replayed_records += 1
            # row files the checkpoint record names stay: a replay from it reads them
            snap = applier._snapshot_record() or {}
            applier.remove_orphans(keep=set((snap.get("gens") or {}).items()))
            segments.remove_others(self.path, applier.checkpoint_dir)
        with self._store.read() as txn:
            raw = txn.get(schema.META_CHECKPOINT_LSN, db=self._store.dbs[b"meta"])
            self.checkpoint_lsn = unpack(raw) if raw else 0
        self._last_lsn = max(applier.applied_lsn, self._wal.last_lsn or 0)
        self._applied_lsn = applier.applied_lsn if self.readonly else self._last_lsn

    def _release_handles(self):
        for name in ("_applier", "_wal", "_store"):
            obj = getattr(self, name, None)
            if obj is not None:
                try:
                    obj.close()
                except Exception:
                    pass
        if self._lock_fd is not None:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                os.close(self._lock_fd)
            except OSError:
                pass
            self._lock_fd = None

    # -- state checks --------------------------------------------------------------------------
    def _check_open(self):
        if self._closed:
            raise ClosedError(f"the database at {self.path} is closed")

    def _check_writable(self):
        self._check_open()
        if self.readonly:
            raise ReadOnlyError(f"the database at {self.path} is open read-only")
        if self._failed is not None:
            raise StorageError(
                f"the database at {self.path} stopped accepting writes after a failed apply: "
                f"{self._failed}", hint="close and reopen it; recovery replays the WAL")

    # -- catalog lookups -----------------------------------------------------------------------
    def _versions_of(self, name: str) -> list[VersionConfig]:
        configs = list(self._applier.configs.values())   # one C-level copy: no torn reads
        if len(configs) == 1:               # the common case, without a sort
            return configs if configs[0].name == name else []
        return sorted((c for c in configs if c.name == name), key=lambda c: c.version)

    def _resolve(self, name: str, version=None) -> VersionConfig:
        versions = self._versions_of(name)
        if not versions:
            raise NamespaceNotFound(f"namespace {name!r} does not exist")
        if version is None:
            for config in versions:
                if config.live:
                    return config
            raise NamespaceNotFound(f"namespace {name!r} has no live version")
        for config in versions:
            if config.version == version:
                return config
        raise VersionNotFound(
            f"namespace {name!r} has no version {version}; it has versions "
            f"{[c.version for c in versions]}")

    def _state(self, vid: int):
        state = self._applier.states.get(vid)
        if state is None:
            raise NamespaceNotFound(f"namespace version {vid} was dropped")
        return state

    # -- the write pipeline --------------------------------------------------------------------
    def _encoder(self):
        """One worker thread that PQ-encodes write batches while their WAL record syncs."""
        if self._encoder_pool is None:
            with self._refresh_lock:
                if self._encoder_pool is None:
                    self._encoder_pool = concurrent.futures.ThreadPoolExecutor(
                        max_workers=1, thread_name_prefix="simplevector-encode")
        return self._encoder_pool

    def _commit(self, build_op, *, ddl: bool = False, prepared=None):
        """Validate (``build_op`` runs under the sequence lock), log, sync, apply in order."""
        self._check_writable()
        self._seq_lock.acquire()
        held = True
        try:
            self._check_writable()
            if self._backlog:
                self._drain_backlog(refuse=True)
            op = build_op()
            op["ts"] = time.time()
            payload = pack(op)
            self._check_disk(len(payload))
            lsn = self._last_lsn + 1
            try:
                self._wal.append(lsn, payload)
            except Exception as e:
                # a partial frame may be on disk: nothing more may follow it in this process
                self._fail(e)
                if isinstance(e, StorageError):
                    raise
                raise StorageError(f"cannot append to the WAL at {self.path}: {e}") from e
            self._last_lsn = lsn
            if not ddl:
                self._seq_lock.release()
                held = False
            return self._finish(lsn, op, prepared)
        finally:
            if held:
                self._seq_lock.release()

    def _finish(self, lsn: int, op: dict, prepared=None):
        try:
            if self.durability == "sync":
                self._wal.sync(lsn)
        except Exception as e:
            self._fail(e)
            raise
        with self._apply_cond:
            while self._handled_lsn != lsn - 1 and self._failed is None:
                self._apply_cond.wait()
            if self._failed is not None:
                raise StorageError(f"write {lsn} was logged but not applied: {self._failed}")
            error = None
            if self._backlog and not self._apply_backlog():
                error = self._apply_error
            else:
                try:
                    result = self._applier.apply(lsn, op, prepared=prepared)
                except Exception as e:
                    error = self._apply_error = e
            if error is not None:
                # the record is in the WAL (synced in "sync" mode): it is not lost, it waits
                # to be applied, and the caller must not retry it as if it had failed
                self._backlog.append((lsn, op))
                self._handled_lsn = lsn
                self._apply_cond.notify_all()
                err = StorageError(
                    f"write {lsn} is durable in the write-ahead log (LSN {lsn}) but applying "
                    f"it failed ({error}); the database applies it by itself before the next "
                    "write, at the next checkpoint or at close (no reopen needed)",
                    hint="do not repeat this write; fix the cause (e.g. free disk space)")
                err.lsn, err.durable = lsn, self.durability == "sync"
                raise err from error
            self._applied_lsn = self._handled_lsn = lsn
            self._apply_cond.notify_all()
            self._count(op, result)
        if op["op"] in ("upsert", "delete") and self._compactor.enabled:
            state = self._applier.states.get(op["vid"])
            if state is not None:
                self._compactor.poke(op["vid"], state)
        return lsn, result

    def _count(self, op: dict, result) -> None:
        kind = op["op"]
        if kind == "upsert":
            self.counters["vectors_written"] += len(op["ids"])
        elif kind == "delete":
            self.counters["vectors_deleted"] += result
        self.counters["writes"] += 1

    def _apply_backlog(self) -> bool:
        """Apply the logged-but-unapplied records in LSN order (``_apply_cond`` held);
        False (error in ``_apply_error``) when one still fails."""
        while self._backlog:
            lsn, op = self._backlog[0]
            try:
                result = self._applier.apply(lsn, op)
            except Exception as e:
                self._apply_error = e
                return False
            self._backlog.pop(0)
            self._applied_lsn = lsn
            self._count(op, result)
            self._apply_cond.notify_all()
        self._apply_error = None
        return True

    def _drain_backlog(self, *, refuse: bool = False) -> bool:
        """Apply waiting records once every logged one is handled; with ``refuse``, raise
        (before anything is logged) when they still cannot be applied."""
        with self._apply_cond:
            while self._handled_lsn < self._last_lsn and self._failed is None:
                self._apply_cond.wait()
            if not self._backlog or self._apply_backlog():
                return True
            if not refuse:
                return False
            first, last = self._backlog[0][0], self._backlog[-1][0]
            error = self._apply_error
        raise StorageError(
            f"this write was refused before it was logged: {last - first + 1} durable "
            f"write(s) (LSN {first}..{last}) are waiting to be applied and applying them "
            f"still fails ({error})",
            hint="free disk space (or fix the cause); they are applied by the next write") \
            from error

    def disk_reserve_for(self, nbytes: int) -> int:
        """Free disk bytes a write of ``nbytes`` WAL bytes needs: 3x the batch plus
        ``disk_reserve`` (0 turns the check off; engine/retention.py)."""
        return retention.reserve_for(self.disk_reserve, nbytes)

    def disk_free(self) -> int | None:
        """Free bytes on the database's disk, from the free-space probe (None: unknown)."""
        try:
            return int(self._free_probe(self.path))
        except (OSError, ValueError, TypeError):
            return None

    def _check_disk(self, nbytes: int) -> None:
        need = retention.reserve_for(self.disk_reserve, nbytes)
        free = self.disk_free() if need else None
        if free is not None and free < need:
            self.disk_full_refusals += 1
            raise retention.disk_full_error(self.path, free, need, nbytes, self.disk_reserve)

    def _wait_applied(self):
        """Wait until every logged write is applied (call with the sequence lock held)."""
        with self._apply_cond:
            while self._handled_lsn < self._last_lsn and self._failed is None:
                self._apply_cond.wait()

    def _fail(self, exc: Exception):
        with self._apply_cond:
            self._failed = exc
            self._apply_cond.notify_all()

    # -- namespaces ----------------------------------------------------------------------------
    def create_namespace(self, name, *, dim, metric="cosine", model=None,
                         index="auto") -> Namespace:
        """Create ``name`` with version 1 live. Raises NamespaceExists if the name is taken."""
        validate.namespace_name(name)
        dim = validate.dim_value(dim)
        metric = resolve_metric(metric).name
        model = validate.model_value(model)
        index = _index_spec(index, dim)

        def build():
            if self._versions_of(name):
                raise NamespaceExists(f"namespace {name!r} already exists",
                                      hint="use db.create_version() for a new version")
            config = VersionConfig(name=name, version=1, vid=self._applier.next_vid, dim=dim,
                                   metric=metric, model=model, index=index, live=True,
                                   created_lsn=self._last_lsn + 1)
            return {"op": "create_namespace", "ns": name, "v": 1, "config": config.to_msg()}

        self._commit(build, ddl=True)
        return Namespace(self, name)

    def create_version(self, name, *, dim=None, metric=None, model=None, index=None) -> Namespace:
        """The next version of ``name``, not live, inheriting whatever is not given."""
        validate.namespace_name(name)
        dim = None if dim is None else validate.dim_value(dim)
        metric = None if metric is None else resolve_metric(metric).name
        model = validate.model_value(model)
        index = None if index is None else str(IndexSpec.parse(index))
        created = {}

        def build():
            versions = self._versions_of(name)
            if not versions:
                raise NamespaceNotFound(f"namespace {name!r} does not exist")
            base = next((c for c in versions if c.live), versions[-1])
            version = versions[-1].version + 1
            _index_spec(index if index is not None else base.index,
                        dim if dim is not None else base.dim)
            config = VersionConfig(
                name=name, version=version, vid=self._applier.next_vid,
                dim=dim if dim is not None else base.dim,
                metric=metric if metric is not None else base.metric,
                model=model if model is not None else base.model,
                index=index if index is not None else base.index,
                live=False, created_lsn=self._last_lsn + 1)
            created["version"] = version
            return {"op": "create_version", "ns": name, "v": version, "config": config.to_msg()}

        self._commit(build, ddl=True)
        return Namespace(self, name, created["version"])

    def promote(self, name, version) -> None:
        """Point the alias ``name`` at ``version`` (atomic: a query sees old or new)."""
        validate.namespace_name(name)
        version = validate.version_number(version)

        def build():
            config = self._resolve(name, version)
            return {"op": "promote", "ns": name, "v": version, "vid": config.vid}

        self._commit(build, ddl=True)

    def drop_namespace(self, name, version=None) -> None:
        """Drop the namespace and all its versions, or one version that is not live."""
        validate.namespace_name(name)
        version = None if version is None else validate.version_number(version)

        def build():
            if version is None:
                versions = self._versions_of(name)
                if not versions:
                    raise NamespaceNotFound(f"namespace {name!r} does not exist")
                vids = [c.vid for c in versions]
            else:
                config = self._resolve(name, version)
                if config.live:
                    raise InvalidInput(
                        f"version {version} of {name!r} is live; promote another version "
                        "first, or drop the whole namespace")
                vids = [config.vid]
            return {"op": "drop_namespace", "ns": name, "v": version, "vids": vids}

        self._commit(build, ddl=True)

    def _lookup(self, name, version) -> VersionConfig:
        """Validate ``name``/``version``, catch up (read-only) and resolve the version."""
        self._check_open()
        validate.namespace_name(name)
        if version is not None:
            version = validate.version_number(version)
        self.refresh()
        return self._resolve(name, version)

    def namespace(self, name, version=None) -> Namespace:
        """A handle on ``name``: the live version (follows promotions) or a fixed one."""
        config = self._lookup(name, version)
        return Namespace(self, name, None if version is None else config.version)

    def list_namespaces(self) -> list[NamespaceInfo]:
        self._check_open()
        self.refresh()
        out = {}
        for config in sorted(self._applier.configs.values(), key=lambda c: (c.name, c.version)):
            info = out.setdefault(config.name, NamespaceInfo(config.name, None, []))
            state = self._applier.states.get(config.vid)
            if config.live:
                info.live_version = config.version
            info.versions.append(VersionInfo(
                version=config.version, dim=config.dim, metric=config.metric,
                model=config.model, index=config.index,
                count=state.live if state is not None else 0, live=config.live))
        return list(out.values())

    # -- indexes -------------------------------------------------------------------------------
    def _set_index(self, config: VersionConfig, spec: str) -> None:
        def build():
            current = self._resolve(config.name, config.version)
            return {"op": "set_index", "ns": config.name, "v": config.version,
                    "vid": current.vid, "index": spec}
        self._commit(build, ddl=True)

    def _build_index(self, vid: int, *, wait: bool):
        state = self._state(vid)
        if wait:
            return indexer.build(state, should_stop=self._stop.is_set)
        thread = threading.Thread(target=self._train_in_background, args=(state,),
                                  name=f"simplevector-train-{vid}", daemon=True)
        self._trainers = [t for t in self._trainers if t.is_alive()] + [thread]
        state.training = True       # claimed before the thread starts: one build at a time
        thread.start()
        return None

    def _train_in_background(self, state):
        try:
            indexer.build(state, should_stop=self._stop.is_set)
        except Exception as e:      # reported by index_info / health; queries stay exact
            state.training_error = f"{type(e).__name__}: {e}"
            state.failed_at_rows = state.live
        finally:
            state.training = False

    def _maybe_train(self, vid: int):
        """Start a background build when a version has grown past its training threshold."""
        if not self.auto_index or self.readonly or self._closed:
            return
        state = self._applier.states.get(vid)
        if state is not None and indexer.wants_training(state, self.auto_index_threshold):
            self._build_index(vid, wait=False)

    # -- observers -----------------------------------------------------------------------------
    def add_observer(self, observer: Observer) -> None:
        """Register an :class:`~.observer.Observer`; safe at any time, from any thread."""
        if not isinstance(observer, Observer):
            raise InvalidInput(f"observer {observer!r} is not valid; expected an instance of "
                               "simplevector.engine.observer.Observer")
        with self._refresh_lock:
            if observer not in self._observers:
                self._observers = self._observers + (observer,)

    def remove_observer(self, observer: Observer) -> None:
        with self._refresh_lock:
            self._observers = tuple(o for o in self._observers if o is not observer)

    def _notify(self, method: str, *args) -> None:
        for observer in self._observers:      # a tuple swapped whole: no lock needed
            try:
                getattr(observer, method)(*args)
            except Exception as e:            # an observer never fails the operation
                self.observer_errors += 1
                self.observer_last_error = f"{type(observer).__name__}.{method}: " \
                                           f"{type(e).__name__}: {e}"

    def _notify_operation(self, op, namespace, seconds, ok, compile_seconds) -> None:
        self._notify("on_operation", op, namespace, seconds, ok, compile_seconds)

    def _notify_query(self, namespace: str, plan, queries=None) -> None:
        stats = self.query_stats
        stats["queries"] += 1
        stats["plans"][plan.index] = stats["plans"].get(plan.index, 0) + 1
        if plan.short:
            stats["short"] += plan.short
        self._notify("on_query", namespace, plan, queries)

    # -- status --------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def writable(self) -> bool:
        """Whether writes are accepted now (open, not read-only, not stopped by a failure)."""
        return not self.readonly and not self._closed and self._failed is None

    def status(self) -> DatabaseStatus:
        """A :class:`~.status.DatabaseStatus` snapshot (positions, WAL, map, failures)."""
        self._check_open()
        self.refresh()
        configs = list(self._applier.configs.values())
        segs = self._wal.segments()
        info = self._store.map_info()
        return DatabaseStatus(
            path=self.path, readonly=self.readonly, durability=self.durability,
            format_version=schema.FORMAT_VERSION, lsn=self._applied_lsn,
            logged_lsn=self._last_lsn, checkpoint_lsn=self.checkpoint_lsn,
            checkpoint_time=self.checkpoint_time, wal_first_lsn=self._wal.first_lsn,
            wal_bytes=self._wal.size_bytes(), wal_segments=len(segs),
            wal_syncs=self._wal.sync_count, map_size=info["map_size"],
            map_used=info["map_used"], namespaces=len({c.name for c in configs}),
            versions=len(configs), replayed_records=self.replayed_records,
            memory_replayed_records=self.memory_replayed_records,
            failed=None if self._failed is None else f"{type(self._failed).__name__}: "
                                                     f"{self._failed}",
            observer_errors=self.observer_errors,
            observer_last_error=self.observer_last_error, counters=dict(self.counters),
            query_stats={"queries": self.query_stats["queries"],
                         "short": self.query_stats["short"],
                         "plans": dict(self.query_stats["plans"])},
            wal_retention=self.wal_retention(), unapplied=len(self._backlog),
            unapplied_error=None if not self._backlog else f"{self._apply_error}",
            disk_free=self.disk_free(), disk_full_refusals=self.disk_full_refusals)

    def version_statuses(self) -> list[VersionStatus]:
        """A :class:`~.status.VersionStatus` for every namespace version, by (name, version)."""
        self._check_open()
        self.refresh()
        out = []
        for config in sorted(self._applier.configs.values(), key=lambda c: (c.name, c.version)):
            state = self._applier.states.get(config.vid)
            if state is not None:
                out.append(_version_status(config, state))
        return out

    def version_status(self, name, version=None) -> VersionStatus:
        """The status of ``name``'s live version, or of ``version``."""
        config = self._lookup(name, version)
        return _version_status(config, self._state(config.vid))

    def info(self) -> dict:
        """Positions and sizes, for `simplevector info` and the ops layer."""
        self._check_open()
        self.refresh()
        out = {
            "path": self.path,
            "format_version": schema.FORMAT_VERSION,
            "readonly": self.readonly,
            "durability": self.durability,
            "lsn": self._applied_lsn,
            "checkpoint_lsn": self.checkpoint_lsn,
            "wal_first_lsn": self._wal.first_lsn,
            "wal_bytes": self._wal.size_bytes(),
            "wal_segments": len(self._wal.segments()),
            "namespaces": len({c.name for c in self._applier.configs.values()}),
        }
        out.update(self._store.map_info())
        return out

    # -- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Checkpoint (writer), stop background work, release files. Idempotent."""
        if self._closed:
            return
        self._stop.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
        self._compactor.join()
        # a background build notices the stop flag before it swaps its index in; it is not
        # waited for (training is derived state: the next open trains again if needed)
        for thread in self._trainers:
            thread.join(timeout=0.05)
        if self._encoder_pool is not None:
            self._encoder_pool.shutdown(wait=True)
        with self._seq_lock:
            if not self.readonly and self._failed is None:
                try:
                    self._wait_applied()        # writes already logged finish first
                    if self._archive is not None:
                        self._wal.seal()        # the archive gets every committed record
                    self.checkpoint()           # applies a backlog, archives, truncates
                except Exception:
                    pass
            self._closed = True
            self._release_handles()

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            if not self._closed and self._lock_fd is not None:
                self.close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self._closed else ("readonly" if self.readonly else "open")
        return f"<simplevector.Database {self.path!r} {state}>"


def _version_status(config: VersionConfig, state) -> VersionStatus:
    index = state.index
    info = None
    since = 0
    if index is not None:
        info = index.info()
        view = state.view()
        since = int(np.count_nonzero(view.alive[index.trained_upto:]))
    return VersionStatus(
        name=config.name, version=config.version, vid=config.vid, live=config.live,
        dim=config.dim, metric=config.metric, model=config.model,
        index_configured=config.index,
        index_active="Flat" if index is None else str(index.spec),
        rows=state.live, tombstones=state.tombstones, positions=state.n,
        training=bool(state.training), training_error=state.training_error,
        rows_since_training=since, memory_bytes=state.heap_bytes(),
        index_info=info)


class OpsStore:
    """A small persisted key/value area (LMDB sub-database "ops") for the layers above the
    engine: histogram totals, alert state, probe results. Values are msgpack-able objects.
    Writes need a writable database; reads work read-only too."""

    def __init__(self, db: Database):
        self._db = db

    def put(self, key: str, value) -> None:
        db = self._db
        db._check_writable()
        raw = pack(value)
        db._store.write_with_retry(
            lambda txn: txn.put(key.encode("utf-8"), raw, db=db._store.dbs[b"ops"]))

    def get(self, key: str, default=None):
        db = self._db
        db._check_open()
        with db._store.read() as txn:
            raw = txn.get(key.encode("utf-8"), db=db._store.dbs[b"ops"])
        return default if raw is None else unpack(raw)

    def items(self, prefix: str = "") -> list:
        """(key, value) pairs whose key starts with ``prefix``, in key order."""
        db = self._db
        db._check_open()
        p = prefix.encode("utf-8")
        with db._store.read() as txn:
            return [(bytes(key).decode("utf-8"), unpack(value))
                    for key, value in schema.scan_prefix(txn, db._store.dbs[b"ops"], p)]
