"""The audit log: the hash chain catches each of the four kinds of tampering and names the
entry; rotation, retention, a torn tail, the lock, the CLI, and the server's entries."""

from __future__ import annotations

import io
import json
import os
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

import simplevector as sv
from simplevector.cli import main
from simplevector.ops.audit import AuditLog, log_files, query, read_entries, verify
from simplevector.server import create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


def _write(directory, n, **kw):
    with AuditLog(directory, sync=False, **kw) as log:
        for i in range(n):
            log.append({"action": "upsert", "namespace": f"ns{i % 3}", "key_id": f"k{i % 2}",
                        "count": i, "outcome": "ok", "ts": 1_700_000_000.0 + i})
    return log_files(directory)


def _lines(path):
    with open(path, "rb") as f:
        return f.read().splitlines(keepends=True)


def _put(path, lines):
    with open(path, "wb") as f:
        f.writelines(lines)


def test_an_untampered_log_of_10000_entries_verifies(tmp_path):
    _write(tmp_path / "a", 10_000)
    result = verify(tmp_path / "a")
    assert result.ok and result.entries == 10_000 and result.reason is None


def test_an_edited_entry_is_named(tmp_path):
    [path] = _write(tmp_path / "a", 50)
    lines = _lines(path)
    lines[20] = lines[20].replace(b'"count":20', b'"count":21')
    _put(path, lines)
    result = verify(tmp_path / "a")
    assert not result.ok and (result.line, result.seq) == (21, 21)
    assert "edited" in result.reason and result.entries == 20


def test_an_edited_and_rehashed_entry_is_caught_at_the_next_one(tmp_path):
    from simplevector.ops.audit import _canonical, _entry_hash
    [path] = _write(tmp_path / "a", 10)
    lines = _lines(path)
    e = json.loads(lines[4])
    e["count"] = 999
    e["hash"] = _entry_hash(e)
    lines[4] = _canonical(e) + b"\n"
    _put(path, lines)
    result = verify(tmp_path / "a")
    assert not result.ok and result.seq == 6 and "prev" in result.reason


def test_a_deleted_entry_is_named(tmp_path):
    [path] = _write(tmp_path / "a", 50)
    lines = _lines(path)
    del lines[30]
    _put(path, lines)
    result = verify(tmp_path / "a")
    assert not result.ok and result.line == 31 and result.seq == 32
    assert "deleted" in result.reason


def test_an_inserted_entry_is_named(tmp_path):
    [path] = _write(tmp_path / "a", 50)
    lines = _lines(path)
    lines.insert(10, lines[3])
    _put(path, lines)
    result = verify(tmp_path / "a")
    assert not result.ok and result.line == 11 and result.seq == 4
    assert "inserted" in result.reason


def test_reordered_entries_are_named(tmp_path):
    [path] = _write(tmp_path / "a", 50)
    lines = _lines(path)
    lines[40], lines[41] = lines[41], lines[40]
    _put(path, lines)
    result = verify(tmp_path / "a")
    assert not result.ok and result.line == 41 and result.seq == 42


def test_the_first_entry_deleted_is_caught_by_the_file_name(tmp_path):
    [path] = _write(tmp_path / "a", 5)
    _put(path, _lines(path)[1:])
    result = verify(tmp_path / "a")
    assert not result.ok and result.line == 1 and result.seq == 2


def test_rotation_keeps_the_chain_across_files_and_retention_drops_the_oldest(tmp_path):
    files = _write(tmp_path / "a", 400, max_bytes=8_000, keep=None)
    assert len(files) > 3
    assert verify(tmp_path / "a").ok and verify(tmp_path / "a").files == len(files)
    os.remove(files[1])
    bad = verify(tmp_path / "a")
    assert not bad.ok and "between files" in bad.reason
    kept = _write(tmp_path / "b", 400, max_bytes=8_000, keep=2)
    assert len(kept) == 2
    result = verify(tmp_path / "b")
    assert result.ok and result.entries < 400
    assert [e["seq"] for e in read_entries(tmp_path / "b")][-1] == 400


def test_reopening_continues_the_chain(tmp_path):
    _write(tmp_path / "a", 5)
    _write(tmp_path / "a", 5)
    result = verify(tmp_path / "a")
    assert result.ok and result.entries == 10


def test_a_torn_last_line_is_cut_on_open_and_logged(tmp_path):
    [path] = _write(tmp_path / "a", 5)
    with open(path, "ab") as f:
        f.write(b'{"action":"upsert","seq":6,"pr')
    with AuditLog(tmp_path / "a") as log:
        assert log.seq == 6
    entries = list(read_entries(tmp_path / "a"))
    assert entries[-1]["action"] == "audit.torn_tail" and entries[-1]["bytes"] == 30
    assert verify(tmp_path / "a").ok


def test_a_second_writer_of_the_same_log_is_refused(tmp_path):
    with AuditLog(tmp_path / "a"):
        with pytest.raises(sv.LockedError):
            AuditLog(tmp_path / "a")
    AuditLog(tmp_path / "a").close()


def test_stdout_copy_is_the_same_lines(tmp_path):
    out = io.StringIO()
    with AuditLog(tmp_path / "a", stdout=out) as log:
        log.append({"action": "x"})
        log.append({"action": "y"})
    assert out.getvalue().encode() == b"".join(_lines(log_files(tmp_path / "a")[0]))


def test_query_filters(tmp_path):
    _write(tmp_path / "a", 30)
    assert len(query(tmp_path / "a", key="k1")) == 15
    assert {e["namespace"] for e in query(tmp_path / "a", namespace="ns2")} == {"ns2"}
    assert [e["count"] for e in query(tmp_path / "a", since=1_700_000_025.0)] == [25, 26, 27,
                                                                                  28, 29]
    assert [e["count"] for e in query(tmp_path / "a", limit=2)] == [28, 29]


