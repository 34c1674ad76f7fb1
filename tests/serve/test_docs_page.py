"""/docs in a real headless browser: Swagger UI renders FastAPI's OpenAPI 3.1 schema from
local assets (Swagger UI 4.x showed an error instead of the operations).

The browser is offline: every request that leaves the loopback server is blocked, and the
test fails if the page asks for one (no CDN).
"""

from __future__ import annotations

from typing import Any

from .conftest import LiveServer, offline_page


def test_docs_lists_every_operation_offline(browser: Any, live: LiveServer) -> None:
    outside: list[str] = []
    page = offline_page(browser, live, outside, timeout_ms=20_000)
    page.goto(live.url + "/docs")
    page.wait_for_selector(".opblock-summary-path", state="attached")
    paths = set(
        page.locator(".opblock-summary-path").evaluate_all("els => els.map(e => e.dataset.path)")
    )
    assert {
        "/v1/models",
        "/v1/models/{name}",
        "/v1/models/{name}/predict",
        "/v1/models/{name}/drift",
        "/v2/models/{name}/infer",
        "/healthz",
    } <= paths
    assert page.locator(".errors-wrapper").count() == 0  # no "unable to render" notice
    assert outside == []
    page.close()
