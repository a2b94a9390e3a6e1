"""``simplevector export`` / ``import`` and :mod:`simplevector.transfer`: the manifest,
parent directories, round trips into a fresh database, mismatches as typed errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import simplevector as sv
from simplevector import transfer
from simplevector.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture
def source(tmp_path):
    """A database with namespace ``items`` (l2, a model, an IVF spec) in two versions."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((40, 6)).astype(np.float32)
    ids = [f"r{i}" if i % 2 else i for i in range(40)]
    meta = [None if i % 9 == 0 else {"i": i, "tag": ["a", "b"][i % 2]} for i in range(40)]
    docs = [None if i % 4 == 0 else f"doc {i}" for i in range(40)]
    path = tmp_path / "src"
    with sv.open(path, checkpoint_interval=0, auto_index=False) as db:
        ns = db.create_namespace("items", dim=6, metric="l2", model="rand@1.2.0",
                                 index="IVF16,Flat")
        ns.upsert(ids, X, metadata=meta, documents=docs)
        db.create_version("items", model="rand@2.0.0")
    return {"db": path, "X": X, "ids": ids, "meta": meta, "docs": docs}


def test_export_into_a_missing_nested_directory_creates_it(tmp_path, source):
    prefix = tmp_path / "backup" / "nested" / "items"
    ok("export", "items", prefix, "--db", source["db"])
    for suffix in (".npy", ".ids.jsonl", ".metadata.jsonl", ".documents.jsonl",
                   ".manifest.json"):
        assert Path(f"{prefix}{suffix}").is_file(), suffix
    np.testing.assert_array_equal(np.load(f"{prefix}.npy"), source["X"])


def test_readme_export_example_with_a_relative_missing_directory(tmp_path, source,
                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok("export", "items", "backup/docs", "--db", source["db"])
    assert (tmp_path / "backup" / "docs.npy").is_file()
    assert (tmp_path / "backup" / "docs.manifest.json").is_file()


def test_export_manifest_describes_the_namespace(tmp_path, source):
    prefix = tmp_path / "out" / "items"
    result = json.loads(ok("export", "items", prefix, "--json", "--db", source["db"]).stdout)
    assert result["files"]["manifest"] == f"{prefix}.manifest.json"
    manifest = json.loads(Path(f"{prefix}.manifest.json").read_text())
    assert manifest["format"] == transfer.MANIFEST_FORMAT
    assert manifest["format_version"] == transfer.MANIFEST_VERSION
    assert (manifest["name"], manifest["version"], manifest["dim"], manifest["metric"],
            manifest["model"], manifest["count"]) == ("items", 1, 6, "l2", "rand@1.2.0", 40)
    assert manifest["index"].startswith("IVF16")
    assert [(v["version"], v["model"], v["live"]) for v in manifest["versions"]] == \
        [(1, "rand@1.2.0", True), (2, "rand@2.0.0", False)]
    assert manifest["files"] == {"vectors": "items.npy", "ids": "items.ids.jsonl",
                                 "metadata": "items.metadata.jsonl",
                                 "documents": "items.documents.jsonl"}
    assert manifest["exported_at"].endswith("Z")
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_export_then_import_create_into_a_fresh_database_keeps_metric_model_index_rows(
        tmp_path, source):
    prefix = tmp_path / "out" / "items"
    ok("export", "items", prefix, "--batch-size", 7, "--db", source["db"])
    fresh = tmp_path / "fresh"
    ok("import", "items", f"{prefix}.npy", "--create", "--batch-size", 9, "--db", fresh)
    with sv.open(fresh, readonly=True, checkpoint_interval=0) as db:
        (info,) = db.list_namespaces()
        (v,) = info.versions
        with sv.open(source["db"], readonly=True, checkpoint_interval=0) as src:
            original = next(x for x in src.list_namespaces()[0].versions if x.version == 1)
        assert (v.dim, v.metric, v.model, v.index, v.count) == \
            (6, "l2", "rand@1.2.0", original.index, 40)
        records = db.namespace("items").get(source["ids"],
                                            include=("metadata", "documents", "vectors"))
    for rec, extid, meta, doc, x in zip(records, source["ids"], source["meta"],
                                        source["docs"], source["X"]):
        assert (rec.id, rec.metadata, rec.document) == (extid, meta, doc)
        assert type(rec.id) is type(extid)
        np.testing.assert_array_equal(rec.vector, x)


def test_import_accepts_the_export_prefix_and_explicit_options_override_the_manifest(
        tmp_path, source):
    prefix = tmp_path / "out" / "items"
    ok("export", "items", prefix, "--db", source["db"])
    fresh = tmp_path / "fresh"
    ok("import", "copy", prefix, "--create", "--metric", "cosine", "--model", "other@0.1.0",
       "--index", "Flat", "--db", fresh)
    with sv.open(fresh, readonly=True, checkpoint_interval=0) as db:
        (v,) = db.list_namespaces()[0].versions
    assert (v.metric, v.model, v.index, v.count) == ("cosine", "other@0.1.0", "Flat", 40)


def test_manifest_dim_that_does_not_match_the_data_is_a_dimension_mismatch(tmp_path, source):
    prefix = tmp_path / "out" / "items"
    ok("export", "items", prefix, "--db", source["db"])
    manifest_path = Path(f"{prefix}.manifest.json")
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "dim": 7}))
    result = run("import", "items", f"{prefix}.npy", "--create", "--db", tmp_path / "fresh")
    assert result.exit_code == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: ") and "dim 7" in line and "6 columns" in line
    with sv.open(tmp_path / "fresh2", checkpoint_interval=0, auto_index=False) as db:
        with pytest.raises(sv.DimensionMismatch):
            transfer.import_namespace(db, prefix, create=True)
        assert db.list_namespaces() == []


def test_transfer_functions_round_trip_with_progress_callbacks(tmp_path, source):
    seen = []
    with sv.open(source["db"], readonly=True, checkpoint_interval=0) as db:
        result = transfer.export_namespace(db, "items", tmp_path / "t" / "x", batch_size=16,
                                           progress=lambda done, total: seen.append(
                                               ("export", done, total)))
    assert result["rows"] == 40 and result["version"] == 1
    with sv.open(tmp_path / "fresh", checkpoint_interval=0, auto_index=False) as db:
        result = transfer.import_namespace(db, tmp_path / "t" / "x.npy", create=True,
                                           batch_size=25,
                                           progress=lambda done, total: seen.append(
                                               ("import", done, total)))
        assert (result["namespace"], result["rows"], result["created"]) == ("items", 40, True)
        assert db.namespace("items").metric == "l2"
    assert seen == [("export", 16, 40), ("export", 32, 40), ("export", 40, 40),
                    ("import", 25, 40), ("import", 40, 40)]


def test_import_without_a_manifest_still_defaults_to_row_numbers_and_cosine(tmp_path):
    np.save(tmp_path / "x.npy", np.eye(5, 3, dtype=np.float32) + 0.5)
    ok("import", "plain", tmp_path / "x.npy", "--create", "--db", tmp_path / "db")
    with sv.open(tmp_path / "db", readonly=True, checkpoint_interval=0) as db:
        ns = db.namespace("plain")
        assert (ns.metric, ns.dim, ns.count()) == ("cosine", 3, 5)
        assert [r.id for r in ns.get([0, 4])] == [0, 4]


def test_import_of_a_missing_file_is_a_one_line_error(tmp_path):
    result = run("import", "x", tmp_path / "nope.npy", "--create", "--db", tmp_path / "db")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "nope.npy" in result.stderr
    assert "Traceback" not in result.output
