"""Child process for tests/test_sync.py and tests/test_migration.py (not collected).

    python _fresh_child.py sync DB LOG N BATCH
        sync records 0..N-1 (tests/_fresh_child.records) into namespace "docs" with a
        counting embedding function that appends each text it embeds to LOG (one line,
        flushed before the vectors are returned); prints "batch DONE" after each batch,
        then "done".
    python _fresh_child.py migrate DB LOG BATCH
        attach the old function, start (or resume) the migration of "docs" to the new
        model and run it, logging the new model's texts to LOG; prints "batch DONE TOTAL"
        after each batch, then "done".
    python _fresh_child.py steps DB LOG BATCH
        migrate with writes and deletes between the steps, printing "created", "written",
        "batch" (each back-fill batch), "ran", "promoted", "done".
"""

import hashlib
import sys
import time

import numpy as np

import simplevector as sv

DIM = 8
OLD, NEW = "count-a@1.0.0", "count-b@2.0.0"


def records(n, changed=()):
    return [{"id": f"r{i}", "text": f"record {i} text" + (" changed" if i in changed else ""),
             "metadata": {"src": f"s{i % 4}"}} for i in range(n)]


def vector_of(text, salt):
    seed = int.from_bytes(hashlib.sha256((salt + text).encode()).digest()[:8], "big")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


class Counting:
    """Deterministic vectors per (model, text); counts (and optionally logs) each text."""

    def __init__(self, model=OLD, log=None, delay=0.0, price=0.0):
        self.model, self.dim = model, DIM
        self.texts = []
        self.log = open(log, "a", buffering=1) if log else None
        self.delay = delay
        self.price_per_1k_tokens = price

    def embed(self, texts):
        if self.delay:
            time.sleep(self.delay)
        if self.log:
            for t in texts:
                self.log.write(t + "\n")
            self.log.flush()
        self.texts.extend(texts)
        return np.stack([vector_of(t, self.model) for t in texts])

    def count_tokens(self, texts):
        return sum(len(t.split()) for t in texts)


def _db(path):
    return sv.open(path, checkpoint_interval=0)


def sync(path, log, n, batch):
    db = _db(path)
    fn = Counting(OLD, log, delay=0.05)
    try:
        ns = db.namespace("docs", embedding=fn)
    except sv.NamespaceNotFound:
        ns = db.create_namespace("docs", embedding=fn, metric="l2")
    print("ready", flush=True)
    ns.sync(records(int(n)), batch_size=int(batch),
            progress=lambda done: print(f"batch {done}", flush=True))
    print("done", flush=True)
    db.close()


def migrate(path, log, batch):
    db = _db(path)
    db.namespace("docs", embedding=Counting(OLD))
    m = db.migrate("docs", embedding=Counting(NEW, log, delay=0.05))
    print("ready", flush=True)
    m.run(batch_size=int(batch),
          progress=lambda done, total: print(f"batch {done} {total}", flush=True))
    print("done", flush=True)
    db.close()


def steps(path, log, batch):
    """Every step of a migration with writes between them, a marker line after each."""
    db = _db(path)
    ns = db.namespace("docs", embedding=Counting(OLD))
    m = db.migrate("docs", embedding=Counting(NEW, log, delay=0.02))
    print("created", flush=True)
    ns.sync(records(150, changed={3, 4, 5})[2:], mode="full")      # dual-written
    ns.delete(ids=["r10"])
    print("written", flush=True)
    m.run(batch_size=int(batch), progress=lambda done, total: print("batch", flush=True))
    print("ran", flush=True)
    m.promote()
    print("promoted", flush=True)
    print("done", flush=True)
    db.close()


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"sync": sync, "migrate": migrate, "steps": steps}[mode](*args)
