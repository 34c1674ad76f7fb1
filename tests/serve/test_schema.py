"""Property-based fuzzing of every operation in the OpenAPI schema: never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
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
