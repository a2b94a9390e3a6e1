"""Metadata filters: parse and validate a ``where`` dict, and a reference evaluator.

The filter language follows what Chroma, Qdrant and MongoDB users expect::

    {"lang": "en"}                          # shorthand for {"lang": {"$eq": "en"}}
    {"lang": "en", "year": {"$gte": 2020}}  # several keys: implicit AND
    {"$or": [{"a": 1}, {"b": {"$in": ["x", "y"]}}]}
    {"$not": {"tags": "draft"}}
    {"doc.author": {"$exists": True}}       # dotted path into nested dicts

Field operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists``.
Logical operators: ``$and [..]``, ``$or [..]`` (non-empty lists of filters), ``$not {..}``.

Value semantics (shared by :func:`matches` and :class:`~.fieldindex.FieldIndex`):

* Numbers compare numerically and exactly across int and float (``1 == 1.0``), but a bool
  is not a number (``True != 1``). ``None`` is a value (``{"x": None}`` matches a stored
  ``None``, not a missing field). Strings compare by equality only.
* Range operators take an int or float operand and match numeric field values only.
* A list-valued field matches ``$eq``/``$in``/ranges when ANY scalar element matches.
  Nested lists and dicts inside a list are never equal to a scalar operand.
* ``$ne x`` is ``$not {$eq x}`` and ``$nin [..]`` is ``$not {$in [..]}`` (MongoDB): both
  match rows where the field is missing. ``$exists: False`` matches missing fields.
* A dotted path ``"a.b"`` descends through nested dicts only (never through lists); a
  stored key that itself contains a dot is not reachable by a filter path.
* NaN stored in metadata never matches any comparison; NaN and inf operands are rejected.
* ``{}`` (an empty filter) matches every row.

:func:`compile_filter` returns an immutable tree of small dataclasses (:class:`Field`,
:class:`And`, :class:`Or`, :class:`Not`); :func:`matches` evaluates it against one
record's metadata in pure Python and is the reference the bitmap evaluator is tested
against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union

from .errors import FilterError

__all__ = [
    "Field",
    "And",
    "Or",
    "Not",
    "Node",
    "FIELD_OPS",
    "LOGICAL_OPS",
    "RANGE_OPS",
    "compile_filter",
    "matches",
    "fields_of",
    "scalar_key",
    "is_number",
    "resolve",
]

FIELD_OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists")
RANGE_OPS = ("$gt", "$gte", "$lt", "$lte")
LOGICAL_OPS = ("$and", "$or", "$not")

_MAX_REPR = 80
_MISSING = object()


# ---------------------------------------------------------------------------- nodes


@dataclass(frozen=True, slots=True)
class Field:
    """One comparison on one field path.

    ``value`` is a scalar for ``$eq $ne`` and the range operators, a tuple of scalars for
    ``$in $nin`` and a bool for ``$exists``.
    """

    path: tuple[str, ...]
    op: str
    value: Any

    @property
    def name(self) -> str:
        """The dotted field path as written in the filter."""
        return ".".join(self.path)


@dataclass(frozen=True, slots=True)
class And:
    """All children match (no children: every row matches)."""

    children: tuple["Node", ...]


@dataclass(frozen=True, slots=True)
class Or:
    """At least one child matches (always at least one child)."""

    children: tuple["Node", ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The child does not match (within the alive rows)."""

    child: "Node"


Node = Union[Field, And, Or, Not]


# ---------------------------------------------------------------------------- values


