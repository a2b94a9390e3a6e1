"""Integrity: ``db.verify()`` and the background scrub's slices (repair: engine/repair.py).

What is checked (docs/architecture.md, "Integrity"; the layout is engine/schema.py):

* LMDB structure: every sub-database opens and is readable; meta and catalog values decode.
* Primary data, against its checksums (format 3): each id entry's own CRC-32, each live
  row's bytes against the CRC-32 its id entry carries, each record's CRC-32 and decoding.
* Cross-references: every id entry names a row below the version's row count, which the
  in-memory state holds alive under the same id; every live row has exactly one id entry;
  a record exists only for a live row and carries that row's id; every live row whose
  metadata the field indexes know has its record; ``count()`` equals the live rows.
* Derived state: the field indexes against each record's metadata (every path and value
  indexed, nothing indexed that the record lacks); every live row in exactly one IVF list
  (tombstones in the lists are skipped by queries and not counted); each checkpoint bundle's
  arrays against their CRC-32 and its IVF lists against its own alive mask (no tombstone).
* ``deep=True``: a sample of live rows is re-encoded against the PQ codes the index holds
  for them (a stored code may not reconstruct the row worse than a fresh encoding), and
  sample queries are re-ranked: the distances the index returns against exact distances
  from the stored vectors.

A problem is a :class:`Problem` naming the namespace, version, id or key, and what
disagrees. ``primary=True`` marks damage to primary data (a row, record or id entry):
:func:`~.repair.repair` never drops or invents those; it reports their ids, which come back from a
snapshot and the WAL archive (``simplevector restore``; docs/runbook.md, "Recover from a
corruption finding"). Everything else is derived state, which repair rebuilds.

Blind spot: a record is optional (only rows with metadata, a document or provenance have
one), so a deleted record is found only when the field indexes know the row's metadata; a
document- or provenance-only record deleted after no checkpoint or WAL tail remembers it
cannot be told from a row that never had one.

Consistency: each version is compared while its writes are held off (the database's apply
lock and the version's mutate lock), so LMDB's read transaction and the in-memory state are
at the same LSN; a read-only process first catches up with the writer (``refresh``).
:class:`Scrubber` does the same work a bounded slice at a time (``rows`` positions, or
``rows`` id entries, of one version per :meth:`Scrubber.step`).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import lmdb
import numpy as np

from . import schema, segments
from .apply import unpack
from .arrayfile import inspect_bundle
from .errors import CorruptionError, InvalidInput, StorageError
from .fieldindex import FieldIndex, _walk
from .filters import scalar_key
from .kernels.distances import distances_to_ref

#: Rows re-encoded and queries re-ranked per version by ``verify(deep=True)``.
DEEP_SAMPLE = 256
DEEP_QUERIES = 32
#: Problems a report lists per (kind, version) before it only counts the rest.
MAX_PER_KIND = 100
#: A stored PQ code may reconstruct its row this much worse than a fresh encoding (ties
#: between centroids or codewords round differently across BLAS builds).
CODE_TOLERANCE = 1e-3
RESTORE_HINT = ("restore the damaged primary data from a snapshot plus the WAL archive: "
                "`simplevector restore SNAPSHOT TARGET --wal-archive ARCHIVE` "
                "(docs/runbook.md, \"Recover from a corruption finding\")")


@dataclass(frozen=True)
class Problem:
    """One disagreement. ``key`` is the LMDB key (hex) or the file it concerns."""

    kind: str
    namespace: str | None
    version: int | None
    id: object = None
    key: str | None = None
    detail: str = ""
    primary: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Problem":
        return cls(**{k: d.get(k) for k in ("kind", "namespace", "version", "id", "key",
                                            "detail")}, primary=bool(d.get("primary")))

    def __str__(self) -> str:
        where = f"{self.namespace} v{self.version}" if self.namespace else "database"
        what = f" id {self.id!r}" if self.id is not None else ""
        return f"{self.kind}: {where}{what}: {self.detail}"


@dataclass(frozen=True)
class VerifyReport:
    """The result of ``verify`` (or of one scrub slice, ``complete=False``).

    ``checked``: what was looked at (versions, id entries, rows, records, bundles, IVF
    rows, field paths, deep samples). ``omitted``: problems found past ``MAX_PER_KIND``."""

    ok: bool
    problems: list
    checked: dict
    seconds: float
    deep: bool = False
    at: float = 0.0
    lsn: int = 0
    complete: bool = True
    omitted: int = 0

    @property
    def primary(self) -> list:
        return [p for p in self.problems if p.primary]

    def to_dict(self) -> dict:
        return {"ok": self.ok, "problems": [p.to_dict() for p in self.problems],
                "checked": dict(self.checked), "seconds": self.seconds, "deep": self.deep,
                "at": self.at, "lsn": self.lsn, "complete": self.complete,
                "omitted": self.omitted}

    @classmethod
    def from_dict(cls, d: dict) -> "VerifyReport":
        """The report :meth:`to_dict` gave (the HTTP client rebuilds it so)."""
        return cls(ok=d["ok"], problems=[Problem.from_dict(p) for p in d["problems"]],
                   checked=dict(d["checked"]), seconds=d["seconds"], deep=d["deep"],
                   at=d["at"], lsn=d["lsn"], complete=d["complete"], omitted=d["omitted"])


class _Found:
    """Problems of one run, at most MAX_PER_KIND per (kind, version)."""

    def __init__(self):
        self.items: list = []
        self.per: dict = {}
        self.omitted = 0
        self.checked = {"versions": 0, "id_entries": 0, "rows": 0, "records": 0,
                        "bundles": 0, "ivf_rows": 0, "field_paths": 0, "deep_rows": 0,
                        "deep_queries": 0, "wal_segments": 0}

    def add(self, kind, config=None, *, id=None, key=None, detail="", primary=False):
        slot = (kind, None if config is None else config.vid)
        count = self.per.get(slot, 0)
        self.per[slot] = count + 1
        if count >= MAX_PER_KIND:
            self.omitted += 1
            return
        if isinstance(key, (bytes, bytearray, memoryview)):
            key = bytes(key).hex()
        self.items.append(Problem(kind, None if config is None else config.name,
                                  None if config is None else config.version, id, key,
                                  detail, primary))

    def count(self, what: str, n: int = 1):
        self.checked[what] += n


class _Version:
    """One version's state and LMDB view for the duration of a check (writes held off)."""

    def __init__(self, db, txn, config, state):
        self.db, self.txn, self.config, self.state = db, txn, config, state
        self.vid = config.vid
        self.dbs = db._store.dbs
        self.prefix = schema.vid_prefix(config.vid)
        view = state.view()
        self.n, self.alive, self.live = view.n, view.alive, view.live
        self.X = view.X
        self.fields = state.fields
        self._exists: dict = {}
        self._eq: dict = {}

    def extid(self, pos: int):
        """The in-memory id map's id at ``pos`` (None when it cannot say: derived state
        read from a damaged bundle may hold anything)."""
        try:
            return self.state.extid_at(pos)
        except Exception:
            return None

    def extids(self, positions) -> list:
        try:
            return self.state.extids_at(positions)
        except Exception:
            return [self.extid(p) for p in np.asarray(positions).tolist()]

    def exists(self, path) -> np.ndarray:
        arr = self._exists.get(path)
        if arr is None:
            arr = self._exists[path] = self.fields._exists_positions(path)
        return arr

    def eq(self, path, key) -> np.ndarray:
        arr = self._eq.get((path, key))
        if arr is None:
            arr = self._eq[(path, key)] = self.fields._eq_positions(path, key)
        return arr


