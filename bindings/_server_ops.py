"""The server's lifecycle and freshness routes: snapshots, WAL retention, named change-feed
consumers, costs, budgets, rate limits, freshness and migrations (what needs no embedding
function). Thin like the routes of :mod:`simplevector.server`, which adds :data:`ROUTES`
to its table; rights are the rows of :data:`simplevector._security.PERMISSIONS`.

Snapshot paths over HTTP (a decision): a path names a directory on the *server's* machine,
so a client may not choose one freely (it could fill any disk the server can write or
probe its file system). ``POST /v1/snapshots`` and ``/v1/snapshots/verify`` take ``path``
None (the default name, ``<db>/snapshots/<lsn>-<UTC time>``), a bare name
(``nightly-1``: ``<db>/snapshots/nightly-1``) or an absolute path whose parent is
``<db>/snapshots`` (what ``SnapshotInfo.path`` holds); anything else is InvalidInput. So
every snapshot made over HTTP is listed by ``GET /v1/snapshots`` and pruned by
``/v1/snapshots/prune``. Restore has no route: it builds a new database directory beside
the target and renames it into place, which a running server (holding the directory open
and locked) cannot undergo; run ``simplevector restore`` on the server's host while the
server is stopped (README, "Server").

Embedding functions are Python objects of the process that calls the model, so the server
has only those it was started with: ``simplevector serve --embedding SPEC`` (repeatable;
the specs of the CLI: ``glove``, ``glove:X.Y.Z``, ``package.module:factory``), or
``create_app(db, embeddings=[fn, ...])``. A function serves every namespace version bound
to its model (the model string identifies it, DESIGN.md "Freshness"): :func:`attach`
attaches it before a namespace route runs, and re-attaches it to a migration in progress.
With one, ``query_text``, ``sync``, starting a migration (``{"model": ...}`` names one of
the server's functions), ``run`` and ``shadow`` work over HTTP; without one they answer
InvalidInput (no function attached), as the embedded calls do. Status, plan, promote,
rollback, abort and finish need no function.
"""

from __future__ import annotations

import os
import re

from simplevector._http import call, encode, payload, version
from simplevector._security import note
from simplevector.engine.errors import InvalidInput

__all__ = ["ROUTES", "snapshot_path", "attach", "embedding_table"]

#: a snapshot name the server accepts (the namespace name rule; never a ``.tmp`` name)
SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def snapshot_path(db_path: str, path):
    """``path`` of a snapshot request as the server allows it (see the module docstring):
    None, or an absolute path directly under ``<db_path>/snapshots``."""
    if path is None:
        return None
    root = os.path.join(os.path.abspath(db_path), "snapshots")
    if isinstance(path, str) and path:
        name = os.path.basename(path) if os.path.isabs(path) else path
        parent_ok = not os.path.isabs(path) or (
            os.path.realpath(os.path.dirname(path)) == os.path.realpath(root))
        if parent_ok and SNAPSHOT_NAME.match(name) and not name.endswith(".tmp"):
            return os.path.join(root, name)
    raise InvalidInput(
        f"snapshot path {path!r} is not allowed over HTTP; expected none (the default "
        f"name), a name of letters, digits, '_', '.', '-' (not ending in .tmp), or a path "
        f"directly under {root}",
        hint="the server writes snapshots only into its database's snapshot directory; "
             "copy them elsewhere from there")


def _db(request):
    return request.app.state.db


def embedding_table(functions) -> dict:
    """model -> function of the server's embedding functions (InvalidInput for a bad one or
    two with the same model)."""
    from simplevector.ops.embeddings import check_function
    table: dict = {}
    for fn in functions or ():
        check_function(fn)
        if fn.model in table:
            raise InvalidInput(f"two embedding functions for model {fn.model!r}; expected one "
                               "per model")
        table[fn.model] = fn
    return table


