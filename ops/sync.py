"""Content-hash sync of source records into a namespace (``ns.sync``).

``records`` is an iterable of dicts ``{"id", "text", "metadata"?, "updated_at"?}``. Each row
is stored with its provenance in the same LMDB transaction as its vector
(``upsert(..., provenance=)``): ``h`` the content hash of (normalised text, metadata,
model), ``m`` the model, ``t`` the embedded-at time and ``u`` the source ``updated_at``
(epoch seconds; ISO-8601 strings are accepted). So change detection reads the data itself
and can never drift from it (LangChain's record manager lives apart from the store).

Per batch of ``batch_size`` records: validate the batch; compare each row's hash with the
stored one (unchanged rows are skipped without calling the model); embed each distinct
normalised text once; check budgets and rate limits before the model is called; upsert the
changed rows with their text as the document. A batch is one write, so a sync killed at any
point and run again embeds only what had not been committed.

Modes: ``incremental`` (only adds and updates), ``full`` (afterwards deletes every row whose
id was not in the input), ``scoped_full`` (deletes only rows whose ``metadata[source_key]`` is
one of the values seen in the input, LangChain's ``scoped_full`` / ``source_id_key``).

With a migration in progress every write also reaches the migration's new version
(embedded with its function) and every delete too (dual-write).

Rows whose batch could not be embedded (budget, rate limit, a failing model) are kept as
*pending* in the ops store (``pending:<namespace>``) until a later sync writes them; the
freshness report counts them.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
import unicodedata
from dataclasses import asdict, dataclass

from simplevector.engine import validate
from simplevector.engine.errors import (BudgetExceeded, EmbeddingError, InvalidInput,
                                        ModelMismatch, RateLimited)

from .embeddings import count_tokens, embed_checked, price_of

__all__ = ["SyncReport", "content_hash", "normalise_text", "provenance_of", "sync",
           "MODES", "embed_texts"]

MODES = ("incremental", "full", "scoped_full")
PENDING_PREFIX = "pending:"
MAX_PENDING = 100_000


def normalise_text(text: str) -> str:
    """Unicode NFC, whitespace runs collapsed to one space, stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def content_hash(text: str, metadata, model: str) -> str:
    """Hex SHA-256 (first 128 bits) of the normalised text, the model and the metadata as
    canonical JSON (sorted keys; empty for None and {})."""
    meta = json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str) if metadata else ""
    payload = f"{normalise_text(text)}\x1f{model}\x1f{meta}"
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def provenance_of(digest: str, model: str, embedded_at: float, updated_at=None) -> dict:
    prov = {"h": digest, "m": model, "t": float(embedded_at)}
    if updated_at is not None:
        prov["u"] = float(updated_at)
    return prov


def _epoch(value, where: str):
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidInput(f"{where} {value!r} is not valid; expected epoch seconds or ISO-8601")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, datetime.datetime):
        when = value
    elif isinstance(value, str):
        try:
            when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput(f"{where} {value!r} is not valid; expected epoch seconds or "
                               "ISO-8601 (e.g. 2026-12-01T21:31:24Z)") from None
    else:
        raise InvalidInput(f"{where} {type(value).__name__} is not valid; expected epoch "
                           "seconds or ISO-8601")
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


_KEYS = frozenset(("id", "text", "metadata", "updated_at"))


def validate_record(rec, n: int) -> tuple:
    """(id, text, metadata, updated_at) of record number ``n``, or InvalidInput. The id's
    type is checked here; the batch's ids together by :func:`validate.id_list`."""
    if type(rec) is not dict and not isinstance(rec, dict):
        raise InvalidInput(f"record {n} is {type(rec).__name__}; expected a dict with 'id' "
                           "and 'text'")
    if not rec.keys() <= _KEYS:
        raise InvalidInput(f"record {n} has unknown keys {sorted(set(rec) - _KEYS)}; expected "
                           "id, text, metadata, updated_at")
    if "id" not in rec or "text" not in rec:
        raise InvalidInput(f"record {n} has no {'id' if 'id' not in rec else 'text'!r}; "
                           "expected a dict with 'id' and 'text'")
    extid = rec["id"]
    if type(extid) not in (str, int):
        extid = validate.id_list([extid])[0]        # raises for a bad id, converts np ints
    text = rec["text"]
    if type(text) is not str:
        raise InvalidInput(f"record {n} (id {extid!r}) text is {type(text).__name__}; "
                           "expected str")
    meta = rec.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise InvalidInput(f"record {n} (id {extid!r}) metadata is {type(meta).__name__}; "
                           "expected a dict or None")
    updated = rec.get("updated_at")
    if updated is not None:
        updated = _epoch(updated, f"record {n} updated_at")
    return extid, text, meta, updated


