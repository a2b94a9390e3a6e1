"""Every LMDB sub-database, its key layout, and the on-disk format version, in one place.

Keys are built only by the helpers below so that the layout is written down once.

| sub-db    | key                                  | value                                      |
|-----------|--------------------------------------|--------------------------------------------|
| meta      | ascii name                           | msgpack scalar (format, applied LSN, ...)  |
| catalog   | b"v" + vid (u32 BE)                  | msgpack version config                     |
| ids       | vid + encoded external id            | struct '<QII': rowid, CRC-32 of the row's  |
|           |                                      | stored float32 bytes, CRC-32 of the key    |
|           |                                      | bytes + the value's first 12 bytes         |
| records   | vid + rowid                          | CRC-32 of the msgpack bytes (u32 LE) +     |
|           |                                      | msgpack [external id, metadata, document]  |
|           |                                      | or [id, metadata, document, provenance]    |
| counters  | b"rowid" + vid                       | next rowid (u64 BE)                        |
|           | b"gen" + vid                         | row file generation (u64 BE; absent = 0)   |
| ops       | utf-8 key chosen by the ops layer    | msgpack (histogram totals, alert events)   |

Format 3 (the current one) adds the checksums of the ids and records values above: every
row, record and id entry carries one, written in the same transaction as the data, so
``verify`` (engine/integrity.py) can tell a damaged entry from a missing one and name it.
Id entries and records are written and read only through :func:`id_value` /
:func:`parse_id_value` and :func:`record_value` / :func:`parse_record` (also by
compaction and the upgrade), so the layout is written down here once.

Format 2 keeps each row once, outside LMDB: ``<db>/rows/<vid>.f32`` holds a version's
float32 rows at ``rowid * dim * 4`` (a rowid is the row's position). Checkpoints are array
bundles under ``<db>/ckpt/<lsn>/`` (engine/segments.py). Format 1 kept rows in a
``vectors`` sub-database and checkpoint segments (rows again) in ``segments``; it is
converted by ``simplevector upgrade PATH`` (engine/upgrade.py), through format 2 (whose
ids values were a bare u64 BE rowid and records bare msgpack) to format 3.

A row has a record when it has metadata, a document or provenance (a small msgpack map the
ops layer gives ``upsert(..., provenance=)``: content hash, model, embedded-at time, source
``updated_at``). Provenance travels in the same WAL record as the row's vector and is
written by the LMDB transaction that applies it; 3-element records (no provenance) stay
valid.

A namespace alias (name -> live version) is part of each version's config (``live``),
so promotion rewrites two catalog rows in one transaction.
"""

from __future__ import annotations

import struct
import zlib

import msgpack
import numpy as np

from .errors import CorruptionError

FORMAT_VERSION = 3
#: Formats that `simplevector upgrade` converts from.
UPGRADABLE_FORMATS = (1, 2)

SUBDBS = (b"meta", b"catalog", b"ids", b"records", b"counters", b"ops")
#: Format 1 had these too (rows, and checkpoint segments that copied the rows).
FORMAT1_SUBDBS = (b"vectors", b"segments")

META_FORMAT = b"format_version"
META_APPLIED_LSN = b"applied_lsn"
META_CHECKPOINT_LSN = b"checkpoint_lsn"
META_NEXT_VID = b"next_vid"
META_CREATED = b"created"
#: msgpack {lsn, dir, next_vid, configs}: the last checkpoint and the catalog at its LSN
META_SNAPSHOT = b"snapshot"

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")

#: Longest external string id, in UTF-8 bytes (LMDB keys are at most 511 bytes).
MAX_ID_BYTES = 480


def vid_prefix(vid: int) -> bytes:
    return _U32.pack(vid)


def catalog_key(vid: int) -> bytes:
    return b"v" + _U32.pack(vid)


def encode_id(extid) -> bytes:
    """Order-preserving, type-tagged encoding of an external id (str or int)."""
    if isinstance(extid, str):
        return b"s" + extid.encode("utf-8")
    # ints: flip the sign bit so that byte order equals numeric order
    return b"i" + _U64.pack(extid + (1 << 63))


