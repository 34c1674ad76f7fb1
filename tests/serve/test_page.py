"""The try-it page in a real headless browser (Debian chromium driven by Playwright).

The browser is offline: every request that leaves the loopback server is blocked and the
test fails if the page asks for one (no CDN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import LiveServer, StartServer, offline_page


def test_page_classifies_text_and_draws_bars(
    browser: Any, start_server: StartServer, serve_run: Path
) -> None:
    server = start_server({"intents": serve_run, "second": serve_run})
    outside: list[str] = []
    page = offline_page(browser, server, outside)
    page.goto(server.url + "/")
    page.wait_for_selector("#model option", state="attached")
    assert page.locator("#model option").count() == 2
    page.select_option("#model", "intents")
    page.fill("#text", "hi, my parcel still hasn't arrived, where is it?")
    page.click("#classify")
    page.wait_for_selector(".bar-row")
    n_labels = len(server.state.models["intents"].predictor.labels)
    assert n_labels > 5
    assert page.locator(".bar-row").count() == 5  # the top-k control's default
    page.select_option("#top-k", str(n_labels))  # "all 12": classifies again
    page.wait_for_function(f"document.querySelectorAll('.bar-row').length === {n_labels}")
    rows = page.locator(".bar-row")
    widths = [
        float(rows.nth(i).locator(".bar").evaluate("el => parseFloat(el.style.width)"))
        for i in range(n_labels)
    ]
    assert widths == sorted(widths, reverse=True)
    assert sum(widths) == pytest.approx(100, abs=1)
    assert "Top label: " in page.inner_text("#status")
    assert outside == []
    page.close()


def test_page_shows_server_errors(browser: Any, start_server: StartServer, serve_run: Path) -> None:
    server = start_server({"intents": serve_run}, max_chars=20)
    outside: list[str] = []
    page = offline_page(browser, server, outside)
    page.goto(server.url + "/")
    page.wait_for_selector("#model option", state="attached")
    page.fill("#text", "this text is far longer than twenty characters")
    page.click("#classify")
    page.wait_for_selector("#status .error")
    assert "max_chars" in page.inner_text("#status")
    assert outside == []
    page.close()


def test_page_with_token(browser: Any, start_server: StartServer, serve_run: Path) -> None:
    server = start_server({"intents": serve_run}, token="t0ken")
    page = offline_page(browser, server, [])
    page.goto(server.url + "/")
    page.wait_for_selector("#status .error")  # /v1/models answered 401
    page.fill("#token", "t0ken")
    page.dispatch_event("#token", "change")
    page.wait_for_selector("#model option", state="attached")
    page.fill("#text", "我要退款")
    page.click("#classify")
    page.wait_for_selector(".bar-row")
    page.close()


def _classify(page: Any, server: LiveServer, text: str, *, per_line: bool = False) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector("#model option", state="attached")
    if per_line:
        page.check("#per-line")
    page.fill("#text", text)
    page.click("#classify")


def test_page_highlights_the_words_under_each_prediction(
    browser: Any, start_server: StartServer, serve_run: Path
) -> None:
    server = start_server({"intents": serve_run})
    outside: list[str] = []
    page = offline_page(browser, server, outside)
    text = "😀 my parcel still hasn't arrived, 快递到哪里了?"
    _classify(page, server, text)
    page.wait_for_selector(".why .tok")
    assert page.inner_text(".why .hl") == text  # every character shown, once, in order
    words = page.locator(".why .tok")
    assert words.count() >= 8
    colours = {words.nth(i).evaluate("el => el.style.backgroundColor") for i in range(3)}
    assert all(c.startswith("rgba(") for c in colours)
    label = server.state.models["intents"].predictor.predict([text])[0].label
    assert page.inner_text(".why .muted").startswith(f"Why {label}:")
    assert outside == []
    page.close()


MARKUP = [
    "<img src=x onerror=\"window.__pwned='img'; alert(1)\">",
    "<script>window.__pwned='script'; alert(2)</script>",
    "</div><svg onload=\"window.__pwned='svg'\"></svg> refund",
]


def test_markup_in_texts_and_labels_never_runs(
    browser: Any, start_server: StartServer, predictor: Any
) -> None:
    from fenlei.predict import Predictor

    labels = [
        f"<img src=x onerror=\"window.__pwned='label{i}'\">{name}"
        for i, name in enumerate(predictor.labels)
    ]
    relabelled = Predictor(predictor.encoder, predictor.model, labels, run=predictor.run)
    server = start_server({"intents": relabelled})
    dialogs: list[str] = []
    page = offline_page(browser, server, [])
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    _classify(page, server, "\n".join(MARKUP), per_line=True)
    page.wait_for_function("document.querySelectorAll('.why .hl').length === 3")
    page.wait_for_timeout(300)  # an injected onerror/onload would have fired by now
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []
    assert page.locator("#results img, #results script, #results svg, #model img").count() == 0
    shown = [page.locator(".why .hl").nth(i).inner_text() for i in range(3)]
    assert shown == MARKUP  # shown as the text it is
    assert labels[0] in page.inner_text("#results") or labels[1] in page.inner_text("#results")
    page.close()


def test_top_k_control_limits_the_bars_and_lists_every_choice(
    browser: Any, start_server: StartServer, serve_run: Path
) -> None:
    server = start_server({"intents": serve_run})
    page = offline_page(browser, server, [])
    _classify(page, server, "where is my parcel?\nI want a refund", per_line=True)
    page.wait_for_selector(".bar-row")
    n_labels = len(server.state.models["intents"].predictor.labels)
    options = page.locator("#top-k option")
    values = [options.nth(i).get_attribute("value") for i in range(options.count())]
    assert values == ["1", "3", "5", "10", str(n_labels)]
    page.select_option("#top-k", "3")
    page.wait_for_function("document.querySelectorAll('.bar-row').length === 6")  # 2 texts x 3
    assert [page.locator(".result").nth(i).locator(".bar-row").count() for i in (0, 1)] == [3, 3]
    page.close()


def test_an_error_clears_the_results_of_the_request_before(
    browser: Any, start_server: StartServer, serve_run: Path
) -> None:
    server = start_server({"intents": serve_run}, max_chars=40)
    page = offline_page(browser, server, [])
    _classify(page, server, "where is my parcel?")
    page.wait_for_selector(".bar-row")
    page.fill("#text", "this text is far longer than the forty characters allowed here")
    page.click("#classify")
    page.wait_for_selector("#status .error")
    assert "max_chars" in page.inner_text("#status")
    assert page.locator("#results .result").count() == 0  # no bars left from the first text
    page.close()


def test_chinese_texts_and_labels_are_marked_for_the_cjk_font_stack(
    browser: Any, start_server: StartServer, serve_run: Path
) -> None:
    server = start_server({"intents": serve_run})
    page = offline_page(browser, server, [])
    _classify(page, server, "我要退款\nwhere is my parcel?", per_line=True)
    page.wait_for_function("document.querySelectorAll('.why .hl').length === 2")
    texts = page.locator(".result .text")
    assert [texts.nth(i).get_attribute("lang") for i in (0, 1)] == ["zh", None]
    assert page.locator(".why .hl").nth(0).get_attribute("lang") == "zh"
    zh_font = texts.nth(0).evaluate("el => getComputedStyle(el).fontFamily")
    en_font = texts.nth(1).evaluate("el => getComputedStyle(el).fontFamily")
    assert zh_font.startswith('"PingFang SC"') and "Noto Sans CJK SC" in zh_font
    assert en_font.startswith("system-ui") and "Noto Sans CJK SC" in en_font  # CJK fallback
    assert page.evaluate("document.documentElement.lang") == "en"
    page.close()
