"""The HTTP client: the embedded API over the wire (``sv.connect(url)``).

:class:`Client` has the methods of :class:`simplevector.Database` that make sense remotely
(namespaces, versions, ``lsn``, ``changes`` (also as a named consumer), ``consumers``,
``drop_consumer``, ``wal_retention``, ``snapshot``, ``snapshots``, ``prune_snapshots``,
``verify_snapshot``, ``cost``, ``budgets``, ``set_budget``, ``rate_limits``,
``set_rate_limit``, ``freshness``, ``migrations``, ``migration``, ``migrate``, ``health``,
``latency`` (LatencySummary rows), ``metrics_text``, ``keys`` (the server's API keys, for
an admin key)) and :class:`RemoteNamespace` those of :class:`simplevector.Namespace`
(``upsert``, ``get``, ``delete``, ``count``, ``query``, ``query_text``, ``sync``,
``build_index``, ``index_info``), with the same names, arguments, return types and
exceptions. Differences, by decision:

- Snapshot paths are on the server's machine and must be a name or a path directly under
  its ``<db>/snapshots`` (InvalidInput otherwise; :mod:`simplevector._server_ops`).
  ``sv.restore`` is offline (README, "Server"): no client method.
- ``query_text``, ``sync`` and migrations embed with the *server's* function of the
  namespace's model (``serve --embedding``); an ``embedding=fn`` given to the client is
  checked (model, dim) and names that model. No progress callbacks over HTTP.

- ``query(..., explain=True)`` returns ``(hits, Plan)`` with the same :class:`Plan`
  dataclass as the embedded database (its ``seconds`` are the server's).
- ``health()`` returns the server database's ``HealthReport`` rebuilt from its JSON (its
  stats are plain JSON values).
- A RemoteNamespace keeps the ``version``/``dim``/``metric``/``model``/``index``/``live``
  it had when it was fetched; a handle on the live version (``namespace(name)``) still
  addresses whatever version is live at each call, like the embedded one.

``api_key`` is sent as ``Authorization: Bearer <key>``; a missing or refused key raises
AuthenticationError (401), a key without the right PermissionDenied (403).

Errors arrive as ``{"error": {"code", "message", "hint"}}`` and are raised as the class
:func:`error_class_for_code` names (same message and hint). Only idempotent calls (GETs and
``query``) are retried, and only on connection errors. Vectors in ``Record.vector`` and
``Hit.vector`` come back as float32 numpy arrays. ``wire="msgpack"`` sends and receives
msgpack, with vectors as raw little-endian float32 bytes (:mod:`simplevector._wire`).
"""

from __future__ import annotations

import time
from urllib.parse import quote

import httpx
import numpy as np

from simplevector._output import to_jsonable
from simplevector._wire import MSGPACK, pack, unpack
from simplevector.engine.errors import InvalidInput, SimpleVectorError, error_class_for_code
from simplevector.engine.planner import Plan
from simplevector.engine.types import Change, Hit, NamespaceInfo, Record, VersionInfo

__all__ = ["Client", "RemoteNamespace", "RemoteKeys", "RemoteMigration", "connect"]

RETRIES = 2
RETRY_WAIT = 0.2


def connect(url: str, *, api_key: str | None = None, timeout: float = 30.0,
            wire: str = "json") -> "Client":
    """A :class:`Client` of the SimpleVector server at ``url`` (e.g. http://127.0.0.1:8484).

    wire: "json" (vectors as lists of floats) or "msgpack" (vectors as float32 bytes)."""
    return Client(url, api_key=api_key, timeout=timeout, wire=wire)


def _error_from(response: httpx.Response) -> SimpleVectorError:
    try:
        err = response.json()["error"]
        cls = error_class_for_code(err["code"])
        message, hint = err["message"], err.get("hint")
    except (ValueError, KeyError, TypeError):
        return SimpleVectorError(f"HTTP {response.status_code} from the server: "
                                 f"{response.text[:200]}")
    try:
        exc = cls(message, hint=hint)
    except TypeError:       # pragma: no cover - every class takes (message, hint=)
        return SimpleVectorError(message, hint=hint)
    if "retry_after" in err and hasattr(exc, "retry_after"):
        exc.retry_after = float(err["retry_after"])        # RateLimited
    return exc


