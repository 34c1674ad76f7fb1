"""/docs in a real headless browser: Swagger UI renders FastAPI's OpenAPI 3.1 schema from
local assets (Swagger UI 4.x showed an error instead of the operations).

The browser is offline: every request that leaves the loopback server is blocked, and the
test fails if the page asks for one (no CDN).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield browser
        browser.close()


def test_docs_lists_every_operation_offline(browser: Any, live: LiveServer) -> None:
    outside: list[str] = []
    page = browser.new_page()
    page.set_default_timeout(20_000)

    def route(r: Any) -> None:
        if r.request.url.startswith(live.url):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    page.route("**/*", route)
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
