"""Format upgrade: a format-1 database made by the previous release (tests/data) opens only
through `simplevector upgrade`, which converts a copy, verifies it and swaps it in."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import simplevector as sv
from simplevector.cli import main
from simplevector.engine import schema, upgrade as upgrade_mod

DATA = Path(__file__).parent / "data"


@pytest.fixture
def old_db(tmp_path):
    path = tmp_path / "db"
    shutil.copytree(DATA / "format1-db", path)
    return path


def _expected():
    return json.loads((DATA / "format1-expected.json").read_text())


def _assert_holds_expected(db):
    for key, want in _expected().items():
        name, version = key.split("@")
        ns = db.namespace(name, int(version))
        assert (ns.dim, ns.metric, ns.model, ns.live) == (
            want["dim"], want["metric"], want["model"], want["live"])
        assert ns.count() == want["count"]
        ids = [r[0] for r in want["rows"]]
        assert sorted(map(str, ns.ids())) == sorted(map(str, ids))
        got = ns.get(ids, include=("metadata", "documents", "vectors"))
        for (extid, md, doc, vec), rec in zip(want["rows"], got):
            assert (rec.id, rec.metadata, rec.document) == (extid, md, doc)
            vec = np.asarray(vec, np.float64)
            if want["metric"] == "cosine":   # format 2 stores the unit row
                vec = vec / np.linalg.norm(vec)
            np.testing.assert_allclose(rec.vector, vec, rtol=1e-6, atol=1e-7)
        # the query path finds every row by its own vector
        probe = got[: 20]
        hits = ns.query(np.stack([r.vector for r in probe]), k=1, include=(), exact=True)
        assert [h[0].id for h in hits] == [r.id for r in probe]


def test_opening_a_format1_database_names_the_upgrade_command_and_changes_nothing(old_db):
    before = {p: p.read_bytes() for p in old_db.rglob("*") if p.is_file()}
    with pytest.raises(sv.FormatVersionError) as info:
        sv.open(old_db)
    assert f"simplevector upgrade {old_db}" in str(info.value)
    assert info.value.found == 1
    after = {p: p.read_bytes() for p in old_db.rglob("*") if p.is_file() and p in before}
    assert after == before


def test_upgrade_converts_verifies_swaps_and_keeps_the_old_directory(old_db):
    report = sv.upgrade(old_db)
    assert (report.from_format, report.to_format) == (1, schema.FORMAT_VERSION)
    assert report.backup == f"{old_db}.format1-backup" and os.path.isdir(report.backup)
    assert report.versions == 3
    assert not os.path.exists(upgrade_mod.staging_path(str(old_db)))
    with sv.open(old_db, checkpoint_interval=0) as db:
        # the WAL tail after the old checkpoint was replayed as after a crash
        _assert_holds_expected(db)
        lsn = db.lsn
        db.namespace("docs").upsert([77777], np.ones((1, 8), np.float32))
    with sv.open(old_db, checkpoint_interval=0) as db:
        assert db.lsn == lsn + 1
        assert db.namespace("docs").get(77777) is not None
    # a second upgrade of a current database does nothing
    again = sv.upgrade(old_db)
    assert again.backup is None and again.from_format == schema.FORMAT_VERSION


def test_cli_upgrade_prints_the_report_and_the_database_then_opens(old_db):
    result = CliRunner().invoke(main, ["upgrade", str(old_db), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert data["upgraded"] and data["from_format"] == 1 and data["rows"] == 261 + 398
    with sv.open(old_db, checkpoint_interval=0, readonly=True) as db:
        _assert_holds_expected(db)
    result = CliRunner().invoke(main, ["upgrade", "-h"])
    assert result.exit_code == 0 and "backup" in result.output


def test_upgrade_refuses_a_database_another_process_has_open(old_db):
    sv.upgrade(old_db)
    with sv.open(old_db, checkpoint_interval=0):
        with pytest.raises(sv.LockedError):
            sv.upgrade(old_db)


CHILD = r'''
import os, sys, signal
from simplevector.engine import upgrade as u
path, where = sys.argv[1], sys.argv[2]
if where == "convert":
    real = u._convert_version
    calls = []
    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)
    u._convert_version = dying
else:
    real_rename = os.rename
    def dying_rename(a, b):
        real_rename(a, b)
        if b.endswith("-backup"):
            os.kill(os.getpid(), signal.SIGKILL)
    u.os.rename = dying_rename
u.upgrade(path)
'''


@pytest.mark.parametrize("where", ["convert", "swap"])
def test_kill9_during_upgrade_loses_nothing_and_a_rerun_or_open_finishes(old_db, where):
    """convert: killed while rows are converted, the original is untouched; swap: killed
    between the two renames, the verified copy is only in the staging directory."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(old_db), where])
    assert proc.returncode == -signal.SIGKILL
    if where == "convert":
        # the original is as it was: it still refuses to open and upgrades cleanly
        with pytest.raises(sv.FormatVersionError):
            sv.open(old_db)
        report = sv.upgrade(old_db)
        assert report.from_format == 1
    else:
        assert not old_db.exists()             # killed between the renames
        assert os.path.isdir(f"{old_db}.format1-backup")
    # in both cases opening now finds the converted database
    with sv.open(old_db, checkpoint_interval=0) as db:
        _assert_holds_expected(db)
    assert not os.path.exists(upgrade_mod.staging_path(str(old_db)))


