"""Property-based fuzzing of every operation in the OpenAPI schema: never a 5xx."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from fenlei.serve.app import create_app
from fenlei.serve.schemas import ServeSettings

from .conftest import LiveServer


@pytest.fixture(scope="module")
def fuzz_server(serve_run: Path) -> Iterator[LiveServer]:
    app = create_app({"intents": serve_run}, ServeSettings(max_texts=32, max_chars=2000))
    server = LiveServer(app).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


def _operations(api_schema: schemathesis.BaseSchema) -> list[Any]:
    return [result.ok() for result in api_schema.get_all_operations()]


def test_every_operation_is_fuzzed_without_server_errors(
    api_schema: schemathesis.BaseSchema, fuzz_server: LiveServer
) -> None:
    # Operations are looped over here (not parametrized by the schemathesis pytest plugin,
    # which does not support this pytest version); each gets its own hypothesis run.
    operations = _operations(api_schema)
    assert {op.path for op in operations} >= {"/v1/models/{name}/predict", "/v1/models"}
    calls = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            nonlocal calls
            calls += 1
            case.call_and_validate(
                base_url=fuzz_server.url,
                checks=[not_a_server_error, response_schema_conformance],
            )

        check()
    assert calls >= 5 * len(operations)


# ---------------------------------------------------------------- what the schema cannot say
# schemathesis draws strings without lone surrogates, header values in ASCII and bodies of
# modest size; these cases draw exactly those, against servers configured as `fenlei serve`.

_PREDICT = "/v1/models/intents/predict"
_TOKEN = "fuzz-token"

# Any code point, lone surrogates (category Cs) included.
_texts = st.lists(
    st.text(st.characters(codec=None, categories=None), max_size=40), min_size=1, max_size=5
)
# Header bytes an HTTP/1.1 client can send: space to 0xFF except DEL (no CR, LF or NUL).
_header_bytes = st.binary(min_size=0, max_size=40).map(
    lambda b: bytes(c for c in b if 0x20 <= c <= 0xFF and c != 0x7F).strip()
)


@pytest.fixture(scope="module")
def token_server(serve_run: Path) -> Iterator[LiveServer]:
    app = create_app({"intents": serve_run}, ServeSettings(token=_TOKEN, max_texts=8))
    server = LiveServer(app).start()
    yield server
    server.stop()


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def test_texts_with_any_code_point_never_give_a_server_error(fuzz_server: LiveServer) -> None:
    with fuzz_server.client() as client:

        @given(texts=_texts, top_k=st.integers(-2, 5))
        @example(texts=["", "\ud800"], top_k=0)  # CI drew it: the empty text is named first
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        def check(texts: list[str], top_k: int) -> None:
            body = json.dumps({"texts": texts, "top_k": top_k})  # \udXXX stays escaped
            r = client.post(_PREDICT, content=body, headers={"content-type": "application/json"})
            assert r.status_code in (200, 422), (texts, r.status_code, r.text)
            # the server names the first unusable text, so the oracle looks at that one
            first_bad = next((t for t in texts if _has_surrogate(t) or not t.strip()), None)
            if first_bad is not None and _has_surrogate(first_bad):
                assert r.status_code == 422 and "contains U+D" in r.text
            elif first_bad is not None:
                assert r.status_code == 422 and "is empty" in r.text
            elif top_k >= 1:
                assert r.status_code == 200

        check()


def test_any_header_bytes_never_give_a_server_error(token_server: LiveServer) -> None:
    with token_server.client() as client:

        @given(auth=_header_bytes, other=_header_bytes)
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        def check(auth: bytes, other: bytes) -> None:
            headers = {"Authorization": (b"Bearer " + auth).strip(), "X-Anything": other}
            predict = client.post(_PREDICT, json={"texts": ["hi"]}, headers=headers)
            models = client.get("/v1/models", headers={"Authorization": auth})
            health = client.get("/healthz", headers={"X-Anything": other})
            assert predict.status_code == (200 if auth == _TOKEN.encode() else 401)
            assert models.status_code == 401 and health.status_code == 200

        check()


def test_oversized_body_and_head_are_refused_not_failed(fuzz_server: LiveServer) -> None:
    limit = fuzz_server.state.settings.body_limit
    with fuzz_server.client() as client:
        body = json.dumps({"texts": ["x" * 2000] * 32}).encode() + b" " * limit
        r = client.post(_PREDICT, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["limit"] == "max_body_bytes"
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", fuzz_server.port), timeout=20) as s:
        try:
            s.sendall(head)
            status = s.recv(64)
        except (ConnectionResetError, BrokenPipeError):
            status = b""
    assert status == b"" or status.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")), status
    with fuzz_server.client() as client:
        assert client.get("/healthz").status_code == 200
