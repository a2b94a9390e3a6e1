"""ns.sync, ns.query_text, model checks and per-row provenance (ops/sync.py)."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

import simplevector as sv
from simplevector.ops.sync import content_hash

sys.path.insert(0, os.path.dirname(__file__))
from _fresh_child import NEW, OLD, Counting, records, vector_of  # noqa: E402

CHILD = os.path.join(os.path.dirname(__file__), "_fresh_child.py")


@pytest.fixture
def db(tmp_path):
    d = sv.open(tmp_path / "db", checkpoint_interval=0)
    yield d
    d.close()


def test_sync_embeds_once_then_skips_unchanged_then_applies_changes_and_deletes(db):
    fn = Counting()
    ns = db.create_namespace("docs", embedding=fn, metric="l2")
    assert (ns.dim, ns.model) == (8, OLD)
    recs = records(1000)
    r = ns.sync(recs)
    assert (r.added, r.updated, r.unchanged, r.embedded) == (1000, 0, 0, 1000)
    assert len(fn.texts) == 1000 and ns.count() == 1000
    r = ns.sync(recs)
    assert (r.added, r.unchanged, r.embedded, r.tokens) == (0, 1000, 0, 0)
    assert len(fn.texts) == 1000                       # the model was not called
    changed = set(range(100, 110))
    again = records(1000, changed)[5:]                 # drop r0..r4, change 10 texts
    r = ns.sync(again, mode="full")
    assert (r.updated, r.unchanged, r.deleted, r.embedded) == (10, 985, 5, 10)
    assert len(fn.texts) == 1010 and ns.count() == 995
    assert ns.get(["r0", "r4"]) == [None, None]
    hit = ns.query_text("record 105 text changed", k=1)[0]
    assert hit.id == "r105" and hit.distance == pytest.approx(0.0, abs=1e-4)
    assert ns.get("r105").document == "record 105 text changed"
    stored = ns.get("r105", include=("vectors",)).vector
    np.testing.assert_allclose(stored, vector_of("record 105 text changed", OLD), rtol=1e-6)


def test_identical_texts_in_a_batch_are_embedded_once(db):
    fn = Counting()
    ns = db.create_namespace("docs", embedding=fn, metric="l2")
    recs = [{"id": i, "text": "same  text " if i % 2 else "same text"} for i in range(50)]
    r = ns.sync(recs)
    assert r.added == 50 and r.embedded == 1 and fn.texts == ["same text"]


def test_provenance_is_stored_with_the_row_and_survives_reopen(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0) as db:
        ns = db.create_namespace("docs", embedding=Counting(), metric="l2")
        ns.sync([{"id": "a", "text": "alpha", "metadata": {"k": 1},
                  "updated_at": "2026-11-30T10:00:00Z"}])
        # a plain upsert without provenance leaves none (and no record element)
        ns.upsert(["b"], np.ones((1, 8), np.float32))
    with sv.open(path, checkpoint_interval=0) as db:
        ns = db.namespace("docs")
        prov, none, missing = ns.provenance(["a", "b", "zz"])
        assert prov["h"] == content_hash("alpha", {"k": 1}, OLD) and prov["m"] == OLD
        assert prov["u"] == 1796032800.0 and prov["t"] > prov["u"]
        assert none is None and missing is None
        page, cursor = ns.scan(limit=10)
        assert [r.id for r in page] == ["a", "b"] and cursor is None
        assert page[0].document == "alpha" and page[0].provenance == prov
        assert ns.get("a").metadata == {"k": 1}


def test_content_hash_covers_text_metadata_and_model_not_whitespace():
    h = content_hash("a  b", {"x": 1, "y": 2}, "m@1.0.0")
    assert h == content_hash(" a b ", {"y": 2, "x": 1}, "m@1.0.0")
    assert h != content_hash("a b c", {"x": 1, "y": 2}, "m@1.0.0")
    assert h != content_hash("a b", {"x": 2, "y": 2}, "m@1.0.0")
    assert h != content_hash("a b", {"x": 1, "y": 2}, "m@2.0.0")


def test_scoped_full_deletes_only_within_the_sources_seen(db):
    ns = db.create_namespace("docs", embedding=Counting(), metric="l2")
    ns.sync(records(40))                               # sources s0..s3
    keep = [r for r in records(40) if r["metadata"]["src"] == "s1" and r["id"] != "r1"]
    r = ns.sync(keep, mode="scoped_full", source_key="src")
    assert r.deleted == 1 and ns.get("r1") is None and ns.count() == 39
    with pytest.raises(sv.InvalidInput, match="source_key"):
        ns.sync(keep, mode="scoped_full")


def test_model_mismatch_on_reattach_and_on_query(tmp_path):
    path = tmp_path / "db"
    with sv.open(path, checkpoint_interval=0) as db:
        ns = db.create_namespace("docs", embedding=Counting(), metric="l2")
        ns.sync(records(5))
    with sv.open(path, checkpoint_interval=0) as db:
        with pytest.raises(sv.ModelMismatch, match="count-b@2.0.0.*count-a@1.0.0"):
            db.namespace("docs", embedding=Counting(NEW))
        ns = db.namespace("docs")
        with pytest.raises(sv.InvalidInput, match="no embedding function attached"):
            ns.query_text("record 1 text")
        ns = db.namespace("docs", embedding=Counting())
        q = vector_of("record 1 text", OLD)
        with pytest.raises(sv.ModelMismatch, match="query model 'other@1.0.0'"):
            ns.query(q, k=1, model="other@1.0.0")
        assert ns.query(q, k=1, model=OLD)[0].id == "r1"
        assert ns.query_text("record 1 text", k=1)[0].id == "r1"
        assert [h[0].id for h in ns.query_text(["record 2 text", "record 3 text"], k=1)] == \
            ["r2", "r3"]


def test_a_bad_record_raises_before_its_batch_is_embedded_or_written(db):
    fn = Counting()
    ns = db.create_namespace("docs", embedding=fn, metric="l2")
    bad = records(10) + [{"id": "x", "text": 5}]
    with pytest.raises(sv.InvalidInput, match="record 10 .*text is int"):
        ns.sync(bad)
    assert ns.count() == 0 and fn.texts == []
    cases = (({"text": "t"}, "no 'id'"),
             ({"id": "a", "text": "t", "extra": 1}, "unknown keys"),
             ({"id": "a", "text": "t", "updated_at": "yesterday"}, "updated_at"),
             ({"id": "a", "text": "t", "metadata": [1]}, "metadata"))
    for rec, match in cases:
        with pytest.raises(sv.InvalidInput, match=match):
            ns.sync([rec])
    with pytest.raises(sv.InvalidInput, match="mode"):
        ns.sync([], mode="sometimes")
    assert ns.count() == 0


def test_create_namespace_embedding_dim_must_agree(db):
    with pytest.raises(sv.InvalidInput, match="dim 4 is not the embedding function's dim 8"):
        db.create_namespace("docs", dim=4, embedding=Counting())
    with pytest.raises(sv.InvalidInput, match="has no 'model'"):
        db.create_namespace("docs", embedding=object())


def test_the_handle_behaves_as_the_engine_namespace(db):
    ns = db.create_namespace("plain", dim=4, metric="l2")
    assert isinstance(ns.engine_ns, sv.Namespace)
    ns.upsert(["a", "b"], np.eye(4, dtype=np.float32)[:2], metadata=[{"k": 1}, None])
    assert ns.count() == 2 and ns.ids() == ["a", "b"] and ns.version == 1
    assert ns.query(np.eye(4, dtype=np.float32)[0], k=1)[0].id == "a"
    assert ns.delete(where={"k": 1}) == 1 and ns.count() == 1
    assert "plain" in repr(ns)


def _spawn(*args):
    return subprocess.Popen([sys.executable, CHILD, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)


def _kill_after(proc, lines_wanted):
    seen = []
    for line in proc.stdout:
        seen.append(line.strip())
        if sum(1 for s in seen if s.startswith("batch")) >= lines_wanted:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return seen


def _logged(path):
    with open(path) as f:
        return [line.rstrip("\n") for line in f]


def test_sync_killed_with_kill_9_and_run_again_embeds_only_what_was_not_committed(tmp_path):
    path, log = tmp_path / "db", tmp_path / "embedded.log"
    n, batch = 400, 25
    proc = _spawn("sync", path, log, n, batch)
    seen = _kill_after(proc, 4)
    assert "done" not in seen
    first = _logged(log)
    assert 100 <= len(first) < n
    proc = _spawn("sync", path, log, n, batch)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    every = _logged(log)
    again = every[len(first):]
    # only the batch in flight at the kill can be embedded twice
    assert len(set(first) & set(again)) <= batch
    assert set(every) == {r["text"] for r in records(n)}
    with sv.open(path, checkpoint_interval=0) as db:
        ns = db.namespace("docs", embedding=Counting())
        assert ns.count() == n
        assert ns.sync(records(n)).embedded == 0
