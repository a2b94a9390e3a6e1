"""SimpleVector: an embedded vector engine built for day 2.

    import simplevector as sv
    with sv.open("./data") as db:
        docs = db.create_namespace("docs", dim=384, metric="cosine")
        docs.upsert(ids=["a"], vectors=X[:1])
        hits = docs.query(X[0], k=10)
"""
import os as _os

from simplevector.ops.database import ObservedDatabase as Database  # engine Database + ops layer
from simplevector.engine.errors import *  # noqa: F401,F403
from simplevector.engine.errors import __all__ as _errors_all
from simplevector.engine.limits import Limits
from simplevector.engine.namespace import Namespace
from simplevector.engine.compact import (DEFAULT_COMPACT_RATIO, CompactedVersion,
                                         CompactReport)
from simplevector.engine.snapshot import RestoreReport, SnapshotInfo
from simplevector.engine.snapshot import restore as _restore
from simplevector.engine.snapshot import sweep_restore_leftovers as _sweep_restore_leftovers
from simplevector.engine.upgrade import UpgradeReport
from simplevector.engine.upgrade import upgrade as _upgrade
from simplevector.engine.types import Change, Hit, NamespaceInfo, Record, VersionInfo
from simplevector.ops.embeddings import EmbeddingFunction
from simplevector import embeddings  # noqa: E402  (simplevector.embeddings adapters)

__version__ = "0.1.0"


def open(path, *, durability: str = "sync", readonly: bool = False,
         checkpoint_interval: float = 60.0, wal_keep_bytes: int | None = None,
         auto_index: bool = True, limits: Limits | None = None, wal_archive=None,
         snapshot_interval: float = 0.0, snapshot_keep: int = 3,
         compact_ratio: float = DEFAULT_COMPACT_RATIO, compact_min_rows: int = 1024,
         **ops_options) -> Database:
    """Open (creating if missing) the database directory at ``path``.

    durability="sync": a write returns only after its WAL record is on disk (fdatasync,
    shared by concurrent writers). "async": the write returns after the WAL write() and is
    synced by the checkpointer; an OS crash can lose the last writes, never corrupt.
    readonly=True: a second process may read a database another process writes; it sees
    every committed write, and raises ReadOnlyError on writes.
    checkpoint_interval: seconds between background checkpoints (0 turns them off).
    wal_keep_bytes: WAL bytes kept past what the checkpoint, named change-feed consumers,
    the oldest snapshot (without an archive) and the archive still need; None (default)
    sizes it to the database: max(4 MiB, 25% of the LMDB bytes used).
    wal_archive: a directory that receives a copy of every sealed WAL segment before it may
    be removed (a snapshot and a clean close seal the active one), for point-in-time
    restore (``restore(..., to_lsn=, to_time=, wal_archive=)``); only the writer archives
    (a read-only open ignores it).
    snapshot_interval: seconds between automatic snapshots into ``<path>/snapshots`` (0 =
    off); snapshot_keep: how many snapshots the automatic ones leave there (older removed).
    scrub_interval (an ops option): seconds between background scrub slices, an
    incremental ``db.verify()`` whose last result the health report shows (0/None = off,
    the default; see simplevector.ops.scrub); scrub_rows: positions per slice.
    auto_index: train an IVF index in the background once a namespace grows past its
    spec's threshold ("auto": 50,000 rows).
    compact_ratio, compact_min_rows: compact a version in the background once this share
    of its positions, and at least this many, are tombstones (``compact_ratio=0``: never
    by itself; ``db.compact()`` / ``ns.compact()`` any time).
    limits: a Limits (document, metadata and batch sizes; None = the defaults). An option
    of this open, not stored in the database; an upsert over a limit raises LimitExceeded.
    ops_options: the ops layer's options (probe_interval, alert_interval, alert_rules,
    memory_budget, thresholds), see simplevector.ops.database.ObservedDatabase, and the
    engine's disk_reserve (free bytes a write leaves besides 3x its size; 0 = no check)
    and disk_free_probe (a callable(path) -> free bytes, for tests).

    A writer's open first cleans up after a restore into ``path`` that was killed
    (``<path>.restore-tmp-<pid>`` of a dead process), as the next restore would.
    """
    if not readonly and isinstance(path, (str, _os.PathLike)):
        _sweep_restore_leftovers(path)
    return Database(path, durability=durability, readonly=readonly,
                    checkpoint_interval=checkpoint_interval, wal_keep_bytes=wal_keep_bytes,
                    auto_index=auto_index, limits=limits, wal_archive=wal_archive,
                    snapshot_interval=snapshot_interval, snapshot_keep=snapshot_keep,
                    compact_ratio=compact_ratio, compact_min_rows=compact_min_rows,
                    **ops_options)


