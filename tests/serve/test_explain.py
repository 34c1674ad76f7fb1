"""POST /v1/models/{name}/explain over real HTTP: the library's explanations, the same token,
limits, metrics and error shapes as predict, its own tighter text limit, a bounded pool of
threads (429 beyond its queue), and predictions that stay right while an LSTM is explained."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fenlei.classifier import TextClassifier
from fenlei.predict import Predictor, PredictorInfo
from fenlei.serve import explaining
from tests.conftest import family_overrides
from tests.models.test_contract import LABELS
from tests.models.test_contract import TEXTS as TWENTY

from .conftest import LiveServer, StartServer
from .test_app import _Wrapped

TEXTS = ["where is my parcel?", "我要退款", "😀 can I talk to a human"]
ROUTE = "/v1/models/intents/explain"


def _error(r: Any) -> dict[str, Any]:
    body: dict[str, Any] = r.json()["error"]
    return body


def test_explain_returns_the_librarys_explanations(live: LiveServer, predictor: Predictor) -> None:
    with live.client() as c:
        r = c.post(ROUTE, json={"texts": TEXTS})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "intents" and len(body["explanations"]) == len(TEXTS)
    for text, got, want in zip(TEXTS, body["explanations"], predictor.explain(TEXTS), strict=True):
        assert got["label"] == want.label == predictor.predict([text])[0].label
        assert got["method"] == "exact" and got["delta"] == 0.0
        assert [t["token"] for t in got["tokens"]] == [t.token for t in want.tokens]
        for t in got["tokens"]:  # offsets are code points: the emoji is one
            assert text[t["start"] : t["end"]] == t["token"]
        total = sum(t["score"] for t in got["tokens"]) + got["special"]
        assert total == pytest.approx(got["score"] - got["base"], abs=1e-5)
    assert body["explanations"][2]["tokens"][0]["token"] == "😀"


def test_a_target_label_and_an_unknown_one(live: LiveServer, predictor: Predictor) -> None:
    target = predictor.labels[-1]
    with live.client() as c:
        ok = c.post(ROUTE, json={"texts": TEXTS[:1], "target": target})
        bad = c.post(ROUTE, json={"texts": TEXTS[:1], "target": "nope"})
    assert ok.json()["explanations"][0]["label"] == target
    assert bad.status_code == 422 and _error(bad)["code"] == "unknown_label"
    assert "nope" in _error(bad)["message"] and target in _error(bad)["message"]


@pytest.mark.parametrize(
    ("texts", "status", "code"),
    [
        (["fine", ""], 422, "unexplainable_text"),
        (["   "], 422, "unexplainable_text"),
        (["x" * 501], 413, "text_too_long"),
        (["\ud800"], 422, "invalid_request"),
        ([], 422, "invalid_request"),
    ],
)
def test_bad_texts_are_refused_like_predict_refuses_them(
    live: LiveServer, texts: list[str], status: int, code: str
) -> None:
    body = json.dumps({"texts": texts})  # ASCII-escaped: a lone surrogate travels as \ud800
    with live.client() as c:
        r = c.post(ROUTE, content=body, headers={"Content-Type": "application/json"})
    assert (r.status_code, _error(r)["code"]) == (status, code)


def test_its_own_tighter_text_limit(start_server: StartServer, serve_run: Path) -> None:
    server = start_server({"intents": serve_run}, max_explain_texts=2, max_texts=10)
    with server.client() as c:
        r = c.post(ROUTE, json={"texts": ["a", "b", "c"]})
        predicted = c.post("/v1/models/intents/predict", json={"texts": ["a", "b", "c"]})
    assert r.status_code == 413 and predicted.status_code == 200
    error = _error(r)
    assert (error["code"], error["limit"], error["max"], error["got"]) == (
        "too_many_texts",
        "max_explain_texts",
        2,
        3,
    )


def test_token_unknown_model_and_metrics(start_server: StartServer, serve_run: Path) -> None:
    server = start_server({"intents": serve_run}, token="t0ken")
    auth = {"Authorization": "Bearer t0ken"}
    with server.client() as c:
        assert c.post(ROUTE, json={"texts": ["a"]}).status_code == 401
        missing = c.post("/v1/models/nope/explain", json={"texts": ["a"]}, headers=auth)
        assert c.post(ROUTE, json={"texts": ["refund"]}, headers=auth).status_code == 200
        metrics = c.get("/metrics").text
    assert missing.status_code == 404 and _error(missing)["code"] == "unknown_model"
    assert 'route="/v1/models/{name}/explain",status="200"' in metrics


def test_a_predictor_that_cannot_explain_is_404(
    start_server: StartServer, predictor: Predictor
) -> None:
    server = start_server({"wrapped": _Wrapped(predictor)})  # only the servable surface
    with server.client() as c:
        r = c.post("/v1/models/wrapped/explain", json={"texts": ["a"]})
    assert r.status_code == 404 and _error(r)["code"] == "not_explainable"


class _Slow(_Wrapped):
    """Explains only once the test lets it."""

    def __init__(self, inner: Predictor) -> None:
        super().__init__(inner)
        self.started = threading.Event()
        self.release = threading.Event()

    def explain(self, texts: list[str], *, target: str | None = None) -> list[Any]:
        self.started.set()
        self.release.wait(30)
        return self.inner.explain(texts, target=target)

    def info(self) -> PredictorInfo:
        return replace(self.inner.info(), architecture="slow")


def test_explanations_beyond_the_queue_are_429(
    start_server: StartServer, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(explaining, "EXPLAIN_QUEUE", 1)
    slow = _Slow(predictor)
    server = start_server({"slow": slow})
    with server.client() as c, ThreadPoolExecutor(1) as pool:
        first = pool.submit(c.post, "/v1/models/slow/explain", json={"texts": ["refund"]})
        assert slow.started.wait(30)
        busy = c.post("/v1/models/slow/explain", json={"texts": ["refund"]})
        predicted = c.post("/v1/models/slow/predict", json={"texts": ["refund"]})  # not held up
        slow.release.set()
        assert first.result().status_code == 200
    assert busy.status_code == 429 and _error(busy)["code"] == "too_many_explanations"
    assert busy.headers["retry-after"] == "1"
    assert predicted.status_code == 200


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    preset, overrides = family_overrides("lstm.v1")
    run_dir = tmp_path_factory.mktemp("explain-lstm") / "lstm"
    clf = TextClassifier(preset, overrides=[*overrides, "train.epochs=2"], run_dir=run_dir)
    clf.fit(TWENTY, LABELS, X_dev=TWENTY, y_dev=LABELS)
    return run_dir


def test_predictions_stay_right_while_an_lstm_is_explained(
    start_server: StartServer, lstm_run: Path
) -> None:
    server = start_server({"lstm": lstm_run}, max_explain_texts=8)
    local = Predictor.from_run(lstm_run, backend="torch")
    direct = local.predict_proba(TWENTY)
    with server.client() as c, ThreadPoolExecutor(4) as pool:
        explains = [
            pool.submit(c.post, "/v1/models/lstm/explain", json={"texts": TWENTY[i : i + 5]})
            for i in range(0, 20, 5)
        ]
        predictions = [
            pool.submit(c.post, "/v1/models/lstm/predict", json={"texts": TWENTY, "top_k": 4})
            for _ in range(6)
        ]
        for future in predictions:
            for row, pred in zip(direct, future.result().json()["predictions"], strict=True):
                for top in pred["top"]:
                    want = row[local.labels.index(top["label"])]
                    assert top["probability"] == pytest.approx(float(want), abs=1e-5)
        for future in explains:
            for e in future.result().json()["explanations"]:
                assert e["method"] == "integrated-gradients"
                total = sum(t["score"] for t in e["tokens"]) + e["special"]
                assert total == pytest.approx(e["score"] - e["base"] + e["delta"], abs=1e-4)


class _Refuses(_Wrapped):
    """Has explain, but cannot (an ensemble whose member has none)."""

    def explain(self, texts: list[str], *, target: str | None = None) -> list[Any]:
        from fenlei.errors import ConfigError

        raise ConfigError("ensemble member 1 (_Wrapped) cannot explain its predictions")


def test_a_model_whose_explain_cannot_is_404(
    start_server: StartServer, predictor: Predictor
) -> None:
    server = start_server({"mix": _Refuses(predictor)})
    with server.client() as c:
        r = c.post("/v1/models/mix/explain", json={"texts": ["a"]})
    assert r.status_code == 404 and _error(r)["code"] == "not_explainable"
    assert "member 1" in _error(r)["message"]
