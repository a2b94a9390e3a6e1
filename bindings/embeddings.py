"""Embedding functions for ``create_namespace(..., embedding=fn)``, ``ns.sync`` and
``ns.query_text``: the protocol and its adapters, from :mod:`simplevector.ops.embeddings`.

    from simplevector import embeddings
    fn = embeddings.GloVeMean()                               # offline, 50-d
    fn = embeddings.Callable(my_fn, model="mine@1.0.0", dim=384)
    fn = embeddings.OpenAICompatible("http://127.0.0.1:8000/v1", "text-embedding-3-small",
                                     model="te3-small@1.0.0", dim=1536)
    fn = embeddings.SentenceTransformer("./models/minilm", model="minilm@1.0.0")
"""
from simplevector.ops.embeddings import (Callable, EmbeddingFunction, GloVeMean,
                                         OpenAICompatible, SentenceTransformer, tokenize)

__all__ = ["EmbeddingFunction", "Callable", "GloVeMean", "SentenceTransformer",
           "OpenAICompatible", "tokenize"]
