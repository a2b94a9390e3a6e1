"""The validation matrix: every bad input raises its typed error and writes nothing."""

import numpy as np
import pytest

import simplevector as sv

DIM = 4


@pytest.fixture
def ns(db):
    ns = db.create_namespace("val", dim=DIM, metric="cosine")
    ns.upsert(["a", "b", 3], np.eye(DIM)[:3] + 0.1, metadata=[{"g": 1}, {"g": 2}, None])
    return ns


def _snapshot(db, ns):
    return db.lsn, ns.count(), len(list(db.changes())), db.status().logged_lsn


def assert_rejected(db, ns, call, error, *fragments):
    """``call`` raises ``error`` whose message holds every fragment; nothing is written,
    and no LSN is used up (the next good write gets the next LSN)."""
    before = _snapshot(db, ns)
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert _snapshot(db, ns) == before
    return message


def test_rejections_do_not_use_up_lsns(db, ns):
    lsn = db.lsn
    for _ in range(3):
        with pytest.raises(sv.DimensionMismatch):
            ns.upsert(["x"], np.ones((1, DIM + 1)))
    assert ns.upsert(["x"], np.ones((1, DIM))) == lsn + 1


# -- vectors -----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, DIM - 1), (2, DIM + 1), (1, 1)])
def test_upsert_with_wrong_dim_raises_dimension_mismatch_and_writes_nothing(db, ns, shape):
    ids = [f"n{i}" for i in range(shape[0])]
    assert_rejected(db, ns, lambda: ns.upsert(ids, np.ones(shape)), sv.DimensionMismatch,
                    f"dim={DIM}")


@pytest.mark.parametrize("method", ["query", "search"])
def test_ragged_query_vectors_raise_invalid_input_naming_them(ns, method):
    ragged = [[0.1] * DIM, [0.2] * (DIM - 1)]
    with pytest.raises(sv.InvalidInput, match="query vectors"):
        getattr(ns, method)(ragged, k=1)


def test_query_with_wrong_dim_raises_dimension_mismatch(db, ns):
    with pytest.raises(sv.DimensionMismatch):
        ns.query(np.ones(DIM + 2))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_upsert_batch_with_non_finite_value_names_the_row_and_writes_nothing(db, ns, bad):
    X = np.ones((4, DIM))
    X[2, 1] = bad
    assert_rejected(db, ns, lambda: ns.upsert(["n0", "n1", "n2", "n3"], X), sv.InvalidInput,
                    "[2]")


def test_value_outside_float32_range_is_rejected(db, ns):
    X = np.ones((2, DIM))
    X[1, 0] = 1e300
    assert_rejected(db, ns, lambda: ns.upsert(["n0", "n1"], X), sv.InvalidInput, "[1]")


def test_query_with_nan_is_rejected(db, ns):
    with pytest.raises(sv.InvalidInput):
        ns.query([np.nan] * DIM)


def test_zero_vector_under_cosine_names_the_row_and_writes_nothing(db, ns):
    X = np.ones((3, DIM))
    X[1] = 0
    msg = assert_rejected(db, ns, lambda: ns.upsert(["n0", "n1", "n2"], X), sv.InvalidInput,
                          "[1]")
    assert "zero" in msg


def test_zero_vector_is_allowed_under_l2(db):
    ns = db.create_namespace("l2", dim=DIM, metric="l2")
    ns.upsert(["z"], np.zeros((1, DIM)))
    assert ns.query(np.zeros(DIM), k=1)[0].id == "z"


def test_zero_query_under_cosine_is_rejected(ns):
    with pytest.raises(sv.InvalidInput):
        ns.query(np.zeros(DIM))


@pytest.mark.parametrize("vectors", [np.zeros((0, DIM)), [], [["a"] * DIM],
                                     [[1, 2], [1, 2, 3, 4]], np.ones((1, 2, DIM)), None,
                                     np.ones((1, DIM), dtype=bool)])
def test_malformed_vectors_are_rejected_and_write_nothing(db, ns, vectors):
    assert_rejected(db, ns, lambda: ns.upsert(["n0"], vectors), sv.InvalidInput)


# -- ids and batch shape -------------------------------------------------------------------
def test_empty_batch_is_rejected_and_writes_nothing(db, ns):
    assert_rejected(db, ns, lambda: ns.upsert([], np.zeros((0, DIM))), sv.InvalidInput)


def test_more_ids_than_vectors_is_rejected(db, ns):
    assert_rejected(db, ns, lambda: ns.upsert(["n0", "n1", "n2"], np.ones((2, DIM))),
                    sv.InvalidInput, "3", "2")


def test_fewer_ids_than_vectors_is_rejected(db, ns):
    assert_rejected(db, ns, lambda: ns.upsert(["n0"], np.ones((2, DIM))), sv.InvalidInput)


def test_metadata_length_mismatch_is_rejected(db, ns):
    assert_rejected(db, ns, lambda: ns.upsert(["n0", "n1"], np.ones((2, DIM)),
                                              metadata=[{"g": 1}]), sv.InvalidInput, "metadata")


