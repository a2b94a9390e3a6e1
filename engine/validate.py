"""Input validation at the boundary: everything is checked before anything is written.

Each function returns the input in the engine's canonical form (contiguous float32, lists)
or raises a typed error whose message names the row and the bad value.
"""

from __future__ import annotations

import math
import re

import msgpack
import numpy as np

from . import schema
from .errors import DimensionMismatch, InvalidInput, LimitExceeded

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_MODEL_RE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9_./\-]{0,199}@(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z.\-]+)?(?:\+[0-9A-Za-z.\-]+)?$"
)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_DIM = 65536
MAX_K = 100_000
MAX_METADATA_DEPTH = 16
INCLUDE_FIELDS = ("metadata", "documents", "vectors")


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def namespace_name(name) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInput(
            f"namespace name {_short(name)} is not valid; expected 1-128 characters of "
            "letters, digits, '_', '.', '-', starting with a letter or digit"
        )
    return name


def version_number(version) -> int:
    if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 1:
        raise InvalidInput(f"version {_short(version)} is not valid; expected an int >= 1")
    return int(version)


def dim_value(dim) -> int:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= MAX_DIM:
        raise InvalidInput(f"dim {_short(dim)} is not valid; expected an int in 1..{MAX_DIM}")
    return int(dim)


def model_value(model):
    if model is None:
        return None
    if not isinstance(model, str) or not _MODEL_RE.match(model):
        raise InvalidInput(
            f"model {_short(model)} is not valid; expected 'name@MAJOR.MINOR.PATCH' "
            "(semantic version), e.g. 'all-MiniLM-L6-v2@1.0.0'"
        )
    return model