def field_paths(fields) -> list:
    """Every field path (a tuple of keys) a FieldIndex holds, base and tail."""
    with fields._lock:
        paths = set(fields._paths)
    if fields._base is not None:
        paths.update(fields._base.paths)
    return sorted(paths)


def _lmdb_row_of(v: _Version, extid):
    """The row LMDB's id entry for ``extid`` names (None: no valid entry)."""
    try:
        key = schema.id_key(v.vid, extid)
    except Exception:
        return None
    raw = v.txn.get(key, db=v.dbs[b"ids"])
    if raw is None:
        return None
    try:
        return schema.parse_id_value(key, raw)[0]
    except CorruptionError:
        return None


def _holds(arr: np.ndarray, pos: int) -> bool:
    i = int(np.searchsorted(arr, pos))
    return i < len(arr) and int(arr[i]) == pos


# -- the checks ------------------------------------------------------------------------------
def check_lmdb(db, found: _Found):
    """Every sub-database opens and its first and last entries read; meta, catalog and
    counters values (a few per version) decode. The ids and records entries are checked
    one by one per version; ops values belong to the layers above."""
    store = db._store
    with store.read() as txn:
        for name in schema.SUBDBS:
            key = b""
            try:
                txn.stat(store.dbs[name])
                cur = txn.cursor(db=store.dbs[name])
                if name not in (b"meta", b"catalog", b"counters"):
                    if cur.first():
                        cur.value()
                    if cur.last():
                        cur.value()
                    continue
                for key, value in cur:
                    if name == b"counters":
                        if len(value) != 8:
                            raise ValueError(f"{len(value)} bytes, expected 8")
                    else:
                        unpack(value)
            except lmdb.Error as e:
                found.add("lmdb", key=name.decode(), detail=f"sub-database {name.decode()!r} "
                          f"cannot be read: {e}", primary=True)
            except Exception as e:
                found.add("lmdb", key=bytes(key).hex(), detail=f"a {name.decode()!r} value "
                          f"does not decode: {e}", primary=True)


