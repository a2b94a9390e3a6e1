"""API keys and roles: the key store, the auth matrix (every route x every kind of caller),
the audit entry of each denial, the keys CLI, and a real server that requires keys."""

from __future__ import annotations

import json
import os
import time
import warnings

import httpx

import numpy as np
import pytest
from click.testing import CliRunner

import simplevector as sv
from simplevector.cli import main
from simplevector.cli_server import check_bind
from simplevector.ops import audit as audit_mod
from simplevector.ops.keys import ApiKey, KeyStore, parse_duration
from simplevector._security import PERMISSIONS
from simplevector.server import ROUTES, create_app

from _serverproc import ServerProcess

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


# -- the key store ------------------------------------------------------------------------------
@pytest.fixture
def db(tmp_path):
    d = sv.open(tmp_path / "db", checkpoint_interval=0)
    yield d
    d.close()


def test_created_key_authenticates_with_its_role_and_scope(db):
    text, key = db.keys.create("writer", namespaces=["docs"], name="ci")
    assert text.startswith(f"svk_{key.id}_") and len(text) > 50
    p = db.keys.authenticate(text)
    assert (p.key_id, p.role, p.namespaces) == (key.id, "writer", ("docs",))


def test_the_secret_is_not_stored_only_its_sha256(db, tmp_path):
    text, key = db.keys.create("admin")
    secret = text.split("_", 2)[2]
    db.checkpoint()
    raw = b"".join(open(os.path.join(root, f), "rb").read()
                   for root, _, files in os.walk(tmp_path / "db") for f in files)
    assert secret.encode() not in raw and text.encode() not in raw
    import hashlib
    assert hashlib.sha256(secret.encode()).hexdigest().encode() in raw
    assert "digest" not in key.to_dict() and secret not in repr(key)


@pytest.mark.parametrize("token", [None, "", "svk_000000000000_" + "x" * 43, "garbage",
                                   "svk_zz_short"])
def test_missing_or_unknown_key_raises_authentication_error(db, token):
    db.keys.create("reader")
    with pytest.raises(sv.AuthenticationError):
        db.keys.authenticate(token or None)


def test_wrong_secret_for_a_known_id_is_refused(db):
    text, key = db.keys.create("reader")
    with pytest.raises(sv.AuthenticationError):
        db.keys.authenticate(text[:-4] + ("aaaa" if not text.endswith("aaaa") else "bbbb"))


def test_expired_and_revoked_keys_are_refused_and_listed_with_their_state(db):
    old, k_old = db.keys.create("reader", expires="1m", now=time.time() - 3600)
    gone, k_gone = db.keys.create("reader")
    db.keys.revoke(k_gone.id)
    first = db.keys.get(k_gone.id).revoked
    db.keys.revoke(k_gone.id)                           # idempotent
    assert db.keys.get(k_gone.id).revoked == first
    for text in (old, gone):
        with pytest.raises(sv.AuthenticationError, match="expired|revoked"):
            db.keys.authenticate(text)
    states = {k.id: k.state() for k in db.keys.list()}
    assert states == {k_old.id: "expired", k_gone.id: "revoked"}


@pytest.mark.parametrize("bad", [dict(role="root"), dict(role="reader", namespaces=[]),
                                 dict(role="reader", namespaces=[""]),
                                 dict(role="reader", expires="soon"),
                                 dict(role="reader", expires="-3d"),
                                 dict(role="reader", expires=0)])
def test_invalid_key_options_raise_invalid_input_and_store_nothing(db, bad):
    with pytest.raises(sv.InvalidInput):
        db.keys.create(**bad)
    assert db.keys.list() == []


def test_revoking_an_unknown_id_is_invalid_input(db):
    with pytest.raises(sv.InvalidInput, match="not known"):
        db.keys.revoke("0123456789ab")


def test_revoke_by_a_unique_name_and_not_by_an_ambiguous_one(db):
    _, one = db.keys.create("reader", name="ingest")
    assert db.keys.revoke("ingest").id == one.id and db.keys.get(one.id).state() == "revoked"
    db.keys.create("reader", name="twice")
    db.keys.create("reader", name="twice")
    with pytest.raises(sv.InvalidInput, match="names 2 keys"):
        db.keys.revoke("twice")


