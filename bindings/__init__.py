"""SimpleVector: an embedded vector engine built for day 2.

    import simplevector as sv
    with sv.open("./data") as db:
        docs = db.create_namespace("docs", dim=384, metric="cosine")
        docs.upsert(ids=["a"], vectors=X[:1])
        hits = docs.query(X[0], k=10)
"""
from simplevector.ops.database import ObservedDatabase as Database  # engine Database + ops layer
from simplevector.engine.errors import *  # noqa: F401,F403
from simplevector.engine.errors import __all__ as _errors_all
from simplevector.engine.limits import Limits
from simplevector.engine.namespace import Namespace
from simplevector.engine.types import Change, Hit, NamespaceInfo, Record, VersionInfo

__version__ = "0.1.0"


def open(path, *, durability: str = "sync", readonly: bool = False,
         checkpoint_interval: float = 60.0, wal_keep_bytes: int = 256 << 20,
         auto_index: bool = True, limits: Limits | None = None, **ops_options) -> Database:
    """Open (creating if missing) the database directory at ``path``.

    durability="sync": a write returns only after its WAL record is on disk (fdatasync,
    shared by concurrent writers). "async": the write returns after the WAL write() and is
    synced by the checkpointer; an OS crash can lose the last writes, never corrupt.
    readonly=True: a second process may read a database another process writes; it sees
    every committed write, and raises ReadOnlyError on writes.
    checkpoint_interval: seconds between background checkpoints (0 turns them off).
    wal_keep_bytes: WAL kept for the change feed after a checkpoint.
    auto_index: train an IVF index in the background once a namespace grows past its
    spec's threshold ("auto": 50,000 rows).
    limits: a Limits (document, metadata and batch sizes; None = the defaults). An option
    of this open, not stored in the database; an upsert over a limit raises LimitExceeded.
    ops_options: the ops layer's options (probe_interval, alert_interval, alert_rules,
    memory_budget, thresholds), see simplevector.ops.database.ObservedDatabase.
    """
    return Database(path, durability=durability, readonly=readonly,
                    checkpoint_interval=checkpoint_interval, wal_keep_bytes=wal_keep_bytes,
                    auto_index=auto_index, limits=limits, **ops_options)


def connect(url: str, *, api_key: str | None = None, timeout: float = 30.0,
            wire: str = "json"):
    """A client of the SimpleVector server at ``url`` with the embedded API (see
    :mod:`simplevector.client`); needs the ``server`` extra (httpx). wire: "json" or
    "msgpack" (vectors as raw float32 bytes)."""
    from simplevector.client import connect as _connect
    return _connect(url, api_key=api_key, timeout=timeout, wire=wire)


__all__ = ["open", "connect", "Database", "Limits", "Namespace", "Hit", "Record", "NamespaceInfo",
           "VersionInfo", "Change", *_errors_all]