def scan_ids(v: _Version, found: _Found, *, after: bytes | None = None,
             limit: int | None = None):
    """Check id entries of the version in key order (all, or ``limit`` after the key
    ``after``). Returns (rowid -> row CRC of the valid entries seen, last key or None)."""
    entries: dict = {}
    cur = v.txn.cursor(db=v.dbs[b"ids"])
    start = v.prefix if after is None else after
    if not cur.set_range(start):
        return entries, None
    if after is not None and bytes(cur.key()) == after and not cur.next():
        return entries, None
    seen, last = 0, None
    for key, value in cur.iternext():
        key = bytes(key)
        if not key.startswith(v.prefix):
            return entries, None
        if limit is not None and seen >= limit:
            return entries, last
        seen += 1
        last = key
        found.count("id_entries")
        try:
            extid = schema.decode_id(key[4:])
        except Exception as e:
            found.add("id_entry_checksum", v.config, key=key, primary=True,
                      detail=f"the id entry's key does not decode: {e}")
            continue
        try:
            rowid, crc = schema.parse_id_value(key, value)
        except CorruptionError as e:
            found.add("id_entry_checksum", v.config, id=extid, key=key, primary=True,
                      detail=e.message)
            continue
        if rowid >= v.n:
            found.add("id_entry_stray", v.config, id=extid, key=key, primary=True,
                      detail=f"the id entry names row {rowid}, past the version's {v.n} rows")
            continue
        if rowid in entries:
            found.add("id_entry_duplicate", v.config, id=extid, key=key, primary=True,
                      detail=f"row {rowid} is named by two id entries "
                             f"({v.extid(rowid)!r} and {extid!r})")
            continue
        entries[rowid] = crc
        if not v.alive[rowid]:
            found.add("id_map", v.config, id=extid, key=key,
                      detail=f"LMDB's id entry names row {rowid}, which the in-memory index "
                             "holds deleted")
        elif v.extid(rowid) != extid:
            found.add("id_map", v.config, id=extid, key=key,
                      detail=f"LMDB's id entry names row {rowid}, which the in-memory index "
                             f"holds under id {v.extid(rowid)!r}")
    return entries, None


