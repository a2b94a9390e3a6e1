"""A handle on one namespace version: upsert, get, delete, count, query.

A handle made without a version follows the alias: each call resolves the live version,
so a promotion takes effect for the next call and a call sees one version throughout.
"""

from __future__ import annotations

import functools
import threading
import time

import numpy as np

from . import planner, schema, validate, warmup
from .apply import pack
from .errors import InvalidInput, StorageError
from .filters import compile_filter
from .kernels import flat
from .observer import compile_clock
from .planner import Plan, flat_plan, ivf_plan, use_blas_scan
from .types import Hit, Record, StoredRecord

__all__ = ["Namespace", "Plan"]

#: largest packed provenance map of one row, bytes
MAX_PROVENANCE_BYTES = 1024


def _provenance_list(provenance, n: int) -> list:
    """None or one map (or None) per row, each small and msgpack-able."""
    if provenance is None:
        return [None] * n
    if not isinstance(provenance, (list, tuple)) or len(provenance) != n:
        raise InvalidInput(f"provenance {type(provenance).__name__} of "
                           f"{len(provenance) if hasattr(provenance, '__len__') else '?'} "
                           f"items is not valid; expected a list of {n} maps (or None)")
    for i, p in enumerate(provenance):
        if p is None:
            continue
        if not isinstance(p, dict):
            raise InvalidInput(f"provenance[{i}] {type(p).__name__} is not valid; expected a "
                               "map or None")
        try:
            size = len(pack(p))
        except (TypeError, ValueError) as e:
            raise InvalidInput(f"provenance[{i}] is not msgpack-able: {e}") from None
        if size > MAX_PROVENANCE_BYTES:
            raise InvalidInput(f"provenance[{i}] is {size} bytes packed; expected at most "
                               f"{MAX_PROVENANCE_BYTES}")
    return list(provenance)


def _padded(d, k):
    """One query's distances as a (1, k) array padded with +inf."""
    D = np.full((1, k), np.inf, np.float32)
    D[0, :len(d)] = d
    return D


def _one(d, p):
    """One query's (dist, pos), nearest first and all valid, as (1, m) views, m <= k:
    the single-query form of :meth:`Namespace._execute` (no padding to build and no
    padding to cut again; :meth:`Namespace.search` pads)."""
    return d.reshape(1, -1), p.reshape(1, -1)


