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

Format 2 -> 3 adds the checksums of format 3 (engine/schema.py): the same three steps, the
copy holding the catalog, meta (the checkpoint record included), ops and counters as they
are, the checkpoint bundles (derived state, format-independent), each version's row file
(its first ``n`` rows; the rows of WAL records after the checkpoint are rewritten from the
WAL, as recovery would, so a row a crash kept out of the file is whole again before its
checksum is taken), every id entry rewritten as ``id_value(key, rowid, crc of its row)``
and every record as ``record_value(msgpack)``. Verification compares every id entry, record
and row with the original. Format 1 converts to 3 in one pass: the 1 -> 2 conversion above
writes its ids and records with the format-3 values.

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
from .apply import unpack
from .errors import CorruptionError, FormatVersionError, LockedError, StorageError
from .state import VersionState
from .store import Store
from .types import VersionConfig
from .wal import WriteAheadLog

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
        backups = sorted(p for p in os.listdir(os.path.dirname(path))
                         if p.startswith(os.path.basename(path) + ".format"))
        found = int(backups[-1].split(".format")[-1].split("-")[0]) if backups else 1
        backup = os.path.join(os.path.dirname(path), backups[-1]) if backups else None
        return UpgradeReport(path, backup, found, schema.FORMAT_VERSION, 0, 0,
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
        convert = _convert if found == 1 else _convert2
        versions, rows = convert(path, staging, progress)
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
    _copy_tree(os.path.join(src, "wal"), os.path.join(dst, "wal"))
    return len(configs), total


def _copy_tree(src: str, dst: str):
    """Copy a directory of files (and one level of subdirectories), each fsync'd."""
    os.makedirs(dst)
    for name in sorted(os.listdir(src)):
        if os.path.isdir(os.path.join(src, name)):
            _copy_tree(os.path.join(src, name), os.path.join(dst, name))
            continue
        if name.endswith(".tmp"):
            continue
        shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
        with open(os.path.join(dst, name), "rb+") as f:
            os.fsync(f.fileno())
    _fsync_dir(dst)


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
    rows = RowFile(segments.row_path(dst, vid), dim, readonly=True)
    try:
        X = rows.rows(len(rowids))
        crcs = {p: schema.row_crc(X[p]) for _k, p in ids}
    finally:
        rows.close()

    def fill(w):
        w.cursor(db=new.dbs[b"ids"]).putmulti(
            [(k, schema.id_value(k, p, crcs[p])) for k, p in ids])
        w.cursor(db=new.dbs[b"records"]).putmulti(
            [(k, schema.record_value(v)) for k, v in recs])
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
            rows = RowFile(segments.row_path(dst, vid), config.dim, readonly=True)
            try:
                X = rows.rows(len(rowids))
                for k, v in schema.scan_prefix(txn, odb[b"ids"], prefix):
                    _check_id(w, new, config, bytes(k), pos_of[schema.unpack_u64(v)], X)
            finally:
                rows.close()
            for k, v in schema.scan_prefix(txn, odb[b"records"], prefix):
                key = schema.row_key(vid, pos_of[schema.rowid_of_key(k)])
                _check_record(w, new, config, key, bytes(v))


def _check_id(w, new, config, key: bytes, rowid: int, X):
    """The copy's id entry ``key`` names ``rowid`` with the CRC-32 of the copy's row."""
    got = w.get(key, db=new.dbs[b"ids"])
    try:
        ok = got is not None and schema.parse_id_value(key, got) == (
            rowid, schema.row_crc(X[rowid]))
    except CorruptionError:
        ok = False
    if not ok:
        raise StorageError(f"upgrade: id {schema.decode_id(key[4:])!r} of {config.name!r} "
                           f"v{config.version} differs in the copy")


def _check_record(w, new, config, key: bytes, want: bytes):
    got = w.get(key, db=new.dbs[b"records"])
    try:
        ok = got is not None and schema.record_bytes(key, got) == want
    except CorruptionError:
        ok = False
    if not ok:
        raise StorageError(f"upgrade: the record of {schema.describe_key(b'records', key)} "
                           f"({config.name!r}) differs in the copy")


# -- format 2 -> 3 -----------------------------------------------------------------------------
def _convert2(src: str, dst: str, progress) -> tuple[int, int]:
    old = lmdb.open(os.path.join(src, "lmdb"), readonly=True, lock=False, max_dbs=16)
    new = Store(os.path.join(dst, "lmdb"))
    os.makedirs(os.path.join(dst, segments.ROWS_DIR))
    try:
        with old.begin(buffers=True) as txn:
            odb = {name: old.open_db(name, txn=txn, create=False) for name in schema.SUBDBS}
            configs = [VersionConfig.from_msg(msgpack.unpackb(bytes(v), raw=False))
                       for _k, v in txn.cursor(db=odb[b"catalog"])]
            counts = {}
            for config in configs:
                raw = txn.get(schema.counter_key(config.vid), db=odb[b"counters"])
                counts[config.vid] = schema.unpack_u64(raw) if raw else 0
            total = sum(counts.values())
            raw = txn.get(schema.META_SNAPSHOT, db=odb[b"meta"])
            # int map keys: a checkpoint record's "gens" (row file generations)
            snap = None if raw is None else msgpack.unpackb(bytes(raw), raw=False,
                                                            strict_map_key=False)
            for config in configs:
                if txn.get(schema.gen_key(config.vid), db=odb[b"counters"]) is not None:
                    # only development builds between compaction and format 3 wrote these
                    raise StorageError(
                        f"upgrade: namespace {config.name!r} v{config.version} was compacted "
                        "by a development build of format 2; this upgrade does not convert "
                        "compacted row files",
                        hint="export it with that build (`simplevector export`) and import "
                             "it into a new database")

            def copy_meta(w):
                for sub in (b"meta", b"catalog", b"ops", b"counters"):
                    for key, value in txn.cursor(db=odb[sub]):
                        if sub == b"meta" and bytes(key) == schema.META_FORMAT:
                            continue
                        w.put(bytes(key), bytes(value), db=new.dbs[sub])
            new.write_with_retry(copy_meta)
            if snap is not None and "dir" in snap and os.path.isdir(
                    os.path.join(segments.ckpt_root(src), snap["dir"])):
                _copy_tree(os.path.join(segments.ckpt_root(src), snap["dir"]),
                           os.path.join(segments.ckpt_root(dst), snap["dir"]))
            done = 0
            for config in configs:
                _copy_rows(src, dst, config, counts[config.vid])
            _rewrite_wal_rows(src, dst, configs, snap, counts)
            for config in configs:
                _convert2_version(txn, odb, new, dst, config, counts[config.vid])
                done += counts[config.vid]
                if progress is not None:
                    progress(done, total)
            _verify2(txn, odb, new, dst, configs, counts)
        new.sync()
    finally:
        new.close()
        old.close()
    _copy_tree(os.path.join(src, "wal"), os.path.join(dst, "wal"))
    return len(configs), total


def _copy_rows(src: str, dst: str, config, n: int):
    """The first ``n`` rows of a version's row file (the rest is sparse slack)."""
    left = n * config.dim * 4
    path = segments.row_path(src, config.vid)
    with open(path, "rb") as fin, open(segments.row_path(dst, config.vid), "wb") as fout:
        while left:
            chunk = fin.read(min(left, 16 << 20))
            if not chunk:
                raise StorageError(f"upgrade: the row file {path} is shorter than the "
                                   f"{n} rows of {config.name!r} v{config.version}")
            fout.write(chunk)
            left -= len(chunk)
        fout.flush()
        os.fsync(fout.fileno())


def _rewrite_wal_rows(src, dst, configs, snap, counts):
    """Write the rows of every WAL upsert after the checkpoint into the copy's row files,
    as recovery does (rowids are dense per version, in LSN order, from the checkpoint's
    next rowid), so a row a crash kept out of the source file is whole before its CRC."""
    by_vid = {c.vid: c for c in configs}
    if snap is None or "dir" not in snap:
        return                      # no checkpoint: LMDB's rows are what the file holds
    next_rowid = {}
    for vid in by_vid:
        if not segments.has(src, snap["dir"], vid):
            continue                # created after the checkpoint: its create op says 0
        try:
            meta, _ = segments.read(src, snap["dir"], vid)
        except CorruptionError:
            return                  # the source would rebuild from LMDB: rows as they are
        next_rowid[vid] = meta["next_rowid"]
    wal = WriteAheadLog(os.path.join(src, "wal"), readonly=True)
    files = {}
    try:
        for _lsn, payload in wal.iter_records(snap["lsn"]):
            op = unpack(payload)
            vid = op.get("vid")
            if op.get("op") in ("create_namespace", "create_version"):
                vid = op["config"]["vid"]
                if vid in by_vid:
                    next_rowid[vid] = 0
                continue
            if op.get("op") != "upsert" or vid not in by_vid or vid not in next_rowid:
                continue
            config = by_vid[vid]
            start = next_rowid[vid]
            m = len(op["ids"])
            next_rowid[vid] = start + m
            if start + m > counts[vid]:
                continue            # past what LMDB applied: replayed by the first open
            rows = files.get(vid)
            if rows is None:
                rows = files[vid] = RowFile(segments.row_path(dst, vid), config.dim)
            X = np.frombuffer(op["vec"], dtype="<f4").reshape(m, config.dim)
            rows.write(start, VersionState(config).prepare(X.astype(np.float32)))
    finally:
        wal.close()
        for vid, rows in files.items():
            rows.sync()
            rows.trim(counts[vid])
            rows.close()


def _convert2_version(txn, odb, new, dst, config, n: int):
    vid = config.vid
    prefix = schema.vid_prefix(vid)
    rows = RowFile(segments.row_path(dst, vid), config.dim, readonly=True)
    try:
        X = rows.rows(n)
        ids = []
        for k, v in schema.scan_prefix(txn, odb[b"ids"], prefix):
            k, rowid = bytes(k), schema.unpack_u64(v)
            if rowid >= n:
                raise CorruptionError(
                    f"upgrade: id {schema.decode_id(k[4:])!r} of {config.name!r} "
                    f"v{config.version} points at row {rowid} past its {n} rows; the source "
                    "is damaged", hint="restore it from a snapshot, then upgrade")
            ids.append((k, schema.id_value(k, rowid, schema.row_crc(X[rowid]))))
    finally:
        rows.close()
    recs = [(bytes(k), schema.record_value(bytes(v)))
            for k, v in schema.scan_prefix(txn, odb[b"records"], prefix)]

    def fill(w):
        w.cursor(db=new.dbs[b"ids"]).putmulti(ids)
        w.cursor(db=new.dbs[b"records"]).putmulti(recs)
    new.write_with_retry(fill)


def _verify2(txn, odb, new, dst, configs, counts):
    """The copy holds exactly the original's ids, records and rows."""
    with new.read() as w:
        for config in configs:
            vid, n = config.vid, counts[config.vid]
            prefix = schema.vid_prefix(vid)
            n_old = sum(1 for _ in schema.scan_prefix(txn, odb[b"ids"], prefix, values=False))
            n_new = sum(1 for _ in schema.scan_prefix(w, new.dbs[b"ids"], prefix, values=False))
            if n_old != n_new:
                raise StorageError(f"upgrade: {config.name!r} v{config.version} has {n_old} "
                                   f"ids; the copy {n_new}")
            rows = RowFile(segments.row_path(dst, vid), config.dim, readonly=True)
            try:
                X = rows.rows(n)
                for k, v in schema.scan_prefix(txn, odb[b"ids"], prefix):
                    _check_id(w, new, config, bytes(k), schema.unpack_u64(v), X)
            finally:
                rows.close()
            for k, v in schema.scan_prefix(txn, odb[b"records"], prefix):
                _check_record(w, new, config, bytes(k), bytes(v))
