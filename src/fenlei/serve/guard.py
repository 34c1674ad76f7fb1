"""The service's front door: the bearer token, body size and body deadline, before routing.

:class:`Guard` is pure-ASGI middleware. It runs before FastAPI reads anything, so:

* a request line and headers over ``max_header_bytes`` are answered 431;
* on ``/v1/*`` and ``/v2/models/*`` a request without the right token is answered 401
  before its body is read (and before the path is matched, so model names are not
  disclosed);
* a body over the limit is answered 413 from its ``Content-Length`` alone, or as soon as a
  streamed (chunked) body passes it, without buffering the rest;
* a client that has not sent its whole body ``body_timeout_s`` after its headers is
  answered 408 (uvicorn's keep-alive timeout covers only idle connections).

Each answer closes the connection. What the HTTP server buffers before the app sees a
request is capped by the server itself: :func:`uvicorn_options` picks uvicorn's h11
implementation, whose ``h11_max_incomplete_event_size`` refuses (400) a head that grows past
the limit while incomplete (httptools has no such limit). A head that arrives whole in one
read (up to asyncio's 256 KiB) passes h11, so the guard checks the size again (431).

Example:
    >>> app = Guard(app, settings=ServeSettings(token="s3cret"))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from fenlei.serve.schemas import ServeSettings

__all__ = ["Guard", "bearer_ok", "error_json", "send_error", "uvicorn_options"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PROTECTED = ("/v1", "/v2/models")  # the health and metadata routes stay open
_V2 = "/v2"  # the Open Inference Protocol's errors are {"error": "<message>"}
_UNAUTHORIZED = (
    "missing or wrong bearer token: send `Authorization: Bearer <token>` "
    "(the server's --token / FENLEI_TOKEN)"
)


def uvicorn_options(settings: ServeSettings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` that enforce the head limit.

    Example:
        >>> uvicorn.run(app, host="127.0.0.1", **uvicorn_options(settings))  # doctest: +SKIP
    """
    return {"http": "h11", "h11_max_incomplete_event_size": settings.max_header_bytes}


def bearer_ok(headers: Iterable[tuple[bytes, bytes]], token: str) -> bool:
    """True when the raw ASGI ``headers`` carry ``Authorization: Bearer <token>``.

    Bytes are compared (in constant time), so any byte a client sends is a plain mismatch.
    """
    expected = token.encode("ascii")
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, given = value.strip().partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), expected)
    return False


def error_json(body: dict[str, Any], *, v2: bool = False) -> bytes:
    """The service's error shape, ``{"error": {...}}``, as JSON bytes (``v2``: the Open
    Inference Protocol's ``{"error": "<message>"}``).

    ASCII-escaped: an error may quote client input (a key, a path), and input may hold
    lone surrogates that no UTF-8 encoder accepts.
    """
    error = body["message"] if v2 else body
    return json.dumps({"error": error}, ensure_ascii=True, separators=(",", ":")).encode()


async def send_error(
    send: Send,
    status: int,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    *,
    v2: bool = False,
) -> None:
    """Answer ``status`` with :func:`error_json` on a raw ASGI ``send``."""
    content = error_json(body, v2=v2)
    raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(content))]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": content})


class _Refused(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body["message"])
        self.status = status
        self.body = body


class _Disconnected(Exception):
    pass


def _head_bytes(scope: Scope) -> int:
    """Bytes of the request line and headers, as the client sent them (about)."""
    line = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 16
    return line + sum(len(name) + len(value) + 4 for name, value in scope["headers"])


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class Guard:
    """Pure-ASGI middleware: head size, token, body size and body deadline, in that order.

    Args:
        app: the ASGI app behind it.
        settings: ``max_header_bytes`` (431 beyond), ``token`` (required on ``/v1/*``;
            None: open), ``body_limit`` (413 beyond) and ``body_timeout_s`` (seconds to
            receive the whole body once the headers are in; 408).
    """

    def __init__(self, app: ASGIApp, *, settings: ServeSettings) -> None:
        self.app = app
        self.token = settings.token
        self.max_header_bytes = settings.max_header_bytes
        self.max_body_bytes = settings.body_limit
        self.body_timeout_s = settings.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        v2 = _under(path, _V2)
        head = _head_bytes(scope)
        if head > self.max_header_bytes:
            close = {"Connection": "close"}
            await send_error(send, 431, self._head_too_large(head), close, v2=v2)
            return
        protected = any(_under(path, prefix) for prefix in _PROTECTED)
        if self.token is not None and protected and not bearer_ok(scope["headers"], self.token):
            body = {"code": "unauthorized", "message": _UNAUTHORIZED}
            headers = {"WWW-Authenticate": "Bearer", "Connection": "close"}
            await send_error(send, 401, body, headers, v2=v2)
            return
        try:
            content = await self._read_body(scope, receive)
        except _Refused as refused:
            await send_error(send, refused.status, refused.body, {"Connection": "close"}, v2=v2)
            return
        except _Disconnected:
            return
        await self.app(scope, _replay(content, receive), send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The whole body, within the size limit and the deadline."""
        declared = _content_length(scope["headers"])
        if declared is not None and declared > self.max_body_bytes:
            raise _Refused(413, self._too_large(declared))
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Disconnected
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        raise _Refused(413, self._too_large(size, streamed=True))
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            raise _Refused(408, self._too_slow(size, declared)) from None

    def _head_too_large(self, got: int) -> dict[str, Any]:
        return {
            "code": "headers_too_large",
            "message": f"the request line and headers have about {got:,} bytes; the limit "
            f"(max_header_bytes) is {self.max_header_bytes:,}: send fewer or shorter headers",
            "limit": "max_header_bytes",
            "max": self.max_header_bytes,
            "got": got,
        }

    def _too_large(self, got: int, *, streamed: bool = False) -> dict[str, Any]:
        what = f"more than {self.max_body_bytes:,}" if streamed else f"{got:,}"
        return {
            "code": "body_too_large",
            "message": f"the request body has {what} bytes; the limit (max_body_bytes) is "
            f"{self.max_body_bytes:,}: send fewer or shorter texts per request",
            "limit": "max_body_bytes",
            "max": self.max_body_bytes,
            "got": got,
        }

    def _too_slow(self, got: int, declared: int | None) -> dict[str, Any]:
        of = f" of {declared:,}" if declared is not None else ""
        return {
            "code": "body_timeout",
            "message": f"the request body did not arrive within {self.body_timeout_s:g} s "
            f"(body_timeout_s); {got:,}{of} bytes came: send the body without pauses",
            "limit": "body_timeout_s",
            "max": self.body_timeout_s,
            "got": got,
        }


def _replay(content: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the body already read, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": content, "more_body": False}
        return await receive()

    return replay
