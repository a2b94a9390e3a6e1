"""API keys: roles, namespace scopes, expiry and revocation, stored hashed in the database.

A key looks like ``svk_<id>_<secret>``: ``id`` (12 hex digits) names the key in lists,
audit entries and ``keys revoke``; ``secret`` (43 url-safe characters, 256 random bits) is
shown once, by :meth:`KeyStore.create`, and never stored: the database keeps its SHA-256
(a fast hash is enough for a random 256-bit secret; a slow password hash protects low-
entropy passwords, which these are not). :meth:`KeyStore.authenticate` compares digests with
:func:`hmac.compare_digest` (constant time).

Keys live in the engine's ``ops_store`` (LMDB sub-database "ops") under ``apikey:<id>``,
written in their own transaction; a revoked key keeps its record (``revoked`` set) so the
audit log's key ids stay resolvable and authentication stays on.

Roles are ordered: ``reader`` (read routes: query, get, count, namespaces, health, ...),
``writer`` (+ upsert, delete, build an index), ``admin`` (+ create/drop namespaces and
versions, promote, keys, snapshots, migrations). A key with ``namespaces`` may touch only
those namespaces; database-wide routes (``changes``, ``lsn``, ``health``, ``latency``,
``/metrics``, keys) need an unscoped key, and ``list_namespaces`` shows only its namespaces.

Rate limits per key (429 with ``Retry-After``) belong to ops/ratelimit.py (another step):
``simplevector.server.create_app(db, rate_limiter=...)`` calls ``rate_limiter.check(principal,
operation_id)`` after authorisation; a :class:`Principal`'s ``key_id`` is the bucket's key.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from simplevector.engine.errors import AuthenticationError, InvalidInput, PermissionDenied

__all__ = ["ROLES", "ACTIONS", "ApiKey", "KeyStore", "Principal", "parse_duration",
           "parse_bearer", "KEY_PREFIX", "ANONYMOUS"]

KEY_PREFIX = "svk_"
STORE_PREFIX = "apikey:"
ROLES = ("reader", "writer", "admin")
#: action class -> the lowest role that may perform it
ACTIONS = {"read": "reader", "write": "writer", "admin": "admin"}
_KEY_RE = re.compile(r"^svk_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text) -> float:
    """Seconds in ``text``: ``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or a number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text <= 0:
            raise InvalidInput(f"duration {text!r} is not valid; expected more than 0 seconds")
        return float(text)
    m = _DURATION_RE.match(str(text))
    if not m or float(m.group(1)) <= 0:
        raise InvalidInput(f"duration {text!r} is not valid; expected a positive number with "
                           f"an optional unit s, m, h, d or w (e.g. 30d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    """One stored key, without its secret. Times are epoch seconds (UTC)."""

    id: str
    role: str
    namespaces: Optional[tuple] = None
    created: float = 0.0
    expires: Optional[float] = None
    revoked: Optional[float] = None
    name: Optional[str] = None
    digest: str = field(default="", repr=False)

    def state(self, now: float | None = None) -> str:
        """``active``, ``expired`` or ``revoked``."""
        now = time.time() if now is None else now
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"

    def to_dict(self) -> dict:
        """The key as shown to people and over the API: never the digest."""
        d = asdict(self)
        d.pop("digest")
        d["namespaces"] = None if self.namespaces is None else list(self.namespaces)
        d["state"] = self.state()
        return d

    def record(self) -> dict:
        """The stored form (with the digest, never the secret)."""
        d = asdict(self)
        d["namespaces"] = None if self.namespaces is None else list(self.namespaces)
        return d


@dataclass(frozen=True)
class Principal:
    """Who a request runs as: a key (``key_id``, ``role``, ``namespaces``) or, when the
    database has no keys at all, the anonymous loopback user with every right."""

    key_id: Optional[str]
    role: str
    namespaces: Optional[tuple] = None

    def allows(self, action: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(ACTIONS[action])

    def check(self, action: str, namespace: str | None = None, *, database_wide=False) -> None:
        """Raise PermissionDenied unless this principal may do ``action`` (read, write,
        admin) on ``namespace`` (None: not namespace-specific)."""
        who = f"key {self.key_id} (role {self.role})"
        if not self.allows(action):
            raise PermissionDenied(
                f"{who} may not {action}: it needs role {ACTIONS[action]} or above")
        if self.namespaces is not None:
            if database_wide:
                raise PermissionDenied(
                    f"{who} is scoped to namespaces {list(self.namespaces)}; this route covers "
                    f"the whole database and needs an unscoped key")
            if namespace is not None and namespace not in self.namespaces:
                raise PermissionDenied(
                    f"{who} is scoped to namespaces {list(self.namespaces)}, not {namespace!r}")

    def sees(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces


#: the principal of every request while the database has no key (server bound to loopback)
ANONYMOUS = Principal(key_id=None, role="admin", namespaces=None)


def parse_bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None when absent."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("the Authorization header is not 'Bearer <key>'")
    return token.strip()


class KeyStore:
    """The API keys of one database (see the module). ``db``: an open Database (its
    ``ops_store``); creating and revoking need it writable."""

    def __init__(self, db):
        self.db = db

    # -- writing -------------------------------------------------------------------------------
    def create(self, role: str, *, namespaces=None, expires=None, name: str | None = None,
               now: float | None = None) -> tuple[str, ApiKey]:
        """A new key: ``(secret key text, ApiKey)``. The text is not kept anywhere.

        role: reader, writer or admin. namespaces: names the key is limited to (None: all).
        expires: a duration (``30d``, seconds) from now, or None (never)."""
        if role not in ROLES:
            raise InvalidInput(f"role {role!r} is not valid; expected one of {list(ROLES)}")
        scope = None
        if namespaces is not None:
            if isinstance(namespaces, str):
                namespaces = [namespaces]
            scope = tuple(str(n) for n in namespaces)
            if not scope or any(not n for n in scope):
                raise InvalidInput(f"namespaces {list(namespaces)!r} is not valid; expected "
                                   f"one or more non-empty names, or None for every namespace")
        now = time.time() if now is None else now
        until = None if expires is None else now + parse_duration(expires)
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        key = ApiKey(id=key_id, role=role, namespaces=scope, created=now, expires=until,
                     name=name, digest=_digest(secret))
        self.db.ops_store.put(STORE_PREFIX + key_id, key.record())
        return f"{KEY_PREFIX}{key_id}_{secret}", key

    def revoke(self, key_id: str, *, now: float | None = None) -> ApiKey:
        """Revoke ``key_id`` (an id, or a name that names one key); idempotent: a revoked
        key keeps its first revocation time."""
        key = self.get(key_id)
        if key.revoked is None:
            rec = key.record()
            rec["revoked"] = time.time() if now is None else now
            self.db.ops_store.put(STORE_PREFIX + key.id, rec)
            key = _from_record(rec)
        return key

    # -- reading -------------------------------------------------------------------------------
    def get(self, key_id: str) -> ApiKey:
        """The key with id ``key_id``, or else the one key whose ``name`` it is."""
        rec = self.db.ops_store.get(STORE_PREFIX + key_id) if isinstance(
            key_id, str) and re.fullmatch(r"[0-9a-f]{12}", key_id) else None
        if rec is not None:
            return _from_record(rec)
        named = [k for k in self.list() if k.name is not None and k.name == key_id]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise InvalidInput(f"key name {key_id!r} names {len(named)} keys "
                               f"({', '.join(k.id for k in named)}); give the id instead")
        raise InvalidInput(f"key {key_id!r} is not known; expected an id or a name that "
                           f"`simplevector keys list` shows")

    def list(self) -> list:
        """Every key (active, expired, revoked), oldest first."""
        keys = [_from_record(v) for _, v in self.db.ops_store.items(STORE_PREFIX)]
        return sorted(keys, key=lambda k: (k.created, k.id))

    def enabled(self) -> bool:
        """Whether any key was ever created: from then on every request needs one."""
        return bool(self.db.ops_store.items(STORE_PREFIX))

    def has_active_admin(self, now: float | None = None) -> bool:
        return any(k.role == "admin" and k.state(now) == "active" for k in self.list())

    def authenticate(self, token: str | None, *, now: float | None = None) -> Principal:
        """The principal of ``token`` (the full key text); AuthenticationError when it is
        missing, malformed, unknown, expired or revoked. The message never holds the token."""
        if token is None:
            raise AuthenticationError("this server requires an API key and the request has "
                                      "none")
        m = _KEY_RE.match(token)
        rec = self.db.ops_store.get(STORE_PREFIX + m.group(1)) if m else None
        # compare even when the id is unknown, so timing does not tell ids apart
        expected = rec["digest"] if rec else _digest("unknown-key-placeholder")
        presented = _digest(m.group(2)) if m else _digest(token)
        if not hmac.compare_digest(expected, presented) or rec is None:
            raise AuthenticationError("the API key is not known to this server")
        key = _from_record(rec)
        state = key.state(now)
        if state != "active":
            raise AuthenticationError(f"API key {key.id} is {state}")
        return Principal(key_id=key.id, role=key.role, namespaces=key.namespaces)


def _from_record(rec: dict) -> ApiKey:
    ns = rec.get("namespaces")
    return ApiKey(id=rec["id"], role=rec["role"], namespaces=None if ns is None else tuple(ns),
                  created=rec.get("created", 0.0), expires=rec.get("expires"),
                  revoked=rec.get("revoked"), name=rec.get("name"),
                  digest=rec.get("digest", ""))