@pytest.mark.parametrize("text,seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400),
                                          ("45s", 45), ("2w", 14 * 86400), ("10", 10)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_keys_work_on_a_readonly_open_and_writes_need_a_writer(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0) as w:
        text, _ = w.keys.create("reader")
    with sv.open(path, readonly=True, checkpoint_interval=0) as r:
        assert r.keys.authenticate(text).role == "reader"
        with pytest.raises(sv.ReadOnlyError):
            r.keys.create("admin")


# -- the auth matrix ----------------------------------------------------------------------------
def _request_for(op_id: str, revoke_id: str, db=None):
    """(method, path, json body) of a valid request of each route, on namespace 'a' (the
    migration and text routes: 'm')."""
    migrating = db.active_migration("m") if db is not None else None
    ns = "/v1/namespaces/a"
    mig = "/v1/namespaces/m"            # the migration routes: a namespace no route drops
    vec = [1.0, 0.0, 0.0]
    return {
        "metrics": ("GET", "/metrics", None),
        "health": ("GET", "/v1/health", None),
        "latency": ("GET", "/v1/latency", None),
        "verify": ("POST", "/v1/verify", {"deep": False}),
        "repair": ("POST", "/v1/repair", {}),
        "lsn": ("GET", "/v1/lsn", None),
        "changes": ("GET", "/v1/changes", None),
        "list_namespaces": ("GET", "/v1/namespaces", None),
        "create_namespace": ("POST", "/v1/namespaces", {"name": "a", "dim": 3}),
        "get_namespace": ("GET", ns, None),
        "drop_namespace": ("DELETE", ns + "?version=2", None),
        "create_version": ("POST", ns + "/versions", {}),
        "promote": ("POST", ns + "/promote", {"version": 1}),
        "upsert": ("POST", ns + "/upsert", {"ids": [9], "vectors": [vec]}),
        "get": ("POST", ns + "/get", {"ids": [1]}),
        "delete": ("POST", ns + "/delete", {"ids": [1]}),
        "count": ("GET", ns + "/count", None),
        "query": ("POST", ns + "/query", {"vectors": vec, "k": 1}),
        "build_index": ("POST", ns + "/index", {"spec": "flat"}),
        "index_info": ("GET", ns + "/index", None),
        "list_keys": ("GET", "/v1/keys", None),
        "create_key": ("POST", "/v1/keys", {"role": "reader"}),
        "revoke_key": ("DELETE", f"/v1/keys/{revoke_id}", None),
        "list_snapshots": ("GET", "/v1/snapshots", None),
        "create_snapshot": ("POST", "/v1/snapshots", {}),
        "prune_snapshots": ("POST", "/v1/snapshots/prune", {"keep": 10}),
        "verify_snapshot": ("POST", "/v1/snapshots/verify", {"path": "matrix"}),
        "alerts": ("GET", "/v1/alerts", None),
        "events": ("GET", "/v1/events", None),
        "probe": ("POST", ns + "/probe", {"samples": 5, "k": 1}),
        "compact": ("POST", "/v1/compact", {"namespace": "a"}),
        "compaction_status": ("GET", "/v1/compaction", None),
        "wal_retention": ("GET", "/v1/wal/retention", None),
        "consumers": ("GET", "/v1/consumers", None),
        "consumer_changes": ("POST", "/v1/consumers/feed/changes", {"since": 0}),
        "drop_consumer": ("DELETE", "/v1/consumers/feed", None),
        "cost": ("GET", "/v1/cost", None),
        "budgets": ("GET", "/v1/budgets", None),
        "set_budget": ("POST", "/v1/budgets", {"namespace": "a", "max_tokens": 100}),
        "rate_limits": ("GET", "/v1/rate_limits", None),
        "set_rate_limit": ("POST", "/v1/rate_limits",
                           {"namespace": "a", "op": "embed", "per_second": 0}),
        "freshness": ("GET", "/v1/freshness", None),
        "migrations": ("GET", "/v1/migrations", None),
        "query_text": ("POST", mig + "/query_text", {"text": "one", "k": 1}),
        "sync": ("POST", mig + "/sync", {"records": [{"id": 1, "text": "one"}]}),
        "migration_start": ("POST", mig + "/migration", {
            "model": migrating.doc["to_model"] if migrating else "m@2.0.0"}),
        "migration_run": ("POST", mig + "/migration/run", {}),
        "migration_shadow": ("POST", mig + "/migration/shadow", {"k": 1, "samples": 2}),
        "migration_status": ("GET", mig + "/migration", None),
        "migration_plan": ("POST", mig + "/migration/plan", {}),
        "migration_promote": ("POST", mig + "/migration/promote", {}),
        "migration_rollback": ("POST", mig + "/migration/rollback", {}),
        "migration_abort": ("POST", mig + "/migration/abort", {}),
        "migration_finish": ("POST", mig + "/migration/finish", {}),
    }[op_id]


def _fn(model):
    return sv.embeddings.Callable(
        lambda texts: np.array([[len(t), 1.0, 2.0] for t in texts], dtype=np.float32),
        model=model, dim=3)


#: the migration state each migration route needs to succeed
MIGRATION_NEEDS = {"migration_status": None, "migration_plan": None, "migration_start": None,
                   "migration_run": "ready", "migration_shadow": None,
                   "migration_promote": "ready", "migration_rollback": "promoted",
                   "migration_abort": "ready", "migration_finish": "promoted"}


def _prepare(db, op_id: str) -> None:
    """Put the matrix database in the state in which ``op_id`` succeeds: namespace 'a' as
    made, a consumer 'feed' for drop_consumer, a migration of 'm' in the right state."""
    if "a" not in [i.name for i in db.list_namespaces()]:
        db.create_namespace("a", dim=3, metric="l2").upsert(
            [1, 2], np.eye(3, dtype=np.float32)[:2])
    if op_id == "drop_consumer":
        list(db.changes(db.lsn, consumer="feed"))
    if op_id not in MIGRATION_NEEDS:
        return
    m = db.active_migration("m")
    if m is None:
        live = db.namespace("m").model
        m = db.migrate("m", embedding=_fn("m@2.0.0" if live == "m@1.0.0" else "m@1.0.0"))
    want = MIGRATION_NEEDS[op_id]
    if want == "ready" and m.state == "promoted":
        m.rollback()
    if m.state != "promoted":
        db.migrate("m", embedding=_fn(m.doc["to_model"])).run()
    if want == "promoted" and m.state != "promoted":
        m.promote()


CALLERS = ["none", "wrong", "expired", "revoked", "reader", "writer", "admin", "other_ns"]
GUARDED = [op for _, _, _, op in ROUTES if PERMISSIONS[op][0] is not None]


def _expected(caller: str, op_id: str) -> str:
    action, scope = PERMISSIONS[op_id]
    if caller in ("none", "wrong", "expired", "revoked"):
        return "401"
    if caller == "other_ns":        # a writer scoped to namespace "b", asking about "a"
        return "ok" if scope == "filtered" else "403"
    rank = {"reader": 0, "writer": 1, "admin": 2}[caller]
    need = {"read": 0, "write": 1, "admin": 2}[action]
    return "ok" if rank >= need else "403"


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix")
    db = sv.open(tmp / "db", checkpoint_interval=0)
    db.create_namespace("a", dim=3, metric="l2").upsert([1, 2], np.eye(3, dtype=np.float32)[:2])
    db.create_namespace("b", dim=3, metric="l2")
    db.create_namespace("m", dim=3, metric="l2", model="m@1.0.0").upsert(
        [1, 2], np.eye(3, dtype=np.float32)[:2], documents=["one", "two"])
    db.snapshot(os.path.join(db.path, "snapshots", "matrix"))
    keys = {}
    for role in ("reader", "writer", "admin"):
        keys[role] = db.keys.create(role)[0]
    keys["other_ns"] = db.keys.create("writer", namespaces=["b"])[0]
    keys["expired"] = db.keys.create("admin", expires=1, now=time.time() - 60)[0]
    revoked_text, revoked = db.keys.create("admin")
    db.keys.revoke(revoked.id)
    keys["revoked"] = revoked_text
    keys["wrong"] = keys["admin"][:-6] + "AAAAAA"
    log = audit_mod.AuditLog(tmp / "audit", sync=False)
    app = create_app(db, audit=log, embeddings=[_fn("m@1.0.0"), _fn("m@2.0.0")])
    with TestClient(app, raise_server_exceptions=False) as http:
        yield db, http, keys, tmp / "audit"
    log.close()
    db.close()


@pytest.mark.parametrize("op_id", GUARDED)
@pytest.mark.parametrize("caller", CALLERS)
def test_auth_matrix(matrix, caller, op_id):
    db, http, keys, audit_dir = matrix
    _prepare(db, op_id)
    if _expected(caller, op_id) == "ok":
        if op_id == "create_namespace":
            db.drop_namespace("a")
        if op_id == "drop_namespace" and 2 not in [v.version for v in db.list_namespaces()[0]
                                                   .versions]:
            db.create_version("a")
    victim = db.keys.create("reader")[1].id
    method, path, body = _request_for(op_id, victim, db)
    headers = {} if caller == "none" else {"Authorization": f"Bearer {keys[caller]}"}
    r = http.request(method, path, json=body, headers=headers)
    want = _expected(caller, op_id)
    if want == "ok":
        assert r.status_code < 400, (caller, op_id, r.text)
        return
    assert r.status_code == int(want), (caller, op_id, r.text)
    code = r.json()["error"]["code"]
    assert code == ("unauthenticated" if want == "401" else "permission_denied")
    if want == "401":
        assert r.headers["www-authenticate"] == "Bearer"
    entries = audit_mod.query(audit_dir, action=op_id, outcome="denied")
    mine = [e for e in entries if e["request_id"] == r.headers["x-request-id"]]
    assert len(mine) == 1, (caller, op_id)
    entry = mine[0]
    assert entry["status"] == int(want) and entry["remote"]
    assert keys.get(caller, "") == "" or keys[caller] not in json.dumps(entry)
    if caller in ("reader", "writer", "admin", "other_ns"):
        assert entry["key_id"] == keys[caller].split("_")[1] and entry["role"]


def test_open_routes_need_no_key_once_keys_exist(matrix):
    _, http, _, _ = matrix
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert http.get(path).status_code == 200


def test_a_scoped_key_lists_only_its_namespaces(matrix):
    _, http, keys, _ = matrix
    r = http.get("/v1/namespaces", headers={"Authorization": f"Bearer {keys['other_ns']}"})
    assert [n["name"] for n in r.json()["namespaces"]] == ["b"]


def test_a_scoped_writer_writes_its_namespace(matrix):
    db, http, keys, _ = matrix
    r = http.post("/v1/namespaces/b/upsert", json={"ids": ["x"], "vectors": [[0, 0, 1]]},
                  headers={"Authorization": f"Bearer {keys['other_ns']}"})
    assert r.status_code == 200 and db.namespace("b").get("x") is not None


def test_auth_failures_are_counted_in_metrics(matrix):
    _, http, keys, _ = matrix
    http.get("/v1/lsn")
    text = http.get("/metrics", headers={"Authorization": f"Bearer {keys['admin']}"}).text
    assert 'simplevector_http_auth_failures_total{code="unauthenticated"}' in text
    assert "simplevector_http_requests_in_flight" in text


def test_malformed_authorization_header_is_401(matrix):
    _, http, _, _ = matrix
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "token"):
        r = http.get("/v1/lsn", headers={"Authorization": header})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


