"""The one error tree of SimpleVector.

Every error a caller can see derives from :class:`SimpleVectorError`. Each class has a
stable ``code`` (sent by the server, used by the client to rebuild the same class), an
``http_status`` and, where a fix is known, a ``hint``. Messages name the bad value and
what was expected.
"""

from __future__ import annotations

__all__ = [
    "SimpleVectorError",
    "InvalidInput",
    "DimensionMismatch",
    "FilterError",
    "LimitExceeded",
    "NamespaceNotFound",
    "NamespaceExists",
    "VersionNotFound",
    "ReadOnlyError",
    "ClosedError",
    "StorageError",
    "LockedError",
    "CorruptionError",
    "FormatVersionError",
    "ChangeFeedGap",
    "TargetExists",
    "NotSupported",
    "DiskFullError",
    "AuthenticationError",
    "PermissionDenied",
    "ModelMismatch",
    "EmbeddingError",
    "BudgetExceeded",
    "RateLimited",
    "MigrationError",
    "ShardUnavailable",
    "ShardCountMismatch",
    "error_class_for_code",
]


class SimpleVectorError(Exception):
    """Root of every SimpleVector error."""

    code = "simplevector_error"
    http_status = 500
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} (hint: {self.hint})"
        return self.message

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "hint": self.hint}


class InvalidInput(SimpleVectorError, ValueError):
    """An argument has the wrong type, shape or value."""

    code = "invalid_input"
    http_status = 400


class DimensionMismatch(InvalidInput):
    """A vector's length differs from the namespace's dim."""

    code = "dimension_mismatch"
    http_status = 400


class FilterError(InvalidInput):
    """A ``where`` filter is malformed; the message names the offending part."""

    code = "filter_error"
    http_status = 400


class LimitExceeded(InvalidInput):
    """A row or a batch is larger than the database's :class:`~simplevector.Limits` allow.

    ``limit`` names the Limits field, ``maximum`` its value, ``actual`` the size found and
    ``row`` the row index (the first row past the limit for batch limits).
    """

    code = "limit_exceeded"
    http_status = 413

    def __init__(self, message: str, *, hint: str | None = None, limit: str | None = None,
                 maximum: int | None = None, actual: int | None = None,
                 row: int | None = None):
        if hint is None and limit is not None:
            fix = ("split the batch" if limit.startswith("max_batch")
                   else "keep large values outside SimpleVector and store a reference")
            hint = f"{fix}, or raise the limit: sv.open(path, limits=sv.Limits({limit}=...))"
        super().__init__(message, hint=hint)
        self.limit, self.maximum, self.actual, self.row = limit, maximum, actual, row


class NamespaceNotFound(SimpleVectorError, KeyError):
    code = "namespace_not_found"
    http_status = 404
    hint = "list namespaces with db.list_namespaces() or `simplevector ns list`"

    def __str__(self) -> str:  # KeyError would repr() the message
        return SimpleVectorError.__str__(self)


class VersionNotFound(NamespaceNotFound):
    code = "version_not_found"
    http_status = 404
    hint = "list versions with `simplevector ns versions NAME`"


class NamespaceExists(SimpleVectorError):
    code = "namespace_exists"
    http_status = 409


class ReadOnlyError(SimpleVectorError):
    code = "read_only"
    http_status = 403
    hint = "open the database without readonly=True to write"


class ClosedError(SimpleVectorError):
    code = "closed"
    http_status = 503
    hint = "open the database again with simplevector.open(path)"


class StorageError(SimpleVectorError):
    """The storage layer failed (I/O, lock, LMDB); the cause is kept as __cause__."""

    code = "storage_error"
    http_status = 500


class LockedError(StorageError):
    code = "locked"
    http_status = 423
    hint = "another process has this database open for writing; open it with readonly=True"


class CorruptionError(StorageError):
    code = "corruption"
    http_status = 500


class FormatVersionError(StorageError):
    code = "format_version"
    http_status = 500


class ChangeFeedGap(StorageError):
    """The change feed no longer holds the requested LSN (the WAL was truncated)."""

    code = "change_feed_gap"
    http_status = 410