@dataclass
class SyncReport:
    """What one ``ns.sync`` did. ``embedded``: texts sent to the model (distinct texts of
    changed rows); ``tokens``/``cost``: as the ledger recorded them (both versions during a
    migration); ``seconds``: wall time of the whole sync."""

    namespace: str
    model: str
    mode: str
    records: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    embedded: int = 0
    tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    batches: int = 0
    dual_written: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def embed_texts(db, namespace: str, fn, texts: list, op: str, *, wait=None, check=True):
    """Embed ``texts`` with ``fn`` for ``namespace``: budget check, rate limit ``embed``, the
    model call, a ledger entry. Returns (vectors, tokens, cost)."""
    tokens = count_tokens(fn, texts)
    cost = price_of(fn, tokens)
    if check:
        db.ledger.check(namespace, fn.model, tokens, cost)
    db.limiter.check(namespace, "embed", len(texts), wait=wait)
    t0, c0 = time.perf_counter(), time.thread_time()
    X = embed_checked(fn, texts)
    seconds, cpu = time.perf_counter() - t0, time.thread_time() - c0
    used = getattr(fn, "last_usage", None)
    if isinstance(used, int) and not isinstance(used, bool):
        tokens, cost = used, price_of(fn, used)
    db.ledger.record(namespace, fn.model, op, texts=len(texts), tokens=tokens, cost=cost,
                     seconds=seconds, cpu_seconds=cpu, flush=op != "query",
                     writable=db.writable)
    return X, tokens, cost


def _batches(records, size: int):
    batch = []
    for rec in records:
        batch.append(rec)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _check_budget(db, namespace, fn, texts):
    tokens = count_tokens(fn, texts)
    db.ledger.check(namespace, fn.model, tokens, price_of(fn, tokens))


def sync(tns, records, *, mode: str = "incremental", source_key: str | None = None,
         batch_size: int = 256, progress=None, wait: bool = True) -> SyncReport:
    """See the module docstring. ``progress(n)``: called with the records done after each
    batch. ``wait``: sleep through rate limits (True) or raise RateLimited."""
    t_start = time.perf_counter()
    db = tns.db
    if mode not in MODES:
        raise InvalidInput(f"mode {mode!r} is not valid; expected one of {', '.join(MODES)}")
    if mode == "scoped_full" and (not isinstance(source_key, str) or not source_key):
        raise InvalidInput(f"source_key {source_key!r} is not valid; mode 'scoped_full' needs "
                           "the metadata key that names each record's source")
    if source_key is not None and not isinstance(source_key, str):
        raise InvalidInput(f"source_key {source_key!r} is not valid; expected a metadata key")
    batch_size = validate.positive_int(batch_size, "batch_size")
    if isinstance(records, (str, bytes, dict)):
        raise InvalidInput(f"records {type(records).__name__} is not valid; expected an "
                           "iterable of dicts")
    fn = tns.require_embedding()
    eng = tns.fixed()                       # the live version, fixed for this sync
    name = tns.name
    report = SyncReport(namespace=name, model=fn.model, mode=mode)
    seen_ids: set = set()
    seen_sources: set = set()
    pending = set(db.ops_store.get(PENDING_PREFIX + name, None) or ())
    pending_before = set(pending)
    n_done = 0
    for batch in _batches(records, batch_size):
        rows = {}
        for i, rec in enumerate(batch):
            extid, text, meta, updated = validate_record(rec, n_done + i)
            rows[extid] = (text, meta, updated)     # the last of an id in a batch wins
        n_done += len(batch)
        report.records += len(batch)
        report.batches += 1
        ids = validate.id_list(list(rows))          # empty strings, bools, ... for all at once
        seen_ids.update(ids)
        if source_key is not None:
            for text, meta, _ in rows.values():
                if meta is not None and source_key in meta:
                    seen_sources.add(_hashable(meta[source_key]))
        hashes = [content_hash(rows[i][0], rows[i][1], fn.model) for i in ids]
        stored = eng.provenance(ids)
        # a row without provenance may still exist (a plain upsert): look those up
        unknown = [extid for extid, prov in zip(ids, stored) if prov is None]
        absent = {extid for extid, rec in zip(unknown, eng.get(unknown, include=()))
                  if rec is None} if unknown else set()
        changed = []
        for extid, digest, prov in zip(ids, hashes, stored):
            if prov is not None and prov.get("h") == digest:
                report.unchanged += 1
                pending.discard(extid)
            else:
                changed.append((extid, digest, extid not in absent))
        if changed:
            try:
                _write_changed(db, tns, eng, fn, rows, changed, report, wait)
            except (BudgetExceeded, RateLimited, EmbeddingError):
                pending.update(extid for extid, _, _ in changed)
                _save_pending(db, name, pending, pending_before)
                raise
            pending.difference_update(extid for extid, _, _ in changed)
        if progress is not None:
            progress(n_done)
    if mode != "incremental":
        report.deleted = _delete_absent(db, tns, eng, mode, source_key, seen_ids, seen_sources,
                                        wait)
    _save_pending(db, name, pending, pending_before)
    report.seconds = time.perf_counter() - t_start
    return report


