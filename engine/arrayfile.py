"""Two engine-owned file kinds that live beside LMDB (format 2, docs/architecture.md).

* :class:`RowFile`: a version's float32 rows, row ``p`` at byte ``p * dim * 4``, append-only
  (rows never change in place). Mapped with ``mmap``: queries read rows where they lie, in
  the page cache, and the Python heap never holds them. The file grows in chunks (sparse, so
  the unwritten tail takes no disk) and is remapped when it does; an older mapping stays
  valid for the rows it covers, so a query holding it is never torn.
* array bundles (:func:`write_bundle`, :func:`read_bundle`): one file holding named numpy
  arrays plus a msgpack header (with its own CRC-32), each array 64-byte aligned and with
  its CRC-32 in the header, read back as views of one read-only mapping. A checkpoint
  writes one bundle per version; reopening maps it in O(1).

Durability: rows are written before the LMDB transaction that records them; a checkpoint
``fsync``s every row file before it records its LSN, and recovery rewrites the rows of every
WAL record after the checkpoint (the same bytes at the same positions), so a row file is
always complete up to what LMDB and the WAL say, whatever was lost from the page cache.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib

import msgpack
import numpy as np

from .errors import CorruptionError, StorageError

#: Rows are added to the file this many at least at a time (x the row size), or a quarter
#: of what it holds, whichever is more: few remaps, little sparse slack.
MIN_GROWTH_ROWS = 4096

#: Bundles since format 3 keep a CRC-32 of their header after it; SVARR002 bundles (format
#: 2 checkpoints an upgrade carries over) have none and are still read.
_MAGIC = b"SVARR003"
_MAGIC_NO_HEADER_CRC = b"SVARR002"
_HEAD = struct.Struct("<8sQ")
_HCRC = struct.Struct("<I")
_ALIGN = 64


class RowFile:
    """The rows of one namespace version, in ``<db>/rows/<vid>.f32``."""

    def __init__(self, path: str, dim: int, *, readonly: bool = False):
        self.path = path
        self.dim = int(dim)
        self.readonly = readonly
        self.row_bytes = self.dim * 4
        flags = os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT
        try:
            self._fd = os.open(path, flags, 0o644)
        except OSError as e:
            raise StorageError(f"cannot open the row file {path}: {e}") from e
        self._mm = None
        self._X = np.zeros((0, self.dim), np.float32)
        self._map()

    @property
    def capacity(self) -> int:
        return self._X.shape[0]

    def _map(self):
        size = os.fstat(self._fd).st_size
        rows = size // self.row_bytes
        if rows == 0:
            self._mm, self._X = None, np.zeros((0, self.dim), np.float32)
            return
        access = mmap.ACCESS_READ if self.readonly else mmap.ACCESS_WRITE
        mm = mmap.mmap(self._fd, rows * self.row_bytes, access=access)
        X = np.frombuffer(mm, dtype=np.float32).reshape(rows, self.dim)
        # a view keeps its mapping alive: queries holding an old view keep reading it
        self._mm, self._X = mm, X

    def base(self) -> np.ndarray:
        """The whole current mapping (its identity changes when the file is mapped again)."""
        return self._X

    def rows(self, n: int) -> np.ndarray:
        """Rows ``0..n-1`` as a (read-only for readers) view of the mapping."""
        if n > self.capacity:
            self._map()                     # another process grew the file
            if n > self.capacity:
                raise CorruptionError(
                    f"row file {self.path} holds {self.capacity} rows; the catalog needs {n}",
                    hint="restore from a snapshot, or run `simplevector verify` for details")
        return self._X[:n]

    def write(self, start: int, rows: np.ndarray):
        """Rows ``start..start+len(rows)-1`` (the file grows as needed)."""
        m = len(rows)
        need = start + m
        if need > self.capacity:
            grow = max(MIN_GROWTH_ROWS, self.capacity // 4, need - self.capacity)
            try:
                os.ftruncate(self._fd, (self.capacity + grow) * self.row_bytes)
            except OSError as e:
                raise StorageError(f"cannot grow the row file {self.path}: {e}") from e
            self._map()
        self._X[start:need] = rows

    def sync(self):
        if self._mm is not None and not self.readonly:
            try:
                self._mm.flush()
                os.fsync(self._fd)          # the file's size too (it grew by ftruncate)
            except OSError as e:
                raise StorageError(f"cannot sync the row file {self.path}: {e}") from e

    def allocated_bytes(self) -> int:
        """Bytes the file takes on disk (its unwritten sparse tail is not counted)."""
        return os.fstat(self._fd).st_blocks * 512

    def trim(self, n: int):
        """Give back the sparse slack past row ``n`` (the writer, at close)."""
        if not self.readonly and self._fd is not None and n < self.capacity:
            os.ftruncate(self._fd, n * self.row_bytes)

    def close(self):
        # the mapping itself is released when the last view of it goes away
        self._mm = None
        self._X = np.zeros((0, self.dim), np.float32)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def write_bundle(path: str, meta: dict, arrays: dict) -> int:
    """Write ``meta`` (msgpack-able) and ``arrays`` to ``path`` and fsync it; the bytes."""
    entries, offset = {}, 0
    blobs = []
    for name, value in arrays.items():
        arr = np.ascontiguousarray(value)
        offset = -(-offset // _ALIGN) * _ALIGN
        raw = memoryview(arr).cast("B") if arr.size else b""
        entries[name] = [arr.dtype.str, list(arr.shape), offset, arr.nbytes,
                         zlib.crc32(raw) & 0xFFFFFFFF]
        blobs.append((offset, raw))
        offset += arr.nbytes
    header = msgpack.packb({"meta": meta, "arrays": entries}, use_bin_type=True)
    data_start = -(-(_HEAD.size + len(header) + _HCRC.size) // _ALIGN) * _ALIGN
    with open(path, "wb") as f:
        f.write(_HEAD.pack(_MAGIC, len(header)))
        f.write(header)
        f.write(_HCRC.pack(zlib.crc32(header) & 0xFFFFFFFF))
        for off, raw in blobs:
            f.seek(data_start + off)
            f.write(raw)
        f.truncate(data_start + offset)
        f.flush()
        os.fsync(f.fileno())
    return data_start + offset


def read_bundle(path: str, *, check: bool = False) -> tuple[dict, dict]:
    """(meta, arrays) of a bundle; arrays are views of one private mapping.
    ``check=True`` verifies every array's CRC-32 (verify does; reopening does not)."""
    try:
        header, arrays = _map_bundle(path, check)
    except FileNotFoundError as e:
        raise CorruptionError(f"cannot read the array bundle {path}: {e}") from e
    return header["meta"], arrays


