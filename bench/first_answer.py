"""Reopen to first answer in fresh processes: the numpy path of engine/warmup.py against
waiting for the numba kernels, same database, same run.

    python -m bench.first_answer [--n 1000000] [--dim 128] [--runs 3] [--path DIR] [--cold]
                                 [--namespace NAME] [--filter JSON]

Builds (once, at ``--path`` or a temporary directory) an l2 namespace of ``--n`` random
float32 rows of ``--dim`` with the default IVF-PQ spec for its size, then for each run
starts two fresh Python processes that open it read-only and answer one query: one as
shipped (``SIMPLEVECTOR_COLD_QUERIES`` unset: the first answer comes from numpy while the
kernels load), one with ``SIMPLEVECTOR_COLD_QUERIES=0`` (the first answer waits for the
kernels). Reports open time, first answer (open + query), the plan, and when the kernels
were loaded. Prints the machine (CPU, load). ``--cold`` empties the page cache before
each child (root; the interpreter and packages then come from disk too).

``--path`` naming an existing database (``--namespace``, default ``v``) measures that one,
for example the demo's (``--path simplevector-demo --namespace glove``). ``--filter``
(a where-clause as JSON) then times one filtered query right after the first answer, in the
same process, with its plan's stage times: the first filtered query after a reopen.
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
args = json.loads(sys.argv[1])

t0 = time.perf_counter()
db = sv.open(args["path"], checkpoint_interval=0, auto_index=False, readonly=True)
ns = db.namespace(args["namespace"])
t_open = time.perf_counter() - t0
q = np.random.default_rng(args["seed"]).standard_normal(ns.dim).astype("f4")
hits, plan = ns.query(q, k=10, include=(), explain=True)
first = time.perf_counter() - t0
out = {"open_s": t_open, "first_answer_s": first, "plan": plan.index,
       "ids": [h.id for h in hits]}
if args["filter"] is not None:
    t1 = time.perf_counter()
    fhits, fplan = ns.query(q, k=10, where=args["filter"], include=(), explain=True)
    out["filtered_s"] = time.perf_counter() - t1
    out["filtered_plan"] = fplan.index
    out["filtered_stages_s"] = fplan.seconds
    out["filtered_ids"] = [h.id for h in fhits]
kind = warmup.kind_of(db.engine._state(db.engine._resolve(args["namespace"]).vid).index, 0)
while not warmup.loaded(kind):
    time.sleep(0.002)
out["kernels_loaded_s"] = time.perf_counter() - t0
print(json.dumps(out))
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


def run(n: int, dim: int, runs: int, path: str | None, cold: bool = False,
        namespace: str = "v", where: dict | None = None) -> dict:
    tmp = None
    if path is None:
        tmp = path = tempfile.mkdtemp(prefix="sv-first-answer-")
    try:
        spec = None
        if not os.path.isdir(os.path.join(path, "lmdb")):
            spec = build(path, n, dim)
        out = {"machine": machine(), "n": n, "dim": dim, "spec": spec, "cold": cold,
               "namespace": namespace, "filter": where, "runs": []}
        for r in range(runs):
            row = {}
            for label, env in (("numpy first", {}), ("kernels first",
                                                     {"SIMPLEVECTOR_COLD_QUERIES": "0"})):
                e = {k: v for k, v in os.environ.items() if k != "SIMPLEVECTOR_COLD_QUERIES"}
                e.update(env)
                if cold:
                    drop_caches()
                arg = json.dumps({"path": path, "namespace": namespace, "seed": r,
                                  "filter": where})
                res = subprocess.run([sys.executable, "-c", _CHILD, arg],
                                     env=e, capture_output=True, text=True)
                if res.returncode:
                    raise SystemExit(f"the measuring process failed:\n{res.stderr}")
                row[label] = json.loads(res.stdout)
            row["same_hits"] = row["numpy first"]["ids"] == row["kernels first"]["ids"]
            if where is not None:
                row["same_filtered_hits"] = (row["numpy first"]["filtered_ids"]
                                             == row["kernels first"]["filtered_ids"])
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
    p.add_argument("--namespace", default="v",
                   help="The namespace to query in an existing --path database.")
    p.add_argument("--filter", default=None, type=json.loads,
                   help="A where-clause as JSON: time one filtered query after the first "
                        "answer, e.g. '{\"rank\": {\"$lt\": 20000}, \"alpha\": true}'.")
    p.add_argument("--json", action="store_true", help="Print the result as JSON.")
    args = p.parse_args(argv)
    res = run(args.n, args.dim, args.runs, args.path, args.cold, args.namespace, args.filter)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    m = res["machine"]
    print(f"{m['cpu_model']}, {m['cores']} cores, load {m['loadavg_at_start']}")
    what = (f"{res['n']} x {res['dim']}, {res['spec']}" if res["spec"] else
            f"existing database, namespace {res['namespace']!r}")
    print(what + (", cold page cache" if res["cold"] else "")
          + (f", filter {json.dumps(res['filter'])}" if res["filter"] is not None else ""))
    for i, row in enumerate(res["runs"]):
        for label in ("numpy first", "kernels first"):
            x = row[label]
            print(f"run {i} {label:13s} open {x['open_s']:.3f} s  first answer "
                  f"{x['first_answer_s']:.3f} s ({x['plan']})  kernels loaded "
                  f"{x['kernels_loaded_s']:.3f} s")
            if "filtered_s" in x:
                stages = ", ".join(f"{k} {v * 1e3:.1f} ms"
                                   for k, v in x["filtered_stages_s"].items())
                print(f"      then filtered {x['filtered_s'] * 1e3:.1f} ms "
                      f"({x['filtered_plan']}; {stages})")
        print(f"run {i} same hits: {row['same_hits']}"
              + (f", filtered {row['same_filtered_hits']}" if "same_filtered_hits" in row
                 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
