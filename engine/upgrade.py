"""Convert a database of an older on-disk format to the current one (``simplevector
upgrade PATH``): copy, verify, swap, with the old directory kept beside the new one.

Format 1 -> 2 (docs/architecture.md, "Storage format"):

1. under the database's write lock, build ``<path>.upgrade-tmp``: the LMDB catalog, meta,
   ops entries, ids and records copied; each version's rows moved out of LMDB into its row
   file, renumbered densely (positions = rowids; format 1 left gaps for deleted rows);
   cosine rows stored as unit vectors, as format 2 does; the WAL copied as it is (records
   after LMDB's applied LSN are replayed by the first open, as after any crash);
2. verify the copy against the original, row by row (ids, records, row bytes, counts),
   then write ``UPGRADE-VERIFIED`` in it;
3. rename ``<path>`` to ``<path>.format1-backup`` and the copy to ``<path>``, then open it
   once (WAL replay, first checkpoint).

A kill -9 before step 3 leaves the original untouched (the next upgrade starts over); one
between the two renames is finished by the next upgrade or open, which find the verified
copy and no ``<path>``. The backup is never deleted by SimpleVector.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass

import lmdb
import msgpack
import numpy as np

from . import schema, segments
from .arrayfile import RowFile
from .errors import FormatVersionError, LockedError, StorageError
from .state import VersionState
from .store import Store
from .types import VersionConfig

MARKER = "UPGRADE-VERIFIED"


@dataclass(frozen=True)
class UpgradeReport:
    path: str
    backup: str | None          # the old directory, kept (None: nothing to upgrade)
    from_format: int
    to_format: int
    versions: int
    rows: int
    seconds: float


def staging_path(path: str) -> str:
    return path.rstrip("/") + ".upgrade-tmp"


def finish_interrupted(path: str) -> bool:
    """If an upgrade stopped between its two renames, finish it. True if it did."""
    staging = staging_path(path)
    if not os.path.exists(path) and os.path.exists(os.path.join(staging, MARKER)):
        os.rename(staging, path)
        os.unlink(os.path.join(path, MARKER))
        _fsync_dir(os.path.dirname(path) or ".")
        return True
    return False


def _fsync_dir(path: str):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_format(lmdb_dir: str) -> int:
    env = lmdb.open(lmdb_dir, readonly=True, lock=False, max_dbs=16)
    try:
        with env.begin() as txn:
            raw = txn.get(schema.META_FORMAT, db=env.open_db(b"meta", txn=txn, create=False))
        return msgpack.unpackb(raw) if raw is not None else 0
    finally:
        env.close()


def upgrade(path, *, progress=None) -> UpgradeReport:
    """Upgrade the database directory ``path`` in place (see the module docstring).
    ``progress(done_rows, total_rows)`` is called as rows are converted."""
    t0 = time.perf_counter()
    path = os.path.abspath(os.fspath(path))
    if finish_interrupted(path):
        return UpgradeReport(path, path + ".format1-backup", 1, schema.FORMAT_VERSION, 0, 0,
                             time.perf_counter() - t0)
    lmdb_dir = os.path.join(path, "lmdb")
    if not os.path.isdir(lmdb_dir):
        raise StorageError(f"no SimpleVector database at {path}")
    lock_fd = os.open(os.path.join(path, "LOCK"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            raise LockedError(f"the database at {path} is open in another process; close it "
                              "before upgrading") from e
        found = _read_format(lmdb_dir)
        if found == schema.FORMAT_VERSION:
            return UpgradeReport(path, None, found, found, 0, 0, time.perf_counter() - t0)
        if found not in schema.UPGRADABLE_FORMATS:
            raise FormatVersionError(
                f"database at {path} has format version {found!r}; `simplevector upgrade` "
                f"converts formats {list(schema.UPGRADABLE_FORMATS)} to "
                f"{schema.FORMAT_VERSION}")
        staging = staging_path(path)
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
        versions, rows = _convert(path, staging, progress)
        with open(os.path.join(staging, MARKER), "w") as f:
            f.write(f"verified format {found} -> {schema.FORMAT_VERSION}\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(staging)
        backup = path + f".format{found}-backup"
        if os.path.exists(backup):
            backup += time.strftime("-%Y%m%dT%H%M%S")
        os.rename(path, backup)
        os.rename(staging, path)
        os.unlink(os.path.join(path, MARKER))
        _fsync_dir(os.path.dirname(path))
    finally:
        os.close(lock_fd)
    return UpgradeReport(path, backup, found, schema.FORMAT_VERSION, versions, rows,
                         time.perf_counter() - t0)


def _convert(src: str, dst: str, progress) -> tuple[int, int]:
    old = lmdb.open(os.path.join(src, "lmdb"), readonly=True, lock=False, max_dbs=16)
    new = Store(os.path.join(dst, "lmdb"))
    os.makedirs(os.path.join(dst, segments.ROWS_DIR))
    try:
        with old.begin(buffers=True) as txn:
            odb = {name: old.open_db(name, txn=txn, create=False)
                   for name in schema.SUBDBS + schema.FORMAT1_SUBDBS}
            configs = [VersionConfig.from_msg(msgpack.unpackb(bytes(v), raw=False))
                       for _k, v in txn.cursor(db=odb[b"catalog"])]
            total = txn.stat(odb[b"vectors"])["entries"]
            done = 0

            def copy_meta(w):
                for key, value in txn.cursor(db=odb[b"meta"]):
                    key = bytes(key)
                    if key in (schema.META_FORMAT, schema.META_SNAPSHOT,
                               schema.META_CHECKPOINT_LSN):
                        continue
                    w.put(key, bytes(value), db=new.dbs[b"meta"])
                for sub in (b"catalog", b"ops"):
                    for key, value in txn.cursor(db=odb[sub]):
                        w.put(bytes(key), bytes(value), db=new.dbs[sub])
            new.write_with_retry(copy_meta)
            for config in configs:
                done = _convert_version(txn, odb, new, dst, config, done, total, progress)
            _verify(txn, odb, new, dst, configs)
        new.sync()
    finally:
        new.close()
        old.close()
    wal_src, wal_dst = os.path.join(src, "wal"), os.path.join(dst, "wal")
    os.makedirs(wal_dst)
    for name in sorted(os.listdir(wal_src)):
        shutil.copy2(os.path.join(wal_src, name), os.path.join(wal_dst, name))
        with open(os.path.join(wal_dst, name), "rb+") as f:
            os.fsync(f.fileno())
    _fsync_dir(wal_dst)
    return len(configs), total


def _old_rows(txn, odb, vid: int):
    """(rowids, vectors) of one format-1 version, in rowid order."""
    prefix = schema.vid_prefix(vid)
    rowids, blobs = [], []
    for key, value in schema.scan_prefix(txn, odb[b"vectors"], prefix):
        rowids.append(schema.rowid_of_key(key))
        blobs.append(bytes(value))
    return rowids, blobs


def _convert_version(txn, odb, new, dst, config, done, total, progress) -> int:
    vid, dim = config.vid, config.dim
    rowids, blobs = _old_rows(txn, odb, vid)
    pos_of = {r: i for i, r in enumerate(rowids)}
    prep = VersionState(config)
    rows = RowFile(segments.row_path(dst, vid), dim)
    chunk = 65536
    for lo in range(0, len(blobs), chunk):
        X = np.frombuffer(b"".join(blobs[lo:lo + chunk]), dtype="<f4").reshape(-1, dim)
        rows.write(lo, prep.prepare(X.astype(np.float32)))
        if progress is not None:
            progress(done + lo + len(X), total)
    rows.sync()
    rows.close()
    prefix = schema.vid_prefix(vid)
    ids = [(bytes(k), pos_of[schema.unpack_u64(v)])
           for k, v in schema.scan_prefix(txn, odb[b"ids"], prefix)]
    recs = [(schema.row_key(vid, pos_of[schema.rowid_of_key(k)]), bytes(v))
            for k, v in schema.scan_prefix(txn, odb[b"records"], prefix)]

    def fill(w):
        w.cursor(db=new.dbs[b"ids"]).putmulti(
            [(k, schema.pack_u64(p)) for k, p in ids])
        w.cursor(db=new.dbs[b"records"]).putmulti(recs)
        w.put(schema.counter_key(vid), schema.pack_u64(len(rowids)), db=new.dbs[b"counters"])
    new.write_with_retry(fill)
    return done + len(rowids)


def _verify(txn, odb, new, dst, configs):
    """The copy holds exactly the original's ids, records and (prepared) rows."""
    with new.read() as w:
        for config in configs:
            vid = config.vid
            rowids, blobs = _old_rows(txn, odb, vid)
            pos_of = {r: i for i, r in enumerate(rowids)}
            rows = RowFile(segments.row_path(dst, vid), config.dim, readonly=True)
            try:
                X = rows.rows(len(rowids))
                prep = VersionState(config)
                for lo in range(0, len(blobs), 65536):
                    want = prep.prepare(np.frombuffer(b"".join(blobs[lo:lo + 65536]),
                                                      dtype="<f4").reshape(-1, config.dim)
                                        .astype(np.float32))
                    if not np.array_equal(X[lo:lo + len(want)], want):
                        raise StorageError(f"upgrade: rows of {config.name!r} "
                                           f"v{config.version} differ in the copy")
            finally:
                rows.close()
            prefix = schema.vid_prefix(vid)
            n_old = sum(1 for _ in schema.scan_prefix(txn, odb[b"ids"], prefix, values=False))
            n_new = sum(1 for _ in schema.scan_prefix(w, new.dbs[b"ids"], prefix, values=False))
            if n_old != n_new or n_old != len(rowids):
                raise StorageError(f"upgrade: {config.name!r} v{config.version} has {n_old} "
                                   f"ids and {len(rowids)} rows; the copy {n_new} ids")
            for k, v in schema.scan_prefix(txn, odb[b"ids"], prefix):
                got = w.get(bytes(k), db=new.dbs[b"ids"])
                if got is None or schema.unpack_u64(got) != pos_of[schema.unpack_u64(v)]:
                    raise StorageError(f"upgrade: id {schema.decode_id(bytes(k)[4:])!r} of "
                                       f"{config.name!r} differs in the copy")
            for k, v in schema.scan_prefix(txn, odb[b"records"], prefix):
                key = schema.row_key(vid, pos_of[schema.rowid_of_key(k)])
                if w.get(key, db=new.dbs[b"records"]) != bytes(v):
                    raise StorageError(f"upgrade: a record of {config.name!r} differs")