def check_positions(v: _Version, found: _Found, lo: int, hi: int, entries=None,
                    collect: dict | None = None, progress=None):
    """Rows, records, id entries and field indexes of the positions ``lo..hi-1``.

    ``entries``: rowid -> row CRC from :func:`scan_ids` of the whole version (else each
    live row's id entry is read). ``collect``: position -> (id, metadata, indexed paths) of
    the live rows with a record, for :func:`check_structure` to compare the field indexes
    in bulk (else each row is compared with the field indexes here). ``progress(rows
    done)`` every 16384 rows."""
    config, n, alive = v.config, v.n, v.alive
    hi = min(hi, n)
    records: dict = {}
    bad_records: set = set()
    mismatched: set = set()
    cur = v.txn.cursor(db=v.dbs[b"records"])
    if cur.set_range(schema.row_key(v.vid, lo)):
        for key, value in cur.iternext():
            key = bytes(key)
            if not key.startswith(v.prefix):
                break
            rowid = schema.rowid_of_key(key)
            if rowid >= hi:
                break
            found.count("records")
            try:
                rec = schema.parse_record(key, value)
            except CorruptionError as e:
                bad_records.add(rowid)
                found.add("record_corrupt", config, id=v.extid(rowid) if rowid < n else None,
                          key=key, detail=e.message, primary=True)
                continue
            if rowid >= n or not alive[rowid]:
                found.add("record_stray", config, id=rec[0], key=key, primary=True,
                          detail=f"a record for row {rowid}, which is "
                                 + ("past the version's rows" if rowid >= n else "deleted"))
                continue
            if rec[0] != v.extid(rowid):
                if _lmdb_row_of(v, rec[0]) == rowid:
                    # LMDB agrees with the record: the in-memory id map is what is wrong
                    found.add("id_map", config, id=rec[0], key=key,
                              detail=f"row {rowid} is {rec[0]!r} in LMDB; the in-memory "
                                     f"index holds it under id {v.extid(rowid)!r}")
                else:
                    found.add("record_id", config, id=v.extid(rowid), key=key, primary=True,
                              detail=f"the record of row {rowid} carries id {rec[0]!r}")
                mismatched.add(rowid)       # its id entry checks would repeat this
                continue
            records[rowid] = rec
    live = np.flatnonzero(alive[lo:hi]) + lo
    if not len(live):
        return
    # rows whose metadata the field indexes know (any path): each must have its record
    paths = field_paths(v.fields)
    indexed: dict = {}
    for path in paths:
        ex = v.exists(path)
        a, b = np.searchsorted(ex, [lo, hi])
        for pos in ex[a:b].tolist():
            if lo <= pos < hi and alive[pos]:   # (a damaged bundle's arrays may hold junk)
                indexed.setdefault(pos, []).append(path)
    found.count("field_paths", len(paths))
    extids = v.extids(live)
    rows = v.X[lo:hi]
    for i, (pos, extid) in enumerate(zip(live.tolist(), extids)):
        found.count("rows")
        if progress is not None and i % 16384 == 16383:
            progress(pos - lo)
        if extid is None and pos not in mismatched:
            mismatched.add(pos)
            found.add("id_map", config, key=schema.row_key(v.vid, pos),
                      detail=f"the in-memory id map cannot name live row {pos}")
        if entries is None:
            if pos in mismatched:
                continue                    # named above (id_map or record_id)
            key = schema.id_key(v.vid, extid)
            raw = v.txn.get(key, db=v.dbs[b"ids"])
            crc = None
            if raw is None:
                found.add("id_entry_missing", config, id=extid, key=key, primary=True,
                          detail=f"live row {pos} has no id entry in LMDB")
            else:
                found.count("id_entries")
                try:
                    rowid, crc = schema.parse_id_value(key, raw)
                except CorruptionError as e:
                    found.add("id_entry_checksum", config, id=extid, key=key, primary=True,
                              detail=e.message)
                else:
                    if rowid != pos:
                        found.add("id_map", config, id=extid, key=key,
                                  detail=f"LMDB's id entry names row {rowid}; the in-memory "
                                         f"index holds the id at row {pos}")
                        crc = None
        else:
            crc = entries.get(pos)
            if crc is None and pos not in mismatched:
                key = schema.id_key(v.vid, extid)
                if v.txn.get(key, db=v.dbs[b"ids"]) is None:
                    found.add("id_entry_missing", config, id=extid, key=key, primary=True,
                              detail=f"live row {pos} has no id entry in LMDB")
        if crc is not None and schema.row_crc(rows[pos - lo]) != crc:
            found.add("row_checksum", config, id=extid, key=segments.row_path(v.db.path, v.vid),
                      primary=True, detail=f"row {pos} (bytes {pos * v.state.dim * 4}..) "
                                           "fails the CRC-32 its id entry carries")
        rec = records.get(pos)
        if rec is None:
            if pos in indexed and pos not in bad_records and pos not in mismatched:
                found.add("record_missing", config, id=extid, primary=True,
                          key=schema.row_key(v.vid, pos),
                          detail=f"the field indexes hold metadata of row {pos} "
                                 f"({', '.join('.'.join(p) for p in indexed[pos][:3])}) but "
                                 "LMDB has no record for it")
            continue
        if collect is not None:
            collect[pos] = (extid, rec[1], indexed.get(pos, ()))
        else:
            _check_fields_safely(v, found, pos, extid, rec[1], indexed.get(pos, ()))


