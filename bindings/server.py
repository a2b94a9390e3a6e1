"""The SimpleVector HTTP server: a Starlette ASGI app over one embedded database.

:func:`create_app` wraps an ops-enabled :class:`~simplevector.Database`. Routes are thin:
decode the body (JSON, or msgpack with ``Content-Type: application/msgpack``), call the
library, encode the result. The error tree maps to HTTP statuses in one place,
:func:`_error_response`: a :class:`SimpleVectorError` becomes ``err.http_status`` with the
body ``{"error": {"code", "message", "hint"}}``; any other exception becomes 500 with code
``internal`` and no traceback. :mod:`simplevector.client` rebuilds the same exception class
from ``code``.

Wire format. JSON: vectors are lists of floats (one list: one vector; a list of lists: a
batch), ids keep their JSON type (int or string). msgpack: the same documents, except that a
vector or matrix may be sent as ``{"__ndarray__": <little-endian float32 bytes>, "shape":
[...]}`` (:mod:`simplevector._wire`), and responses to a msgpack request (or one that
accepts msgpack) are msgpack with vectors in that form.

Namespace routes take ``?version=N`` to address a version that is not live (default: the
live one). The lifecycle and freshness routes (snapshots, named consumers, WAL retention,
costs, budgets, rate limits, freshness, migrations, ``query_text`` and ``sync`` with the
server's embedding functions) live in :mod:`simplevector._server_ops`, which also states
the rule for snapshot paths over HTTP and why restore has no route.

Security (:mod:`simplevector._security`): once the database holds an API key, every ``/v1``
route and ``/metrics`` need ``Authorization: Bearer <key>`` with the role and namespace
scope :data:`~simplevector._security.PERMISSIONS` names (401 ``unauthenticated``, 403
``permission_denied``); ``/healthz``, ``/readyz`` and ``/openapi.json`` stay open. Every
write, admin action and denied request (and every read, with ``audit_reads``) is one entry
of the hash-chained audit log (:mod:`simplevector.ops.audit`), fsync'd before the answer.
Every response carries ``X-Request-ID`` (the client's, when it sent a valid one).
"""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import simplevector as sv
from simplevector._http import call as _call, encode as _encode, int_param as _int_param
from simplevector._http import payload as _payload, pick as _pick, version as _version
from simplevector._server_ops import ROUTES as OPS_ROUTES, attach, embedding_table
from simplevector._security import PERMISSIONS, authorize_namespace, guarded, note
from simplevector._wire import MSGPACK, ND
from simplevector.engine.errors import InvalidInput, SimpleVectorError
from simplevector.ops.health import disk_findings
from simplevector.ops.capacity import disk_usage
from simplevector.ops.keys import KeyStore

__all__ = ["create_app", "ROUTES", "DEFAULT_MAX_BODY_BYTES", "MSGPACK", "ND", "openapi_document"]

DEFAULT_MAX_BODY_BYTES = 64 << 20


def _describe(ns) -> dict:
    return {"name": ns.name, "version": ns.version, "dim": ns.dim, "metric": ns.metric,
            "model": ns.model, "index": ns.index, "live": ns.live}


def _namespace(request: Request):
    db = request.app.state.db
    attach(db, request.app.state.embeddings, request.path_params["name"])   # dual-write
    return db.namespace(request.path_params["name"], _version(request))


# -- routes ----------------------------------------------------------------------------------
async def healthz(request):
    """Alive: the process answers."""
    return _encode(request, {"status": "ok"})


