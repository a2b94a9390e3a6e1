"""Child process for tests/test_storage.py (not collected: no test_ prefix).

    python _storage_child.py churn DB SEED
        open DB (checkpointing every 10 ms), then forever: upsert, replace or delete rows of
        the namespace "s" (IVF4,PQ2 over 8-d rows, with metadata), printing one line per
        acknowledged operation: "u ID,ID,... SEED" (rows from seed SEED) or "d ID,ID,...",
        each announced by "try <op>" before it is called.

    python _storage_child.py compact DB SEED
        the same with the compaction policy on and explicit compactions ("c").

    python _storage_child.py rabitq DB SEED
        churn on an IVF4,RaBitQ namespace (its checkpoints write the codes' row terms and
        the rotated centre with the lists).
"""

import sys

import numpy as np

import simplevector as sv

DIM = 8


def rows(ids, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((len(ids), DIM)).astype(np.float32)


def meta(extid, seed):
    return {"k": extid % 7, "seed": seed}


def compact(path, seed):
    """churn, with the compaction policy at a 20% tombstone ratio (from 20 rows) and an
    explicit compaction every ~25 operations ("try c" / "c")."""
    churn(path, seed, compacting=True)


def rabitq(path, seed):
    """churn, on an IVF-RaBitQ index."""
    churn(path, seed, index="IVF4,RaBitQ")


def churn(path, seed, compacting=False, index="IVF4,PQ2"):
    seed = int(seed)
    options = {"compact_ratio": 0.2, "compact_min_rows": 20} if compacting else \
        {"compact_ratio": 0}
    db = sv.open(path, checkpoint_interval=0.01, auto_index=False, **options)
    try:
        ns = db.namespace("s")
    except sv.NamespaceNotFound:
        ns = db.create_namespace("s", dim=DIM, metric="l2", index=index)
        first = list(range(400))
        ns.upsert(first, rows(first, 0), metadata=[meta(i, 0) for i in first])
        ns.build_index()
        print("u " + ",".join(map(str, first)) + " 0", flush=True)
    print("ready", flush=True)
    rng = np.random.default_rng(seed)
    step = seed * 1_000_000
    while True:
        step += 1
        ids = sorted(set(rng.integers(0, 600, int(rng.integers(1, 40))).tolist()))
        if compacting and rng.random() < 0.04:
            print("try c", flush=True)
            ns.compact()
            print("c", flush=True)
            continue
        if rng.random() < 0.25:
            op = "d " + ",".join(map(str, ids))
            print("try " + op, flush=True)
            ns.delete(ids)
        else:
            op = "u " + ",".join(map(str, ids)) + f" {step}"
            print("try " + op, flush=True)
            ns.upsert(ids, rows(ids, step), metadata=[meta(i, step) for i in ids])
        print(op, flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"churn": churn, "compact": compact, "rabitq": rabitq}[mode](*args)
