"""A handle on one namespace version: upsert, get, delete, count, query.

A handle made without a version follows the alias: each call resolves the live version,
so a promotion takes effect for the next call and a call sees one version throughout.
"""

from __future__ import annotations

import numpy as np

from . import schema, validate
from .apply import unpack
from .errors import InvalidInput
from .filters import compile_filter
from .kernels import flat
from .types import Hit, Record

#: Below this fraction of matching rows, a filtered flat search gathers the matching rows
#: and scans only those; above it, it scans everything with the filter as a row mask.
SUBSET_FRACTION = 0.25


class Namespace:
    """One version of a namespace (the live one unless a version was named)."""

    def __init__(self, db, name: str, version: int | None = None):
        self._db = db
        self.name = name
        self._version = version

    def __repr__(self):
        try:
            c = self._config()
            return (f"<Namespace {c.name!r} v{c.version} dim={c.dim} metric={c.metric} "
                    f"model={c.model}>")
        except Exception:
            return f"<Namespace {self.name!r}>"

    # -- identity -----------------------------------------------------------------------
    def _config(self):
        self._db._check_open()
        self._db.refresh()
        return self._db._resolve(self.name, self._version)

    @property
    def version(self) -> int:
        return self._config().version

    @property
    def dim(self) -> int:
        return self._config().dim

    @property
    def metric(self) -> str:
        return self._config().metric

    @property
    def model(self):
        return self._config().model

    @property
    def index(self) -> str:
        return self._config().index

    @property
    def live(self) -> bool:
        return self._config().live

    # -- writes ---------------------------------------------------------------------------
    def upsert(self, ids, vectors, metadata=None, documents=None) -> int:
        """Insert or replace rows; returns the LSN of the write. All-or-nothing."""
        db = self._db
        db._check_writable()
        config = self._config()
        ids = validate.id_list(ids)
        X = validate.vector_matrix(vectors, config.dim, zero_ok=config.metric != "cosine")
        if X.shape[0] != len(ids):
            raise InvalidInput(f"{len(ids)} ids for {X.shape[0]} vectors; expected one id per vector")
        metas = validate.metadata_list(metadata, len(ids))
        docs = validate.document_list(documents, len(ids))
        vid = config.vid

        def build():
            current = db._resolve(self.name, self._version)
            if current.vid != vid:
                raise InvalidInput(
                    f"namespace {self.name!r} changed version while writing; retry the write")
            op = {"op": "upsert", "ns": self.name, "v": current.version, "vid": vid,
                  "ids": ids, "vec": X.astype("<f4", copy=False).tobytes()}
            if any(m is not None for m in metas):
                op["meta"] = metas
            if any(d is not None for d in docs):
                op["docs"] = docs
            return op

        lsn, _ = db._commit(build)
        return lsn

    def delete(self, ids=None, where=None) -> int:
        """Delete by ids, by filter, or both (ids that match the filter). Returns how many."""
        db = self._db
        db._check_writable()
        config = self._config()
        if ids is None and where is None:
            raise InvalidInput("delete needs ids, where, or both; got neither")
        if ids is not None:
            ids = validate.id_list(ids)
        if where is not None:
            node = compile_filter(where)
            state = db._state(config.vid)
            view = state.view()
            mask = state.fields.evaluate(node, view.n, view.alive) & view.alive
            matched = [state.extids[p] for p in np.flatnonzero(mask)]
            if ids is not None:
                keep = {(type(i), i) for i in ids}
                matched = [m for m in matched if (type(m), m) in keep]
            ids = matched
        if not ids:
            return 0
        vid = config.vid

        def build():
            current = db._resolve(self.name, self._version)
            if current.vid != vid:
                raise InvalidInput(
                    f"namespace {self.name!r} changed version while deleting; retry")
            return {"op": "delete", "ns": self.name, "v": current.version, "vid": vid,
                    "ids": ids}

        _, deleted = db._commit(build)
        return deleted

    # -- reads ------------------------------------------------------------------------------
    def count(self) -> int:
        """Rows stored (tombstones not counted)."""
        return self._db._state(self._config().vid).live

    def get(self, ids, include=("metadata", "documents")) -> list:
        """Records for ``ids`` in the same order; ``None`` where an id is not stored."""
        config = self._config()
        single = isinstance(ids, (str, int, np.integer)) and not isinstance(ids, bool)
        ids = validate.id_list(ids, allow_duplicates=True)
        include = validate.include_value(include)
        dbs = self._db._store.dbs
        out = []
        with self._db._store.read() as txn:
            for extid in ids:
                raw = txn.get(schema.id_key(config.vid, extid), db=dbs[b"ids"])
                if raw is None:
                    out.append(None)
                    continue
                key = schema.row_key(config.vid, schema.unpack_u64(raw))
                out.append(self._record(txn, key, extid, include, Record))
        return out[0] if single else out

    def _record(self, txn, key, extid, include, cls, **extra):
        dbs = self._db._store.dbs
        md = doc = vec = None
        if "metadata" in include or "documents" in include:
            raw = txn.get(key, db=dbs[b"records"])
            if raw is not None:
                _, md, doc = unpack(raw)
        if "vectors" in include:
            raw = txn.get(key, db=dbs[b"vectors"])
            if raw is not None:
                vec = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        return cls(id=extid, metadata=md if "metadata" in include else None,
                   document=doc if "documents" in include else None, vector=vec, **extra)

    def query(self, vectors, k: int = 10, where=None, include=("metadata",)):
        """The k nearest rows: ``list[Hit]`` for one vector, ``list[list[Hit]]`` for a matrix.

        With ``where``, exactly the k nearest among matching rows; fewer than k only when
        fewer rows match.
        """
        config = self._config()
        k = validate.k_value(k)
        include = validate.include_value(include)
        single = np.ndim(vectors) == 1
        Q = validate.vector_matrix(vectors, config.dim, what="query vectors",
                                   zero_ok=config.metric != "cosine")
        node = compile_filter(where) if where is not None else None
        state = self._db._state(config.vid)
        view = state.view()
        Q = state.prepare(Q)
        code = state.metric.code
        if view.live == 0:
            results = [([], []) for _ in range(len(Q))]
        elif node is None:
            results = self._search(view, Q, code, k, view.alive, None)
        else:
            allowed = state.fields.evaluate(node, view.n, view.alive) & view.alive
            matched = int(allowed.sum())
            if matched == 0:
                results = [([], []) for _ in range(len(Q))]
            elif matched < SUBSET_FRACTION * view.n:
                results = self._search(view, Q, code, k, None, np.flatnonzero(allowed))
            else:
                results = self._search(view, Q, code, k, allowed, None)
        hits = self._hits(state, view, results, include)
        return hits[0] if single else hits

    @staticmethod
    def _search(view, Q, code, k, mask, positions):
        """(distances, positions) per query, nearest first, no padding."""
        out = []
        if len(Q) == 1:
            if positions is not None:
                d, p = flat.search_subset(view.X, view.xnorm2, Q[0], code, k, positions)
            else:
                d, p = flat.search_one(view.X, view.xnorm2, Q[0], code, k, mask)
            return [(d, p)]
        if positions is not None:
            Xs = np.ascontiguousarray(view.X[positions])
            D, I = flat.search_batch(Xs, view.xnorm2[positions], Q, code, k, None)
            I = np.where(I >= 0, positions[np.maximum(I, 0)], -1)
        else:
            D, I = flat.search_batch(view.X, view.xnorm2, Q, code, k, mask)
        for d, p in zip(D, I):
            keep = p >= 0
            out.append((d[keep], p[keep]))
        return out

    def _hits(self, state, view, results, include):
        vid = state.config.vid
        need_lmdb = bool(include)
        out = []
        if need_lmdb:
            ctx = self._db._store.read()
            txn = ctx.__enter__()
        try:
            for dist, pos in results:
                hits = []
                for d, p in zip(dist, pos):
                    p = int(p)
                    extid = state.extids[p]
                    if need_lmdb:
                        key = schema.row_key(vid, int(view.rowids[p]))
                        hits.append(self._record(txn, key, extid, include, Hit,
                                                 distance=float(d)))
                    else:
                        hits.append(Hit(id=extid, distance=float(d)))
                out.append(hits)
        finally:
            if need_lmdb:
                ctx.__exit__(None, None, None)
        return out
