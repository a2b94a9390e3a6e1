"""The server under load: N concurrent clients on loopback for T seconds, against baselines
measured in the same run.

    python -m bench.server [--clients 4] [--seconds 10] [--n 20000] [--dim 64] [--k 10]
                           [--batch 16] [--wire json|msgpack] [--no-chroma] [--warm 3]
                           [--out bench/results/server.json]

What is measured (every figure is printed and written to ``--out`` with the machine):

1. Overhead of one call: one client, sequential calls, p50 latency of ``query(q, k)`` (flat
   index, ``include=()``) and ``upsert`` of ``--batch`` rows, through ``sv.connect`` against
   ``simplevector serve`` on 127.0.0.1, divided by the same call on the embedded database
   (``sv.open``) in this process: the price of HTTP, encoding and the process hop.
2. Throughput: ``--clients`` threads, each with its own client (its own connection pool),
   loop for ``--seconds`` (at most 120): first queries, then upserts of ``--batch`` new rows
   (into a second namespace, so that every query run searches the same ``--n`` rows).
   QPS (calls/s), p50/p99 latency and errors. Baseline: the same threads calling the
   embedded database in this process. The server writes its audit log (one fsync'd JSONL
   entry per upsert, beside the WAL's group-committed fsync), as deployed.
3. The same loops against Chroma's server (``chroma run --path``, ``chromadb.HttpClient``)
   with the same vectors, when ``chromadb`` is installed. Chroma's index is HNSW (approximate)
   and its upserts are not fsync'd per call: the comparison is of the serving path, not of
   equal guarantees.

The database lives in a temporary directory (``--dir`` to choose its parent: fsync cost
depends on the file system). Ratios are what to compare across machines; absolute numbers
depend on the CPU (recorded) and the load of the machine (load average recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from .env import machine, versions

MAX_SECONDS = 120.0
#: seconds of queries against the fresh server before anything is timed (``--warm``): its
#: first second or so is answered in numpy while numba loads the kernels (engine/warmup.py;
#: the reopen to first answer is bench/first_answer.py's), not the steady state timed here
WARM_S = 3.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, path: str, proc, timeout: float = 120.0) -> None:
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=1.0).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


def _summary(latencies: list, errors: int, seconds: float) -> dict:
    lat = np.asarray(latencies, dtype=np.float64)
    return {"calls": int(lat.size), "errors": int(errors), "seconds": round(seconds, 3),
            "qps": round(lat.size / seconds, 1) if seconds else None,
            "p50_ms": round(float(np.percentile(lat, 50)) * 1e3, 3) if lat.size else None,
            "p99_ms": round(float(np.percentile(lat, 99)) * 1e3, 3) if lat.size else None}


def _load(clients: int, seconds: float, make_worker) -> dict:
    """``clients`` threads each running ``make_worker(c)()`` (one call) until time is up."""
    lats = [[] for _ in range(clients)]
    errs = [0] * clients
    start = threading.Barrier(clients + 1)
    stop = threading.Event()

    def run(c):
        call = make_worker(c)
        start.wait()
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                call()
            except Exception:
                errs[c] += 1
                continue
            lats[c].append(time.perf_counter() - t0)
    threads = [threading.Thread(target=run, args=(c,), daemon=True) for c in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join(60)
    elapsed = time.perf_counter() - t0
    return _summary([x for lst in lats for x in lst], sum(errs), elapsed)


def _sequential(call, calls: int) -> dict:
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter()
        call()
        lat.append(time.perf_counter() - t0)
    return _summary(lat, 0, sum(lat))


class _Ids:
    """Fresh ids per client for the upsert loops (never overwriting the loaded rows)."""

    def __init__(self, prefix):
        self.prefix, self.i = prefix, 0

    def next(self, batch):
        out = [f"{self.prefix}-{self.i + j}" for j in range(batch)]
        self.i += batch
        return out


def _simplevector_runs(args, X, Q, tmp) -> dict:
    import simplevector as sv
    rng = np.random.default_rng(7)
    new_rows = rng.standard_normal((4096, args.dim)).astype(np.float32)
    out = {}
    path = os.path.join(tmp, "sv")
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("bench", dim=args.dim, metric="l2", index="flat")
        for s in range(0, len(X), 5000):
            ns.upsert(list(range(s, min(s + 5000, len(X)))), X[s:s + 5000])
        # upserts go to their own namespace, so that the queried one is the same n rows
        # for every run (embedded and server)
        wns = db.create_namespace("writes", dim=args.dim, metric="l2", index="flat")
        # 1 + 2, embedded baselines
        qi = iter(range(10 ** 9))
        out["embedded_query_1"] = _sequential(
            lambda: ns.query(Q[next(qi) % len(Q)], k=args.k, include=()), args.calls)
        ids = _Ids("e1")
        out["embedded_upsert_1"] = _sequential(
            lambda: wns.upsert(ids.next(args.batch), new_rows[:args.batch]), args.calls // 4)

        def q_worker(c):
            it = iter(range(c, 10 ** 9, args.clients))
            return lambda: ns.query(Q[next(it) % len(Q)], k=args.k, include=())

        def u_worker(c):
            ids = _Ids(f"e{c}")
            return lambda: wns.upsert(ids.next(args.batch), new_rows[:args.batch])
        out["embedded_query_n"] = _load(args.clients, args.seconds, q_worker)
        out["embedded_upsert_n"] = _load(args.clients, args.seconds, u_worker)

    # the server on the same database
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.path.join(tmp, "server.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "simplevector.cli", "serve", "--db", path,
                             "--port", str(port), "--log-level", "warning"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_http(url, "/healthz", proc)
        with sv.connect(url, wire=args.wire) as client:
            rns = client.namespace("bench")
            rwns = client.namespace("writes")
            # warm the route and the pool, and let the server's kernels load (a fresh
            # process answers in numpy meanwhile, engine/warmup.py): steady state is timed
            warm_until = time.perf_counter() + args.warm
            while time.perf_counter() < warm_until:
                rns.query(Q[0], k=args.k, include=())
            qi = iter(range(10 ** 9))
            out["server_query_1"] = _sequential(
                lambda: rns.query(Q[next(qi) % len(Q)], k=args.k, include=()), args.calls)
            ids = _Ids("s1")
            out["server_upsert_1"] = _sequential(
                lambda: rwns.upsert(ids.next(args.batch), new_rows[:args.batch]),
                args.calls // 4)
        clients = [sv.connect(url, wire=args.wire) for _ in range(args.clients)]

        def sq_worker(c):
            r = clients[c].namespace("bench")
            it = iter(range(c, 10 ** 9, args.clients))
            return lambda: r.query(Q[next(it) % len(Q)], k=args.k, include=())

        def su_worker(c):
            r = clients[c].namespace("writes")
            ids = _Ids(f"s{c}")
            return lambda: r.upsert(ids.next(args.batch), new_rows[:args.batch])
        out["server_query_n"] = _load(args.clients, args.seconds, sq_worker)
        out["server_upsert_n"] = _load(args.clients, args.seconds, su_worker)
        for c in clients:
            c.close()
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    return out


def _chroma_runs(args, X, Q, tmp) -> dict | None:
    try:
        import chromadb
    except ImportError:
        return None
    chroma = shutil.which("chroma") or os.path.join(os.path.dirname(sys.executable), "chroma")
    if not os.path.exists(chroma):
        return {"error": "the chroma command is not installed"}
    rng = np.random.default_rng(7)
    new_rows = rng.standard_normal((4096, args.dim)).astype(np.float32).tolist()
    port = _free_port()
    log = open(os.path.join(tmp, "chroma.log"), "wb")
    proc = subprocess.Popen([chroma, "run", "--path", os.path.join(tmp, "chroma"), "--host",
                             "127.0.0.1", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    out = {}
    try:
        _wait_http(f"http://127.0.0.1:{port}", "/api/v2/heartbeat", proc)
        client = chromadb.HttpClient(host="127.0.0.1", port=port)
        col = client.create_collection("bench", metadata={"hnsw:space": "l2"},
                                       embedding_function=None)
        for s in range(0, len(X), 2000):
            col.add(ids=[str(i) for i in range(s, min(s + 2000, len(X)))],
                    embeddings=X[s:s + 2000].tolist())
        wcol = client.create_collection("writes", metadata={"hnsw:space": "l2"},
                                        embedding_function=None)
        Ql = Q.tolist()
        qi = iter(range(10 ** 9))
        out["chroma_query_1"] = _sequential(
            lambda: col.query(query_embeddings=[Ql[next(qi) % len(Ql)]], n_results=args.k,
                              include=["distances"]), args.calls)
        ids = _Ids("c1")
        out["chroma_upsert_1"] = _sequential(
            lambda: wcol.upsert(ids=ids.next(args.batch), embeddings=new_rows[:args.batch]),
            args.calls // 4)

        def q_worker(c):
            cl = chromadb.HttpClient(host="127.0.0.1", port=port).get_collection("bench")
            it = iter(range(c, 10 ** 9, args.clients))
            return lambda: cl.query(query_embeddings=[Ql[next(it) % len(Ql)]],
                                    n_results=args.k, include=["distances"])

        def u_worker(c):
            cl = chromadb.HttpClient(host="127.0.0.1", port=port).get_collection("writes")
            ids = _Ids(f"c{c}")
            return lambda: cl.upsert(ids=ids.next(args.batch), embeddings=new_rows[:args.batch])
        out["chroma_query_n"] = _load(args.clients, args.seconds, q_worker)
        out["chroma_upsert_n"] = _load(args.clients, args.seconds, u_worker)
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()
    return out


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--calls", type=int, default=400, help="sequential calls for the overhead")
    p.add_argument("--warm", type=float, default=WARM_S,
                   help="seconds of untimed queries against the fresh server first")
    p.add_argument("--wire", choices=["json", "msgpack"], default="json")
    p.add_argument("--no-chroma", action="store_true")
    p.add_argument("--dir", default=None, help="parent of the temporary database directory")
    p.add_argument("--out", default="bench/results/server.json")
    args = p.parse_args(argv)
    if not 0 < args.seconds <= MAX_SECONDS:
        p.error(f"--seconds must be in (0, {MAX_SECONDS:g}]")
    if args.clients < 1:
        p.error("--clients must be >= 1")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.n, args.dim)).astype(np.float32)
    Q = rng.standard_normal((1000, args.dim)).astype(np.float32)
    env = machine()
    tmp = tempfile.mkdtemp(prefix="sv-bench-server-", dir=args.dir)
    try:
        runs = _simplevector_runs(args, X, Q, tmp)
        if not args.no_chroma:
            chroma = _chroma_runs(args, X, Q, tmp)
            if chroma is None:
                runs["chroma"] = "not installed (pip install chromadb, in the bench extra)"
            else:
                runs.update(chroma)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = {
        "server_over_embedded_query_p50_1_client": _ratio(runs["server_query_1"]["p50_ms"],
                                                          runs["embedded_query_1"]["p50_ms"]),
        "server_over_embedded_upsert_p50_1_client": _ratio(
            runs["server_upsert_1"]["p50_ms"], runs["embedded_upsert_1"]["p50_ms"]),
        "server_over_embedded_query_qps": _ratio(runs["server_query_n"]["qps"],
                                                 runs["embedded_query_n"]["qps"]),
        "server_over_embedded_upsert_qps": _ratio(runs["server_upsert_n"]["qps"],
                                                  runs["embedded_upsert_n"]["qps"]),
    }
    if "chroma_query_n" in runs:
        ratios.update({
            "server_over_chroma_query_qps": _ratio(runs["server_query_n"]["qps"],
                                                   runs["chroma_query_n"]["qps"]),
            "server_over_chroma_upsert_qps": _ratio(runs["server_upsert_n"]["qps"],
                                                    runs["chroma_upsert_n"]["qps"]),
            "server_over_chroma_query_p50_1_client": _ratio(
                runs["server_query_1"]["p50_ms"], runs["chroma_query_1"]["p50_ms"]),
        })
    given = argv if argv is not None else sys.argv[1:]
    result = {"command": " ".join(["python -m bench.server", *given]),
              "params": vars(args), "machine": env, "versions": versions(), "runs": runs,
              "ratios": ratios, "loadavg_at_end": os.getloadavg()}
    for name, r in runs.items():
        if isinstance(r, dict) and "qps" in r:
            print(f"{name:22s} qps {r['qps']:>9}  p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  "
                  f"errors {r['errors']}")
        else:
            print(f"{name:22s} {r}")
    for name, v in ratios.items():
        print(f"{name:42s} {v}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return result


if __name__ == "__main__":
    main()
