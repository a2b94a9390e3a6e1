"""The shard actor of a cluster (``sv.cluster``): one embedded database in one Ray actor.

The class is plain Python; :mod:`simplevector.cluster_db` wraps it with ``ray.remote`` and the
restart options, so importing this module does not import Ray. Every method is a thin call
of the public embedded API (``sv.open``, ``Namespace``, ``db.snapshot``, ``db.health``,
``db.metrics_text``); the actor adds nothing the embedded database does not do, which is why
a shard restarted by Ray is an ordinary reopen: WAL replay after LMDB's applied LSN.

An actor runs with ``max_concurrency`` > 1 (a threaded actor), so concurrent writes from
the coordinator share one fdatasync (group commit) as they would in one process.
"""

from __future__ import annotations

import os
import socket

import numpy as np


def _node_id() -> str | None:
    try:
        import ray
        return ray.get_runtime_context().get_node_id()
    except Exception:       # outside Ray (tests of the class itself, a plain process)
        return None


def _reconstructed() -> bool:
    try:
        import ray
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:
        return False


class ShardActor:
    """Owns the embedded database ``path`` of shard ``index``; opened when the actor starts
    (and again, with WAL replay, each time Ray restarts it)."""

    def __init__(self, index: int, path: str, open_options: dict):
        import simplevector as sv
        self.index, self.path = index, path
        self.open_error = None
        self.restarted = _reconstructed()
        try:
            self.db = sv.open(path, **open_options)
        except Exception as e:      # reported by info() and every call, not as a dead actor
            self.db, self.open_error = None, e

    def _open_db(self):
        if self.open_error is not None:
            raise self.open_error
        return self.db

    # -- status ---------------------------------------------------------------------------
    def ping(self) -> int:
        self._open_db()
        return self.index

    def info(self) -> dict:
        db = self._open_db()
        namespaces = {}
        for ns in db.list_namespaces():
            namespaces[ns.name] = sum(v.count for v in ns.versions)
        return {"index": self.index, "path": self.path, "pid": os.getpid(),
                "node": _node_id(), "host": socket.gethostname(),
                "count": sum(namespaces.values()), "lsn": db.lsn,
                "namespaces": namespaces, "restarted": self.restarted,
                "writable": db.writable}

    def catalog(self) -> dict:
        """{name: {dim, metric, model, index, count, live_version, versions}}."""
        out = {}
        for ns in self._open_db().list_namespaces():
            live = next((v for v in ns.versions if v.live), None)
            out[ns.name] = {"dim": None if live is None else live.dim,
                            "metric": None if live is None else live.metric,
                            "model": None if live is None else live.model,
                            "index": None if live is None else live.index,
                            "live_version": ns.live_version,
                            "versions": [v.to_dict() for v in ns.versions]}
        return out

    def health(self):
        return self._open_db().health()

    def metrics_text(self) -> str:
        return self._open_db().metrics_text()

    # -- DDL ------------------------------------------------------------------------------
    def create_namespace(self, name, dim, metric, model, index) -> dict:
        self._open_db().create_namespace(name, dim=dim, metric=metric, model=model,
                                         index=index)
        return self.catalog()[name]

    def drop_namespace(self, name) -> None:
        self._open_db().drop_namespace(name)

    # -- data -----------------------------------------------------------------------------
    def upsert(self, name, ids, vectors, metadata, documents) -> int:
        ns = self._open_db().namespace(name)
        return ns.upsert(ids, np.asarray(vectors), metadata=metadata, documents=documents)

    def get(self, name, ids, include) -> list:
        return self._open_db().namespace(name).get(list(ids), include=include)

    def delete(self, name, ids, where) -> int:
        return self._open_db().namespace(name).delete(ids=ids, where=where)

    def count(self, name) -> int:
        return self._open_db().namespace(name).count()

    def query(self, name, Q, k, where, include, nprobe, refine, exact, explain):
        """Top-k of every query row on this shard: (hits per row, plan or None)."""
        ns = self._open_db().namespace(name)
        out = ns.query(np.asarray(Q), k=k, where=where, include=include, nprobe=nprobe,
                       refine=refine, exact=exact, explain=explain)
        return out if explain else (out, None)

    def build_index(self, name, spec) -> dict:
        return self._open_db().namespace(name).build_index(spec)

    def index_info(self, name) -> dict:
        return self._open_db().namespace(name).index_info()

    # -- lifecycle ------------------------------------------------------------------------
    def snapshot(self, path):
        return self._open_db().snapshot(path)

    def checkpoint(self) -> int:
        return self._open_db().checkpoint()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
