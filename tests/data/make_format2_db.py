"""Make tests/data/format2-db with the format-2 code (run at commit a09a7ed):
``python tests/data/make_format2_db.py tests/data/format2-db``. It also writes what that
code reads back, tests/data/format2-expected.json (ids, metadata, documents, vectors).

The database has a checkpoint (array bundles with a trained IVF-PQ index) and a WAL tail
after it that LMDB has applied (the process ends with ``os._exit``: no clean close)."""
import json
import os
import shutil
import sys

import numpy as np

import simplevector as sv

out = sys.argv[1]
shutil.rmtree(out, ignore_errors=True)
rng = np.random.default_rng(11)
db = sv.open(out, checkpoint_interval=0, auto_index=False)
a = db.create_namespace("docs", dim=8, metric="cosine", model="m@1.0.0")
X = rng.standard_normal((300, 8)).astype(np.float32)
a.upsert(list(range(300)), X,
         metadata=[{"i": i, "even": i % 2 == 0, "tag": f"t{i % 5}"} for i in range(300)],
         documents=[f"doc {i}" for i in range(300)])
a.delete(list(range(0, 300, 7)))
a.upsert([5, 6], X[:2] * 2, metadata=[{"i": -5}, {"i": -6}])
b = db.create_namespace("items", dim=4, metric="l2", index="IVF4,PQ2")
Y = rng.standard_normal((400, 4)).astype(np.float32)
b.upsert([f"s{i}" for i in range(400)], Y, metadata=[{"n": i} for i in range(400)])
b.build_index()
v2 = db.create_version("docs", index="Flat")
v2.upsert(["x", "y"], X[:2])
db.checkpoint()
# a tail after the checkpoint: applied to LMDB, replayed from the WAL on top of the bundles
a.upsert([1000, 1001], X[2:4], metadata=[{"i": 1000}, {"i": 1001}])
b.delete(["s3", "s4"])
b.upsert(["s1"], Y[10:11], metadata=[{"n": -1}])
expected = {}
for info in db.list_namespaces():
    for version in [v.version for v in info.versions]:
        ns = db.namespace(info.name, version)
        ids = ns.ids()
        recs = ns.get(ids, include=("metadata", "documents", "vectors"))
        expected[f"{info.name}@{version}"] = {
            "dim": ns.dim, "metric": ns.metric, "model": ns.model, "live": ns.live,
            "count": ns.count(),
            "rows": [[r.id, r.metadata, r.document, r.vector.tolist()] for r in recs]}
with open(os.path.join(os.path.dirname(os.path.abspath(out)), "format2-expected.json"),
          "w") as f:
    json.dump(expected, f)
os._exit(0)   # no clean close: the bundles stay older than LMDB
