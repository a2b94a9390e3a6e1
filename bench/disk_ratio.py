"""Disk of a checkpointed SimpleVector IVF-PQ namespace against FAISS's saved index.

    python -m bench.disk_ratio 400000 50 25     # N DIM PQ_M (GloVe-shaped: 400k x 50, PQ25)

Builds N x DIM clustered l2 rows (int ids, durable batches of 10,000), IVF1024,PQ{M}x8,
Refine4, closes (checkpoint), and prints the directory's bytes by part next to FAISS
IndexIVFPQ + IndexRefineFlat (same nlist and M) written with ``write_index``.
"""

import os
import shutil
import sys

import numpy as np


def _size(path: str) -> int:
    if os.path.isfile(path):
        return os.stat(path).st_size
    return sum(os.stat(os.path.join(r, f)).st_size for r, _, fs in os.walk(path) for f in fs)


def main(n: int, dim: int, m: int, workdir: str = "bench/.cache/disk_ratio") -> dict:
    import faiss

    import simplevector as sv
    nlist = 1024
    rng = np.random.default_rng(0)
    C = rng.standard_normal((500, dim)).astype(np.float32)
    X = (C[rng.integers(0, 500, n)] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)
    path = os.path.join(workdir, "sv")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(workdir, exist_ok=True)
    db = sv.open(path, checkpoint_interval=0, auto_index=False)
    ns = db.create_namespace("bench", dim=dim, metric="l2", index=f"IVF{nlist},PQ{m}x8,Refine4")
    for s in range(0, n, 10000):
        ns.upsert(list(range(s, min(s + 10000, n))), X[s:s + 10000])
    ns.build_index()
    db.close()
    parts = {k: round(_size(os.path.join(path, k)) / 2**20, 2) for k in sorted(os.listdir(path))}
    index = faiss.IndexRefineFlat(faiss.IndexIVFPQ(faiss.IndexFlatL2(dim), dim, nlist, m, 8))
    index.train(X[:100000])
    index.add(X)
    fpath = os.path.join(workdir, "faiss.index")
    faiss.write_index(index, fpath)
    out = {"simplevector_mib": round(_size(path) / 2**20, 2), "parts_mib": parts,
           "faiss_mib": round(_size(fpath) / 2**20, 2),
           "ratio": round(_size(path) / _size(fpath), 3)}
    print(out)
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