def readiness(db) -> dict:
    """The checks behind /readyz, from the database's public status: open; WAL replayed
    (the open finished recovery: LMDB's applied LSN has caught up with the logged one);
    indexes loaded (every version's status readable with an active index); disk headroom
    (the health report's disk_free and map_growth findings not critical); not read-only by
    fault (``status().failed`` is None and a writer can write)."""
    checks, reasons = {}, []
    if db.closed:
        return {"ready": False, "readonly": db.readonly, "checks": {"open": False},
                "reasons": ["the database is closed"]}
    checks["open"] = True
    status = db.status()
    checks["wal_replayed"] = status.lsn >= status.logged_lsn or not db.writable
    if not checks["wal_replayed"]:
        reasons.append(f"WAL replay incomplete: applied LSN {status.lsn} < logged "
                       f"{status.logged_lsn}")
    versions = db.version_statuses()
    unloaded = [f"{v.name} v{v.version}" for v in versions if not v.index_active]
    checks["indexes_loaded"] = not unloaded
    if unloaded:
        reasons.append(f"indexes not loaded: {', '.join(unloaded)}")
    total, free = disk_usage(db.path)
    findings = disk_findings(db.path, status.map_size, status.map_used, total, free,
                             db.thresholds)
    critical = [f.message for f in findings if f.severity == "critical"]
    checks["disk_headroom"] = not critical
    checks["disk_free_bytes"] = free
    reasons += [f"disk: {m}" for m in critical]
    checks["not_failed"] = status.failed is None
    if status.failed is not None:
        reasons.append(f"the database stopped accepting writes: {status.failed}")
    checks["writable"] = db.readonly or db.writable
    if not checks["writable"]:
        reasons.append("the database is not writable")
    return {"ready": not reasons, "readonly": db.readonly, "checks": checks,
            "reasons": reasons}


async def readyz(request):
    """Ready: open, WAL replayed, indexes loaded, disk headroom, not read-only by fault."""
    body = await _call(readiness, request.app.state.db)
    return _encode(request, body, 200 if body["ready"] else 503)


async def metrics_route(request):
    """The database's metrics plus the server's per-route request counts and latency."""
    db = request.app.state.db
    text = await _call(db.metrics_text)
    if not text.endswith("\n"):
        text += "\n"
    text += generate_latest(request.app.state.registry).decode("utf-8")
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")


async def health(request):
    """The database's HealthReport as a dict."""
    report = await _call(request.app.state.db.health)
    return _encode(request, report.to_dict())


async def verify(request):
    """``db.verify(deep)``: checksums and cross-references (``deep`` in the body)."""
    data = await _payload(request, ("deep",))
    report = await _call(request.app.state.db.verify, data.get("deep", False))
    return _encode(request, report.to_dict())


async def repair(request):
    """``db.repair()``: rebuild derived state, name damaged primary data."""
    data = await _payload(request, ("rows_from_wal",))
    report = await _call(request.app.state.db.repair,
                         rows_from_wal=data.get("rows_from_wal", False))
    return _encode(request, report.to_dict())


async def latency(request):
    """Latency summaries: ``?namespace=&op=&window=`` (seconds or 1m/5m/1h; none = lifetime)."""
    q = request.query_params
    window = q.get("window") or None
    try:
        window = float(window) if window is not None else None
    except ValueError:
        pass                        # "1m", "5m", "1h": the library parses and checks it
    rows = await _call(request.app.state.db.latency, q.get("namespace") or None,
                       q.get("op") or None, window)
    return _encode(request, {"latency": rows})


async def lsn(request):
    """The last committed LSN."""
    db = request.app.state.db
    return _encode(request, {"lsn": await _call(lambda: db.lsn)})


async def changes(request):
    """Committed changes with LSN > ``?since=`` (default 0), at most ``?limit=`` of them."""
    db = request.app.state.db
    since = _int_param(request, "since", 0)
    limit = _int_param(request, "limit", None)

    def read():
        out = []
        for change in db.changes(since):
            out.append(change.to_dict())
            if limit is not None and len(out) >= limit:
                break
        return out
    return _encode(request, {"changes": await _call(read)})


async def list_namespaces(request):
    """Every namespace with its versions (those the key's scope covers)."""
    infos = await _call(request.app.state.db.list_namespaces)
    principal = request.state.principal
    if principal is not None:
        infos = [i for i in infos if principal.sees(i.name)]
    return _encode(request, {"namespaces": [i.to_dict() for i in infos]})


