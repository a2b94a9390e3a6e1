"""``simplevector keys ...`` and ``simplevector audit ...``: API keys and the audit log.

``keys`` open the database for writing (create, revoke) or read-only (list); while a server
holds the database, manage keys through its admin API instead (``POST /v1/keys``,
``client.create_key``). Key changes made here are audit entries too (remote ``cli``).
``audit`` reads the log directory (default ``DB/audit``, or ``--audit-dir``) and never
opens the database.
"""

from __future__ import annotations

import os
import sys

import click

from simplevector._cli import Group, db_option, open_db, output_option
from simplevector._output import dumps, emit, iso_utc
from simplevector.ops import audit as audit_mod
from simplevector.ops.keys import ROLES, KeyStore

__all__ = ["register", "audit_dir_option", "default_audit_dir"]


def default_audit_dir(db_path: str) -> str:
    return os.path.join(db_path, "audit")


def audit_dir_option(fn):
    return click.option("--audit-dir", type=click.Path(file_okay=False), default=None,
                        help="Audit log directory (default: DB/audit).")(fn)


def _cli_audit(db_path, audit_dir, fields: dict) -> None:
    with audit_mod.AuditLog(audit_dir or default_audit_dir(db_path)) as log:
        log.append({"remote": "cli", "key_id": None, "role": None, "outcome": "ok",
                    "pid": os.getpid(), **fields})


def _key_row(k) -> dict:
    d = k.to_dict()
    for field in ("created", "expires", "revoked"):
        if d[field] is not None:
            d[field] = iso_utc(d[field])
    return d


@click.group("keys", cls=Group)
def keys():
    """API keys: create (printed once), list, revoke. Stored hashed in the database."""


@keys.command("create")
@db_option()
@click.option("--role", type=click.Choice(ROLES), required=True,
              help="reader: read routes; writer: + upsert/delete/index; admin: + "
                   "namespaces, versions, keys, snapshots, migrations.")
@click.option("--namespace", "namespaces", multiple=True,
              help="Limit the key to this namespace (repeat for several; default: all).")
@click.option("--expires", default=None,
              help="Lifetime, e.g. 30d, 12h, 90m (default: never expires).")
@click.option("--name", default=None, help="A label shown by `keys list`.")
@audit_dir_option
@output_option
def keys_create(db_path, role, namespaces, expires, name, audit_dir, as_json):
    """Create an API key and print it once (it is stored only as a SHA-256 digest)."""
    with open_db(db_path) as db:
        text, key = KeyStore(db).create(role, namespaces=list(namespaces) or None,
                                        expires=expires, name=name)
    _cli_audit(db_path, audit_dir, {"action": "create_key", "created_key_id": key.id,
                                    "created_role": key.role,
                                    "created_namespaces": list(namespaces) or None})
    if as_json:
        click.echo(dumps({"key": text, "id": key.id, "role": key.role}))
        return
    click.echo(text)
    click.echo(f"id {key.id}, role {key.role}"
               + (f", namespaces {', '.join(key.namespaces)}" if key.namespaces else "")
               + (f", expires {iso_utc(key.expires)}" if key.expires else "")
               + ". Store the key now: it is not shown again.", err=True)


@keys.command("list")
@db_option()
@output_option
def keys_list(db_path, as_json):
    """Every key: id, role, namespaces, state (active, expired, revoked), times in UTC."""
    with open_db(db_path, readonly=True) as db:
        rows = [_key_row(k) for k in KeyStore(db).list()]
    emit(rows, as_json, columns=["id", "role", "namespaces", "state", "created", "expires",
                                 "revoked", "name"], empty="no API keys")


@keys.command("revoke")
@click.argument("key_id", metavar="KEY")
@db_option()
@audit_dir_option
@output_option
def keys_revoke(key_id, db_path, audit_dir, as_json):
    """Revoke KEY (its id, or its --name when one key has it); it then gets 401."""
    with open_db(db_path, must_exist=True) as db:
        key = KeyStore(db).revoke(key_id)
    _cli_audit(db_path, audit_dir, {"action": "revoke_key", "revoked_key_id": key.id})
    emit(_key_row(key), as_json)


# -- audit ---------------------------------------------------------------------------------------
@click.group("audit", cls=Group)
def audit():
    """The audit log: verify the hash chain, tail it, query it."""


def _dir(db_path, audit_dir):
    return audit_dir or default_audit_dir(db_path)


@audit.command("verify")
@db_option()
@audit_dir_option
@output_option
def audit_verify(db_path, audit_dir, as_json):
    """Check every entry's seq, hash and prev; exit 0 intact, 1 naming the first bad entry."""
    directory = _dir(db_path, audit_dir)
    files = audit_mod.log_files(directory)
    with click.progressbar(length=sum(os.path.getsize(f) for f in files) or 1,
                           label="verifying", file=sys.stderr,
                           show_eta=False) as bar:
        result = audit_mod.verify(directory, progress=bar.update)
    if as_json:
        click.echo(dumps(result.to_dict(), indent=2))
    elif result.ok:
        click.echo(f"ok: {result.entries} entries in {result.files} file(s) verified")
    else:
        click.echo(f"TAMPERED: {os.path.basename(result.file)} line {result.line}"
                   f" (seq {result.seq}): {result.reason}; {result.entries} entries before "
                   f"it verified")
    if not result.ok:
        sys.exit(1)


_COLUMNS = ["time", "seq", "action", "outcome", "status", "key_id", "role", "namespace",
            "count", "remote", "latency_ms"]


@audit.command("tail")
@db_option()
@audit_dir_option
@click.option("-n", "lines", type=click.IntRange(min=1), default=20, show_default=True,
              help="How many of the newest entries.")
@output_option
def audit_tail(db_path, audit_dir, lines, as_json):
    """The newest entries of the audit log, oldest first."""
    rows = audit_mod.query(_dir(db_path, audit_dir), limit=lines)
    emit(rows, as_json, columns=_COLUMNS, empty="no audit entries")


@audit.command("query")
@db_option()
@audit_dir_option
@click.option("--since", default=None,
              help="Only entries at or after this time: epoch seconds or ISO-8601 UTC.")
@click.option("--key", default=None, help="Only entries of this key id.")
@click.option("--namespace", default=None, help="Only entries on this namespace.")
@click.option("--action", default=None, help="Only this action (upsert, query, create_key...).")
@click.option("--outcome", type=click.Choice(["ok", "error", "denied"]), default=None,
              help="Only this outcome.")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="At most this many (the newest).")
@output_option
def audit_query(db_path, audit_dir, since, key, namespace, action, outcome, limit, as_json):
    """Entries matching every filter given, oldest first."""
    from simplevector.cli_ops import _Instant
    when = None if since is None else _Instant().convert(since, None, None)
    rows = audit_mod.query(_dir(db_path, audit_dir), since=when, key=key, namespace=namespace,
                           action=action, outcome=outcome, limit=limit)
    emit(rows, as_json, columns=_COLUMNS, empty="no matching audit entries")


def register(group: click.Group) -> click.Group:
    group.add_command(keys)
    group.add_command(audit)
    return group
