"""Applying one WAL record to LMDB and to the in-memory state.

The same code runs for a live write, for WAL replay at recovery, and (with
``persist=False``) for a read-only process that tails the WAL to stay current. Every
function here is deterministic in (state, record): replaying a record on the state it was
first applied to gives the same rowids and the same result.

Record payloads (msgpack maps), all with ``op``, ``ns`` (name) and ``v`` (version):

| op                 | other fields                                              |
|--------------------|-----------------------------------------------------------|
| create_namespace   | ``config`` (VersionConfig as a map, live=True)           |
| create_version     | ``config`` (live=False)                                  |
| promote            | ``vid`` of the new live version                          |
| drop_namespace     | ``vids`` dropped                                         |
| upsert             | ``vid``, ``ids``, ``vec`` (float32 LE bytes), ``meta``, ``docs``, ``prov`` |
| delete             | ``vid``, ``ids``                                         |
| set_index          | ``vid``, ``index`` (spec string)                         |
"""

from __future__ import annotations

import os
from dataclasses import replace

import msgpack
import numpy as np

from . import schema, segments
from .arrayfile import RowFile
from .errors import CorruptionError
from .indexspec import IndexSpec
from .state import VersionState
from .types import VersionConfig


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(raw: bytes):
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


class Applier:
    """Owns the catalog and version states of a database and applies records to them.

    ``write_rows``: this process writes rows into the row files (the writer, also while it
    replays the WAL in memory at recovery); a read-only process only maps what the writer
    wrote."""

    def __init__(self, store, path: str, *, readonly: bool = False):
        self.store = store
        self.path = path
        self.readonly = readonly
        self.write_rows = not readonly
        self.configs: dict[int, VersionConfig] = {}
        self.states: dict[int, VersionState] = {}
        self.next_vid = 1
        self.applied_lsn = 0
        self.checkpoint_dir: str | None = None   # the checkpoint the states are based on
        #: (vid, sub-db, key, why) of LMDB entries the last load() left out
        self.skipped: list = []
        self._handlers = {
            "create_namespace": self._create,
            "create_version": self._create,
            "promote": self._promote,
            "drop_namespace": self._drop,
            "upsert": self._upsert,
            "delete": self._delete,
            "set_index": self._set_index,
        }
        if not readonly:
            os.makedirs(os.path.join(path, segments.ROWS_DIR), exist_ok=True)

    def _row_file(self, config: VersionConfig, *, fresh: bool = False) -> RowFile:
        path = segments.row_path(self.path, config.vid)
        if fresh and self.write_rows:
            with open(path, "wb"):
                pass                        # a new version starts with no rows
        elif self.readonly and not os.path.exists(path):
            raise CorruptionError(
                f"namespace {config.name!r} v{config.version}: its row file {path} is missing")
        return RowFile(path, config.dim, readonly=self.readonly)

    def close(self):
        for state in self.states.values():
            if state.rows is not None:
                if self.write_rows:
                    state.rows.trim(state.n)
                state.rows.close()

    def sync_rows(self):
        for state in list(self.states.values()):
            if state.rows is not None:
                state.rows.sync()

    # -- loading ---------------------------------------------------------------------------
    def _replace_states(self, states: dict):
        old, self.states = self.states, states
        for vid, state in old.items():
            if state.rows is not None and states.get(vid) is not state:
                state.rows.close()

    def load(self):
        """Rebuild the catalog and every version's state from LMDB and the row files (when
        no checkpoint can be used; per-row Python work)."""
        dbs = self.store.dbs
        with self.store.read() as txn:
            raw = txn.get(schema.META_APPLIED_LSN, db=dbs[b"meta"])
            self.applied_lsn = unpack(raw) if raw else 0
            raw = txn.get(schema.META_NEXT_VID, db=dbs[b"meta"])
            self.next_vid = unpack(raw) if raw else 1
            configs = {}
            self.skipped = []
            for _key, value in txn.cursor(db=dbs[b"catalog"]):
                config = VersionConfig.from_msg(unpack(value))
                configs[config.vid] = config
            states = {vid: self._load_version(txn, config) for vid, config in configs.items()}
        self.configs = configs
        self._replace_states(states)
        self.checkpoint_dir = None

    def snapshot_lsn(self):
        """The LSN of the last checkpoint, or None."""
        snap = self._snapshot_record()
        return None if snap is None else snap["lsn"]

    def _snapshot_record(self):
        with self.store.read() as txn:
            raw = txn.get(schema.META_SNAPSHOT, db=self.store.dbs[b"meta"])
        return None if raw is None else unpack(raw)

    def load_snapshot(self) -> bool:
        """Load every version from the last checkpoint's bundles (False when there is none
        or it is incomplete). Leaves ``applied_lsn`` at the checkpoint's LSN: the caller
        replays the WAL after it."""
        for _attempt in range(3):
            snap = self._snapshot_record()
            if snap is None or "dir" not in snap:
                return False
            configs = [VersionConfig.from_msg(c) for c in snap["configs"]]
            states = {}
            try:
                for config in configs:
                    meta, arrays = segments.read(self.path, snap["dir"], config.vid)
                    states[config.vid] = VersionState.restore(
                        config, meta, arrays, self._row_file(config))
            except FileNotFoundError:
                continue                    # the writer replaced that checkpoint: again
            except (CorruptionError, KeyError, TypeError, ValueError, IndexError):
                return False                # a damaged bundle: rebuild from LMDB and rows
            self.configs = {c.vid: c for c in configs}
            self._replace_states(states)
            self.next_vid = snap["next_vid"]
            self.applied_lsn = snap["lsn"]
            self.checkpoint_dir = snap["dir"]
            return True
        return False

    def _load_version(self, txn, config: VersionConfig) -> VersionState:
        """A version's state from LMDB's ids and records and its row file. Entries that
        fail their checksum or point past the version's rows are left out (the rows they
        name stay dead) and listed in ``skipped``: ``db.verify()`` reports each one and
        ``db.repair()`` names their ids; loading never stops the database opening."""
        dbs = self.store.dbs
        vid = config.vid
        raw = txn.get(schema.counter_key(vid), db=dbs[b"counters"])
        n = schema.unpack_u64(raw) if raw else 0
        state = VersionState(config, n, rows=self._row_file(config))
        prefix = schema.vid_prefix(vid)
        alive_ids = {}                  # rowid (= position) -> external id
        for key, value in schema.scan_prefix(txn, dbs[b"ids"], prefix):
            try:
                rowid, _crc = schema.parse_id_value(key, value)
            except CorruptionError as e:
                self.skipped.append((vid, b"ids", bytes(key), str(e)))
                continue
            if rowid >= n:
                self.skipped.append((vid, b"ids", bytes(key),
                                     f"id entry points at row {rowid} past the version's "
                                     f"{n} rows"))
                continue
            alive_ids[rowid] = schema.decode_id(key[4:])
        metas = {}
        for key, value in schema.scan_prefix(txn, dbs[b"records"], prefix):
            try:
                metas[schema.rowid_of_key(key)] = schema.parse_record(key, value)[1]
            except CorruptionError as e:
                self.skipped.append((vid, b"records", bytes(key), str(e)))
        state.load_rows(n, dict(sorted(alive_ids.items())), metas)
        return state

    # -- applying ----------------------------------------------------------------------------
    def apply(self, lsn: int, op: dict, *, persist: bool = True, prepared=None):
        """Apply one record; returns the operation's result (e.g. rows deleted).

        ``prepared``: for a live upsert, (index, stored vectors, future of their encoding)
        computed while the record was being logged; replay passes nothing."""
        handler = self._handlers.get(op.get("op"))
        if handler is None:
            raise CorruptionError(f"WAL record {lsn} has unknown op {op.get('op')!r}")
        if prepared is not None:
            result = handler(lsn, op, persist, prepared=prepared)
        else:
            result = handler(lsn, op, persist)
        self.applied_lsn = lsn
        return result

    def _meta_puts(self, txn, lsn: int):
        txn.put(schema.META_APPLIED_LSN, pack(lsn), db=self.store.dbs[b"meta"])

    def _write(self, lsn: int, fn):
        def run(txn):
            fn(txn)
            self._meta_puts(txn, lsn)
        self.store.write_with_retry(run)

    def _create(self, lsn: int, op: dict, persist: bool):
        config = VersionConfig.from_msg(op["config"])
        dbs = self.store.dbs

        def txn_fn(txn):
            txn.put(schema.catalog_key(config.vid), pack(config.to_msg()), db=dbs[b"catalog"])
            txn.put(schema.META_NEXT_VID, pack(max(self.next_vid, config.vid + 1)),
                    db=dbs[b"meta"])
            txn.put(schema.counter_key(config.vid), schema.pack_u64(0), db=dbs[b"counters"])

        if persist:
            self._write(lsn, txn_fn)
        self.configs[config.vid] = config
        self.states[config.vid] = VersionState(config, rows=self._row_file(config, fresh=True))
        self.next_vid = max(self.next_vid, config.vid + 1)
        return config

    def _promote(self, lsn: int, op: dict, persist: bool):
        new_vid = op["vid"]
        target = self.configs[new_vid]
        changed = {}
        for vid, config in self.configs.items():
            if config.name != target.name:
                continue
            want = vid == new_vid
            if config.live != want:
                changed[vid] = VersionConfig.from_msg({**config.to_msg(), "live": want})
        dbs = self.store.dbs

        def txn_fn(txn):
            for vid, config in changed.items():
                txn.put(schema.catalog_key(vid), pack(config.to_msg()), db=dbs[b"catalog"])

        if persist:
            self._write(lsn, txn_fn)
        for vid, config in changed.items():
            self.configs[vid] = config
            self.states[vid].config = config
        return self.configs[new_vid]

    def _drop(self, lsn: int, op: dict, persist: bool):
        vids = [v for v in op["vids"] if v in self.configs]
        dbs = self.store.dbs

        def txn_fn(txn):
            for vid in vids:
                txn.delete(schema.catalog_key(vid), db=dbs[b"catalog"])
                txn.delete(schema.counter_key(vid), db=dbs[b"counters"])
                prefix = schema.vid_prefix(vid)
                for name in (b"ids", b"records"):
                    cur = txn.cursor(db=dbs[name])
                    if cur.set_range(prefix):
                        while cur.key().startswith(prefix):
                            if not cur.delete():
                                break

        if persist:
            self._write(lsn, txn_fn)
        for vid in vids:
            self.configs.pop(vid, None)
            state = self.states.pop(vid, None)
            if state is not None and state.rows is not None:
                state.rows.close()
            if self.write_rows:
                # after the commit; a crash before this leaves a file no version names,
                # which the next open removes (Applier.remove_orphans)
                try:
                    os.unlink(segments.row_path(self.path, vid))
                except FileNotFoundError:
                    pass
        return len(vids)

    def remove_orphans(self):
        """Row files of versions the catalog no longer has (a drop cut short)."""
        if not self.write_rows:
            return
        rows_dir = os.path.join(self.path, segments.ROWS_DIR)
        for entry in os.listdir(rows_dir):
            stem = entry.split(".")[0]
            if stem.isdigit() and int(stem) not in self.configs and int(stem) < self.next_vid:
                os.unlink(os.path.join(rows_dir, entry))

    def _upsert(self, lsn: int, op: dict, persist: bool, prepared=None):
        state = self.states.get(op["vid"])
        if state is None:   # the version was dropped after this record was validated
            if persist:
                self._write(lsn, lambda txn: None)
            return 0
        vid = state.config.vid
        ids = op["ids"]
        m = len(ids)
        vectors = np.frombuffer(op["vec"], dtype="<f4").reshape(m, state.dim)
        metas = op.get("meta") or [None] * m
        docs = op.get("docs") or [None] * m
        prov = op.get("prov") or [None] * m
        old, rowids = state.plan_upsert(ids)
        old_rowids = [o for o in old if o >= 0]
        dbs = self.store.dbs

        # a row has a record only when it has metadata, a document or provenance (a 4th
        # element); its id lives in "ids"
        with_record = [i for i in range(m)
                       if metas[i] is not None or docs[i] is not None or prov[i] is not None]

        def txn_fn(txn):
            for old_rowid in old_rowids:
                txn.delete(schema.row_key(vid, old_rowid), db=dbs[b"records"])
            keys = schema.id_keys(vid, ids)
            txn.cursor(db=dbs[b"ids"]).putmulti(
                list(zip(keys, schema.id_values(keys, rowids, crcs))))
            if with_record:
                keys = schema.row_keys(vid, [rowids[i] for i in with_record])
                txn.cursor(db=dbs[b"records"]).putmulti(
                    [(key, schema.record_value(
                        pack([ids[i], metas[i], docs[i]] if prov[i] is None
                             else [ids[i], metas[i], docs[i], prov[i]])))
                     for key, i in zip(keys, with_record)])
            txn.put(schema.counter_key(vid), schema.pack_u64(rowids[-1] + 1),
                    db=dbs[b"counters"])

        encoded = None
        if prepared is not None:
            index, stored, encoding = prepared
            encoded = (index, encoding)
        else:
            stored = state.prepare(vectors)
        # each id entry carries its row's CRC-32, written in the transaction naming the row
        crcs = schema.row_crcs(stored)
        # rows first: the LMDB commit that names them comes after them (arrayfile.py);
        # rewriting them (a retried apply, WAL replay) writes the same bytes again
        if self.write_rows and state.rows is not None:
            state.rows.write(rowids[0], stored)
        if persist:
            self._write(lsn, txn_fn)
        state.apply_upsert(ids, vectors, metas, old, rowids, stored=stored, encoded=encoded,
                           write_rows=False)       # written above (or mapped, read-only)
        return m

    def _delete(self, lsn: int, op: dict, persist: bool):
        state = self.states.get(op["vid"])
        if state is None:
            if persist:
                self._write(lsn, lambda txn: None)
            return 0
        vid = state.config.vid
        positions = [state.position_of(extid) for extid in op["ids"]]
        dbs = self.store.dbs

        def txn_fn(txn):
            for extid, pos in zip(op["ids"], positions):
                if pos is None:
                    continue
                txn.delete(schema.id_key(vid, extid), db=dbs[b"ids"])
                txn.delete(schema.row_key(vid, pos), db=dbs[b"records"])

        if persist:
            self._write(lsn, txn_fn)
        return state.apply_delete(positions)

    def _set_index(self, lsn: int, op: dict, persist: bool):
        vid = op["vid"]
        config = self.configs.get(vid)
        if config is None:
            if persist:
                self._write(lsn, lambda txn: None)
            return None
        new = replace(config, index=op["index"])
        dbs = self.store.dbs

        def txn_fn(txn):
            txn.put(schema.catalog_key(vid), pack(new.to_msg()), db=dbs[b"catalog"])

        if persist:
            self._write(lsn, txn_fn)
        self.configs[vid] = new
        state = self.states[vid]
        with state.mutate_lock:
            state.config = new
            state.spec = IndexSpec.parse(new.index)
            if state.spec.kind == "flat":
                state.index = None
            state.mutations += 1
        return new
