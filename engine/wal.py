"""The write-ahead log: SimpleVector's durable record, in front of LMDB.

On disk the log is a directory of append-only segment files, each created whole (``name.tmp``,
fsync, rename, fsync the directory). The segment header, the record frame and the rule that
tells a torn tail from corruption are defined once, in :mod:`.walformat`; recovery (done when
a :class:`WriteAheadLog` is constructed; ``WriteAheadLog.open`` is the same thing as a
classmethod) and iteration both apply that rule: a writer cuts a torn tail off (truncate,
fsync), a reader ignores it, and anything else raises :class:`CorruptionError` naming the
segment file and byte offset. Payloads larger than ``compress_above`` bytes are
zstd-compressed when that makes them smaller, and decompressed transparently when read.

Writes go through :meth:`WriteAheadLog.append` (``os.writev``, no sync) and become durable
with :meth:`WriteAheadLog.sync`, where concurrent callers share one ``fdatasync`` (group
commit). A separate read-only instance (``readonly=True``), in this or another process, can
:meth:`~WriteAheadLog.iter_records` while a writer appends; it stops quietly at a frame that
is still being written.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator

from simplevector.engine.errors import (
    ChangeFeedGap,
    ClosedError,
    CorruptionError,
    InvalidInput,
    ReadOnlyError,
    StorageError,
)
from simplevector.engine.walformat import (
    MAGIC,
    FORMAT_VERSION,
    SEGMENT_SUFFIX,
    _TMP_SUFFIX,
    _HEADER,
    _FRAME,
    _FLAG_ZSTD,
    _MAX_LSN,
    _MAX_PAYLOAD,
    _fdatasync,
    _O_CLOEXEC,
    _storage_error,
    _fsync_dir,
    _segment_name,
    _list_segments,
    _maybe_compress,
    _decode,
    _Stop,
    _read_header,
    _frames,
    bad_frame_error,
    short_header_error,
    encode_frame,
)


__all__ = ["WriteAheadLog", "MAGIC", "FORMAT_VERSION", "SEGMENT_SUFFIX"]


class WriteAheadLog:
    """Segmented write-ahead log in *directory*; recovery runs in the constructor.

    Writer mode (default) creates the directory, sweeps stray ``*.tmp`` files, cuts a torn
    tail and holds the last segment open for appending; one writer per directory (the engine's
    database lock guarantees this). ``readonly=True`` opens nothing for writing, modifies no
    file, ignores a torn tail, and can iterate while a writer in another process appends.

    ``scan_from``: recovery reads only the header of a sealed segment whose records all have
    LSNs <= ``scan_from`` (the engine passes its checkpoint's LSN: nothing below it is
    replayed), so opening costs the WAL tail past the checkpoint, not everything retained for
    consumers, snapshots and the change feed. Those frames are checked when read and by
    :meth:`check` (``Database.verify``).

    Thread-safe. Methods raise :class:`ClosedError` after :meth:`close`; OS failures are
    :class:`StorageError` (cause kept); after a failed ``fdatasync`` or an unrepairable failed
    write the log refuses further writes until reopened (the page cache can no longer be
    trusted to match the file).
    """

    def __init__(self, directory, *, segment_bytes: int = 64 << 20, compress_above: int = 4096,
                 readonly: bool = False, scan_from: int = 0):
        if isinstance(segment_bytes, bool) or not isinstance(segment_bytes, int) or \
                segment_bytes < _HEADER.size + _FRAME.size + 1:
            raise InvalidInput(
                f"segment_bytes must be an int of at least {_HEADER.size + _FRAME.size + 1}, "
                f"got {segment_bytes!r}"
            )
        if (isinstance(compress_above, bool) or not isinstance(compress_above, int)
                or compress_above < 0):
            raise InvalidInput(f"compress_above must be an int >= 0, got {compress_above!r}")
        if isinstance(scan_from, bool) or not isinstance(scan_from, int) or scan_from < 0:
            raise InvalidInput(f"scan_from must be an int >= 0, got {scan_from!r}")
        self._dir = os.fspath(directory)
        self._scan_from = scan_from
        self._segment_bytes = segment_bytes
        self._compress_above = compress_above
        self._readonly = bool(readonly)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closed = False
        self._failed: str | None = None  # why writes are refused, after an I/O failure
        self._segs: list[tuple[str, int]] = []  # writer: retained segments, oldest first
        self._fd: int | None = None  # writer: active (last) segment, open for writing
        self._retired: list[int] = []  # rolled-over fds a running sync may still be using
        self._pos = 0  # writer: end offset of the active segment
        self._seg_records = 0  # writer: records in the active segment
        self._last_lsn = 0
        self._synced_lsn = 0
        self._sync_count = 0
        self._syncing = False
        if not self._readonly:
            try:
                os.makedirs(self._dir, exist_ok=True)
            except OSError as e:
                raise _storage_error("create directory", self._dir, e) from e
            self._sweep_tmp()
        try:
            self._recover()
        except BaseException:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            raise

    @classmethod
    def open(cls, directory, **kwargs) -> "WriteAheadLog":
        """Open (and recover) the log in *directory*; same as the constructor."""
        return cls(directory, **kwargs)

    # ---- recovery -------------------------------------------------------------------------

    def _sweep_tmp(self) -> None:
        removed = False
        try:
            for name in os.listdir(self._dir):
                if name.endswith(_TMP_SUFFIX):
                    os.unlink(os.path.join(self._dir, name))
                    removed = True
        except OSError as e:
            raise _storage_error("sweep temporary files in", self._dir, e) from e
        if removed:
            _fsync_dir(self._dir)

    def _scan(self, segs, scan_from: int):
        """Read the segments ``segs`` as recovery does: ``(last LSN, ends, counts, torn)``,
        raising CorruptionError for damage anywhere but a torn tail of the last one. A
        segment before the last whose records all have LSNs <= ``scan_from`` (the next
        segment starts at or below ``scan_from + 1``) has only its header read: its frames
        are checked when something reads them (:meth:`iter_records`, :meth:`check`)."""
        prev = 0
        ends: list[int] = []  # end of the last whole frame, per segment
        counts: list[int] = []  # whole records, per segment
        torn = False  # the last segment has bytes after its last whole frame
        for i, (path, first) in enumerate(segs):
            is_last = i == len(segs) - 1
            # never the last two: an empty last segment is removed and the one before it
            # becomes the active one, whose end and count recovery needs
            skip = i < len(segs) - 2 and segs[i + 1][1] <= scan_from + 1
            stop = _Stop()
            count, end = 0, 0
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if not _read_header(f, path, first, size):
                        if not is_last:
                            raise short_header_error(path)
                        ends.append(0)
                        counts.append(0)
                        break
                    if first <= prev:
                        raise CorruptionError(
                            f"WAL segment {path} starts at LSN {first}, not above the previous "
                            f"LSN {prev}; LSNs must strictly increase"
                        )
                    end = _HEADER.size
                    if skip:
                        prev = segs[i + 1][1] - 1
                        ends.append(size)
                        counts.append(-1)       # not counted (never the last segment)
                        continue
                    for lsn, _flags, _body, end in _frames(f, path, end, size, prev, first, stop):
                        prev = lsn
                        count += 1
            except OSError as e:
                raise _storage_error("read", path, e) from e
            if stop.reason is not None:
                error = bad_frame_error(path, stop, prev, None if is_last else segs[i + 1][0])
                if error is not None:
                    raise error
                torn = True
            ends.append(end)
            counts.append(count)
        return prev, ends, counts, torn

    def check(self) -> int:
        """Read every frame of every retained segment (CRCs, LSN order, lengths) as recovery
        would with nothing skipped; return the number of segments read. Raises
        CorruptionError naming the segment and offset of the first damage (a torn tail of
        the active segment, a frame still being written, is not damage)."""
        self._check_open()
        segs = _list_segments(self._dir)
        self._scan(segs, 0)
        return len(segs)

    def _recover(self) -> None:
        segs = _list_segments(self._dir)
        prev, ends, counts, torn = self._scan(segs, self._scan_from)
        self._last_lsn = self._synced_lsn = prev
        if self._readonly or not segs:
            return
        if counts[-1] == 0:  # a last segment without a whole record: remove it
            path = segs.pop()[0]
            try:
                os.unlink(path)
            except OSError as e:
                raise _storage_error("remove empty segment", path, e) from e
            _fsync_dir(self._dir)
            ends.pop()
            counts.pop()
            torn = False
            if not segs:
                return
        self._segs = segs
        path, end = segs[-1][0], ends[-1]
        try:
            self._fd = os.open(path, os.O_WRONLY | _O_CLOEXEC)
            if torn:
                os.ftruncate(self._fd, end)
            os.lseek(self._fd, end, os.SEEK_SET)
            _fdatasync(self._fd)  # what a crashed writer left in the page cache is now durable
        except OSError as e:
            raise _storage_error("recover", path, e) from e
        self._pos, self._seg_records = end, counts[-1]

    # ---- state ----------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_lsn(self) -> int:
        """LSN of the newest record (0 when empty). Writer: the last appended; reader: the
        last seen at open or by a later complete :meth:`iter_records`."""
        return self._last_lsn

    @property
    def synced_lsn(self) -> int:
        """Every record with an LSN at or below this is on disk."""
        return self._synced_lsn

    @property
    def sync_count(self) -> int:
        """``fdatasync`` calls made by :meth:`sync`, rollover and :meth:`close` since open."""
        return self._sync_count

    @property
    def first_lsn(self) -> int | None:
        """LSN of the oldest retained record, or None when the log holds none."""
        self._check_open()
        if not self._readonly:
            with self._lock:
                return self._segs[0][1] if self._segs else None
        for lsn, _ in self._iter(0, None, decode=False):
            return lsn
        return None

    def segments(self) -> list[tuple[str, int]]:
        """``(path, first_lsn)`` of each retained segment, oldest first."""
        self._check_open()
        if not self._readonly:
            with self._lock:
                return list(self._segs)
        return _list_segments(self._dir)

    def size_bytes(self) -> int:
        """Total size in bytes of the retained segment files."""
        total = 0
        for path, _ in self.segments():
            try:
                total += os.path.getsize(path)
            except FileNotFoundError:
                pass  # removed by a concurrent truncate_before
            except OSError as e:
                raise _storage_error("stat", path, e) from e
        return total

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"WAL {self._dir} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._readonly:
            raise ReadOnlyError(f"WAL {self._dir} was opened readonly")
        if self._failed is not None:
            raise StorageError(
                f"WAL {self._dir} refuses writes after an earlier I/O failure ({self._failed})",
                hint="close and reopen the database; recovery will verify the log",
            )

    # ---- writing --------------------------------------------------------------------------

    def append(self, lsn: int, payload) -> int:
        """Append one record (no sync) and return its end offset in its segment file.

        *lsn* must be above every LSN appended before; *payload* is bytes-like."""
        if isinstance(lsn, bool) or not isinstance(lsn, int) or not 0 < lsn <= _MAX_LSN:
            raise InvalidInput(f"lsn must be an int in 1..2**64-1, got {lsn!r}")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise InvalidInput(f"payload must be bytes-like, got {type(payload).__name__}")
        raw = memoryview(payload).cast("B") if isinstance(payload, memoryview) else payload
        flags = 0
        body = raw
        if len(raw) > self._compress_above:
            packed = _maybe_compress(raw)
            if packed is not None:
                body, flags = packed, _FLAG_ZSTD
        if len(body) > _MAX_PAYLOAD:
            raise InvalidInput(
                f"payload of {len(body)} bytes exceeds the WAL limit of {_MAX_PAYLOAD}")
        head = encode_frame(lsn, flags, body)
        frame_len = len(head) + len(body)
        with self._cond:
            self._check_writable()
            if lsn <= self._last_lsn:
                raise InvalidInput(
                    f"lsn {lsn} is not above the last appended LSN {self._last_lsn}"
                )
            if (self._fd is not None and self._seg_records
                    and self._pos + frame_len > self._segment_bytes):
                self._roll_over()
            if self._fd is None:
                self._create_segment(lsn)
            self._write(head, body, frame_len)
            self._pos += frame_len
            self._seg_records += 1
            self._last_lsn = lsn
            return self._pos

    def _write(self, head: bytes, body, frame_len: int) -> None:
        fd, path = self._fd, self._segs[-1][0]
        try:
            n = os.writev(fd, [head, body])
            while n < frame_len:  # a short write: finish it, or fail with the reason
                rest = (head + bytes(body))[n:]
                k = os.write(fd, rest)
                if k == 0:
                    raise OSError(errno.EIO, "write made no progress")
                n += k
        except OSError as e:
            self._undo_write(fd, path)
            raise _storage_error("append to", path, e) from e

    def _undo_write(self, fd: int, path: str) -> None:
        """Cut a failed write back to the last whole frame, so later appends stay valid."""
        try:
            os.ftruncate(fd, self._pos)
            os.lseek(fd, self._pos, os.SEEK_SET)
            if self._seg_records == 0:  # the segment was created for this record: drop it
                os.close(fd)
                self._fd = None
                os.unlink(path)
                self._segs.pop()
                _fsync_dir(self._dir)
        except (OSError, StorageError) as e:
            self._failed = f"could not undo a failed write to {path}: {e}"

    def _create_segment(self, first_lsn: int) -> None:
        path = os.path.join(self._dir, _segment_name(first_lsn))
        tmp = path + _TMP_SUFFIX
        fd = None
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC, 0o644)
            header = _HEADER.pack(MAGIC, FORMAT_VERSION, first_lsn)
            if os.write(fd, header) != len(header):
                raise OSError(errno.EIO, "short write of segment header")
            os.fsync(fd)
            os.rename(tmp, path)
        except OSError as e:
            if fd is not None:
                os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise _storage_error("create segment", path, e) from e
        self._fd = fd  # the descriptor follows the file through the rename
        self._segs.append((path, first_lsn))
        self._pos, self._seg_records = _HEADER.size, 0
        try:
            _fsync_dir(self._dir)
        except StorageError as e:
            self._failed = str(e)  # a new segment of unknown durability: stop here
            raise

    def _roll_over(self) -> None:
        """Make the full active segment durable and retire it (lock held throughout, so
        no other append can slip in between the checks and the write)."""
        fd, path = self._fd, self._segs[-1][0]
        try:
            _fdatasync(fd)
        except OSError as e:
            self._failed = f"fdatasync of {path} failed: {e.strerror or e}"
            raise _storage_error("fdatasync", path, e) from e
        self._sync_count += 1
        self._synced_lsn = self._last_lsn
        self._cond.notify_all()
        self._fd = None
        self._retired.append(fd)
        if not self._syncing:  # else the syncer, which may be using fd, closes it
            self._close_retired()

    def _close_retired(self) -> None:
        while self._retired:
            try:
                os.close(self._retired.pop())
            except OSError:
                pass  # already fdatasync'ed; nothing is lost

    def sync(self, upto_lsn: int | None = None) -> None:
        """Return once every record with an LSN at or below *upto_lsn* (default: all
        appended) is on disk. Concurrent callers share one ``fdatasync``: while one runs the
        others wait; then each either is covered or becomes the next syncer, whose
        ``fdatasync`` covers everything appended so far. An *upto_lsn* beyond the last
        appended LSN is clamped to it."""
        with self._cond:
            self._check_writable()
            target = self._last_lsn if upto_lsn is None else min(upto_lsn, self._last_lsn)
            while True:
                if self._synced_lsn >= target:
                    return
                self._check_writable()
                if not self._syncing:
                    break
                self._cond.wait()
            self._syncing = True
            fd, covers = self._fd, self._last_lsn
            path = self._segs[-1][0] if self._segs else self._dir
        err = None
        if fd is not None:
            try:
                _fdatasync(fd)
            except OSError as e:
                err = e
        with self._cond:
            self._syncing = False
            self._close_retired()
            if fd is not None:
                self._sync_count += 1
            if err is not None:
                self._failed = f"fdatasync of {path} failed: {err.strerror or err}"
            else:
                self._synced_lsn = max(self._synced_lsn, covers)
            self._cond.notify_all()
        if err is not None:
            raise _storage_error("fdatasync", path, err) from err

    def seal(self) -> bool:
        """Make the active segment durable and close it for appending, so every record so
        far is in a sealed segment (the next append starts a new one). Returns whether a
        segment was sealed (False when the active segment holds no record)."""
        with self._cond:
            self._check_writable()
            if self._fd is None or not self._seg_records:
                return False
            self._roll_over()
            return True

    def sealed_segments(self) -> list[tuple[str, int]]:
        """``(path, first_lsn)`` of the retained segments no append will touch again (all
        but the active one), oldest first."""
        self._check_open()
        with self._lock:
            if self._readonly:
                return _list_segments(self._dir)[:-1]
            return list(self._segs if self._fd is None else self._segs[:-1])

    def truncate_before(self, lsn: int) -> int:
        """Remove whole segments all of whose records have an LSN below *lsn* (never the
        active segment; the last one only once sealed by :meth:`seal`); return how many were
        removed."""
        if isinstance(lsn, bool) or not isinstance(lsn, int):
            raise InvalidInput(f"lsn must be an int, got {lsn!r}")
        with self._cond:
            self._check_writable()
            removed = 0
            # segment i holds LSNs below segment i+1's first LSN; a sealed last segment
            # holds LSNs up to the last appended one
            while (len(self._segs) >= 2 and self._segs[1][1] <= lsn) or (
                    len(self._segs) == 1 and self._fd is None and self._last_lsn < lsn):
                path = self._segs[0][0]
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    raise _storage_error("remove segment", path, e) from e
                self._segs.pop(0)
                removed += 1
            if removed:
                _fsync_dir(self._dir)
            return removed

    def close(self) -> None:
        """Sync everything appended and close; calling it again does nothing."""
        with self._cond:
            if self._closed:
                return
            while self._syncing:
                self._cond.wait()
            self._close_retired()
            fd, self._fd = self._fd, None
            self._closed = True
            self._cond.notify_all()
            if fd is None:
                return
            path = self._segs[-1][0]
            try:
                if self._failed is None and self._synced_lsn < self._last_lsn:
                    _fdatasync(fd)
                    self._sync_count += 1
                    self._synced_lsn = self._last_lsn
            except OSError as e:
                raise _storage_error("fdatasync", path, e) from e
            finally:
                try:
                    os.close(fd)
                except OSError:
                    pass  # synced above, or the log had already failed: nothing more to lose

    def __enter__(self) -> "WriteAheadLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "readonly" if self._readonly else "writer"
        state = "closed" if self._closed else f"last_lsn={self._last_lsn}"
        return f"<WriteAheadLog {self._dir} {mode} {state}>"

    # ---- reading --------------------------------------------------------------------------

    def iter_records(self, since_lsn: int = 0,
                     upto_lsn: int | None = None) -> Iterator[tuple[int, bytes]]:
        """Yield ``(lsn, payload)`` for retained records with ``since_lsn < lsn <= upto_lsn``,
        in LSN order, reading the segment files. Stops quietly at a frame that is still being
        written (or a torn tail); raises CorruptionError for damage before the tail and
        ChangeFeedGap if a segment it needs is removed while it reads."""
        self._check_open()
        if isinstance(since_lsn, bool) or not isinstance(since_lsn, int):
            raise InvalidInput(f"since_lsn must be an int, got {since_lsn!r}")
        return self._iter(since_lsn, upto_lsn, decode=True)

    def _iter(self, since: int, upto: int | None, *, decode: bool):
        segs = _list_segments(self._dir)
        i = 0
        while i + 1 < len(segs) and segs[i + 1][1] <= since + 1:
            i += 1  # every record of segs[i] is below segs[i + 1]'s first LSN
        prev = None
        while i < len(segs):
            path, first = segs[i]
            try:
                f = open(path, "rb")
            except FileNotFoundError as e:
                raise ChangeFeedGap(
                    f"WAL segment {path} was removed (truncated) while reading records after "
                    f"LSN {since}"
                ) from e
            except OSError as e:
                raise _storage_error("read", path, e) from e
            with f:
                p = first - 1 if prev is None else prev
                offset, retried = None, False
                while True:
                    try:
                        size = os.fstat(f.fileno()).st_size
                        if offset is None:
                            if not _read_header(f, path, first, size):
                                if i < len(segs) - 1:
                                    raise short_header_error(path)
                                return  # being created, or empty after a crash
                            offset = _HEADER.size
                        stop = _Stop()
                        expect = first if offset == _HEADER.size else None
                        frames = _frames(f, path, offset, size, p, expect, stop)
                        for lsn, flags, body, offset in frames:
                            p = lsn
                            if upto is not None and lsn > upto:
                                return
                            if lsn > since:
                                yield lsn, (_decode(flags, body) if decode else None)
                    except OSError as e:
                        raise _storage_error("read", path, e) from e
                    if i < len(segs) - 1:  # a later segment existed before this read
                        if stop.reason is not None:
                            raise bad_frame_error(path, stop, p, segs[i + 1][0])
                        break
                    newer = [s for s in _list_segments(self._dir) if s[1] > first]
                    if newer:  # the writer rolled over: this segment is complete now
                        segs = segs[: i + 1] + newer
                        continue
                    if stop.reason is None:
                        break
                    if not retried:  # maybe a frame in flight: look once more
                        retried = True
                        continue
                    error = bad_frame_error(path, stop, p, None)
                    if error is not None:
                        raise error
                    break  # torn or in-flight tail: stop quietly
            prev = p
            i += 1
        if self._readonly and prev is not None and upto is None:
            with self._lock:
                self._last_lsn = max(self._last_lsn, prev)
