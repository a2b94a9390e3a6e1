"""Size limits (sv.Limits): each raises LimitExceeded naming the row and the limit, writes
nothing, and is an open option rather than a stored setting."""

import msgpack
import numpy as np
import pytest

import simplevector as sv
from simplevector.engine.errors import error_class_for_code

DIM = 4
MIB = 1 << 20


def _open(path, **limits):
    return sv.open(path, checkpoint_interval=0, limits=sv.Limits(**limits) if limits else None)


@pytest.fixture
def ns(db):
    ns = db.create_namespace("lim", dim=DIM)
    ns.upsert(["a"], np.ones((1, DIM)))
    return ns


def _ones(n):
    return np.ones((n, DIM), np.float32)


def _meta_bytes(md):
    return len(msgpack.packb(md, use_bin_type=True))


def assert_limit(db, ns, call, limit, row, *fragments):
    """``call`` raises LimitExceeded for ``limit`` at ``row``; count, LSN and WAL unchanged."""
    before = (db.lsn, ns.count(), db.engine._wal.last_lsn)
    with pytest.raises(sv.LimitExceeded) as info:
        call()
    err = info.value
    assert (err.limit, err.row) == (limit, row)
    message = str(err)
    assert f"{limit}={err.maximum:,}" in message and f"{err.actual:,}" in message
    assert f"sv.Limits({limit}=" in err.hint
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert (db.lsn, ns.count(), db.engine._wal.last_lsn) == before
    return err


def test_limit_exceeded_is_a_typed_invalid_input_with_code_and_status():
    assert issubclass(sv.LimitExceeded, sv.InvalidInput)
    assert (sv.LimitExceeded.code, sv.LimitExceeded.http_status) == ("limit_exceeded", 413)
    assert error_class_for_code("limit_exceeded") is sv.LimitExceeded
    assert "LimitExceeded" in sv.__all__ and "Limits" in sv.__all__


def test_default_limits_are_the_documented_values(db):
    assert sv.Limits() == sv.Limits(max_document_bytes=MIB, max_metadata_bytes=64 << 10,
                                    max_batch_rows=100_000, max_batch_bytes=256 * MIB)
    assert db.limits == sv.Limits()


def test_document_over_the_limit_names_row_and_id_and_writes_nothing(db, ns):
    docs = ["short", "x" * (MIB + 1)]
    err = assert_limit(db, ns, lambda: ns.upsert(["d0", "d1"], _ones(2), documents=docs),
                       "max_document_bytes", 1, "documents[1]", "'d1'")
    assert err.actual == MIB + 1


