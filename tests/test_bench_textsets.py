"""bench/textsets.py without torch: the 768-d spectral stand-in (cheap), the WordNet corpus
reader on a tiny fake data directory, and the minilm cache (a pre-seeded cache file stands
in for the model, so the default test path never imports sentence-transformers)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

try:
    from bench import datasets, textsets
except ImportError:  # bench/ is not an installed package; it lives at the repository root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench import datasets, textsets


def test_spectral_rows_are_unit_length_with_the_documented_decay():
    X = textsets.spectral_rows(4000, 96, 0, clusters=50)
    assert X.shape == (4000, 96) and X.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(X, axis=1), 1.0, atol=1e-5)
    a = textsets.spectrum_decay(X, first=2, last=40)
    assert abs(a - textsets.MINILM_DECAY) < 0.25, a


def test_spectral_dataset_queries_are_separate_draws_from_the_same_distribution():
    ds = datasets.load("spectral:n=3000,dim=64,queries=50,clusters=20")
    assert ds.metric == "cosine" and ds.base.shape == (3000, 64) and ds.queries.shape == (50, 64)
    assert not (ds.base[:, None, :] == ds.queries[None, :, :]).all(-1).any()
    # both share centres and rotation: each query's nearest row is close
    assert float((ds.queries @ ds.base.T).max(1).mean()) > 0.5
    again = datasets.load("spectral:n=3000,dim=64,queries=50,clusters=20")
    np.testing.assert_array_equal(ds.base, again.base)


FAKE = ('  1 licence line\n'
        '00001740 03 n 01 entity 0 000 | that which is perceived or known; "a quoted example"\n'
        '00001930 03 n 01 thing 0 000 | a separate and self-contained entity  \n'
        '00001931 03 n 01 dup 0 000 | a separate and self-contained entity  \n'
        '00001932 03 n 01 tiny 0 000 | short\n')


@pytest.fixture
def wordnet(tmp_path, monkeypatch):
    d = tmp_path / "wn"
    d.mkdir()
    for part in textsets.WORDNET_PARTS:
        (d / f"data.{part}").write_text(FAKE if part == "noun" else "")
    monkeypatch.setenv("SIMPLEVECTOR_WORDNET_DIR", str(d))
    monkeypatch.setenv("SIMPLEVECTOR_BENCH_CACHE", str(tmp_path / "cache"))
    return d


def test_wordnet_texts_are_distinct_definitions_and_examples(wordnet):
    texts = textsets.wordnet_texts()
    assert sorted(texts) == sorted(["that which is perceived or known", "a quoted example",
                                    "a separate and self-contained entity"])
    assert textsets.wordnet_texts() == texts              # a fixed order


def test_minilm_reads_a_cached_prefix_without_the_model(wordnet, tmp_path):
    texts = textsets.wordnet_texts()
    root = tmp_path / "cache" / "minilm"
    root.mkdir(parents=True)
    X = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    stem = f"wordnet-{textsets.MODEL_NAME}-s0-{textsets._digest(texts)}"
    np.save(root / f"{stem}-3.npy", X)
    assert textsets.minilm_unavailable(3) is None
    ds = textsets.minilm(n=2, queries=1, cache_dir=str(tmp_path / "gt"))
    np.testing.assert_array_equal(ds.base, X[:2])
    np.testing.assert_array_equal(ds.queries, X[2:])
    assert ds.metric == "cosine" and ds.describe()["provenance"]["cache"].endswith("-3.npy")


def test_minilm_without_corpus_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMPLEVECTOR_WORDNET_DIR", str(tmp_path / "missing"))
    why = textsets.minilm_unavailable(10)
    assert "wordnet-base" in why
