"""System adapters, by name. Each peer's import is optional: :func:`resolve` turns a missing
package into a skip message instead of an error.

Adding a system: subclass :class:`bench.systems.base.System` in a new module here and add
one row to :data:`REGISTRY` (name -> "module:Class").
"""

from __future__ import annotations

import importlib

from .base import System, Unavailable

REGISTRY = {
    "simplevector-flat": "simplevector_:SimpleVectorFlat",
    "simplevector-ivfpq": "simplevector_:SimpleVectorIVFPQ",
    "simplevector-rabitq": "simplevector_:SimpleVectorRaBitQ",
    "faiss-flat": "faiss_:FaissFlat",
    "faiss-ivfflat": "faiss_:FaissIVFFlat",
    "faiss-ivfpq": "faiss_:FaissIVFPQRefine",
    "faiss-rabitq": "faiss_:FaissIVFRaBitQRefine",
    "hnswlib": "hnswlib_:Hnswlib",
    "usearch": "usearch_:USearch",
    "lancedb-ivfpq": "lancedb_:LanceDB",
    "chroma": "chromadb_:Chroma",
    "qdrant-local": "qdrant_:QdrantLocal",
}

#: what each figure compares against: how each family stores data
FAMILY = {name: name.split("-")[0] for name in REGISTRY}

QUICK = ("simplevector-flat", "simplevector-ivfpq", "faiss-flat", "faiss-ivfpq")
ALL = tuple(REGISTRY)


def load_class(name: str) -> type[System]:
    """The adapter class for ``name``; ImportError propagates when its package is missing."""
    if name not in REGISTRY:
        raise KeyError(f"system {name!r} is not known; expected one of {', '.join(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def probe(name: str, dim: int = 8) -> str | None:
    """None when ``name`` can run here, else the reason it is skipped (one line)."""
    try:
        cls = load_class(name)
        cls("l2", dim, 1, "/nonexistent")
    except ImportError as e:
        return f"{name} skipped: {e} (pip install -e '.[bench]')"
    except Unavailable as e:
        return f"{name} skipped: {e}"
    return None


__all__ = ["REGISTRY", "FAMILY", "QUICK", "ALL", "System", "Unavailable", "load_class",
           "probe"]
