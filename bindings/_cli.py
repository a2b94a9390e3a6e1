"""What every ``simplevector`` command shares: ``--db``, opening the database, errors.

- :func:`db_option` adds ``--db PATH`` (env SIMPLEVECTOR_DB); it arrives as ``db_path``.
- :func:`output_option` (from :mod:`simplevector._output`) adds ``--json``.
- :class:`Command` / :class:`Group` are the click classes of every command and group: a
  library error (:class:`SimpleVectorError`) becomes one line ``error: <message> (hint: ...)``
  on stderr and exit 1; with ``simplevector --debug`` (or SIMPLEVECTOR_DEBUG=1) it is raised
  with its traceback instead. Usage errors stay click's (exit 2).
- :func:`open_db` is the one way a command opens the database.

Kept free of command definitions so that ``cli.py`` and ``cli_ops.py`` both import it.
"""

from __future__ import annotations

import contextlib
import os

import click

import simplevector as sv
from simplevector._output import output_option

__all__ = ["CONTEXT_SETTINGS", "DEFAULT_DB", "Command", "Group", "ProgressBar", "db_option",
           "open_db", "output_option", "one_line"]

CONTEXT_SETTINGS = dict(help_option_names=["-h", "--help"])
DEFAULT_DB = "./simplevector-data"


def db_option(default: str = DEFAULT_DB, envvar: str | None = "SIMPLEVECTOR_DB"):
    """``--db PATH``: the database directory; arrives as ``db_path``."""
    return click.option(
        "--db", "db_path", default=default, envvar=envvar, show_default=True, show_envvar=True,
        type=click.Path(file_okay=False, dir_okay=True),
        help="Database directory.")


def one_line(exc: BaseException) -> str:
    """The error's message (with its hint) with all whitespace runs collapsed."""
    return " ".join(str(exc).split())


def _debug(ctx: click.Context) -> bool:
    if ctx.find_root().params.get("debug"):
        return True
    return os.environ.get("SIMPLEVECTOR_DEBUG", "") not in ("", "0")


def _invoke_reporting_errors(invoke, ctx: click.Context):
    try:
        return invoke(ctx)
    except sv.SimpleVectorError as e:
        if _debug(ctx):
            raise
        click.echo(f"error: {one_line(e)}", err=True)
        ctx.exit(1)


class Command(click.Command):
    """A click command whose library errors print one line and exit 1 (see the module)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)

    def invoke(self, ctx):
        return _invoke_reporting_errors(super().invoke, ctx)


class Group(click.Group):
    """A click group of :class:`Command` (and :class:`Group`) with the same error handling."""

    command_class = Command

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("context_settings", CONTEXT_SETTINGS)
        super().__init__(*args, **kwargs)

    def invoke(self, ctx):
        return _invoke_reporting_errors(super().invoke, ctx)


Group.group_class = Group


@contextlib.contextmanager
def open_db(path: str, *, readonly: bool = False, must_exist: bool | None = None,
            fallback_readonly: bool = False):
    """The database at ``path``, closed (and checkpointed, for a writer) on exit.

    A CLI process lives for one command, so every open is the same: no background
    checkpointer, no background index training (close() would wait for it, and a stopped
    build is thrown away), no background probe or alert loops. ``index build`` trains in
    the foreground through the library call, not through ``auto_index``.

    readonly: the commands that only read; they work while another process writes.
    must_exist: raise instead of creating a database (default: when ``readonly``).
    fallback_readonly: a writer that opens read-only, with a note on stderr, when another
    process holds the write lock (``alerts``, ``probe``: they then record nothing).
    """
    if must_exist is None:
        must_exist = readonly
    if must_exist and not os.path.isdir(os.path.join(path, "lmdb")):
        raise sv.StorageError(f"no SimpleVector database at {os.path.abspath(path)}",
                              hint="create one with `simplevector init --db PATH`")
    options = dict(checkpoint_interval=0, auto_index=False)
    db = None
    if not readonly:
        try:
            db = sv.Database(path, **options)
        except sv.LockedError:
            if not fallback_readonly:
                raise
            click.echo("note: the database is locked by another writer; opened read-only, "
                       "nothing will be recorded", err=True)
    if db is None:
        db = sv.Database(path, readonly=True, **options)
    try:
        yield db
    finally:
        db.close()


class ProgressBar:
    """A ``progress(done, total)`` callback drawing a bar on stderr (long commands)."""

    def __init__(self, label: str):
        self.label = label
        self.bar = None

    def __call__(self, done: int, total: int):
        if self.bar is None:
            import sys
            self.bar = click.progressbar(length=max(total, 1), label=self.label,
                                         file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)
