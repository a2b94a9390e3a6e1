"""The LMDB store: one environment, the sub-databases of schema.py, one way to write.

``with store.write() as txn`` commits on a clean exit and aborts on an exception. Writes
that may fill the map go through :meth:`Store.write_with_retry`, which aborts, grows the map
and runs the whole transaction again: a user never sees a map-full error. Growing the map
needs every transaction of this process closed, so readers hold a shared lock
(:meth:`Store.read`) and a resize takes it exclusively.

LMDB runs without its own per-commit fsync (``sync=False``): the write-ahead log is the
durable record and a checkpoint calls :meth:`Store.sync` (docs/architecture.md, "Durability rules").
"""

from __future__ import annotations

import contextlib
import os
import threading

import lmdb
import msgpack

from . import schema
from .errors import ClosedError, FormatVersionError, ReadOnlyError, StorageError

#: First map size of a new database; it doubles (capped at +4 GiB a step) whenever full.
INITIAL_MAP_SIZE = 64 << 20
MAX_MAP_GROWTH = 4 << 30


def next_map_size(current: int) -> int:
    """The map size after one growth step from ``current`` (doubling, at most +4 GiB)."""
    return current + min(current, MAX_MAP_GROWTH)


class _SharedExclusiveLock:
    """Many readers or one resizer. Readers never wait on writers, only on a map resize."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self):
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


def _storage_error(action: str, path: str, exc: Exception) -> StorageError:
    return StorageError(f"LMDB {action} failed for {path}: {exc}")


class Store:
    """An LMDB environment under ``<db>/lmdb`` with the sub-databases of :mod:`schema`."""

    def __init__(self, path: str, *, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        self._rw = _SharedExclusiveLock()
        self._closed = False
        try:
            if not readonly:
                os.makedirs(path, exist_ok=True)
            self.env = lmdb.open(
                path,
                map_size=INITIAL_MAP_SIZE,
                max_dbs=len(schema.SUBDBS) + 2,
                readonly=readonly,
                sync=False,
                metasync=False,
                lock=True,
                readahead=False,
                max_readers=512,
                max_spare_txns=8,
            )
        except lmdb.Error as e:
            raise _storage_error("open", path, e) from e
        try:
            self.dbs = {}
            if readonly:
                # no explicit txn: py-lmdb drops a handle opened inside a read-only txn when
                # that txn ends, so every later read failed with EINVAL
                for name in schema.SUBDBS:
                    self.dbs[name] = self.env.open_db(name, create=False)
            else:
                for name in schema.SUBDBS:
                    self.dbs[name] = self.env.open_db(name)
        except lmdb.NotFoundError as e:
            self.env.close()
            raise FormatVersionError(
                f"{path} is not a SimpleVector database (sub-database missing: {e})"
            ) from e
        except lmdb.Error as e:
            self.env.close()
            raise _storage_error("open", path, e) from e
        self._check_format()

    # -- format --------------------------------------------------------------------
    def _check_format(self):
        with self.read() as txn:
            raw = txn.get(schema.META_FORMAT, db=self.dbs[b"meta"])
        if raw is None:
            if self.readonly:
                raise FormatVersionError(f"{self.path} holds no SimpleVector format stamp")
            with self.write() as txn:
                txn.put(schema.META_FORMAT, msgpack.packb(schema.FORMAT_VERSION),
                        db=self.dbs[b"meta"])
            return
        found = msgpack.unpackb(raw)
        if found != schema.FORMAT_VERSION:
            self.env.close()
            self._closed = True
            dbdir = os.path.dirname(self.path)
            if found in schema.UPGRADABLE_FORMATS:
                hint = (f"run `simplevector upgrade {dbdir}` (it converts a copy, verifies it "
                        "and keeps the old directory beside it)")
            else:
                hint = "open it with the SimpleVector release that wrote it"
            err = FormatVersionError(
                f"database at {dbdir} has format version {found!r}; this SimpleVector "
                f"reads format version {schema.FORMAT_VERSION}", hint=hint)
            err.found = found
            raise err

    # -- transactions ----------------------------------------------------------------
    def _check_open(self):
        if self._closed:
            raise ClosedError(f"the LMDB store at {self.path} is closed")

    @contextlib.contextmanager
    def read(self, buffers: bool = False):
        """A read-only transaction (MVCC snapshot); never blocks writers. ``buffers=True``
        returns values as memoryviews of the map (no copy), valid only inside the txn."""
        self._check_open()
        with self._rw.shared():
            try:
                txn = self.env.begin(buffers=buffers)
            except lmdb.MapResizedError:
                # another process grew the map: adopt its size and retry
                self.env.set_mapsize(0)
                txn = self.env.begin(buffers=buffers)
            except lmdb.Error as e:
                raise _storage_error("read", self.path, e) from e
            try:
                yield txn
            finally:
                txn.abort()

    @contextlib.contextmanager
    def write(self):
        """A write transaction: commit on clean exit, abort on exception."""
        self._check_open()
        if self.readonly:
            raise ReadOnlyError(f"the database at {self.path} is open read-only")
        with self._rw.shared():
            txn = self.env.begin(write=True)
            try:
                yield txn
            except BaseException:
                txn.abort()
                raise
            else:
                txn.commit()

    def write_with_retry(self, fn):
        """Run ``fn(txn)`` in a write transaction; on a full map abort, grow, run again.

        ``fn`` must have no effect outside the transaction (it may run more than once).
        """
        while True:
            try:
                with self.write() as txn:
                    return fn(txn)
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as e:
                raise _storage_error("write", self.path, e) from e

    def _grow(self):
        with self._rw.exclusive():
            current = self.env.info()["map_size"]
            new = next_map_size(current)
            try:
                self.env.set_mapsize(new)
            except lmdb.Error as e:
                raise _storage_error(f"map resize to {new} bytes", self.path, e) from e

    # -- maintenance -------------------------------------------------------------------
    def sync(self):
        """Flush LMDB to disk (checkpoints call this before the WAL may be truncated)."""
        self._check_open()
        if self.readonly:
            return
        try:
            self.env.sync(True)
        except lmdb.Error as e:
            raise _storage_error("sync", self.path, e) from e

    def map_info(self) -> dict:
        info = self.env.info()
        stat = self.env.stat()
        used = (info["last_pgno"] + 1) * stat["psize"]
        return {"map_size": info["map_size"], "map_used": used}

    def close(self):
        if self._closed:
            return
        with self._rw.exclusive():
            self._closed = True
            self.env.close()