def attach(db, table: dict, name) -> None:
    """Attach the server's function of each version's model to namespace ``name`` (and to
    its migration in progress) where none is attached yet; versions whose dim differs from
    the function's are left alone (their calls then say no function is attached)."""
    if not table:
        return
    for v in db.list_namespaces_versions(name):
        fn = table.get(v.model)
        if fn is not None and fn.dim == v.dim and db.embedding_for(name, v.model) is None:
            db.namespace(name, v.version, embedding=fn)
    m = db.active_migration(name)
    if m is not None and m.embedding is None and m.doc["to_model"] in table:
        db.migrate(name, embedding=table[m.doc["to_model"]])


def _attached(request):
    """The namespace handle of ``{name}`` (``?version=``) with the server's functions."""
    db = _db(request)
    attach(db, request.app.state.embeddings, request.path_params["name"])
    return db.namespace(request.path_params["name"], version(request))


# -- snapshots -----------------------------------------------------------------------------
async def list_snapshots(request):
    """The complete snapshots in the database's snapshot directory, oldest first."""
    infos = await call(_db(request).snapshots)
    return encode(request, {"snapshots": [i.to_dict() for i in infos]})


async def create_snapshot(request):
    """An online snapshot as of the current LSN. Body: path (none, a name, or a path
    directly under the snapshot directory)."""
    data = await payload(request, ("path",))
    db = _db(request)
    path = snapshot_path(db.path, data.get("path"))
    note(request, path=path)
    info = await call(db.snapshot, path)
    note(request, path=info.path, lsn=info.lsn)
    return encode(request, info.to_dict(), 201)


async def prune_snapshots(request):
    """Remove the snapshots older than the newest ``keep``. Body: keep."""
    data = await payload(request, ("keep",))
    if "keep" not in data:
        raise InvalidInput("prune needs 'keep' in the body (an int >= 0)")
    note(request, keep=data["keep"])
    removed = await call(_db(request).prune_snapshots, data["keep"])
    note(request, removed=[i.path for i in removed])
    return encode(request, {"removed": [i.to_dict() for i in removed]})


async def verify_snapshot(request):
    """Check a snapshot's files against its manifest (sizes, SHA-256). Body: path (a name
    or a path directly under the snapshot directory)."""
    data = await payload(request, ("path",))
    if data.get("path") is None:
        raise InvalidInput("verify needs 'path' in the body (a snapshot name or path)")
    db = _db(request)
    path = snapshot_path(db.path, data["path"])
    note(request, path=path)
    info = await call(db.verify_snapshot, path)
    return encode(request, info.to_dict())


# -- alerts, events, recall probes ------------------------------------------------------------
async def alerts(request):
    """Evaluate every alert rule now (``db.alerts()``): each rule's state, value and
    message; state changes are recorded as events (a read-only server records none)."""
    found = await call(_db(request).alerts)
    return encode(request, {"alerts": [a.to_dict() for a in found]})


async def events(request):
    """Recorded alert state changes and lifecycle events, oldest first. Query: since
    (epoch seconds)."""
    raw = request.query_params.get("since")
    since = None
    if raw is not None:
        try:
            since = float(raw)
        except ValueError:
            raise InvalidInput(f"since {raw!r} is not valid; expected epoch seconds") from None
    return encode(request, {"events": await call(_db(request).alert_events, since)})


async def probe(request):
    """Recall@k of the live index against exact search (``db.probe_recall``). Body:
    samples, k, where (a filter: filtered recall against exact over the matching rows)."""
    data = await payload(request, ("samples", "k", "where"))
    name = request.path_params["name"]
    result = await call(_db(request).probe_recall, name, data.get("samples", 200),
                        data.get("k", 10), where=data.get("where"))
    return encode(request, result.to_dict())


# -- compaction ---------------------------------------------------------------------------------
async def compact(request):
    """Rewrite versions without their tombstones (db.compact). Body: namespace (none: every
    version), version (with a namespace: that version, else its live one)."""
    data = await payload(request, ("namespace", "version"))
    note(request, namespace=data.get("namespace"), version=data.get("version"))
    report = await call(_db(request).compact, data.get("namespace"), data.get("version"))
    note(request, tombstones_removed=report.tombstones_removed,
         bytes_reclaimed=report.bytes_reclaimed)
    return encode(request, report.to_dict())


