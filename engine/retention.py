"""WAL retention, named change-feed consumers and the free-disk reserve (DESIGN.md
"Lifecycle"; STYLE.md "Durability": truncate only below the lowest LSN anyone needs).

Pins (:func:`pins`): each holds every WAL record from its LSN on.

- ``checkpoint``: records after the last checkpoint (recovery replays them);
- ``archive``: the first sealed segment not yet copied to the WAL archive (engine/archive.py);
- ``snapshot``: without an archive, the records after the oldest snapshot in
  ``<db>/snapshots`` (what a point-in-time restore from it would need);
- ``consumer``: each named change-feed consumer, after the position it acknowledged with
  ``db.changes(since, consumer="name")`` (kept in the ops sub-database, synced).

Past the lowest pin the newest :func:`keep_target` bytes are kept for anonymous readers:
``wal_keep_bytes`` when given, else :func:`default_wal_keep_bytes` (README "WAL archive,
retention and disk full" explains the figures). Removal is by whole segments.

The disk reserve (:func:`reserve_for`): a write of ``n`` WAL bytes needs ``3 n`` plus
``disk_reserve`` free bytes, checked before its WAL append.
"""

from __future__ import annotations

import os
import time

from . import snapshot
from .errors import DiskFullError, InvalidInput

#: Default WAL kept past every pin: max(floor, fraction x LMDB bytes used).
WAL_KEEP_FLOOR = 4 << 20
WAL_KEEP_FRACTION = 0.25
#: Free disk a write must leave, besides 3x its WAL bytes.
DISK_RESERVE_FLOOR = 8 << 20
#: ops-store key prefix of the named change-feed consumers' positions
CONSUMER_PREFIX = "engine:consumer:"


def default_wal_keep_bytes(lmdb_bytes: int) -> int:
    """WAL bytes kept past every pin for a database whose LMDB uses ``lmdb_bytes``."""
    return max(WAL_KEEP_FLOOR, int(lmdb_bytes * WAL_KEEP_FRACTION))


