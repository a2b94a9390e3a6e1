"""The freshness, cost and migration methods of ``sv.Database`` (a mixin of
:class:`~simplevector.ops.database.ObservedDatabase`).

- ``create_namespace(name, *, embedding=fn, ...)`` / ``namespace(name, embedding=fn)``:
  handles are :class:`~simplevector.ops.textns.TextNamespace` (the engine Namespace plus
  ``query_text``, ``sync``, model checks, rate limits and dual-write). A function is attached
  per (namespace, model) for the life of this process; ``namespace(name, embedding=fn)``
  raises ModelMismatch when ``fn.model`` is not the version's model.
- ``cost(window)``, ``set_budget(...)``, ``budgets()`` (ops/costs.py).
- ``set_rate_limit(namespace, op, per_second, burst=None)``, ``rate_limits()``
  (ops/ratelimit.py).
- ``migrate(name, embedding=new_fn, index=None)``, ``migrations()`` (ops/migration.py).
- ``freshness(namespace=None, max_age=None)`` (ops/freshness.py).
"""

from __future__ import annotations

import threading
import time
from collections import deque

from simplevector.engine.errors import InvalidInput, MigrationError

from . import costs as costs_mod
from . import freshness as freshness_mod
from . import migration as migration_mod
from .embeddings import check_function, dim_and_model
from .ratelimit import RateLimits
from .sync import check_model
from .textns import TextNamespace

QUERY_TEXTS = 256
QUERY_TEXTS_PREFIX = "querytexts:"


