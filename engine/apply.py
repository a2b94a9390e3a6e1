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
| compact            | ``vid``, ``gen`` (the row file generation it starts)      |

``compact`` renumbers the version's live rows to ``0..live-1`` (engine/compact.py): the
rows go to a new row file generation, written and fsync'd before the LMDB transaction
that rekeys the version's ids and records and names the generation. Replaying it on the
state it was first applied to gives the same layout; the old generation's file is kept
until a checkpoint no longer needs it (a replay from an older checkpoint reads it).
"""

from __future__ import annotations

import os
import threading
from dataclasses import replace

import msgpack
import numpy as np

from . import compact, schema, segments
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
            "compact": self._compact,
        }
        # per thread: callable(rows) the compaction applied on that thread reports to
        self.compact_progress = threading.local()
        if not readonly:
            os.makedirs(os.path.join(path, segments.ROWS_DIR), exist_ok=True)

    def _row_file(self, config: VersionConfig, *, fresh: bool = False, gen: int = 0) -> RowFile:
        path = segments.row_path(self.path, config.vid, gen)
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
                        config, meta, arrays, self._row_file(config, gen=meta.get("gen", 0)))
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
        raw = txn.get(schema.gen_key(vid), db=dbs[b"counters"])
        gen = schema.unpack_u64(raw) if raw else 0
        state = VersionState(config, n, rows=self._row_file(config, gen=gen))
        state.gen = gen
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
                txn.delete(schema.gen_key(vid), db=dbs[b"counters"])
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
            if self.write_rows and state is not None:
                # after the commit; a crash before this leaves a file no version names,
                # which the next open removes (Applier.remove_orphans)
                try:
                    os.unlink(segments.row_path(self.path, vid, state.gen))
                except FileNotFoundError:
                    pass
        return len(vids)

    def remove_orphans(self, keep=()):
        """Row files no version uses: of versions the catalog no longer has (a drop cut
        short), and generations a compaction replaced, except the (vid, gen) pairs in
        ``keep`` (those the last checkpoint still names: a replay from it reads them)."""
        if not self.write_rows:
            return
        current = {(vid, st.gen) for vid, st in self.states.items()} | set(keep)
        rows_dir = os.path.join(self.path, segments.ROWS_DIR)
        for entry in os.listdir(rows_dir):
            parsed = segments.parse_row_name(entry)
            if parsed is None or parsed in current or parsed[0] >= self.next_vid:
                continue
            try:
                os.unlink(os.path.join(rows_dir, entry))
            except FileNotFoundError:
                pass

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

    def _compact(self, lsn: int, op: dict, persist: bool):
        """Renumber the version's live rows to ``0..live-1`` in a new row file generation
        (module docstring). Returns (positions before, live rows), or None when the
        version was dropped."""
        state = self.states.get(op["vid"])
        if state is None:
            if persist:
                self._write(lsn, lambda txn: None)
            return None
        config, vid, gen = state.config, state.config.vid, op["gen"]
        what = f"compaction of namespace {config.name!r} v{config.version}"
        if persist and gen != state.gen:
            with self.store.read() as txn:
                raw = txn.get(schema.gen_key(vid), db=self.store.dbs[b"counters"])
            if raw is not None and schema.unpack_u64(raw) == gen:
                # an earlier try committed the rekey and failed before the swap (a retried
                # apply): LMDB is on the new layout already, only the memory is not
                persist = False
        with state.mutate_lock:
            meta, arrays = state.capture()
            keep = compact.survivors(arrays["alive"])
            before, live = int(meta["n"]), len(keep)
            new_meta, new_arrays = compact.remap_bundle(meta, arrays, keep, what=what)
            new_meta["gen"] = gen
            path = segments.row_path(self.path, vid, gen)
            row_bytes = config.dim * 4
            if self.readonly:
                if not os.path.exists(path):
                    raise StaleRowFile(f"{what}: row file {path} is gone (a later compaction "
                                       "replaced it); reload from the checkpoint")
                rows = RowFile(path, config.dim, readonly=True)
            else:
                have = os.path.getsize(path) if os.path.exists(path) else -1
                # a replay in memory (persist=False) finds the file the first apply wrote
                # and fsync'd before its LMDB commit; a replay into LMDB writes it again
                rewrite = persist or have < live * row_bytes
                if rewrite:
                    with open(path, "wb"):
                        pass
                rows = RowFile(path, config.dim)
                if rewrite:
                    compact.copy_rows(state.rows.rows(before), keep, rows,
                                      progress=getattr(self.compact_progress, "fn", None))
                    rows.sync()
                    segments.fsync_dir(os.path.dirname(path))
            if persist:
                self._write(lsn, lambda txn: self._rekey(txn, vid, gen, keep, before))
            new_state = VersionState.restore(config, new_meta, new_arrays, rows)
            new_state.mutations, new_state.checkpointed_mutations = 1, -1   # not in a bundle yet
            new_state.remaps = {g: k for g, k in state.remaps.items() if g >= gen - 4}
            new_state.remaps[state.gen] = keep
            old = state
            self.states[vid] = new_state
        if old.rows is not None:
            old.rows.close()        # the mapping lives on while a query still reads it
        return before, live

    def _rekey(self, txn, vid: int, gen: int, keep: np.ndarray, before: int):
        """The version's ids and records renumbered like its rows (one transaction)."""
        dbs = self.store.dbs
        remap = np.full(before, -1, np.int64)
        remap[keep] = np.arange(len(keep), dtype=np.int64)
        prefix = schema.vid_prefix(vid)
        ids = list(schema.scan_prefix(txn, dbs[b"ids"], prefix))
        parsed = [schema.parse_id_value(k, v) for k, v in ids]
        old = np.array([r for r, _c in parsed], np.int64)
        if len(old) and (int(old.max()) >= before or int(remap[old].min()) < 0):
            raise CorruptionError(f"namespace version {vid}: an id entry names a row that is "
                                  "not live; compaction stopped before changing anything",
                                  hint="run `simplevector verify` for details")
        new = remap[old] if len(old) else old
        keys = [k for k, _v in ids]
        txn.cursor(db=dbs[b"ids"]).putmulti(list(zip(keys, schema.id_values(
            keys, new.tolist(), [c for _r, c in parsed]))))
        records = list(schema.scan_prefix(txn, dbs[b"records"], prefix))
        if records:
            rows = np.frombuffer(b"".join(k[4:12] for k, _v in records), ">u8").astype(np.int64)
            if int(rows.max()) >= before or int(remap[rows].min()) < 0:
                raise CorruptionError(f"namespace version {vid}: a record names a row that "
                                      "is not live; compaction stopped before changing anything",
                                      hint="run `simplevector verify` for details")
            moved = remap[rows]
            # in ascending order a record moves to a key at or below its own, whose record
            # (if any) has moved already: overwrite in place, then delete only the old keys
            # no record moved to
            txn.cursor(db=dbs[b"records"]).putmulti(
                list(zip(schema.row_keys(vid, moved), [v for _k, v in records])))
            for key in schema.row_keys(vid, np.setdiff1d(rows, moved, assume_unique=True)):
                txn.delete(key, db=dbs[b"records"])
        txn.put(schema.counter_key(vid), schema.pack_u64(len(keep)), db=dbs[b"counters"])
        txn.put(schema.gen_key(vid), schema.pack_u64(gen), db=dbs[b"counters"])


class StaleRowFile(CorruptionError):
    """A read-only process followed the WAL to a compaction whose row file a later one
    already replaced: it reloads from the writer's checkpoint instead."""
