"""Model migration of a namespace: durable state, resumable back-fill, dual-write, shadow
comparison, promote / rollback / abort.

``m = db.migrate(name, embedding=new_fn, index=None)`` creates the next version of the
namespace with the new function's model and dim (not live) and records the migration in
the ops store (``migration:<name>:<seq>``): plan figures, state, the back-fill cursor, the
dual-write flag, counters and the latest shadow report. From that moment every upsert,
sync and delete through ``db.namespace(name)`` also reaches the new version (dual-write;
upserts are re-embedded from their documents with the new model). Calling ``db.migrate``
again with the same model re-attaches the function to the migration in progress (after a
restart the function must be attached again; writes made meanwhile are caught up by
``run()``'s verification pass).

States: ``backfilling`` -> (run) -> ``ready`` -> (promote) -> ``promoted`` -> (finish) ->
``finished``; ``rollback()`` from ``promoted`` gives ``rolled_back`` (old version live
again, dual-write on, promote again when ready); ``abort()`` before promotion drops the new
version (``aborted``).

``run()`` reads the old version's rows in write order from the durable cursor, skips rows
the new version already holds with the new model's content hash (so a batch committed
before a crash is never embedded again), embeds the rest (one call per distinct text;
budget-checked and rate-limited like a sync), writes them with provenance, then saves the
cursor. After the cursor pass a verification pass over every row embeds whatever changed
behind the cursor and removes rows the old version no longer has; then the state is
``ready``. Rows without a document (text) cannot be re-embedded: they are counted and listed
as not migratable, and ``promote()`` refuses while there are any unless ``force=True``.

The back-fill and the dual-writes take one lock per migration around (read, embed, write),
so a concurrent write never leaves the new version with an older text than the old one.
After promotion the roles swap: writes reach the (now old) previous version too, embedded
with its function when that is attached, so ``rollback()`` restores a current version.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np

from simplevector.engine.errors import InvalidInput, MigrationError, NamespaceNotFound

from .embeddings import check_function, count_tokens, price_of
from .sync import content_hash, embed_texts, normalise_text, provenance_of

__all__ = ["Migration", "ShadowReport", "MIGRATION_PREFIX", "ACTIVE_STATES"]

MIGRATION_PREFIX = "migration:"
ACTIVE_STATES = ("backfilling", "ready", "promoted", "rolled_back")
STATES = ACTIVE_STATES + ("finished", "aborted")
NOT_MIGRATABLE_SHOWN = 100


@dataclass
class ShadowReport:
    """Shadow queries run against both versions: ``overlap_at_k`` (mean share of the old
    version's top k the new one also returns), ``recall_new`` (the new version's index
    against its own exact search), latencies in seconds (medians), and where the query
    texts came from (``recent queries`` or ``stored texts``)."""

    k: int
    samples: int
    source: str
    overlap_at_k: float
    recall_new: float
    latency_old: float
    latency_new: float
    at: float

    def to_dict(self) -> dict:
        return asdict(self)


class Migration:
    """One migration of one namespace (see the module docstring)."""

    def __init__(self, db, state: dict, embedding=None):
        self.db = db
        self.doc = state
        self.embedding = embedding
        self.lock = threading.RLock()

    def reconcile(self) -> None:
        """After a crash between an alias swap and the state save, make the recorded state
        agree with which version is live (promote and rollback are single engine writes)."""
        if not self.active:
            return
        try:
            live = self.db.engine.namespace(self.namespace).version
        except NamespaceNotFound:
            return
        if self.state in ("ready", "rolled_back", "backfilling") and live == self.to_version:
            self._set_state("promoted", "reconciled at open")
        elif self.state == "promoted" and live == self.from_version:
            self._set_state("rolled_back", "reconciled at open")

    # -- persisted fields -----------------------------------------------------------------
    @property
    def key(self) -> str:
        return f"{MIGRATION_PREFIX}{self.doc['namespace']}:{self.doc['seq']:06d}"

    @property
    def namespace(self) -> str:
        return self.doc["namespace"]

    @property
    def state(self) -> str:
        return self.doc["state"]

    @property
    def from_version(self) -> int:
        return self.doc["from_version"]

    @property
    def to_version(self) -> int:
        return self.doc["to_version"]

    @property
    def active(self) -> bool:
        return self.doc["state"] in ACTIVE_STATES

    def save(self) -> None:
        self.doc["updated"] = time.time()
        if self.db.writable:
            self.db.ops_store.put(self.key, self.doc)

    def _set_state(self, state: str, note: str = "") -> None:
        self.doc["state"] = state
        self.doc.setdefault("events", []).append({"ts": time.time(), "state": state,
                                                  "note": note})
        self.save()

    def __repr__(self):
        return (f"<Migration {self.namespace} v{self.from_version}->v{self.to_version} "
                f"{self.doc['from_model']}->{self.doc['to_model']} {self.state}>")

    # -- handles ----------------------------------------------------------------------------
    def _old(self):
        return self.db.engine.namespace(self.namespace, self.from_version)

    def _new(self):
        return self.db.engine.namespace(self.namespace, self.to_version)

    def _need_embedding(self):
        if self.embedding is None:
            raise MigrationError(
                f"the migration of {self.namespace!r} to {self.doc['to_model']} has no "
                "embedding function attached in this process",
                hint=f"attach it: db.migrate({self.namespace!r}, embedding=fn) with "
                     f"fn.model == {self.doc['to_model']!r}")
        return self.embedding

    def _need(self, *states):
        if self.state not in states:
            raise MigrationError(f"the migration of {self.namespace!r} is {self.state}; "
                                 f"expected {' or '.join(states)}")

    # -- dual-write (called by TextNamespace and sync) --------------------------------------
    def _mirror(self):
        """(engine handle, function, model) of the version that is not live."""
        if self.state == "promoted":
            old_model = self.doc["from_model"]
            return self._old(), self.db.embedding_for(self.namespace, old_model), old_model
        return self._new(), self.embedding, self.doc["to_model"]

    def dual_write(self, ids, metas, docs, updated, *, report=None, wait=True) -> int:
        """Write ``ids`` (with their metadata, documents and source times) to the version
        that is not live, embedded with its model. Rows without a document are removed from
        it (their content cannot be embedded by the other model). When that model's
        function is not attached in this process the rows stay as they were there and are
        counted in ``mirror_behind`` (run()'s verification pass re-embeds them before
        promotion). Returns rows written."""
        if not self.active:
            return 0
        with self.lock:
            ns, fn, model = self._mirror()
            if fn is None:
                # cannot embed here: the mirror keeps its older row, counted as behind
                # (run()'s verification pass re-embeds it; rollback() says so)
                self.doc["mirror_behind"] = self.doc.get("mirror_behind", 0) + len(ids)
                self.save()
                return 0
            keep = [i for i, d in enumerate(docs) if d is not None]
            drop = [ids[i] for i in range(len(ids)) if docs[i] is None]
            if drop:                        # no text to embed: the old content is gone
                ns.delete(ids=drop)
            if not keep:
                return 0
            texts, index = _distinct([docs[i] for i in keep])
            X, tokens, cost = embed_texts(self.db, self.namespace, fn, texts, "migrate",
                                          wait=wait)
            if report is not None:
                report.embedded += len(texts)
                report.tokens += tokens
                report.cost += cost
            now = time.time()
            kid = [ids[i] for i in keep]
            ns.upsert(kid, X[[index[normalise_text(docs[i])] for i in keep]],
                      [metas[i] for i in keep], [docs[i] for i in keep],
                      provenance=[provenance_of(content_hash(docs[i], metas[i], model), model,
                                                now, updated[i]) for i in keep])
            return len(kid)

    def dual_delete(self, ids=None, where=None) -> int:
        if not self.active:
            return 0
        with self.lock:
            ns, _, _ = self._mirror()
            return ns.delete(ids=ids, where=where)

    # -- planning and status --------------------------------------------------------------------
    def remaining(self) -> int:
        """Rows of the old version not yet back-filled (0 once the back-fill passed them)."""
        if self.state not in ("backfilling",):
            return 0
        try:
            old, new = self._old(), self._new()
        except NamespaceNotFound:
            return 0
        return max(0, old.count() - new.count() - self.doc["not_migratable"])

    def plan(self) -> dict:
        """Rows, migratable rows (with text), estimated tokens and cost (the new function's
        ``count_tokens`` and price) and time (at the embedding rate the ledger measured for
        this namespace; None without one). Reads every stored text; calls no model."""
        plan = estimate(self.db, self.namespace, self.embedding, self.from_version)
        plan.update(to_version=self.to_version, to_model=self.doc["to_model"])
        self.doc["plan"] = plan
        self.save()
        return plan

    def status(self) -> dict:
        """State, versions, models, cursor, counters, what is left, the latest shadow."""
        d = self.doc
        out = {key: d.get(key) for key in (
            "namespace", "seq", "state", "from_version", "to_version", "from_model",
            "to_model", "index", "cursor", "cursor_done", "rows_done", "embedded", "skipped",
            "tokens", "cost", "batches", "not_migratable", "not_migratable_ids", "mirror_behind",
            "created",
            "updated", "shadow", "plan")}
        out["dual_write"] = self.active
        out["remaining"] = self.remaining()
        out["attached"] = self.embedding is not None
        rate = self.db.ledger.embed_rate(self.namespace)
        out["eta_seconds"] = out["remaining"] / rate if rate and out["remaining"] else (
            0.0 if not out["remaining"] else None)
        return out

    # -- the back-fill ------------------------------------------------------------------------
    def run(self, *, batch_size: int = 256, max_batches: int | None = None, progress=None,
            wait: bool = True) -> dict:
        """Back-fill (resumable) then verify; returns status(). ``max_batches``: stop after
        that many embedding batches (the cursor is kept; run again to continue).
        ``progress(done, total)`` after each batch."""
        self._need("backfilling", "ready", "rolled_back")
        fn = self._need_embedding()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInput(f"batch_size {batch_size!r} is not valid; expected an int >= 1")
        total = self._old().count()
        batches = 0
        d = self.doc
        while not d["cursor_done"]:
            if max_batches is not None and batches >= max_batches:
                return self.status()
            with self.lock:
                page, cursor = self._old().scan(after=d["cursor"], limit=batch_size)
                embedded = self._backfill(fn, page, wait)
                d["rows_done"] += len(page)
                d["cursor"] = cursor if cursor is not None else d["cursor"]
                d["cursor_done"] = cursor is None
                d["batches"] += 1
                self.save()
            if embedded:
                batches += 1
            if progress is not None:
                progress(min(d["rows_done"], total), total)
        self._verify(fn, batch_size, wait)
        if self.state == "backfilling":
            self._set_state("ready", "back-fill verified")
        else:
            self.save()
        return self.status()

    def _backfill(self, fn, page, wait, new=None) -> int:
        """Embed and write the rows of ``page`` that ``new`` (default: the new version)
        lacks with ``fn``'s hash of their text; returns texts embedded."""
        model = fn.model
        new = self._new() if new is None else new
        todo, missing = [], []
        if page:
            have = new.provenance([r.id for r in page])
            for rec, prov in zip(page, have):
                if rec.document is None:
                    missing.append(rec.id)
                    continue
                digest = content_hash(rec.document, rec.metadata, model)
                if prov is not None and prov.get("h") == digest:
                    self.doc["skipped"] += 1
                    continue
                todo.append((rec, digest))
        if missing:
            known = self.doc["not_migratable_ids"]
            for extid in missing:
                if extid not in known and len(known) < NOT_MIGRATABLE_SHOWN:
                    known.append(extid)
            self.doc["not_migratable"] = self._count_missing()
        if not todo:
            return 0
        texts, index = _distinct([rec.document for rec, _ in todo])
        X, tokens, cost = embed_texts(self.db, self.namespace, fn, texts, "migrate", wait=wait)
        self.db.limiter.check(self.namespace, "write", len(todo), wait=wait)
        now = time.time()
        new.upsert([rec.id for rec, _ in todo],
                   X[[index[normalise_text(rec.document)] for rec, _ in todo]],
                   [rec.metadata for rec, _ in todo], [rec.document for rec, _ in todo],
                   provenance=[provenance_of(digest, model, now, (rec.provenance or {}).get("u"))
                               for rec, digest in todo])
        self.doc["embedded"] += len(texts)
        self.doc["tokens"] += tokens
        self.doc["cost"] += cost
        return len(texts)

    def _count_missing(self) -> int:
        n = 0
        cursor = None
        while True:
            page, cursor = self._old().scan(after=cursor, limit=5000)
            n += sum(1 for r in page if r.document is None)
            if cursor is None:
                return n

    def _verify(self, fn, batch_size, wait, source=None, target=None) -> None:
        """Every row of ``source`` (default: the old version) with text is in ``target``
        (default: the new one) with ``fn``'s hash of its current text (re-embedding what is
        not); rows only ``target`` has are removed."""
        source = self._old if source is None else source
        target = self._new if target is None else target
        cursor = None
        seen = set()
        while True:
            with self.lock:
                page, cursor = source().scan(after=cursor, limit=batch_size)
                seen.update(r.id for r in page)
                self._backfill(fn, page, wait, new=target())
            if cursor is None:
                break
        with self.lock:
            tgt = target()
            extra = [i for i in tgt.ids() if i not in seen]
            for start in range(0, len(extra), 1000):
                tgt.delete(ids=extra[start:start + 1000])
            self.doc["not_migratable"] = self._count_missing()
            self.doc["mirror_behind"] = 0
        self.save()

    # -- shadow ---------------------------------------------------------------------------------
    def shadow(self, k: int = 10, samples: int = 200, *, seed: int = 0) -> ShadowReport:
        """Run recent real query texts (else stored texts) against both versions, each
        embedded by its own model: overlap@k of the two answers, the new version's recall
        against its own exact search, and the median latency of each."""
        fn = self._need_embedding()
        old_fn = self.db.embedding_for(self.namespace, self.doc["from_model"])
        if old_fn is None:
            raise MigrationError(
                f"shadow needs the old model's function ({self.doc['from_model']}) attached",
                hint=f"db.namespace({self.namespace!r}, embedding=old_fn) or pass it to "
                     "create_namespace")
        for name, value in (("k", k), ("samples", samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInput(f"{name} {value!r} is not valid; expected an int >= 1")
        texts = self.db.recent_query_texts(self.namespace)
        source = "recent queries"
        if not texts:
            source = "stored texts"
            page, _ = self._old().scan(limit=max(samples * 4, 200))
            texts = [r.document for r in page if r.document is not None]
        if not texts:
            raise MigrationError(f"namespace {self.namespace!r} has no query texts and no "
                                 "stored texts to shadow with")
        rng = np.random.default_rng(seed)
        if len(texts) > samples:
            texts = [texts[i] for i in sorted(rng.choice(len(texts), samples, replace=False))]
        Qo, _, _ = embed_texts(self.db, self.namespace, old_fn, texts, "shadow")
        Qn, _, _ = embed_texts(self.db, self.namespace, fn, texts, "shadow")
        old, new = self._old(), self._new()
        overlaps, recalls, t_old, t_new = [], [], [], []
        for qo, qn in zip(Qo, Qn):
            t0 = time.perf_counter()
            a = old.query(qo, k=k, include=())
            t1 = time.perf_counter()
            b = new.query(qn, k=k, include=())
            t2 = time.perf_counter()
            exact = new.query(qn, k=k, include=(), exact=True)
            t_old.append(t1 - t0)
            t_new.append(t2 - t1)
            ia, ib = {h.id for h in a}, {h.id for h in b}
            overlaps.append(len(ia & ib) / max(1, min(k, len(ia))))
            ie = {h.id for h in exact}
            recalls.append(len(ib & ie) / max(1, len(ie)) if ie else 1.0)
        rep = ShadowReport(k=k, samples=len(texts), source=source,
                           overlap_at_k=float(np.mean(overlaps)),
                           recall_new=float(np.mean(recalls)),
                           latency_old=statistics.median(t_old),
                           latency_new=statistics.median(t_new), at=time.time())
        self.doc["shadow"] = rep.to_dict()
        self.save()
        return rep

    # -- promote, rollback, abort, finish ----------------------------------------------------
    def promote(self, *, force: bool = False) -> dict:
        """Point the namespace at the new version (atomic). Needs a completed run() and
        every old row present in the new version, unless ``force`` (rows without text are
        then not in the live version)."""
        self._need("ready", "rolled_back")
        with self.lock:
            missing = self._count_missing()
            old, new = self._old(), self._new()
            gap = old.count() - missing - new.count()
            if gap and not force:
                raise MigrationError(
                    f"the new version of {self.namespace!r} holds {new.count()} rows, the old "
                    f"one {old.count()} ({missing} without text); run() again to catch up",
                    hint="m.run(), then m.promote()")
            if missing and not force:
                raise MigrationError(
                    f"{missing} rows of {self.namespace!r} have no text and cannot be "
                    f"re-embedded (e.g. {self.doc['not_migratable_ids'][:5]}); they would "
                    "not be in the promoted version",
                    hint="sync them with text, delete them, or promote(force=True)")
            self.db.promote(self.namespace, self.to_version)
            self._set_state("promoted", "forced" if force else "")
        return self.status()

    def rollback(self, *, batch_size: int = 256, wait: bool = True) -> dict:
        """Point the namespace back at the old version (atomic); dual-write continues.

        With the old model's function attached, a catch-up pass first re-embeds into the
        old version whatever changed while the new one was live and it missed (normally
        nothing: dual-write kept it current). Without it, a rollback with writes the old
        version missed (``status()["mirror_behind"]``) raises MigrationError."""
        self._need("promoted")
        old_fn = self.db.embedding_for(self.namespace, self.doc["from_model"])
        if old_fn is None and self.doc.get("mirror_behind"):
            raise MigrationError(
                f"{self.doc['mirror_behind']} writes reached only the new version of "
                f"{self.namespace!r} while {self.doc['from_model']} was not attached",
                hint=f"attach it (db.namespace({self.namespace!r}, version="
                     f"{self.from_version}, embedding=old_fn)), then roll back")
        if old_fn is not None:
            self._verify(old_fn, batch_size, wait, source=self._new, target=self._old)
        with self.lock:
            self.db.promote(self.namespace, self.from_version)
            self._set_state("rolled_back")
        return self.status()

    def abort(self, *, drop: bool = True) -> dict:
        """Stop before promotion: dual-write off and (``drop``) the new version dropped."""
        self._need("backfilling", "ready", "rolled_back")
        with self.lock:
            self._set_state("aborted")
            if drop:
                try:
                    self.db.drop_namespace(self.namespace, version=self.to_version)
                except NamespaceNotFound:
                    pass
        return self.status()

    def finish(self, *, drop_old: bool = False) -> dict:
        """End a promoted migration: dual-write off; ``drop_old`` drops the old version."""
        self._need("promoted")
        with self.lock:
            self._set_state("finished")
            if drop_old:
                self.db.drop_namespace(self.namespace, version=self.from_version)
        return self.status()


def estimate(db, namespace: str, fn, version=None) -> dict:
    """The plan figures of migrating ``namespace`` (its live version, or ``version``) to
    ``fn`` (None: tokens and cost not estimated); reads the stored texts, calls no model."""
    old = db.engine.namespace(namespace, version)
    rows, texts, missing = 0, set(), 0
    cursor = None
    while True:
        page, cursor = old.scan(after=cursor, limit=2000)
        for rec in page:
            rows += 1
            if rec.document is None:
                missing += 1
            else:
                texts.add(normalise_text(rec.document))
        if cursor is None:
            break
    tokens = count_tokens(fn, sorted(texts)) if fn is not None else None
    rate = db.ledger.embed_rate(namespace)
    return {"namespace": namespace, "from_version": old.version, "from_model": old.model,
            "to_model": None if fn is None else fn.model, "rows": rows,
            "migratable": rows - missing, "not_migratable": missing,
            "distinct_texts": len(texts), "estimated_tokens": tokens,
            "estimated_cost": None if tokens is None else price_of(fn, tokens),
            "embed_rate": rate, "estimated_seconds": len(texts) / rate if rate else None}


def _distinct(docs):
    """(distinct normalised texts in first-seen order, text -> index)."""
    index, texts = {}, []
    for doc in docs:
        norm = normalise_text(doc)
        if norm not in index:
            index[norm] = len(texts)
            texts.append(norm)
    return texts, index


def new_state(namespace: str, seq: int, from_version: int, to_version: int, from_model,
              to_model: str, index) -> dict:
    return {"namespace": namespace, "seq": seq, "state": "backfilling",
            "from_version": from_version, "to_version": to_version, "from_model": from_model,
            "to_model": to_model, "index": index, "cursor": None, "cursor_done": False,
            "rows_done": 0, "embedded": 0, "skipped": 0, "tokens": 0, "cost": 0.0,
            "batches": 0, "not_migratable": 0, "not_migratable_ids": [], "shadow": None,
            "plan": None, "created": time.time(), "updated": time.time(),
            "events": [{"ts": time.time(), "state": "backfilling", "note": "created"}]}


def check_new_function(fn):
    return check_function(fn, "embedding")
