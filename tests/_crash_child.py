"""Child process for tests/test_durability.py (not collected: the name has no test_ prefix).

    python _crash_child.py loop DB FIRST_BATCH CHECKPOINT_INTERVAL
        upsert batches FIRST_BATCH, FIRST_BATCH+1, ... forever; after each call returns,
        print "BATCH LSN" (flushed). Prints "ready" once the database is open.
    python _crash_child.py ckpt DB N1 N2
        upsert N1 batches, checkpoint, copy lmdb/data.mdb to DB/data.mdb.ckpt, upsert N2
        more batches, print "done LSN", then wait to be killed.
    python _crash_child.py reader DB
        open read-only; for each stdin line "NS" print that namespace's count (or the error
        class name); "lsn" prints db.lsn.
    python _crash_child.py try-writer DB
        try to open DB for writing and print the outcome.
"""

import shutil
import sys
import time

import numpy as np

import simplevector as sv

NS = "crash"
DIM = 8
BATCH_ROWS = 16


def batch_ids(batch):
    return [f"b{batch}-{i}" for i in range(BATCH_ROWS)]


def batch_vectors(batch):
    return np.random.default_rng(batch).standard_normal((BATCH_ROWS, DIM)).astype(np.float32)


def _namespace(db):
    try:
        return db.namespace(NS)
    except sv.NamespaceNotFound:
        return db.create_namespace(NS, dim=DIM, metric="l2")


def _write(ns, batch):
    return ns.upsert(batch_ids(batch), batch_vectors(batch),
                     metadata=[{"batch": batch}] * BATCH_ROWS)


def loop(path, first, interval):
    db = sv.open(path, durability="sync", checkpoint_interval=float(interval), wal_keep_bytes=0)
    ns = _namespace(db)
    print("ready", flush=True)
    batch = int(first)
    while True:
        lsn = _write(ns, batch)
        print(f"{batch} {lsn}", flush=True)
        batch += 1


def ckpt(path, n1, n2):
    db = sv.open(path, durability="sync", checkpoint_interval=0)
    ns = _namespace(db)
    for b in range(int(n1)):
        _write(ns, b)
    db.checkpoint()
    shutil.copyfile(f"{path}/lmdb/data.mdb", f"{path}/data.mdb.ckpt")
    lsn = None
    for b in range(int(n1), int(n1) + int(n2)):
        lsn = _write(ns, b)
    print(f"done {lsn}", flush=True)
    time.sleep(600)


def reader(path):
    db = sv.open(path, readonly=True)
    print("ready", flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if not cmd:
            continue
        try:
            out = db.lsn if cmd == "lsn" else db.namespace(cmd).count()
        except sv.SimpleVectorError as e:
            out = type(e).__name__
        print(out, flush=True)


def try_writer(path):
    start = time.monotonic()
    try:
        sv.open(path, checkpoint_interval=0)
    except sv.SimpleVectorError as e:
        print(type(e).__name__, isinstance(e, sv.StorageError),
              round(time.monotonic() - start, 3), flush=True)
        return
    print("opened", flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"loop": loop, "ckpt": ckpt, "reader": reader, "try-writer": try_writer}[mode](*args)