def statvfs_free(path: str) -> int:
    """Free bytes for an unprivileged writer on the file system holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def consumer_name(name) -> str:
    if not isinstance(name, str) or not name or len(name) > 200 or not name.isprintable():
        raise InvalidInput(f"consumer {name!r} is not valid; expected a non-empty printable "
                           "string of at most 200 characters")
    return name


def open_options(path: str, wal_keep_bytes, disk_reserve, disk_free_probe, wal_archive):
    """Validate the open options of this module: (wal_keep_bytes, disk_reserve, absolute
    wal_archive or None, free-space probe)."""
    for label, value in (("wal_keep_bytes", wal_keep_bytes), ("disk_reserve", disk_reserve)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 0):
            raise InvalidInput(f"{label} {value!r} is not valid; expected bytes (an int >= 0) "
                               "or None for the default")
    if disk_free_probe is not None and not callable(disk_free_probe):
        raise InvalidInput(f"disk_free_probe {disk_free_probe!r} is not valid; expected a "
                           "callable(path) -> free bytes")
    if wal_archive is not None:
        if not isinstance(wal_archive, (str, os.PathLike)):
            raise InvalidInput(f"wal_archive {wal_archive!r} is not a path; expected a str or "
                               "os.PathLike")
        wal_archive = os.path.abspath(os.fspath(wal_archive))
        own = os.path.join(path, "wal")
        if os.path.commonpath([wal_archive, own]) == own:
            raise InvalidInput(f"wal_archive {wal_archive} is inside the database's own WAL "
                               "directory; expected a directory outside it")
    return (wal_keep_bytes, DISK_RESERVE_FLOOR if disk_reserve is None else disk_reserve,
            wal_archive, disk_free_probe or statvfs_free)


# -- pins and truncation -------------------------------------------------------------------
def pins(db, checkpoint_lsn: int) -> list[dict]:
    """Who needs which WAL records: each pin holds every record from ``lsn`` on."""
    out = [{"kind": "checkpoint", "name": None, "lsn": checkpoint_lsn + 1}]
    archive = db._archive
    if archive is not None:
        first = archive.archived_below(db._wal.sealed_segments())
        if first is not None:
            out.append({"kind": "archive", "name": "failing" if archive.error else None,
                        "lsn": first})
    else:
        snaps = snapshot.list_snapshots(db.path)
        if snaps:
            out.append({"kind": "snapshot", "name": os.path.basename(snaps[0].path),
                        "lsn": snaps[0].lsn + 1})
    for key, value in db.ops_store.items(CONSUMER_PREFIX):
        out.append({"kind": "consumer", "name": key[len(CONSUMER_PREFIX):],
                    "lsn": int(value["lsn"]) + 1})
    return out


def keep_target(db) -> int:
    if db.wal_keep_bytes is not None:
        return db.wal_keep_bytes
    return default_wal_keep_bytes(db._store.map_info()["map_used"])


def _sizes(segs) -> list[int]:
    out = []
    for path, _ in segs:
        try:
            out.append(os.path.getsize(path))
        except OSError:
            out.append(0)               # removed by a concurrent truncation
    return out


def report(db) -> dict:
    segs = db._wal.segments()
    sizes = _sizes(segs)
    held = pins(db, db.checkpoint_lsn)
    last = db._wal.last_lsn
    for pin in held:
        idx = next((i for i in range(len(segs) - 1, -1, -1) if segs[i][1] <= pin["lsn"]), 0)
        pin["bytes"] = sum(sizes[idx:]) if pin["lsn"] <= last else 0
    return {"bytes": sum(sizes), "segments": len(segs), "keep_bytes": keep_target(db),
            "first_lsn": segs[0][1] if segs else None, "pins": held,
            "archive": None if db._archive is None else db._archive.status()}


def truncate(db, checkpoint_lsn: int) -> None:
    """Copy sealed segments to the archive, then remove the oldest segments while the WAL
    exceeds :func:`keep_target`, never one holding a record some pin needs. When every
    record is below the pins and the active segment alone exceeds the target, it is sealed
    first, so it can go too (else a 64 MiB segment would outlive a small database's data)."""
    wal, archive = db._wal, db._archive
    keep = keep_target(db)
    segs = wal.segments()
    if segs and _sizes(segs[-1:])[0] > keep and wal.last_lsn < min(
            p["lsn"] for p in pins(db, checkpoint_lsn) if p["kind"] != "archive"):
        wal.seal()                              # archived just below, then removable
    if archive is not None:
        archive.copy_sealed(wal.sealed_segments())
    need = min(p["lsn"] for p in pins(db, checkpoint_lsn))
    segs = wal.segments()
    sizes = _sizes(segs)
    sealed = {path for path, _ in wal.sealed_segments()}
    total = sum(sizes)
    cut = None
    for i in range(1, len(segs) + 1):
        if total <= keep:
            break
        if i < len(segs):
            first_of_next = segs[i][1]
        elif segs[-1][0] in sealed:             # the last one, sealed: ends at last_lsn
            first_of_next = wal.last_lsn + 1
        else:
            break                               # the active segment stays
        if first_of_next > need:
            break
        total -= sizes[i - 1]
        cut = first_of_next
    if cut is not None:
        wal.truncate_before(cut)


# -- named consumers -------------------------------------------------------------------------
def record_consumer(db, name: str, lsn: int) -> None:
    db.ops_store.put(CONSUMER_PREFIX + name, {"lsn": int(lsn), "at": time.time()})
    db._wal.sync(db._last_lsn)          # LMDB never durably ahead of the WAL (async too)
    db._store.sync()


def consumers(db, head: int) -> list[dict]:
    return [{"name": key[len(CONSUMER_PREFIX):], "lsn": int(v["lsn"]), "at": v.get("at"),
             "lag": max(0, head - int(v["lsn"]))}
            for key, v in db.ops_store.items(CONSUMER_PREFIX)]


def drop_consumer(db, name: str) -> None:
    key = (CONSUMER_PREFIX + name).encode("utf-8")
    store = db._store
    found = store.write_with_retry(lambda txn: txn.delete(key, db=store.dbs[b"ops"]))
    if not found:
        raise InvalidInput(f"consumer {name!r} is not known; known: "
                           f"{[c['name'] for c in consumers(db, 0)]}")
    store.sync()


# -- the disk reserve -------------------------------------------------------------------------
def reserve_for(disk_reserve: int, nbytes: int) -> int:
    """Free bytes a write of ``nbytes`` WAL bytes needs: 3x the batch (its WAL frame, LMDB's
    copy-on-write pages, the checkpoint segment that follows) plus ``disk_reserve``; 0 when
    ``disk_reserve`` is 0 (no check)."""
    return 0 if not disk_reserve else disk_reserve + 3 * int(nbytes)


def disk_full_error(path: str, free: int, need: int, nbytes: int,
                    disk_reserve: int) -> DiskFullError:
    return DiskFullError(
        f"write refused before it was logged: {free} bytes free on the disk holding {path}, "
        f"under the reserve of {need} bytes (this batch's {nbytes} WAL bytes x3 + "
        f"disk_reserve {disk_reserve}); nothing was written and reads go on")