def test_document_limit_counts_utf8_bytes_not_characters(db, ns):
    doc = "\u00e9" * (MIB // 2 + 1)            # fewer characters than the limit, more bytes
    assert len(doc) < MIB
    err = assert_limit(db, ns, lambda: ns.upsert(["d0"], _ones(1), documents=[doc]),
                       "max_document_bytes", 0)
    assert err.actual == len(doc.encode("utf-8"))


def test_document_exactly_at_the_limit_is_written(db, ns):
    ns.upsert(["d0", "d1"], _ones(2), documents=["x" * MIB, "\u00e9" * (MIB // 2)])
    assert len(ns.get("d1").document) == MIB // 2


def test_metadata_over_the_limit_names_row_and_id_and_writes_nothing(db, ns):
    big = {"blob": "x" * (64 << 10)}
    metas = [{"ok": 1}, None, big]
    err = assert_limit(db, ns, lambda: ns.upsert(["m0", "m1", 7], _ones(3), metadata=metas),
                       "max_metadata_bytes", 2, "metadata[2]", "id 7")
    assert err.actual == _meta_bytes(big)


def test_metadata_just_under_the_limit_is_written(db, ns):
    pad = (64 << 10) - _meta_bytes({"blob": ""}) - 3     # str8/16 header grows with length
    md = {"blob": "x" * pad}
    assert _meta_bytes(md) <= 64 << 10
    ns.upsert(["m0"], _ones(1), metadata=[md])
    assert ns.get("m0").metadata == md


def test_batch_over_max_batch_rows_names_the_first_row_past_it(db, ns):
    n = 100_001
    ids = list(range(n))
    assert_limit(db, ns, lambda: ns.upsert(ids, np.ones((n, DIM), np.float32)),
                 "max_batch_rows", 100_000, "100,001 rows", "id 100000")


def test_batch_at_max_batch_rows_is_written(tmp_path):
    with _open(tmp_path / "db", max_batch_rows=3) as db:
        ns = db.create_namespace("lim", dim=DIM)
        ns.upsert([1, 2, 3], _ones(3))
        assert_limit(db, ns, lambda: ns.upsert([4, 5, 6, 7], _ones(4)), "max_batch_rows", 3)
        assert ns.count() == 3


def test_batch_bytes_count_vectors_metadata_and_documents(tmp_path):
    # each row: 16 vector bytes + a 10-byte document; a 3-byte metadata on row 1
    md = {"k": 1}
    limit = 16 * 3 + 10 * 3 + _meta_bytes(md)
    with _open(tmp_path / "db", max_batch_bytes=limit) as db:
        ns = db.create_namespace("lim", dim=DIM)
        docs = ["0123456789"] * 3
        metas = [None, md, None]
        ns.upsert(["r0", "r1", "r2"], _ones(3), metadata=metas, documents=docs)   # exactly
        err = assert_limit(
            db, ns, lambda: ns.upsert(["r0", "r1", "r2"], _ones(3), metadata=metas,
                                      documents=docs[:2] + ["0123456789!"]),
            "max_batch_bytes", 2, "'r2'", "vectors + metadata + documents")
        assert err.actual == limit + 1
        assert ns.count() == 3


def test_batch_bytes_name_the_row_where_the_total_crosses_the_limit(tmp_path):
    with _open(tmp_path / "db", max_batch_bytes=16 * 10) as db:
        ns = db.create_namespace("lim", dim=DIM)
        assert_limit(db, ns, lambda: ns.upsert(list(range(25)), _ones(25)),
                     "max_batch_bytes", 10, "id 10")


def test_custom_limits_lower_and_raise_the_thresholds(tmp_path):
    with _open(tmp_path / "low", max_document_bytes=8, max_metadata_bytes=8) as db:
        ns = db.create_namespace("lim", dim=DIM)
        ns.upsert(["a"], _ones(1), documents=["8 bytes!"], metadata=[{"k": 1}])
        assert_limit(db, ns, lambda: ns.upsert(["b"], _ones(1), documents=["9 bytes!!"]),
                     "max_document_bytes", 0)
        assert_limit(db, ns, lambda: ns.upsert(["b"], _ones(1), metadata=[{"key": "val"}]),
                     "max_metadata_bytes", 0)
    with _open(tmp_path / "high", max_document_bytes=4 * MIB,
               max_metadata_bytes=MIB) as db:
        ns = db.create_namespace("lim", dim=DIM)
        ns.upsert(["a"], _ones(1), documents=["x" * (2 * MIB)],
                  metadata=[{"blob": "y" * (512 << 10)}])
        assert len(ns.get("a").document) == 2 * MIB


@pytest.mark.parametrize("field", ["max_document_bytes", "max_metadata_bytes",
                                   "max_batch_rows", "max_batch_bytes"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5, "10", None, np.int64(0)])
def test_bad_limit_values_raise_invalid_input_naming_the_field(field, value):
    with pytest.raises(sv.InvalidInput) as info:
        sv.Limits(**{field: value})
    assert f"Limits.{field}" in str(info.value) and "int >= 1" in str(info.value)


def test_numpy_ints_are_accepted_as_limits():
    assert sv.Limits(max_batch_rows=np.int64(5)).max_batch_rows == 5


@pytest.mark.parametrize("limits", [{"max_batch_rows": 3}, 1000, "default"])
def test_limits_of_the_wrong_type_raise_before_anything_is_created(tmp_path, limits):
    path = tmp_path / "db"
    with pytest.raises(sv.InvalidInput, match="expected a simplevector.Limits"):
        sv.open(path, limits=limits)
    assert not path.exists()


def test_limits_are_an_open_option_not_stored(tmp_path):
    path = tmp_path / "db"
    with _open(path, max_document_bytes=4) as db:
        ns = db.create_namespace("lim", dim=DIM)
        ns.upsert(["a"], _ones(1), documents=["tiny"])
        assert_limit(db, ns, lambda: ns.upsert(["b"], _ones(1), documents=["larger"]),
                     "max_document_bytes", 0)
    with _open(path) as db:                     # defaults again: the larger document fits
        assert db.limits == sv.Limits()
        db.namespace("lim").upsert(["b"], _ones(1), documents=["larger"])
    with _open(path, max_document_bytes=2) as db:   # lowering never hides rows already written
        ns = db.namespace("lim")
        assert [r.document for r in ns.get(["a", "b"])] == ["tiny", "larger"]


def test_document_with_a_lone_surrogate_is_invalid_input_and_writes_nothing(db, ns):
    before = (db.lsn, ns.count())
    with pytest.raises(sv.InvalidInput, match=r"documents\[1\].*not valid UTF-8"):
        ns.upsert(["s0", "s1"], _ones(2), documents=["fine", "bad \ud800"])
    with pytest.raises(sv.InvalidInput, match=r"metadata\[0\] cannot be encoded"):
        ns.upsert(["s0"], _ones(1), metadata=[{"k": "bad \ud800"}])
    assert (db.lsn, ns.count()) == before