def _vector(value):
    return None if value is None else np.array(value, dtype=np.float32)


def _hit(d: dict) -> Hit:
    return Hit(id=d["id"], distance=float(d["distance"]), metadata=d.get("metadata"),
               document=d.get("document"), vector=_vector(d.get("vector")))


def _record(d):
    if d is None:
        return None
    return Record(id=d["id"], metadata=d.get("metadata"), document=d.get("document"),
                  vector=_vector(d.get("vector")))


def _ids(ids):
    if isinstance(ids, np.ndarray):
        return ids.tolist()
    if isinstance(ids, np.generic):
        return ids.item()
    if isinstance(ids, (list, tuple)):
        return [i.item() if isinstance(i, np.generic) else i for i in ids]
    return ids


class Client:
    """A connection pool to one SimpleVector server; see the module for the API."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 30.0,
                 wire: str = "json"):
        if wire not in ("json", "msgpack"):
            raise InvalidInput(f"wire {wire!r} is not valid; expected 'json' or 'msgpack'")
        self.wire = wire
        headers = {"Accept": MSGPACK if wire == "msgpack" else "application/json"}
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)
        self._closed = False

    # -- transport -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, body=None, params=None,
                 idempotent: bool | None = None):
        if self._closed:
            from simplevector.engine.errors import ClosedError
            raise ClosedError("the client is closed",
                              hint="connect again with simplevector.connect(url)")
        if idempotent is None:
            idempotent = method == "GET"
        if params:
            params = {k: v for k, v in params.items() if v is not None}
        kwargs = {"params": params or None}
        if body is not None and self.wire == "msgpack":
            kwargs["content"] = pack(body)
            kwargs["headers"] = {"Content-Type": MSGPACK}
        elif body is not None:
            kwargs["json"] = to_jsonable(body)
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
                break
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as e:
                attempt += 1
                if not idempotent or attempt > RETRIES:
                    from simplevector.engine.errors import StorageError
                    raise StorageError(f"cannot reach the SimpleVector server at {self.url}: "
                                       f"{e}", hint="is `simplevector serve` running?") from e
                time.sleep(RETRY_WAIT * attempt)
        if response.status_code >= 400:
            raise _error_from(response)
        ctype = response.headers.get("content-type", "")
        if ctype.startswith(MSGPACK):
            return unpack(response.content)
        if ctype.startswith("application/json"):
            return response.json()
        return response.text

    @staticmethod
    def _ns_path(name: str, tail: str = "") -> str:
        return f"/v1/namespaces/{quote(str(name), safe='')}{tail}"

    def _handle(self, desc: dict, pinned) -> "RemoteNamespace":
        return RemoteNamespace(self, desc, pinned)

    # -- namespaces ------------------------------------------------------------------------------
    def create_namespace(self, name, *, dim=None, metric="cosine", model=None,
                         index="auto", embedding=None) -> "RemoteNamespace":
        """Create ``name`` with version 1 live; raises NamespaceExists if it exists. With
        ``embedding=fn`` dim and model come from the function (given as well, they must
        agree); the server embeds with its own function of that model (``serve
        --embedding``), which the model string identifies."""
        from simplevector.ops.embeddings import dim_and_model
        dim, model = dim_and_model(embedding, dim, model)
        desc = self._request("POST", "/v1/namespaces", body={
            "name": name, "dim": dim, "metric": metric, "model": model, "index": index})
        return self._handle(desc, None)

    def create_version(self, name, *, dim=None, metric=None, model=None,
                       index=None) -> "RemoteNamespace":
        """The next version of ``name`` (not live), inheriting what is not given."""
        body = {k: v for k, v in (("dim", dim), ("metric", metric), ("model", model),
                                  ("index", index)) if v is not None}
        desc = self._request("POST", self._ns_path(name, "/versions"), body=body)
        return self._handle(desc, desc["version"])

    def promote(self, name, version) -> None:
        """Point ``name`` at ``version`` (atomic)."""
        self._request("POST", self._ns_path(name, "/promote"), body={"version": version})

    def drop_namespace(self, name, version=None) -> None:
        """Drop ``name``, or one version of it that is not live."""
        self._request("DELETE", self._ns_path(name), params={"version": version},
                      idempotent=False)

    def namespace(self, name, version=None, *, embedding=None) -> "RemoteNamespace":
        """A handle on ``name`` (its live version, or ``version``). ``embedding=fn`` is
        checked against the version's model (ModelMismatch) and dim; the server embeds with
        its own function of that model."""
        desc = self._request("GET", self._ns_path(name), params={"version": version})
        if embedding is not None:
            from simplevector.ops.embeddings import check_function
            from simplevector.ops.sync import check_model
            check_function(embedding)
            check_model(name, desc["model"], embedding.model)
            if embedding.dim != desc["dim"]:
                raise InvalidInput(f"embedding function dim {embedding.dim} is not the dim "
                                   f"{desc['dim']} of namespace {name!r}")
        return self._handle(desc, version)

    def list_namespaces(self) -> list:
        """Every namespace as a NamespaceInfo with its VersionInfo list."""
        data = self._request("GET", "/v1/namespaces")
        return [NamespaceInfo(name=n["name"], live_version=n["live_version"],
                              versions=[VersionInfo(**v) for v in n["versions"]])
                for n in data["namespaces"]]

    # -- the log, health, metrics ----------------------------------------------------------------
    @property
    def lsn(self) -> int:
        """The server database's last committed LSN."""
        return self._request("GET", "/v1/lsn")["lsn"]

    def changes(self, since: int = 0, consumer: str | None = None):
        """Iterate committed changes with LSN > ``since`` (Change objects). ``consumer=
        "name"``: a named consumer acknowledges everything up to ``since``; the server
        records its position durably and keeps the WAL after it (a writer key's right)."""
        if consumer is None:
            data = self._request("GET", "/v1/changes", params={"since": since})
        else:
            data = self._request("POST", self._consumer_path(consumer, "/changes"),
                                 body={"since": since})
        return iter([Change(lsn=c["lsn"], op=c["op"], namespace=c["namespace"],
                            version=c["version"], ids=tuple(c["ids"]), ts=c["ts"])
                     for c in data["changes"]])

    @staticmethod
    def _consumer_path(name, tail: str = "") -> str:
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"consumer {name!r} is not valid; expected a non-empty "
                               "printable string of at most 200 characters")
        if "/" in name:
            raise InvalidInput(f"consumer {name!r} cannot be addressed over HTTP; expected a "
                               "name without '/'")
        return f"/v1/consumers/{quote(name, safe='')}{tail}"

    def consumers(self) -> list:
        """The named change-feed consumers: ``name``, ``lsn``, ``at``, ``lag`` (dicts)."""
        return self._request("GET", "/v1/consumers")["consumers"]

    def drop_consumer(self, name: str) -> None:
        """Forget the named consumer: its position no longer holds the WAL (admin key)."""
        self._request("DELETE", self._consumer_path(name), idempotent=False)

    def wal_retention(self) -> dict:
        """WAL bytes and why they are kept (the server's ``db.wal_retention()``)."""
        return self._request("GET", "/v1/wal/retention")

    # -- snapshots (paths are on the server's machine, under its snapshot directory) ------------
    def snapshot(self, path=None):
        """An online snapshot of the server's database (admin key): ``path`` None (the
        default name), a bare name, or a path directly under the server's
        ``<db>/snapshots``; the server refuses any other path with InvalidInput."""
        return _snapshot_info(self._request("POST", "/v1/snapshots", body={
            "path": None if path is None else str(path)}))

    def snapshots(self) -> list:
        """The complete snapshots in the server's ``<db>/snapshots``, oldest first."""
        return [_snapshot_info(d) for d in self._request("GET", "/v1/snapshots")["snapshots"]]

    def prune_snapshots(self, keep: int) -> list:
        """Remove the snapshots older than the newest ``keep``; their SnapshotInfo."""
        data = self._request("POST", "/v1/snapshots/prune", body={"keep": keep})
        return [_snapshot_info(d) for d in data["removed"]]

    def verify_snapshot(self, path):
        """Check a snapshot (a name or a path under the server's snapshot directory)
        against its manifest; its SnapshotInfo, or CorruptionError naming the bad file."""
        return _snapshot_info(self._request("POST", "/v1/snapshots/verify", body={
            "path": str(path)}, idempotent=True))

    # -- alerts, events, recall probes ----------------------------------------------------
    def alerts(self) -> list:
        """Evaluate the server's alert rules now: a list of ``Alert`` (as ``db.alerts()``)."""
        from simplevector.ops.alerts import Alert
        return [Alert(**a) for a in self._request("GET", "/v1/alerts")["alerts"]]

    def alert_events(self, since=None) -> list:
        """The server's recorded alert and lifecycle events, oldest first."""
        return self._request("GET", "/v1/events",
                             params={"since": since} if since is not None else None)["events"]

    def probe_recall(self, namespace, samples: int = 200, k: int = 10, *, where=None):
        """Recall@k of the live index of ``namespace`` against exact search, measured on
        the server: a ``ProbeResult`` (as ``db.probe_recall``)."""
        from simplevector.ops.probe import ProbeResult
        body = {"samples": samples, "k": k}
        if where is not None:
            body["where"] = where
        return ProbeResult.from_dict(self._request(
            "POST", self._ns_path(namespace, "/probe"), body=body, idempotent=True))

    # -- compaction ------------------------------------------------------------------------
    def compact(self, namespace=None, version=None):
        """Rewrite versions without their tombstones on the server (admin key): every
        version, ``namespace``'s live one, or ``(namespace, version)``; a CompactReport."""
        from simplevector.engine.compact import CompactedVersion, CompactReport
        d = self._request("POST", "/v1/compact", body={"namespace": namespace,
                                                       "version": version})
        return CompactReport(versions=tuple(CompactedVersion(**v) for v in d["versions"]),
                             bytes_before=d["bytes_before"], bytes_after=d["bytes_after"],
                             seconds=d["seconds"], automatic=d["automatic"])

    def compaction_status(self) -> dict:
        """The server's compaction policy, its run count and its last run or error."""
        return self._request("GET", "/v1/compaction")

    # -- costs, budgets, rate limits, freshness, migrations -----------------------------------
    def cost(self, window=None):
        """The server's CostReport over ``window`` (None: the whole ledger; "1h", "1d")."""
        from simplevector.ops.costs import CostLine, CostReport
        d = self._request("GET", "/v1/cost", params={
            "window": None if window is None else str(window)})
        return CostReport(**{**d, "lines": [CostLine(**ln) for ln in d["lines"]]})

    def budgets(self) -> list:
        """Every budget with its use in the current period (dicts)."""
        return self._request("GET", "/v1/budgets")["budgets"]

    def set_budget(self, namespace=None, model=None, max_tokens=None, max_cost=None,
                   period="day", hard=True, *, remove: bool = False):
        """Set (or ``remove``) a budget on the server (admin key); the Budget."""
        from simplevector.ops.costs import Budget
        d = self._request("POST", "/v1/budgets", body={
            "namespace": namespace, "model": model, "max_tokens": max_tokens,
            "max_cost": max_cost, "period": period, "hard": hard, "remove": remove})
        return Budget(**{k: d[k] for k in ("namespace", "model", "max_tokens", "max_cost",
                                           "period", "hard")})

    def rate_limits(self) -> list:
        """The server's configured rate limits (RateLimit objects)."""
        from simplevector.ops.ratelimit import RateLimit
        return [RateLimit(**d) for d in self._request("GET", "/v1/rate_limits")["rate_limits"]]

    def set_rate_limit(self, namespace, op, per_second, burst=None, *, wait: bool = False):
        """A token bucket for ``op`` on ``namespace`` (admin key); None removes it."""
        from simplevector.ops.ratelimit import RateLimit
        d = self._request("POST", "/v1/rate_limits", body={
            "namespace": namespace, "op": op, "per_second": per_second, "burst": burst,
            "wait": wait})["rate_limit"]
        return None if d is None else RateLimit(**d)

    def freshness(self, namespace=None, max_age=None) -> list:
        """A FreshnessReport per live namespace of the server's database."""
        from simplevector.ops.freshness import FreshnessReport
        rows = self._request("GET", "/v1/freshness", params={
            "namespace": namespace, "max_age": max_age})["freshness"]
        return [FreshnessReport(**{k: v for k, v in r.items() if k != "stale_age_ratio"})
                for r in rows]

    def migrations(self, namespace=None) -> list:
        """Every migration recorded in the server's database (RemoteMigration objects)."""
        rows = self._request("GET", "/v1/migrations",
                             params={"namespace": namespace})["migrations"]
        return [RemoteMigration(self, r) for r in rows]

    def migration(self, name):
        """The migration in progress of ``name`` (MigrationError if there is none)."""
        return RemoteMigration(self, self._request("GET", self._ns_path(name, "/migration")))

    def migrate(self, name, *, embedding, index=None):
        """Start migrating ``name`` to ``embedding``'s model (an embedding function, or its
        model string): the server runs its own function of that model (``serve
        --embedding``; InvalidInput when it has none). Re-attaches to the migration in
        progress for the same model. Returns a RemoteMigration."""
        model = embedding if isinstance(embedding, str) else getattr(embedding, "model", None)
        if not isinstance(model, str):
            raise InvalidInput(f"embedding {embedding!r} is not valid; expected an embedding "
                               "function or its model string")
        return RemoteMigration(self, self._request(
            "POST", self._ns_path(name, "/migration"), body={"model": model, "index": index}))

    def health(self):
        """The server database's HealthReport (the same class as ``db.health()``)."""
        from simplevector.ops.health import Finding, HealthReport
        msg = self._request("GET", "/v1/health")
        return HealthReport(status=msg["status"],
                            findings=[Finding(**f) for f in msg.get("findings", ())],
                            stats=msg.get("stats", {}), at=msg.get("at", 0.0))

    def verify(self, deep: bool = False):
        """The server database's ``verify(deep)``: a VerifyReport (engine/integrity.py)."""
        from simplevector.engine.integrity import VerifyReport
        return VerifyReport.from_dict(self._request("POST", "/v1/verify",
                                                    body={"deep": deep}))

    def repair(self, *, rows_from_wal: bool = False):
        """The server database's ``repair()``: a RepairReport (engine/repair.py)."""
        from simplevector.engine.repair import RepairReport
        return RepairReport.from_dict(self._request("POST", "/v1/repair",
                                                    body={"rows_from_wal": rows_from_wal}))

    def latency(self, namespace=None, op=None, window=None) -> list:
        """LatencySummary rows (the server's ``db.latency(...)``); ``window`` in seconds."""
        from simplevector.ops.database import LatencySummary
        rows = self._request("GET", "/v1/latency", params={
            "namespace": namespace, "op": op, "window": window})["latency"]
        return [LatencySummary(**r) for r in rows]

    @property
    def keys(self) -> "RemoteKeys":
        """The server's API keys (admin key needed): ``create``, ``list``, ``revoke``, the
        methods of ``db.keys`` (:class:`simplevector.ops.keys.KeyStore`)."""
        return RemoteKeys(self)

    def metrics_text(self) -> str:
        """The Prometheus text of the server (database metrics plus HTTP request metrics)."""
        return self._request("GET", "/metrics")

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the connection pool (idempotent). The server keeps running."""
        if not self._closed:
            self._closed = True
            self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<simplevector.Client {self.url}{' closed' if self._closed else ''}>"


def _api_key(d: dict):
    from simplevector.ops.keys import ApiKey
    ns = d.get("namespaces")
    return ApiKey(id=d["id"], role=d["role"], namespaces=None if ns is None else tuple(ns),
                  created=d["created"], expires=d.get("expires"), revoked=d.get("revoked"),
                  name=d.get("name"))


def _snapshot_info(d: dict):
    from simplevector.engine.snapshot import SnapshotInfo
    return SnapshotInfo(path=d["path"], lsn=d["lsn"], created_at=d["created_at"],
                        bytes=d["bytes"], namespaces=tuple(d["namespaces"]),
                        manifest_path=d["manifest_path"])


class RemoteMigration:
    """A migration on the server (``client.migration(name)``, ``client.migrations()``):
    ``namespace``, ``state``, ``from_version``, ``to_version``, ``active``, ``key`` and the
    methods of :class:`simplevector.ops.migration.Migration`: ``status()``, ``plan()``,
    ``run(batch_size=, max_batches=)``, ``shadow(k, samples, seed=)``, ``promote(force=)``,
    ``rollback()``, ``abort(drop=)``, ``finish(drop_old=)`` (admin key for all but
    ``status``). ``run`` and ``shadow`` call the server's embedding functions (``serve
    --embedding``); no progress callback travels over HTTP."""

    def __init__(self, client: Client, status: dict):
        self._client = client
        self._status = status

    namespace = property(lambda self: self._status["namespace"])
    state = property(lambda self: self._status["state"])
    from_version = property(lambda self: self._status["from_version"])
    to_version = property(lambda self: self._status["to_version"])
    active = property(lambda self: self._status["dual_write"])

    @property
    def key(self) -> str:
        return f"migration:{self.namespace}:{self._status['seq']:06d}"

    def __repr__(self):
        s = self._status
        return (f"<RemoteMigration {self.namespace} v{self.from_version}->v{self.to_version} "
                f"{s['from_model']}->{s['to_model']} {self.state}>")

    def _post(self, action: str, body=None) -> dict:
        self._status = self._client._request(
            "POST", self._client._ns_path(self.namespace, f"/migration/{action}"),
            body=body or {})
        return self._status

    def status(self) -> dict:
        """State, versions, models, cursor, counters, what is left, the latest shadow."""
        for row in self._client._request("GET", "/v1/migrations",
                                         params={"namespace": self.namespace})["migrations"]:
            if row["seq"] == self._status["seq"]:
                self._status = row
        return dict(self._status)

    def plan(self) -> dict:
        """Rows, migratable rows and distinct texts (tokens and cost need the function)."""
        return self._client._request(
            "POST", self._client._ns_path(self.namespace, "/migration/plan"), body={})

    def run(self, *, batch_size: int = 256, max_batches: int | None = None) -> dict:
        """Back-fill (resumable) then verify, on the server; returns status()."""
        return dict(self._post("run", {"batch_size": batch_size, "max_batches": max_batches}))

    def shadow(self, k: int = 10, samples: int = 200, *, seed: int = 0):
        """Shadow queries against both versions (a ShadowReport)."""
        from simplevector.ops.migration import ShadowReport
        d = self._client._request(
            "POST", self._client._ns_path(self.namespace, "/migration/shadow"),
            body={"k": k, "samples": samples, "seed": seed})
        return ShadowReport(**d)

    def promote(self, *, force: bool = False) -> dict:
        return dict(self._post("promote", {"force": force}))

    def rollback(self) -> dict:
        return dict(self._post("rollback"))

    def abort(self, *, drop: bool = True) -> dict:
        return dict(self._post("abort", {"drop": drop}))

    def finish(self, *, drop_old: bool = False) -> dict:
        return dict(self._post("finish", {"drop_old": drop_old}))


class RemoteKeys:
    """``client.keys``: the server's KeyStore over ``/v1/keys`` (an admin key's right)."""

    def __init__(self, client: Client):
        self._client = client

    def create(self, role: str, *, namespaces=None, expires=None, name=None):
        """``(key text, ApiKey)``; the text is shown only in this answer."""
        body = {"role": role}
        for field, value in (("namespaces", namespaces), ("expires", expires), ("name", name)):
            if value is not None:
                body[field] = list(value) if field == "namespaces" and not isinstance(
                    value, str) else value
        d = self._client._request("POST", "/v1/keys", body=body)
        return d["key"], _api_key(d)

    def list(self) -> list:
        return [_api_key(d) for d in self._client._request("GET", "/v1/keys")["keys"]]

    def revoke(self, key_id: str):
        return _api_key(self._client._request(
            "DELETE", f"/v1/keys/{quote(str(key_id), safe='')}", idempotent=False))


class RemoteNamespace:
    """One namespace version on the server; the methods of :class:`simplevector.Namespace`."""

    def __init__(self, client: Client, desc: dict, pinned=None):
        self._client = client
        self.name = desc["name"]
        self._pinned = pinned
        self.version = desc["version"]
        self.dim = desc["dim"]
        self.metric = desc["metric"]
        self.model = desc["model"]
        self.index = desc["index"]
        self.live = desc["live"]

    def __repr__(self):
        return f"<simplevector.RemoteNamespace {self.name!r} v{self.version} dim={self.dim}>"

    def _call(self, method, tail, *, body=None, idempotent=None):
        return self._client._request(method, self._client._ns_path(self.name, tail), body=body,
                                     params={"version": self._pinned}, idempotent=idempotent)

    def upsert(self, ids, vectors, metadata=None, documents=None) -> int:
        """Insert or replace rows; returns the LSN of the write. All-or-nothing."""
        return self._call("POST", "/upsert", body={
            "ids": _ids(ids), "vectors": vectors, "metadata": metadata,
            "documents": documents})["lsn"]

    def delete(self, ids=None, where=None) -> int:
        """Delete rows by ids and/or a where filter; returns how many were deleted."""
        body = {}
        if ids is not None:
            body["ids"] = _ids(ids)
        if where is not None:
            body["where"] = where
        return self._call("POST", "/delete", body=body)["deleted"]

    def count(self) -> int:
        """Rows stored (tombstones not counted)."""
        return self._call("GET", "/count")["count"]

    def get(self, ids, include=("metadata", "documents")):
        """Records for ``ids`` in order (None where missing); one id gives one record."""
        data = self._call("POST", "/get", body={"ids": _ids(ids), "include": include},
                          idempotent=True)
        records = [_record(r) for r in data["records"]]
        return records[0] if data["single"] else records

    def query(self, vectors, k: int = 10, where=None, include=("metadata",), *,
              nprobe: int | None = None, refine: int | None = None, explain: bool = False,
              exact: bool = False):
        """``list[Hit]`` for one vector, ``list[list[Hit]]`` for a matrix; with
        ``explain=True``, ``(hits, Plan)``."""
        body = {"vectors": vectors, "k": k, "include": include, "exact": exact,
                "explain": explain}
        for key, value in (("where", where), ("nprobe", nprobe), ("refine", refine)):
            if value is not None:
                body[key] = value
        data = self._call("POST", "/query", body=body, idempotent=True)
        raw = data["hits"]
        if data["single"]:
            hits = [_hit(h) for h in raw]
        else:
            hits = [[_hit(h) for h in row] for row in raw]
        if explain:
            return hits, Plan(**data["plan"])
        return hits

    def query_text(self, text, k: int = 10, where=None, include=("metadata",), **options):
        """Embed ``text`` (a str, or a list of str) on the server with the namespace's
        model and query: ``list[Hit]`` (``list[list[Hit]]`` for a list). InvalidInput when
        the server has no embedding function of that model."""
        body = {"text": list(text) if isinstance(text, tuple) else text, "k": k,
                "include": include}
        if where is not None:
            body["where"] = where
        body.update({key: v for key, v in options.items() if v is not None})
        data = self._call("POST", "/query_text", body=body, idempotent=True)
        if data["single"]:
            return [_hit(h) for h in data["hits"]]
        return [[_hit(h) for h in row] for row in data["hits"]]

    def sync(self, records, *, mode: str = "incremental", source_key: str | None = None,
             batch_size: int = 256):
        """Bring the namespace in line with ``records`` by content hash, on the server
        (one request: the records must fit its body limit); a SyncReport."""
        from simplevector.ops.sync import SyncReport
        body = {"records": list(records), "mode": mode, "batch_size": batch_size}
        if source_key is not None:
            body["source_key"] = source_key
        return SyncReport(**self._call("POST", "/sync", body=body))

    def build_index(self, spec=None) -> dict:
        """Train (or re-train with a new spec) now; returns index_info()."""
        return self._call("POST", "/index", body={"spec": spec})

    def index_info(self) -> dict:
        """The spec, training time, list sizes and code size of the live index."""
        return self._call("GET", "/index")

    def compact(self):
        """Rewrite this version without its tombstones (``client.compact``)."""
        return self._client.compact(self.name, self._pinned)