def _hashable(value):
    return json.dumps(value, sort_keys=True, default=str)


def _save_pending(db, name, pending, before):
    if pending != before and db.writable:
        db.ops_store.put(PENDING_PREFIX + name, sorted(pending, key=str)[:MAX_PENDING])
        before.clear()
        before.update(pending)


def _write_changed(db, tns, eng, fn, rows, changed, report, wait):
    name = tns.name
    migration = db.active_migration(name)
    target_fn = migration.embedding if migration is not None else None
    texts = {}                               # normalised text -> index of its vector
    order = []
    for extid, _, _ in changed:
        norm = normalise_text(rows[extid][0])
        if norm not in texts:
            texts[norm] = len(order)
            order.append(norm)
    # every check happens before the first model call and the first write
    _check_budget(db, name, fn, order)
    if target_fn is not None:
        _check_budget(db, name, target_fn, order)
    db.limiter.check(name, "write", len(changed), wait=wait)
    X, tokens, cost = embed_texts(db, name, fn, order, "sync", wait=wait, check=False)
    report.embedded += len(order)
    report.tokens += tokens
    report.cost += cost
    now = time.time()
    ids = [c[0] for c in changed]
    vectors = X[[texts[normalise_text(rows[i][0])] for i in ids]]
    metas = [rows[i][1] for i in ids]
    docs = [rows[i][0] for i in ids]
    provs = [provenance_of(digest, fn.model, now, rows[extid][2])
             for extid, digest, _ in changed]
    eng.upsert(ids, vectors, metadata=metas, documents=docs, provenance=provs)
    for _, _, existed in changed:
        if existed:
            report.updated += 1
        else:
            report.added += 1
    if migration is not None:
        report.dual_written += migration.dual_write(ids, metas, docs, [r[2] for r in
                                                                       (rows[i] for i in ids)],
                                                    report=report, wait=wait)


def _delete_absent(db, tns, eng, mode, source_key, seen_ids, seen_sources, wait) -> int:
    doomed = []
    if mode == "full":
        doomed = [extid for extid in eng.ids() if extid not in seen_ids]
    else:
        cursor = None
        while True:
            page, cursor = eng.scan(after=cursor, limit=2000)
            for rec in page:
                meta = rec.metadata or {}
                if (source_key in meta and _hashable(meta[source_key]) in seen_sources
                        and rec.id not in seen_ids):
                    doomed.append(rec.id)
            if cursor is None:
                break
    deleted = 0
    for start in range(0, len(doomed), 1000):
        chunk = doomed[start:start + 1000]
        db.limiter.check(tns.name, "write", len(chunk), wait=wait)
        deleted += eng.delete(ids=chunk)
        migration = db.active_migration(tns.name)
        if migration is not None:
            migration.dual_delete(chunk)
    return deleted


def check_model(name: str, version_model, fn_model, what: str = "embedding function"):
    if fn_model != version_model:
        raise ModelMismatch(f"{what} model {fn_model!r} is not the model {version_model!r} "
                            f"of namespace {name!r}; expected {version_model!r}")
