"""Training an IVF index for a version while reads and writes continue.

The build snapshots the row arrays, trains and encodes outside any lock, then takes the
version's mutate lock only to encode the rows written meanwhile and swap the index in:
a query sees the old index or the new one, and no committed write is missed.
"""

from __future__ import annotations

import numpy as np

from .errors import InvalidInput
from .indexspec import IndexSpec, auto_spec
from .ivf import HELD_OUT_POINTS, MAX_TRAIN_POINTS_PER_LIST, PQ_TRAIN_POINTS

#: Rows encoded per chunk when a build encodes every row (64 MiB of float32 at 256-d).
ENCODE_CHUNK = 65536


def effective_spec(state) -> IndexSpec | None:
    """The IVF spec a build of this version would use now (None for "Flat")."""
    spec = state.spec
    if spec.kind == "flat":
        return None
    if spec.kind == "auto":
        return auto_spec(state.live, state.dim)
    return spec


def wants_training(state, auto_threshold: int) -> bool:
    """Whether a version should start a build by itself: it has no index yet and has grown
    past its threshold, or its configured IVF spec differs from the active index's (a new
    spec that could not train when it was set) and it now has rows enough for it."""
    if state.training:
        return False
    if state.training_error is not None and state.live < 1.1 * state.failed_at_rows:
        return False                    # a failed build retries after 10% more rows
    spec = state.spec
    if state.index is not None:
        active = state.index.spec
        return (spec.kind == "ivf" and (spec.nlist, spec.pq_m, spec.refine, spec.rabitq)
                != (active.nlist, active.pq_m, active.refine, active.rabitq)
                and state.live >= spec.min_train_rows)
    if spec.kind == "auto":
        return state.live >= max(auto_threshold, 256)
    if spec.kind == "ivf":
        return state.live >= spec.min_train_rows
    return False


def build(state, *, seed: int = 0, should_stop=lambda: False):
    """Train and install the version's index; returns it (None for a flat spec)."""
    from .ivf import IVFIndex, TrainingCancelled
    with state.build_lock:
        state.training = True
        try:
            spec = effective_spec(state)
            if spec is None:
                with state.mutate_lock:
                    state.index = None
                    state.mutations += 1
                return None
            spec.check_dim(state.dim)
            view = state.view()
            positions = np.flatnonzero(view.alive)
            if len(positions) < spec.min_train_rows:
                raise InvalidInput(
                    f"index '{spec}' needs at least {spec.min_train_rows} rows to train "
                    f"(nlist x 39); namespace {state.config.name!r} has {len(positions)}",
                    hint="use fewer lists (IVF<n>) or add rows first; "
                         "queries stay exact until then")
            # training reads a bounded sample of the mapped rows; encoding streams them in
            # chunks, so a build never copies the whole version into the heap
            rng = np.random.default_rng(seed + 7)
            want = max(spec.nlist * MAX_TRAIN_POINTS_PER_LIST, PQ_TRAIN_POINTS + HELD_OUT_POINTS)
            sample = positions if len(positions) <= want else np.sort(
                rng.choice(positions, want, replace=False))
            try:
                index = IVFIndex.train(spec, np.ascontiguousarray(view.X[sample]),
                                       state.metric.code, seed=seed, should_stop=should_stop)
            except TrainingCancelled:
                return None
            index.trained_rows = len(positions)
            lists = np.empty(len(positions), np.int32)
            codes = np.empty((len(positions), index.m), np.uint8)
            for lo in range(0, len(positions), ENCODE_CHUNK):
                if should_stop():
                    return None
                part = positions[lo:lo + ENCODE_CHUNK]
                lists[lo:lo + len(part)], codes[lo:lo + len(part)] = index.encode(
                    np.ascontiguousarray(view.X[part]))
            if should_stop():
                return None
            index.load_lists(positions.astype(np.int64), lists, codes)
            with state.mutate_lock:
                if should_stop():
                    return None
                now = state.view()
                if now.n > view.n:
                    new = np.arange(view.n, now.n, dtype=np.int64)
                    new = new[now.alive[new]]
                    if len(new):
                        nl, nc = index.encode(np.ascontiguousarray(now.X[new]))
                        index.add(new, nl, nc)
                index.seal(now.alive)
                index.trained_upto = view.n   # rows at positions >= this came after training
                state.index = index
                state.training_error = None
                state.mutations += 1
            return index
        finally:
            state.training = False