def _check_fields_safely(v, found, pos, extid, md, indexed_paths):
    try:
        _check_fields(v, found, pos, extid, md, indexed_paths)
    except Exception as e:      # field arrays of a damaged bundle may hold anything
        found.add("field_index", v.config, id=extid,
                  detail=f"row {pos}: the field index cannot be read ({type(e).__name__}: "
                         f"{e})")


def _check_fields(v, found, pos, extid, md, indexed_paths):
    have = set()
    if md:
        for path, value in _walk(md):
            have.add(path)
            if not _holds(v.exists(path), pos):
                found.add("field_index", v.config, id=extid,
                          detail=f"row {pos}: field {'.'.join(path)!r} is in its record but "
                                 "not in the field index")
                continue
            for x in (value if isinstance(value, list) else (value,)):
                key = scalar_key(x)
                if key is not None and not _holds(v.eq(path, key), pos):
                    found.add("field_index", v.config, id=extid,
                              detail=f"row {pos}: {'.'.join(path)} = {x!r} is in its record "
                                     "but not in the field index")
    for path in indexed_paths:
        if path not in have:
            found.add("field_index", v.config, id=extid,
                      detail=f"row {pos}: the field index holds {'.'.join(path)!r}, which "
                             "its record does not have")


def _fields_differ(v: _Version, collect: dict) -> list:
    """Paths whose field indexes differ from ones built afresh from the records' metadata
    (both as checkpoint arrays: live rows only, in one canonical order)."""
    fresh = FieldIndex()
    for pos in sorted(collect):
        md = collect[pos][1]
        if md:
            fresh.add(pos, md)
    if not v.n:
        return []
    meta_b, arr_b = fresh.to_arrays(v.n, v.alive)
    try:
        meta_a, arr_a = v.fields.to_arrays(v.n, v.alive)
    except Exception:           # arrays of a damaged bundle: every path is suspect
        return [tuple(p) for p in meta_b["paths"]] or [("?",)]
    paths_a = {tuple(p): i for i, p in enumerate(meta_a["paths"])}
    paths_b = {tuple(p): i for i, p in enumerate(meta_b["paths"])}
    out = []
    for path in sorted(set(paths_a) | set(paths_b)):
        if path not in paths_a or path not in paths_b:
            out.append(path)
            continue
        a, b = f"f{paths_a[path]}.", f"f{paths_b[path]}."
        same = all(np.array_equal(arr_a[a + k], arr_b[b + k])
                   for k in ("h1", "h2", "off", "pos", "exists"))
        if same and ((a + "vals") in arr_a) != ((b + "vals") in arr_b):
            same = False
        if same and (a + "vals") in arr_a:
            va, pa, vb, pb = arr_a[a + "vals"], arr_a[a + "vpos"], arr_b[b + "vals"], \
                arr_b[b + "vpos"]
            oa, ob = np.lexsort((pa, va)), np.lexsort((pb, vb))
            same = np.array_equal(va[oa], vb[ob]) and np.array_equal(pa[oa], pb[ob])
        if not same:
            out.append(path)
    return out


