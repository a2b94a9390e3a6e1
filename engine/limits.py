"""Size limits on what one upsert may write.

Limits are an open option (``sv.open(path, limits=sv.Limits(...))``), not stored in the
database: each process that opens a directory for writing applies its own. Raising a limit
later never invalidates rows already written, and lowering one only affects new writes.
A batch over any limit raises :class:`~simplevector.engine.errors.LimitExceeded` naming the
row, the limit and the size, before anything is logged (the batch writes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from .errors import InvalidInput

KIB, MIB = 1 << 10, 1 << 20


@dataclass(frozen=True)
class Limits:
    """Per-upsert size limits; every field is an int >= 1.

    max_document_bytes: UTF-8 bytes of one document (default 1 MiB). A document is text
        stored beside its vector for retrieval; embedding models read a few thousand tokens
        (tens of KiB), so 1 MiB leaves room while keeping a 100 MB blob out of the WAL.
    max_metadata_bytes: msgpack-encoded bytes of one row's metadata dict (default 64 KiB).
        Metadata is kept in memory for every row and indexed for filters: it is meant for
        small fields, not payloads.
    max_batch_rows: rows in one upsert (default 100,000). One upsert is one WAL record,
        built and applied in memory at once; the bench, the demo and ``simplevector import``
        use batches of 1,000-10,000.
    max_batch_bytes: payload of one upsert: vectors (rows x dim x 4) + metadata (msgpack) +
        documents (UTF-8), ids not counted (default 256 MiB; e.g. 65,000 rows of dim 1024).
        It bounds the size of one WAL record and the memory one write needs.
    """

    max_document_bytes: int = 1 * MIB
    max_metadata_bytes: int = 64 * KIB
    max_batch_rows: int = 100_000
    max_batch_bytes: int = 256 * MIB

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                    or value < 1):
                raise InvalidInput(
                    f"Limits.{f.name} = {value!r} is not valid; expected an int >= 1")
            object.__setattr__(self, f.name, int(value))


def limits_value(limits) -> Limits:
    """``limits`` as a Limits (None means the defaults)."""
    if limits is None:
        return Limits()
    if not isinstance(limits, Limits):
        raise InvalidInput(
            f"limits {limits!r:.60} has type {type(limits).__name__}; expected a "
            "simplevector.Limits (or None for the defaults)")
    return limits
