"""The namespace handle users get from ``sv.Database``: the engine's Namespace plus text.

:class:`TextNamespace` forwards every attribute of the engine
:class:`~simplevector.engine.namespace.Namespace` it wraps (``count``, ``get``, ``ids``,
``build_index``, ...), so it behaves as that Namespace, and adds:

- ``query(..., model="name@x.y.z")``: refused with ModelMismatch when the model is not the
  version's (a query embedded by another model would return wrong neighbours silently);
- ``query_text(text, k=10, where=None, ...)``: embeds with the attached function;
- ``sync(records, ...)`` (ops/sync.py);
- rate limits (``db.set_rate_limit``) on query, write and embed;
- dual-write while a migration of the namespace runs: upserts (re-embedded from their
  documents with the new model) and deletes reach the new version too.
"""

from __future__ import annotations

import numpy as np

from simplevector.engine.errors import InvalidInput

from . import sync as sync_mod

__all__ = ["TextNamespace"]


def _id_list(ids) -> list:
    """``ids`` as a list (one id or many), for counting and dual-write; the engine
    validates them."""
    if isinstance(ids, (str, int, np.integer)) and not isinstance(ids, bool):
        return [ids]
    try:
        return list(ids)
    except TypeError:
        return [ids]


class TextNamespace:
    """A namespace handle (the live version unless ``version`` was given) with text search,
    sync and dual-write (see the module docstring)."""

    def __init__(self, db, engine_ns, version=None):
        self.db = db
        self.engine_ns = engine_ns
        self.pinned = version

    def __getattr__(self, attr):
        if attr in ("engine_ns", "db", "pinned"):
            raise AttributeError(attr)
        return getattr(self.engine_ns, attr)

    @property
    def name(self) -> str:
        return self.engine_ns.name

    def __repr__(self):
        return repr(self.engine_ns)

    # -- the embedding function --------------------------------------------------------------
    @property
    def embedding(self):
        """The embedding function attached to this version's model (None: none attached)."""
        return self.db.embedding_for(self.name, self.engine_ns.model)

    def require_embedding(self):
        fn = self.embedding
        if fn is None:
            raise InvalidInput(
                f"namespace {self.name!r} has no embedding function attached for model "
                f"{self.engine_ns.model!r}",
                hint="attach one: db.namespace(name, embedding=fn) or "
                     "db.create_namespace(name, embedding=fn)")
        sync_mod.check_model(self.name, self.engine_ns.model, fn.model)
        return fn

    def fixed(self):
        """The engine handle of the version this handle means now (pinned from here on)."""
        return self.db.engine.namespace(self.name, self.engine_ns.version)

    def _migration(self):
        return None if self.pinned is not None else self.db.active_migration(self.name)

    # -- writes --------------------------------------------------------------------------------
    def upsert(self, ids, vectors, metadata=None, documents=None, *, provenance=None,
               model=None) -> int:
        """The engine's upsert (see there), plus: ``model`` (if given) must be the version's;
        the ``write`` rate limit; dual-write during a migration (rows with a document are
        embedded with the new model, rows without one are removed from the new version)."""
        if model is not None:
            sync_mod.check_model(self.name, self.engine_ns.model, model, "write")
        ids_l = _id_list(ids)
        self.db.limiter.check(self.name, "write", len(ids_l))
        lsn = self.engine_ns.upsert(ids, vectors, metadata, documents, provenance=provenance)
        migration = self._migration()
        if migration is not None:
            metas = list(metadata) if metadata is not None else [None] * len(ids_l)
            docs = list(documents) if documents is not None else [None] * len(ids_l)
            migration.dual_write(ids_l, metas, docs, [None] * len(ids_l))
        return lsn

    def delete(self, ids=None, where=None) -> int:
        """The engine's delete, plus the ``write`` rate limit and dual-write."""
        self.db.limiter.check(self.name, "write", len(_id_list(ids)) if ids is not None else 1)
        deleted = self.engine_ns.delete(ids=ids, where=where)
        migration = self._migration()
        if migration is not None:
            migration.dual_delete(ids, where)
        return deleted

    # -- reads ---------------------------------------------------------------------------------
    def query(self, vectors, k: int = 10, where=None, include=("metadata",), *, model=None,
              **options):
        """The engine's query (see there); ``model``: the model the query vectors were
        embedded with, refused with ModelMismatch when it is not the version's."""
        if model is not None:
            sync_mod.check_model(self.name, self.engine_ns.model, model, "query")
        self.db.limiter.check(self.name, "query", _query_rows(vectors))
        return self.engine_ns.query(vectors, k, where, include, **options)

    def query_text(self, text, k: int = 10, where=None, include=("metadata",), **options):
        """Embed ``text`` (a str, or a list of str for a batch) with the attached function
        and query with it: ``list[Hit]`` (``list[list[Hit]]`` for a list)."""
        fn = self.require_embedding()
        single = isinstance(text, str)
        texts = [text] if single else list(text) if isinstance(text, (list, tuple)) else None
        if texts is None or not texts or not all(isinstance(t, str) for t in texts):
            raise InvalidInput(f"text {text!r:.80} is not valid; expected a str or a "
                               "non-empty list of str")
        X, _, _ = sync_mod.embed_texts(self.db, self.name, fn, texts, "query")
        self.db.remember_query_texts(self.name, texts)
        return self.query(X[0] if single else X, k, where, include, model=fn.model, **options)

    def sync(self, records, *, mode: str = "incremental", source_key: str | None = None,
             batch_size: int = 256, progress=None, wait: bool = True):
        """Bring the namespace in line with ``records`` by content hash; returns a
        :class:`~simplevector.ops.sync.SyncReport` (see ops/sync.py)."""
        return sync_mod.sync(self, records, mode=mode, source_key=source_key,
                             batch_size=batch_size, progress=progress, wait=wait)


def _query_rows(vectors) -> int:
    """Queries in ``vectors`` for the rate limiter (1 when it is not a matrix: ragged or
    otherwise bad input is then refused, with its typed error, by the engine's query)."""
    try:
        return len(vectors) if np.ndim(vectors) == 2 else 1
    except (ValueError, TypeError):
        return 1
