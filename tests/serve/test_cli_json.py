"""`fenlei predict --json` and the service give one prediction shape and refuse the same
empty text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fenlei.cli import main
from fenlei.serve.schemas import TextPrediction

from .conftest import LiveServer

TEXTS = ["where is my parcel?", "我要退款", "can I talk to a human"]


def test_cli_json_lines_have_the_rest_shape(
    live: LiveServer, serve_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", str(serve_run), "--json", "--top-k", "2", *TEXTS]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    with live.client() as c:
        body = c.post("/v1/models/intents/predict", json={"texts": TEXTS, "top_k": 2}).json()
    assert [line.pop("text") for line in lines] == TEXTS
    for line, served in zip(lines, body["predictions"], strict=True):
        TextPrediction.model_validate(line)  # the one documented shape, no key more or less
        assert line.keys() == served.keys()
        assert line["label"] == served["label"] and line["labels"] == served["labels"]
        assert [t["label"] for t in line["top"]] == [t["label"] for t in served["top"]]
        assert line["score"] == pytest.approx(served["score"], abs=1e-6)


def test_cli_refuses_an_empty_text_like_the_service(
    serve_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", str(serve_run), "fine", " "]) == 2
    assert "error: text argument 2 is empty" in capsys.readouterr().err
