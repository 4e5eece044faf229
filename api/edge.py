"""Guards at the edge of the app, outside routing and authentication (pure ASGI middleware).

``RequestGuard`` reads a request body before anything parses or authorises it: over
``DDSM_MAX_BODY_BYTES`` (the declared Content-Length, then the bytes actually streamed) is a 413, and
a JSON body holding NaN, Infinity or a number beyond a float's range is a 422 (JSON has no such
numbers and Postgres stores none). ``ErrorRedaction`` shows the ``error`` / ``reason`` fields of JSON
replies (a worker's traceback) in full to key holders only; other readers get their first line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from api.deps import key_matches

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REDACTED_KEYS = ("error", "reason")
MAX_REASON_CHARS = 300


class RequestGuard:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send)
            return
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:  # a chunked body, or one longer than it said
                await self._too_large(send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        if body and _is_json(headers.get("content-type")):
            bad = nonfinite_number(body)
            if bad is not None:
                await _reply(send, 422, {"detail": [{
                    "type": "json_invalid", "loc": ["body"], "input": None,
                    "msg": f"{bad[:40]} is not a JSON number: send a finite number",
                }]})  # fmt: skip
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # e.g. http.disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send) -> None:
        detail = f"request body over {self.max_body_bytes} bytes (DDSM_MAX_BODY_BYTES)"
        await _reply(send, 413, {"detail": detail})


class _NonFinite(Exception):
    pass


def nonfinite_number(body: bytes) -> str | None:
    """The first NaN / Infinity / out-of-range number in a JSON body, None if there is none (or if the
    body is not JSON at all: FastAPI answers that with its own 422)."""

    def constant(token: str) -> Any:
        raise _NonFinite(token)

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise _NonFinite(text)
        return value

    try:
        json.loads(body, parse_constant=constant, parse_float=number)
    except _NonFinite as exc:
        return str(exc)
    except (ValueError, RecursionError):
        return None
    return None


class ErrorRedaction:
    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or key_matches(self.api_key, _headers(scope).get("x-api-key")):
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []

        async def redacting_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                if not _is_json(_headers(message).get("content-type")):
                    await send(message)  # PNGs and the like pass untouched
                return
            if start is None or not _is_json(_headers(start).get("content-type")):
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _redacted(b"".join(chunks))
            headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

        await self.app(scope, receive, redacting_send)


def _redacted(body: bytes) -> bytes:
    """``body`` with its ``error`` / ``reason`` strings redacted; unchanged, byte for byte, when there
    is nothing to redact (a strategy file downloads as the file ``ddsm search`` writes)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return body
    redacted = redact(data)
    return body if redacted == data else json.dumps(redacted, separators=(",", ":")).encode()


def redact(value: Any) -> Any:
    """``error`` / ``reason`` strings cut to their first line, everywhere in a JSON value."""
    if isinstance(value, dict):
        return {
            k: one_line(v) if k in REDACTED_KEYS and isinstance(v, str) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0][:MAX_REASON_CHARS] if lines else ""


def json_safe(value: Any) -> Any:
    """A value JSON can encode as UTF-8: non-finite floats become their names, lone surrogates escapes
    (a 422 that echoes the input)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):  # a lone surrogate (JSON "\ud800") has no UTF-8 form
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _headers(scope_or_message: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope_or_message.get("headers", [])}


def _is_json(content_type: str | None) -> bool:
    """What FastAPI parses as JSON: no content type, application/json or application/*+json."""
    if not content_type:
        return True
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


async def _reply(send: Send, status: int, content: Any) -> None:
    body = json.dumps(content).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body, "more_body": False})
