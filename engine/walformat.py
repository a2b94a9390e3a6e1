"""The WAL's on-disk format, written once: segment files, the record frame, and the rule
that tells a torn tail from corruption. Used by both recovery and iteration in
:mod:`.wal` (docs/architecture.md, "Durability rules").

A segment is named ``{first_lsn:020d}.wal`` and starts with a 14-byte header::

    magic b"SVWAL" | format version u8 (=1) | first LSN u64

followed by records, each framed (little-endian)::

    length u32 | crc32 u32 | lsn u64 | flags u8 | payload

``length`` counts the bytes after the crc field (``9 + len(payload)``); ``crc32`` is
``zlib.crc32`` over those same bytes. Flag bit 0: the payload is zstd-compressed.

The rule (:func:`bad_frame_error`): a bad or incomplete frame in the *last* segment with
no valid frame after it is a torn tail (a crash mid-append): a writer cuts it off, a reader
stops there. Anything else (a bad frame with a valid frame after it, a bad frame in an
earlier segment, an LSN that does not increase, a header shorter than its size in an
earlier segment) is a :class:`CorruptionError` naming the segment file and byte offset.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib

import numpy as np
import zstandard

from simplevector.engine.errors import CorruptionError, FormatVersionError, StorageError

MAGIC = b"SVWAL"
FORMAT_VERSION = 1
SEGMENT_SUFFIX = ".wal"
_TMP_SUFFIX = ".tmp"

_HEADER = struct.Struct("<5sBQ")  # magic, version, first lsn
_FRAME = struct.Struct("<IIQB")  # length, crc32, lsn, flags
_LEN_CRC = 8  # bytes of the frame before what length and crc32 cover
_BODY_FIXED = _FRAME.size - _LEN_CRC  # lsn + flags
_FLAG_ZSTD = 0x01
_MAX_LSN = (1 << 64) - 1
_MAX_PAYLOAD = 0xFFFFFFFF - _BODY_FIXED
_ZSTD_LEVEL = 1  # the WAL is short-lived: favour speed over ratio
_PROBE_ABOVE = 64 << 10  # payloads larger than this are probed before compressing
_PROBE_SLICE = 8 << 10
_SCAN_CHUNK = 1 << 20

_fdatasync = getattr(os, "fdatasync", os.fsync)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)

# zstd contexts are not thread-safe: one compressor and one decompressor per thread.
_tls = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_tls, "cctx", None)
    if c is None:
        c = _tls.cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_tls, "dctx", None)
    if d is None:
        d = _tls.dctx = zstandard.ZstdDecompressor()
    return d


def _storage_error(action: str, path: str, e: OSError) -> StorageError:
    return StorageError(f"WAL could not {action} {path}: {e.strerror or e}")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise _storage_error("fsync directory", path, e) from e


def _segment_name(first_lsn: int) -> str:
    return f"{first_lsn:020d}{SEGMENT_SUFFIX}"


def _list_segments(directory: str) -> list[tuple[str, int]]:
    """(path, first_lsn) of every segment in *directory*, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise _storage_error("list", directory, e) from e
    out = []
    for name in names:
        stem = name[: -len(SEGMENT_SUFFIX)]
        if name.endswith(SEGMENT_SUFFIX) and len(stem) == 20 and stem.isdigit():
            out.append((os.path.join(directory, name), int(stem)))
    out.sort(key=lambda s: s[1])
    return out


def _maybe_compress(raw) -> bytes | None:
    """The zstd form of *raw* when it is smaller, else None. A large payload is probed
    first (three slices): float vectors save well under 1/8 yet cost about as much to
    compress as an fdatasync, so they are stored raw."""
    cctx = _compressor()
    n = len(raw)
    if n > _PROBE_ABOVE:
        view = memoryview(raw)
        mid = n // 2
        sample = b"".join((view[:_PROBE_SLICE], view[mid : mid + _PROBE_SLICE],
                           view[-_PROBE_SLICE:]))
        if len(cctx.compress(sample)) > len(sample) - len(sample) // 8:
            return None
    packed = cctx.compress(raw)
    return packed if len(packed) < n else None


def _decode(flags: int, body: bytes) -> bytes:
    return _decompressor().decompress(body) if flags & _FLAG_ZSTD else body


class _Stop:
    """Where a scan of one segment stopped: clean end (reason None) or a bad frame."""

    __slots__ = ("offset", "reason", "size", "prev_lsn")

    def __init__(self) -> None:
        self.offset = 0
        self.reason: str | None = None
        self.size = 0
        self.prev_lsn = 0


def _read_header(f, path: str, name_lsn: int, size: int) -> bool:
    """Check a segment header; False when the file is shorter than a header."""
    if size < _HEADER.size:
        return False
    f.seek(0)
    magic, version, first_lsn = _HEADER.unpack(f.read(_HEADER.size))
    if magic != MAGIC:
        raise CorruptionError(f"WAL segment {path} does not start with {MAGIC!r} (found {magic!r})")
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"WAL segment {path} has format version {version}; this build reads {FORMAT_VERSION}"
        )
    if first_lsn != name_lsn:
        raise CorruptionError(
            f"WAL segment {path} header says first LSN {first_lsn}, its name says {name_lsn}"
        )
    return True