def check_structure(v: _Version, found: _Found, *, entries=None, collect=None,
                    checkpoint_dir: str | None = None):
    """Counts, IVF lists, field-index totals and the version's checkpoint bundle."""
    config, alive = v.config, v.alive
    live = int(np.count_nonzero(alive))
    if live != v.live:
        found.add("count", config, detail=f"{live} rows are alive but the version counts "
                                          f"{v.live} (count())")
    if entries is None:
        n_ids = sum(1 for _ in schema.scan_prefix(v.txn, v.dbs[b"ids"], v.prefix,
                                                  values=False))
        if n_ids != live:
            found.add("count", config, primary=n_ids > live,
                      detail=f"LMDB has {n_ids} id entries for {live} live rows")
    if collect is not None:
        differ = _fields_differ(v, collect)
        if differ:
            before = len(found.items) + found.omitted
            for pos in sorted(collect):     # name the rows (the slow way, only when broken)
                extid, md, indexed = collect[pos]
                _check_fields_safely(v, found, pos, extid, md, indexed)
            if len(found.items) + found.omitted == before:
                found.add("field_index", config,
                          detail="the field indexes of "
                                 + ", ".join(repr(".".join(p)) for p in differ[:5])
                                 + " differ from ones built from the records' metadata")
    try:
        _check_ivf(v, found)
    except Exception as e:      # lists of a damaged bundle may hold anything
        found.add("ivf_lists", config, detail=f"the IVF lists cannot be read "
                                              f"({type(e).__name__}: {e})")
    if checkpoint_dir is not None:
        check_bundle(v.db.path, checkpoint_dir, config, found)


def _check_ivf(v: _Version, found: _Found):
    config, n, alive = v.config, v.n, v.alive
    index = v.state.index
    if index is not None:
        sealed, d = index.snapshot()
        pos = np.concatenate([sealed.pos, d.pos[: d.n]])
        found.count("ivf_rows", len(pos))
        past = pos[pos >= n]
        if len(past):
            found.add("ivf_lists", config, detail=f"the IVF lists hold {len(past)} positions "
                                                  f"past the version's {n} rows")
        pos = pos[pos < n]
        counts = np.bincount(pos[alive[pos]], minlength=n)[:n]
        for kind, bad, what in (("ivf_missing", alive & (counts == 0), "in no IVF list"),
                                ("ivf_duplicate", counts > 1, "in more than one IVF list")):
            where = np.flatnonzero(bad)
            for p in where[:MAX_PER_KIND].tolist():
                found.add(kind, config, id=v.extid(p), detail=f"live row {p} is {what}")


def check_bundle(dbpath: str, name: str, config, found: _Found):
    path = segments.bundle_path(dbpath, name, config.vid)
    try:
        meta, arrays, damage = inspect_bundle(path)
    except FileNotFoundError:
        # a version created since the checkpoint, or a checkpoint that replaced this one
        # (and removed its directory) while verify ran: this bundle is no longer the record
        return
    found.count("bundles")
    for text in damage:
        found.add("bundle_checksum", config, key=path, detail=text)
    if damage:
        return
    alive = arrays["alive"]
    if int(np.count_nonzero(alive)) != meta["live"]:
        found.add("bundle", config, key=path, detail=f"the bundle's alive mask holds "
                  f"{int(np.count_nonzero(alive))} rows, its header {meta['live']}")
    if "ivf.pos" in arrays:
        pos = arrays["ivf.pos"]
        bad = pos[(pos < 0) | (pos >= len(alive))]
        dead = pos[(pos >= 0) & (pos < len(alive))]
        dead = dead[~alive[dead]]
        if len(bad) or len(dead):
            found.add("bundle", config, key=path, detail=f"the bundle's IVF lists hold "
                      f"{len(dead)} tombstones and {len(bad)} positions outside its rows")
        counts = np.bincount(pos[(pos >= 0) & (pos < len(alive))], minlength=len(alive))
        missing = int(np.count_nonzero(alive & (counts == 0)))
        if missing:
            found.add("bundle", config, key=path, detail=f"{missing} live rows of the "
                      "bundle are in none of its IVF lists")


def check_deep(v: _Version, found: _Found, seed: int = 0):
    """Re-encode a sample of live rows against their stored PQ codes; re-rank queries."""
    try:
        _check_deep(v, found, seed)
    except Exception as e:      # an index of a damaged bundle may hold anything
        found.add("ivf_codes", v.config, detail=f"the IVF index cannot be checked "
                                                f"({type(e).__name__}: {e})")


