"""The front door: token before body, body size and deadline, head size, unusable tokens.

Most checks speak raw HTTP over a socket, so a test can send headers without a body, a
body too slowly, or a head too large, the way an attacker would.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from pydantic import ValidationError

from fenlei.cli import main
from fenlei.errors import ConfigError
from fenlei.serve.app import create_app
from fenlei.serve.schemas import ServeSettings, serve_settings

from .conftest import LiveServer

TOKEN = "s3cret-token"
AUTH = f"Authorization: Bearer {TOKEN}\r\n"
PREDICT = "/v1/models/intents/predict"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def guarded(serve_run: Path) -> Iterator[LiveServer]:
    """A server with a token, a 4 KiB body limit, a 0.5 s body deadline, 8 KiB heads."""
    settings = ServeSettings(
        token=TOKEN, max_body_bytes=4096, body_timeout_s=0.5, max_header_bytes=8192
    )
    server = LiveServer(create_app({"intents": serve_run}, settings)).start()
    yield server
    server.stop()


def _exchange(server: LiveServer, data: bytes, *, pause_after: bytes = b"") -> bytes:
    """Send ``data`` (then ``pause_after``), return the response (up to 64 KiB)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(data)
        if pause_after:
            s.sendall(pause_after)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
    return b"".join(chunks)


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    match = re.search(rb"content-length: *(\d+)", head, re.IGNORECASE)
    return match is not None and len(body) >= int(match.group(1))


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _post_head(path: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def test_no_token_is_401_before_the_body_is_read(guarded: LiveServer) -> None:
    # Headers announcing 300 MB and no body at all: the answer must not wait for it.
    response = _exchange(guarded, _post_head(PREDICT, 300_000_000))
    assert _status(response) == 401
    assert b"www-authenticate: bearer" in response.lower()
    assert b'"code":"unauthorized"' in response


def test_unknown_model_without_token_is_401_not_a_list_of_models(guarded: LiveServer) -> None:
    with guarded.client() as c:
        r = c.post("/v1/models/nope/predict", json={"texts": ["x"]})
        drift = c.get("/v1/models/nope/drift")
    assert r.status_code == 401 and drift.status_code == 401
    assert "intents" not in r.text and "intents" not in drift.text


@pytest.mark.parametrize(
    "value",
    [b"Bearer s3cret-t\xc3\xb6ken", b"Bearer \xff\xfe", "Bearer s3cret-tökén".encode("latin-1")],
)
def test_non_ascii_authorization_is_401(guarded: LiveServer, value: bytes) -> None:
    with guarded.client() as c:
        predict = c.post(PREDICT, json={"texts": ["x"]}, headers={"Authorization": value})
        models = c.get("/v1/models", headers={"Authorization": value})
    assert predict.status_code == 401 and models.status_code == 401
    assert predict.json()["error"]["code"] == "unauthorized"


def test_right_token_still_predicts_and_health_needs_none(guarded: LiveServer) -> None:
    with guarded.client() as c:
        r = c.post(PREDICT, json={"texts": ["hi"]}, headers={"Authorization": f"Bearer {TOKEN}"})
        health = c.get("/healthz")
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    assert health.status_code == 200


def test_declared_body_over_the_limit_is_413_without_reading_it(guarded: LiveServer) -> None:
    response = _exchange(guarded, _post_head(PREDICT, 300_000_000, AUTH))
    assert _status(response) == 413
    assert b'"limit":"max_body_bytes"' in response and b'"max":4096' in response
    assert b"connection: close" in response.lower()


def test_chunked_body_over_the_limit_is_413(guarded: LiveServer) -> None:
    head = (
        f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\n{AUTH}\r\n"
    ).encode()
    chunk = b"400\r\n" + b" " * 1024 + b"\r\n"
    response = _exchange(guarded, head + chunk * 8)  # 8 KiB, and no end
    assert _status(response) == 413
    assert b'"code":"body_too_large"' in response


def test_slow_body_is_408(guarded: LiveServer) -> None:
    # 10 of 100 promised bytes, then nothing: the 0.5 s deadline answers.
    response = _exchange(guarded, _post_head(PREDICT, 100, AUTH) + b'{"texts": ')
    assert _status(response) == 408
    error = response.partition(b"\r\n\r\n")[2]
    assert b'"limit":"body_timeout_s"' in error and b'"got":10' in error


def test_body_within_the_limit_still_works_and_stays_open(guarded: LiveServer) -> None:
    body = b'{"texts": ["where is my parcel?"]}'
    first = _post_head(PREDICT, len(body), AUTH) + body
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=20) as s:
        for _ in range(2):  # keep-alive: the second request on the same connection
            s.sendall(first)
            response = b""
            while not _complete(response):
                response += s.recv(65536)
            assert _status(response) == 200


def test_huge_header_is_refused_without_being_read(guarded: LiveServer) -> None:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
    sent = 0
    response = b""
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=20) as s:
        try:
            s.sendall(head)
            for _ in range(256):  # up to 16 MiB, in 64 KiB pieces
                s.sendall(b"a" * 65536)
                sent += 65536
            s.sendall(b"\r\n\r\n")
            response = s.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            pass  # the server closed the connection: refused
        if not response:
            try:
                response = s.recv(65536)
            except (ConnectionResetError, BrokenPipeError, TimeoutError):
                response = b""
    assert not response.startswith(b"HTTP/1.1 200"), response[:200]
    assert sent < 16 * 2**20  # the server stopped reading long before the end
    with guarded.client() as c:
        assert c.get("/healthz").status_code == 200  # and serves others as before


