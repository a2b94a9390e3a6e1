"""What the server does around every route: authorise, rate-limit (hook), audit, count.

:data:`PERMISSIONS` gives each route (by operation id) the action class it needs and how
its namespace is found; :func:`guarded` wraps an endpoint with the one authorisation step
(no route repeats a check), the audit entry and the per-route metrics.

Authentication is on as soon as the database holds any API key (even a revoked or expired
one: a key expiring never reopens the server). Then every ``/v1`` route and ``/metrics``
need ``Authorization: Bearer <key>``; ``/healthz``, ``/readyz`` and ``/openapi.json`` stay
open, because load balancers and orchestrators probe without credentials and they show no
data (``/readyz`` says ready or not, and why). ``/metrics`` needs an unscoped key of any
role: its labels name every namespace, and Prometheus sends a bearer token
(``authorization: {credentials: ...}`` in the scrape config).

Without keys every request runs as :data:`~simplevector.ops.keys.ANONYMOUS` (all rights);
``simplevector serve`` then binds only to loopback.
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from simplevector.engine.errors import (AuthenticationError, PermissionDenied, RateLimited,
                                        SimpleVectorError)
from simplevector.ops.keys import ANONYMOUS, parse_bearer

__all__ = ["PERMISSIONS", "guarded", "authorize", "authorize_namespace", "note"]

#: operation id -> (action: None (open), "read", "write" or "admin";
#:                  scope: "namespace" (path {name}), "database" (needs an unscoped key),
#:                  "filtered" (the route shows only what the key sees), "body" (the route
#:                  checks the name in its body), None (open route))
PERMISSIONS = {
    "healthz": (None, None),
    "readyz": (None, None),
    "openapi": (None, None),
    "metrics": ("read", "database"),
    "health": ("read", "database"),
    "latency": ("read", "database"),
    "verify": ("admin", "database"),      # reads everything: not for every reader key
    "repair": ("admin", "database"),
    "lsn": ("read", "database"),
    "changes": ("read", "database"),
    "list_namespaces": ("read", "filtered"),
    "create_namespace": ("admin", "body"),
    "get_namespace": ("read", "namespace"),
    "drop_namespace": ("admin", "namespace"),
    "create_version": ("admin", "namespace"),
    "promote": ("admin", "namespace"),
    "upsert": ("write", "namespace"),
    "get": ("read", "namespace"),
    "delete": ("write", "namespace"),
    "count": ("read", "namespace"),
    "query": ("read", "namespace"),
    "build_index": ("write", "namespace"),
    "index_info": ("read", "namespace"),
    "list_keys": ("admin", "database"),
    "create_key": ("admin", "database"),
    "revoke_key": ("admin", "database"),
    # lifecycle (_server_ops.py): verify reads every byte of a snapshot, so admin
    "list_snapshots": ("read", "database"),
    "create_snapshot": ("admin", "database"),
    "prune_snapshots": ("admin", "database"),
    "verify_snapshot": ("admin", "database"),
    "alerts": ("read", "database"),
    "events": ("read", "database"),
    "probe": ("read", "namespace"),
    "compact": ("admin", "database"),
    "compaction_status": ("read", "database"),
    "wal_retention": ("read", "database"),
    "consumers": ("read", "database"),
    "consumer_changes": ("write", "database"),     # records a position that pins the WAL
    "drop_consumer": ("admin", "database"),
    # freshness (_server_ops.py)
    "cost": ("read", "database"),
    "budgets": ("read", "database"),
    "set_budget": ("admin", "database"),
    "rate_limits": ("read", "database"),
    "set_rate_limit": ("admin", "database"),
    "freshness": ("read", "database"),
    "migrations": ("read", "database"),
    "query_text": ("read", "namespace"),
    "sync": ("write", "namespace"),
    "migration_status": ("read", "namespace"),
    "migration_start": ("admin", "namespace"),
    "migration_run": ("admin", "namespace"),
    "migration_shadow": ("admin", "namespace"),
    "migration_plan": ("admin", "namespace"),
    "migration_promote": ("admin", "namespace"),
    "migration_rollback": ("admin", "namespace"),
    "migration_abort": ("admin", "namespace"),
    "migration_finish": ("admin", "namespace"),
}

_log = logging.getLogger("simplevector.server")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_CLAIMED = re.compile(r"^\s*[Bb]earer\s+svk_([0-9a-f]{12})_")
MAX_AUDIT_IDS = 1000


def _auth_on(app) -> bool:
    state = app.state
    if not state.auth_on:                   # monotone: once on, it stays on
        state.auth_on = state.keys.enabled()
    return state.auth_on


def authorize(request, action: str, scope: str | None):
    """The request's principal, or AuthenticationError (401) / PermissionDenied (403)."""
    if action is None:
        return None
    app = request.app
    if not _auth_on(app):
        return ANONYMOUS
    token = parse_bearer(request.headers.get("authorization"))
    principal = app.state.keys.authenticate(token)
    request.state.principal = principal         # the audit entry names it even if refused
    namespace = request.path_params.get("name") if scope == "namespace" else None
    principal.check(action, namespace, database_wide=scope == "database")
    return principal


