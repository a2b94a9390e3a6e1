"""The msgpack form of request and response documents, shared by the server and client.

The documents are the JSON ones, except that a ``vector`` or ``vectors`` value held as a
numpy array travels as ``{"__ndarray__": <little-endian float32 bytes>, "shape": [...]}``.
Every other array becomes a list, numpy scalars become Python numbers.
"""

from __future__ import annotations

import numpy as np

from simplevector.engine.errors import InvalidInput

__all__ = ["MSGPACK", "ND", "VECTOR_KEYS", "pack", "unpack", "to_wire", "from_wire"]

MSGPACK = "application/msgpack"
ND = "__ndarray__"
VECTOR_KEYS = frozenset({"vector", "vectors"})


def to_wire(value, key=None):
    """``value`` as plain msgpack-able data, vectors as the ``ND`` form."""
    if isinstance(value, np.ndarray):
        if key in VECTOR_KEYS and value.dtype.kind in "fiu":
            arr = np.ascontiguousarray(value, dtype="<f4")
            return {ND: arr.tobytes(), "shape": list(arr.shape)}
        return value.tolist()
    if hasattr(value, "to_dict") and not isinstance(value, dict):
        out = value.to_dict()
        vec = getattr(value, "vector", None)
        if isinstance(vec, np.ndarray):
            out["vector"] = vec
        return to_wire(out)
    if isinstance(value, dict):
        return {str(k): to_wire(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_wire(v, key) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def from_wire(value):
    """The inverse of :func:`to_wire`: ``ND`` forms back to float32 arrays."""
    if isinstance(value, dict):
        if ND in value:
            raw, shape = value[ND], value.get("shape", [-1])
            if not isinstance(raw, (bytes, bytearray)):
                raise InvalidInput(f"{ND} must be bytes of little-endian float32")
            try:
                return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
            except (TypeError, ValueError) as e:
                raise InvalidInput(f"an array of {len(raw)} bytes does not fit shape "
                                   f"{shape!r}: {e}") from None
        return {k: from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    return value


def pack(value) -> bytes:
    import msgpack
    return msgpack.packb(to_wire(value), use_bin_type=True)


def unpack(body: bytes):
    import msgpack
    try:
        return from_wire(msgpack.unpackb(body, raw=False, strict_map_key=False))
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise InvalidInput(f"the body is not valid msgpack: {e}") from None
