"""``simplevector serve``: the HTTP server (:mod:`simplevector.server`) under uvicorn.

Secure by default for now: without API keys (a later step of issue 13) the server binds only
to a loopback address; another ``--host`` is refused unless ``--insecure``. SIGTERM or
Ctrl-C stops it gracefully: uvicorn stops accepting connections, lets in-flight requests
finish, then the database is closed, which checkpoints.
"""

from __future__ import annotations

import ipaddress
import signal

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
              help="Allow a non-loopback --host without API keys (anyone who can reach the "
                   "port can read and write).")
@click.option("--readonly", is_flag=True, default=False,
              help="Open the database read-only (writes answer 403 read_only).")
@click.option("--max-body-bytes", type=click.IntRange(min=1), default=None,
              help="Largest request body accepted (default 64 MiB); larger ones get 413.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              help="uvicorn's log level.")
def serve(db_path, host, port, insecure, readonly, max_body_bytes, log_level):
    """Serve the database at --db over HTTP (JSON and msgpack) until SIGTERM or Ctrl-C."""
    if not is_loopback(host) and not insecure:
        raise sv.InvalidInput(
            f"--host {host} is not a loopback address and API keys are not available yet; "
            f"the server binds only to 127.0.0.1 / ::1 / localhost",
            hint="use --host 127.0.0.1, or pass --insecure to expose it without keys")
    import uvicorn

    from simplevector.server import DEFAULT_MAX_BODY_BYTES, create_app
    db = sv.open(db_path, readonly=readonly)
    try:
        app = create_app(db, max_body_bytes=max_body_bytes or DEFAULT_MAX_BODY_BYTES)
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                lifespan="off", timeout_graceful_shutdown=30)
        _run_until_signal(uvicorn.Server(config))
    finally:
        db.close()


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