class FreshnessMixin:
    """See the module docstring. Needs ``self.engine`` open before ``_init_fresh``."""

    def _init_fresh(self):
        store = self.engine.ops_store
        self.ledger = costs_mod.Ledger(store)
        self.limiter = RateLimits(store)
        self._attached: dict = {}            # (namespace, model) -> embedding function
        self._migrations: dict = {}          # key -> Migration
        self._query_texts: dict = {}         # namespace -> deque of recent query texts
        self._fresh_lock = threading.RLock()

    def _load_fresh_state(self):
        store = self.engine.ops_store
        self.ledger.load()
        self.limiter.load()
        for key, doc in store.items(migration_mod.MIGRATION_PREFIX):
            self._migrations[key] = migration_mod.Migration(self, doc)
        if self.engine.writable:
            for m in self._migrations.values():
                m.reconcile()
        for key, texts in store.items(QUERY_TEXTS_PREFIX):
            name = key[len(QUERY_TEXTS_PREFIX):]
            self._query_texts[name] = deque(texts or (), maxlen=QUERY_TEXTS)

    def _persist_fresh_state(self):
        self.ledger.flush()
        store = self.engine.ops_store
        for name, texts in list(self._query_texts.items()):
            store.put(QUERY_TEXTS_PREFIX + name, list(texts))

    # -- namespaces with an embedding function ------------------------------------------------
    def create_namespace(self, name, *, dim=None, metric="cosine", model=None, index="auto",
                         embedding=None) -> TextNamespace:
        """The engine's create_namespace (see there); with ``embedding=fn`` dim and model
        come from the function (given as well, they must agree) and it stays attached."""
        dim, model = dim_and_model(embedding, dim, model)
        ns = self.engine.create_namespace(name, dim=dim, metric=metric, model=model,
                                          index=index)
        if embedding is not None:
            self._attached[(name, embedding.model)] = embedding
        return TextNamespace(self, ns)

    def namespace(self, name, version=None, *, embedding=None) -> TextNamespace:
        """The engine's namespace handle (see there); ``embedding=fn`` attaches ``fn`` after
        a reopen, refused with ModelMismatch unless ``fn.model`` is the version's model."""
        ns = self.engine.namespace(name, version)
        if embedding is not None:
            check_function(embedding)
            check_model(name, ns.model, embedding.model)
            if embedding.dim != ns.dim:
                raise InvalidInput(f"embedding function dim {embedding.dim} is not the dim "
                                   f"{ns.dim} of namespace {name!r}")
            self._attached[(name, embedding.model)] = embedding
        return TextNamespace(self, ns, version)

    def embedding_for(self, name: str, model):
        """The function attached for (namespace, model) in this process, or None."""
        fn = self._attached.get((name, model))
        if fn is None:
            m = self.active_migration(name)
            if m is not None and m.embedding is not None and m.embedding.model == model:
                fn = m.embedding
        return fn

    # -- query texts (shadow queries) -------------------------------------------------------------
    def remember_query_texts(self, name: str, texts) -> None:
        slot = self._query_texts.get(name)
        if slot is None:
            slot = self._query_texts.setdefault(name, deque(maxlen=QUERY_TEXTS))
        slot.extend(texts)

    def recent_query_texts(self, name: str) -> list:
        return list(self._query_texts.get(name, ()))

    # -- costs, budgets, rate limits -----------------------------------------------------------
    def cost(self, window=None) -> costs_mod.CostReport:
        """Embedding calls, texts, tokens, cost, queries, wall seconds per operation, stored
        vector bytes and cost per query, per namespace and model, over ``window`` (None:
        the whole ledger; "1h", "1d" or seconds: the hours that overlap it)."""
        self._check_open()
        seconds = costs_mod.window_seconds(window)
        now = time.time()
        since = 0.0 if seconds is None else now - seconds
        keys = set(self.ledger.keys(since))
        stored: dict = {}
        for st in self.version_statuses():
            keys.add((st.name, st.model))
            stored[(st.name, st.model)] = stored.get((st.name, st.model), 0) + \
                st.rows * st.dim * 4
        lines = []
        for ns, model in sorted(keys, key=lambda k: (k[0], k[1] or "")):
            t = self.ledger.totals(since, ns, model or "-")
            lat = {s.op: s for s in self.latency(namespace=ns, window=seconds)}
            queries = lat["query"].count if "query" in lat else 0
            line = costs_mod.CostLine(
                namespace=ns, model=model, embedding_calls=t["calls"], texts=t["texts"],
                tokens=t["tokens"], cost=t["cost"], embed_seconds=t["seconds"],
                embed_cpu_seconds=t["cpu_seconds"],
                by_op=t["by_op"], queries=queries,
                op_seconds={op: s.sum for op, s in lat.items()},
                stored_bytes=stored.get((ns, model), 0))
            line.cost_per_query = line.cost / queries if queries else None
            lines.append(line)
        per_ns_queries = {ln.namespace: ln.queries for ln in lines}
        return costs_mod.CostReport(
            window=seconds, lines=lines, tokens=sum(ln.tokens for ln in lines),
            cost=sum(ln.cost for ln in lines),
            embedding_calls=sum(ln.embedding_calls for ln in lines),
            queries=sum(per_ns_queries.values()),
            stored_bytes=sum(ln.stored_bytes for ln in lines), at=now)

    def set_budget(self, namespace=None, model=None, max_tokens=None, max_cost=None,
                   period="day", hard=True, *, remove: bool = False) -> costs_mod.Budget:
        """Cap tokens and/or cost per period for a namespace, a model, both or all (see
        ops/costs.py); persisted. ``remove=True`` deletes the budget of that scope."""
        self._check_open()
        if remove:
            budget = costs_mod.Budget(namespace, model, max_tokens=0, period=period)
            self.ledger.set_budget(budget, remove=True)
            return budget
        budget = costs_mod.Budget(namespace=namespace, model=model, max_tokens=max_tokens,
                                  max_cost=max_cost, period=period, hard=bool(hard))
        self.ledger.set_budget(budget)
        return budget

    def budgets(self) -> list:
        """Every budget with its use in the current period (dicts)."""
        self._check_open()
        return [self.ledger.budget_usage(b) for b in self.ledger.budgets.values()]

    def set_rate_limit(self, namespace, op, per_second, burst=None, *, wait: bool = False):
        """A token bucket for ``op`` (query, write, embed) on ``namespace``: ``per_second``
        tokens (None or 0 removes it), ``burst`` saved up at most; ``wait=True`` makes
        callers sleep instead of getting RateLimited. Persisted."""
        self._check_open()
        return self.limiter.set(namespace, op, per_second, burst, wait)

    def rate_limits(self) -> list:
        self._check_open()
        return self.limiter.list()

    # -- migrations -------------------------------------------------------------------------------
    def active_migration(self, name: str):
        for m in self._migrations.values():
            if m.namespace == name and m.active:
                return m
        return None

    def migrations(self, namespace=None) -> list:
        """Every migration recorded in the database (oldest first), or of one namespace."""
        self._check_open()
        return [m for _, m in sorted(self._migrations.items())
                if namespace is None or m.namespace == namespace]

    def migrate(self, name, *, embedding, index=None) -> migration_mod.Migration:
        """Start migrating ``name`` to ``embedding``'s model (a new version, dual-write on),
        or re-attach ``embedding`` to the migration in progress (same model). See
        ops/migration.py for plan(), run(), shadow(), promote(), rollback(), abort()."""
        self._check_open()
        check_function(embedding)
        with self._fresh_lock:
            current = self.active_migration(name)
            if current is not None:
                if current.doc["to_model"] != embedding.model:
                    raise MigrationError(
                        f"namespace {name!r} is already migrating to "
                        f"{current.doc['to_model']}; not to {embedding.model}",
                        hint="finish, roll back or abort that migration first")
                current.embedding = embedding
                return current
            live = self.engine.namespace(name)
            if live.model == embedding.model:
                raise MigrationError(f"namespace {name!r} already uses {embedding.model}; "
                                     "expected a different model to migrate to")
            # a version of this model that no migration owns was made by a migrate() killed
            # before it recorded itself: adopt it instead of making another
            owned = {m.to_version for m in self._migrations.values() if m.namespace == name}
            orphan = [v for v in self.list_namespaces_versions(name)
                      if not v.live and v.model == embedding.model and v.dim == embedding.dim
                      and v.version not in owned]
            if orphan:
                new = self.engine.namespace(name, orphan[-1].version)
            else:
                new = self.engine.create_version(name, dim=embedding.dim,
                                                 model=embedding.model, index=index)
            seq = 1 + max((m.doc["seq"] for m in self._migrations.values()
                           if m.namespace == name), default=0)
            doc = migration_mod.new_state(name, seq, live.version, new.version, live.model,
                                          embedding.model, index)
            m = migration_mod.Migration(self, doc, embedding)
            m.save()
            self._migrations[m.key] = m
            return m

    def list_namespaces_versions(self, name: str) -> list:
        """The VersionInfo list of ``name`` (empty when it does not exist)."""
        for info in self.list_namespaces():
            if info.name == name:
                return list(info.versions)
        return []

    def migration(self, name):
        """The migration in progress of ``name`` (MigrationError if there is none)."""
        m = self.active_migration(name)
        if m is None:
            raise MigrationError(f"namespace {name!r} has no migration in progress")
        return m

    # -- freshness --------------------------------------------------------------------------------
    def freshness(self, namespace=None, max_age=None) -> list:
        """A FreshnessReport per live namespace (ops/freshness.py)."""
        self._check_open()
        if max_age is not None and (isinstance(max_age, bool) or
                                    not isinstance(max_age, (int, float)) or
                                    not 0 <= max_age < float("inf")):
            raise InvalidInput(f"max_age {max_age!r} is not valid; expected seconds (a "
                               "number >= 0) or None for the threshold")
        if namespace is not None:
            self.engine.namespace(namespace)        # NamespaceNotFound when unknown
        return freshness_mod.freshness(self, namespace, max_age)