def _check_deep(v: _Version, found: _Found, seed: int):
    index = v.state.index
    live = np.flatnonzero(v.alive)
    if index is None or not len(live):
        return
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(live, min(DEEP_SAMPLE, len(live)), replace=False))
    sealed, d = index.snapshot()
    lists = np.concatenate([np.repeat(np.arange(index.nlist, dtype=np.int64),
                                      np.diff(sealed.offsets)),
                            d.lists[: d.n].astype(np.int64)])
    pos = np.concatenate([sealed.pos, d.pos[: d.n]])
    codes = np.concatenate([sealed.codes, d.codes[: d.n]])
    order = np.argsort(pos, kind="stable")
    at = np.searchsorted(pos[order], sample)
    inside = at < len(pos)
    hit = np.zeros(len(sample), bool)
    hit[inside] = pos[order][at[inside]] == sample[inside]
    sample, at = sample[hit], order[at[hit]]
    X = np.ascontiguousarray(v.X[sample], np.float32)
    found.count("deep_rows", len(sample))
    if len(sample):
        new_lists, new_codes = index.encode(X)
        stored = _reconstruct(index, lists[at], codes[at])
        fresh = _reconstruct(index, new_lists.astype(np.int64), new_codes)
        e_stored = np.sum((X.astype(np.float64) - stored) ** 2, axis=1)
        e_fresh = np.sum((X.astype(np.float64) - fresh) ** 2, axis=1)
        worse = np.flatnonzero(e_stored > e_fresh * (1 + CODE_TOLERANCE) + 1e-6)
        for i in worse.tolist():
            p = int(sample[i])
            found.add("ivf_codes", v.config, id=v.extid(p),
                      detail=f"row {p}: its stored list/code reconstructs it with error "
                             f"{e_stored[i]:.6g}, a fresh encoding with {e_fresh[i]:.6g}")
    queries = live if len(live) <= DEEP_QUERIES else np.sort(
        rng.choice(live, DEEP_QUERIES, replace=False))
    Q = np.ascontiguousarray(v.X[queries], np.float32)
    k = min(10, len(live))
    results = index.search_batch(v.X, Q, k, index.nlist, max(index.spec.refine, 1), v.alive)
    metric = v.state.metric.code
    for qi, (dist, hits) in enumerate(results):
        found.count("deep_queries")
        if not len(hits):
            continue
        exact = distances_to_ref(v.X[hits], Q[qi], metric).astype(np.float64)
        tol = 1e-4 * max(1.0, float(np.abs(exact).max()))
        off = np.flatnonzero(np.abs(exact - dist.astype(np.float64)) > tol)
        dead = [int(h) for h in hits.tolist() if not v.alive[h]]
        if len(off) or dead:
            found.add("rerank", v.config, id=v.extid(int(queries[qi])),
                      detail=f"a query by row {int(queries[qi])}: {len(off)} of {len(hits)} "
                             "returned distances differ from the exact distance to the stored "
                             f"vector; {len(dead)} deleted rows returned")


def _reconstruct(index, lists, codes) -> np.ndarray:
    return index.reconstruct(lists, codes)


# -- holding writes off -----------------------------------------------------------------------
class _Held:
    """The database's applies and one version's mutations held off; a read txn of LMDB at
    the same LSN as the in-memory state (a read-only process catches up first)."""

    def __init__(self, db, vid: int):
        self.db, self.vid = db, vid

    def __enter__(self):
        db = self.db
        self._stack = []
        for _attempt in range(5):
            if db.readonly:
                db.refresh()
                lock = db._refresh_lock
            else:
                lock = db._apply_cond
            lock.acquire()
            self._stack.append(lock)
            state = db._applier.states.get(self.vid)
            if state is not None:
                state.mutate_lock.acquire()
                self._stack.append(state.mutate_lock)
            self._txn_cm = db._store.read()
            txn = self._txn_cm.__enter__()
            raw = txn.get(schema.META_APPLIED_LSN, db=db._store.dbs[b"meta"])
            lmdb_lsn = unpack(raw) if raw else 0
            if not db.readonly or lmdb_lsn == db._applier.applied_lsn:
                return txn, state
            self.__exit__(None, None, None)
        raise StorageError(f"verify could not catch up with the writer of {db.path}",
                           hint="run it again, or while fewer writes arrive")

    def __exit__(self, *exc):
        self._txn_cm.__exit__(None, None, None)
        while self._stack:
            self._stack.pop().release()


