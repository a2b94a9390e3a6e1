"""Output for the CLI: plain aligned tables for people, JSON for scripts.

One decorator (:func:`output_option`) adds ``--json`` to a command; the command builds its
result as plain data and hands it to :func:`emit`, which prints it one way or the other.
No dependency beyond click.
"""

from __future__ import annotations

import datetime
import functools
import json

import click
import numpy as np

__all__ = ["output_option", "emit", "format_table", "to_jsonable", "dumps", "iso_utc"]


def output_option(fn):
    """Add ``--json`` (machine-readable output) to a command; it arrives as ``as_json``."""
    @click.option("--json", "as_json", is_flag=True, default=False,
                  help="Print JSON for scripts instead of a table.")
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)
    return wrapper


def to_jsonable(value):
    """numpy scalars and arrays, tuples and dataclass-like objects as plain JSON values."""
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def iso_utc(ts: float) -> str:
    """Epoch seconds as ISO-8601 UTC to the second, e.g. ``2026-12-01T21:31:24Z``."""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def dumps(value, **kwargs) -> str:
    return json.dumps(to_jsonable(value), ensure_ascii=False, **kwargs)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list, tuple)):
        return dumps(value)
    return str(value)


def format_table(rows: list, columns: list) -> str:
    """Rows (dicts) as aligned columns under a header; numbers right-aligned."""
    header = [c.upper() for c in columns]
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    numeric = [bool(rows) and all(isinstance(row.get(c), (int, float)) and
                                  not isinstance(row.get(c), bool) for row in rows)
               for c in columns]

    def line(values):
        parts = [v.rjust(w) if num else v.ljust(w)
                 for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header)] + [line(r) for r in cells])


def emit(data, as_json: bool, *, columns: list | None = None, empty: str | None = None):
    """Print ``data``: JSON when ``as_json``; else a table of ``columns`` (for a list of
    dicts) or ``key  value`` lines (for a dict)."""
    if as_json:
        click.echo(dumps(data, indent=2))
        return
    if isinstance(data, dict) and columns is None:
        width = max((len(str(k)) for k in data), default=0)
        for key, value in data.items():
            click.echo(f"{str(key).ljust(width)}  {_cell(value)}")
        return
    rows = [to_jsonable(r) for r in data]
    if not rows and empty is not None:
        click.echo(empty)
        return
    click.echo(format_table(rows, columns or (list(rows[0]) if rows else [])))