def test_without_keys_every_route_is_open(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as d:
        with TestClient(create_app(d)) as http:
            assert http.get("/v1/lsn").status_code == 200
            assert http.post("/v1/namespaces", json={"name": "n", "dim": 2}).status_code == 201


def test_once_a_key_exists_auth_stays_on_even_after_it_is_revoked(tmp_path):
    with sv.open(tmp_path / "db", checkpoint_interval=0) as d:
        _, key = d.keys.create("admin")
        d.keys.revoke(key.id)
        with TestClient(create_app(d)) as http:
            assert http.get("/v1/lsn").status_code == 401


# -- binding ------------------------------------------------------------------------------------
def test_check_bind_allows_loopback_always_and_others_only_with_an_admin_key():
    check_bind("127.0.0.1", False, False)
    check_bind("0.0.0.0", False, True)
    check_bind("0.0.0.0", True, False)
    with pytest.raises(sv.InvalidInput, match="admin"):
        check_bind("0.0.0.0", False, False)


def test_serve_refuses_a_non_loopback_host_with_only_a_reader_key(tmp_path):
    path = str(tmp_path / "db")
    with sv.open(path, checkpoint_interval=0) as d:
        d.keys.create("reader")
    result = CliRunner().invoke(main, ["serve", "--db", path, "--host", "0.0.0.0"])
    assert result.exit_code == 1 and "admin" in result.output


# -- the keys CLI -------------------------------------------------------------------------------
def test_keys_cli_create_list_revoke(tmp_path):
    path = str(tmp_path / "db")
    runner = CliRunner()
    r = runner.invoke(main, ["keys", "create", "--db", path, "--role", "writer",
                             "--namespace", "docs", "--namespace", "faq", "--expires", "30d",
                             "--json"])
    assert r.exit_code == 0, r.output
    made = json.loads(r.stdout)
    assert set(made) == {"key", "id", "role"} and made["role"] == "writer"
    listed = runner.invoke(main, ["keys", "list", "--db", path, "--json"])
    rows = json.loads(listed.output)
    assert [(k["id"], k["state"], k["namespaces"]) for k in rows] == [
        (made["id"], "active", ["docs", "faq"])]
    assert made["key"] not in listed.output and "digest" not in listed.output
    r = runner.invoke(main, ["keys", "revoke", made["id"], "--db", path, "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["state"] == "revoked"
    r = runner.invoke(main, ["keys", "revoke", "nope", "--db", path])
    assert r.exit_code == 1 and r.output.startswith("error: ")
    actions = [e["action"] for e in audit_mod.read_entries(os.path.join(path, "audit"))]
    assert actions == ["create_key", "revoke_key"]
    assert audit_mod.verify(os.path.join(path, "audit")).ok


def test_keys_cli_plain_output_prints_the_key_alone_on_stdout(tmp_path):
    r = CliRunner().invoke(main, ["keys", "create", "--db", str(tmp_path / "db"),
                                  "--role", "reader"])
    assert r.exit_code == 0
    assert r.stdout.count("\n") == 1 and r.stdout.startswith("svk_")
    assert "not shown again" in r.stderr


# -- a real server ------------------------------------------------------------------------------
def test_real_server_with_keys_rebuilds_401_and_403_and_manages_keys(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0) as d:
        admin, _ = d.keys.create("admin")
    server = ServerProcess(path)
    try:
        with sv.connect(server.url) as anon:
            with pytest.raises(sv.AuthenticationError):
                anon.list_namespaces()
        with sv.connect(server.url, api_key=admin) as c:
            c.create_namespace("docs", dim=2, metric="l2")
            text, key = c.keys.create("reader", namespaces=["docs"])
            assert isinstance(key, ApiKey) and key.role == "reader"
            assert [k.id for k in c.keys.list()][-1] == key.id
        with sv.connect(server.url, api_key=text) as reader:
            assert reader.namespace("docs").count() == 0
            with pytest.raises(sv.PermissionDenied):
                reader.namespace("docs").upsert([1], [[0.0, 1.0]])
        with sv.connect(server.url, api_key=admin) as c:
            assert c.keys.revoke(key.id).revoked is not None
        with sv.connect(server.url, api_key=text) as reader:
            with pytest.raises(sv.AuthenticationError, match="revoked"):
                reader.list_namespaces()
    finally:
        assert server.stop() == 0, server.log()
    result = audit_mod.verify(path / "audit")
    assert result.ok and result.entries >= 6
    denied = audit_mod.query(path / "audit", outcome="denied")
    assert [e["action"] for e in denied] == ["list_namespaces", "upsert", "list_namespaces"]
    assert all(admin not in json.dumps(e) and text not in json.dumps(e)
               for e in audit_mod.read_entries(path / "audit"))
    with KeyStoreOpen(path) as store:
        assert store.get(key.id).state() == "revoked"


class KeyStoreOpen:
    def __init__(self, path):
        self.db = sv.open(path, readonly=True, checkpoint_interval=0)

    def __enter__(self):
        return KeyStore(self.db)

    def __exit__(self, *exc):
        self.db.close()


def test_the_rate_limit_hook_sees_each_authorised_request_and_its_error_is_answered(tmp_path):
    seen = []

    class Limiter:                      # the interface ops/ratelimit.py plugs into
        def check(self, principal, operation_id):
            seen.append((principal.key_id, operation_id))
            if len(seen) > 2:
                raise sv.LimitExceeded("over the rate", limit="requests", maximum=2,
                                       actual=len(seen))
    with sv.open(tmp_path / "db", checkpoint_interval=0) as d:
        text, key = d.keys.create("reader")
        with TestClient(create_app(d, rate_limiter=Limiter())) as http:
            auth = {"Authorization": f"Bearer {text}"}
            assert http.get("/healthz").status_code == 200           # open: not limited
            assert http.get("/v1/lsn", headers=auth).status_code == 200
            assert http.get("/v1/namespaces", headers=auth).status_code == 200
            r = http.get("/v1/lsn", headers=auth)
            assert r.status_code == sv.LimitExceeded.http_status
            assert http.get("/v1/lsn").status_code == 401             # refused before the hook
    assert seen == [(key.id, "lsn"), (key.id, "list_namespaces"), (key.id, "lsn")]


def test_key_rate_limiter_admits_the_rate_per_key_with_an_injected_clock():
    from simplevector.ops.keys import Principal
    from simplevector.ops.ratelimit import KeyRateLimiter
    now = [0.0]
    limiter = KeyRateLimiter(8, burst=5, clock=lambda: now[0])     # 1/8 s: exact in floats
    a, b = Principal("ka", "reader"), Principal("kb", "reader")
    for _ in range(5):
        limiter.check(a, "query")
    with pytest.raises(sv.RateLimited, match="ka") as info:
        limiter.check(a, "query")
    assert info.value.retry_after == pytest.approx(0.125)
    limiter.check(b, "query")                     # each key has its own bucket
    limiter.check(Principal(None, "admin"), "query")   # the keyless loopback user: no limit
    now[0] += 0.125
    limiter.check(a, "query")                     # one token back after 1/8 s
    admitted = 0
    for step in range(100):                       # 12.5 s at 8/s: 100 (+ at most the burst)
        now[0] += 0.125
        for _ in range(3):
            try:
                limiter.check(a, "query")
                admitted += 1
            except sv.RateLimited:
                pass
    assert 100 <= admitted <= 105
    with pytest.raises(sv.InvalidInput):
        KeyRateLimiter(0)


def test_real_server_with_key_rate_answers_429_with_retry_after(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0) as d:
        admin, _ = d.keys.create("admin")
        d.create_namespace("docs", dim=2, metric="l2")
    # one request per 5 s after a burst of 2: the third and fourth come well inside that
    server = ServerProcess(path, "--key-rate", "0.2", "--key-burst", "2")
    try:
        auth = {"Authorization": f"Bearer {admin}"}
        responses = [httpx.get(f"{server.url}/v1/namespaces", headers=auth) for _ in range(4)]
        assert [r.status_code for r in responses] == [200, 200, 429, 429]
        limited = responses[2]
        assert 1 <= int(limited.headers["Retry-After"]) <= 5
        assert limited.json()["error"]["code"] == "rate_limited"
        with sv.connect(server.url, api_key=admin) as c:
            with pytest.raises(sv.RateLimited) as info:
                c.list_namespaces()
            assert 0 < info.value.retry_after <= 5
    finally:
        assert server.stop() == 0, server.log()


def test_lifecycle_and_freshness_admin_actions_are_audited_with_what_they_did(matrix):
    db, http, keys, audit_dir = matrix
    auth = {"Authorization": f"Bearer {keys['admin']}"}
    r = http.post("/v1/snapshots", json={"path": "audited"}, headers=auth)
    assert r.status_code == 201
    r2 = http.post("/v1/budgets", json={"namespace": "b", "max_cost": 2.5}, headers=auth)
    assert r2.status_code == 200
    by_id = {e["request_id"]: e for e in audit_mod.read_entries(audit_dir)}
    snap = by_id[r.headers["x-request-id"]]
    assert (snap["action"], snap["outcome"], snap["path"], snap["lsn"]) == (
        "create_snapshot", "ok", r.json()["path"], r.json()["lsn"])
    budget = by_id[r2.headers["x-request-id"]]
    assert (budget["action"], budget["budget_namespace"], budget["budget_max_cost"]) == (
        "set_budget", "b", 2.5)
    r3 = http.post("/v1/snapshots/prune", json={"keep": -1}, headers=auth)
    assert r3.status_code == 400
    failed = {e["request_id"]: e for e in audit_mod.read_entries(audit_dir)}[
        r3.headers["x-request-id"]]
    assert (failed["outcome"], failed["error"], failed["keep"]) == ("error", "invalid_input", -1)