class TargetExists(SimpleVectorError):
    """A restore (or snapshot) target already exists and is not empty."""

    code = "target_exists"
    http_status = 409
    hint = "choose another target, or pass force=True (CLI: --force) to replace it"


class NotSupported(SimpleVectorError, NotImplementedError):
    """A feature that is designed but not implemented in this release."""

    code = "not_supported"
    http_status = 501


class DiskFullError(StorageError):
    """A write was refused before its WAL append: free disk space is under the reserve
    (the batch and a floor). Nothing was written; reads go on, and writes resume by
    themselves once space is freed."""

    code = "disk_full"
    http_status = 507
    hint = ("free disk space (old snapshots: `simplevector snapshot prune`, other files); "
            "writes resume without a reopen")


class AuthenticationError(SimpleVectorError):
    """The request carries no API key, or one the server does not accept (unknown,
    expired or revoked). The message never repeats the key."""

    code = "unauthenticated"
    http_status = 401
    hint = "send a valid key as `Authorization: Bearer <key>` (simplevector.connect(url, " \
           "api_key=...)); create one with `simplevector keys create`"


class PermissionDenied(SimpleVectorError):
    """The API key is valid but its role or namespace scope does not allow the request."""

    code = "permission_denied"
    http_status = 403
    hint = "use a key with the role (reader < writer < admin) and namespace scope the " \
           "request needs"


class ModelMismatch(InvalidInput):
    """An embedding function, a query or a write declares a model other than the version's."""

    code = "model_mismatch"
    http_status = 409
    hint = ("attach the embedding function of the version's model, or migrate the "
            "namespace with db.migrate(name, embedding=new_fn)")


class EmbeddingError(SimpleVectorError):
    """An embedding function failed or returned something other than (n, dim) float32."""

    code = "embedding_failed"
    http_status = 502


class BudgetExceeded(SimpleVectorError):
    """A hard budget would be exceeded: refused before the model is called and before
    anything is written."""

    code = "budget_exceeded"
    http_status = 402
    hint = "raise the budget with db.set_budget(...), or wait for the next period"


class RateLimited(SimpleVectorError):
    """A token-bucket rate limit refused the call; ``retry_after`` is seconds to wait."""

    code = "rate_limited"
    http_status = 429
    retry_after: float = 0.0

    def __init__(self, message: str, *, retry_after: float = 0.0, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.retry_after = float(retry_after)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "retry_after": self.retry_after}


class MigrationError(SimpleVectorError):
    """A migration step is not possible in the migration's current state."""

    code = "migration_state"
    http_status = 409


class ShardUnavailable(StorageError):
    """A shard of a cluster (``sv.cluster``) did not answer: its actor is down, restarting
    or timed out. ``shard`` is the first such shard's index, ``shards`` all of them. For a
    write, ``applied_ids`` were acknowledged (durable) by other shards and ``unknown_ids``
    were sent to the failed shard, which may or may not have logged them before it died;
    an upsert is idempotent, so retrying ``unknown_ids`` is safe."""

    code = "shard_unavailable"
    http_status = 503
    hint = ("Ray restarts a dead shard actor; retry shortly, check cl.shards(), or query "
            "with partial=True for the other shards' results")

    def __init__(self, message: str, *, hint: str | None = None, shard: int | None = None,
                 shards: tuple = (), applied_ids: tuple = (), unknown_ids: tuple = ()):
        super().__init__(message, hint=hint)
        self.shard = shard
        self.shards = tuple(shards) if shards else (() if shard is None else (shard,))
        self.applied_ids, self.unknown_ids = tuple(applied_ids), tuple(unknown_ids)


class ShardCountMismatch(InvalidInput):
    """A cluster root was opened with another shard count than it was created with."""

    code = "shard_count_mismatch"
    http_status = 409
    hint = ("open it with the recorded shard count; re-sharding goes through a migration "
            "into a new cluster root")


def _all_subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def error_class_for_code(code: str) -> type[SimpleVectorError]:
    """The error class whose ``code`` is *code* (the root class when unknown)."""
    for cls in _all_subclasses(SimpleVectorError):
        if cls.code == code:
            return cls
    return SimpleVectorError
