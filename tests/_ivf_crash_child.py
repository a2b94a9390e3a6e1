"""Child process for tests/test_ivf.py (not collected: the name has no test_ prefix).

Every mode opens DB (auto_index off, checkpointer off, durability "sync"), makes sure the
namespace "ivf" (dim 16, l2, "IVF16,PQ8x8,Refine4") exists, holds the base batches and has
a trained index that a checkpoint has persisted, prints "ready", then runs its workload.
After every upsert call that returned it prints "ack BATCH" (flushed), so the parent knows
exactly which batches were acknowledged before it sends SIGKILL.

    python _ivf_crash_child.py ingest DB FIRST_BATCH
        upsert batches FIRST_BATCH, FIRST_BATCH+1, ... forever.
    python _ivf_crash_child.py train DB FIRST_BATCH
        a writer thread upserts batches forever while the main thread re-trains the index
        again and again (prints "training" before and "trained" after each build_index).
    python _ivf_crash_child.py ckpt DB FIRST_BATCH
        forever: upsert one batch, then checkpoint (prints "ckpt" after each checkpoint).
    python _ivf_crash_child.py tail DB FIRST_BATCH TAIL
        upsert TAIL batches after the checkpoint, print "done", then exit without closing
        (os._exit: no checkpoint at close), leaving the tail to WAL replay.

Batch b holds ids "b{b}-0" .. "b{b}-{BATCH_ROWS-1}" with vectors seeded by b.
"""

import os
import sys
import threading

import numpy as np

import simplevector as sv

NS = "ivf"
DIM = 16
SPEC = "IVF16,PQ8x8,Refine4"
BATCH_ROWS = 100
BASE_BATCHES = 12           # 1,200 rows: above IVF16's 16 x 39 = 624 training rows

_print_lock = threading.Lock()


def say(text):
    with _print_lock:
        print(text, flush=True)


def batch_ids(batch):
    return [f"b{batch}-{i}" for i in range(BATCH_ROWS)]


#: every batch draws from the same 20 clusters, so rows written after training follow the
#: distribution the index was trained on (no drift: PQ codebooks stay accurate)
CENTRES = np.random.default_rng(7).standard_normal((20, DIM)) * 4.0


def batch_vectors(batch):
    rng = np.random.default_rng(1000 + batch)
    labels = rng.integers(0, len(CENTRES), BATCH_ROWS)
    return (CENTRES[labels] + rng.standard_normal((BATCH_ROWS, DIM))).astype(np.float32)


def write(ns, batch):
    ns.upsert(batch_ids(batch), batch_vectors(batch))
    say(f"ack {batch}")


def prepare(path, first):
    """Open, ensure the base rows, a trained index and a checkpoint; returns (db, ns, next)."""
    db = sv.open(path, durability="sync", checkpoint_interval=0, auto_index=False)
    try:
        ns = db.namespace(NS)
    except sv.NamespaceNotFound:
        ns = db.create_namespace(NS, dim=DIM, metric="l2", index=SPEC)
    batch = int(first)
    while ns.count() < BASE_BATCHES * BATCH_ROWS:
        write(ns, batch)
        batch += 1
    if ns.index_info()["active"] == "Flat":
        ns.build_index()
        db.checkpoint()
    say("ready")
    return db, ns, batch


def ingest(path, first):
    _, ns, batch = prepare(path, first)
    while True:
        write(ns, batch)
        batch += 1


def train(path, first):
    _, ns, batch = prepare(path, first)

    def writer():
        b = batch
        while True:
            write(ns, b)
            b += 1

    threading.Thread(target=writer, daemon=True).start()
    while True:
        say("training")
        ns.build_index()
        say("trained")


def ckpt(path, first):
    db, ns, batch = prepare(path, first)
    while True:
        write(ns, batch)
        batch += 1
        db.checkpoint()
        say("ckpt")


def tail(path, first, count):
    _, ns, batch = prepare(path, first)
    for b in range(batch, batch + int(count)):
        write(ns, b)
    say("done")
    os._exit(0)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"ingest": ingest, "train": train, "ckpt": ckpt, "tail": tail}[mode](*args)
