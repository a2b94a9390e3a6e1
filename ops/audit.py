"""The audit log: append-only JSONL, hash-chained, fsync'd, rotated, verifiable.

One line per audited event (every write, every admin action, every denied request; reads
too when asked), as compact JSON with sorted keys::

    {"action": "upsert", "count": 2, "hash": "...", "ids": ["a", 7], "key_id": "3f...",
     "latency_ms": 4.1, "namespace": "docs", "outcome": "ok", "prev": "...", "remote":
     "127.0.0.1", "request_id": "...", "role": "writer", "seq": 42, "status": 200,
     "time": "2026-12-02T01:02:03.456Z", "ts": 1795..., ...}

Tamper evidence. ``seq`` counts from 1 without gaps; ``prev`` is the previous entry's
``hash``; ``hash`` is the SHA-256 of the entry's canonical JSON without ``hash`` (so it
covers ``prev``). :func:`verify` walks every file in order and reports the first entry
that breaks one of those three rules: an edited entry fails its own hash (or, rehashed,
the next entry's ``prev``), a deleted one leaves a ``seq`` gap, an inserted or reordered
one breaks ``seq`` order. What no chain can show by itself is a cut of the newest entries
of the active file: ship the lines elsewhere as they are written (``serve
--audit-stdout``) to have a second copy.

Durability: :meth:`AuditLog.append` writes the line and fsyncs the file before it returns;
the server appends after the operation and before it answers, so an acknowledged request
always has its entry on disk. A torn last line (a crash mid-write) is cut on open and the
cut is itself logged (``action: audit.torn_tail``).

Files: ``DIR/audit-<first seq, 16 digits>.jsonl``; the newest is the active one. When it
passes ``max_bytes`` the next entry starts a new file (rotation); only the newest ``keep``
files are kept (retention; the oldest retained file's first ``prev`` is then taken as given).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Optional

from simplevector.engine.errors import InvalidInput, LockedError, StorageError

__all__ = ["AuditLog", "VerifyResult", "verify", "read_entries", "query", "GENESIS",
           "DEFAULT_MAX_BYTES", "DEFAULT_KEEP"]

GENESIS = "0" * 64
DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_KEEP = 20
_NAME_RE = re.compile(r"^audit-(\d{16})\.jsonl$")


def _canonical(entry: dict) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode("utf-8")


def _entry_hash(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def iso_utc(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1000):03d}Z"


def log_files(directory) -> list:
    """The audit files in ``directory``, oldest first (by their first seq)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = sorted((int(m.group(1)), n) for n in names if (m := _NAME_RE.match(n)))
    return [os.path.join(directory, n) for _, n in found]


