"""The files of a cluster: its root manifest, cluster snapshots and their restore.

Layouts::

    <root>/cluster.json                  {"format": "simplevector-cluster", "shards": N, ...}
    <root>/shard-<i>/                    an ordinary embedded database per shard

    <snapshot>/cluster-manifest.json     shard count, every shard's LSN and manifest SHA-256
    <snapshot>/shard-<i>/                that shard's own snapshot (db.snapshot)

A cluster snapshot asks every shard for its own online snapshot in parallel (each fixes its
own LSN while writes continue), then writes one manifest naming every shard's LSN. It is
built under ``<snapshot>.<pid>.tmp`` and renamed into place: a failed or interrupted
snapshot is never mistaken for a complete one. Shards are independent (a write is
acknowledged per shard), so the cluster snapshot is "each shard as of its LSN"; a batch that
spans shards may be in one shard's snapshot and not yet in another's.

``restore_cluster`` restores every shard with ``sv.restore`` (SHA-256 of each file, the
restored engine's LSN, counts and query fingerprint checked) into a staging root beside the
target, checks each LSN against the cluster manifest, writes ``cluster.json`` and only then
renames the staging root into place: all shards restored and verified, or nothing at the
target. It runs in the calling process, so on a multi-node cluster the snapshot and the
new root must be on storage that process sees.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass

from simplevector.engine.errors import (CorruptionError, InvalidInput, StorageError,
                                        TargetExists)

CLUSTER_MANIFEST = "cluster.json"
SNAPSHOT_MANIFEST = "cluster-manifest.json"
SNAPSHOT_FORMAT = "simplevector-cluster-snapshot"


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str, data: dict) -> None:
    """``name.tmp``, fsync, rename, fsync the directory (STYLE.md, Durability)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