def _observed(op: str):
    """Time a public data operation and report it to the database's observers, with the
    numba compilation it triggered split out (engine/observer.py)."""
    def wrap(fn):
        @functools.wraps(fn)
        def timed(self, *args, **kwargs):
            c0 = compile_clock.thread_seconds()
            t0 = time.perf_counter()
            ok = False
            try:
                out = fn(self, *args, **kwargs)
                ok = True
                return out
            finally:
                seconds = time.perf_counter() - t0
                compiled = compile_clock.thread_seconds() - c0
                self._db._notify_operation(op, self.name, max(0.0, seconds - compiled), ok,
                                           compiled)
        return timed
    return wrap


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

    @property
    def version_id(self) -> int:
        """The engine's number for this version: unique across the database and never
        reused, so a namespace dropped and created again gets a new one (a key for caches
        of derived figures)."""
        return self._config().vid

    # -- writes ---------------------------------------------------------------------------
    @_observed("upsert")
    def upsert(self, ids, vectors, metadata=None, documents=None, *, provenance=None) -> int:
        """Insert or replace rows; returns the LSN of the write. All-or-nothing.

        ``provenance``: one small map (or None) per row, stored with the row in the same
        transaction as its vector (the ops layer's content hash, model and times); read
        back with :meth:`provenance` and :meth:`scan`."""
        db = self._db
        db._check_writable()
        config = self._config()
        ids = validate.id_list(ids)
        X = validate.vector_matrix(vectors, config.dim, zero_ok=config.metric != "cosine")
        if X.shape[0] != len(ids):
            raise InvalidInput(
                f"{len(ids)} ids for {X.shape[0]} vectors; expected one id per vector")
        metas = validate.metadata_list(metadata, len(ids))
        docs = validate.document_list(documents, len(ids))
        prov = _provenance_list(provenance, len(ids))
        validate.upsert_limits(db.limits, ids, X, metas, docs)
        vid = config.vid
        # with a trained index, encoding the batch starts now on the encoder thread and
        # overlaps the WAL append, the fsync and the LMDB write; the apply picks it up (or
        # encodes again if the index was swapped meanwhile)
        state = db._state(vid)
        prepared = None
        index = state.index
        if index is not None:
            stored = state.prepare(X)
            prepared = (index, stored, db._encoder().submit(index.encode, stored))

        def build():
            current = db._resolve(self.name, self._version)
            if current.vid != vid:
                raise InvalidInput(
                    f"namespace {self.name!r} changed version while writing; retry the write")
            op = {"op": "upsert", "ns": self.name, "v": current.version, "vid": vid,
                  "ids": ids, "vec": X.astype("<f4", copy=False).tobytes()}
            if metas.count(None) != len(metas):
                op["meta"] = metas
            if docs.count(None) != len(docs):
                op["docs"] = docs
            if prov.count(None) != len(prov):
                op["prov"] = prov
            return op

        lsn, _ = db._commit(build, prepared=prepared)
        db._maybe_train(vid)
        return lsn

    @_observed("delete")
    def delete(self, ids=None, where=None) -> int:
        """Delete by ids, by filter, or both (ids that match the filter). Returns how many."""
        db = self._db
        db._check_writable()
        config = self._config()
        if ids is None and where is None:
            raise InvalidInput("delete needs ids, where, or both; got neither")
        if ids is not None:
            ids = validate.id_list(ids)
        node = compile_filter(where) if where is not None else None
        vid = config.vid

        def resolve_ids():
            if node is None:
                return ids
            state = db._state(vid)
            view = state.view()
            # already ANDed with alive; read-only, and the same array for a repeated
            # filter until the next write (a widened RaBitQ scan keys its list bits on it)
            mask = state.fields.evaluate(node, view.n, view.alive)
            matched = state.extids_at(np.flatnonzero(mask))
            if ids is not None:
                keep = set(ids)             # str and int ids are distinct keys
                matched = [m for m in matched if m in keep]
            return matched

        if not resolve_ids():               # nothing matches: nothing to log
            return 0

        def build():
            current = db._resolve(self.name, self._version)
            if current.vid != vid:
                raise InvalidInput(
                    f"namespace {self.name!r} changed version while deleting; retry")
            # the filter is evaluated again here, under the sequence lock and after every
            # earlier write is applied, so the delete is exactly "what matched at its LSN"
            db._wait_applied()
            return {"op": "delete", "ns": self.name, "v": current.version, "vid": vid,
                    "ids": resolve_ids()}

        _, deleted = db._commit(build)
        return deleted

    # -- reads ------------------------------------------------------------------------------
    def count(self) -> int:
        """Rows stored (tombstones not counted)."""
        return self._db._state(self._config().vid).live

    @_observed("get")
    def get(self, ids, include=("metadata", "documents")) -> list:
        """Records for ``ids`` in the same order; ``None`` where an id is not stored."""
        config = self._config()
        single = isinstance(ids, (str, int, np.integer)) and not isinstance(ids, bool)
        ids = validate.id_list(ids, allow_duplicates=True)
        include = validate.include_value(include)
        dbs = self._db._store.dbs
        state = self._db._state(config.vid)
        for _attempt in range(_LAYOUT_RETRIES):
            out = []
            with self._db._store.read() as txn:
                if not _same_layout(txn, dbs, state):
                    # a compaction committed its new layout and is swapping the state in
                    # (a read-only process catches up with the writer instead)
                    if self._db.readonly:
                        self._db.refresh()
                    else:
                        time.sleep(0.001)
                    state = self._db._state(config.vid)
                    continue
                for extid in ids:
                    key = schema.id_key(config.vid, extid)
                    raw = txn.get(key, db=dbs[b"ids"])
                    if raw is None:
                        out.append(None)
                        continue
                    out.append(self._record(txn, state, schema.parse_id_value(key, raw)[0],
                                            extid, include, Record))
            return out[0] if single else out
        raise StorageError(f"namespace {self.name!r}: the stored layout did not settle after a "
                           "compaction (LMDB and the in-memory state disagree)",
                           hint="run `simplevector verify`")

    def _record(self, txn, state, pos, extid, include, cls, *, rec_pos=None, **extra):
        """``rec_pos``: the row's rowid in ``txn`` when it differs from ``pos`` (the row's
        position in ``state``: a compaction committed between the two), -1 when ``txn``
        no longer has the row."""
        dbs = self._db._store.dbs
        md = doc = vec = None
        if "metadata" in include or "documents" in include:
            key_pos = pos if rec_pos is None else rec_pos
            key = schema.row_key(state.config.vid, max(key_pos, 0))
            raw = None if key_pos < 0 else txn.get(key, db=dbs[b"records"])
            if raw is not None:
                md, doc = schema.parse_record(key, raw)[1:3]
        if "vectors" in include:
            vec = state.row_vector(pos)
        return cls(id=extid, metadata=md if "metadata" in include else None,
                   document=doc if "documents" in include else None, vector=vec, **extra)

    @_observed("query")
    def query(self, vectors, k: int = 10, where=None, include=("metadata",), *,
              nprobe: int | None = None, refine: int | None = None, explain: bool = False,
              exact: bool = False):
        """The k nearest rows: ``list[Hit]`` for one vector, ``list[list[Hit]]`` for a matrix.

        With ``where``, exactly the k nearest among matching rows; fewer than k only when
        fewer rows match. ``nprobe`` and ``refine`` override the IVF spec's defaults for
        this call. ``exact=True`` bypasses the IVF index (the recall reference).
        ``explain=True`` returns ``(hits, Plan)``. :meth:`search` is the same query as
        fixed-shape arrays (no per-hit objects).
        """
        include = validate.include_value(include)
        try:
            single = np.ndim(vectors) == 1
        except (ValueError, TypeError):     # ragged rows: the validation below names them
            single = False
        t0 = time.perf_counter()
        with warmup.foreground():
            state, view, Q, D, P, plan, t3 = self._execute(vectors, k, where, nprobe, refine,
                                                           exact, t0)
            if len(P) == 1:
                results = [(D[0], P[0])]        # single queries come unpadded (_execute)
            else:
                keep = P >= 0
                results = [(D[i][keep[i]], P[i][keep[i]]) for i in range(len(P))]
            hits = self._hits(state, view, results, include)
        plan.seconds["fetch"] = time.perf_counter() - t3
        self._db._notify_query(self.name, plan, Q)
        out = hits[0] if single else hits
        return (out, plan) if explain else out

    @_observed("query")
    def search(self, vectors, k: int = 10, where=None, *, nprobe: int | None = None,
               refine: int | None = None, exact: bool = False, explain: bool = False):
        """The k nearest rows as fixed-shape arrays, FAISS's contract: ``(distances, ids)``.

        ``distances``: float32 (nq, k), nearest first, ``+inf`` where fewer than k rows
        exist (or match ``where``). ``ids``: a numpy **object** array (nq, k) holding each
        row's id as stored (int or str, the same objects :meth:`query` returns), ``None``
        where the distance is ``+inf``. One vector gives nq = 1. Same planning, filters and
        options as :meth:`query` (the same hits, in the same order), but no ``Hit`` per
        result and no metadata fetch; ``explain=True`` returns ``(distances, ids, Plan)``.
        For int ids, ``np.where(ids == None, -1, ids).astype(np.int64)`` gives FAISS's -1
        padding.
        """
        t0 = time.perf_counter()
        with warmup.foreground():
            state, _, Q, D, P, plan, t3 = self._execute(vectors, k, where, nprobe, refine,
                                                        exact, t0)
            if len(P) == 1:                     # a single query's (1, m) result, all valid
                m = P.shape[1]
                ids = np.empty((1, k), dtype=object)        # None-filled
                if m:
                    ids[0, :m] = state.extids_at(P[0])
                if m < k:
                    D = _padded(D[0], k)
            else:
                ids = np.full(P.shape, None, dtype=object)
                keep = P >= 0
                if keep.any():
                    ids[keep] = state.extids_at(P[keep])
        plan.seconds["fetch"] = time.perf_counter() - t3
        self._db._notify_query(self.name, plan, Q)
        return (D, ids, plan) if explain else (D, ids)

    def _execute(self, vectors, k, where, nprobe, refine, exact, t0, cold_ok=True):
        """Validate, plan and run a query: (state, view, prepared queries, D float32, P
        positions, Plan, time the search ended). A batch's D and P are (nq, k), padded with
        +inf / -1; a single query's are (1, m), m <= k, all valid (:func:`_one`): the
        padding is built only where a caller wants it."""
        config = self._config()
        k = validate.k_value(k)
        if nprobe is not None:
            nprobe = validate.positive_int(nprobe, "nprobe")
        if refine is not None:
            refine = validate.positive_int(refine, "refine")
        Q = validate.vector_matrix(vectors, config.dim, what="query vectors",
                                   zero_ok=config.metric != "cosine")
        node = compile_filter(where) if where is not None else None
        state = self._db._state(config.vid)
        view = state.view()
        Q = state.prepare(Q)
        code = state.metric.code
        plan = Plan(rows=view.live)
        t1 = time.perf_counter()
        mask, positions = view.alive, None
        if node is not None:
            # already ANDed with alive; read-only, and the same array for a repeated
            # filter until the next write (a widened RaBitQ scan keys its list bits on it)
            mask = state.fields.evaluate(node, view.n, view.alive)
            plan.matched = int(np.count_nonzero(mask))
            plan.selectivity = plan.matched / view.live if view.live else 0.0
        t2 = time.perf_counter()
        matched = view.live if plan.matched is None else plan.matched
        all_alive = node is None and view.live == view.n   # no tombstones, no filter
        index = None if exact else state.index
        kind = warmup.kind_of(index, view.n * config.dim) if cold_ok and len(Q) == 1 else None
        cold = None
        if kind is not None and matched and not warmup.loaded(kind):
            cold = self._cold(view, index, Q[0], code, k, node, mask, matched, nprobe, refine,
                              plan)
        single = len(Q) == 1
        if matched == 0:
            width = 0 if single else k
            D = np.full((len(Q), width), np.inf, np.float32)
            P = np.full((len(Q), width), -1, np.int64)
        elif cold is not None:
            # the first query of this kind in the process, answered in numpy; the kernels
            # load on a background thread running the same query (engine/warmup.py)
            D, P = cold
            warmup.start(kind, functools.partial(
                self._execute, vectors, k, where, nprobe, refine, exact, t0, cold_ok=False))
        elif index is not None:
            D, P = self._search_ivf(state, index, view, Q, code, k, mask, matched, nprobe,
                                    refine, plan, all_alive)
        else:
            plan.index = flat_plan(node is not None, matched, view.n)
            if plan.index == "flat-subset":
                positions = np.flatnonzero(mask)
                mask = None
            plan.candidates = matched
            if all_alive:
                mask = None                 # nothing to skip
            D, P = self._search(view, Q, code, k, mask, positions)
        t3 = time.perf_counter()
        want = min(k, matched)
        if single:
            plan.short = int(P.shape[1] < want)
        else:
            plan.short = int(np.count_nonzero((P >= 0).sum(axis=1) < want)) if want else 0
        plan.seconds = {"prepare": t1 - t0, "filter": t2 - t1, "search": t3 - t2}
        return state, view, Q, D, P, plan, t3

    @staticmethod
    def _cold(view, index, q, code, k, node, mask, matched, nprobe, refine, plan):
        """Answer one query in numpy while its kernels load (engine/warmup.py): the IVF
        search in numpy (unfiltered), or an exact scan of the allowed rows when
        they hold at most COLD_EXACT_VALUES values. (D, P) padded, or None when neither
        applies (the query then waits for the kernels)."""
        dim = view.X.shape[1]
        reason = "the numba kernels of this query are loading (a first query of the process)"
        if index is not None and node is None:
            probes = min(nprobe or index.spec.default_nprobe(), index.nlist)
            refine = refine or index.spec.refine or 1
            d, p = warmup.ivf_search(index, view.X, q, code, k, probes, refine,
                                     None if view.live == view.n else view.alive)
            if len(p) >= min(k, matched):
                plan.index, plan.nprobe, plan.spec = "ivf-numpy", probes, index.spec_text
                plan.refine = refine
                plan.reason = reason + ": the same IVF search in numpy"
                return _one(d, p)
        if matched * dim > warmup.COLD_EXACT_VALUES:
            return None
        allowed = None if node is None and view.live == view.n else mask
        d, p = warmup.exact(view.X, view.xnorm2, q, code, k, allowed)
        plan.index, plan.candidates = "exact-numpy", matched
        plan.reason = reason + ": an exact numpy scan"
        return _one(d, p)

    def _search_ivf(self, state, index, view, Q, code, k, mask, matched, nprobe, refine, plan,
                    all_alive):
        """(D, P) by the IVF plan (engine/planner.py), shaped as :meth:`_execute` says."""
        spec = index.spec
        filtered = plan.matched is not None
        # the scan costs weigh a filter's two ways only
        list_cost, code_cost = index.scan_costs() if filtered else (0, 0)
        row_cost = index.row_cost() if filtered else planner.MASK_COST
        choice = ivf_plan(
            filtered=filtered, matched=matched, live=view.live, k=k,
            nprobe=nprobe, refine=refine,
            spec_nprobe=nprobe or spec.default_nprobe(),
            spec_refine=spec.refine, nlist=index.nlist, has_codes=bool(index.m), dim=index.dim,
            list_cost=list_cost, code_cost=code_cost, row_cost=row_cost, queries=len(Q))
        plan.index, plan.spec, plan.nprobe = choice.index, index.spec_text, choice.nprobe
        plan.refine, plan.candidates, plan.reason = choice.refine, choice.candidates, choice.reason
        plan.max_lists = choice.max_lists
        if plan.index == "flat-subset":
            return self._search(view, Q, code, k, None, np.flatnonzero(mask))
        want = min(k, matched)
        widened = choice.min_lists >= 0 and choice.max_lists < index.nlist
        # short: the probed lists could not yield k matches; or a widened scan ran out of
        # lists (max_lists < nlist) before it saw an unfiltered query's worth of matching
        # rows, so its k may not be the nearest: both go exact
        if len(Q) == 1:
            d, p, scanned, reached = index.search(view.X, Q[0], k, choice.max_lists,
                                                  choice.refine, mask, all_alive,
                                                  choice.min_lists, choice.target_share)
            plan.lists = float(scanned)
            # plain Python on one query: numpy's small-array calls cost more than the logic
            if len(p) >= want and (reached or not widened):
                return _one(d, p)
            plan.index = "ivf+exact-fallback"
            if filtered:
                return self._search(view, Q, code, k, None, np.flatnonzero(mask))
            return self._search(view, Q, code, k, mask, None)
        D, P, scanned, reached = index.search_batch_padded(
            view.X, Q, k, choice.max_lists, choice.refine, mask, all_alive, choice.min_lists,
            choice.target_share)
        plan.lists = float(scanned.mean()) if len(scanned) else 0.0
        short = (P >= 0).sum(axis=1) < want
        if widened:
            short |= ~np.asarray(reached, bool)
        short = np.flatnonzero(short)
        if len(short):
            plan.index = "ivf+exact-fallback"
            if filtered:
                ED, EP = self._search(view, Q[short], code, k, None, np.flatnonzero(mask))
            else:
                ED, EP = self._search(view, Q[short], code, k, mask, None)
            D[short], P[short] = ED, EP
        return D, P

    def sample(self, n: int, *, seed: int = 0):
        """Up to ``n`` stored rows chosen at random: (ids, vectors as the index holds them,
        i.e. unit rows for cosine). For recall probes and drift checks."""
        n = validate.positive_int(n, "n")
        state = self._db._state(self._config().vid)
        view = state.view()
        alive = np.flatnonzero(view.alive)
        rng = np.random.default_rng(seed)
        pick = alive if len(alive) <= n else np.sort(rng.choice(alive, n, replace=False))
        return state.extids_at(pick), np.array(view.X[pick])

    def ids(self) -> list:
        """The ids of the stored rows, in the order they were written (oldest first)."""
        state = self._db._state(self._config().vid)
        view = state.view()
        return state.extids_at(np.flatnonzero(view.alive))

    def index_drift(self, sample: int = 2000, *, seed: int = 0):
        """(ratio, rows) for the trained IVF index: the quantization error of (up to
        ``sample``) live rows written since training over the training error, and how many
        such rows exist; ``(None, rows)`` when not measurable (no index, no new rows)."""
        sample = validate.positive_int(sample, "sample")
        state = self._db._state(self._config().vid)
        index = state.index
        if index is None:
            return None, 0
        view = state.view()
        new = np.flatnonzero(view.alive[index.trained_upto:]) + index.trained_upto
        if len(new) == 0 or not index.train_error:
            return None, len(new)
        if len(new) > sample:
            new = np.sort(np.random.default_rng(seed).choice(new, sample, replace=False))
        err = index.quantization_error(np.ascontiguousarray(view.X[new]))
        return err / index.train_error, len(new)

    def provenance(self, ids) -> list:
        """The provenance map stored with each of ``ids`` (None where the id is not stored
        or was written without one), in the same order."""
        config = self._config()
        ids = validate.id_list(ids, allow_duplicates=True)
        dbs = self._db._store.dbs
        out = []
        with self._db._store.read() as txn:
            for extid in ids:
                key = schema.id_key(config.vid, extid)
                raw = txn.get(key, db=dbs[b"ids"])
                rec = None
                if raw is not None:
                    rkey = schema.row_key(config.vid, schema.parse_id_value(key, raw)[0])
                    rec = txn.get(rkey, db=dbs[b"records"])
                    rec = schema.parse_record(rkey, rec) if rec is not None else None
                out.append(rec[3] if rec is not None and len(rec) > 3 else None)
        return out

    def scan(self, after: int | None = None, limit: int = 1000):
        """Stored rows in write order, ``limit`` at a time: ``(records, cursor)`` with
        :class:`StoredRecord` items (id, metadata, document, provenance). Pass ``cursor``
        as ``after`` for the next page; it is None after the last row. A cursor is a
        position in the version's history (a row id): rows rewritten after it was taken
        come again later, deleted rows do not. A cursor stays valid across a compaction
        of the version in this process (it names the row generation it was taken in);
        one older than that raises InvalidInput (start the scan again)."""
        if after is not None and (isinstance(after, bool) or not isinstance(after, int)
                                  or after < 0):
            raise InvalidInput(f"after {after!r} is not valid; expected a cursor from scan()")
        limit = validate.positive_int(limit, "limit")
        config = self._config()
        state = self._db._state(config.vid)
        view = state.view()
        start = 0 if after is None else state.cursor_position(after) + 1
        alive = np.flatnonzero(view.alive[start:view.n]) + start
        pick = alive[:limit].tolist()
        extids = state.extids_at(pick)
        dbs = self._db._store.dbs
        out = []
        with self._db._store.read() as txn:
            moved = not _same_layout(txn, dbs, state)
            for p, extid in zip(pick, extids):
                rp = _rowid_in(txn, dbs, state, extid) if moved else p
                key = schema.row_key(config.vid, max(rp, 0))
                raw = None if rp < 0 else txn.get(key, db=dbs[b"records"])
                rec = schema.parse_record(key, raw) if raw is not None else None
                if rec is None:
                    out.append(StoredRecord(id=extid))
                else:
                    out.append(StoredRecord(id=extid, metadata=rec[1], document=rec[2],
                                            provenance=rec[3] if len(rec) > 3 else None))
        cursor = state.cursor_of(int(pick[-1])) if pick and len(alive) > limit else None
        return out, cursor

    # -- maintenance ----------------------------------------------------------------------------
    def compact(self):
        """Rewrite this version without its tombstones (see :meth:`Database.compact`);
        returns a :class:`~.compact.CompactReport`."""
        config = self._config()
        return self._db.compact(config.name, config.version)

    # -- index management ---------------------------------------------------------------------
    def build_index(self, spec=None) -> dict:
        """Train (or re-train with a new spec) now; returns when the new index is live.

        Reads and writes from other threads continue meanwhile; the swap is atomic. With
        ``spec=None`` the version's configured spec is used ("auto" picks nlist/m/refine for
        the current size). A new spec is recorded in the catalog (through the WAL).
        Returns ``index_info()``.
        """
        db = self._db
        db._check_writable()
        config = self._config()
        from .indexspec import IndexSpec
        if spec is not None:
            parsed = IndexSpec.parse(spec).check_dim(config.dim)
            if str(parsed) != config.index:
                db._set_index(config, str(parsed))
        db._build_index(config.vid, wait=True)
        return self.index_info()

    def index_info(self) -> dict:
        """The spec, training time, list sizes and code size of the live index."""
        config = self._config()
        state = self._db._state(config.vid)
        index = state.index
        info = {"configured": config.index, "active": "Flat" if index is None else str(index.spec),
                "rows": state.live, "tombstones": state.tombstones, "training": state.training,
                "training_error": state.training_error}
        if index is not None:
            info.update(index.info())
        return info

    @staticmethod
    def _search(view, Q, code, k, mask, positions):
        """Exact (D, P): distances and positions, nearest first; (nq, k) padded +inf / -1,
        or a single query's (1, m) unpadded (:func:`_one`)."""
        if len(Q) == 1:
            if positions is not None:
                d, p = flat.search_subset(view.X, view.xnorm2, Q[0], code, k, positions)
            elif use_blas_scan(view.X.size):
                with _BIG_SCANS as running:
                    if running == 1:        # alone: BLAS's threads have the cores
                        d, p = flat.search_one_blas(view.X, view.xnorm2, Q[0], code, k, mask)
                    else:
                        d, p = flat.search_one(view.X, view.xnorm2, Q[0], code, k, mask)
            else:
                d, p = flat.search_one(view.X, view.xnorm2, Q[0], code, k, mask)
            return _one(d, p)
        if positions is not None:
            Xs = np.ascontiguousarray(view.X[positions])
            D, I = flat.search_batch(Xs, view.xnorm2[positions], Q, code, k, None)
            return D, np.where(I >= 0, positions[np.maximum(I, 0)], -1)
        return flat.search_batch(view.X, view.xnorm2, Q, code, k, mask)

    def _hits(self, state, view, results, include):
        need_lmdb = bool(include)
        out = []
        if need_lmdb:
            ctx = self._db._store.read()
            txn = ctx.__enter__()
        try:
            at = state.extid_at
            moved = need_lmdb and not _same_layout(txn, self._db._store.dbs, state)
            for dist, pos in results:
                if not need_lmdb:           # ids by one lookup of the k positions
                    out.append(list(map(Hit, state.extids_at(pos), dist.tolist())))
                    continue
                pos = pos.tolist()
                dist = dist.tolist()
                if moved:
                    hits = []
                    for d, p in zip(dist, pos):
                        extid = at(p)
                        hits.append(self._record(txn, state, p, extid, include, Hit,
                                                 rec_pos=_rowid_in(txn, self._db._store.dbs,
                                                                   state, extid), distance=d))
                    out.append(hits)
                else:
                    out.append([self._record(txn, state, p, at(p), include, Hit, distance=d)
                                for d, p in zip(dist, pos)])
        finally:
            if need_lmdb:
                ctx.__exit__(None, None, None)
        return out


