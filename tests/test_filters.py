"""Metadata filters: the parser, the reference evaluator and the bitmap FieldIndex."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simplevector.engine.errors import FilterError, InvalidInput
from simplevector.engine.fieldindex import FieldIndex
from simplevector.engine.filters import (
    And,
    Field,
    Not,
    Or,
    compile_filter,
    fields_of,
    matches,
)

# --------------------------------------------------------------------------- helpers


def build(rows, merge_threshold=None):
    index = FieldIndex(merge_threshold=merge_threshold)
    for pos, md in enumerate(rows):
        index.add(pos, md)
    return index


def reference(where, rows, alive=None):
    node = compile_filter(where)
    alive = [True] * len(rows) if alive is None else list(alive)
    return np.array([bool(a) and matches(node, md) for a, md in zip(alive, rows)], dtype=bool)


# merge thresholds that drive the numeric index through its three states: rebuilt on every
# query (0), a built base plus a pending delta (2), and never built, pending only (10**9).
THRESHOLDS = (0, 2, 10**9)


def hits(where, rows, alive=None):
    """Matching positions, checked equal across index states and against the reference."""
    alive_arr = None if alive is None else np.asarray(alive, dtype=bool)
    node = compile_filter(where)
    want = [int(i) for i in np.flatnonzero(reference(where, rows, alive))]
    for threshold in THRESHOLDS:
        index = build(rows, threshold)
        index.evaluate(node, len(rows), alive_arr)  # the first query may rebuild
        got = [int(i) for i in np.flatnonzero(index.evaluate(node, len(rows), alive_arr))]
        assert got == want, (threshold, got, want)
    return want


# --------------------------------------------------------------------------- strategies

SCALARS = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([1.0, 2.5, -0.0, 0.5, -1.5, 2**53, 2**53 + 1, float(2**53)]),
    st.booleans(),
    st.sampled_from(["x", "y", "1", ""]),
    st.none(),
)
VALUES = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.fixed_dictionaries({}, optional={"x": SCALARS, "y": st.lists(SCALARS, max_size=2)}),
)
METADATA = st.one_of(
    st.none(),
    st.dictionaries(st.sampled_from(["a", "b", "tags", "n"]), VALUES, max_size=4),
)
FIELDS = st.sampled_from(["a", "b", "tags", "n", "n.x", "n.y", "missing", "a.x"])
NUMBERS = st.one_of(
    st.integers(-4, 4), st.sampled_from([0.5, 1.0, 2.5, -1.5, 2**53, 2**53 + 1, 2.0**53])
)


@st.composite
def leaf(draw):
    field = draw(FIELDS)
    op = draw(st.sampled_from(
        ["short", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists"]
    ))
    if op == "short":
        return {field: draw(SCALARS)}
    if op in ("$eq", "$ne"):
        operand = draw(SCALARS)
    elif op in ("$in", "$nin"):
        operand = draw(st.lists(SCALARS, min_size=1, max_size=3))
    elif op == "$exists":
        operand = draw(st.booleans())
    else:
        operand = draw(NUMBERS)
    return {field: {op: operand}}


def _combine(children):
    return st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda fs: {"$and": fs}),
        st.lists(children, min_size=1, max_size=3).map(lambda fs: {"$or": fs}),
        children.map(lambda f: {"$not": f}),
        st.tuples(leaf(), leaf()).map(_merge_keys),
    )


def _merge_keys(pair):
    """Two leaves in one dict (implicit AND) when their keys differ."""
    merged = dict(pair[0])
    for key, value in pair[1].items():
        if key in merged and isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


FILTERS = st.recursive(leaf(), _combine, max_leaves=6)

# leaves on every field checked after each write, so stale index state cannot hide
BATTERY = [
    compile_filter(where)
    for field in ("a", "b", "tags", "n", "n.x", "n.y")
    for where in (
        {field: {"$exists": True}},
        {field: {"$gte": 0}},
        {field: {"$lt": 1}},
        {field: {"$in": [1, "x", None, True]}},
    )
]


# --------------------------------------------------------------------------- property


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    rows=st.lists(METADATA, min_size=1, max_size=14),
    filters=st.lists(FILTERS, min_size=1, max_size=4),
    writes=st.lists(st.tuples(st.integers(0, 13), METADATA, st.booleans()), max_size=8),
    alive_bits=st.lists(st.booleans(), min_size=14, max_size=14),
)
def test_index_evaluate_equals_reference_after_random_writes(rows, filters, writes, alive_bits):
    n = len(rows)
    rows = list(rows)
    alive = np.array(alive_bits[:n], dtype=bool)
    indexes = [build(rows, threshold) for threshold in (*THRESHOLDS, None)]
    nodes = [compile_filter(f) for f in filters] + BATTERY

    def check():
        for node in nodes:
            want = np.array([alive[i] and matches(node, rows[i]) for i in range(n)])
            for index in indexes:
                got = index.evaluate(node, n, alive)
                assert got.dtype == bool and got.shape == (n,)
                np.testing.assert_array_equal(got, want, err_msg=repr(node))
                assert index.count(node, n, alive) == int(want.sum())

    check()
    for pos, new_md, readd in writes:
        pos %= n
        if rows[pos] is _REMOVED:
            continue
        for index in indexes:
            index.remove(pos, rows[pos])
            if readd:
                index.add(pos, new_md)
        if readd:
            rows[pos] = new_md
        else:
            rows[pos] = _REMOVED
            alive[pos] = False
        check()


class _Removed(dict):
    """Metadata placeholder for a removed row (never alive, so never compared)."""


_REMOVED = _Removed()


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "where, fragments",
    [
        ("lang", ["must be a dict", "str", "at where"]),
        ([{"a": 1}], ["must be a dict", "list"]),
        ({"": 1}, ["empty field name", "at where"]),
        ({"a..b": 1}, ["empty segment", "where['a..b']"]),
        ({".a": 1}, ["empty segment", "where['.a']"]),
        ({"$regex": "x"}, ["unknown operator '$regex'", "at where", "$and"]),
        ({"$eq": 1}, ["'$eq' needs a field", "at where"]),
        ({"lang": {"$regex": "e."}}, ["unknown operator '$regex'", "where['lang']", "$eq, $ne"]),
        ({"lang": {"$eq": "en", "sub": 1}}, ["non-operator key 'sub'", "where['lang']"]),
        ({"lang": {}}, ["empty operator dict", "where['lang']"]),
        ({"x": {"$eq": float("nan")}}, ["finite", "nan", "where['x']"]),
        ({"x": {"$gt": float("inf")}}, ["finite", "inf", "where['x']"]),
        ({"x": float("nan")}, ["finite", "where['x']"]),
        ({"x": {"$in": [1.0, float("-inf")]}}, ["finite", "where['x']"]),
        ({"x": {"$gt": "a"}}, ["$gt expects an int or float", "str", "where['x']"]),
        ({"x": {"$lte": True}}, ["$lte expects an int or float", "bool", "where['x']"]),
        ({"x": {"$lt": None}}, ["$lt expects an int or float", "None", "where['x']"]),
        ({"x": {"$gte": [1]}}, ["$gte expects an int or float", "list", "where['x']"]),
        ({"tags": {"$in": 5}}, ["$in expects a non-empty list of scalars, got 5 at where['tags']"]),
        ({"tags": {"$nin": []}}, ["$nin expects a non-empty list", "where['tags']"]),
        ({"tags": {"$in": ["a", ["b"]]}}, ["$in expects", "['b']", "where['tags']"]),
        ({"tags": {"$in": "abc"}}, ["$in expects", "'abc'", "where['tags']"]),
        ({"x": {"$exists": 1}}, ["$exists expects true or false", "where['x']"]),
        ({"x": {"$eq": [1, 2]}}, ["$eq expects a scalar", "list", "where['x']"]),
        ({"x": {"$ne": {"a": 1}}}, ["$ne expects a scalar", "dict", "where['x']"]),
        ({"x": [1, 2]}, ["shorthand equality expects a scalar", "where['x']"]),
        ({"$and": []}, ["$and expects a non-empty list", "where['$and']"]),
        ({"$or": {"a": 1}}, ["$or expects a non-empty list", "where['$or']"]),
        ({"$and": [{"a": 1}, "b"]}, ["must be a dict", "where['$and'][1]"]),
        ({"$not": [{"a": 1}]}, ["$not expects a filter dict", "where['$not']"]),
        (
            {"$or": [{"a": 1}, {"b": {"$in": 3}}]},
            ["$in expects", "where['$or'][1]['b']"],
        ),
        ({"$not": {"a": {"$foo": 1}}}, ["unknown operator '$foo'", "where['$not']['a']"]),
        ({1: "a"}, ["filter keys must be strings", "1"]),
    ],
)
def test_compile_filter_error_names_offending_part(where, fragments):
    with pytest.raises(FilterError) as info:
        compile_filter(where)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert info.value.code == "filter_error"


def test_filter_error_is_an_invalid_input_value_error():
    with pytest.raises(ValueError):
        compile_filter({"x": {"$gt": "a"}})
    with pytest.raises(InvalidInput):
        compile_filter({"x": {"$gt": "a"}})


# --------------------------------------------------------------------------- compile


def test_shorthand_equals_explicit_eq():
    assert compile_filter({"lang": "en"}) == compile_filter({"lang": {"$eq": "en"}})
    assert compile_filter({"lang": "en"}) == Field(("lang",), "$eq", "en")


def test_several_keys_compile_to_implicit_and():
    node = compile_filter({"a": 1, "b": {"$gt": 2, "$lt": 5}})
    assert node == And(
        (Field(("a",), "$eq", 1), Field(("b",), "$gt", 2), Field(("b",), "$lt", 5))
    )


def test_compiled_tree_is_immutable():
    node = compile_filter({"$or": [{"a": 1}, {"$not": {"b": 2}}]})
    assert isinstance(node, Or) and isinstance(node.children[1], Not)
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.children = ()
    assert isinstance(node.children, tuple)
    assert hash(node) == hash(compile_filter({"$or": [{"a": 1}, {"$not": {"b": 2}}]}))


def test_in_operand_is_stored_as_tuple():
    assert compile_filter({"t": {"$in": ["a", "b"]}}).value == ("a", "b")


def test_numpy_scalar_operands_become_python_values():
    node = compile_filter({"x": {"$gte": np.int64(3)}, "y": np.float32(0.5)})
    assert type(node.children[0].value) is int and node.children[1].value == 0.5


def test_fields_of_lists_every_dotted_path():
    node = compile_filter(
        {"a": 1, "$or": [{"b.c": {"$exists": True}}, {"$not": {"d": {"$in": [1]}}}]}
    )
    assert fields_of(node) == {"a", "b.c", "d"}


def test_empty_filter_matches_every_alive_row():
    rows = [{"a": 1}, None, {}]
    assert hits({}, rows, alive=[True, False, True]) == [0, 2]
    assert matches(compile_filter({}), None)


# --------------------------------------------------------------------------- values


ROWS_NUMERIC = [{"v": 1}, {"v": 1.0}, {"v": True}, {"v": "1"}, {"v": 1.5}, {"v": False}, {}]


def test_int_and_float_are_equal():
    assert hits({"v": 1}, ROWS_NUMERIC) == [0, 1]
    assert hits({"v": 1.0}, ROWS_NUMERIC) == [0, 1]
    assert hits({"v": {"$in": [1.0]}}, ROWS_NUMERIC) == [0, 1]


def test_bool_is_not_a_number():
    assert hits({"v": True}, ROWS_NUMERIC) == [2]
    assert hits({"v": False}, ROWS_NUMERIC) == [5]
    assert hits({"v": 0}, ROWS_NUMERIC) == []
    assert hits({"v": {"$gte": 0}}, ROWS_NUMERIC) == [0, 1, 4]


def test_string_one_is_not_number_one():
    assert hits({"v": "1"}, ROWS_NUMERIC) == [3]


def test_ranges_match_only_numeric_values():
    assert hits({"v": {"$gt": 1}}, ROWS_NUMERIC) == [4]
    assert hits({"v": {"$lte": 1}}, ROWS_NUMERIC) == [0, 1]
    assert hits({"v": {"$lt": 1}}, ROWS_NUMERIC) == []


def test_none_is_a_value_distinct_from_missing():
    rows = [{"x": None}, {}, {"x": 0}, None]
    assert hits({"x": None}, rows) == [0]
    assert hits({"x": {"$exists": True}}, rows) == [0, 2]
    assert hits({"x": {"$exists": False}}, rows) == [1, 3]
    assert hits({"x": {"$ne": None}}, rows) == [1, 2, 3]


def test_large_ints_compare_exactly_beyond_float_precision():
    big = 2**53
    rows = [{"v": big}, {"v": big + 1}, {"v": float(big)}, {"v": 10**400}]
    assert hits({"v": big + 1}, rows) == [1]
    assert hits({"v": {"$gt": big}}, rows) == [1, 3]
    assert hits({"v": {"$gte": big + 1}}, rows) == [1, 3]
    assert hits({"v": {"$lt": big + 1}}, rows) == [0, 2]
    assert hits({"v": {"$lte": float(big)}}, rows) == [0, 2]
    assert hits({"v": {"$gt": 10**399}}, rows) == [3]


def test_large_ints_compare_exactly_after_a_checkpoint_of_the_field_index():
    """The same comparisons from the checkpointed arrays (to_arrays / load_arrays keep the
    exact values of ints float64 cannot hold), with list values mixing them with floats."""
    big = 2**53
    rows = [{"v": big}, {"v": [big + 1, 0.5]}, {"v": float(big)}, {"v": 10**400}, {"v": 7}]
    fresh = build(rows)
    meta, arrays = fresh.to_arrays(len(rows), np.ones(len(rows), bool))
    assert meta["inexact"]
    loaded = FieldIndex()
    loaded.load_arrays(meta, arrays, len(rows))
    for where, want in (({"v": big + 1}, [1]), ({"v": {"$gt": big}}, [1, 3]),
                        ({"v": {"$gte": big + 1}}, [1, 3]), ({"v": {"$lt": big + 1}}, [0, 1, 2, 4]),
                        ({"v": {"$lte": float(big)}}, [0, 1, 2, 4]), ({"v": {"$gt": 10**399}}, [3]),
                        ({"v": {"$lt": 1}}, [1])):
        for index in (fresh, loaded):
            got = np.flatnonzero(index.evaluate(compile_filter(where), len(rows))).tolist()
            assert got == want, (where, got)
    exact = build([{"v": 1}, {"v": 2.5}]).to_arrays(2, np.ones(2, bool))[0]
    assert not exact["inexact"]


def test_stored_nan_never_matches():
    rows = [{"v": float("nan")}, {"v": 1.0}]
    assert hits({"v": {"$gte": -(10**9)}}, rows) == [1]
    assert hits({"v": {"$ne": 1.0}}, rows) == [0]
    assert hits({"v": {"$exists": True}}, rows) == [0, 1]


# --------------------------------------------------------------------------- lists


LIST_ROWS = [
    {"tags": ["a", "b"]},
    {"tags": "a"},
    {"tags": []},
    {"tags": ["c", 3, 7.5]},
    {},
    {"tags": [["a"], {"x": "a"}]},
]


def test_list_field_eq_matches_any_element():
    assert hits({"tags": "a"}, LIST_ROWS) == [0, 1]
    assert hits({"tags": 3.0}, LIST_ROWS) == [3]


def test_list_field_in_matches_any_element():
    assert hits({"tags": {"$in": ["b", "c"]}}, LIST_ROWS) == [0, 3]


def test_list_field_range_matches_any_numeric_element():
    assert hits({"tags": {"$gt": 5}}, LIST_ROWS) == [3]
    assert hits({"tags": {"$lt": 5}}, LIST_ROWS) == [3]
    assert hits({"tags": {"$gt": 8}}, LIST_ROWS) == []


def test_nested_containers_inside_lists_never_equal_scalars():
    assert 5 not in hits({"tags": "a"}, LIST_ROWS)


def test_list_field_ne_excludes_lists_containing_value():
    assert hits({"tags": {"$ne": "a"}}, LIST_ROWS) == [2, 3, 4, 5]
    assert hits({"tags": {"$nin": ["a", 3]}}, LIST_ROWS) == [2, 4, 5]


def test_empty_list_exists_but_equals_nothing():
    assert 2 in hits({"tags": {"$exists": True}}, LIST_ROWS)
    assert 2 not in hits({"tags": {"$in": ["a", "b", "c", 3]}}, LIST_ROWS)


# --------------------------------------------------------------------------- paths


def test_dotted_path_reads_nested_dicts():
    rows = [{"doc": {"author": {"name": "ann"}}}, {"doc": {"author": "ann"}}, {"doc": 1}]
    assert hits({"doc.author.name": "ann"}, rows) == [0]
    assert hits({"doc.author": "ann"}, rows) == [1]
    assert hits({"doc.author": {"$exists": True}}, rows) == [0, 1]


def test_dotted_path_does_not_reach_literal_dotted_key():
    rows = [{"a.b": 1}, {"a": {"b": 1}}]
    assert hits({"a.b": 1}, rows) == [1]


def test_nested_dict_value_exists_but_equals_nothing():
    rows = [{"a": {"b": 1}}]
    assert hits({"a": {"$exists": True}}, rows) == [0]
    assert hits({"a": {"$ne": 1}}, rows) == [0]
    assert hits({"a": {"$gte": 0}}, rows) == []


# --------------------------------------------------------------------------- complements


MISSING_ROWS = [{"lang": "en"}, {"lang": "fr"}, {}, None, {"other": 1}]


def test_ne_includes_rows_missing_the_field():
    assert hits({"lang": {"$ne": "en"}}, MISSING_ROWS) == [1, 2, 3, 4]


def test_nin_includes_rows_missing_the_field():
    assert hits({"lang": {"$nin": ["en", "fr"]}}, MISSING_ROWS) == [2, 3, 4]


def test_ne_equals_not_eq():
    a = hits({"lang": {"$ne": "en"}}, MISSING_ROWS)
    b = hits({"$not": {"lang": "en"}}, MISSING_ROWS)
    assert a == b


def test_not_complement_stays_within_alive():
    alive = [True, False, True, False, True]
    index = build(MISSING_ROWS)
    got = index.evaluate(compile_filter({"$not": {"lang": "en"}}), 5, np.array(alive))
    assert np.flatnonzero(got).tolist() == [2, 4]
    got = index.evaluate(compile_filter({"lang": {"$nin": ["en"]}}), 5, np.array(alive))
    assert np.flatnonzero(got).tolist() == [2, 4]
    got = index.evaluate(compile_filter({"lang": {"$exists": False}}), 5, np.array(alive))
    assert np.flatnonzero(got).tolist() == [2, 4]


def test_double_not_is_identity_within_alive():
    alive = np.array([True, True, False, True, True])
    index = build(MISSING_ROWS)
    got = index.evaluate(compile_filter({"$not": {"$not": {"lang": "fr"}}}), 5, alive)
    assert np.flatnonzero(got).tolist() == [1]


def test_positive_filter_result_excludes_dead_rows():
    index = build(MISSING_ROWS)
    got = index.evaluate(compile_filter({"lang": "en"}), 5, np.array([False] * 5))
    assert not got.any()


# --------------------------------------------------------------------------- FieldIndex


def test_count_equals_evaluate_sum():
    index = build(MISSING_ROWS)
    node = compile_filter({"lang": {"$exists": True}})
    assert index.count(node, 5, np.ones(5, bool)) == 2


def test_evaluate_accepts_raw_where_dict_and_no_alive():
    index = build(MISSING_ROWS)
    assert np.flatnonzero(index.evaluate({"lang": "fr"}, 5)).tolist() == [1]


def test_evaluate_rejects_alive_of_wrong_length():
    index = build(MISSING_ROWS)
    with pytest.raises(InvalidInput, match=r"shape \(5,\)"):
        index.evaluate(compile_filter({"lang": "fr"}), 5, np.ones(4, bool))


def test_evaluate_ignores_positions_at_or_beyond_n():
    rows = [{"v": 1}, {"v": 2}, {"v": 1}, {"v": 3}]
    index = build(rows)
    assert np.flatnonzero(index.evaluate({"v": 1}, 2)).tolist() == [0]
    assert np.flatnonzero(index.evaluate({"v": {"$gte": 2}}, 2)).tolist() == [1]
    assert index.evaluate({"v": {"$gte": 2}}, 0).shape == (0,)


def test_len_counts_indexed_rows_and_clear_empties():
    index = build([{"a": 1}, None, {}])
    assert len(index) == 3
    index.remove(0, {"a": 1})
    assert len(index) == 2
    index.clear()
    assert len(index) == 0
    assert not index.evaluate({"a": {"$exists": True}}, 3).any()


def test_remove_then_readd_replaces_row_values():
    index = build([{"a": 1, "n": 5}, {"a": 2, "n": 6}])
    index.remove(0, {"a": 1, "n": 5})
    index.add(0, {"a": 2, "n": 7})
    assert np.flatnonzero(index.evaluate({"a": 2}, 2)).tolist() == [0, 1]
    assert np.flatnonzero(index.evaluate({"n": {"$gt": 6}}, 2)).tolist() == [0]
    assert not index.evaluate({"a": 1}, 2).any()
    assert index.fields() == ["a", "n"]


def test_rewrite_without_the_field_leaves_no_stale_entries():
    index = build([{"v": 5, "s": "x"}, {"v": 6, "s": "y"}, {"v": 7}], merge_threshold=2)
    assert index.count({"v": {"$gte": 5}}, 3) == 3  # builds the sorted arrays and caches
    assert index.count({"s": {"$exists": True}}, 3) == 2
    index.remove(0, {"v": 5, "s": "x"})
    index.add(0, {"other": 1})
    assert np.flatnonzero(index.evaluate({"v": {"$gte": 5}}, 3)).tolist() == [1, 2]
    assert np.flatnonzero(index.evaluate({"s": {"$exists": True}}, 3)).tolist() == [1]
    assert np.flatnonzero(index.evaluate({"s": "x"}, 3)).tolist() == []


def test_removing_last_row_of_a_field_drops_the_field():
    index = build([{"a": {"b": 1}}])
    index.remove(0, {"a": {"b": 1}})
    assert index.fields() == []


def test_repeated_query_after_write_sees_the_write():
    index = build([{"lang": "en"}, {"lang": "fr"}])
    node = compile_filter({"lang": "en"})
    assert np.flatnonzero(index.evaluate(node, 3)).tolist() == [0]  # cached
    index.add(2, {"lang": "en"})
    assert np.flatnonzero(index.evaluate(node, 3)).tolist() == [0, 2]


@pytest.mark.parametrize("threshold", [None, 0, 7, 10**9])
def test_many_writes_keep_ranges_consistent_with_lazy_rebuild(threshold):
    rng = np.random.default_rng(7)
    n = 600
    rows = [{"v": int(rng.integers(0, 50)), "w": float(rng.normal())} for _ in range(n)]
    alive = np.ones(n, dtype=bool)
    index = build(rows, threshold)
    queries = [
        compile_filter({"v": {"$gte": 10, "$lt": 30}}),
        compile_filter({"w": {"$gt": 0.0}}),
        compile_filter({"$or": [{"v": {"$lte": 3}}, {"w": {"$lt": -1}}]}),
        compile_filter({"v": {"$ne": 7}}),
    ]
    for step in range(400):
        pos = int(rng.integers(0, n))
        if alive[pos]:
            index.remove(pos, rows[pos])
            if rng.random() < 0.2:
                alive[pos] = False
            else:
                rows[pos] = {"v": int(rng.integers(0, 50)), "w": float(rng.normal())}
                index.add(pos, rows[pos])
        if step % 25 == 0:
            for node in queries:
                want = [bool(alive[i]) and matches(node, rows[i]) for i in range(n)]
                np.testing.assert_array_equal(index.evaluate(node, n, alive), want)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_appends_removals_and_readds_between_queries_keep_the_cached_positions_right(seed):
    """Rows appended at new positions, removed, rewritten in place (the same position
    re-added) and rewritten with list values holding a key twice, with eq / $in / $ne /
    $exists / range queries between the writes, over every row and over a shorter view:
    every answer equals the reference, whether the cached sorted positions took the
    changes in place or were built again."""
    rng = np.random.default_rng(seed)
    rows, alive = [], []
    index = FieldIndex()

    def new_md():
        md = {"c": int(rng.integers(0, 4)), "r": int(rng.integers(0, 100))}
        if rng.random() < 0.3:
            md["t"] = ["x", "x"] if rng.random() < 0.5 else ["x", "y"]
        if rng.random() < 0.2:
            del md["c"]
        return md

    queries = [compile_filter(w) for w in (
        {"c": 1}, {"c": {"$in": [0, 3]}}, {"c": {"$ne": 2}}, {"c": {"$exists": True}},
        {"t": "x"}, {"t": {"$exists": False}}, {"r": {"$lt": 30}}, {"c": 0, "t": "y"})]
    for step in range(600):
        roll = rng.random()
        live = [i for i, a in enumerate(alive) if a]
        if roll < 0.55 or not live:
            rows.append(new_md())
            alive.append(True)
            index.add(len(rows) - 1, rows[-1])
        elif roll < 0.75:
            pos = int(rng.choice(live))
            index.remove(pos, rows[pos])
            alive[pos] = False
        else:                               # rewritten in place
            pos = int(rng.choice(live))
            index.remove(pos, rows[pos])
            rows[pos] = new_md()
            index.add(pos, rows[pos])
        if step % 3 == 0:
            n = len(rows)
            mask = np.array(alive, dtype=bool)
            short = max(0, n - int(rng.integers(1, 40)))    # a view of fewer rows
            for node in queries:
                want = [bool(mask[i]) and matches(node, rows[i]) for i in range(n)]
                np.testing.assert_array_equal(index.evaluate(node, n, mask), want,
                                              err_msg=f"step {step} {node!r}")
                np.testing.assert_array_equal(index.evaluate(node, short, mask[:short]),
                                              want[:short], err_msg=f"step {step} {node!r}")


def test_a_write_between_filtered_queries_does_not_sort_every_position_again(monkeypatch):
    """The cached sorted positions of an equality and an $exists take a write's new and
    removed positions in place: the second query after a write builds nothing."""
    from simplevector.engine import fieldindex as fim
    index = build([{"c": i % 2} for i in range(1000)])
    n = 1000
    eq, exists = compile_filter({"c": 1}), compile_filter({"c": {"$exists": True}})
    index.evaluate(eq, n)
    index.evaluate(exists, n)
    built = []
    real = fim._sorted_positions
    monkeypatch.setattr(fim, "_sorted_positions", lambda p: built.append(1) or real(p))
    index.add(1000, {"c": 1})
    index.remove(3, {"c": 1})
    index.remove(7, {"c": 1})
    index.add(7, {"c": 0})
    n = 1001
    got = np.flatnonzero(index.evaluate(eq, n))
    want = [i for i in range(1000) if i % 2 == 1 and i not in (3, 7)] + [1000]
    assert got.tolist() == want
    assert np.flatnonzero(index.evaluate(exists, n)).tolist() == [i for i in range(1001) if i != 3]
    assert built == []


def test_concurrent_evaluates_agree_with_serial_result():
    rng = np.random.default_rng(3)
    n = 2000
    rows = [{"v": int(rng.integers(0, 100)), "t": str(rng.integers(0, 5))} for _ in range(n)]
    index = build(rows)
    node = compile_filter({"v": {"$gt": 40}, "t": {"$in": ["1", "2"]}})
    expected = np.array([matches(node, md) for md in rows])
    errors = []

    def worker():
        try:
            for _ in range(20):
                if not np.array_equal(index.evaluate(node, n), expected):
                    errors.append("mismatch")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --------------------------------------------------------------------------- reference


def test_matches_with_none_metadata_sees_every_field_missing():
    assert matches(compile_filter({"a": {"$exists": False}}), None)
    assert matches(compile_filter({"a": {"$ne": 1}}), None)
    assert not matches(compile_filter({"a": None}), None)


def test_matches_and_or_not():
    md = {"a": 1, "b": "x"}
    assert matches(compile_filter({"$and": [{"a": 1}, {"b": "x"}]}), md)
    assert matches(compile_filter({"$or": [{"a": 2}, {"b": "x"}]}), md)
    assert not matches(compile_filter({"$not": {"$or": [{"a": 2}, {"b": "x"}]}}), md)


@pytest.mark.parametrize("checkpointed", [False, True])
def test_range_over_a_shorter_view_leaves_out_rows_past_its_end(checkpointed):
    """A query's view may hold fewer rows than the field index has seen (rows written, or a
    checkpoint taken, after the view was captured): a range evaluated for n rows marks only
    positions below n, whether the positions come from the live or the checkpointed
    arrays, and all of them when n covers every position."""
    from simplevector.engine.filters import compile_filter
    index = FieldIndex(merge_threshold=0)
    for pos in range(100):
        index.add(pos, {"v": pos})
    if checkpointed:
        meta, arrays = index.to_arrays(100, np.ones(100, bool))
        index = FieldIndex(merge_threshold=0)
        index.load_arrays(meta, arrays, 100)
    node = compile_filter({"v": {"$gte": 10}})
    assert np.flatnonzero(index.evaluate(node, 50)).tolist() == list(range(10, 50))
    assert np.flatnonzero(index.evaluate(node, 100)).tolist() == list(range(10, 100))
    assert np.flatnonzero(index.evaluate(node, 120)).tolist() == list(range(10, 100))


def test_a_repeated_filter_reuses_its_result_until_the_next_write():
    """evaluate returns the same read-only array for the same filter over the same alive
    array, and a write (add or remove) makes the next evaluation see it."""
    from simplevector.engine.filters import compile_filter
    index = FieldIndex()
    for pos in range(20):
        index.add(pos, {"v": pos, "tag": "a" if pos % 2 else "b"})
    alive = np.ones(30, bool)
    node = compile_filter({"v": {"$lt": 10}, "tag": "a"})
    first = index.evaluate(node, 20, alive[:20])
    view = alive[:20]
    again = index.evaluate(node, 20, view)
    assert np.flatnonzero(first).tolist() == [1, 3, 5, 7, 9]
    assert index.evaluate(node, 20, view) is again and not again.flags.writeable
    assert index.evaluate(compile_filter({"v": {"$lt": 10}, "tag": "a"}), 20, view) is again
    index.add(20, {"v": 5, "tag": "a"})
    grown = np.flatnonzero(index.evaluate(node, 21, alive[:21])).tolist()
    assert grown == [1, 3, 5, 7, 9, 20]
    assert index.evaluate(node, 20, view) is not again       # the write dropped it
    index.remove(3, {"v": 3, "tag": "a"})
    assert np.flatnonzero(index.evaluate(node, 21, alive[:21])).tolist() == [1, 5, 7, 9, 20]
    fresh = index.evaluate(node, 21)
    assert fresh.flags.writeable and index.evaluate(node, 21) is not fresh


def test_a_deleted_row_leaves_a_repeated_filters_matches_in_a_namespace(tmp_path):
    """Through the public API: the same filtered query before and after a delete of a
    checkpointed row (which changes no field index entry) and after an upsert."""
    import simplevector as sv
    db = sv.open(tmp_path / "db")
    ns = db.create_namespace("f", dim=4, metric="l2")
    X = np.eye(4, dtype=np.float32).repeat(5, axis=0) + np.arange(20)[:, None] * 0.01
    ns.upsert(list(range(20)), X, metadata=[{"g": i % 2} for i in range(20)])
    db.checkpoint()
    where = {"g": 1}
    q = X[1]
    before = [h.id for h in ns.query(q, k=20, where=where, include=())]
    assert sorted(before) == list(range(1, 20, 2))
    ns.delete([1])
    after = [h.id for h in ns.query(q, k=20, where=where, include=())]
    assert sorted(after) == list(range(3, 20, 2))
    ns.upsert([100], X[1:2], metadata=[{"g": 1}])
    assert ns.query(q, k=1, where=where, include=())[0].id == 100
    db.close()


def test_the_filter_results_kept_stay_within_their_bounds(monkeypatch):
    """Many distinct filters: at most RESULT_CACHE_ENTRIES results and RESULT_CACHE_BYTES
    bytes are kept, the least recently used dropped first, and a dropped one is evaluated
    again (right) when asked."""
    from simplevector.engine import fieldindex
    from simplevector.engine.filters import compile_filter
    monkeypatch.setattr(fieldindex, "RESULT_CACHE_ENTRIES", 4)
    monkeypatch.setattr(fieldindex, "RESULT_CACHE_BYTES", 4 * 100)
    index = FieldIndex()
    for pos in range(100):
        index.add(pos, {"v": pos})
    alive = np.ones(100, bool)
    nodes = [compile_filter({"v": {"$lt": c}}) for c in range(10)]
    first = index.evaluate(nodes[0], 100, alive)
    for node in nodes[1:4]:
        index.evaluate(node, 100, alive)
    assert index.evaluate(nodes[0], 100, alive) is first          # used again: kept
    for node in nodes[4:]:
        index.evaluate(node, 100, alive)
    assert len(index._results) == 4 and index._results_bytes == 400
    again = index.evaluate(nodes[0], 100, alive)
    assert again is not first and np.array_equal(again, first)
    assert np.flatnonzero(again).tolist() == []                    # v < 0: none
    assert np.flatnonzero(index.evaluate(nodes[9], 100, alive)).tolist() == list(range(9))
