"""Two deterministic embedding functions for the server tests: the embedded backend is given
the objects, ``simplevector serve --embedding _embedfns:one`` builds the same ones (the
model string identifies a function)."""

from __future__ import annotations

import numpy as np

from simplevector import embeddings


def _vectors(texts, salt: int):
    out = []
    for t in texts:
        rng = np.random.default_rng(sum(map(ord, t)) * 31 + len(t) + salt)
        out.append(rng.standard_normal(4) + 0.1)
    return np.asarray(out, dtype=np.float32)


def one():
    return embeddings.Callable(lambda texts: _vectors(texts, 1), model="conf-one@1.0.0",
                               dim=4, price_per_1k_tokens=0.25)


def two():
    return embeddings.Callable(lambda texts: _vectors(texts, 2), model="conf-two@1.0.0",
                               dim=4, price_per_1k_tokens=1.0)