def is_number(v: Any) -> bool:
    """True for int and float, but not bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def scalar_key(v: Any):
    """The typed equality key of a stored scalar, or None when *v* is not matchable.

    The type tag keeps ``True``, ``1`` and ``"1"`` apart, while ``1`` and ``1.0`` share a
    key (Python's numeric equality and hash agree across int and float, exactly).
    NaN, lists, dicts and unknown types give None: they never equal an operand.
    """
    if v is None:
        return (0,)
    if isinstance(v, bool):
        return (1, v)
    if isinstance(v, (int, float)):
        if isinstance(v, float) and math.isnan(v):
            return None
        return (2, v)
    if isinstance(v, str):
        return (3, v)
    return None


def _short(v: Any) -> str:
    text = repr(v)
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return text


def _at(loc: str, key: Any) -> str:
    return f"{loc}[{key!r}]"


def _normalize_scalar(v: Any) -> tuple[bool, Any]:
    """(ok, value) for an operand scalar; numpy scalars become Python ones."""
    if v is None or isinstance(v, (bool, str)):
        return True, v
    if isinstance(v, (int, float)):
        return True, v
    # numpy scalars without importing numpy here
    item = getattr(v, "item", None)
    if item is not None and type(v).__module__ == "numpy":
        try:
            py = item()
        except (TypeError, ValueError):
            return False, v
        if py is None or isinstance(py, (bool, str, int, float)):
            return True, py
    return False, v


def _check_finite(op: str, v: Any, loc: str) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise FilterError(
            f"{op} operand must be a finite number, got {_short(v)} at {loc}",
            hint="NaN and infinity are not comparable; use $exists or a finite bound",
        )


# ---------------------------------------------------------------------------- compile


def compile_filter(where: Any) -> Node:
    """Validate *where* and return its immutable tree.

    Raises :class:`FilterError` naming the offending part (``where['a']['$in']`` style).
    """
    return _compile_filter(where, "where")


def _compile_filter(where: Any, loc: str) -> Node:
    if not isinstance(where, dict):
        raise FilterError(
            f"a filter must be a dict, got {type(where).__name__} {_short(where)} at {loc}",
            hint='write e.g. {"lang": "en"} or {"$and": [...]}',
        )
    parts: list[Node] = []
    for key, value in where.items():
        if not isinstance(key, str):
            raise FilterError(
                f"filter keys must be strings, got {_short(key)} at {loc}"
            )
        if key.startswith("$"):
            parts.append(_compile_logical(key, value, loc))
        else:
            parts.extend(_compile_field(key, value, loc))
    if len(parts) == 1:
        return parts[0]
    return And(tuple(parts))


def _compile_logical(key: str, value: Any, loc: str) -> Node:
    here = _at(loc, key)
    if key in ("$and", "$or"):
        if not isinstance(value, (list, tuple)) or not value:
            raise FilterError(
                f"{key} expects a non-empty list of filters, got {_short(value)} at {here}"
            )
        children = tuple(_compile_filter(sub, f"{here}[{i}]") for i, sub in enumerate(value))
        if len(children) == 1:
            return children[0]
        return And(children) if key == "$and" else Or(children)
    if key == "$not":
        if not isinstance(value, dict):
            raise FilterError(
                f"$not expects a filter dict, got {type(value).__name__} {_short(value)} "
                f"at {here}"
            )
        return Not(_compile_filter(value, here))
    if key in FIELD_OPS:
        raise FilterError(
            f"field operator {key!r} needs a field at {loc}; "
            f'write {{"field": {{"{key}": ...}}}}'
        )
    raise FilterError(
        f"unknown operator {key!r} at {loc}; expected a field name or one of "
        + ", ".join(LOGICAL_OPS)
    )


def _parse_path(name: str, loc: str) -> tuple[str, ...]:
    if name == "":
        raise FilterError(f"empty field name at {loc}")
    segments = tuple(name.split("."))
    for seg in segments:
        if seg == "":
            raise FilterError(
                f"field path {name!r} has an empty segment at {_at(loc, name)}; "
                "write nested fields as 'a.b'"
            )
    return segments


def _compile_field(name: str, value: Any, loc: str) -> list[Node]:
    path = _parse_path(name, loc)
    here = _at(loc, name)
    if isinstance(value, dict):
        if not value:
            raise FilterError(
                f"empty operator dict at {here}; expected one of " + ", ".join(FIELD_OPS)
            )
        nodes = []
        for op, operand in value.items():
            if not isinstance(op, str) or not op.startswith("$"):
                raise FilterError(
                    f"non-operator key {_short(op)} in operator dict at {here}; expected "
                    "only operators (" + ", ".join(FIELD_OPS) + "); nested fields are "
                    "written as a dotted path 'a.b'"
                )
            if op not in FIELD_OPS:
                raise FilterError(
                    f"unknown operator {op!r} in filter at {here}; expected one of "
                    + ", ".join(FIELD_OPS)
                )
            nodes.append(_compile_op(path, op, operand, here))
        return nodes
    # shorthand equality
    ok, scalar = _normalize_scalar(value)
    if not ok:
        raise FilterError(
            f"shorthand equality expects a scalar (str, int, float, bool, None), got "
            f"{type(value).__name__} {_short(value)} at {here}",
            hint='use {"$in": [...]} to match any of several values',
        )
    _check_finite("$eq", scalar, here)
    return [Field(path, "$eq", scalar)]


def _compile_op(path: tuple[str, ...], op: str, operand: Any, here: str) -> Field:
    if op == "$exists":
        if not isinstance(operand, bool):
            raise FilterError(f"$exists expects true or false, got {_short(operand)} at {here}")
        return Field(path, op, operand)
    if op in ("$in", "$nin"):
        if not isinstance(operand, (list, tuple)) or not operand:
            raise FilterError(
                f"{op} expects a non-empty list of scalars, got {_short(operand)} at {here}"
            )
        values = []
        for item in operand:
            ok, scalar = _normalize_scalar(item)
            if not ok:
                raise FilterError(
                    f"{op} expects a non-empty list of scalars, got {_short(operand)} "
                    f"(element {_short(item)} is a {type(item).__name__}) at {here}"
                )
            _check_finite(op, scalar, here)
            values.append(scalar)
        return Field(path, op, tuple(values))
    ok, scalar = _normalize_scalar(operand)
    if op in RANGE_OPS:
        if not ok or not is_number(scalar):
            raise FilterError(
                f"{op} expects an int or float, got {type(operand).__name__} "
                f"{_short(operand)} at {here}",
                hint="range operators compare numbers only; use $eq/$in for strings",
            )
        _check_finite(op, scalar, here)
        return Field(path, op, scalar)
    # $eq / $ne
    if not ok:
        raise FilterError(
            f"{op} expects a scalar (str, int, float, bool, None), got "
            f"{type(operand).__name__} {_short(operand)} at {here}",
            hint="use $in/$nin to match any of several values",
        )
    _check_finite(op, scalar, here)
    return Field(path, op, scalar)


# ---------------------------------------------------------------------------- evaluate


def resolve(metadata: Any, path: tuple[str, ...]) -> Any:
    """The value at *path* in *metadata*, or the module's missing sentinel."""
    v = metadata
    for seg in path:
        if not isinstance(v, dict) or seg not in v:
            return _MISSING
        v = v[seg]
    return v


def _range_ok(op: str, x: Any, c: Any) -> bool:
    if not is_number(x) or (isinstance(x, float) and math.isnan(x)):
        return False
    if op == "$gt":
        return x > c
    if op == "$gte":
        return x >= c
    if op == "$lt":
        return x < c
    return x <= c


def _field_matches(node: Field, metadata: Any) -> bool:
    op = node.op
    v = resolve(metadata, node.path) if metadata is not None else _MISSING
    if op == "$exists":
        return (v is not _MISSING) == node.value
    if op in ("$ne", "$nin"):
        positive = Field(node.path, "$eq" if op == "$ne" else "$in", node.value)
        return not _field_matches(positive, metadata)
    if v is _MISSING:
        return False
    items = v if isinstance(v, list) else (v,)
    if op == "$eq":
        want = scalar_key(node.value)
        return any(scalar_key(x) == want for x in items)
    if op == "$in":
        wanted = {scalar_key(c) for c in node.value}
        for x in items:
            k = scalar_key(x)
            if k is not None and k in wanted:
                return True
        return False
    return any(_range_ok(op, x, node.value) for x in items)


def matches(node: Node, metadata: dict | None) -> bool:
    """Whether one record's *metadata* satisfies *node* (pure-Python reference)."""
    if isinstance(node, Field):
        return _field_matches(node, metadata)
    if isinstance(node, And):
        return all(matches(c, metadata) for c in node.children)
    if isinstance(node, Or):
        return any(matches(c, metadata) for c in node.children)
    if isinstance(node, Not):
        return not matches(node.child, metadata)
    raise TypeError(f"not a filter node: {node!r}")


def fields_of(node: Node) -> set[str]:
    """The dotted field paths *node* reads."""
    out: set[str] = set()
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, Field):
            out.add(cur.name)
        elif isinstance(cur, (And, Or)):
            stack.extend(cur.children)
        elif isinstance(cur, Not):
            stack.append(cur.child)
    return out