async def create_namespace(request):
    """Create a namespace (version 1, live). Body: name, dim, metric, model, index."""
    data = await _payload(request, ("name", "dim", "metric", "model", "index"))
    if "name" not in data or "dim" not in data:
        raise InvalidInput("creating a namespace needs 'name' and 'dim' in the body")
    authorize_namespace(request, "admin", data["name"])
    db = request.app.state.db
    ns = await _call(db.create_namespace, data["name"],
                     **_pick(data, "dim", "metric", "model", "index"))
    return _encode(request, _describe(ns), 201)


async def get_namespace(request):
    """The namespace's live version (or ``?version=``): name, version, dim, metric, ..."""
    ns = await _call(_namespace, request)
    return _encode(request, await _call(_describe, ns))


async def drop_namespace(request):
    """Drop the namespace, or one version that is not live with ``?version=``."""
    db = request.app.state.db
    await _call(db.drop_namespace, request.path_params["name"], _version(request))
    return _encode(request, {"dropped": request.path_params["name"],
                             "version": _version(request)})


async def create_version(request):
    """Create the next version (not live). Body: dim, metric, model, index (inherited)."""
    data = await _payload(request, ("dim", "metric", "model", "index"))
    db = request.app.state.db
    ns = await _call(db.create_version, request.path_params["name"], **data)
    return _encode(request, await _call(_describe, ns), 201)


async def promote(request):
    """Point the namespace at a version. Body: version."""
    data = await _payload(request, ("version",))
    if "version" not in data:
        raise InvalidInput("promote needs 'version' in the body")
    db = request.app.state.db
    note(request, version=data["version"])
    await _call(db.promote, request.path_params["name"], data["version"])
    return _encode(request, {"name": request.path_params["name"],
                             "live_version": data["version"]})


async def upsert(request):
    """Insert or replace rows. Body: ids, vectors, metadata, documents. Returns the LSN."""
    data = await _payload(request, ("ids", "vectors", "metadata", "documents"))
    ns = await _call(_namespace, request)
    if "ids" not in data or "vectors" not in data:
        raise InvalidInput("upsert needs 'ids' and 'vectors' in the body")
    note(request, ids=_audit_ids(data["ids"]), count=_count(data["ids"]))
    written = await _call(ns.upsert, data["ids"], data["vectors"], data.get("metadata"),
                          data.get("documents"))
    note(request, lsn=written)
    return _encode(request, {"lsn": written})


async def get_records(request):
    """Records for ``ids`` (one id: one record). Body: ids, include."""
    data = await _payload(request, ("ids", "include"))
    if "ids" not in data:
        raise InvalidInput("get needs 'ids' in the body")
    ns = await _call(_namespace, request)
    note(request, count=_count(data["ids"]))
    out = await _call(ns.get, data["ids"], **_pick(data, "include"))
    single = not isinstance(out, list)
    return _encode(request, {"single": single, "records": [out] if single else out})


async def delete(request):
    """Delete rows by ``ids`` and/or ``where``; returns how many were deleted."""
    data = await _payload(request, ("ids", "where"))
    ns = await _call(_namespace, request)
    if data.get("ids") is not None:
        note(request, ids=_audit_ids(data["ids"]))
    if data.get("where") is not None:
        note(request, where=data["where"])
    deleted = await _call(ns.delete, data.get("ids"), data.get("where"))
    note(request, count=deleted)
    return _encode(request, {"deleted": deleted})


async def count(request):
    """Rows stored."""
    ns = await _call(_namespace, request)
    return _encode(request, {"count": await _call(ns.count)})


async def query(request):
    """Nearest rows. Body: vectors, k, where, include, nprobe, refine, exact, explain."""
    data = await _payload(request, ("vectors", "k", "where", "include", "nprobe", "refine",
                                    "exact", "explain"))
    if "vectors" not in data:
        raise InvalidInput("query needs 'vectors' in the body")
    _numeric_or_raise(data["vectors"], "query vectors")
    ns = await _call(_namespace, request)
    explain = data.get("explain", False)
    out = await _call(ns.query, data["vectors"],
                      **_pick(data, "k", "where", "include", "nprobe", "refine", "exact",
                              "explain"))
    hits, plan = out if explain else (out, None)
    note(request, count=len(hits) if hits and isinstance(hits[0], list) else 1)
    body = {"single": np.ndim(data["vectors"]) == 1 if not isinstance(
        data["vectors"], np.ndarray) else data["vectors"].ndim == 1, "hits": hits}
    if plan is not None:
        body["plan"] = plan.to_dict()
    return _encode(request, body)


