"""``simplevector verify`` and ``simplevector repair`` (engine/integrity.py, ops/scrub.py).

Thin, with the shared conventions of :mod:`simplevector._cli` (``--db``, ``--json``,
one-line errors). Both exit 0 when all is well and 1 when problems remain: for ``verify``
any problem; for ``repair`` damaged primary data (rows, records, id entries), which comes
back from a snapshot and the WAL archive (docs/runbook.md, "Recover from a corruption
finding"). A library error (e.g. no database) also exits 1, with ``error: ...`` on stderr.
``verify`` opens the database as the writer to record its result for ``health`` and
falls back to read-only (nothing recorded) when another process holds the lock.
"""

from __future__ import annotations

import click

from simplevector._cli import Command, ProgressBar, db_option, open_db, output_option
from simplevector._output import dumps, emit

_COLUMNS = ["kind", "namespace", "version", "id", "primary", "detail", "key"]


def _problem_rows(problems) -> list:
    return [p.to_dict() for p in problems]


@click.command("verify", cls=Command)
@db_option()
@click.option("--deep", is_flag=True,
              help="Also re-encode a sample of rows against their PQ codes and re-rank "
                   "sample queries against exact distances (slower).")
@output_option
def verify_cmd(db_path, deep, as_json):
    """Check every stored row, record and id entry against its checksum, and the
    cross-references (ids, rows, records, counts, field indexes, IVF lists, checkpoint
    bundles). Exit code 0: no problems; 1: problems found (listed)."""
    with open_db(db_path, must_exist=True, fallback_readonly=True) as db:
        with ProgressBar("verifying rows") as bar:
            report = db.verify(deep=deep, progress=bar)
    if as_json:
        click.echo(dumps(report.to_dict(), indent=2))
    else:
        emit({"ok": report.ok, "problems": len(report.problems) + report.omitted,
              "deep": report.deep, "lsn": report.lsn, "seconds": round(report.seconds, 3),
              **{f"checked_{k}": v for k, v in report.checked.items()}}, False)
        if report.problems:
            click.echo("")
            emit(_problem_rows(report.problems), False, columns=_COLUMNS)
    raise SystemExit(0 if report.ok else 1)


@click.command("repair", cls=Command)
@db_option()
@click.option("--rows-from-wal", is_flag=True,
              help="Also rewrite damaged rows that a WAL record still holds with the bytes "
                   "their checksum names (listed as in_wal without it).")
@output_option
def repair_cmd(db_path, rows_from_wal, as_json):
    """Rebuild all derived state (IVF lists and codes, field indexes, id maps, checkpoint
    bundles) from LMDB, the rows and the WAL, then checkpoint. Damaged primary data is
    never dropped or invented: its ids are listed, to restore from a snapshot and the WAL
    archive. Exit code 0: nothing left damaged; 1: damaged primary data listed."""
    with open_db(db_path, must_exist=True) as db:
        with ProgressBar("re-verifying rows") as bar:
            report = db.repair(progress=bar, rows_from_wal=rows_from_wal)
    if as_json:
        click.echo(dumps(report.to_dict(), indent=2))
    else:
        emit({"ok": report.ok, "damaged": len(report.damaged),
              "in_wal": len(report.in_wal),
              "restored_from_wal": len(report.restored_from_wal),
              "checkpoint_lsn": report.checkpoint_lsn,
              "seconds": round(report.seconds, 3)}, False)
        for line in report.rebuilt:
            click.echo(f"rebuilt: {line}")
        if report.damaged:
            click.echo("")
            emit(_problem_rows(report.damaged), False, columns=_COLUMNS)
            click.echo(f"\n{report.hint}")
        if report.in_wal and not report.restored_from_wal:
            click.echo(f"{len(report.in_wal)} damaged row(s) are still in the WAL with the "
                       "bytes their checksum names: `simplevector repair --rows-from-wal` "
                       "rewrites them")
    raise SystemExit(0 if report.ok else 1)


COMMANDS = (verify_cmd, repair_cmd)


def register(group: click.Group) -> click.Group:
    for command in COMMANDS:
        group.add_command(command)
    return group
