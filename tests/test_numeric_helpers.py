"""The cross-CPU comparison helpers accept rounding and ties, and nothing more."""

import numpy as np
import pytest
from _numeric import assert_labels_tie_aware, assert_same_hits, assert_same_topk

from simplevector.engine.types import Hit


def test_same_topk_accepts_rounding_and_swapped_near_ties():
    d = np.array([0.1, 0.2, 0.2000001, 0.5], np.float32)
    assert_same_topk(d, [4, 7, 9, 1], d + 1e-7, [4, 9, 7, 1])


def test_same_topk_accepts_a_boundary_tie_swapped_for_another_row():
    assert_same_topk([0.1, 0.3], [1, 2], [0.1, 0.3000001], [1, 5])


@pytest.mark.parametrize("ids_b, dist_b", [
    ([7, 4, 9, 1], [0.1, 0.2, 0.2000001, 0.5]),     # a clear order swap
    ([4, 3, 9, 1], [0.1, 0.2, 0.2000001, 0.5]),     # a different row not at the boundary
    ([4, 7, 9, 1], [0.1, 0.2, 0.2000001, 0.6]),     # a distance off
    ([4, 7, 9], [0.1, 0.2, 0.2000001]),             # shorter
])
def test_same_topk_rejects_real_differences(ids_b, dist_b):
    with pytest.raises(AssertionError):
        assert_same_topk([0.1, 0.2, 0.2000001, 0.5], [4, 7, 9, 1], dist_b, ids_b)


def test_same_topk_rejects_a_missing_clearly_nearer_row():
    with pytest.raises(AssertionError):
        assert_same_topk([0.1, 0.3, 0.4], [1, 2, 3], [0.1, 0.3, 0.4], [1, 3, 8])


def test_same_hits_compares_ids_of_any_type():
    a = [Hit("x", 0.0), Hit(3, 0.25), Hit(4, 0.5)]
    assert_same_hits(a, [Hit("x", 0.0), Hit(3, 0.25000001), Hit(4, 0.5)])
    with pytest.raises(AssertionError):
        assert_same_hits(a, [Hit("x", 0.0), Hit("3", 0.25), Hit(4, 0.5)])


def test_labels_tie_aware_accepts_tied_centroids_only():
    C = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], np.float32)
    X = np.array([[0.5, 0.5], [1.0, 0.1]], np.float32)       # row 0 is equidistant to 0 and 1
    assert_labels_tie_aware(X, C, [0, 0], [1, 0])
    with pytest.raises(AssertionError):
        assert_labels_tie_aware(X, C, [0, 0], [0, 2])
