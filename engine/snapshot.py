"""Online snapshots and restore from a snapshot (DESIGN.md "Lifecycle"; STYLE.md "Durability").

Snapshot layout::

    <snapshot>/lmdb/data.mdb     a compacted copy of LMDB as of one LSN
    <snapshot>/rows/<vid>.f32    each version's rows up to that LSN (no checkpoint bundles;
                                 ``<vid>.g<gen>.f32`` for a version compacted ``gen`` times)
    <snapshot>/manifest.json     format, LSN, time, catalog, per-file SHA-256, fingerprint

A snapshot is taken while reads and writes continue: under the writer's apply condition
(held only while one LMDB read transaction is opened, so no write is half-applied) the
read transaction fixes the LSN; LMDB is then copied from that transaction with
compaction, outside every lock. The copy holds every applied row (and possibly older
checkpoint segments); opened with no WAL, recovery rebuilds the in-memory state from the
rows, so the copy is self-sufficient. A snapshot is built under ``<name>.<pid>.tmp`` and
renamed into place, so a half-made one is never listed; a writer's open sweeps stale ones.

The manifest's query fingerprint is the exact top-k (ids and distances, computed in
float64 from the snapshot's rows) of a few seeded probe vectors per live namespace; a
restore checks the restored engine's exact search against it, tie-aware.

Restore (``simplevector.restore``) builds ``<target>.restore-tmp-<pid>`` beside the target,
copies the snapshot's LMDB into it, checks every file's SHA-256, opens it with the engine
and checks the LSN, the row counts and the fingerprint, closes it, then renames it into
place and syncs the parent directory. Any failure removes the staging directory; a restore
killed midway leaves a staging directory of a dead pid, which the next restore to the same
target, and the next writer's ``simplevector.open(target)``, removes
(:func:`sweep_restore_leftovers`).

Point-in-time restore (``wal_archive`` with ``to_lsn``, ``to_time`` or neither): after the
snapshot verified as above, the archived records after its LSN (engine/archive.py,
:func:`~.archive.iter_archived`: strict, a hole is ChangeFeedGap, a bad frame
CorruptionError) up to the target point, inclusive, are written to the staging
directory's own WAL; the staging database is opened, which replays them into LMDB, and its
LSN must be the one reached; it is closed (a checkpoint) and only then renamed into place.
``to_time`` keeps every record whose write timestamp (``ts``, epoch seconds) is at or
before it, stopping at the first later one.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import os
import shutil
import time
import zlib
from dataclasses import dataclass

import numpy as np

from . import schema, segments
from .apply import unpack
from .archive import iter_archived
from .errors import (ChangeFeedGap, ClosedError, CorruptionError, InvalidInput, StorageError,
                     TargetExists)
from .types import VersionConfig

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "simplevector-snapshot"
MANIFEST_VERSION = 1
SNAPSHOTS_DIR = "snapshots"
FINGERPRINT_PROBES = 3
FINGERPRINT_K = 10
_CHUNK = 1 << 20


@dataclass(frozen=True)
class SnapshotInfo:
    """A complete snapshot: where it is, the LSN it holds, when, and its size in bytes."""

    path: str
    lsn: int
    created_at: str               # ISO-8601 UTC
    bytes: int                    # sum of the files listed in the manifest
    namespaces: tuple = ()        # ({name, version, vid, live, dim, metric, model, index,
    manifest_path: str = ""       # count}, ...)

    def to_dict(self) -> dict:
        return {"path": self.path, "lsn": self.lsn, "created_at": self.created_at,
                "bytes": self.bytes, "namespaces": [dict(n) for n in self.namespaces],
                "manifest_path": self.manifest_path}


@dataclass(frozen=True)
class RestoreReport:
    """What a restore did: from where to where, the LSN, the counts it checked, how long."""

    source: str
    target: str
    lsn: int                      # the LSN reached (the snapshot's, plus replayed WAL)
    namespaces: tuple             # ({name, version, count}, ...) at the snapshot's LSN
    verified: bool
    seconds: float
    snapshot_lsn: int = 0         # the snapshot's own LSN
    wal_records: int = 0          # archived records replayed on top of it
    to_lsn: int | None = None
    to_time: float | None = None  # epoch seconds
    wal_archive: str | None = None
    dry_run: bool = False         # built and verified in staging, then removed

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "lsn": self.lsn,
                "namespaces": [dict(n) for n in self.namespaces], "verified": self.verified,
                "seconds": self.seconds, "snapshot_lsn": self.snapshot_lsn,
                "wal_records": self.wal_records, "to_lsn": self.to_lsn,
                "to_time": self.to_time, "wal_archive": self.wal_archive,
                "dry_run": self.dry_run}


# -- files --------------------------------------------------------------------------------------
def _fsync_path(path: str) -> None:
    """fsync a file or a directory (a directory makes its renames durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_fsync_dir = _fsync_file = _fsync_path


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(_CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _write_json_atomic(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _utc(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


# -- reading a snapshot's catalog from one transaction ------------------------------------------
def _catalog(txn, dbs) -> list:
    out = []
    for _key, value in txn.cursor(db=dbs[b"catalog"]):
        out.append(VersionConfig.from_msg(unpack(value)))
    return sorted(out, key=lambda c: (c.name, c.version))


def _n_rows(txn, dbs, vid: int) -> int:
    raw = txn.get(schema.counter_key(vid), db=dbs[b"counters"])
    return schema.unpack_u64(raw) if raw else 0


def _gen(txn, dbs, vid: int) -> int:
    raw = txn.get(schema.gen_key(vid), db=dbs[b"counters"])
    return schema.unpack_u64(raw) if raw else 0


def _copy_rows(fin, src: str, dst: str, nbytes: int) -> None:
    """The first ``nbytes`` of a row file, from ``fin`` opened on it when the snapshot's
    transaction began (rows below the snapshot's count never change; a compaction may
    replace the file meanwhile, the open file keeps the generation the snapshot names)."""
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with fin, open(dst, "wb") as fout:
        left = nbytes
        while left:
            chunk = fin.read(min(left, 16 << 20))
            if not chunk:
                raise StorageError(f"row file {src} is shorter than the snapshot needs "
                                   f"({nbytes} bytes)")
            fout.write(chunk)
            left -= len(chunk)


def _drop_checkpoint_record(lmdb_dir: str) -> None:
    """A snapshot carries no checkpoint bundles: its copy opens by rebuilding from its
    rows, so the checkpoint record copied with LMDB must not point at the source's."""
    import lmdb
    # a compacted copy's map is exactly as big as its data: the delete needs room for the
    # pages it rewrites (with py-lmdb's default 10 MiB map it failed with MDB_MAP_FULL
    # once the copy passed that size)
    size = os.path.getsize(os.path.join(lmdb_dir, "data.mdb"))
    env = lmdb.open(lmdb_dir, max_dbs=len(schema.SUBDBS) + 2, lock=False,
                    map_size=size + (64 << 20))
    try:
        with env.begin(write=True) as txn:
            meta = env.open_db(b"meta", txn=txn, create=False)
            txn.delete(schema.META_SNAPSHOT, db=meta)
            txn.delete(schema.META_CHECKPOINT_LSN, db=meta)
        env.sync(True)
    finally:
        env.close()
    lock = os.path.join(lmdb_dir, "lock.mdb")
    if os.path.exists(lock):
        os.unlink(lock)


def probe_vectors(name: str, dim: int, n: int = FINGERPRINT_PROBES) -> np.ndarray:
    """The fixed probe vectors of a namespace's fingerprint (seeded by its name)."""
    rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
    return rng.standard_normal((n, dim)).astype(np.float32)


#: Id entries (and their rows) scored per step of a fingerprint: bounded memory at any n.
FINGERPRINT_CHUNK = 32768


def _chunk_distances(V: np.ndarray, Q: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances (probes, rows) of rows V to the probe vectors Q."""
    V = V.astype(np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(V, axis=1, keepdims=True)
        V = V / np.where(norms == 0, 1.0, norms)
        return 1.0 - Q @ V.T
    if metric == "ip":
        return -(Q @ V.T)
    return np.stack([((V - q) ** 2).sum(axis=1) for q in Q])


def _fingerprint(txn, dbs, configs, rows_root: str) -> dict:
    """The exact top-k (ids, float64 distances; ties by lower rowid) of the fixed probe
    vectors over each live namespace's stored rows, streamed: id entries and their rows
    (read from the mapped row file) a chunk at a time, so memory does not grow with n."""
    out = {}
    for config in configs:
        if not config.live:
            continue
        n = _n_rows(txn, dbs, config.vid)
        if not n:
            continue
        path = segments.row_path(rows_root, config.vid, _gen(txn, dbs, config.vid))
        X = np.memmap(path, dtype="<f4", mode="r", shape=(n, config.dim))
        Q = probe_vectors(config.name, config.dim).astype(np.float64)
        if config.metric == "cosine":
            Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
        k = FINGERPRINT_K
        best_d = np.zeros((len(Q), 0))
        best_r = np.zeros((len(Q), 0), np.int64)
        keys: dict = {}
        entries = schema.scan_prefix(txn, dbs[b"ids"], schema.vid_prefix(config.vid))
        count = 0
        while True:
            chunk = list(itertools.islice(entries, FINGERPRINT_CHUNK))
            if not chunk:
                break
            count += len(chunk)
            rowids = np.array([schema.parse_id_value(k, v)[0] for k, v in chunk], np.int64)
            for (key, _v), r in zip(chunk, rowids.tolist()):
                keys[r] = bytes(key[4:])
            D = np.concatenate([best_d, _chunk_distances(X[rowids], Q, config.metric)], 1)
            R = np.concatenate([best_r, np.broadcast_to(rowids, (len(Q), len(rowids)))], 1)
            keep = [np.lexsort((R[p], D[p]))[:k] for p in range(len(Q))]
            best_d = np.stack([D[p][keep[p]] for p in range(len(Q))])
            best_r = np.stack([R[p][keep[p]] for p in range(len(Q))])
            wanted = set(best_r.ravel().tolist())
            keys = {r: key for r, key in keys.items() if r in wanted}
        if not count:
            continue
        del X
        out[config.name] = {
            "version": config.version, "k": min(k, count), "probes": FINGERPRINT_PROBES,
            "ids": [[schema.decode_id(keys[r]) for r in row] for row in best_r.tolist()],
            "distances": best_d.tolist()}
    return out


def _count(txn, dbs, vid: int) -> int:
    prefix = schema.vid_prefix(vid)
    return sum(1 for _ in schema.scan_prefix(txn, dbs[b"ids"], prefix, values=False))


# -- taking a snapshot --------------------------------------------------------------------------
def default_dir(db_path: str) -> str:
    return os.path.join(db_path, SNAPSHOTS_DIR)


def take(db, path=None) -> SnapshotInfo:
    """Snapshot ``db`` (an engine Database) into ``path`` or its default snapshot directory."""
    if db.closed:
        raise ClosedError(f"the database at {db.path} is closed")
    created = time.time()
    store = db._store
    dbs = store.dbs
    db.refresh()
    with db._apply_cond:                  # no record is half-applied while the txn opens
        reading = store.read()
        txn = reading.__enter__()
        sources = {}
        try:
            configs = _catalog(txn, dbs)
            for c in configs:
                src = segments.row_path(db.path, c.vid, _gen(txn, dbs, c.vid))
                sources[c.vid] = (open(src, "rb"), src)
        except BaseException:
            reading.__exit__(None, None, None)
            for fin, _src in sources.values():
                fin.close()
            raise
    try:
        raw = txn.get(schema.META_APPLIED_LSN, db=dbs[b"meta"])
        lsn = unpack(raw) if raw else 0
        if path is None:
            root = default_dir(db.path)
            stamp = datetime.datetime.fromtimestamp(created, datetime.timezone.utc)
            name = f"{lsn:020d}-{stamp:%Y%m%dT%H%M%S%fZ}"
            final = os.path.join(root, name)
        else:
            final = os.path.abspath(os.fspath(path))
            root = os.path.dirname(final)
            if os.path.exists(final) and (not os.path.isdir(final) or os.listdir(final)):
                raise TargetExists(f"snapshot path {final} already exists and is not empty")
        tmp = f"{final}.{os.getpid()}.tmp"
        try:
            os.makedirs(root, exist_ok=True)
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
            os.makedirs(os.path.join(tmp, "lmdb"))
            store.env.copy(os.path.join(tmp, "lmdb"), compact=True, txn=txn)
            for c in configs:
                fin, src = sources.pop(c.vid)
                _copy_rows(fin, src, segments.row_path(tmp, c.vid, _gen(txn, dbs, c.vid)),
                           _n_rows(txn, dbs, c.vid) * c.dim * 4)
            namespaces = [{"name": c.name, "version": c.version, "vid": c.vid, "live": c.live,
                           "dim": c.dim, "metric": c.metric, "model": c.model,
                           "index": c.index, "count": _count(txn, dbs, c.vid)}
                          for c in configs]
            fingerprint = _fingerprint(txn, dbs, configs, tmp)
            gens = {c.vid: _gen(txn, dbs, c.vid) for c in configs}
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as e:
        raise StorageError(f"cannot write the snapshot at {path or db.path}: {e}") from e
    finally:
        for fin, _src in sources.values():
            fin.close()
        reading.__exit__(None, None, None)
    try:
        _drop_checkpoint_record(os.path.join(tmp, "lmdb"))
        rels = ["lmdb/data.mdb"] + [
            os.path.relpath(segments.row_path(tmp, c.vid, gens[c.vid]), tmp) for c in configs]
        for rel in rels:
            _fsync_file(os.path.join(tmp, rel))
        _fsync_dir(os.path.join(tmp, "lmdb"))
        if configs:
            _fsync_dir(os.path.join(tmp, segments.ROWS_DIR))
        files = {rel: {"sha256": _sha256(os.path.join(tmp, rel)),
                       "bytes": os.path.getsize(os.path.join(tmp, rel))} for rel in rels}
        manifest = {"format": MANIFEST_FORMAT, "manifest_version": MANIFEST_VERSION,
                    "format_version": schema.FORMAT_VERSION, "lsn": lsn,
                    "created_at": _utc(created), "created_ts": created,
                    "source": db.path, "namespaces": namespaces, "files": files,
                    "fingerprint": fingerprint}
        _write_json_atomic(os.path.join(tmp, MANIFEST), manifest)
        if os.path.isdir(final):
            os.rmdir(final)                   # an empty directory given as the path
        os.rename(tmp, final)
        _fsync_dir(os.path.dirname(final))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(f"cannot write the snapshot at {final}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _info(final, manifest)


def _info(path: str, manifest: dict) -> SnapshotInfo:
    return SnapshotInfo(
        path=path, lsn=int(manifest["lsn"]), created_at=manifest["created_at"],
        bytes=sum(int(f["bytes"]) for f in manifest["files"].values()),
        namespaces=tuple(manifest["namespaces"]),
        manifest_path=os.path.join(path, MANIFEST))


def read_manifest(path) -> dict:
    """The manifest of the snapshot directory ``path`` (StorageError when there is none)."""
    path = os.path.abspath(os.fspath(path))
    mpath = os.path.join(path, MANIFEST)
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError as e:
        raise StorageError(f"{path} is not a SimpleVector snapshot (no {MANIFEST})",
                           hint="list snapshots with `simplevector snapshot list`") from e
    except (OSError, ValueError) as e:
        raise CorruptionError(f"snapshot manifest {mpath} cannot be read: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise CorruptionError(f"{mpath} is not a SimpleVector snapshot manifest")
    if manifest.get("manifest_version") != MANIFEST_VERSION:
        raise StorageError(f"snapshot manifest {mpath} has version "
                           f"{manifest.get('manifest_version')!r}; this SimpleVector reads "
                           f"version {MANIFEST_VERSION}")
    return manifest


def list_snapshots(db_path: str) -> list:
    """Complete snapshots in ``<db>/snapshots``, oldest first (``.tmp`` ones never)."""
    root = default_dir(db_path)
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        path = os.path.join(root, name)
        if name.endswith(".tmp") or not os.path.isfile(os.path.join(path, MANIFEST)):
            continue
        try:
            out.append(_info(path, read_manifest(path)))
        except Exception:                 # an unreadable manifest is not a snapshot
            continue
    return sorted(out, key=lambda s: (s.lsn, os.path.basename(s.path)))


def prune(db_path: str, keep: int) -> list:
    """Remove the oldest snapshots in ``<db>/snapshots`` beyond the newest ``keep``; each is
    renamed to a ``.tmp`` name first (never listed again, swept if the removal is killed),
    then deleted. Returns the SnapshotInfo of those removed, oldest first."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
        raise InvalidInput(f"keep {keep!r} is not valid; expected an int >= 0")
    snaps = list_snapshots(db_path)
    doomed = snaps[:max(0, len(snaps) - keep)]
    for info in doomed:
        gone = f"{info.path}.{os.getpid()}.tmp"
        try:
            os.rename(info.path, gone)
            _fsync_dir(os.path.dirname(info.path))
        except OSError as e:
            raise StorageError(f"cannot remove snapshot {info.path}: {e}") from e
        shutil.rmtree(gone, ignore_errors=True)
    return doomed


def sweep_tmp(db_path: str) -> int:
    """Remove half-made snapshots (``*.<pid>.tmp`` of a dead process) under ``<db>/snapshots``."""
    root = default_dir(db_path)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        if not name.endswith(".tmp"):
            continue
        pid = name[:-4].rsplit(".", 1)[-1]
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        removed += 1
    return removed


def verify(path) -> dict:
    """Check a snapshot's files against its manifest; returns the manifest.

    Raises :class:`CorruptionError` naming the first file whose size or SHA-256 differs.
    """
    path = os.path.abspath(os.fspath(path))
    manifest = read_manifest(path)
    _check_files(path, manifest)
    return manifest


def _check_files(root: str, manifest: dict, *, named_as: str | None = None) -> None:
    for rel, want in manifest["files"].items():
        fpath = os.path.join(root, rel)
        shown = os.path.join(named_as or root, rel)
        if not os.path.isfile(fpath):
            raise CorruptionError(f"snapshot file {shown} is missing")
        size = os.path.getsize(fpath)
        if size != want["bytes"]:
            raise CorruptionError(f"snapshot file {shown} has {size} bytes; the manifest "
                                  f"says {want['bytes']}")
        digest = _sha256(fpath)
        if digest != want["sha256"]:
            raise CorruptionError(f"snapshot file {shown} has SHA-256 {digest}; the manifest "
                                  f"says {want['sha256']}",
                                  hint="the snapshot is damaged; restore another one")


# -- restore ------------------------------------------------------------------------------------
def sweep_restore_leftovers(target) -> int:
    """Clean up after a restore to ``target`` that was killed: remove staging directories
    (``<target>.restore-tmp-<pid>``) of dead processes; a ``<target>.restore-old-<pid>`` of a
    dead process is put back when the target is missing (the kill came between the two
    renames of a forced restore) and removed otherwise. Returns how many were handled."""
    target = os.path.abspath(os.fspath(target))
    parent, base = os.path.split(target)
    try:
        names = os.listdir(parent)
    except FileNotFoundError:
        return 0
    handled = 0
    for name in names:
        for marker in (".restore-tmp-", ".restore-old-"):
            prefix = base + marker
            if not name.startswith(prefix) or not name[len(prefix):].isdigit():
                continue
            if _pid_alive(int(name[len(prefix):])):
                continue
            path = os.path.join(parent, name)
            if marker == ".restore-old-" and not os.path.exists(target):
                os.rename(path, target)
                _fsync_dir(parent)
            else:
                shutil.rmtree(path, ignore_errors=True)
            handled += 1
    return handled


def _check_restored(staging: str, manifest: dict, database_class) -> tuple:
    db = database_class(staging, checkpoint_interval=0, auto_index=False)
    try:
        if db.lsn != manifest["lsn"]:
            raise CorruptionError(f"restored database is at LSN {db.lsn}; the snapshot "
                                  f"manifest says {manifest['lsn']}")
        counts = {(v.name, vi.version): vi.count
                  for v in db.list_namespaces() for vi in v.versions}
        for ns in manifest["namespaces"]:
            got = counts.pop((ns["name"], ns["version"]), None)
            if got != ns["count"]:
                raise CorruptionError(
                    f"restored namespace {ns['name']!r} v{ns['version']} has {got} rows; "
                    f"the snapshot manifest says {ns['count']}")
        if counts:
            raise CorruptionError(f"restored database has versions the manifest does not "
                                  f"list: {sorted(counts)}")
        for name, fp in manifest["fingerprint"].items():
            handle = db.namespace(name, fp["version"])
            dim = next(n["dim"] for n in manifest["namespaces"]
                       if n["name"] == name and n["version"] == fp["version"])
            hits = handle.query(probe_vectors(name, dim, fp["probes"]), k=fp["k"],
                                include=(), exact=True)
            for want_ids, want_d, row in zip(fp["ids"], fp["distances"], hits):
                _check_probe(name, want_ids, want_d, row)
        return tuple({"name": ns["name"], "version": ns["version"], "count": ns["count"]}
                     for ns in manifest["namespaces"])
    finally:
        db.close()


def _check_probe(name, want_ids, want_d, hits) -> None:
    got_d = np.array([h.distance for h in hits], dtype=np.float64)
    want = np.array(want_d, dtype=np.float64)
    tol = 1e-4 * max(1.0, float(np.abs(want).max()) if len(want) else 1.0)
    if len(got_d) != len(want) or not np.allclose(got_d, want, rtol=0, atol=tol):
        raise CorruptionError(f"restored namespace {name!r} fails the query fingerprint: "
                              f"distances {got_d.tolist()} != {want.tolist()}")
    edge = want[-1] - tol                 # ids tied with the k-th may differ
    sure_want = {i for i, d in zip(want_ids, want) if d < edge}
    sure_got = {h.id for h, d in zip(hits, got_d) if d < edge}
    if sure_want != sure_got:
        raise CorruptionError(f"restored namespace {name!r} fails the query fingerprint: "
                              f"ids {sorted(map(str, sure_got))} != "
                              f"{sorted(map(str, sure_want))}")


def _undo(staging: str, old: str, target: str) -> None:
    shutil.rmtree(staging, ignore_errors=True)
    if os.path.exists(old) and not os.path.exists(target):
        os.rename(old, target)            # put the replaced database back


def parse_time(value) -> float:
    """Epoch seconds from a number, a datetime or an ISO-8601 string (naive = UTC)."""
    if isinstance(value, bool):
        raise InvalidInput(f"to_time {value!r} is not valid; expected epoch seconds, a "
                           "datetime or an ISO-8601 string")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            value = datetime.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(f"to_time {value!r} is not valid; expected epoch seconds or "
                               "an ISO-8601 time such as 2026-12-02T01:30:00Z") from None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.timestamp()
    raise InvalidInput(f"to_time {value!r} is not valid; expected epoch seconds, a datetime "
                       "or an ISO-8601 string")


def _check_point(manifest, to_lsn, to_time, wal_archive):
    if to_lsn is not None and to_time is not None:
        raise InvalidInput(f"give to_lsn ({to_lsn!r}) or to_time ({to_time!r}), not both")
    if (to_lsn is not None or to_time is not None) and wal_archive is None:
        raise InvalidInput("to_lsn and to_time need wal_archive: the directory the database "
                           "archived its WAL to (open(..., wal_archive=PATH))")
    if to_lsn is not None:
        if isinstance(to_lsn, bool) or not isinstance(to_lsn, int) or to_lsn < 0:
            raise InvalidInput(f"to_lsn {to_lsn!r} is not valid; expected an LSN (int >= 0)")
        if to_lsn < manifest["lsn"]:
            raise InvalidInput(f"to_lsn {to_lsn} is before the snapshot's LSN "
                               f"{manifest['lsn']}; restore from an older snapshot")
    if to_time is not None:
        to_time = parse_time(to_time)
        if to_time < float(manifest["created_ts"]):
            raise InvalidInput(f"to_time {_utc(to_time)} is before the snapshot was taken "
                               f"({manifest['created_at']}); restore from an older snapshot")
    if wal_archive is not None:
        if not isinstance(wal_archive, (str, os.PathLike)):
            raise InvalidInput(f"wal_archive {wal_archive!r} is not a path")
        wal_archive = os.path.abspath(os.fspath(wal_archive))
        if not os.path.isdir(wal_archive):
            raise InvalidInput(f"wal_archive {wal_archive} is not a directory; expected the "
                               "WAL archive of the database the snapshot was taken from")
    return to_time, wal_archive


def _stage_wal(staging, wal_archive, since, to_lsn, to_time) -> int:
    """Write the archived records after ``since`` up to the target point into the staging
    database's WAL; returns how many."""
    from .wal import WriteAheadLog
    count = 0
    wal = WriteAheadLog(os.path.join(staging, "wal"))
    try:
        for lsn, payload in iter_archived(wal_archive, since, to_lsn):
            if to_time is not None and float(unpack(payload).get("ts") or 0.0) > to_time:
                break
            wal.append(lsn, payload)
            count += 1
        wal.sync()
    finally:
        wal.close()
    return count


def _check_replayed(staging, want_lsn, database_class) -> None:
    db = database_class(staging, checkpoint_interval=0, auto_index=False)
    try:
        if db.lsn != want_lsn:
            raise CorruptionError(f"restored database is at LSN {db.lsn} after replaying the "
                                  f"archived WAL; expected {want_lsn}")
        store = db._store
        with store.read() as txn:       # LMDB's id entries agree with the loaded state
            stored = {(c.name, c.version): _count(txn, store.dbs, c.vid)
                      for c in _catalog(txn, store.dbs)}
        loaded = {(info.name, v.version): v.count
                  for info in db.list_namespaces() for v in info.versions}
        if stored != loaded:
            raise CorruptionError(f"restored database's rows disagree after the WAL replay: "
                                  f"LMDB ids {stored}, loaded {loaded}")
    finally:
        db.close()


def restore(source, target, *, to_lsn=None, to_time=None, wal_archive=None, force=False,
            dry_run=False, database_class=None) -> RestoreReport:
    """Restore the snapshot directory ``source`` into the database directory ``target``,
    optionally replaying ``wal_archive`` up to ``to_lsn`` / ``to_time`` (module docstring)."""
    t0 = time.perf_counter()
    if not isinstance(source, (str, os.PathLike)) or not isinstance(target, (str, os.PathLike)):
        raise InvalidInput(f"source {source!r} and target {target!r} must be paths")
    if database_class is None:
        from .database import Database as database_class
    source = os.path.abspath(os.fspath(source))
    target = os.path.abspath(os.fspath(target))
    manifest = read_manifest(source)
    to_time, wal_archive = _check_point(manifest, to_lsn, to_time, wal_archive)
    snap_lsn = int(manifest["lsn"])
    reached, replayed = snap_lsn, 0
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    sweep_restore_leftovers(target)
    exists = os.path.exists(target)
    if exists and (not os.path.isdir(target) or os.listdir(target)):
        if not force:
            raise TargetExists(f"restore target {target} already exists and is not empty")
        if not os.path.isdir(target):
            raise InvalidInput(f"restore target {target} is a file; expected a directory")
    pid = os.getpid()
    staging = f"{target}.restore-tmp-{pid}"
    old = f"{target}.restore-old-{pid}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for rel in manifest["files"]:
            dest = os.path.join(staging, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            try:
                shutil.copyfile(os.path.join(source, rel), dest)
            except FileNotFoundError as e:
                raise CorruptionError(f"snapshot file {os.path.join(source, rel)} is "
                                      "missing") from e
            _fsync_file(dest)
            _fsync_dir(os.path.dirname(dest))
        _check_files(staging, manifest, named_as=source)
        namespaces = _check_restored(staging, manifest, database_class)
        if wal_archive is not None:
            replayed = _stage_wal(staging, wal_archive, snap_lsn, to_lsn, to_time)
            reached = snap_lsn + replayed
            if to_lsn is not None and reached < to_lsn:
                raise ChangeFeedGap(
                    f"the WAL archive {wal_archive} ends at LSN {reached}; to_lsn {to_lsn} "
                    "is not reachable from it",
                    hint="a clean close or a snapshot of the writer seals and archives the "
                         "last records; restore to an LSN the archive holds")
            _check_replayed(staging, reached, database_class)
        if dry_run:
            # everything a restore checks passed; the target is not touched
            shutil.rmtree(staging, ignore_errors=True)
            return RestoreReport(source=source, target=target, lsn=reached,
                                 namespaces=namespaces, verified=True,
                                 seconds=time.perf_counter() - t0, snapshot_lsn=snap_lsn,
                                 wal_records=replayed, to_lsn=to_lsn, to_time=to_time,
                                 wal_archive=wal_archive, dry_run=True)
        _fsync_dir(staging)
        if exists and os.listdir(target):
            os.rename(target, old)
        os.rename(staging, target)        # replaces an empty target directory
        _fsync_dir(parent)
    except OSError as e:
        _undo(staging, old, target)
        raise StorageError(f"restore of {source} into {target} failed: {e}") from e
    except BaseException:
        _undo(staging, old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return RestoreReport(source=source, target=target, lsn=reached,
                         namespaces=namespaces, verified=True,
                         seconds=time.perf_counter() - t0, snapshot_lsn=snap_lsn,
                         wal_records=replayed, to_lsn=to_lsn, to_time=to_time,
                         wal_archive=wal_archive)
