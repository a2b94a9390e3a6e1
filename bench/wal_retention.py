"""Disk after ingest + checkpoint: the former fixed WAL retention against the default sized
to the database (issue 10 item 4), same data, same run.

    python -m bench.wal_retention [--n 100000] [--dim 128] [--batch 5000] [--workdir DIR]

Each run fills a fresh database with ``--n`` random float32 rows of ``--dim`` in batches,
checkpoints and closes it, then reports the directory's allocated bytes (st_blocks) split
into LMDB and WAL, next to the raw vector bytes: once with ``wal_keep_bytes=256 MiB`` (the
former default), once with the default (None: max(4 MiB, 25% of LMDB's used bytes), the
active segment sealed and removed when nothing pins it). Prints the machine (CPU, load).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from .env import machine

MIB = 1 << 20


def _du(path: str) -> int:
    return sum(os.stat(os.path.join(root, f)).st_blocks * 512
               for root, _dirs, files in os.walk(path) for f in files)


def run(n: int, dim: int, batch: int, workdir: str | None) -> dict:
    import simplevector as sv
    X = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    out = {"machine": machine(), "n": n, "dim": dim, "raw_vector_bytes": int(X.nbytes),
           "runs": []}
    for label, keep in (("fixed 256 MiB (former default)", 256 * MIB),
                        ("sized to the database (default)", None)):
        d = tempfile.mkdtemp(prefix="sv-retention-", dir=workdir)
        try:
            with sv.open(d, checkpoint_interval=0, auto_index=False, wal_keep_bytes=keep,
                         durability="async") as db:
                ns = db.create_namespace("v", dim=dim, metric="l2")
                for i in range(0, n, batch):
                    ns.upsert(list(range(i, min(n, i + batch))), X[i:i + batch])
            out["runs"].append({"retention": label, "dir_bytes": _du(d),
                                "lmdb_bytes": _du(os.path.join(d, "lmdb")),
                                "wal_bytes": _du(os.path.join(d, "wal"))})
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.wal_retention", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=5000)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", action="store_true", help="Print the result as JSON.")
    args = p.parse_args(argv)
    res = run(args.n, args.dim, args.batch, args.workdir)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    m = res["machine"]
    print(f"{m['cpu_model']}, {m['cores']} cores, load {m['loadavg_at_start']}")
    print(f"{res['n']} x {res['dim']} float32: raw vectors {res['raw_vector_bytes'] / MIB:.1f}"
          " MiB")
    for r in res["runs"]:
        print(f"{r['retention']:34s} dir {r['dir_bytes'] / MIB:7.1f} MiB  "
              f"(LMDB {r['lmdb_bytes'] / MIB:.1f}, WAL {r['wal_bytes'] / MIB:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