async def compaction_status(request):
    """The compaction policy (compact_ratio), its run count and its last run or error."""
    return encode(request, await call(_db(request).compaction_status))


# -- WAL retention and named consumers -------------------------------------------------------
async def wal_retention(request):
    """WAL bytes and why they are kept: pins (checkpoint, archive, snapshot, consumers)."""
    return encode(request, await call(_db(request).wal_retention))


async def list_consumers(request):
    """The named change-feed consumers: name, lsn, at, lag."""
    return encode(request, {"consumers": await call(_db(request).consumers)})


async def consumer_changes(request):
    """Acknowledge everything up to ``since`` for the consumer ``{consumer}`` (recorded
    durably; the WAL keeps what follows) and return the changes after it, at most
    ``limit``. Body: since, limit."""
    data = await payload(request, ("since", "limit"))
    name = request.path_params["consumer"]
    since = data.get("since", 0)
    limit = data.get("limit")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)
                              or limit < 1):
        raise InvalidInput(f"limit {limit!r} is not valid; expected an int >= 1")
    note(request, consumer=name, since=since)
    db = _db(request)

    def read():
        out = []
        for change in db.changes(since, consumer=name):
            out.append(change.to_dict())
            if limit is not None and len(out) >= limit:
                break
        return out
    return encode(request, {"changes": await call(read)})


async def drop_consumer(request):
    """Forget the consumer ``{consumer}``: its position no longer holds the WAL."""
    name = request.path_params["consumer"]
    note(request, consumer=name)
    await call(_db(request).drop_consumer, name)
    return encode(request, {"dropped": name})


# -- costs, budgets, rate limits, freshness ---------------------------------------------------
async def cost(request):
    """The cost report: embedding calls, tokens, cost, queries, stored bytes per namespace
    and model over ``?window=`` (1h, 1d or seconds; none: the whole ledger)."""
    window = request.query_params.get("window") or None
    try:
        window = float(window) if window is not None else None
    except ValueError:
        pass                        # "1h": the library parses and checks it
    report = await call(_db(request).cost, window)
    return encode(request, report.to_dict())


async def list_budgets(request):
    """Every budget with its use in the current period."""
    return encode(request, {"budgets": await call(_db(request).budgets)})


async def set_budget(request):
    """Set (or ``remove``) the budget of a namespace/model scope. Body: namespace, model,
    max_tokens, max_cost, period, hard, remove."""
    fields = ("namespace", "model", "max_tokens", "max_cost", "period", "hard", "remove")
    data = await payload(request, fields)
    note(request, **{f"budget_{k}": v for k, v in data.items()})
    budget = await call(_db(request).set_budget, **data)
    return encode(request, {**budget.to_dict(), "removed": bool(data.get("remove"))})


async def list_rate_limits(request):
    """The configured rate limits (namespace, op, per_second, burst, wait)."""
    limits = await call(_db(request).rate_limits)
    return encode(request, {"rate_limits": [lim.to_dict() for lim in limits]})


async def set_rate_limit(request):
    """Limit ``op`` (query, write, embed) on ``namespace`` to ``per_second`` (0 or null
    removes it). Body: namespace, op, per_second, burst, wait."""
    data = await payload(request, ("namespace", "op", "per_second", "burst", "wait"))
    for need in ("namespace", "op"):
        if need not in data:
            raise InvalidInput(f"a rate limit needs {need!r} in the body")
    note(request, limit_namespace=data["namespace"], op=data["op"],
         per_second=data.get("per_second"))
    limit = await call(_db(request).set_rate_limit, data["namespace"], data["op"],
                       data.get("per_second"), data.get("burst"),
                       wait=bool(data.get("wait", False)))
    return encode(request, {"rate_limit": None if limit is None else limit.to_dict()})


