"""Read-only status objects: what the engine shows the layers above it.

``Database.status()`` returns a :class:`DatabaseStatus`, ``Database.version_statuses()``
(and ``version_status(name, version=None)``) a :class:`VersionStatus` per namespace
version. Both are frozen snapshots taken at the call: reading them never blocks a writer
and holding one keeps no engine state alive. ops/ builds health, metrics and capacity on
these and on the observer interface only (docs/architecture.md, "The boundary between
layers").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional


@dataclass(frozen=True)
class VersionStatus:
    """One namespace version as the engine holds it now.

    rows: live rows; tombstones: deleted or replaced rows still holding a position (until
    compaction); positions: rows + tombstones. index_active is "Flat" until an IVF index is
    trained; index_info is ``Namespace.index_info()``'s IVF part (nlist, list sizes and
    balance, training error, ...) or None. rows_since_training: live rows written after the
    index was trained (the drift check's input). memory_bytes: heap held for the version
    (alive mask and norms, about 5 bytes a position, plus the rows written since the last
    checkpoint); the rows themselves are mapped from the row file (page cache, not heap).
    """

    name: str
    version: int
    vid: int
    live: bool
    dim: int
    metric: str
    model: Optional[str]
    index_configured: str
    index_active: str
    rows: int
    tombstones: int
    positions: int
    training: bool
    training_error: Optional[str]
    rows_since_training: int
    memory_bytes: int
    index_info: Optional[dict] = None

    @property
    def tombstone_ratio(self) -> float:
        return self.tombstones / self.positions if self.positions else 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class DatabaseStatus:
    """Positions and sizes of one database.

    lsn: the last committed (applied and acknowledged) LSN; logged_lsn: the last LSN in the
    WAL (ahead of ``lsn`` only while a write is between its append and its apply);
    checkpoint_time is None until this process checkpoints. failed: why the database
    stopped accepting writes (None while healthy). observer_errors: exceptions raised by
    observers (each swallowed so the engine operation succeeded). wal_retention:
    why the WAL holds what it holds (see Database.wal_retention). unapplied: writes that
    are durable in the WAL but not applied yet (e.g. a full disk); the next write, the
    checkpoint or close applies them.
    """

    path: str
    readonly: bool
    durability: str
    format_version: int
    lsn: int
    logged_lsn: int
    checkpoint_lsn: int
    checkpoint_time: Optional[float]
    wal_first_lsn: Optional[int]
    wal_bytes: int
    wal_segments: int
    wal_syncs: int
    map_size: int
    map_used: int
    namespaces: int
    versions: int
    replayed_records: int
    memory_replayed_records: int
    failed: Optional[str]
    observer_errors: int
    observer_last_error: Optional[str]
    counters: dict = field(default_factory=dict)
    query_stats: dict = field(default_factory=dict)
    #: Database.wal_retention(): WAL bytes, the tail kept, and the pins (checkpoint,
    #: archive, oldest snapshot, named consumers) with the LSN and bytes each holds
    wal_retention: dict = field(default_factory=dict)
    unapplied: int = 0                  # durable writes waiting to be applied (disk full)
    unapplied_error: Optional[str] = None
    disk_free: Optional[int] = None     # free bytes, from the free-space probe
    disk_full_refusals: int = 0         # writes refused by the disk reserve since open

    @property
    def records_since_checkpoint(self) -> int:
        return max(0, self.logged_lsn - self.checkpoint_lsn)

    def to_dict(self) -> dict:
        return asdict(self)