def check_wal(db, found: _Found):
    """Every frame of every retained WAL segment. An open reads only the segments past the
    checkpoint (engine/wal.py ``scan_from``), so damage to older ones, which only the change
    feed, followers and point-in-time restore read, is found here (not primary: the state
    does not depend on it)."""
    try:
        found.count("wal_segments", db._wal.check())
    except CorruptionError as e:
        found.add("wal_segment", detail=f"{e.message}: the change feed and point-in-time "
                  "restore cannot read past it; the database's state does not need it. "
                  "Take a new snapshot (`simplevector snapshot create`) so restores do not "
                  "either")


def check_checkpoint_record(db, found: _Found) -> str | None:
    """The checkpoint directory LMDB's checkpoint record names (None: no checkpoint); a
    problem when it is missing (the last open could not use it and rebuilt the state).
    Read twice, so a checkpoint replacing it meanwhile is not mistaken for one."""
    for _attempt in range(3):
        name = _checkpoint_dir(db)
        if name is None or os.path.isdir(os.path.join(segments.ckpt_root(db.path), name)):
            return name
        if _checkpoint_dir(db) != name:
            continue
        found.add("bundle_missing", key=os.path.join(segments.ckpt_root(db.path), name),
                  detail=f"the checkpoint record names {name}, which is missing: an open "
                         "found its bundles unusable (damaged) and rebuilt the state from "
                         "LMDB and the rows; repair (or the next checkpoint) writes new ones")
        return None
    return _checkpoint_dir(db)


def _checkpoint_dir(db) -> str | None:
    with db._store.read() as txn:
        raw = txn.get(schema.META_SNAPSHOT, db=db._store.dbs[b"meta"])
    snap = None if raw is None else unpack(raw)
    return None if snap is None else snap.get("dir")


# -- verify -----------------------------------------------------------------------------------
def verify(db, *, deep: bool = False, progress=None) -> VerifyReport:
    """Every check of the module docstring over the whole database (``db`` an engine
    Database). ``progress(done_rows, total_rows)`` is called per version."""
    if not isinstance(deep, bool):
        raise InvalidInput(f"deep {deep!r} is not valid; expected True or False")
    db._check_open()
    t0 = time.perf_counter()
    found = _Found()
    check_lmdb(db, found)
    check_wal(db, found)
    ckpt = check_checkpoint_record(db, found)
    configs = sorted(db._applier.configs.values(), key=lambda c: (c.name, c.version))
    total = sum(s.n for s in db._applier.states.values())
    done = 0
    lsn = db._applier.applied_lsn
    for config in configs:
        with _Held(db, config.vid) as (txn, state):
            if state is None:
                continue
            lsn = db._applier.applied_lsn
            found.count("versions")
            try:
                v = _Version(db, txn, config, state)
            except CorruptionError as e:        # the row file is shorter than the rows
                found.add("row_file", config, key=segments.row_path(db.path, config.vid),
                          detail=e.message, primary=True)
                continue
            entries, _ = scan_ids(v, found)
            collect: dict = {}
            tick = None if progress is None else (
                lambda rows, base=done: progress(base + rows, total))
            check_positions(v, found, 0, v.n, entries, collect, tick)
            check_structure(v, found, entries=entries, collect=collect,
                            checkpoint_dir=ckpt)
            if deep:
                check_deep(v, found)
        done += state.n
        if progress is not None:
            progress(done, total)
    return VerifyReport(ok=not found.items and not found.omitted,
                        problems=list(found.items), checked=dict(found.checked),
                        seconds=time.perf_counter() - t0, deep=deep, at=time.time(),
                        lsn=lsn, complete=True, omitted=found.omitted)