def _frames(f, path, offset, size, prev_lsn, expect_lsn, stop):
    """Yield ``(lsn, flags, body, end_offset)`` for each whole, valid frame from *offset*
    up to *size*. At a frame that is incomplete or fails verification, fill *stop* and end.
    A valid frame whose LSN does not increase raises CorruptionError."""
    stop.size = size
    f.seek(offset)
    while True:
        stop.offset, stop.prev_lsn = offset, prev_lsn
        if offset >= size:
            return
        head = f.read(_FRAME.size)
        if len(head) < _FRAME.size:
            stop.reason = "is incomplete"
            return
        length, crc, lsn, flags = _FRAME.unpack(head)
        if length < _BODY_FIXED:
            stop.reason = f"has an invalid length {length}"
            return
        if offset + _LEN_CRC + length > size:
            stop.reason = "is incomplete"
            return
        need = length - _BODY_FIXED
        body = f.read(need)
        if len(body) < need:
            stop.reason = "is incomplete"
            return
        if zlib.crc32(body, zlib.crc32(head[_LEN_CRC:])) != crc:
            stop.reason = "fails its checksum"
            return
        if flags & ~_FLAG_ZSTD:
            stop.reason = f"has unknown flags {flags:#x}"
            return
        if lsn <= prev_lsn:
            raise CorruptionError(
                f"WAL record at {path} offset {offset} has LSN {lsn}, not above the previous "
                f"LSN {prev_lsn}; LSNs must strictly increase"
            )
        if expect_lsn is not None and lsn != expect_lsn:
            raise CorruptionError(
                f"WAL record at {path} offset {offset} has LSN {lsn}; the first record of "
                f"this segment must have LSN {expect_lsn}"
            )
        expect_lsn = None
        offset += _LEN_CRC + length
        prev_lsn = lsn
        yield lsn, flags, body, offset


def _find_valid_frame_after(path: str, start: int, end: int, prev_lsn: int) -> int | None:
    """Offset of the first valid frame (whole, crc ok, LSN above *prev_lsn*) starting in
    ``[start, end)`` of *path*, else None. Candidates are filtered with numpy, so a long
    damaged region costs a few passes over memory, not a Python step per byte."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(max(0, end - start))
    except OSError as e:
        raise _storage_error("read", path, e) from e
    n = len(data)
    last_start = n - _FRAME.size  # last offset where a frame header fits
    if last_start < 0:
        return None
    buf = np.frombuffer(data, dtype=np.uint8)
    for c0 in range(0, last_start + 1, _SCAN_CHUNK):
        c1 = min(c0 + _SCAN_CHUNK, last_start + 1)
        length = buf[c0:c1].astype(np.int64)
        for k in (1, 2, 3):
            length |= buf[c0 + k : c1 + k].astype(np.int64) << (8 * k)
        offs = np.arange(c0, c1, dtype=np.int64)
        ok = ((length >= _BODY_FIXED) & (offs + _LEN_CRC + length <= n)
              & (buf[c0 + 16 : c1 + 16] <= 1))
        for j in np.flatnonzero(ok):
            o = int(c0 + j)
            length_o, crc, lsn, _flags = _FRAME.unpack_from(data, o)
            if lsn <= prev_lsn:
                continue
            body = memoryview(data)[o + _LEN_CRC : o + _LEN_CRC + length_o]
            if zlib.crc32(body) == crc:
                return start + o
    return None


def bad_frame_error(path: str, stop: "_Stop", prev_lsn: int,
                    next_segment: str | None) -> CorruptionError | None:
    """The torn-tail-vs-corruption rule for a scan of *path* that stopped at a bad frame:
    None when it is a torn tail (last segment, nothing valid after it), else the error."""
    if next_segment is not None:
        return CorruptionError(
            f"WAL record at {path} offset {stop.offset} {stop.reason}; later segment "
            f"{next_segment} exists, so this is not a torn tail")
    later = _find_valid_frame_after(path, stop.offset + 1, stop.size, prev_lsn)
    if later is not None:
        return CorruptionError(
            f"WAL record at {path} offset {stop.offset} {stop.reason}; records after it "
            f"exist (a valid record at offset {later}), so this is not a torn tail")
    return None


def short_header_error(path: str) -> CorruptionError:
    """A segment shorter than its header is only acceptable as the last segment."""
    return CorruptionError(f"WAL segment {path} is shorter than its header")


def encode_frame(lsn: int, flags: int, body) -> bytes:
    """The frame head (length, crc32, lsn, flags) for *body*."""
    tail = struct.pack("<QB", lsn, flags)
    crc = zlib.crc32(body, zlib.crc32(tail))
    return struct.pack("<II", _BODY_FIXED + len(body), crc) + tail
