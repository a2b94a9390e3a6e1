"""Reopen to first answer in fresh processes: the numpy path of engine/warmup.py against
waiting for the numba kernels, same database, same run.

    python -m bench.first_answer [--n 1000000] [--dim 128] [--runs 3] [--path DIR] [--cold]

Builds (once, at ``--path`` or a temporary directory) an l2 namespace of ``--n`` random
float32 rows of ``--dim`` with the default IVF-PQ spec for its size, then for each run
starts two fresh Python processes that open it read-only and answer one query: one as
shipped (``SIMPLEVECTOR_COLD_QUERIES`` unset: the first answer comes from numpy while the
kernels load), one with ``SIMPLEVECTOR_COLD_QUERIES=0`` (the first answer waits for the
kernels). Reports open time, first answer (open + query), the plan, and when the kernels
were loaded. Prints the machine (CPU, load). ``--cold`` empties the page cache before
each child (root; the interpreter and packages then come from disk too).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

from .env import machine

_CHILD = r"""
import json, sys, time
import numpy as np
import simplevector as sv
from simplevector.engine import warmup
q = np.random.default_rng(int(sys.argv[3])).standard_normal(int(sys.argv[2])).astype("f4")
t0 = time.perf_counter()
db = sv.open(sys.argv[1], checkpoint_interval=0, auto_index=False, readonly=True)
ns = db.namespace("v")
t_open = time.perf_counter() - t0
hits, plan = ns.query(q, k=10, include=(), explain=True)
first = time.perf_counter() - t0
kind = warmup.kind_of(db.engine._state(db.engine._resolve("v").vid).index, 0)
while not warmup.loaded(kind):
    time.sleep(0.002)
loaded = time.perf_counter() - t0
print(json.dumps({"open_s": t_open, "first_answer_s": first, "plan": plan.index,
                  "kernels_loaded_s": loaded, "ids": [h.id for h in hits]}))
"""


def build(path: str, n: int, dim: int) -> str:
    import simplevector as sv
    rng = np.random.default_rng(0)
    with sv.open(path, checkpoint_interval=0, auto_index=False, durability="async") as db:
        ns = db.create_namespace("v", dim=dim, metric="l2")
        for lo in range(0, n, 50_000):
            m = min(n, lo + 50_000) - lo
            ns.upsert(list(range(lo, lo + m)), rng.standard_normal((m, dim)).astype("f4"))
        return ns.build_index()["active"]


def drop_caches() -> None:
    """Empty the page cache (root only): the cold-cache figure."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as e:
        raise SystemExit(f"--cold needs root to write /proc/sys/vm/drop_caches: {e}") from e


def run(n: int, dim: int, runs: int, path: str | None, cold: bool = False) -> dict:
    tmp = None
    if path is None:
        tmp = path = tempfile.mkdtemp(prefix="sv-first-answer-")
    try:
        spec = None
        if not os.path.isdir(os.path.join(path, "lmdb")):
            spec = build(path, n, dim)
        out = {"machine": machine(), "n": n, "dim": dim, "spec": spec, "cold": cold,
               "runs": []}
        for r in range(runs):
            row = {}
            for label, env in (("numpy first", {}), ("kernels first",
                                                     {"SIMPLEVECTOR_COLD_QUERIES": "0"})):
                e = {k: v for k, v in os.environ.items() if k != "SIMPLEVECTOR_COLD_QUERIES"}
                e.update(env)
                if cold:
                    drop_caches()
                res = subprocess.run([sys.executable, "-c", _CHILD, path, str(dim), str(r)],
                                     env=e, capture_output=True, text=True, check=True)
                row[label] = json.loads(res.stdout)
            row["same_hits"] = row["numpy first"]["ids"] == row["kernels first"]["ids"]
            out["runs"].append(row)
        return out
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.first_answer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--path", default=None, help="keep (and reuse) the database here")
    p.add_argument("--cold", action="store_true",
                   help="Drop the page cache before each child (root): the cold-cache figure "
                        "(the Python interpreter and packages are read from disk too).")
    p.add_argument("--json", action="store_true", help="Print the result as JSON.")
    args = p.parse_args(argv)
    res = run(args.n, args.dim, args.runs, args.path, args.cold)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    m = res["machine"]
    print(f"{m['cpu_model']}, {m['cores']} cores, load {m['loadavg_at_start']}")
    print(f"{res['n']} x {res['dim']}, {res['spec'] or 'existing database'}"
          f"{', cold page cache' if res['cold'] else ''}")
    for i, row in enumerate(res["runs"]):
        for label in ("numpy first", "kernels first"):
            x = row[label]
            print(f"run {i} {label:13s} open {x['open_s']:.3f} s  first answer "
                  f"{x['first_answer_s']:.3f} s ({x['plan']})  kernels loaded "
                  f"{x['kernels_loaded_s']:.3f} s")
        print(f"run {i} same hits: {row['same_hits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
