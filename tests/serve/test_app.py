"""Every endpoint over real HTTP, every client mistake, the token, and SIGTERM draining."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import httpx
import numpy as np
import pytest

from fenlei.predict import Prediction, Predictor, PredictorInfo, Scored, TextStats

from .conftest import LiveServer, StartServer

TEXTS = ["where is my parcel?", "我要退款", "can I talk to a human", "ok"]


def test_healthz_and_readyz(live: LiveServer) -> None:
    with live.client() as c:
        assert c.get("/healthz").json() == {"status": "ok", "models": ["intents"]}
        ready = c.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "models": ["intents"]}


def test_models_lists_name_labels_version_and_metrics(
    live: LiveServer, predictor: Predictor
) -> None:
    with live.client() as c:
        (info,) = c.get("/v1/models").json()["models"]
    assert info["name"] == "intents"
    assert info["labels"] == list(predictor.labels)
    assert info["version"].startswith("0.") and "+" in info["version"]
    assert info["architecture"] == "linear.v2" and info["backend"] == "torch"
    assert info["multi_label"] is False and info["kind"] == "single"
    assert info["version"] == predictor.info().version
    assert 0 <= info["metrics"]["dev_accuracy"] <= 1


def test_predict_returns_top_k_in_input_order(live: LiveServer, predictor: Predictor) -> None:
    with live.client() as c:
        r = c.post("/v1/models/intents/predict", json={"texts": TEXTS, "top_k": 3})
    assert r.status_code == 200
    body = r.json()
    assert body["model"] == "intents" and len(body["predictions"]) == len(TEXTS)
    expected = predictor.predict_proba(TEXTS)
    for row, pred in zip(expected, body["predictions"], strict=True):
        assert len(pred["top"]) == 3
        probs = [t["probability"] for t in pred["top"]]
        assert probs == sorted(probs, reverse=True)
        assert pred["label"] == predictor.labels[int(row.argmax())]
        assert pred["score"] == pytest.approx(float(row.max()), abs=1e-6)


def test_single_label_decision_is_predictors(live: LiveServer, predictor: Predictor) -> None:
    with live.client() as c:
        served = c.post("/v1/models/intents/predict", json={"texts": TEXTS}).json()
    expected = predictor.predict(TEXTS)
    for pred, exp in zip(served["predictions"], expected, strict=True):
        assert pred["label"] == exp.label and pred["labels"] == [exp.label]
        assert pred["score"] == pytest.approx(exp.score, abs=1e-6)


def test_top_k_larger_than_labels_returns_every_label(live: LiveServer) -> None:
    with live.client() as c:
        r = c.post("/v1/models/intents/predict", json={"texts": ["hi"], "top_k": 1000})
    top = r.json()["predictions"][0]["top"]
    assert len(top) == len(live.state.models["intents"].predictor.labels)
    assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-5)


def test_metrics_exposes_every_family(live: LiveServer) -> None:
    with live.client() as c:
        c.post("/v1/models/intents/predict", json={"texts": TEXTS})
        text = c.get("/metrics").text
    for name in (
        'fenlei_http_requests_total{route="/v1/models/{name}/predict",status="200"}',
        "fenlei_http_request_duration_seconds_bucket",
        'fenlei_batch_size_bucket{le="1.0",model="intents"}',
        'fenlei_queue_depth{model="intents"}',
        'fenlei_predictions_total{label="',
        "fenlei_input_length_chars_bucket",
        'fenlei_drift_psi{model="intents",statistic="length"}',
    ):
        assert name in text, name


def test_openapi_docs_and_page(live: LiveServer) -> None:
    with live.client() as c:
        schema = c.get("/openapi.json").json()
        docs = c.get("/docs")
        css = c.get("/static/swagger/swagger-ui.css")
        page = c.get("/")
    assert "/v1/models/{name}/predict" in schema["paths"]
    assert docs.status_code == 200 and "/static/swagger/swagger-ui-bundle.js" in docs.text
    assert css.status_code == 200
    assert page.status_code == 200 and '<select id="model">' in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ("{not json", "malformed_json"),
        ('{"texts": []}', "invalid_request"),
        ('{"texts": "one string"}', "invalid_request"),
        ('{"texts": [1, 2]}', "invalid_request"),
        ('{"texts": [null]}', "invalid_request"),
        ('{"texts": ["a"], "top_k": 0}', "invalid_request"),
        ('{"texts": ["a"], "top_k": "2"}', "invalid_request"),
        ('{"texts": ["a"], "extra": 1}', "invalid_request"),
        ("[]", "invalid_request"),
        ("", "invalid_request"),
    ],
)
def test_client_mistakes_are_422_with_json(live: LiveServer, body: str, code: str) -> None:
    with live.client() as c:
        r = c.post(
            "/v1/models/intents/predict",
            content=body,
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]


def test_unknown_model_and_route_are_404(live: LiveServer) -> None:
    with live.client() as c:
        model = c.post("/v1/models/nope/predict", json={"texts": ["x"]})
        route = c.get("/v2/nothing")
        method = c.get("/v1/models/intents/predict")
    assert model.status_code == 404 and model.json()["error"]["code"] == "unknown_model"
    assert "intents" in model.json()["error"]["message"]
    assert route.status_code == 404 and route.json()["error"]["code"] == "not_found"
    assert method.status_code == 405 and method.json()["error"]["code"] == "method_not_allowed"


def test_too_many_texts_is_413_naming_the_limit(live: LiveServer) -> None:
    with live.client() as c:
        r = c.post("/v1/models/intents/predict", json={"texts": ["a"] * 9})
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["limit"] == "max_texts" and error["max"] == 8 and error["got"] == 9


def test_too_long_text_is_413_naming_the_limit(live: LiveServer) -> None:
    with live.client() as c:
        r = c.post("/v1/models/intents/predict", json={"texts": ["ok", "x" * 501]})
    assert r.status_code == 413
    error = r.json()["error"]
    assert error["limit"] == "max_chars" and error["max"] == 500 and error["got"] == 501
    assert "text 1" in error["message"]


def test_bearer_token(start_server: StartServer, serve_run: Path) -> None:
    server = start_server({"intents": serve_run}, token="s3cret")
    body = {"texts": ["hi"]}
    with server.client() as c:
        missing = c.post("/v1/models/intents/predict", json=body)
        wrong = c.get("/v1/models", headers={"Authorization": "Bearer nope"})
        good = c.post(
            "/v1/models/intents/predict", json=body, headers={"Authorization": "Bearer s3cret"}
        )
        health = c.get("/healthz")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert wrong.status_code == 401
    assert good.status_code == 200
    assert health.status_code == 200


def test_injected_predictor_and_two_models(start_server: StartServer, predictor: Predictor) -> None:
    server = start_server({"a": predictor, "b": predictor})
    with server.client() as c:
        names = [m["name"] for m in c.get("/v1/models").json()["models"]]
        r = c.post("/v1/models/b/predict", json={"texts": ["hi"]})
    assert names == ["a", "b"] and r.status_code == 200


class _Wrapped:
    """Not a Predictor, only its servable surface (what an ensemble or a calibrated predictor
    would be): the service must use nothing else."""

    def __init__(self, inner: Predictor) -> None:
        self.inner = inner
        self.labels = inner.labels
        self.rule = inner.rule
        self.calls = 0

    def predict_proba(self, texts: Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        self.calls += 1
        return self.inner.predict_proba(texts, batch_size=batch_size)

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return self.inner.predict(texts)

    def score(self, texts: Sequence[str], *, batch_size: int | None = None) -> Scored:
        self.calls += 1
        return self.inner.score(texts, batch_size=batch_size)

    def text_stats(self, texts: Sequence[str]) -> TextStats:
        return self.inner.text_stats(texts)

    def info(self) -> PredictorInfo:
        return replace(self.inner.info(), architecture="wrapped", kind="ensemble")


def test_any_object_with_the_servable_surface_is_served(
    start_server: StartServer, predictor: Predictor
) -> None:
    wrapped = _Wrapped(predictor)
    server = start_server([wrapped])  # named after the run folder its info() reports
    name = predictor.info().run_dir.name  # type: ignore[union-attr]
    with server.client() as c:
        (info,) = c.get("/v1/models").json()["models"]
        body = c.post(f"/v1/models/{name}/predict", json={"texts": TEXTS}).json()
        drift = c.get(f"/v1/models/{name}/drift")
    assert (info["name"], info["architecture"], info["kind"]) == (name, "wrapped", "ensemble")
    assert [p["label"] for p in body["predictions"]] == [p.label for p in predictor.predict(TEXTS)]
    assert wrapped.calls > 0 and drift.status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("server did not become ready")


def _wait_queued(url: str, seconds: float = 2.0) -> None:
    """Wait until the server shows a request in its batch queue, or ``seconds`` pass.

    A lone request may skip the queue (adaptive batching), so the wait is bounded; on a busy
    machine it gives the request time to arrive before the signal.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
            if line.startswith("fenlei_queue_depth") and float(line.split()[-1]) > 0:
                return
        time.sleep(0.02)