def test_serve_passes_the_head_limit_to_uvicorn(
    serve_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fenlei.serve import app as app_module

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(kwargs))
    port = _free_port()
    app_module.serve([serve_run], ServeSettings(max_header_bytes=4096), port=port)
    assert seen["http"] == "h11" and seen["h11_max_incomplete_event_size"] == 4096


# ---------------------------------------------------------------- unusable tokens


@pytest.mark.parametrize("token", ["pässwort", "two words", "tab\there", "", "naïve"])
def test_unusable_token_is_refused_by_the_settings(token: str) -> None:
    with pytest.raises(ValidationError):
        ServeSettings(token=token)
    with pytest.raises(ConfigError) as caught:
        serve_settings(token=token)
    message = str(caught.value)
    assert message.startswith("invalid serve settings: token:") and "\n" not in message
    if token:
        assert token not in message  # a secret is never echoed


def test_serve_with_a_non_ascii_token_is_one_error_line(
    capsys: pytest.CaptureFixture[str], serve_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fenlei.serve import app as app_module

    started: list[object] = []
    monkeypatch.setattr(app_module, "serve", lambda *a, **k: started.append(a))
    code = main(["serve", str(serve_run), "--port", str(_free_port()), "--token", "pässwort"])
    err = ANSI.sub("", capsys.readouterr().err)
    assert code == 2 and not started, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: invalid serve settings: token:")
    assert "pässwort" not in err


def test_serve_cli_limits_reach_the_settings(
    serve_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fenlei.serve import app as app_module

    seen: list[ServeSettings] = []
    monkeypatch.setattr(app_module, "serve", lambda runs, settings, **k: seen.append(settings))
    args = ["serve", str(serve_run), "--max-body-bytes", "5000", "--max-header-bytes", "2048"]
    args += ["--body-timeout-s", "3", "--max-batch-chars", "900"]
    assert main(args) == 0
    (settings,) = seen
    assert (settings.body_limit, settings.max_header_bytes) == (5000, 2048)
    assert (settings.body_timeout_s, settings.max_batch_chars) == (3.0, 900)
    assert main(["serve", str(serve_run)]) == 0
    assert seen[1].body_limit == 256 * 10_000 * 6 + 65_536  # derived from the text limits


def test_default_body_limit_fits_the_largest_escaped_request() -> None:
    import json

    settings = ServeSettings(max_texts=4, max_chars=50)
    body = json.dumps({"texts": ["我" * 50] * 4, "top_k": 1000})  # \\uXXXX per character
    assert len(body.encode()) <= settings.body_limit


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_guard_errors_are_json_in_the_service_shape(guarded: LiveServer) -> None:
    with guarded.client() as c:
        r = c.post(
            PREDICT,
            content=b"x" * 5000,
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/json"
    assert set(r.json()["error"]) >= {"code", "message", "limit", "max", "got"}
    assert r.json()["error"]["got"] == 5000


# ---------------------------------------------------------------- hostile text


@pytest.mark.parametrize(
    ("body", "item"),
    [
        (b'{"texts": ["fine", "\\ud800"]}', "texts[1]"),
        (b'{"texts": ["a \\udfff b"]}', "texts[0]"),
        (b'{"texts": ["ok", "ok", "\\ud83d"], "top_k": 2}', "texts[2]"),
    ],
)
def test_lone_surrogate_is_422_naming_the_item(live: LiveServer, body: bytes, item: str) -> None:
    with live.client() as c:
        r = c.post(PREDICT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_request"
    (detail,) = error["details"]
    assert detail["loc"] == ["body", "texts"]
    assert detail["msg"].startswith(f"Value error, {item} contains U+D")


def test_surrogates_elsewhere_are_client_errors(live: LiveServer) -> None:
    bodies = [
        b'{"texts": ["a"], "\\ud800": 1}',  # an unknown key, echoed in the error's loc
        b'{"\\udc00": ["a"]}',
        b'{"texts": ["a"], "top_k": "\\ud800"}',
    ]
    with live.client() as c:
        for body in bodies:
            r = c.post(PREDICT, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, body
            assert r.json()["error"]["code"] == "invalid_request"
        assert c.post(PREDICT, json={"texts": ["still fine"]}).status_code == 200


def test_valid_pair_and_other_scripts_are_accepted(live: LiveServer) -> None:
    body = '{"texts": ["\\ud83d\\ude00 emoji", "我要退款", "ok"]}'.encode()
    with live.client() as c:
        r = c.post(PREDICT, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3


# ---------------------------------------------------------------- head size


def test_head_over_the_limit_in_one_read_is_refused(guarded: LiveServer) -> None:
    # 10 KiB of headers in one write usually reach h11 whole (it then accepts them): the
    # guard answers 431. Split across reads, h11 stops at 8 KiB itself (400).
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_240 + b"\r\n\r\n"
    response = _exchange(guarded, head)
    assert _status(response) in (400, 431), response[:200]


def test_guard_answers_431_for_a_large_head_it_is_handed() -> None:
    import asyncio

    from fenlei.serve.guard import Guard

    reached: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)

    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    guard = Guard(app, settings=ServeSettings(max_header_bytes=2048))
    scope = {"type": "http", "path": "/healthz", "raw_path": b"/healthz", "query_string": b""}
    asyncio.run(guard({**scope, "headers": [(b"x-big", b"a" * 4096)]}, receive, send))
    assert sent[0]["status"] == 431 and not reached
    assert b'"limit":"max_header_bytes"' in sent[1]["body"]
    sent.clear()
    asyncio.run(guard({**scope, "headers": [(b"x-small", b"a" * 100)]}, receive, send))
    assert reached and not sent