def test_invalid_options_and_a_missing_log(tmp_path):
    with pytest.raises(sv.InvalidInput):
        AuditLog(tmp_path / "a", max_bytes=0)
    with pytest.raises(sv.InvalidInput):
        AuditLog(tmp_path / "b", keep=0)
    with pytest.raises(sv.InvalidInput, match="no audit log"):
        verify(tmp_path / "nothing")


# -- the CLI ------------------------------------------------------------------------------------
def test_audit_cli_verify_tail_query(tmp_path):
    db = tmp_path / "db"
    [path] = _write(db / "audit", 40)
    runner = CliRunner()
    r = runner.invoke(main, ["audit", "verify", "--db", str(db)])
    assert r.exit_code == 0 and "ok: 40 entries" in r.stdout
    r = runner.invoke(main, ["audit", "tail", "--db", str(db), "-n", "3", "--json"])
    assert [e["seq"] for e in json.loads(r.stdout)] == [38, 39, 40]
    r = runner.invoke(main, ["audit", "query", "--db", str(db), "--key", "k0", "--namespace",
                             "ns0", "--since", "2023-11-14T22:13:30Z", "--json"])
    rows = json.loads(r.stdout)
    assert rows and all(e["key_id"] == "k0" and e["namespace"] == "ns0" and
                        e["ts"] >= 1_700_000_010 for e in rows)
    lines = _lines(path)
    del lines[7]
    _put(path, lines)
    r = runner.invoke(main, ["audit", "verify", "--db", str(db)])
    assert r.exit_code == 1 and "line 8 (seq 9)" in r.stdout
    r = runner.invoke(main, ["audit", "verify", "--audit-dir", str(db / "audit"), "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)["seq"] == 9


# -- what the server writes ---------------------------------------------------------------------
@pytest.fixture
def served(tmp_path):
    db = sv.open(tmp_path / "db", checkpoint_interval=0)
    log = AuditLog(tmp_path / "audit")
    yield db, log, tmp_path / "audit"
    log.close()
    db.close()


def test_server_audits_writes_and_admin_actions_not_reads(served):
    db, log, directory = served
    with TestClient(create_app(db, audit=log)) as http:
        http.post("/v1/namespaces", json={"name": "d", "dim": 2, "metric": "l2"})
        r = http.post("/v1/namespaces/d/upsert",
                      json={"ids": ["a", 7], "vectors": [[0, 1], [1, 0]]},
                      headers={"X-Request-ID": "req-42"})
        http.post("/v1/namespaces/d/query", json={"vectors": [0, 1], "k": 1})
        http.post("/v1/namespaces/d/delete", json={"ids": ["a", "zz"]})
        http.post("/v1/namespaces/d/upsert", json={"ids": [1], "vectors": [[1, 2, 3]]})
    assert r.headers["x-request-id"] == "req-42"
    entries = list(read_entries(directory))
    assert [e["action"] for e in entries] == ["create_namespace", "upsert", "delete", "upsert"]
    create, up, dele, bad = entries
    assert create["namespace"] == "d" and create["outcome"] == "ok" and create["status"] == 201
    assert up["request_id"] == "req-42" and up["ids"] == ["a", 7] and up["count"] == 2
    assert up["lsn"] >= 1 and up["remote"] and up["latency_ms"] >= 0 and up["key_id"] is None
    assert dele["ids"] == ["a", "zz"] and dele["count"] == 1
    assert bad["outcome"] == "error" and bad["error"] == "dimension_mismatch"
    assert bad["status"] == 400
    assert verify(directory).ok


def test_server_audits_reads_when_asked(served):
    db, log, directory = served
    db.create_namespace("d", dim=2, metric="l2").upsert([1], np.ones((1, 2), np.float32))
    with TestClient(create_app(db, audit=log, audit_reads=True)) as http:
        http.post("/v1/namespaces/d/query", json={"vectors": [[0, 1], [1, 1]], "k": 1})
        http.get("/v1/namespaces/d/count")
        http.get("/healthz")
    entries = list(read_entries(directory))
    assert [(e["action"], e.get("count")) for e in entries] == [("query", 2), ("count", None)]


def test_a_failing_audit_write_answers_500_not_ok(served, monkeypatch):
    db, log, _ = served

    def broken(entry):
        raise sv.StorageError("disk full")
    monkeypatch.setattr(log, "append", broken)
    with TestClient(create_app(db, audit=log), raise_server_exceptions=False) as http:
        r = http.post("/v1/namespaces", json={"name": "d", "dim": 2})
    assert r.status_code == 500 and r.json()["error"]["code"] == "storage_error"


def test_runbook_api_keys_and_audit_commands_run_as_written(tmp_path, monkeypatch):
    from _runbook import runbook_commands
    monkeypatch.chdir(tmp_path)
    commands = runbook_commands("API keys and the audit log")
    assert len(commands) >= 6
    outputs = []
    for argv in commands:
        assert argv[0] == "simplevector"
        result = CliRunner().invoke(main, argv[1:])
        assert result.exit_code == 0, (argv, result.output, result.exception)
        outputs.append(result.stdout)
    with sv.open("data", readonly=True, checkpoint_interval=0) as db:
        states = {k.name: k.state() for k in db.keys.list()}
    assert states == {"ops-admin": "active", "ingest": "revoked"}
    assert [e["action"] for e in json.loads(outputs[5])] == ["revoke_key"]
    assert verify("data/audit").ok
