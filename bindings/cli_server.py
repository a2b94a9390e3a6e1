"""``simplevector serve``: the HTTP server (:mod:`simplevector.server`) under uvicorn.

Secure by default: while the database holds no API key the server runs without
authentication, binds only to a loopback address and says so; a non-loopback ``--host`` is
refused until an active admin key exists (``simplevector keys create --role admin``) or
``--insecure`` is given. Once any key exists every ``/v1`` route needs one. Every write,
admin action and denied request goes to the audit log (``DB/audit`` or ``--audit-dir``;
``--audit-stdout`` copies each line to stdout for a log shipper; ``--audit-reads`` adds
reads). SIGTERM or Ctrl-C stops it gracefully: uvicorn stops accepting connections, lets
in-flight requests finish, then the database is closed, which checkpoints.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import sys

import click

import simplevector as sv
from simplevector._cli import Command, db_option

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8484


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command("serve", cls=Command)
@db_option()
@click.option("--host", default=DEFAULT_HOST, show_default=True,
              help="Address to bind; only loopback without --insecure.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port.")
@click.option("--insecure", is_flag=True, default=False,
              help="Allow a non-loopback --host before an admin key exists (without keys "
                   "anyone who can reach the port can read and write).")
@click.option("--readonly", is_flag=True, default=False,
              help="Open the database read-only (writes answer 403 read_only).")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=None,
              help="Largest request body accepted (default 64 MiB); larger ones get 413.")
@click.option("--audit-dir", type=click.Path(file_okay=False), default=None,
              help="Audit log directory (default: DB/audit).")
@click.option("--audit-stdout", is_flag=True, default=False,
              help="Also print each audit entry (one JSON line) to stdout.")
@click.option("--audit-reads", is_flag=True, default=False,
              help="Audit reads (query, get, count, ...) too, not only writes, admin "
                   "actions and denials.")
@click.option("--audit-max-bytes", type=click.IntRange(min=1), default=64 << 20,
              show_default=True, help="Rotate the audit file past this size.")
@click.option("--audit-keep", type=click.IntRange(min=1), default=20, show_default=True,
              help="Audit files to retain (older ones are deleted).")
@click.option("--key-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Requests per second allowed to each API key (a token bucket per key; "
                   "over it: 429 with Retry-After). Default: no limit.")
@click.option("--key-burst", type=click.FloatRange(min=1), default=None,
              help="Burst of --key-rate (default: one second's worth).")
@click.option("--embedding", "embedding_specs", multiple=True, metavar="SPEC",
              help="An embedding function the server may call (repeatable): glove, "
                   "glove:X.Y.Z or package.module:factory; it serves the namespaces bound "
                   "to its model (query_text, sync, migrations).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              help="uvicorn's log level.")
def serve(db_path, host, port, insecure, readonly, max_body_bytes, audit_dir, audit_stdout,
          audit_reads, audit_max_bytes, audit_keep, key_rate, key_burst, embedding_specs,
          log_level):
    """Serve the database at --db over HTTP (JSON and msgpack) until SIGTERM or Ctrl-C."""
    exposed = not is_loopback(host)
    if exposed and not insecure and not os.path.isdir(os.path.join(db_path, "lmdb")):
        raise _refuse(host)
    import uvicorn

    from simplevector.ops.audit import AuditLog
    from simplevector.ops.keys import KeyStore
    from simplevector.cli_fresh import load_embedding
    from simplevector.server import DEFAULT_MAX_BODY_BYTES, create_app
    functions = [load_embedding(spec) for spec in embedding_specs]
    db = sv.open(db_path, readonly=readonly)
    log = None
    try:
        store = KeyStore(db)
        check_bind(host, insecure, store.has_active_admin())
        if store.enabled():
            click.echo("simplevector: API keys required on every /v1 route "
                       "(/healthz, /readyz, /openapi.json open)", err=True)
        else:
            click.echo("simplevector: no API keys in this database: serving WITHOUT "
                       f"authentication on {host}"
                       + (" (loopback only)" if not exposed else " (--insecure)")
                       + "; create an admin key with `simplevector keys create --role admin`",
                       err=True)
        log = AuditLog(audit_dir or os.path.join(db_path, "audit"), max_bytes=audit_max_bytes,
                       keep=audit_keep, stdout=sys.stdout if audit_stdout else None)
        limiter = None
        if key_rate is not None:
            from simplevector.ops.ratelimit import KeyRateLimiter
            limiter = KeyRateLimiter(key_rate, key_burst)
        app = create_app(db, max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY_BYTES,
                         audit=log, audit_reads=audit_reads, rate_limiter=limiter,
                         embeddings=functions)
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                lifespan="off", timeout_graceful_shutdown=30)
        _run_until_signal(uvicorn.Server(config))
    finally:
        db.close()
        if log is not None:
            log.close()


def check_bind(host: str, insecure: bool, has_admin_key: bool) -> None:
    """Raise InvalidInput unless the server may bind ``host``: loopback always; another
    address only once an active admin key exists, or with ``--insecure``."""
    if not is_loopback(host) and not insecure and not has_admin_key:
        raise _refuse(host)


def _refuse(host) -> sv.InvalidInput:
    return sv.InvalidInput(
        f"--host {host} is not a loopback address and the database has no active admin API "
        f"key; without one the server binds only to 127.0.0.1 / ::1 / localhost",
        hint="create a key with `simplevector keys create --role admin --db PATH`, use "
             "--host 127.0.0.1, or pass --insecure to expose it anyway")


def _run_until_signal(server) -> None:
    """Run uvicorn; SIGTERM / SIGINT stop it gracefully and return here (exit 0 after the
    database is closed) instead of killing the process once uvicorn re-raises the signal."""
    previous = {sig: signal.signal(sig, lambda *_: None)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def register(group: click.Group) -> click.Group:
    group.add_command(serve)
    return group
