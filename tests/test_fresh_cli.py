"""The freshness, cost and migration CLI commands, and the runbook sections that use them
(docs/runbook.md: Model updates, Source drift, Cost spike), run as written."""

import json

import pytest
from click.testing import CliRunner

import simplevector as sv
from simplevector import embeddings
from simplevector.cli import main

from _runbook import runbook_commands  # noqa: E402

TEXTS = ["the king and the queen", "a prince and a princess", "stock market prices fell",
         "the cat sat on the mat", "dogs bark at night", "rain in the mountains",
         "football match tonight", "a new phone was released", "bread and butter",
         "the river flows to the sea", "old castle on a hill", "fresh coffee in the morning"]


def _records():
    return [{"id": f"d{i}", "text": t, "metadata": {"src": "a" if i % 2 else "b"}}
            for i, t in enumerate(TEXTS)]


def _write_jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _run_all(commands):
    outputs = []
    for argv in commands:
        assert argv[0] == "simplevector"
        result = CliRunner().invoke(main, argv[1:])
        assert result.exit_code == 0, (argv, result.output, result.exception)
        outputs.append(result.output)
    return outputs


def test_runbook_source_drift_commands_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_jsonl(tmp_path / "source.jsonl", _records())
    CliRunner().invoke(main, ["sync", "docs", "--jsonl", "source.jsonl", "--create",
                              "--db", "./data"])
    recs = _records()[2:]
    recs[0]["text"] = "stock market prices rose"
    _write_jsonl(tmp_path / "source.jsonl", recs)
    commands = runbook_commands("Source drift", comment="  #")
    assert len(commands) == 4
    out = _run_all(commands)
    assert "updated" in out[1]
    with sv.open("data", checkpoint_interval=0) as db:
        ns = db.namespace("docs")
        assert ns.count() == len(TEXTS) - 2 and ns.get("d2").document == \
            "stock market prices rose"
        r = db.freshness("docs")[0]
        assert r.with_provenance == r.rows and r.backlog == 0


def test_runbook_model_update_commands_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with sv.open("data", checkpoint_interval=0) as db:
        db.create_namespace("docs", embedding=embeddings.GloVeMean()).sync(_records())
    commands = runbook_commands("Model updates", comment="  #")
    steps = [c[1:3] for c in commands][:5]
    assert steps == [["migrate", "plan"], ["migrate", "start"], ["migrate", "status"],
                     ["migrate", "shadow"], ["migrate", "promote"]]
    out = _run_all(commands)
    assert out[5].splitlines()[1].split()[0] == "d0"          # query-text on version 2
    with sv.open("data", checkpoint_interval=0) as db:
        m = db.migrations("docs")[-1]
        assert m.state == "aborted" and m.doc["shadow"]["overlap_at_k"] == pytest.approx(1.0)
        assert [v.version for v in db.list_namespaces()[0].versions] == [1]
        assert db.namespace("docs").model == "glove-6b-50d-mean@1.0.0"


def test_runbook_cost_spike_commands_run_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_jsonl(tmp_path / "source.jsonl", _records())
    CliRunner().invoke(main, ["sync", "docs", "--jsonl", "source.jsonl", "--create",
                              "--db", "./data"])
    out = _run_all(runbook_commands("Cost spike", comment="  #"))
    assert "docs" in out[0]
    assert json.loads(out[1])["tokens"] > 0
    with sv.open("data", checkpoint_interval=0) as db:
        assert db.budgets()[0]["max_tokens"] == 1_000_000
        lim = db.rate_limits()[0]
        assert (lim.namespace, lim.op, lim.per_second, lim.burst) == ("docs", "embed", 50, 100)


def test_sync_command_reports_and_query_text_finds(tmp_path):
    _write_jsonl(tmp_path / "s.jsonl", _records())
    db = str(tmp_path / "db")
    r = CliRunner().invoke(main, ["sync", "docs", "--jsonl", str(tmp_path / "s.jsonl"),
                                  "--create", "--json", "--db", db])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["added"] == len(TEXTS) and report["embedded"] == len(TEXTS)
    r = CliRunner().invoke(main, ["query-text", "docs", "kings and queens", "-k", "1", "--json",
                                  "--db", db])
    assert json.loads(r.stdout)[0]["id"] == "d0"
    r = CliRunner().invoke(main, ["sync", "missing", "--jsonl", str(tmp_path / "s.jsonl"),
                                  "--db", db])
    assert r.exit_code == 1 and "does not exist" in r.stderr
    r = CliRunner().invoke(main, ["query-text", "docs", "x", "--embedding", "glove:2.0.0",
                                  "--db", db])
    assert r.exit_code == 1 and "ModelMismatch" not in r.stderr and "not the model" in r.stderr