async def freshness(request):
    """A freshness report per live namespace (``?namespace=``, ``?max_age=`` seconds)."""
    q = request.query_params
    max_age = q.get("max_age") or None
    if max_age is not None:
        try:
            max_age = float(max_age)
        except ValueError:
            max_age = -1.0
        if not 0 <= max_age < float("inf"):
            raise InvalidInput(f"max_age {q.get('max_age')!r} is not valid; expected "
                               "seconds (a number >= 0)")
    reports = await call(_db(request).freshness, q.get("namespace") or None, max_age)
    return encode(request, {"freshness": [r.to_dict() for r in reports]})


# -- migrations ---------------------------------------------------------------------------
async def list_migrations(request):
    """Every migration recorded in the database (oldest first), or ``?namespace=``'s."""
    found = await call(_db(request).migrations,
                       request.query_params.get("namespace") or None)
    return encode(request, {"migrations": [m.status() for m in found]})


def _active(request):
    db = _db(request)
    attach(db, request.app.state.embeddings, request.path_params["name"])
    return db.migration(request.path_params["name"])


async def migration_start(request):
    """Start migrating the namespace to ``model`` (one of the server's embedding functions:
    a new version, dual-write on), or re-attach to the migration in progress. Body: model,
    index (of the new version; default inherited)."""
    data = await payload(request, ("model", "index"))
    if "model" not in data:
        raise InvalidInput("starting a migration needs 'model' in the body (the model of one "
                           "of the server's embedding functions)")
    table = request.app.state.embeddings
    fn = table.get(data["model"]) if isinstance(data["model"], str) else None
    if fn is None:
        raise InvalidInput(f"the server has no embedding function for model "
                           f"{data['model']!r}; it has {sorted(table) or 'none'}",
                           hint="start the server with --embedding SPEC for that model")
    name = request.path_params["name"]
    db = _db(request)
    await call(attach, db, table, name)
    note(request, to_model=fn.model)
    m = await call(db.migrate, name, embedding=fn, index=data.get("index"))
    out = await call(m.status)
    note(request, migration=m.key, state=out["state"])
    return encode(request, out, 201)


async def migration_run(request):
    """Back-fill (resumable) and verify; the status. Body: batch_size, max_batches."""
    data = await payload(request, ("batch_size", "max_batches"))
    m = await call(_active, request)
    note(request, migration=m.key, **data)
    out = await call(m.run, **data)
    note(request, state=out["state"])
    return encode(request, out)


async def migration_shadow(request):
    """Shadow queries against both versions: overlap@k, the new version's recall, latency
    of each. Body: k, samples, seed."""
    data = await payload(request, ("k", "samples", "seed"))
    m = await call(_active, request)
    note(request, migration=m.key)
    report = await call(m.shadow, **data)
    return encode(request, report.to_dict())


# -- text: query_text and sync (need the server's embedding function) ------------------------
async def query_text(request):
    """Embed ``text`` (a str, or a list of str) with the namespace's model and query.
    Body: text, k, where, include, nprobe, refine, exact."""
    data = await payload(request, ("text", "k", "where", "include", "nprobe", "refine",
                                   "exact"))
    if "text" not in data:
        raise InvalidInput("query_text needs 'text' in the body")
    ns = await call(_attached, request)
    hits = await call(ns.query_text, data["text"],
                      **{k: v for k, v in data.items() if k != "text"})
    return encode(request, {"single": isinstance(data["text"], str), "hits": hits})


async def sync(request):
    """Bring the namespace in line with ``records`` by content hash (embeds only new or
    changed texts). Body: records, mode, source_key, batch_size."""
    data = await payload(request, ("records", "mode", "source_key", "batch_size"))
    records = data.get("records")
    if not isinstance(records, list):
        raise InvalidInput(f"records {records!r:.80} is not valid; expected a list of "
                           '{"id", "text", "metadata"?, "updated_at"?} objects')
    ns = await call(_attached, request)
    note(request, count=len(records), mode=data.get("mode", "incremental"))
    report = await call(ns.sync, records,
                        **{k: v for k, v in data.items() if k != "records"})
    note(request, embedded=report.embedded, tokens=report.tokens)
    return encode(request, report.to_dict())