def decode_id(raw: bytes):
    if raw[:1] == b"s":
        return bytes(raw[1:]).decode("utf-8")
    return _U64.unpack(bytes(raw[1:9]))[0] - (1 << 63)


def id_key(vid: int, extid) -> bytes:
    return _U32.pack(vid) + encode_id(extid)


def row_key(vid: int, rowid: int) -> bytes:
    return _U32.pack(vid) + _U64.pack(rowid)


def rowid_of_key(key: bytes) -> int:
    return _U64.unpack(bytes(key[4:12]))[0]


def pack_u64(value: int) -> bytes:
    return _U64.pack(value)


def unpack_u64(raw: bytes) -> int:
    return _U64.unpack(bytes(raw))[0]


def counter_key(vid: int) -> bytes:
    return b"rowid" + _U32.pack(vid)


def gen_key(vid: int) -> bytes:
    """The version's row file generation (absent: 0), bumped by each compaction."""
    return b"gen" + _U32.pack(vid)


def segment_key(vid: int, name: str) -> bytes:
    return _U32.pack(vid) + b":" + name.encode("ascii")


_ROWKEY = np.dtype([("vid", ">u4"), ("rowid", ">u8")])


def row_keys(vid: int, rowids) -> list:
    """Keys of many rows as bytes, built in numpy (a void-dtype ``tolist`` makes the bytes
    objects in C and, unlike the "S" dtype, keeps trailing zero bytes)."""
    arr = np.empty(len(rowids), _ROWKEY)
    arr["vid"] = vid
    arr["rowid"] = rowids
    return arr.view("V12").tolist()


def u64_values(values) -> list:
    return np.asarray(values, dtype=">u8").view("V8").tolist()


def rows_as_bytes(matrix: np.ndarray) -> list:
    """One bytes object per row of a C-contiguous 2-D array."""
    return matrix.view(np.dtype(("V", matrix.shape[1] * matrix.itemsize))).reshape(-1).tolist()


_INTKEY = np.dtype([("vid", ">u4"), ("tag", "S1"), ("id", ">u8")])


def id_keys(vid: int, ids: list) -> list:
    if ids and type(ids[0]) is int and set(map(type, ids)) == {int}:
        arr = np.empty(len(ids), _INTKEY)
        arr["vid"] = vid
        arr["tag"] = b"i"
        arr["id"] = np.asarray(ids, dtype=np.int64).view(np.uint64) ^ np.uint64(1 << 63)
        return arr.view("V13").tolist()
    prefix = _U32.pack(vid)
    ps, pi = prefix + b"s", prefix + b"i"
    pack = _U64.pack
    return [ps + e.encode("utf-8") if type(e) is str else pi + pack(e + (1 << 63)) for e in ids]


def scan_prefix(txn, db, prefix: bytes, *, values: bool = True):
    """(key, value) of every entry of ``db`` whose key starts with ``prefix``, in key order
    (only keys with ``values=False``). Keys are bytes, or memoryviews in a buffers txn."""
    cur = txn.cursor(db=db)
    if not cur.set_range(prefix):
        return
    n = len(prefix)
    items = cur.iternext(keys=True, values=values)
    for item in items:
        key = item[0] if values else item
        if key[:n] != prefix:
            return
        yield item


# -- checksummed values (format 3) ---------------------------------------------------------
_IDVAL = struct.Struct("<QII")
_IDHEAD = struct.Struct("<QI")
_CRC = struct.Struct("<I")
#: Bytes of an id entry's value.
ID_VALUE_BYTES = _IDVAL.size
_CORRUPT_HINT = ("run `simplevector verify` for every damaged entry, then `simplevector "
                 "repair`; damaged primary data comes back from a snapshot and the WAL "
                 "archive (docs/runbook.md, \"Recover from a corruption finding\")")


def crc32(data, start: int = 0) -> int:
    return zlib.crc32(data, start) & 0xFFFFFFFF


