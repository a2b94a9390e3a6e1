"""kill -9 of the server during concurrent writes from several clients: every write that
was answered 2xx is in the database after restart, and has its audit entry."""

from __future__ import annotations

import threading
import time

import numpy as np

import simplevector as sv
from simplevector.ops.audit import read_entries, verify

from _serverproc import ServerProcess

CLIENTS = 4
DIM = 8


def test_kill_9_during_concurrent_writes_loses_no_acknowledged_write(tmp_path):
    path = tmp_path / "db"
    server = ServerProcess(path)
    with sv.connect(server.url, timeout=10.0) as admin:
        admin.create_namespace("w", dim=DIM, metric="l2")
    acked: list = [[] for _ in range(CLIENTS)]      # (id, request ok) per client
    stop = threading.Event()

    def writer(c: int):
        rng = np.random.default_rng(c)
        with sv.connect(server.url, timeout=10.0) as client:
            ns = client.namespace("w")
            i = 0
            while not stop.is_set():
                ids = [f"c{c}-{i}", f"c{c}-{i}-b"]       # a batch of two, all-or-nothing
                vectors = rng.standard_normal((2, DIM)).astype(np.float32)
                try:
                    ns.upsert(ids, vectors, metadata=[{"c": c, "i": i}, None])
                except sv.SimpleVectorError:
                    return                          # the server is gone: unacknowledged
                acked[c].append((ids, vectors))
                i += 1
    threads = [threading.Thread(target=writer, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while sum(map(len, acked)) < 200 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.kill() == -9
    stop.set()
    for t in threads:
        t.join(30)
    written = [row for rows in acked for row in rows]
    assert len(written) >= 50 and all(rows for rows in acked), "every client wrote"

    with sv.open(path, checkpoint_interval=0) as db:
        ns = db.namespace("w")
        for ids, vectors in written:
            records = ns.get(ids, include=("vectors", "metadata"))
            assert all(r is not None for r in records), f"acknowledged {ids} missing"
            np.testing.assert_array_equal(np.stack([r.vector for r in records]), vectors)

    # every acknowledged upsert has its audit entry (fsync'd before the answer); a torn
    # last line is cut (and logged) when the server opens the log again
    restarted = ServerProcess(path)
    assert restarted.stop() == 0, restarted.log()
    assert verify(path / "audit").ok
    audited = {tuple(e["ids"]) for e in read_entries(path / "audit")
               if e.get("action") == "upsert" and e.get("outcome") == "ok"}
    missing = [ids for ids, _ in written if tuple(ids) not in audited]
    assert not missing, f"{len(missing)} acknowledged upserts have no audit entry"
