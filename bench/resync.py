"""Re-sync of unchanged and 1 %-changed records: ``ns.sync`` against LangChain's
``index()`` with its SQL record manager over Chroma (both in the ``bench`` extra).

    python -m bench.resync [--n 100000] [--changed 0.01] [--batch 256] [--dim 16] [--out F]

Both systems get the same records (synthetic sentences, ``metadata.source`` one of 100
values) and the same deterministic embedding function (a vector seeded by the SHA-256 of
the text, so the model costs next to nothing and the figures are the sync machinery's),
which counts its calls and texts. Steps, each timed in this process:

1. initial load of ``n`` records (``mode="full"`` / ``cleanup="full"``);
2. re-sync of the same ``n`` records, unchanged;
3. re-sync with ``changed`` of the texts changed;
4. a kill mid-run: a child process re-syncs with 10 % of the texts changed (a slowed
   embedder) and is killed with SIGKILL after a few batches; then the parent checks whether
   the store and the change-tracking agree (SimpleVector: the content hashes are in the
   rows; LangChain: record-manager keys against the Chroma ids) and runs the sync again,
   counting what it embeds.

Prints one line per figure; ``--out`` writes them as JSON. The ratio to report is
SimpleVector's time over LangChain's in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

WORDS = ("alpha beta gamma delta river mountain city music paper light stone water market "
         "garden window story bridge engine forest winter summer signal planet letter").split()


def make_records(n: int, changed: float = 0.0, seed: int = 0, change_seed: int = 1):
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(WORDS), size=(n, 8))
    flip = set()
    if changed:
        crng = np.random.default_rng(change_seed)
        flip = set(crng.choice(n, int(round(n * changed)), replace=False).tolist())
    out = []
    for i in range(n):
        text = f"doc {i}: " + " ".join(WORDS[j] for j in picks[i])
        if i in flip:
            text += f" (revised {change_seed})"
        out.append({"id": f"d{i}", "text": text, "metadata": {"source": f"s{i % 100}"}})
    return out


class HashEmbedder:
    """Deterministic vectors per text; counts calls and texts. ``delay`` seconds a call."""

    def __init__(self, dim: int, model: str = "hash@1.0.0", delay: float = 0.0):
        self.dim, self.model, self.delay = dim, model, delay
        self.calls = self.texts = 0

    def embed(self, texts):
        self.calls += 1
        self.texts += len(texts)
        if self.delay:
            time.sleep(self.delay)
        out = np.empty((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big")
            out[i] = np.random.default_rng(seed).standard_normal(self.dim)
        return out

    # LangChain's Embeddings interface
    def embed_documents(self, texts):
        return self.embed(texts).tolist()

    def embed_query(self, text):
        return self.embed([text])[0].tolist()


# -- SimpleVector --------------------------------------------------------------------------
def sv_open(path):
    import simplevector as sv
    return sv.open(path, checkpoint_interval=0, auto_index=False)


def sv_sync(path, records, fn, batch, progress=None):
    import simplevector as sv
    db = sv_open(path)
    try:
        try:
            ns = db.namespace("docs", embedding=fn)
        except sv.NamespaceNotFound:
            ns = db.create_namespace("docs", embedding=fn, metric="l2")
        report = ns.sync(records, mode="full", batch_size=batch, progress=progress)
    finally:
        db.close()
    return report


def sv_consistent(path, records, dim):
    """(rows, rows whose stored hash is not the hash of the record's current text)."""
    from simplevector.ops.sync import content_hash
    db = sv_open(path)
    try:
        ns = db.namespace("docs")
        ids = [r["id"] for r in records]
        prov = ns.provenance(ids)
        stale = sum(1 for r, p in zip(records, prov)
                    if p is None or p["h"] != content_hash(r["text"], r["metadata"],
                                                           "hash@1.0.0"))
        return ns.count(), stale
    finally:
        db.close()


# -- LangChain -----------------------------------------------------------------------------
def lc_parts(path, fn):
    from langchain_chroma import Chroma
    from langchain_classic.indexes import SQLRecordManager
    from langchain_core.embeddings import Embeddings

    class Wrapped(Embeddings):
        def embed_documents(self, texts):
            return fn.embed_documents(texts)

        def embed_query(self, text):
            return fn.embed_query(text)

    store = Chroma(collection_name="docs", embedding_function=Wrapped(),
                   persist_directory=os.path.join(path, "chroma"))
    rm = SQLRecordManager("chroma/docs", db_url=f"sqlite:///{os.path.join(path, 'rm.sqlite')}")
    rm.create_schema()
    return store, rm


def lc_sync(path, records, fn, batch, progress=None):
    from langchain_core.documents import Document
    from langchain_core.indexing import index
    store, rm = lc_parts(path, fn)

    def docs():
        for n, r in enumerate(records, 1):
            if progress is not None and n % batch == 0:
                progress(n)
            yield Document(page_content=r["text"], metadata={**r["metadata"], "id": r["id"]})
    return index(docs(), rm, store, cleanup="full", source_id_key="source",
                 batch_size=batch, key_encoder="sha256")


def lc_consistent(path, dim):
    """(record-manager keys, store ids, keys not in the store, store ids not tracked)."""
    fn = HashEmbedder(dim)
    store, rm = lc_parts(path, fn)
    keys = set(rm.list_keys())
    ids = set(store.get(include=[])["ids"])
    return len(keys), len(ids), len(keys - ids), len(ids - keys)


# -- the child of the kill test --------------------------------------------------------------
def child(system, path, n, batch, dim):
    records = make_records(int(n), changed=0.10, change_seed=7)
    fn = HashEmbedder(int(dim), delay=0.02)
    run = sv_sync if system == "sv" else lc_sync
    print("ready", flush=True)
    run(path, records, fn, int(batch), progress=lambda done: print(f"batch {done}", flush=True))
    print("done", flush=True)


def kill_mid_run(system, path, n, batch, dim, after=8):
    proc = subprocess.Popen([sys.executable, "-m", "bench.resync", "--child", system, path,
                             str(n), str(batch), str(dim)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    seen = 0
    for line in proc.stdout:
        if line.startswith("batch"):
            seen += 1
            if seen >= after:
                break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return seen


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--changed", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--dir", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--child", nargs=5, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(*a.child)
    out = {"n": a.n, "changed": a.changed, "batch": a.batch, "dim": a.dim,
           "cpu": cpu_model(), "cores": os.cpu_count(), "loadavg": os.getloadavg()[0],
           "python": platform.python_version(), "numpy": np.__version__}

    def line(key, value):
        out[key] = value
        print(f"{key}: {value}", flush=True)

    base = tempfile.mkdtemp(prefix="sv-resync-", dir=a.dir)
    same = make_records(a.n)
    changed = make_records(a.n, a.changed)
    for system, run in (("simplevector", sv_sync), ("langchain", lc_sync)):
        path = os.path.join(base, system)
        os.makedirs(path)
        for step, recs in (("load", same), ("resync_unchanged", same),
                           ("resync_changed", changed)):
            fn = HashEmbedder(a.dim)
            t0 = time.perf_counter()
            run(path, recs, fn, a.batch)
            seconds = time.perf_counter() - t0
            line(f"{system}.{step}.seconds", round(seconds, 3))
            line(f"{system}.{step}.model_calls", fn.calls)
            line(f"{system}.{step}.texts_embedded", fn.texts)
    for step in ("resync_unchanged", "resync_changed"):
        line(f"ratio.{step}.seconds",
             round(out[f"simplevector.{step}.seconds"] / out[f"langchain.{step}.seconds"], 4))
    # the kill test, on a fresh copy of each at its "changed" state
    killed = make_records(a.n, changed=0.10, change_seed=7)
    for system, tag in (("simplevector", "sv"), ("langchain", "lc")):
        path = os.path.join(base, system)
        kill_mid_run(tag, path, a.n, a.batch, a.dim)
        if tag == "sv":
            rows, stale = sv_consistent(path, killed, a.dim)
            line("simplevector.after_kill.rows", rows)
            line("simplevector.after_kill.rows_not_current", stale)
        else:
            keys, ids, untracked_keys, untracked_ids = lc_consistent(path, a.dim)
            line("langchain.after_kill.record_manager_keys", keys)
            line("langchain.after_kill.store_ids", ids)
            line("langchain.after_kill.keys_not_in_store", untracked_keys)
            line("langchain.after_kill.store_ids_not_in_record_manager", untracked_ids)
        fn = HashEmbedder(a.dim)
        (sv_sync if tag == "sv" else lc_sync)(path, killed, fn, a.batch)
        line(f"{system}.rerun_after_kill.texts_embedded", fn.texts)
        if tag == "sv":
            rows, stale = sv_consistent(path, killed, a.dim)
            line("simplevector.after_rerun.rows_not_current", stale)
        else:
            keys, ids, k_only, i_only = lc_consistent(path, a.dim)
            line("langchain.after_rerun.keys_vs_store_mismatch", k_only + i_only)
    shutil.rmtree(base, ignore_errors=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