class _Running:
    """How many of a kind of call run now in this process (``with``: this one included)."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def __enter__(self) -> int:
        with self._lock:
            self.n += 1
            return self.n

    def __exit__(self, *exc) -> None:
        with self._lock:
            self.n -= 1


#: exact single queries over BLAS-sized versions running now. One alone scores through
#: BLAS (flat.search_one_blas); with others running each takes the numba scan on its own
#: thread: BLAS runs every call on its own threads, and callers in several threads at once
#: oversubscribe the cores (4 threads querying 20,000 x 64 rows: p99 52 ms against p50
#: 0.12, 5.5k queries in 4 s where one thread alone ran 33k)
_BIG_SCANS = _Running()

#: reads that find LMDB already on a compaction's new layout wait this often for the swap
_LAYOUT_RETRIES = 5000


def _same_layout(txn, dbs, state) -> bool:
    """True when ``txn`` sees the row generation ``state`` is on (rowids agree)."""
    raw = txn.get(schema.gen_key(state.config.vid), db=dbs[b"counters"])
    return (schema.unpack_u64(raw) if raw else 0) == state.gen


def _rowid_in(txn, dbs, state, extid) -> int:
    """The rowid ``txn`` has for ``extid`` (-1: not stored there)."""
    key = schema.id_key(state.config.vid, extid)
    raw = txn.get(key, db=dbs[b"ids"])
    return -1 if raw is None else schema.parse_id_value(key, raw)[0]