async def migration_status(request):
    """The namespace's migration in progress: state, versions, models, progress, ETA."""
    m = await call(_active, request)
    return encode(request, await call(m.status))


async def migration_plan(request):
    """Rows, rows with text and distinct texts of the migration in progress (tokens and
    cost only where the server has its embedding function attached)."""
    m = await call(_active, request)
    return encode(request, await call(m.plan))


def _transition(method: str, options: tuple, doc: str):
    async def endpoint(request):
        data = await payload(request, options)
        for key, value in data.items():
            if not isinstance(value, bool):
                raise InvalidInput(f"{key} {value!r} is not valid; expected true or false")
        m = await call(_active, request)
        note(request, migration=m.key, **data)
        out = await call(getattr(m, method), **data)
        note(request, state=out.get("state"))
        return encode(request, out)
    endpoint.__name__ = f"migration_{method}"
    endpoint.__doc__ = doc
    return endpoint


migration_promote = _transition(
    "promote", ("force",), "Point the namespace at the migrated version. Body: force.")
migration_rollback = _transition(
    "rollback", (), "Point the namespace back at the previous version.")
migration_abort = _transition(
    "abort", ("drop",), "Stop the migration before promotion. Body: drop (the new version).")
migration_finish = _transition(
    "finish", ("drop_old",), "End a promoted migration. Body: drop_old.")

NS = "/v1/namespaces/{name}"
#: (path, method, endpoint, operation id), appended to simplevector.server.ROUTES
ROUTES = [
    ("/v1/snapshots", "GET", list_snapshots, "list_snapshots"),
    ("/v1/snapshots", "POST", create_snapshot, "create_snapshot"),
    ("/v1/snapshots/prune", "POST", prune_snapshots, "prune_snapshots"),
    ("/v1/snapshots/verify", "POST", verify_snapshot, "verify_snapshot"),
    ("/v1/alerts", "GET", alerts, "alerts"),
    ("/v1/events", "GET", events, "events"),
    (NS + "/probe", "POST", probe, "probe"),
    ("/v1/compact", "POST", compact, "compact"),
    ("/v1/compaction", "GET", compaction_status, "compaction_status"),
    ("/v1/wal/retention", "GET", wal_retention, "wal_retention"),
    ("/v1/consumers", "GET", list_consumers, "consumers"),
    ("/v1/consumers/{consumer}/changes", "POST", consumer_changes, "consumer_changes"),
    ("/v1/consumers/{consumer}", "DELETE", drop_consumer, "drop_consumer"),
    ("/v1/cost", "GET", cost, "cost"),
    ("/v1/budgets", "GET", list_budgets, "budgets"),
    ("/v1/budgets", "POST", set_budget, "set_budget"),
    ("/v1/rate_limits", "GET", list_rate_limits, "rate_limits"),
    ("/v1/rate_limits", "POST", set_rate_limit, "set_rate_limit"),
    ("/v1/freshness", "GET", freshness, "freshness"),
    ("/v1/migrations", "GET", list_migrations, "migrations"),
    (NS + "/query_text", "POST", query_text, "query_text"),
    (NS + "/sync", "POST", sync, "sync"),
    (NS + "/migration", "GET", migration_status, "migration_status"),
    (NS + "/migration", "POST", migration_start, "migration_start"),
    (NS + "/migration/run", "POST", migration_run, "migration_run"),
    (NS + "/migration/shadow", "POST", migration_shadow, "migration_shadow"),
    (NS + "/migration/plan", "POST", migration_plan, "migration_plan"),
    (NS + "/migration/promote", "POST", migration_promote, "migration_promote"),
    (NS + "/migration/rollback", "POST", migration_rollback, "migration_rollback"),
    (NS + "/migration/abort", "POST", migration_abort, "migration_abort"),
    (NS + "/migration/finish", "POST", migration_finish, "migration_finish"),
]