async def build_index(request):
    """Train the index now (``spec`` in the body, or the configured one)."""
    data = await _payload(request, ("spec",))
    ns = await _call(_namespace, request)
    return _encode(request, await _call(ns.build_index, data.get("spec")))


async def index_info(request):
    """The live index: spec, training, list sizes."""
    ns = await _call(_namespace, request)
    return _encode(request, await _call(ns.index_info))


def _numeric_or_raise(value, what: str) -> None:
    """InvalidInput for a value numpy cannot read as an array (ragged rows, nested junk):
    the engine's query reads the input's shape before validating it, and would answer 500
    (found by schemathesis, tests/test_fuzz.py)."""
    if isinstance(value, np.ndarray):
        return
    try:
        np.ndim(value)
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"{what} could not be read as a vector or a matrix of numbers: "
                           f"{e}") from None


def _count(ids) -> int:
    return len(ids) if isinstance(ids, (list, tuple)) else 1


def _audit_ids(ids):
    if isinstance(ids, (list, tuple)):
        return [i if isinstance(i, (int, str)) else str(i) for i in ids]
    return [ids] if isinstance(ids, (int, str)) else [str(ids)]


def _keystore(request) -> KeyStore:
    return request.app.state.keys


async def list_keys(request):
    """Every API key (id, role, namespaces, created, expires, revoked, state); no secrets."""
    keys = await _call(_keystore(request).list)
    return _encode(request, {"keys": [k.to_dict() for k in keys]})


async def create_key(request):
    """Create an API key. Body: role, namespaces, expires (e.g. "30d"), name. The answer
    holds the key text, shown this once."""
    data = await _payload(request, ("role", "namespaces", "expires", "name"))
    if "role" not in data:
        raise InvalidInput("creating a key needs 'role' in the body (reader, writer, admin)")
    text, key = await _call(_keystore(request).create, data["role"],
                            namespaces=data.get("namespaces"), expires=data.get("expires"),
                            name=data.get("name"))
    note(request, created_key_id=key.id, created_role=key.role,
         created_namespaces=None if key.namespaces is None else list(key.namespaces))
    return _encode(request, {"key": text, **key.to_dict()}, 201)


async def revoke_key(request):
    """Revoke the key ``{key_id}``; it keeps its record, marked revoked."""
    key_id = request.path_params["key_id"]
    note(request, revoked_key_id=key_id)
    key = await _call(_keystore(request).revoke, key_id)
    return _encode(request, key.to_dict())


async def openapi(request):
    """This document."""
    return _encode(request, openapi_document())


NS = "/v1/namespaces/{name}"
#: (path, method, endpoint, operation id); the OpenAPI document is built from it
ROUTES = [
    ("/healthz", "GET", healthz, "healthz"),
    ("/readyz", "GET", readyz, "readyz"),
    ("/metrics", "GET", metrics_route, "metrics"),
    ("/openapi.json", "GET", openapi, "openapi"),
    ("/v1/health", "GET", health, "health"),
    ("/v1/latency", "GET", latency, "latency"),
    ("/v1/verify", "POST", verify, "verify"),
    ("/v1/repair", "POST", repair, "repair"),
    ("/v1/lsn", "GET", lsn, "lsn"),
    ("/v1/changes", "GET", changes, "changes"),
    ("/v1/namespaces", "GET", list_namespaces, "list_namespaces"),
    ("/v1/namespaces", "POST", create_namespace, "create_namespace"),
    (NS, "GET", get_namespace, "get_namespace"),
    (NS, "DELETE", drop_namespace, "drop_namespace"),
    (NS + "/versions", "POST", create_version, "create_version"),
    (NS + "/promote", "POST", promote, "promote"),
    (NS + "/upsert", "POST", upsert, "upsert"),
    (NS + "/get", "POST", get_records, "get"),
    (NS + "/delete", "POST", delete, "delete"),
    (NS + "/count", "GET", count, "count"),
    (NS + "/query", "POST", query, "query"),
    (NS + "/index", "POST", build_index, "build_index"),
    (NS + "/index", "GET", index_info, "index_info"),
    ("/v1/keys", "GET", list_keys, "list_keys"),
    ("/v1/keys", "POST", create_key, "create_key"),
    ("/v1/keys/{key_id}", "DELETE", revoke_key, "revoke_key"),
    *OPS_ROUTES,        # snapshots, consumers, costs, budgets, migrations (_server_ops.py)
]