def test_sigterm_lets_in_flight_requests_finish(serve_run: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "fenlei.cli", "serve", str(serve_run), "--port", str(port)]
    cmd += ["--max-wait-ms", "1500", "--max-batch-size", "1000", "--backend", "torch"]
    env = {**os.environ, "FENLEI_TOKEN": ""}
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        result["r"] = httpx.post(
            f"{url}/v1/models/{serve_run.name}/predict", json={"texts": TEXTS}, timeout=30
        )

    with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) as proc:
        try:
            _wait_ready(url, proc)
            thread = threading.Thread(target=call)
            thread.start()
            _wait_queued(url)  # the request now waits in the batcher (max wait 1.5 s)
            proc.send_signal(signal.SIGTERM)
            thread.join(timeout=30)
            # uvicorn re-raises SIGTERM after its graceful shutdown: -15 is a clean exit
            assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert result["r"].status_code == 200
    assert len(result["r"].json()["predictions"]) == len(TEXTS)


def test_response_probabilities_match_library(live: LiveServer, predictor: Predictor) -> None:
    with live.client() as c:
        body = c.post("/v1/models/intents/predict", json={"texts": TEXTS, "top_k": 100}).json()
    served = np.array(
        [
            [
                dict((t["label"], t["probability"]) for t in p["top"])[lab]
                for lab in predictor.labels
            ]
            for p in body["predictions"]
        ]
    )
    assert np.abs(served - predictor.predict_proba(TEXTS)).max() < 1e-6
    assert json.dumps(body, ensure_ascii=False)


def test_onnx_run_is_served_by_onnx_runtime_with_the_same_outputs(
    start_server: StartServer, serve_run: Path, predictor: Predictor, tmp_path: Path
) -> None:
    from fenlei.onnx import export_onnx

    from .conftest import copy_run

    run = copy_run(serve_run, tmp_path / "onnx")
    export_onnx(run)
    server = start_server({"intents": run})  # backend "auto"
    with server.client() as c:
        info = c.get("/v1/models").json()["models"][0]
        body = c.post("/v1/models/intents/predict", json={"texts": TEXTS, "top_k": 100}).json()
    assert info["backend"] == "onnx"
    for row, pred in zip(predictor.predict_proba(TEXTS), body["predictions"], strict=True):
        probs = {t["label"]: t["probability"] for t in pred["top"]}
        served = np.array([probs[lab] for lab in predictor.labels])
        assert np.abs(served - row).max() < 1e-4
