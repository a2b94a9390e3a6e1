"""The WAL archive: sealed WAL segments copied out of the database before they may go.

``sv.open(path, wal_archive=ARCHIVE)`` keeps a copy of every sealed segment (one no append
touches again) in ARCHIVE, under the segment's own name (``{first_lsn:020d}.wal``), so a
restore can replay any LSN after the oldest snapshot (engine/snapshot.py, point-in-time
restore). Each copy is written like every file outside LMDB (STYLE.md "Durability"):
``name.tmp``, fsync, rename, fsync the directory. A sealed segment never changes, so an
archived copy is never overwritten: a file of the same name found in the archive counts as
this segment's copy only if its bytes are equal; if they differ (another database's
archive, or a restored database given its source's archive) the copy fails and is
reported, and the segment stays in the WAL.

The database copies (:meth:`WalArchive.copy_sealed`) at each checkpoint, after a snapshot
and at a clean close (both seal the active segment first, so the archive then holds every
committed record), and removes a segment only once its copy is in the archive
(:meth:`WalArchive.archived_below`). A copy that fails is remembered (:attr:`error`,
reported by ``status()`` and the health report as ``wal_archive``) and blocks the removal of
that segment and of every later one; the next copy that succeeds clears it.
"""

from __future__ import annotations

import filecmp
import os
import threading
import time

from .errors import ChangeFeedGap, CorruptionError, StorageError
from .walformat import (_HEADER, _TMP_SUFFIX, _Stop, _decode, _frames, _fsync_dir,
                        _list_segments, _read_header, short_header_error)

_CHUNK = 1 << 20


class WalArchive:
    """The archive directory of one database's sealed WAL segments."""

    def __init__(self, directory):
        self.directory = os.path.abspath(os.fspath(directory))
        self._lock = threading.Lock()
        self._copied: dict[str, int] = {}      # segment name -> bytes archived (checked)
        self._found: dict[str, int] = {}       # in the archive at open, not compared yet
        self.error: str | None = None          # why the last copy failed (None: fine)
        self.error_at: float | None = None
        self.failures = 0                      # failed copies since open
        self.copied = 0                        # segment copies written since open
        self._scan()

    def _scan(self) -> None:
        try:
            for path, _ in _list_segments(self.directory):
                self._found[os.path.basename(path)] = os.path.getsize(path)
        except Exception:   # an unreadable archive: every copy is attempted (and reported)
            self._found.clear()

    def segments(self) -> list[tuple[str, int]]:
        """``(path, first_lsn)`` of every archived segment, oldest first."""
        return _list_segments(self.directory)

    def has(self, path: str) -> bool:
        """Whether the segment file ``path`` is archived whole (same name and size)."""
        try:
            size = os.path.getsize(path)
        except OSError:
            return False
        name = os.path.basename(path)
        if name in self._found and name not in self._copied:
            if self._found[name] == size and filecmp.cmp(
                    path, os.path.join(self.directory, name), shallow=False):
                self._copied[name] = size
            del self._found[name]
        return self._copied.get(name) == size

    def copy_sealed(self, sealed) -> int:
        """Copy each sealed ``(path, first_lsn)`` not yet archived, oldest first; stop at the
        first failure (recorded in :attr:`error`). Returns how many were copied."""
        done = 0
        with self._lock:
            for path, _ in sealed:
                if self.has(path):
                    continue
                try:
                    self._copy(path)
                except OSError as e:
                    self.failures += 1
                    self.error = (f"cannot copy WAL segment {path} to the archive "
                                  f"{self.directory}: {e.strerror or e}")
                    self.error_at = time.time()
                    return done
                done += 1
                self.copied += 1
            self.error = None
            self.error_at = None
        return done

    def _copy(self, path: str) -> None:
        name = os.path.basename(path)
        os.makedirs(self.directory, exist_ok=True)
        final = os.path.join(self.directory, name)
        if os.path.exists(final):
            raise OSError(f"the archive already holds a different {name} (another database's "
                          "archive? a restored database needs its own); not overwritten")
        tmp = final + _TMP_SUFFIX
        size = 0
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                dst.write(chunk)
                size += len(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.rename(tmp, final)
        try:
            _fsync_dir(self.directory)
        except Exception as e:
            raise OSError(f"fsync of {self.directory} failed: {e}") from e
        self._copied[name] = size

    def archived_below(self, sealed) -> int | None:
        """The first LSN of the oldest sealed segment that is *not* archived (None: all
        are): no segment from there on may be removed."""
        for path, first in sealed:
            if not self.has(path):
                return first
        return None

    def status(self) -> dict:
        try:
            segs = self.segments()
        except StorageError:            # an unreadable archive: reported by ``error``
            segs = []
        total = 0
        for path, _ in segs:
            try:
                total += os.path.getsize(path)
            except OSError:
                pass
        return {"path": self.directory, "segments": len(segs), "bytes": total,
                "first_lsn": segs[0][1] if segs else None, "copied": self.copied,
                "failures": self.failures, "error": self.error, "error_at": self.error_at}


def iter_archived(directory, since: int, upto: int | None = None):
    """Yield ``(lsn, payload)`` for the archived records with ``since < lsn <= upto``, in
    order, strictly: archived segments are complete copies, so any bad or incomplete frame
    is a :class:`CorruptionError` naming the segment and offset (never a quiet end), and
    the LSNs must run on from ``since + 1`` without a hole (:class:`ChangeFeedGap` names
    the missing LSN)."""
    directory = os.fspath(directory)
    segs = _list_segments(directory)
    expect = since + 1
    prev = 0
    for i, (path, first) in enumerate(segs):
        if i + 1 < len(segs) and segs[i + 1][1] <= since + 1:
            continue                    # every record of this one is at or below since
        if upto is not None and first > upto:
            return
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if not _read_header(f, path, first, size):
                    raise short_header_error(path)
                stop = _Stop()
                for lsn, flags, body, _end in _frames(f, path, _HEADER.size, size, prev,
                                                      first, stop):
                    prev = lsn
                    if lsn <= since:
                        continue
                    if upto is not None and lsn > upto:
                        return
                    if lsn != expect:
                        raise ChangeFeedGap(
                            f"the WAL archive {directory} has no record {expect}: the next "
                            f"archived record is {lsn} (in {path}); a gap in the archive",
                            hint="restore to an LSN before the gap, or from a later snapshot")
                    expect += 1
                    yield lsn, _decode(flags, body)
        except OSError as e:
            raise StorageError(f"cannot read the archived WAL segment {path}: {e}") from e
        if stop.reason is not None:
            raise CorruptionError(
                f"archived WAL record at {path} offset {stop.offset} {stop.reason}; an "
                "archived segment is a complete copy, so this is damage",
                hint="restore to an LSN before it, or copy the segment again from the "
                     "database's WAL if it is still there")
