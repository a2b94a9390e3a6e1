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

from dataclasses import replace

import msgpack
import numpy as np

from . import schema, segments
from .errors import CorruptionError
from .indexspec import IndexSpec
from .state import VersionState
from .types import VersionConfig


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(raw: bytes):
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


class Applier:
    """Owns the catalog and version states of a database and applies records to them."""

    def __init__(self, store):
        self.store = store
        self.configs: dict[int, VersionConfig] = {}
        self.states: dict[int, VersionState] = {}
        self.next_vid = 1
        self.applied_lsn = 0
        self._handlers = {
            "create_namespace": self._create,
            "create_version": self._create,
            "promote": self._promote,
            "drop_namespace": self._drop,
            "upsert": self._upsert,
            "delete": self._delete,
            "set_index": self._set_index,
        }

    # -- loading ---------------------------------------------------------------------------
    def load(self):
        """Rebuild the catalog and every version's state from one LMDB snapshot."""
        dbs = self.store.dbs
        with self.store.read() as txn:
            raw = txn.get(schema.META_APPLIED_LSN, db=dbs[b"meta"])
            self.applied_lsn = unpack(raw) if raw else 0
            raw = txn.get(schema.META_NEXT_VID, db=dbs[b"meta"])
            self.next_vid = unpack(raw) if raw else 1
            self.configs.clear()
            self.states.clear()
            for _key, value in txn.cursor(db=dbs[b"catalog"]):
                config = VersionConfig.from_msg(unpack(value))
                self.configs[config.vid] = config
            for vid, config in self.configs.items():
                self.states[vid] = self._load_version(txn, config)

    def snapshot_lsn(self):
        """The LSN of the last checkpoint's segments, or None."""
        with self.store.read() as txn:
            raw = txn.get(schema.META_SNAPSHOT, db=self.store.dbs[b"meta"])
        return None if raw is None else unpack(raw)["lsn"]

    def load_snapshot(self) -> bool:
        """Load every version from the last checkpoint's segments (False when incomplete).

        Leaves ``applied_lsn`` at the snapshot's LSN: the caller replays the WAL after it.
        """
        dbs = self.store.dbs
        with self.store.read(buffers=True) as txn:
            raw = txn.get(schema.META_SNAPSHOT, db=dbs[b"meta"])
            if raw is None:
                return False
            snap = unpack(bytes(raw))
            configs = [VersionConfig.from_msg(c) for c in snap["configs"]]
            states = {}
            for config in configs:
                # arrays are views of the map: restore copies what it keeps, in this txn
                named = segments.read(txn, dbs, config.vid, copy=False)
                if "state.meta" not in named:
                    return False
                states[config.vid] = VersionState.restore(config, segments.unflatten(named))
        self.configs = {c.vid: c for c in configs}
        self.states = states
        self.next_vid = snap["next_vid"]
        self.applied_lsn = snap["lsn"]
        return True

    def _load_version(self, txn, config: VersionConfig) -> VersionState:
        dbs = self.store.dbs
        vid = config.vid
        raw = txn.get(schema.counter_key(vid), db=dbs[b"counters"])
        state = VersionState(config, schema.unpack_u64(raw) if raw else 0)
        prefix = schema.vid_prefix(vid)
        keys, blobs = [], []
        for key, value in schema.scan_prefix(txn, dbs[b"vectors"], prefix):
            keys.append(key)
            blobs.append(value)
        extid_of = {}                   # rowid -> external id, from the "ids" sub-db
        for key, value in schema.scan_prefix(txn, dbs[b"ids"], prefix):
            extid_of[schema.unpack_u64(value)] = schema.decode_id(key[4:])
        meta_of = {}
        for key, value in schema.scan_prefix(txn, dbs[b"records"], prefix):
            meta_of[schema.rowid_of_key(key)] = unpack(value)[1]
        ids, metas = [], []
        for key in keys:
            rowid = schema.rowid_of_key(key)
            if rowid not in extid_of:
                raise CorruptionError(
                    f"namespace {config.name!r} v{config.version}: row {rowid} has a vector "
                    "but no id (LMDB sub-databases disagree)")
            ids.append(extid_of[rowid])
            metas.append(meta_of.get(rowid))
        if len(extid_of) != len(keys):
            raise CorruptionError(
                f"namespace {config.name!r} v{config.version}: {len(keys)} vectors but "
                f"{len(extid_of)} ids (LMDB sub-databases disagree)")
        if keys:
            rowids = np.fromiter((schema.rowid_of_key(k) for k in keys), np.int64, len(keys))
            vectors = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(keys), config.dim)
            next_rowid = state.next_rowid
            state.load_rows(rowids, vectors.astype(np.float32, copy=False), ids, metas)
            state.next_rowid = max(next_rowid, int(rowids[-1]) + 1)
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
        self.states[config.vid] = VersionState(config)
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
                segments.delete(txn, dbs, vid)
                prefix = schema.vid_prefix(vid)
                for name in (b"ids", b"vectors", b"records"):
                    cur = txn.cursor(db=dbs[name])
                    if cur.set_range(prefix):
                        while cur.key().startswith(prefix):
                            if not cur.delete():
                                break

        if persist:
            self._write(lsn, txn_fn)
        for vid in vids:
            self.configs.pop(vid, None)
            self.states.pop(vid, None)
        return len(vids)

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
        view = state.view()
        old_rowids = [int(view.rowids[o]) for o in old if o >= 0]
        dbs = self.store.dbs

        # a row has a record only when it has metadata, a document or provenance (a 4th
        # element); its id lives in "ids"
        with_record = [i for i in range(m)
                       if metas[i] is not None or docs[i] is not None or prov[i] is not None]

        def txn_fn(txn):
            for old_rowid in old_rowids:
                key = schema.row_key(vid, old_rowid)
                txn.delete(key, db=dbs[b"vectors"])
                txn.delete(key, db=dbs[b"records"])
            keys = schema.row_keys(vid, rowids)
            txn.cursor(db=dbs[b"ids"]).putmulti(
                list(zip(schema.id_keys(vid, ids), schema.u64_values(rowids))))
            raw = np.ascontiguousarray(vectors, dtype="<f4")
            txn.cursor(db=dbs[b"vectors"]).putmulti(list(zip(keys, schema.rows_as_bytes(raw))))
            if with_record:
                txn.cursor(db=dbs[b"records"]).putmulti(
                    [(keys[i], pack([ids[i], metas[i], docs[i]] if prov[i] is None
                                    else [ids[i], metas[i], docs[i], prov[i]]))
                     for i in with_record])
            txn.put(schema.counter_key(vid), schema.pack_u64(rowids[-1] + 1),
                    db=dbs[b"counters"])

        if persist:
            self._write(lsn, txn_fn)
        if prepared is not None:
            index, stored, encoding = prepared
            state.apply_upsert(ids, vectors, metas, old, rowids, stored=stored,
                               encoded=(index, encoding))
        else:
            state.apply_upsert(ids, vectors, metas, old, rowids)
        return m

    def _delete(self, lsn: int, op: dict, persist: bool):
        state = self.states.get(op["vid"])
        if state is None:
            if persist:
                self._write(lsn, lambda txn: None)
            return 0
        vid = state.config.vid
        positions = [state.position_of(extid) for extid in op["ids"]]
        view = state.view()
        dbs = self.store.dbs

        def txn_fn(txn):
            for extid, pos in zip(op["ids"], positions):
                if pos is None:
                    continue
                key = schema.row_key(vid, int(view.rowids[pos]))
                txn.delete(schema.id_key(vid, extid), db=dbs[b"ids"])
                txn.delete(key, db=dbs[b"vectors"])
                txn.delete(key, db=dbs[b"records"])

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