def _fsync_dir(directory) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AuditLog:
    """The writer of one audit directory (one process at a time: the server).

    directory: where the files go (created). max_bytes: rotate past this size. keep: how
    many files to retain (None: all). sync: fsync each entry (False only for bulk tests and
    benchmarks). stdout: also print each line to this stream (``serve --audit-stdout``).
    """

    def __init__(self, directory, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 keep: int | None = DEFAULT_KEEP, sync: bool = True, stdout=None):
        if max_bytes <= 0:
            raise InvalidInput(f"max_bytes {max_bytes!r} is not valid; expected > 0")
        if keep is not None and keep < 1:
            raise InvalidInput(f"keep {keep!r} is not valid; expected >= 1 or None")
        self.directory = os.path.abspath(os.fspath(directory))
        self.max_bytes = int(max_bytes)
        self.keep = keep
        self.sync = sync
        self.stdout = stdout
        self._lock = threading.Lock()
        self._file = None
        self._size = 0
        try:
            os.makedirs(self.directory, exist_ok=True)
            self._lockfile = open(os.path.join(self.directory, ".lock"), "a+b")
        except OSError as e:
            raise StorageError(f"cannot open the audit log in {self.directory}: {e}") from e
        try:
            fcntl.flock(self._lockfile.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lockfile.close()
            raise LockedError(f"the audit log in {self.directory} is held by another process",
                              hint="one writer per audit log: give this one its own "
                                   "--audit-dir") from None
        try:
            self._seq, self._prev, torn = self._recover()
        except (OSError, ValueError, KeyError) as e:
            self._lockfile.close()
            raise StorageError(f"cannot open the audit log in {self.directory}: {e}",
                               hint="check it with `simplevector audit verify`") from e
        if torn:
            self.append({"action": "audit.torn_tail", "outcome": "ok", "bytes": torn})

    # -- opening -------------------------------------------------------------------------------
    def _recover(self):
        files = log_files(self.directory)
        if not files:
            return 0, GENESIS, 0
        path = files[-1]
        with open(path, "rb") as f:
            data = f.read()
        torn = 0
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            torn = len(data) - cut
            with open(path, "r+b") as f:
                f.truncate(cut)
                os.fsync(f.fileno())
            data = data[:cut]
        lines = data.splitlines()
        if lines:
            last = json.loads(lines[-1])
            return int(last["seq"]), last["hash"], torn
        # an empty active file: continue from the file before it, if any
        for older in reversed(files[:-1]):
            with open(older, "rb") as f:
                tail = f.read().splitlines()
            if tail:
                last = json.loads(tail[-1])
                return int(last["seq"]), last["hash"], torn
        first = int(_NAME_RE.match(os.path.basename(path)).group(1))
        return first - 1, GENESIS, torn

    def _open_file(self):
        files = log_files(self.directory)
        if files and (self._size_of(files[-1]) < self.max_bytes):
            path = files[-1]
        else:
            path = os.path.join(self.directory, f"audit-{self._seq + 1:016d}.jsonl")
        self._file = open(path, "ab")
        self._size = self._file.tell()
        if files and path != files[-1]:
            _fsync_dir(self.directory)
            self._retain()

    @staticmethod
    def _size_of(path) -> int:
        try:
            return os.path.getsize(path)
        except OSError:
            return 0

    def _retain(self):
        if self.keep is None:
            return
        files = log_files(self.directory)
        for old in files[:-self.keep]:
            os.remove(old)
        if len(files) > self.keep:
            _fsync_dir(self.directory)

    # -- writing -------------------------------------------------------------------------------
    @property
    def seq(self) -> int:
        """The seq of the last entry written."""
        return self._seq

    def append(self, fields: dict) -> dict:
        """Write one entry (``fields`` plus seq, prev, hash, time, ts); on disk when this
        returns (with ``sync``). Returns the entry as written."""
        with self._lock:
            if self._lockfile.closed:
                raise StorageError(f"the audit log in {self.directory} is closed")
            if self._file is None or self._size >= self.max_bytes:
                if self._file is not None:
                    self._file.close()
                    self._file = None
                self._open_file()
            ts = fields.get("ts", time.time())
            entry = dict(fields)
            entry.update(ts=ts, time=iso_utc(ts), seq=self._seq + 1, prev=self._prev)
            entry["hash"] = _entry_hash(entry)
            line = _canonical(entry) + b"\n"
            try:
                self._file.write(line)
                self._file.flush()
                if self.sync:
                    os.fsync(self._file.fileno())
            except OSError as e:
                raise StorageError(f"cannot write the audit log in {self.directory}: {e}",
                                   hint="free disk space; the request was not acknowledged"
                                   ) from e
            self._size += len(line)
            self._seq, self._prev = entry["seq"], entry["hash"]
            if self.stdout is not None:
                self.stdout.write(line.decode("utf-8"))
                self.stdout.flush()
            return entry

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if not self._lockfile.closed:
                self._lockfile.close()      # releases the flock

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# -- reading and verifying -------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyResult:
    """ok, how many entries and files were checked, and the first bad entry: its file,
    line number (1-based), seq (as found, when readable) and why."""

    ok: bool
    entries: int
    files: int
    file: Optional[str] = None
    line: Optional[int] = None
    seq: Optional[int] = None
    reason: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


def verify(directory, progress=None) -> VerifyResult:
    """Check every entry of the audit log in ``directory`` (see the module).
    ``progress(n)``: called with the bytes of each file once it is checked."""
    files = log_files(directory)
    if not files:
        raise InvalidInput(f"no audit log in {directory}; expected audit-*.jsonl files",
                           hint="the server writes it to DB/audit unless --audit-dir says")
    count = 0
    expected_seq = None
    prev = None

    def bad(path, lineno, seq, reason):
        return VerifyResult(False, count, len(files), path, lineno, seq, reason)

    for path in files:
        first = int(_NAME_RE.match(os.path.basename(path)).group(1))
        if expected_seq is not None and first != expected_seq:
            return bad(path, 1, None, f"file starts at seq {first}, expected {expected_seq}: "
                       f"entries are missing between files")
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for lineno, raw in enumerate(lines, 1):
            try:
                entry = json.loads(raw)
                seq, entry_prev, entry_hash = entry["seq"], entry["prev"], entry["hash"]
            except (ValueError, KeyError, TypeError):
                return bad(path, lineno, None, "not a JSON audit entry with seq, prev, hash")
            want = first if expected_seq is None else expected_seq
            if seq != want:
                why = ("an entry was deleted before it" if isinstance(seq, int) and seq > want
                       else "an entry was inserted or moved here")
                return bad(path, lineno, seq, f"seq {seq}, expected {want}: {why}")
            if _entry_hash(entry) != entry_hash:
                return bad(path, lineno, seq, "the entry's hash does not match its content: "
                           "it was edited")
            if prev is not None and entry_prev != prev:
                return bad(path, lineno, seq, "prev does not match the previous entry's hash: "
                           "an entry before it was edited, or this one was moved")
            if prev is None and seq == 1 and entry_prev != GENESIS:
                return bad(path, lineno, seq, "the first entry's prev is not the genesis hash")
            prev, expected_seq = entry_hash, seq + 1
            count += 1
        if progress is not None:
            progress(sum(len(raw) + 1 for raw in lines))
    return VerifyResult(True, count, len(files))


def read_entries(directory):
    """Every entry, oldest first (lines that do not parse are skipped: use verify)."""
    for path in log_files(directory):
        with open(path, "rb") as f:
            for raw in f:
                try:
                    yield json.loads(raw)
                except ValueError:
                    continue


def query(directory, *, since: float | None = None, key: str | None = None,
          namespace: str | None = None, action: str | None = None,
          outcome: str | None = None, limit: int | None = None) -> list:
    """Entries with ``ts >= since``, of key id ``key``, on ``namespace``, of ``action``,
    with ``outcome``; the last ``limit`` of them (all when None), oldest first."""
    out = []
    for e in read_entries(directory):
        if since is not None and e.get("ts", 0) < since:
            continue
        if key is not None and e.get("key_id") != key:
            continue
        if namespace is not None and e.get("namespace") != namespace:
            continue
        if action is not None and e.get("action") != action:
            continue
        if outcome is not None and e.get("outcome") != outcome:
            continue
        out.append(e)
    return out[-limit:] if limit is not None else out


def stdout_stream():
    """The stream ``serve --audit-stdout`` writes to."""
    return sys.stdout
