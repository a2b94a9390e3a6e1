"""Small public dataclasses: results, records, catalog entries, change-feed items."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np


@dataclass
class Hit:
    """One search result. ``distance`` is lower-is-nearer for every metric:
    cosine ``1 - cos``, l2 squared euclidean, ip negative inner product."""

    id: Any
    distance: float
    metadata: Optional[dict] = None
    document: Optional[str] = None
    vector: Optional[np.ndarray] = None

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.vector is not None:
            out["vector"] = self.vector.tolist()
        return out


@dataclass
class Record:
    """A stored row as ``Namespace.get`` returns it."""

    id: Any
    metadata: Optional[dict] = None
    document: Optional[str] = None
    vector: Optional[np.ndarray] = None

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.vector is not None:
            out["vector"] = self.vector.tolist()
        return out


@dataclass
class StoredRecord:
    """A stored row with its provenance, as ``Namespace.scan`` returns it. ``provenance``
    is the map the writer gave ``upsert(..., provenance=)`` (None when it gave none)."""

    id: Any
    metadata: Optional[dict] = None
    document: Optional[str] = None
    provenance: Optional[dict] = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class VersionConfig:
    """What one namespace version fixes: dim, metric, embedding model and index spec.

    ``vid`` is the engine's internal number for the version (unique across the database and
    never reused); ``live`` says whether the namespace alias points at it.
    """

    name: str
    version: int
    vid: int
    dim: int
    metric: str
    model: Optional[str] = None
    index: str = "auto"
    live: bool = False
    created_lsn: int = 0

    def to_msg(self) -> dict:
        return asdict(self)

    @classmethod
    def from_msg(cls, msg: dict) -> "VersionConfig":
        return cls(**msg)


@dataclass
class VersionInfo:
    version: int
    dim: int
    metric: str
    model: Optional[str]
    index: str
    count: int
    live: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NamespaceInfo:
    """A namespace alias, the version it points at, and every version it has."""

    name: str
    live_version: Optional[int]
    versions: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "live_version": self.live_version,
                "versions": [v.to_dict() for v in self.versions]}


@dataclass(frozen=True)
class Change:
    """One committed change, read back from the write-ahead log."""

    lsn: int
    op: str
    namespace: str
    version: Optional[int]
    ids: tuple = ()
    ts: Optional[float] = None      # wall-clock time of the write (seconds since the epoch)

    def to_dict(self) -> dict:
        return {"lsn": self.lsn, "op": self.op, "namespace": self.namespace,
                "version": self.version, "ids": list(self.ids), "ts": self.ts}