def test_documents_length_mismatch_is_rejected(db, ns):
    assert_rejected(db, ns, lambda: ns.upsert(["n0", "n1"], np.ones((2, DIM)),
                                              documents=["x", "y", "z"]),
                    sv.InvalidInput, "documents")


def test_non_str_document_is_rejected(db, ns):
    assert_rejected(db, ns, lambda: ns.upsert(["n0"], np.ones((1, DIM)), documents=[b"x"]),
                    sv.InvalidInput, "documents[0]")


def test_duplicate_ids_in_one_batch_are_rejected(db, ns):
    assert_rejected(db, ns, lambda: ns.upsert(["n0", "n1", "n0"], np.ones((3, DIM))),
                    sv.InvalidInput, "'n0'")


def test_int_and_str_forms_of_one_id_are_not_duplicates(db, ns):
    ns.upsert([7, "7"], np.ones((2, DIM)))
    assert ns.count() == 5


@pytest.mark.parametrize("bad_id", [True, False, np.bool_(True)])
def test_bool_ids_are_rejected(db, ns, bad_id):
    assert_rejected(db, ns, lambda: ns.upsert(["n0", bad_id], np.ones((2, DIM))),
                    sv.InvalidInput, "ids[1]")


@pytest.mark.parametrize("bad_id", ["", 1.5, None, b"x", (1,), 1 << 70])
def test_ids_that_are_not_str_or_int64_are_rejected(db, ns, bad_id):
    assert_rejected(db, ns, lambda: ns.upsert([bad_id], np.ones((1, DIM))), sv.InvalidInput)


def test_bool_ids_are_rejected_by_get_and_delete(db, ns):
    with pytest.raises(sv.InvalidInput):
        ns.get([True])
    assert_rejected(db, ns, lambda: ns.delete([True]), sv.InvalidInput)


def test_delete_without_ids_or_where_is_rejected(db, ns):
    assert_rejected(db, ns, lambda: ns.delete(), sv.InvalidInput)


# -- metadata ------------------------------------------------------------------------------------
@pytest.mark.parametrize("md", [{1: "x"}, {("t",): 1}, {None: 1}, {"ok": {2: 3}}])
def test_non_str_metadata_keys_are_rejected(db, ns, md):
    assert_rejected(db, ns, lambda: ns.upsert(["n0", "n1"], np.ones((2, DIM)),
                                              metadata=[None, md]), sv.InvalidInput,
                    "metadata[1]")


@pytest.mark.parametrize("value", [{1, 2}, b"bytes", object(), 1 + 2j, float("nan"),
                                   [1, {3}], {"deep": b"x"}])
def test_metadata_values_that_are_not_json_like_are_rejected(db, ns, value):
    assert_rejected(db, ns, lambda: ns.upsert(["n0"], np.ones((1, DIM)),
                                              metadata=[{"v": value}]), sv.InvalidInput,
                    "metadata[0]")


@pytest.mark.parametrize("metadata", [{"g": 1}, "x", [1]])
def test_metadata_that_is_not_a_list_of_dicts_is_rejected(db, ns, metadata):
    assert_rejected(db, ns, lambda: ns.upsert(["n0"], np.ones((1, DIM)), metadata=metadata),
                    sv.InvalidInput)


def test_metadata_with_numpy_scalars_and_tuples_is_stored_as_plain_values(db, ns):
    ns.upsert(["n0"], np.ones((1, DIM)), metadata=[{"i": np.int64(3), "t": (1, 2)}])
    assert ns.get("n0").metadata == {"i": 3, "t": [1, 2]}


# -- query arguments -------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [0, -1, 1.5, "3", True, None, 10**9])
def test_invalid_k_is_rejected(ns, k):
    with pytest.raises(sv.InvalidInput) as info:
        ns.query(np.ones(DIM), k=k)
    assert "k" in str(info.value)


@pytest.mark.parametrize("include", [("metadata", "vector"), ["distances"], "embeddings", 5])
def test_unknown_include_is_rejected(ns, include):
    with pytest.raises(sv.InvalidInput):
        ns.query(np.ones(DIM), include=include)
    with pytest.raises(sv.InvalidInput):
        ns.get(["a"], include=include)


@pytest.mark.parametrize("where,fragment", [
    ({"$foo": 1}, "$foo"),
    ({"g": {"$bogus": 1}}, "$bogus"),
    ({"g": {"$gt": "x"}}, "$gt"),
    ({"g": {"$in": 5}}, "$in"),
    ({"$and": []}, "$and"),
    ({"$or": {"g": 1}}, "$or"),
    ({"$not": [1]}, "$not"),
    ({"g": {"$exists": "yes"}}, "$exists"),
    ({"g": {"$lt": float("nan")}}, "$lt"),
    ("g == 1", "g == 1"),
])
def test_bad_filters_raise_filter_error_naming_the_offending_part(db, ns, where, fragment):
    with pytest.raises(sv.FilterError) as info:
        ns.query(np.ones(DIM), where=where)
    assert fragment in str(info.value)
    assert_rejected(db, ns, lambda: ns.delete(where=where), sv.FilterError, fragment)