def authorize_namespace(request, action: str, name) -> None:
    """For a route whose namespace is in its body (``create_namespace``)."""
    note(request, namespace=name)
    principal = request.state.principal
    if principal is not None:
        principal.check(action, str(name))


def note(request, **fields) -> None:
    """Add what the route touched (ids, counts, namespace) to its audit entry."""
    if "ids" in fields and isinstance(fields["ids"], list) and \
            len(fields["ids"]) > MAX_AUDIT_IDS:
        fields["ids_truncated"] = len(fields["ids"])
        fields["ids"] = fields["ids"][:MAX_AUDIT_IDS]
    request.state.audit.update(fields)


def _request_id(request) -> str:
    given = request.headers.get("x-request-id")
    return given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex


def guarded(endpoint, path: str, method: str, op_id: str, metrics, error_response):
    """``endpoint`` behind authorisation, the rate-limit hook, the audit log and metrics."""
    action, scope = PERMISSIONS[op_id]

    async def run(request):
        app = request.app
        t0 = time.perf_counter()
        request_id = _request_id(request)
        request.state.audit = {}
        request.state.principal = None
        metrics.in_flight.inc()
        error, status = None, 500
        try:
            try:
                principal = authorize(request, action, scope)
                request.state.principal = principal
                limiter = app.state.rate_limiter
                if limiter is not None and principal is not None:
                    # e.g. ops/ratelimit.KeyRateLimiter: RateLimited (429) before the call
                    limiter.check(principal, op_id)
                response = await endpoint(request)
            except Exception as e:      # one place turns errors into responses
                error = e
                if not isinstance(e, (SimpleVectorError, HTTPException)):
                    _log.exception("unhandled error in %s %s (request %s)", method, path,
                                   request_id)
                response = error_response(request, e)
            if isinstance(error, RateLimited):
                response.headers["Retry-After"] = str(max(1, math.ceil(error.retry_after)))
            if isinstance(error, (AuthenticationError, PermissionDenied)):
                metrics.auth_failures.labels(error.code).inc()
                if isinstance(error, AuthenticationError):
                    response.headers["WWW-Authenticate"] = "Bearer"
            status = response.status_code
            audit = app.state.audit
            denied = isinstance(error, (AuthenticationError, PermissionDenied))
            audited = denied or action in ("write", "admin") or (
                action == "read" and app.state.audit_reads)
            if audit is not None and audited:
                entry = _entry(request, op_id, path, method, request_id, error, status,
                               time.perf_counter() - t0)
                try:
                    await run_in_threadpool(audit.append, entry)
                except SimpleVectorError as e:
                    # the request's effect may stand, but it is not acknowledged
                    response = error_response(request, e)
                    status = response.status_code
            response.headers["X-Request-ID"] = request_id
            return response
        finally:
            metrics.in_flight.dec()
            metrics.request_seconds.labels(path, method).observe(time.perf_counter() - t0)
            metrics.requests_total.labels(path, method, str(status)).inc()
    run.__name__ = endpoint.__name__
    run.__doc__ = endpoint.__doc__
    return run


def _entry(request, op_id, path, method, request_id, error, status, seconds) -> dict:
    principal = request.state.principal
    fields = dict(request.state.audit)
    if "namespace" not in fields and "name" in request.path_params and "{name}" in path:
        fields["namespace"] = request.path_params["name"]
    if error is None:
        outcome = "ok" if status < 400 else "error"
    elif isinstance(error, (AuthenticationError, PermissionDenied)):
        outcome = "denied"
    else:
        outcome = "error"
    entry = {
        "request_id": request_id,
        "key_id": principal.key_id if principal is not None else None,
        "role": principal.role if principal is not None and principal.key_id else None,
        "remote": request.client.host if request.client else None,
        "action": op_id,
        "method": method,
        "route": path,
        "outcome": outcome,
        "status": status,
        "latency_ms": round(seconds * 1000, 3),
    }
    if error is not None:
        entry["error"] = error.code if isinstance(error, SimpleVectorError) else (
            "http_error" if isinstance(error, HTTPException) else "internal")
        if isinstance(error, (AuthenticationError, PermissionDenied)):
            entry["reason"] = error.message
            claimed = _CLAIMED.match(request.headers.get("authorization", ""))
            if principal is None and claimed:
                entry["claimed_key_id"] = claimed.group(1)   # the id part only, never more
    version = request.query_params.get("version")
    if version:
        entry["version"] = version
    entry.update(fields)
    return entry