def upgrade(path, *, progress=None) -> UpgradeReport:
    """Convert the database directory ``path`` from an older on-disk format (a copy is
    built beside it, verified row by row, then swapped in; the old directory is kept as
    ``<path>.format<N>-backup``). Every process must have closed it. A current database
    is left alone (``report.backup is None``). See ``simplevector upgrade``."""
    return _upgrade(path, progress=progress)


def connect(url: str, *, api_key: str | None = None, timeout: float = 30.0,
            wire: str = "json"):
    """A client of the SimpleVector server at ``url`` with the embedded API (see
    :mod:`simplevector.client`); needs the ``server`` extra (httpx). wire: "json" or
    "msgpack" (vectors as raw float32 bytes)."""
    from simplevector.client import connect as _connect
    return _connect(url, api_key=api_key, timeout=timeout, wire=wire)


def restore(source, target, *, to_lsn=None, to_time=None, wal_archive=None,
            force=False, dry_run=False) -> RestoreReport:
    """Restore the snapshot directory ``source`` (made by ``db.snapshot()``) into the
    database directory ``target``.

    The copy is built in ``<target>.restore-tmp-<pid>``, its files are checked against the
    manifest's SHA-256 (a mismatch raises CorruptionError naming the file), it is opened and
    its LSN, row counts and query fingerprint are checked, and only then is it renamed into
    place. A non-empty ``target`` raises TargetExists unless ``force=True``, which replaces
    it after the new copy verified. A failure leaves neither a target nor a staging
    directory; leftovers of a killed restore are swept by the next restore to that target
    and by the next writer's ``open(target)``.

    Point-in-time: with ``wal_archive`` (the directory given to ``open(...,
    wal_archive=)``) the archived WAL after the snapshot's LSN is replayed on top of it, up
    to ``to_lsn`` (inclusive), or every record written at or before ``to_time`` (epoch
    seconds, a datetime, or an ISO-8601 string), or to the end of the archive. A gap in
    the archive or a target beyond its end raises ChangeFeedGap, a bad checksum
    CorruptionError; either leaves nothing behind. ``RestoreReport.lsn`` is the LSN reached.

    ``dry_run=True`` does all of that in the staging directory, then removes it: the
    target is never touched, and the report (``dry_run=True``) says what a restore would
    give (LSN, counts); any problem raises as the restore would.
    """
    return _restore(source, target, to_lsn=to_lsn, to_time=to_time, wal_archive=wal_archive,
                    force=force, dry_run=dry_run)


def cluster(root, *, shards: int, ray_address=None, **options):
    """Open (creating if missing) a cluster of ``shards`` Ray shard actors rooted at
    ``root`` (:class:`simplevector.cluster_db.ClusterDatabase`: the namespace API of a
    ``Database``, sharded by a stable hash of the id). Needs the ``cluster`` extra (Ray);
    ``ray_address=None`` starts or joins a local Ray. ``options``: ``timeout`` (seconds a
    call waits for a shard), ``shard_cpus`` (Ray CPUs reserved per shard actor, default 0),
    ``shard_options`` (a list of Ray actor options per shard, e.g. to pin a shard to the
    node holding its directory) and each shard's ``sv.open`` options. Ray is imported only
    when this is called."""
    from simplevector.cluster_db import cluster as _cluster
    return _cluster(root, shards=shards, ray_address=ray_address, **options)


def restore_cluster(path, root):
    """Restore the cluster snapshot ``path`` (made by ``cl.snapshot()``) into the new
    cluster root ``root``: every shard restored with :func:`restore` and verified, its LSN
    checked against the cluster manifest, or nothing at ``root``."""
    from simplevector.cluster_files import restore_cluster as _restore_cluster
    return _restore_cluster(path, root)


def __getattr__(name):
    # the cluster's classes, without importing the cluster module (or Ray) at import time
    if name in ("ClusterDatabase", "ShardInfo", "PartialResult", "WriteAck"):
        from simplevector import cluster_db as _cluster_module
        return getattr(_cluster_module, name)
    raise AttributeError(f"module 'simplevector' has no attribute {name!r}")


__all__ = ["open", "connect", "restore", "upgrade", "UpgradeReport", "cluster",
           "restore_cluster", "Database", "Limits",
           "Namespace", "Hit", "Record", "NamespaceInfo", "VersionInfo", "Change",
           "SnapshotInfo", "RestoreReport", "CompactReport", "CompactedVersion",
           "DEFAULT_COMPACT_RATIO", "EmbeddingFunction", "embeddings",
           *_errors_all]
