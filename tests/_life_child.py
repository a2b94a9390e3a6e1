"""Child process for tests/test_lifecycle.py (not collected: the name has no test_ prefix).

    python _life_child.py archive DB ARCHIVE
        open DB with the WAL archive (small segments, checkpoints every 0.05 s), take a
        snapshot to DB-base, print "snap LSN", then upsert batches 0, 1, ... forever,
        printing "BATCH LSN" after each returns.
    python _life_child.py autosnap DB
        open DB with snapshot_interval=0.05, snapshot_keep=2, upsert batches forever,
        printing "BATCH LSN" after each returns.
    python _life_child.py consumer DB NAME SINCE
        record the named consumer at SINCE, print "recorded", then wait to be killed.
    python _life_child.py restore SNAPSHOT TARGET ARCHIVE TO_LSN
        print "start", point-in-time restore, print "done LSN".
"""

import sys
import time

import numpy as np

import simplevector as sv

NS = "life"
DIM = 16
BATCH_ROWS = 32


def batch_ids(batch):
    return [f"b{batch}-{i}" for i in range(BATCH_ROWS)]


def batch_vectors(batch):
    return np.random.default_rng(batch).standard_normal((BATCH_ROWS, DIM)).astype(np.float32)


def _write_forever(db, ns):
    batch = 0
    while True:
        lsn = ns.upsert(batch_ids(batch), batch_vectors(batch))
        print(f"{batch} {lsn}", flush=True)
        batch += 1


def archive(path, arch):
    db = sv.open(path, wal_archive=arch, wal_segment_bytes=16 << 10, wal_keep_bytes=0,
                 checkpoint_interval=0.05, auto_index=False)
    ns = db.create_namespace(NS, dim=DIM, metric="l2")
    info = db.snapshot(path + "-base")
    print(f"snap {info.lsn}", flush=True)
    _write_forever(db, ns)


def autosnap(path):
    db = sv.open(path, snapshot_interval=0.05, snapshot_keep=2, checkpoint_interval=0,
                 auto_index=False)
    ns = db.create_namespace(NS, dim=DIM, metric="l2")
    _write_forever(db, ns)


def consumer(path, name, since):
    db = sv.open(path, checkpoint_interval=0)
    db.changes(int(since), consumer=name)
    print("recorded", flush=True)
    time.sleep(600)


def restore(snapshot, target, arch, to_lsn):
    print("start", flush=True)
    report = sv.restore(snapshot, target, wal_archive=arch, to_lsn=int(to_lsn))
    print(f"done {report.lsn}", flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"archive": archive, "autosnap": autosnap, "consumer": consumer,
     "restore": restore}[mode](*args)