def _read_json(path: str, what: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CorruptionError(f"{what} {path} cannot be read: {e}") from e


def read_cluster_manifest(root: str) -> dict | None:
    """``root/cluster.json`` (None when the root is not a cluster yet)."""
    manifest = _read_json(os.path.join(root, CLUSTER_MANIFEST), "cluster manifest")
    if manifest is not None and (manifest.get("format") != "simplevector-cluster"
                                 or not isinstance(manifest.get("shards"), int)):
        raise CorruptionError(f"{os.path.join(root, CLUSTER_MANIFEST)} is not a SimpleVector "
                              "cluster manifest")
    return manifest


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def take_cluster_snapshot(cl, path):
    from .cluster_db import ClusterSnapshotInfo
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInput(f"snapshot path {path!r} must be a path")
    final = os.path.abspath(os.fspath(path))
    if os.path.exists(final) and (not os.path.isdir(final) or os.listdir(final)):
        raise TargetExists(f"snapshot path {final} already exists and is not empty")
    tmp = f"{final}.{os.getpid()}.tmp"
    created = time.time()
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        os.makedirs(tmp)
        infos = cl.snapshot_shards(tmp)
        shards, totals = [], {}
        for i in sorted(infos):
            info = infos[i]
            rel = f"shard-{i}"
            shards.append({"index": i, "dir": rel, "lsn": info.lsn, "bytes": info.bytes,
                           "manifest_sha256": _sha256(os.path.join(tmp, rel,
                                                                   "manifest.json")),
                           "namespaces": [dict(n) for n in info.namespaces]})
            for n in info.namespaces:
                key = (n["name"], n["version"])
                totals.setdefault(key, dict(n, count=0))["count"] += n["count"]
        manifest = {"format": SNAPSHOT_FORMAT, "manifest_version": 1,
                    "shards": len(shards), "source": cl.root,
                    "created_at": datetime.datetime.fromtimestamp(
                        created, datetime.timezone.utc).isoformat(),
                    "shard_snapshots": shards}
        write_json_atomic(os.path.join(tmp, SNAPSHOT_MANIFEST), manifest)
        if os.path.isdir(final):
            os.rmdir(final)
        os.rename(tmp, final)
        fsync_dir(os.path.dirname(final))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(f"cannot write the cluster snapshot at {final}: {e}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    from simplevector.engine.snapshot import SnapshotInfo
    per_shard = tuple(SnapshotInfo(path=os.path.join(final, s["dir"]), lsn=s["lsn"],
                                   created_at=infos[s["index"]].created_at, bytes=s["bytes"],
                                   namespaces=tuple(s["namespaces"]),
                                   manifest_path=os.path.join(final, s["dir"],
                                                              "manifest.json"))
                      for s in shards)
    return ClusterSnapshotInfo(
        path=final, lsn=sum(s["lsn"] for s in shards), created_at=manifest["created_at"],
        bytes=sum(s["bytes"] for s in shards), namespaces=tuple(totals.values()),
        manifest_path=os.path.join(final, SNAPSHOT_MANIFEST), shards=per_shard,
        shard_lsns=tuple(s["lsn"] for s in shards))


@dataclass(frozen=True)
class ClusterRestoreReport:
    """What ``restore_cluster`` did: each shard's RestoreReport (LSN and counts checked)."""

    source: str
    target: str
    shards: tuple
    shard_lsns: tuple
    verified: bool
    seconds: float

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target,
                "shards": [r.to_dict() for r in self.shards],
                "shard_lsns": list(self.shard_lsns), "verified": self.verified,
                "seconds": self.seconds}


def read_snapshot_manifest(path: str) -> dict:
    manifest = _read_json(os.path.join(path, SNAPSHOT_MANIFEST), "cluster snapshot manifest")
    if manifest is None:
        raise StorageError(f"{path} is not a SimpleVector cluster snapshot (no "
                           f"{SNAPSHOT_MANIFEST})", hint="take one with cl.snapshot(path)")
    if manifest.get("format") != SNAPSHOT_FORMAT:
        raise CorruptionError(f"{os.path.join(path, SNAPSHOT_MANIFEST)} has format "
                              f"{manifest.get('format')!r}; expected {SNAPSHOT_FORMAT!r}")
    return manifest


def restore_cluster(path, root) -> ClusterRestoreReport:
    """Restore the cluster snapshot ``path`` into the new cluster root ``root``: every
    shard restored and verified, or nothing at ``root`` (see the module docstring)."""
    import simplevector as sv
    t0 = time.perf_counter()
    if not isinstance(path, (str, os.PathLike)) or not isinstance(root, (str, os.PathLike)):
        raise InvalidInput(f"path {path!r} and root {root!r} must be paths")
    source = os.path.abspath(os.fspath(path))
    target = os.path.abspath(os.fspath(root))
    manifest = read_snapshot_manifest(source)
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise TargetExists(f"cluster restore target {target} already exists and is not empty",
                           hint="restore into a new root")
    staging = f"{target}.restore-tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        os.makedirs(staging)
        reports = []
        for entry in manifest["shard_snapshots"]:
            shard_src = os.path.join(source, entry["dir"])
            mpath = os.path.join(shard_src, "manifest.json")
            if not os.path.exists(mpath) or _sha256(mpath) != entry["manifest_sha256"]:
                raise CorruptionError(f"shard snapshot manifest {mpath} is missing or does "
                                      "not match the cluster manifest's SHA-256")
            report = sv.restore(shard_src, os.path.join(staging, f"shard-{entry['index']}"))
            if report.lsn != entry["lsn"]:
                raise CorruptionError(f"shard {entry['index']} restored at LSN {report.lsn}; "
                                      f"the cluster manifest says {entry['lsn']}")
            reports.append(report)
        write_json_atomic(os.path.join(staging, CLUSTER_MANIFEST), {
            "format": "simplevector-cluster", "manifest_version": 1,
            "shards": manifest["shards"], "routing": "blake2b-64(typed id) mod shards",
            "restored_from": source,
            "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat()})
        fsync_dir(staging)
        if os.path.isdir(target):
            os.rmdir(target)                # an empty directory given as the root
        os.rename(staging, target)
        fsync_dir(os.path.dirname(target))
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise StorageError(f"cluster restore of {source} into {target} failed: {e}") from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ClusterRestoreReport(source=source, target=target, shards=tuple(reports),
                                shard_lsns=tuple(r.lsn for r in reports), verified=True,
                                seconds=time.perf_counter() - t0)