def _map_bundle(path: str, check: bool) -> tuple[dict, dict]:
    """(header, arrays) from one mapping of the file. Once mapped, the arrays stay readable
    even if a later checkpoint unlinks the file (verify reads a bundle while one may).
    A missing file raises FileNotFoundError; anything unreadable, CorruptionError."""
    try:
        with open(path, "rb") as f:
            header, data_start = _read_header(f, path)
            size = os.fstat(f.fileno()).st_size
            # copy-on-write and never written: the arrays are writable numpy arrays (the
            # numba kernels are compiled for those) whose pages stay the file's
            mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) if size else b""
    except FileNotFoundError:
        raise
    except (OSError, struct.error, ValueError, msgpack.UnpackException) as e:
        raise CorruptionError(f"cannot read the array bundle {path}: {e}") from e
    buf = memoryview(mm)
    arrays = {}
    try:
        if not isinstance(header.get("meta"), dict):
            raise ValueError("it has no meta")
        for name, (dtype, shape, off, nbytes, crc) in header["arrays"].items():
            start = data_start + off
            if start + nbytes > size:
                raise CorruptionError(
                    f"array bundle {path}: {name!r} runs past the end of the file")
            raw = buf[start:start + nbytes]
            if check and (zlib.crc32(raw) & 0xFFFFFFFF) != crc:
                raise CorruptionError(f"array bundle {path}: {name!r} fails its checksum")
            arrays[name] = np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)
        return header, arrays
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # a header of the wrong shape
        raise CorruptionError(f"array bundle {path}: its header is not valid: {e}") from e


def _read_header(f, path: str) -> tuple[dict, int]:
    """(header, offset of the data) of an open bundle; its header CRC-32 checked."""
    magic, hlen = _HEAD.unpack(f.read(_HEAD.size))
    if magic not in (_MAGIC, _MAGIC_NO_HEADER_CRC):
        raise CorruptionError(f"{path} is not a SimpleVector array bundle")
    if hlen > os.fstat(f.fileno()).st_size:
        raise CorruptionError(f"array bundle {path}: its header length {hlen} runs past the "
                              "end of the file")
    raw = f.read(hlen)
    extra = 0
    if magic == _MAGIC:
        extra = _HCRC.size
        (want,) = _HCRC.unpack(f.read(_HCRC.size))
        if (zlib.crc32(raw) & 0xFFFFFFFF) != want:
            raise CorruptionError(f"array bundle {path}: its header fails its checksum")
    header = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    if not isinstance(header, dict) or not isinstance(header.get("arrays"), dict):
        raise CorruptionError(f"array bundle {path}: its header is not valid")
    return header, -(-(_HEAD.size + hlen + extra) // _ALIGN) * _ALIGN


def inspect_bundle(path: str) -> tuple[dict | None, dict | None, list]:
    """(meta, arrays, damage) of a bundle from one mapping. Damage is one string per finding
    (empty: every array passes its CRC-32): an unreadable header, or each array that runs
    past the file or fails its checksum, by name; meta and arrays are None when the header
    cannot be read. A missing file raises FileNotFoundError: the caller decides whether that
    is damage or a checkpoint that replaced this one meanwhile."""
    try:
        header, arrays = _map_bundle(path, False)
    except CorruptionError as e:
        return None, None, [str(e)]
    out = []
    for name, entry in header["arrays"].items():
        arr = arrays[name]
        raw = memoryview(arr).cast("B") if arr.size else b""
        if (zlib.crc32(raw) & 0xFFFFFFFF) != entry[4]:
            out.append(f"array bundle {path}: {name!r} fails its checksum")
    return header["meta"], arrays, out
