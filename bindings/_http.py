"""Decoding requests and encoding answers, shared by the server's route modules
(:mod:`simplevector.server`, :mod:`simplevector._server_ops`): JSON or msgpack bodies,
size-limited, with known keys only; typed query parameters; the threadpool call."""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from simplevector._output import to_jsonable
from simplevector._wire import MSGPACK, pack, unpack
from simplevector.engine.errors import InvalidInput, LimitExceeded

__all__ = ["encode", "payload", "too_large", "version", "int_param", "call", "pick"]


def encode(request: Request | None, data, status: int = 200) -> Response:
    if request is not None and (request.headers.get("accept", "").startswith(MSGPACK) or
                                request.headers.get("content-type", "").startswith(MSGPACK)):
        return Response(pack(data), status, media_type=MSGPACK)
    body = json.dumps(to_jsonable(data), ensure_ascii=False).encode("utf-8")
    return Response(body, status, media_type="application/json")


async def payload(request: Request, allowed: tuple) -> dict:
    """The request body as a dict (JSON or msgpack), size-limited, with known keys only."""
    limit = request.app.state.max_body_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(size, limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        return {}
    if request.headers.get("content-type", "").startswith(MSGPACK):
        data = unpack(body)
    else:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InvalidInput(f"the request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"the request body is a {type(data).__name__}; expected an object")
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise InvalidInput(f"unknown field(s) {unknown} in the request body; expected some of "
                           f"{sorted(allowed)}")
    return data


def too_large(size: int, limit: int) -> LimitExceeded:
    return LimitExceeded(
        f"the request body is {size} bytes or more; the server accepts at most {limit}",
        hint="split the request into smaller batches, or start the server with a larger "
             "--max-body-bytes", limit="max_body_bytes", maximum=limit, actual=size)


def version(request: Request):
    raw = request.query_params.get("version")
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"version {raw!r} is not valid; expected an integer >= 1") from None


def int_param(request: Request, name: str, default):
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{name} {raw!r} is not valid; expected an integer") from None


def call(fn, *args, **kwargs):
    return run_in_threadpool(fn, *args, **kwargs)


def pick(data: dict, *keys) -> dict:
    return {k: data[k] for k in keys if k in data}