def k_value(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_K:
        raise InvalidInput(f"k {_short(k)} is not valid; expected an int in 1..{MAX_K}")
    return int(k)


def include_value(include, allowed=INCLUDE_FIELDS) -> frozenset:
    if include is None:
        return frozenset()
    if isinstance(include, str):
        include = (include,)
    try:
        items = list(include)
    except TypeError:
        raise InvalidInput(
            f"include {_short(include)} is not valid; expected a list of {allowed}"
        ) from None
    for item in items:
        if item not in allowed:
            raise InvalidInput(
                f"include item {_short(item)} is not valid; expected one of {allowed}")
    return frozenset(items)


# -- ids -------------------------------------------------------------------------------
def _one_id(value, row: int):
    if isinstance(value, (bool, np.bool_)):
        raise InvalidInput(f"ids[{row}] = {value!r} is a bool; expected a str or an int")
    if isinstance(value, (int, np.integer)):
        value = int(value)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidInput(f"ids[{row}] = {value} is outside the signed 64-bit range")
        return value
    if isinstance(value, str):
        if not value:
            raise InvalidInput(f"ids[{row}] is an empty string; expected a non-empty str")
        if len(value.encode("utf-8", "surrogatepass")) > schema.MAX_ID_BYTES:
            raise InvalidInput(
                f"ids[{row}] = {_short(value)} is longer than {schema.MAX_ID_BYTES} UTF-8 bytes"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInput(f"ids[{row}] = {_short(value)} is not valid UTF-8") from None
        return value
    raise InvalidInput(f"ids[{row}] = {_short(value)} has type {type(value).__name__}; "
                       "expected a str or an int")


def id_list(ids, *, allow_duplicates: bool = False) -> list:
    """Canonical list of external ids; rejects bools, empty strings, duplicates."""
    if isinstance(ids, (str, int, np.integer)) and not isinstance(ids, bool):
        ids = [ids]
    if ids is None:
        raise InvalidInput("ids is None; expected a list of str or int ids")
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu" and ids.ndim == 1:
        ids = ids.tolist()
    try:
        raw = list(ids)
    except TypeError:
        raise InvalidInput(f"ids {_short(ids)} is not a list of str or int ids") from None
    if not raw:
        raise InvalidInput("ids is empty; expected at least one id")
    if not _fast_ids_ok(raw):
        raw = [_one_id(v, i) for i, v in enumerate(raw)]
    if not allow_duplicates and len(set(raw)) != len(raw):
        seen = {}
        for i, v in enumerate(raw):     # ids are str or int: 1 and "1" are distinct keys
            if v in seen:
                raise InvalidInput(
                    f"ids[{i}] = {v!r} repeats ids[{seen[v]}]; ids in one batch must be unique"
                )
            seen[v] = i
    return raw


def _fast_ids_ok(raw: list) -> bool:
    """True when every id is already canonical (all plain str of sane length, or all plain
    int in range); otherwise the slow path checks each id and names the bad one."""
    first = type(raw[0])
    if first is str:
        if set(map(type, raw)) != {str}:
            return False
        # a str of at most MAX_ID_BYTES // 4 characters always fits in MAX_ID_BYTES
        return "" not in raw and max(map(len, raw)) <= schema.MAX_ID_BYTES // 4 and all(
            v.isascii() or _utf8_ok(v) for v in raw)
    if first is int:
        return (set(map(type, raw)) == {int}
                and _INT64_MIN <= min(raw) and max(raw) <= _INT64_MAX)
    return False


def _utf8_ok(value: str) -> bool:
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


# -- vectors -----------------------------------------------------------------------------
def vector_matrix(vectors, dim: int, *, what: str = "vectors", zero_ok: bool = True) -> np.ndarray:
    """(n, dim) C-contiguous float32; rejects wrong shape, NaN/inf and (if asked) zero rows."""
    if (type(vectors) is np.ndarray and vectors.dtype == np.float32
            and vectors.flags.c_contiguous and 0 < vectors.size
            and vectors.shape[-1] == dim and vectors.ndim <= 2):
        # float32 rows as stored, (dim,) or (n, dim): one finiteness check (a sum of
        # squares is finite only if every value is), no conversion; anything doubtful
        # takes the checks below, which name the row
        flat = vectors.reshape(-1)
        dot = float(np.dot(flat, flat))
        if math.isfinite(dot):
            rows = vectors.reshape(-1, dim)
            if zero_ok:
                return rows
            if len(rows) == 1 and dot > 0.0:
                return rows
            if len(rows) > 1 and np.einsum("ij,ij->i", rows, rows).min() > 0.0:
                return rows
    if vectors is None:
        raise InvalidInput(f"{what} is None; expected an array of shape (n, {dim})")
    try:
        arr = np.asarray(vectors)
    except (ValueError, TypeError) as e:
        raise InvalidInput(f"{what} could not be read as a numeric array: {e}") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise InvalidInput(
            f"{what} has dtype {arr.dtype}; expected numbers "
            "(ragged rows or strings are not vectors)"
        )
    if arr.dtype == np.bool_ or np.iscomplexobj(arr):
        raise InvalidInput(f"{what} has dtype {arr.dtype}; expected real numbers")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise InvalidInput(f"{what} has shape {arr.shape}; expected (n, {dim}) or ({dim},)")
    if arr.shape[0] == 0:
        raise InvalidInput(f"{what} is empty; expected at least one vector")
    if arr.shape[1] != dim:
        raise DimensionMismatch(
            f"{what} have dimension {arr.shape[1]}; this namespace expects dim={dim}"
        )
    with np.errstate(over="ignore", invalid="ignore"):   # out-of-range values are reported below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        row = int(np.flatnonzero(~finite.all(axis=1))[0])
        col = int(np.flatnonzero(~finite[row])[0])
        given = arr[row, col]
        if np.isfinite(given):
            raise InvalidInput(
                f"{what}[{row}] has {given} at position {col}; expected a value within the "
                "float32 range (|x| < 3.4e38)"
            )
        raise InvalidInput(
            f"{what}[{row}] has {given} at position {col}; expected finite numbers "
            "(NaN and inf are not allowed)"
        )
    if not zero_ok:
        norms = np.einsum("ij,ij->i", out, out)
        bad = np.flatnonzero(norms == 0)
        if bad.size:
            raise InvalidInput(
                f"{what}[{int(bad[0])}] is a zero vector; cosine distance is undefined for it"
            )
    return out


# -- metadata and documents -------------------------------------------------------------------
def _json_like(value, where: str, depth: int):
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise InvalidInput(f"{where} = {value} is outside the signed 64-bit range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInput(f"{where} = {value}; expected a finite number")
        return
    if depth >= MAX_METADATA_DEPTH:
        raise InvalidInput(f"{where} nests deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _json_like(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        _check_keys(value, where, depth + 1)
        return
    raise InvalidInput(
        f"{where} = {_short(value)} has type {type(value).__name__}; expected a JSON-like value "
        "(str, int, float, bool, None, list or dict)"
    )


def _check_keys(mapping: dict, where: str, depth: int):
    for key, item in mapping.items():
        if not isinstance(key, str):
            raise InvalidInput(f"{where} has key {_short(key)} of type {type(key).__name__}; "
                               "metadata keys must be str")
        if not key or key.startswith("$") or "." in key:
            raise InvalidInput(
                f"{where} has key {key!r}; keys must be non-empty, must not start with '$' "
                "and must not contain '.' (filters use '.' to reach nested fields)"
            )
        _json_like(item, f"{where}[{key!r}]", depth)


def _normalise_json(value):
    """Tuples become lists and numpy scalars become Python ones (msgpack stores the result)."""
    if isinstance(value, dict):
        return {k: _normalise_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def metadata_list(metadata, n: int) -> list:
    """A list of n dicts (or None); each key str, each value JSON-like."""
    if metadata is None:
        return [None] * n
    if isinstance(metadata, dict):
        raise InvalidInput("metadata is a dict; expected a list with one dict (or None) per vector")
    try:
        items = list(metadata)
    except TypeError:
        raise InvalidInput(f"metadata {_short(metadata)} is not a list of dicts") from None
    if len(items) != n:
        raise InvalidInput(f"metadata has {len(items)} entries for {n} vectors; expected {n}")
    out = []
    for row, md in enumerate(items):
        if md is None:
            out.append(None)
            continue
        if not isinstance(md, dict):
            raise InvalidInput(f"metadata[{row}] = {_short(md)} is not a dict (or None)")
        md = _normalise_json(md)
        _check_keys(md, f"metadata[{row}]", 0)
        out.append(md or None)
    return out


def document_list(documents, n: int) -> list:
    if documents is None:
        return [None] * n
    if isinstance(documents, str):
        raise InvalidInput("documents is a str; expected a list with one str (or None) per vector")
    try:
        items = list(documents)
    except TypeError:
        raise InvalidInput(f"documents {_short(documents)} is not a list of str") from None
    if len(items) != n:
        raise InvalidInput(f"documents has {len(items)} entries for {n} vectors; expected {n}")
    for row, doc in enumerate(items):
        if doc is not None and not isinstance(doc, str):
            raise InvalidInput(f"documents[{row}] = {_short(doc)} is not a str (or None)")
    return items


# -- size limits (engine/limits.py) --------------------------------------------------------------
def _over(limits, field: str, actual: int, row: int, ids, what: str, unit: str = "bytes"):
    maximum = getattr(limits, field)
    return LimitExceeded(
        f"{what} (id {_short(ids[row])}) is {actual:,} {unit}; expected at most "
        f"{field}={maximum:,}", limit=field, maximum=maximum, actual=actual, row=row)


def _document_sizes(docs: list, ids: list, limits):
    """UTF-8 bytes per document (None when there are none); raises on the first too big."""
    if docs.count(None) == len(docs):
        return None
    cap = limits.max_document_bytes
    sizes = []
    for row, doc in enumerate(docs):
        if doc is None:
            sizes.append(0)
            continue
        if doc.isascii():               # O(1) in CPython; then characters are bytes
            size = len(doc)
        else:
            try:
                size = len(doc.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidInput(f"documents[{row}] = {_short(doc)} is not valid UTF-8 "
                                   "(it holds a lone surrogate)") from None
        if size > cap:
            raise _over(limits, "max_document_bytes", size, row, ids,
                        f"documents[{row}]", "UTF-8 bytes")
        sizes.append(size)
    return sizes


def _metadata_sizes(metas: list, ids: list, limits):
    """msgpack bytes per row's metadata (None when there is none); raises on the first too
    big. A row that cannot be encoded (a lone surrogate in a str) is InvalidInput."""
    if metas.count(None) == len(metas):
        return None
    cap = limits.max_metadata_bytes
    pack = msgpack.Packer(use_bin_type=True).pack     # one per call: Packer is not shared
    sizes = []
    for row, md in enumerate(metas):
        if md is None:
            sizes.append(0)
            continue
        try:
            size = len(pack(md))
        except (UnicodeEncodeError, ValueError, TypeError, OverflowError) as e:
            raise InvalidInput(f"metadata[{row}] cannot be encoded: {e}") from None
        if size > cap:
            raise _over(limits, "max_metadata_bytes", size, row, ids, f"metadata[{row}]",
                        "msgpack bytes")
        sizes.append(size)
    return sizes


def upsert_limits(limits, ids: list, X: np.ndarray, metas: list, docs: list) -> int:
    """Check an already validated upsert batch against ``limits`` (an engine Limits);
    returns the batch payload in bytes (vectors + metadata + documents)."""
    n = len(ids)
    if n > limits.max_batch_rows:
        row = limits.max_batch_rows
        raise LimitExceeded(
            f"the batch has {n:,} rows; row {row} (id {_short(ids[row])}) is past "
            f"max_batch_rows={row:,}", limit="max_batch_rows", maximum=row, actual=n, row=row)
    doc_sizes = _document_sizes(docs, ids, limits)
    meta_sizes = _metadata_sizes(metas, ids, limits)
    total = int(X.nbytes) + sum(doc_sizes or ()) + sum(meta_sizes or ())
    cap = limits.max_batch_bytes
    if total > cap:
        per_row = np.full(n, X.nbytes // n, np.int64)
        for sizes in (doc_sizes, meta_sizes):
            if sizes is not None:
                per_row += np.asarray(sizes, np.int64)
        row = int(np.searchsorted(np.cumsum(per_row), cap, side="right"))
        raise LimitExceeded(
            f"the batch payload (vectors + metadata + documents) is {total:,} bytes; row "
            f"{row} (id {_short(ids[row])}) takes it past max_batch_bytes={cap:,}",
            limit="max_batch_bytes", maximum=cap, actual=total, row=row)
    return total


def positive_int(value, what: str, *, upper: int = 1_000_000) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
            or not 1 <= value <= upper):
        raise InvalidInput(f"{what} {_short(value)} is not valid; expected an int in 1..{upper}")
    return int(value)