def test_filter_error_is_an_invalid_input(ns):
    with pytest.raises(sv.InvalidInput):
        ns.query(np.ones(DIM), where={"$nope": []})


# -- namespaces ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["", "a b", "-x", "_x", "x/y", "é", "x" * 200, 123, None])
def test_bad_namespace_name_is_rejected(db, name):
    before = db.lsn
    with pytest.raises(sv.InvalidInput):
        db.create_namespace(name, dim=DIM)
    with pytest.raises(sv.InvalidInput):
        db.namespace(name)
    assert db.lsn == before and db.list_namespaces() == []


@pytest.mark.parametrize("model", ["minilm", "minilm@1", "minilm@1.0", "@1.0.0", "m@v1.0.0",
                                   "m@01.0.0", 5])
def test_bad_model_string_is_rejected(db, model):
    with pytest.raises(sv.InvalidInput) as info:
        db.create_namespace("m", dim=DIM, model=model)
    assert "model" in str(info.value)
    assert db.list_namespaces() == []


def test_good_model_strings_are_accepted(db):
    assert db.create_namespace("m1", dim=2, model="all-MiniLM-L6-v2@1.0.0").model == \
        "all-MiniLM-L6-v2@1.0.0"
    assert db.create_namespace("m2", dim=2, model="org/model@2.10.3-rc.1").model == \
        "org/model@2.10.3-rc.1"


@pytest.mark.parametrize("metric", ["hamming", "", None, 3])
def test_unknown_metric_is_rejected(db, metric):
    with pytest.raises(sv.InvalidInput):
        db.create_namespace("m", dim=DIM, metric=metric)
    assert db.list_namespaces() == []


@pytest.mark.parametrize("dim", [0, -3, 1.0, "4", True, None, 10**7])
def test_invalid_dim_is_rejected(db, dim):
    with pytest.raises(sv.InvalidInput):
        db.create_namespace("m", dim=dim)
    assert db.list_namespaces() == []


def test_creating_an_existing_namespace_raises_namespace_exists(db, ns):
    before = db.lsn
    with pytest.raises(sv.NamespaceExists) as info:
        db.create_namespace("val", dim=DIM)
    assert "val" in str(info.value)
    assert db.lsn == before
    assert db.namespace("val").count() == 3


def test_unknown_namespace_raises_namespace_not_found(db):
    with pytest.raises(sv.NamespaceNotFound):
        db.namespace("ghost")
    with pytest.raises(sv.NamespaceNotFound):
        db.drop_namespace("ghost")
    with pytest.raises(sv.NamespaceNotFound):
        db.create_version("ghost")
    with pytest.raises(sv.NamespaceNotFound):
        db.promote("ghost", 1)
    assert db.lsn == 0


def test_unknown_version_raises_namespace_not_found(db, ns):
    with pytest.raises(sv.NamespaceNotFound):
        db.namespace("val", version=9)
    with pytest.raises(sv.NamespaceNotFound):
        db.promote("val", 9)


@pytest.mark.parametrize("version", [0, -1, "1", 1.0, True])
def test_invalid_version_number_is_rejected(db, ns, version):
    with pytest.raises(sv.InvalidInput):
        db.namespace("val", version=version)


def test_dropping_the_live_version_alone_is_refused(db, ns):
    db.create_version("val")
    before = db.lsn
    with pytest.raises(sv.InvalidInput) as info:
        db.drop_namespace("val", version=1)
    assert "live" in str(info.value)
    assert db.lsn == before
    assert db.namespace("val").count() == 3
    assert [v.version for v in db.list_namespaces()[0].versions] == [1, 2]


def test_handle_on_dropped_namespace_raises_namespace_not_found(db, ns):
    db.drop_namespace("val")
    with pytest.raises(sv.NamespaceNotFound):
        ns.upsert(["n0"], np.ones((1, DIM)))
    with pytest.raises(sv.NamespaceNotFound):
        ns.query(np.ones(DIM))


@pytest.mark.parametrize("kwargs", [{"durability": "fast"}, {"checkpoint_interval": -1},
                                    {"checkpoint_interval": "1"}])
def test_open_with_invalid_arguments_is_rejected(tmp_path, kwargs):
    with pytest.raises(sv.InvalidInput):
        sv.open(tmp_path / "db", **kwargs)
    with sv.open(tmp_path / "db", checkpoint_interval=0) as db:     # nothing was left locked
        assert db.lsn == 0


def test_every_error_derives_from_simplevector_error():
    for cls in (sv.InvalidInput, sv.DimensionMismatch, sv.NamespaceNotFound, sv.NamespaceExists,
                sv.FilterError, sv.ReadOnlyError, sv.StorageError, sv.LockedError,
                sv.CorruptionError, sv.ClosedError, sv.ChangeFeedGap, sv.FormatVersionError):
        assert issubclass(cls, sv.SimpleVectorError)
    assert issubclass(sv.LockedError, sv.StorageError)
    assert issubclass(sv.DimensionMismatch, sv.InvalidInput)