def test_runbook_upgrade_procedure_runs_as_written(tmp_path, monkeypatch):
    from _runbook import runbook_commands
    monkeypatch.chdir(tmp_path)
    shutil.copytree(DATA / "format1-db", tmp_path / "data-v1")
    commands = runbook_commands("Upgrade the on-disk format")
    assert [c[1] for c in commands] == ["info", "upgrade", "info", "snapshot"]
    first = CliRunner().invoke(main, commands[0][1:])
    assert first.exit_code == 1 and "simplevector upgrade" in first.output
    for argv in commands[1:]:
        result = CliRunner().invoke(main, argv[1:])
        assert result.exit_code == 0, (argv, result.output, result.exception)
    assert os.path.isdir("backup/after-upgrade")
    assert os.path.isdir("data-v1.format1-backup")
    with sv.open("data-v1", checkpoint_interval=0, readonly=True) as db:
        _assert_holds_expected(db)


# -- format 2 -> 3 (tests/data/format2-db, made by tests/data/make_format2_db.py) -------------
@pytest.fixture
def fmt2_db(tmp_path):
    path = tmp_path / "db2"
    shutil.copytree(DATA / "format2-db", path)
    return path


def _assert_holds_format2_expected(db):
    expected = json.loads((DATA / "format2-expected.json").read_text())
    for key, want in expected.items():
        name, version = key.split("@")
        ns = db.namespace(name, int(version))
        assert (ns.dim, ns.metric, ns.model, ns.live) == (
            want["dim"], want["metric"], want["model"], want["live"])
        assert ns.count() == want["count"]
        ids = [r[0] for r in want["rows"]]
        assert sorted(map(str, ns.ids())) == sorted(map(str, ids))
        got = ns.get(ids, include=("metadata", "documents", "vectors"))
        for (extid, md, doc, vec), rec in zip(want["rows"], got):
            assert (rec.id, rec.metadata, rec.document) == (extid, md, doc)
            # format 2 stored these very float32 bytes; the upgrade copies them
            assert rec.vector.tobytes() == np.asarray(vec, np.float32).tobytes()
        hits = ns.query(np.stack([r.vector for r in got[:20]]), k=1, include=(), exact=True)
        assert [h[0].id for h in hits] == [r.id for r in got[:20]]


def test_opening_a_format2_database_names_the_upgrade_command(fmt2_db):
    with pytest.raises(sv.FormatVersionError) as info:
        sv.open(fmt2_db)
    assert f"simplevector upgrade {fmt2_db}" in str(info.value)
    assert info.value.found == 2


def test_upgrade_from_format2_adds_checksums_finds_every_row_and_verifies(fmt2_db):
    report = sv.upgrade(fmt2_db)
    assert (report.from_format, report.to_format) == (2, 3) == (2, schema.FORMAT_VERSION)
    assert report.backup == f"{fmt2_db}.format2-backup" and os.path.isdir(report.backup)
    assert report.versions == 3
    with sv.open(fmt2_db, checkpoint_interval=0) as db:
        _assert_holds_format2_expected(db)
        result = db.verify(deep=True)
        assert result.ok, result.problems
        db.namespace("items").upsert(["new"], np.ones((1, 4), np.float32))
    with sv.open(fmt2_db, checkpoint_interval=0, readonly=True) as db:
        assert db.namespace("items").get("new") is not None
        assert db.verify().ok


@pytest.mark.parametrize("where", ["convert", "swap"])
def test_kill9_during_a_format2_upgrade_loses_nothing_and_a_rerun_or_open_finishes(
        fmt2_db, where):
    child = CHILD.replace("u._convert_version", "u._convert2_version")
    proc = subprocess.run([sys.executable, "-c", child, str(fmt2_db), where])
    assert proc.returncode == -signal.SIGKILL
    if where == "convert":
        with pytest.raises(sv.FormatVersionError):
            sv.open(fmt2_db)
        assert sv.upgrade(fmt2_db).from_format == 2
    else:
        assert not fmt2_db.exists() and os.path.isdir(f"{fmt2_db}.format2-backup")
    with sv.open(fmt2_db, checkpoint_interval=0) as db:
        _assert_holds_format2_expected(db)