def row_crc(row) -> int:
    """CRC-32 of one stored row's float32 bytes (as the row file holds them)."""
    return crc32(np.ascontiguousarray(row, dtype="<f4"))


def row_crcs(rows: np.ndarray) -> list:
    """:func:`row_crc` of every row of a 2-D float32 matrix."""
    rows = np.ascontiguousarray(rows, dtype="<f4")
    crc = zlib.crc32                # each row through the buffer protocol, no bytes copy
    return [crc(r) & 0xFFFFFFFF for r in rows]


def describe_key(sub: bytes, key) -> str:
    """A person's name for an ids or records key: ``v<vid> id 'a'`` / ``v<vid> rowid 7``."""
    key = bytes(key)
    try:
        vid = _U32.unpack(key[:4])[0]
        if sub == b"ids":
            return f"v{vid} id {decode_id(key[4:])!r}"
        if sub == b"records":
            return f"v{vid} rowid {rowid_of_key(key)}"
    except Exception:
        pass
    return f"key {key.hex()}"


def id_value(key: bytes, rowid: int, row_crc: int) -> bytes:
    """The value of the id entry ``key``: rowid, the row's CRC-32, and a CRC-32 of the key
    and those 12 bytes (so an entry moved to another key fails too)."""
    head = _IDHEAD.pack(rowid, row_crc)
    return head + _CRC.pack(zlib.crc32(head, zlib.crc32(key)) & 0xFFFFFFFF)


def id_values(keys: list, rowids, crcs) -> list:
    """:func:`id_value` of many entries."""
    pack, crc, cpack = _IDHEAD.pack, zlib.crc32, _CRC.pack
    out = []
    for key, rowid, rc in zip(keys, rowids, crcs):
        head = pack(rowid, rc)
        out.append(head + cpack(crc(head, crc(key)) & 0xFFFFFFFF))
    return out


def parse_id_value(key, raw) -> tuple[int, int]:
    """(rowid, row CRC-32) of an id entry; CorruptionError naming it when its length or
    checksum is wrong."""
    raw = bytes(raw)
    key = bytes(key)
    if len(raw) != ID_VALUE_BYTES:
        raise CorruptionError(f"id entry {describe_key(b'ids', key)} has {len(raw)} bytes; "
                              f"expected {ID_VALUE_BYTES}", hint=_CORRUPT_HINT)
    rowid, rc, check = _IDVAL.unpack(raw)
    if (zlib.crc32(raw[:12], zlib.crc32(key)) & 0xFFFFFFFF) != check:
        raise CorruptionError(f"id entry {describe_key(b'ids', key)} fails its checksum",
                              hint=_CORRUPT_HINT)
    return rowid, rc


def record_value(packed: bytes) -> bytes:
    """The value of a record: CRC-32 (u32 LE) of the msgpack bytes, then those bytes."""
    return _CRC.pack(crc32(packed)) + packed


def record_bytes(key, raw) -> bytes:
    """The checked msgpack bytes of a record value (CorruptionError naming the key)."""
    raw = bytes(raw)
    if len(raw) < 5 or _CRC.unpack(raw[:4])[0] != crc32(raw[4:]):
        raise CorruptionError(f"record {describe_key(b'records', key)} fails its checksum",
                              hint=_CORRUPT_HINT)
    return raw[4:]


def parse_record(key, raw) -> list:
    """The decoded record ``[id, metadata, document(, provenance)]`` of a record value;
    CorruptionError naming the key when its checksum fails or it does not decode."""
    body = record_bytes(key, raw)
    try:
        rec = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as e:
        raise CorruptionError(f"record {describe_key(b'records', key)} does not decode: {e}",
                              hint=_CORRUPT_HINT) from e
    if not isinstance(rec, list) or len(rec) not in (3, 4):
        raise CorruptionError(f"record {describe_key(b'records', key)} is not [id, metadata, "
                              "document(, provenance)]", hint=_CORRUPT_HINT)
    return rec
