"""The HTTP layer itself: probes, metrics, OpenAPI, limits, error envelopes, the serve
command and its graceful shutdown. The API's behaviour is tests/test_conformance.py."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import warnings

import msgpack
import numpy as np
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

import simplevector as sv
from simplevector.cli import main
from simplevector.cli_server import is_loopback
from simplevector.client import RemoteNamespace
from simplevector.engine.namespace import Namespace
from simplevector.server import MSGPACK, ND, ROUTES, create_app

from _serverproc import ServerProcess, free_port

with warnings.catch_warnings():     # starlette 1.x prefers httpx2 for its TestClient
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


@pytest.fixture
def app_db(tmp_path):
    db = sv.open(tmp_path / "db", checkpoint_interval=0)
    yield db
    db.close()


@pytest.fixture
def http(app_db):
    with TestClient(create_app(app_db, max_body_bytes=4096),
                    raise_server_exceptions=False) as client:
        yield client


def test_healthz_answers_ok(http):
    r = http.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_readyz_is_ready_on_an_open_writable_database(http):
    r = http.get("/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True


def test_readyz_is_503_once_the_database_is_closed(app_db, http):
    app_db.close()
    r = http.get("/readyz")
    assert r.status_code == 503
    assert r.json()["ready"] is False and r.json()["reasons"]


def test_metrics_parse_and_count_requests_per_route(http):
    http.post("/v1/namespaces", json={"name": "m", "dim": 2, "metric": "l2"})
    for _ in range(3):
        http.get("/v1/namespaces/m/count")
    http.get("/v1/namespaces/nope/count")
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    counts = {(s.labels["route"], s.labels["status"]): s.value
              for s in families["simplevector_http_requests"].samples
              if s.name.endswith("_total")}
    assert counts[("/v1/namespaces/{name}/count", "200")] == 3
    assert counts[("/v1/namespaces/{name}/count", "404")] == 1
    assert counts[("/v1/namespaces", "201")] == 1
    assert "simplevector_http_request_seconds" in families
    assert any(name.startswith("simplevector_") and "http" not in name for name in families)


def test_openapi_lists_every_route(http):
    doc = http.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    listed = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert listed == {(path, method.lower()) for path, method, _, _ in ROUTES}


def test_oversized_body_is_413_limit_exceeded(http):
    r = http.post("/v1/namespaces", content=b"{" + b" " * 5000 + b"}",
                  headers={"content-type": "application/json"})
    assert r.status_code == 413
    err = r.json()["error"]
    assert err["code"] == "limit_exceeded" and "4096" in err["message"] and err["hint"]


def test_invalid_json_and_unknown_fields_are_400_invalid_input(http):
    r = http.post("/v1/namespaces", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"
    r = http.post("/v1/namespaces", json={"name": "x", "dim": 2, "colour": "red"})
    assert r.status_code == 400 and "colour" in r.json()["error"]["message"]


def test_unknown_route_has_the_error_envelope(http):
    r = http.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_unknown_exception_is_500_internal_without_traceback(http, monkeypatch):
    http.post("/v1/namespaces", json={"name": "boom", "dim": 2})

    def explode(self):
        raise RuntimeError("secret internal detail")
    monkeypatch.setattr(Namespace, "count", explode)
    r = http.get("/v1/namespaces/boom/count")
    assert r.status_code == 500
    assert r.json() == {"error": {"code": "internal", "message": "internal server error",
                                  "hint": "see the server log"}}
    assert "secret" not in r.text and "Traceback" not in r.text


def test_msgpack_bodies_carry_vectors_as_float32_bytes(http):
    http.post("/v1/namespaces", json={"name": "mp", "dim": 3, "metric": "l2"})
    X = np.array([[1, 2, 3], [3, 2, 1]], dtype=np.float32)
    body = {"ids": [1, "b"], "vectors": {ND: X.astype("<f4").tobytes(), "shape": [2, 3]}}
    r = http.post("/v1/namespaces/mp/upsert", content=msgpack.packb(body, use_bin_type=True),
                  headers={"content-type": MSGPACK})
    assert r.status_code == 200 and r.headers["content-type"] == MSGPACK
    assert msgpack.unpackb(r.content)["lsn"] >= 1
    q = {"vectors": {ND: X[0].tobytes(), "shape": [3]}, "k": 2, "include": ["vectors"]}
    r = http.post("/v1/namespaces/mp/query", content=msgpack.packb(q, use_bin_type=True),
                  headers={"content-type": MSGPACK})
    out = msgpack.unpackb(r.content)
    assert out["single"] is True and [h["id"] for h in out["hits"]] == [1, "b"]
    vec = out["hits"][0]["vector"]
    np.testing.assert_array_equal(np.frombuffer(vec[ND], "<f4").reshape(vec["shape"]), X[0])


def test_json_error_body_is_the_library_error(http):
    r = http.post("/v1/namespaces/none/query", json={"vectors": [1.0, 2.0]})
    assert r.status_code == 404
    assert r.json()["error"] == sv.NamespaceNotFound("namespace 'none' does not exist").to_dict()


# -- the serve command ----------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "[::1]"])
def test_loopback_hosts_are_loopback(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.5", "::", "example.com"])
def test_serve_refuses_a_non_loopback_host_without_insecure(tmp_path, host):
    result = CliRunner().invoke(main, ["serve", "--db", str(tmp_path / "db"), "--host", host])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and result.output.count("\n") == 1
    assert "--insecure" in result.output
    assert not (tmp_path / "db").exists()


def test_client_of_an_unreachable_server_raises_storage_error():
    with sv.connect(f"http://127.0.0.1:{free_port()}", timeout=2.0) as client:
        with pytest.raises(sv.StorageError):
            client.list_namespaces()


def test_client_use_after_close_raises_closed_error(tmp_path):
    client = sv.connect("http://127.0.0.1:9")
    client.close()
    client.close()
    with pytest.raises(sv.ClosedError):
        client.list_namespaces()


def test_sigterm_finishes_requests_closes_the_database_and_keeps_acknowledged_writes(tmp_path):
    path = tmp_path / "db"
    server = ServerProcess(path)
    client = sv.connect(server.url, timeout=10.0)
    ns = client.create_namespace("w", dim=4, metric="l2")
    acked, stop = [], threading.Event()
    rng = np.random.default_rng(0)

    def writer():
        i = 0
        while not stop.is_set():
            try:
                ns.upsert([i], rng.standard_normal((1, 4)).astype(np.float32))
            except sv.SimpleVectorError:
                return
            acked.append(i)
            i += 1
    thread = threading.Thread(target=writer)
    thread.start()
    while len(acked) < 20:
        threading.Event().wait(0.01)
    code = server.stop()
    stop.set()
    thread.join(30)
    client.close()
    assert code == 0, server.log()
    with sv.open(path, checkpoint_interval=0) as db:
        stored = db.namespace("w").get(acked, include=())
        assert all(r is not None for r in stored), "an acknowledged upsert is missing"
        assert db.replayed_records == 0, "the server did not checkpoint on close"


def test_import_simplevector_does_not_import_the_server_libraries():
    code = ("import sys, simplevector; "
            "print(sorted(m for m in ('httpx', 'starlette', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def _flaky_client(fail_times: int):
    """A client whose transport fails to connect ``fail_times`` times, then answers."""
    import httpx
    calls = []

    def handler(request):
        calls.append((request.method, request.url.path))
        if len(calls) <= fail_times:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"namespaces": [], "lsn": 5,
                                         "single": True, "hits": []})
    client = sv.connect("http://127.0.0.1:9")
    client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(handler))
    return client, calls


def test_client_retries_idempotent_calls_on_connection_errors(monkeypatch):
    monkeypatch.setattr("simplevector.client.RETRY_WAIT", 0.0)
    client, calls = _flaky_client(2)
    assert client.list_namespaces() == [] and len(calls) == 3
    client, calls = _flaky_client(2)
    ns = RemoteNamespace(client, {"name": "n", "version": 1, "dim": 2, "metric": "l2",
                                  "model": None, "index": "auto", "live": True})
    assert ns.query([1.0, 2.0]) == [] and len(calls) == 3


def test_client_does_not_retry_writes(monkeypatch):
    monkeypatch.setattr("simplevector.client.RETRY_WAIT", 0.0)
    client, calls = _flaky_client(1)
    ns = RemoteNamespace(client, {"name": "n", "version": 1, "dim": 2, "metric": "l2",
                                  "model": None, "index": "auto", "live": True})
    with pytest.raises(sv.StorageError):
        ns.upsert([1], [[1.0, 2.0]])
    assert calls == [("POST", "/v1/namespaces/n/upsert")]


def test_msgpack_client_sends_and_receives_msgpack(app_db):
    seen = []
    client = sv.connect("http://testserver", wire="msgpack")
    client._http = TestClient(create_app(app_db), headers=client._http.headers)
    client._http.event_hooks["response"] = [lambda r: seen.append(r.headers["content-type"])]
    ns = client.create_namespace("mp", dim=3, metric="l2")
    ns.upsert([1, "b"], np.eye(3, dtype=np.float32)[:2], metadata=[{"a": 1}, None])
    hits = ns.query(np.eye(3, dtype=np.float32), k=1, include=("metadata", "vectors"))
    assert [h[0].id for h in hits] == [1, "b", 1] and hits[0][0].metadata == {"a": 1}
    assert hits[1][0].vector.dtype == np.float32 and hits[1][0].vector.flags.writeable
    np.testing.assert_array_equal(hits[1][0].vector, [0, 1, 0])
    assert set(seen) == {MSGPACK}
    with pytest.raises(sv.DimensionMismatch):
        ns.query([1.0, 2.0])


def test_connect_rejects_an_unknown_wire_format():
    with pytest.raises(sv.InvalidInput):
        sv.connect("http://127.0.0.1:9", wire="xml")


# -- readiness and the serve notices (issue 13, security step) ------------------------------------
def test_readyz_reports_each_check(http):
    body = http.get("/readyz").json()
    assert body["checks"]["wal_replayed"] and body["checks"]["indexes_loaded"]
    assert body["checks"]["disk_headroom"] and body["checks"]["not_failed"]
    assert body["checks"]["disk_free_bytes"] > 0 and body["reasons"] == []


def test_readyz_is_503_without_disk_headroom(tmp_path):
    from simplevector.ops.thresholds import HealthThresholds
    # a threshold no real disk meets: more than 100% free
    t = HealthThresholds(disk_free_warning=1.5, disk_free_critical=1.2)
    with sv.open(tmp_path / "db", checkpoint_interval=0, thresholds=t) as db:
        with TestClient(create_app(db)) as client:
            r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["disk_headroom"] is False
    assert any(reason.startswith("disk:") for reason in r.json()["reasons"])


def test_serve_says_it_runs_without_keys_and_copies_audit_lines_to_stdout(tmp_path):
    import json as json_mod
    server = ServerProcess(tmp_path / "db", "--audit-stdout")
    try:
        with sv.connect(server.url) as client:
            client.create_namespace("n", dim=2)
    finally:
        assert server.stop() == 0
    log = server.log()
    assert "WITHOUT authentication" in log and "loopback only" in log
    lines = [json_mod.loads(line) for line in log.splitlines() if line.startswith('{"')]
    assert [e["action"] for e in lines] == ["create_namespace"]
    with open(next((tmp_path / "db" / "audit").glob("audit-*.jsonl"))) as f:
        assert json_mod.loads(f.readline()) == lines[0]


@pytest.mark.parametrize("path", ["../escape", "a/b", "x.tmp", ".hidden", "", "/etc/sv-snap",
                                  "snapshots/../../x", 7])
def test_a_snapshot_path_outside_the_snapshot_directory_is_400_and_writes_nothing(
        app_db, http, tmp_path, path):
    for route in ("/v1/snapshots", "/v1/snapshots/verify"):
        r = http.post(route, json={"path": path})
        assert r.status_code == 400, (route, r.text)
        assert r.json()["error"]["code"] == "invalid_input"
    assert app_db.snapshots() == []
    assert not (tmp_path / "escape").exists() and not (tmp_path / "x").exists()


def test_an_absolute_snapshot_path_elsewhere_is_refused_but_one_under_snapshots_is_taken(
        app_db, http, tmp_path):
    outside = tmp_path / "elsewhere" / "snap"
    r = http.post("/v1/snapshots", json={"path": str(outside)})
    assert r.status_code == 400 and "not allowed over HTTP" in r.json()["error"]["message"]
    assert not outside.exists()
    inside = os.path.join(app_db.path, "snapshots", "nightly")
    r = http.post("/v1/snapshots", json={"path": inside})
    assert r.status_code == 201 and r.json()["path"] == inside
    assert [s.path for s in app_db.snapshots()] == [inside]


def test_restore_has_no_route(http):
    """Restore renames a new directory into place: an offline operation (README, Server)."""
    assert http.post("/v1/restore", json={}).status_code == 404
    assert not [p for p, _, _, _ in ROUTES if "restore" in p]


def test_a_migration_to_a_model_the_server_has_no_function_for_is_400(app_db, http):
    app_db.create_namespace("docs", dim=4, metric="l2", model="m@1.0.0")
    r = http.post("/v1/namespaces/docs/migration", json={"model": "other@2.0.0"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input"
    assert "no embedding function for model 'other@2.0.0'" in r.json()["error"]["message"]
    assert [v.version for v in app_db.list_namespaces()[0].versions] == [1]
    assert app_db.migrations() == []


def test_create_app_refuses_two_embedding_functions_of_one_model(app_db):
    fn = sv.embeddings.Callable(lambda t: np.ones((len(t), 2), np.float32), model="m@1.0.0",
                                dim=2)
    with pytest.raises(sv.InvalidInput, match="two embedding functions"):
        create_app(app_db, embeddings=[fn, fn])
    with pytest.raises(sv.InvalidInput):
        create_app(app_db, embeddings=["not a function"])


def test_serve_with_a_bad_embedding_spec_exits_1_with_one_line(tmp_path):
    result = CliRunner().invoke(main, ["serve", "--db", str(tmp_path / "db"),
                                       "--embedding", "no_such_module_xyz:factory"])
    assert result.exit_code == 1 and result.output.startswith("error: ")
    assert "cannot be loaded" in result.output
