"""Tombstones across reopen (engine/state.py): checkpoint segments keep them until a
compaction; only a rebuild from the LMDB rows (segments unusable) yields dense arrays."""

import numpy as np

import simplevector as sv
from simplevector.engine import schema
from simplevector.engine.store import Store

DIM = 4
N = 20
DELETED = [0, 3, 7, 11, 19]
REPLACED = [1, 2, 5]          # upserted again: the old positions become tombstones


def _fill(path):
    rng = np.random.default_rng(5)
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("t", dim=DIM, metric="l2")
        ns.upsert(list(range(N)), rng.standard_normal((N, DIM)))
        ns.delete(ids=DELETED)
        ns.upsert(REPLACED, np.full((len(REPLACED), DIM), 9.0))
        assert ns.index_info()["tombstones"] == len(DELETED) + len(REPLACED)
    # close() checkpointed: the segments hold the arrays with their tombstones


def _alive():
    return set(range(N)) - set(DELETED)


def _assert_rows(ns):
    assert ns.count() == len(_alive())
    for q in (np.zeros(DIM), np.full(DIM, 9.0)):
        for exact in (False, True):
            hits = ns.query(q, k=N, exact=exact, include=())
            assert {h.id for h in hits} == _alive()
    assert ns.get(DELETED) == [None] * len(DELETED)
    for record in ns.get(REPLACED, include=("vectors",)):
        assert np.array_equal(record.vector, np.full(DIM, 9.0, np.float32))


def test_reopen_from_checkpoint_segments_keeps_the_tombstones(tmp_path):
    path = tmp_path / "db"
    _fill(path)
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        assert (db.memory_replayed_records, db.replayed_records) == (0, 0)  # segments loaded
        ns = db.namespace("t")
        assert ns.index_info()["tombstones"] == len(DELETED) + len(REPLACED)
        _assert_rows(ns)


def test_tombstones_made_after_a_reopen_add_to_the_restored_ones(tmp_path):
    path = tmp_path / "db"
    _fill(path)
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        db.namespace("t").delete(ids=[4, 6])
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.namespace("t")
        assert ns.index_info()["tombstones"] == len(DELETED) + len(REPLACED) + 2
        assert ns.count() == len(_alive()) - 2


def test_rebuild_from_lmdb_and_rows_without_a_checkpoint_keeps_positions(tmp_path):
    """Without a checkpoint the state is rebuilt from LMDB's ids and records and the row
    file; a row's position is its rowid, so deleted and replaced rows stay tombstones."""
    path = tmp_path / "db"
    _fill(path)
    store = Store(str(path / "lmdb"))
    store.write_with_retry(lambda txn: txn.delete(schema.META_SNAPSHOT, db=store.dbs[b"meta"]))
    store.close()
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.namespace("t")
        assert ns.index_info()["tombstones"] == len(DELETED) + len(REPLACED)
        _assert_rows(ns)
