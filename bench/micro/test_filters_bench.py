"""Micro-benchmarks of the filter bitmap: FieldIndex.evaluate against a numpy column scan.

The test suite runs these once with --benchmark-disable, so they also check that the two
agree; `python -m pytest bench/micro -q --benchmark-enable --benchmark-only` times them.
"""

import numpy as np
import pytest

from simplevector.engine.fieldindex import FieldIndex
from simplevector.engine.filters import compile_filter

N = 100_000


@pytest.fixture(scope="module")
def indexed():
    rng = np.random.default_rng(0)
    lang = rng.choice(np.array(["en", "de", "fr", "es"]), N)
    year = rng.integers(1990, 2025, N)
    index = FieldIndex()
    for pos in range(N):
        index.add(pos, {"lang": str(lang[pos]), "year": int(year[pos])})
    alive = np.ones(N, bool)
    return index, alive, lang, year


EQ = {"lang": "de"}
RANGE = {"year": {"$gte": 2010, "$lt": 2015}}
BOTH = {"$and": [EQ, RANGE]}


@pytest.mark.parametrize("where", [EQ, RANGE, BOTH], ids=["eq", "range", "and"])
def test_bench_filter_bitmap_fieldindex(benchmark, indexed, where):
    index, alive, lang, year = indexed
    node = compile_filter(where)
    index.evaluate(node, N, alive)            # builds the lazy arrays once
    got = benchmark(index.evaluate, node, N, alive)
    expected = np.ones(N, bool)
    if "lang" in str(where):
        expected &= lang == "de"
    if "year" in str(where):
        expected &= (year >= 2010) & (year < 2015)
    assert np.array_equal(got, expected)


def test_bench_filter_bitmap_numpy_column_scan(benchmark, indexed):
    """The baseline: the same equality filter as a numpy compare over a ready column."""
    _, _, lang, _ = indexed
    benchmark(lambda: lang == "de")