def openapi_document() -> dict:
    """An OpenAPI 3.1 document built from :data:`ROUTES` (:mod:`simplevector._openapi`)."""
    from simplevector._openapi import build
    return build(ROUTES, PERMISSIONS, sv.__version__, MSGPACK)


# -- errors: the one place the error tree becomes HTTP ------------------------------------------
def _error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, SimpleVectorError):
        return _encode(None, {"error": exc.to_dict()}, exc.http_status)
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        response = _encode(None, {"error": {"code": code, "message": str(exc.detail),
                                            "hint": None}}, exc.status_code)
        for name, value in (exc.headers or {}).items():     # Allow on a 405
            response.headers[name] = value
        return response
    return _encode(None, {"error": {"code": "internal", "message": "internal server error",
                                    "hint": "see the server log"}}, 500)


class _Metrics:
    """The server's own Prometheus metrics (one registry per app)."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests_total = Counter(
            "simplevector_http_requests", "HTTP requests by route, method and status",
            ["route", "method", "status"], registry=self.registry)
        self.request_seconds = Histogram(
            "simplevector_http_request_seconds", "HTTP request latency by route",
            ["route", "method"], registry=self.registry)
        self.in_flight = Gauge("simplevector_http_requests_in_flight",
                               "HTTP requests being served now", registry=self.registry)
        self.auth_failures = Counter(
            "simplevector_http_auth_failures", "Requests refused by authentication (401, "
            "code unauthenticated) or authorisation (403, code permission_denied)",
            ["code"], registry=self.registry)


def create_app(db, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, audit=None,
               audit_reads: bool = False, rate_limiter=None, embeddings=()) -> Starlette:
    """The ASGI app serving ``db`` (an ops-enabled :class:`simplevector.Database`).

    The app does not close ``db``; its owner does (``simplevector serve`` closes it, which
    checkpoints, after the server has stopped). ``max_body_bytes``: larger request bodies
    are refused with 413 (code ``limit_exceeded``). ``audit``: an
    :class:`simplevector.ops.audit.AuditLog` that receives every write, admin action and
    denied request (and reads with ``audit_reads``); None: no audit log. ``rate_limiter``:
    an object with ``check(principal, operation_id)`` that raises the 429 error when a key
    is over its rate (ops/ratelimit.py, another step of the work, plugs in here); None: no
    limit. ``embeddings``: embedding functions (at most one per model) that serve every
    namespace version bound to their model: ``query_text``, ``sync``, migrations
    (:mod:`simplevector._server_ops`).
    """
    table = embedding_table(embeddings)
    metrics = _Metrics()
    routes = [Route(path, guarded(endpoint, path, method, op_id, metrics, _error_response),
                    methods=[method], name=op_id)
              for path, method, endpoint, op_id in ROUTES]
    app = Starlette(routes=routes, exception_handlers={
        SimpleVectorError: _error_response, HTTPException: _error_response,
        Exception: _error_response})
    app.state.db = db
    app.state.max_body_bytes = int(max_body_bytes)
    app.state.registry = metrics.registry
    app.state.keys = KeyStore(db)
    app.state.auth_on = False
    app.state.audit = audit
    app.state.audit_reads = bool(audit_reads)
    app.state.rate_limiter = rate_limiter
    app.state.embeddings = table
    return app
